//go:build unix

package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/quorumq/quorumq/test/verify"
)

func TestVerifyUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"verify", "--requeue-fraction", "2"},
		{"verify", "--expire-fraction", "-0.1"},
		{"verify", "--duration", "0s"},
		{"verify", "--producers", "0"},
		{"verify", "--queues", "0"},
		{"verify", "--check", "h.jsonl", "--duration", "5s"},
		{"verify", "--check", "h.jsonl", "--history", "g.jsonl"},
		{"verify", "extra"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			stdout, stderr, code := runCLI(t, "", args...)
			if code != 2 || !strings.HasPrefix(stderr, "quorumq: ") || strings.Count(stderr, "\n") != 1 || stdout != "" {
				t.Errorf("exit %d, stdout %q, stderr %q; want exit 2 and one line on stderr", code, stdout, stderr)
			}
		})
	}
}

// --check judges a saved history without a cluster: a clean one passes, one
// with a lost message exits 1 and names it.
func TestVerifyCheckFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, ops []verify.Op) string {
		path := filepath.Join(dir, name)
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := verify.WriteOps(f, ops); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		return path
	}
	enq := verify.Op{Kind: verify.KindEnqueue, Queue: "q", Msg: "m1", Outcome: verify.OK, Partition: 0, Seq: 1}
	del := verify.Op{Kind: verify.KindDeliver, Queue: "q", Msg: "m1", Outcome: verify.OK, Partition: 0, Seq: 1, DeliveryCount: 1, Receipt: "r"}
	clean := write("clean.jsonl", []verify.Op{enq, del})
	lost := write("lost.jsonl", []verify.Op{enq})

	stdout, stderr, code := runCLI(t, "", "verify", "--check", clean, "-o", "json")
	var rep struct {
		OK      bool `json:"ok"`
		Verdict struct {
			OK    bool          `json:"ok"`
			Total verify.Counts `json:"total"`
		} `json:"verdict"`
	}
	if code != 0 || json.Unmarshal([]byte(stdout), &rep) != nil || !rep.OK || !rep.Verdict.OK || rep.Verdict.Total.EnqueuedOK != 1 {
		t.Errorf("clean history: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	stdout, stderr, code = runCLI(t, "", "verify", "--check", lost, "-o", "table")
	if code != 1 || !strings.Contains(stdout, "FAIL: 1 lost") || !strings.Contains(stdout, "msg m1") || !strings.Contains(stderr, "1 lost") {
		t.Errorf("lost history: exit %d, stdout %q, stderr %q; want exit 1 naming m1", code, stdout, stderr)
	}
	if _, stderr, code := runCLI(t, "", "verify", "--check", filepath.Join(dir, "none")); code != 1 || !strings.Contains(stderr, "no such file") {
		t.Errorf("missing file: exit %d, stderr %q", code, stderr)
	}
}

// quorumq verify against a quorumq dev cluster passes, and its saved
// history passes again with --check.
func TestVerifyEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-node cluster; skipped with -short")
	}
	d := startDev(t, 3)
	d.waitReady(t, 3)
	hist := filepath.Join(t.TempDir(), "history.jsonl")
	r := quorumq(t, "verify", "--duration", "5s", "--servers", d.servers, "--history", hist, "-o", "json")
	var rep struct {
		OK          bool     `json:"ok"`
		Seed        uint64   `json:"seed"`
		Queues      []string `json:"queues"`
		Drain       string   `json:"drain"`
		Convergence string   `json:"convergence"`
		Verdict     struct {
			OK    bool          `json:"ok"`
			Total verify.Counts `json:"total"`
		} `json:"verdict"`
	}
	if r.code != 0 {
		t.Fatalf("verify: %v", r)
	}
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("verify output %q: %v", r.stdout, err)
	}
	tot := rep.Verdict.Total
	if !rep.OK || !rep.Verdict.OK || rep.Drain != "ok" || rep.Convergence != "ok" || rep.Seed == 0 || len(rep.Queues) != 1 ||
		tot.EnqueuedOK < 100 || tot.Delivered < tot.EnqueuedOK {
		t.Errorf("verify report %s", r.stdout)
	}
	// A passing run deletes its queue.
	if r := quorumq(t, "queue", "get", rep.Queues[0], "--servers", d.servers); r.code != 1 || !strings.Contains(r.stderr, "not found") {
		t.Errorf("queue after a passing run: %v", r)
	}

	r = quorumq(t, "verify", "--check", hist, "-o", "table")
	if r.code != 0 || !strings.Contains(r.stdout, "verify: PASS") {
		t.Errorf("verify --check of the run's history: %v", r)
	}
}
