//go:build unix

package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	qv1 "github.com/quorumq/quorumq/proto/quorumq/v1"
)

// binary is the quorumq binary built by TestMain ("" under -short).
var binary string

func TestMain(m *testing.M) {
	flag.Parse()
	// No test reads or writes the user's contexts: commands run in process
	// and the binaries started here keep their CLI files in a directory of
	// their own (tests that need a fresh one set theirs).
	cfgDir, err := os.MkdirTemp("", "quorumq-cli-config-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Setenv(configDirEnv, cfgDir)
	var dir string
	if !testing.Short() {
		var err error
		if dir, err = os.MkdirTemp("", "quorumq-e2e-"); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		binary = filepath.Join(dir, "quorumq")
		build := exec.Command("go", "build", "-o", binary, ".")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "building quorumq:", err)
			_ = os.RemoveAll(dir)
			os.Exit(1)
		}
	}
	code := m.Run()
	if dir != "" {
		_ = os.RemoveAll(dir)
	}
	_ = os.RemoveAll(cfgDir)
	os.Exit(code)
}

// cleanEnv is the environment without QUORUMQ_* variables, but for
// QUORUMQ_CONFIG_DIR (the test's, never the user's).
func cleanEnv() []string {
	return slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, "QUORUMQ_") && !strings.HasPrefix(kv, configDirEnv+"=")
	})
}

// result of one run of the binary.
type result struct {
	stdout, stderr string
	code           int
}

func (r result) String() string {
	return fmt.Sprintf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
}

// oneLine: stderr is one line, "quorumq: <message>".
func oneLine(r result) bool {
	return strings.HasPrefix(r.stderr, "quorumq: ") && strings.Count(r.stderr, "\n") == 1
}

// quorumq runs the binary with args and waits (at most a minute).
func quorumq(t *testing.T, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env = cleanEnv()
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errOut.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	default:
		t.Fatalf("quorumq %q: %v", args, err)
	}
	return r
}

// freeBase finds a base port such that base..base+span-1 are free for TCP
// and UDP on 127.0.0.1, probing a few random high ports below Linux's
// ephemeral range (32768 on), where outgoing connections take theirs.
func freeBase(t *testing.T, span int) int {
	t.Helper()
	for range 50 {
		base := 20000 + 10*rand.N(1200)
		if portsFree(base, span) {
			return base
		}
	}
	t.Fatal("no free port range found")
	return 0
}

func portsFree(base, span int) bool {
	for p := base; p < base+span; p++ {
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(p))
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return false
		}
		_ = l.Close()
		u, err := net.ListenPacket("udp", addr)
		if err != nil {
			return false
		}
		_ = u.Close()
	}
	return true
}

// devCluster is a `quorumq dev` subprocess.
type devCluster struct {
	cmd     *exec.Cmd
	dir     string
	servers string
	logPath string
	exited  chan struct{}
	waitErr error
}

// startDev starts `quorumq dev`. Its "dev" context (admin certificate) is
// written to a config directory of the test's own, which every later
// quorumq(t, ...) of the test uses.
func startDev(t *testing.T, nodes int) *devCluster {
	t.Helper()
	t.Setenv(configDirEnv, t.TempDir())
	base := freeBase(t, 10*nodes)
	d := &devCluster{dir: t.TempDir(), servers: fmt.Sprintf("127.0.0.1:%d", base), exited: make(chan struct{})}
	d.logPath = filepath.Join(t.TempDir(), "dev.log")
	logFile, err := os.Create(d.logPath)
	if err != nil {
		t.Fatal(err)
	}
	d.cmd = exec.Command(binary, "dev", "--dir", d.dir, "--nodes", strconv.Itoa(nodes),
		"--base-port", strconv.Itoa(base), "--log-level", "warn")
	d.cmd.Env = cleanEnv()
	d.cmd.Stdout, d.cmd.Stderr = logFile, logFile
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		d.waitErr = d.cmd.Wait()
		_ = logFile.Close()
		close(d.exited)
	}()
	t.Cleanup(func() {
		if err := d.stop(30 * time.Second); err != nil {
			t.Errorf("stopping dev: %v", err)
		}
		if t.Failed() {
			log, _ := os.ReadFile(d.logPath)
			t.Logf("quorumq dev output:\n%s", log)
		}
	})
	return d
}

// stop sends SIGINT to the process group and waits up to timeout, then
// kills it. It returns an error unless the process exited 0 in time.
func (d *devCluster) stop(timeout time.Duration) error {
	select {
	case <-d.exited:
		return d.exitErr()
	default:
	}
	_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGINT)
	select {
	case <-d.exited:
		return d.exitErr()
	case <-time.After(timeout):
		_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
		<-d.exited
		return fmt.Errorf("no exit within %v of SIGINT; killed", timeout)
	}
}

func (d *devCluster) exitErr() error {
	if d.waitErr != nil {
		return fmt.Errorf("quorumq dev: %w", d.waitErr)
	}
	return nil
}

// waitReady polls `cluster status` until the cluster has a controller
// leader and all its members.
func (d *devCluster) waitReady(t *testing.T, nodes int) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	var last result
	for time.Now().Before(deadline) {
		select {
		case <-d.exited:
			t.Fatalf("quorumq dev exited early: %v", d.waitErr)
		default:
		}
		last = quorumq(t, "cluster", "status", "-o", "json", "--servers", d.servers, "--timeout", "2s")
		if last.code == 0 {
			st := &qv1.StatusResponse{}
			if err := protojson.Unmarshal([]byte(last.stdout), st); err != nil {
				t.Fatalf("cluster status output %q: %v", last.stdout, err)
			}
			if st.GetControllerLeader() != "" && int(st.GetMembers()) == nodes {
				return
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("cluster not ready within a minute; last status: %v", last)
}

func TestEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test starts a 3-node cluster; skipped with -short")
	}
	d := startDev(t, 3)
	d.waitReady(t, 3)
	q := func(args ...string) result {
		t.Helper()
		return quorumq(t, append(args, "--servers", d.servers)...)
	}

	if r := q("queue", "create", "demo", "--partitions", "3", "-o", "json"); r.code != 0 {
		t.Fatalf("queue create: %v", r)
	}
	r := q("send", "demo", "a", "b", "c", "-o", "json")
	if r.code != 0 || strings.Count(r.stdout, "\n") != 3 {
		t.Fatalf("send: %v", r)
	}

	// Receive and ack the three messages; a receive may return fewer than
	// asked, so poll until all three are in, with a deadline.
	var payloads []string
	deadline := time.Now().Add(30 * time.Second)
	for len(payloads) < 3 && time.Now().Before(deadline) {
		r := q("recv", "demo", "--max", "3", "--wait", "2s", "--ack", "-o", "json")
		if r.code != 0 {
			t.Fatalf("recv: %v", r)
		}
		for _, line := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
			if line == "" {
				continue
			}
			var raw map[string]any
			if err := json.Unmarshal([]byte(line), &raw); err != nil {
				t.Fatalf("recv line %q: %v", line, err)
			}
			m := &qv1.ReceivedMessage{}
			if err := protojson.Unmarshal([]byte(line), m); err != nil {
				t.Fatalf("recv line %q: %v", line, err)
			}
			if raw["payload"] != "YQ==" && raw["payload"] != "Yg==" && raw["payload"] != "Yw==" {
				t.Errorf("payload in JSON is %v, want base64 of a, b or c", raw["payload"])
			}
			if m.GetReceipt() == "" || m.GetMessageId() == "" {
				t.Errorf("message without receipt or id: %s", line)
			}
			payloads = append(payloads, string(m.GetPayload()))
		}
	}
	slices.Sort(payloads)
	if !slices.Equal(payloads, []string{"a", "b", "c"}) {
		t.Fatalf("received %q, want a, b, c", payloads)
	}
	r = q("queue", "get", "demo", "-o", "json")
	got := &qv1.Queue{}
	if r.code != 0 || protojson.Unmarshal([]byte(r.stdout), got) != nil {
		t.Fatalf("queue get: %v", r)
	}
	if st := got.GetStats(); st.GetAckedTotal() != 3 || st.GetReady() != 0 || st.GetLeased() != 0 {
		t.Errorf("after recv --ack: stats %v, want 3 acked and none ready or leased", st)
	}

	t.Run("acl", func(t *testing.T) {
		// A worker with a token that may consume demo and nothing else.
		if r := q("acl", "grant", "worker", "consume", "--queue", "demo"); r.code != 0 {
			t.Fatalf("acl grant: %v", r)
		}
		r := q("acl", "token", "create", "worker", "-o", "table")
		tok := strings.TrimSpace(r.stdout)
		if r.code != 0 || !strings.HasPrefix(tok, "qq_") {
			t.Fatalf("acl token create: %v", r)
		}
		if r := q("send", "demo", "for-the-worker"); r.code != 0 {
			t.Fatalf("send: %v", r)
		}
		worker := func(args ...string) result {
			t.Helper()
			return q(append([]string{"--context", "", "--ca", filepath.Join(d.dir, "tls", "ca.pem"), "--token", tok}, args...)...)
		}
		deadline := time.Now().Add(10 * time.Second) // the token holds everywhere within a second
		for {
			r := worker("recv", "demo", "--wait", "2s", "--ack", "-o", "json")
			if r.code == 0 && strings.Contains(r.stdout, base64.StdEncoding.EncodeToString([]byte("for-the-worker"))) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("worker recv: %v", r)
			}
		}
		for what, args := range map[string][]string{
			"send":  {"send", "demo", "x"},
			"purge": {"queue", "purge", "demo"},
			"drain": {"cluster", "drain", "dev2"},
			"grant": {"acl", "grant", "worker", "admin"},
		} {
			if r := worker(args...); r.code != 1 || !oneLine(r) || !strings.Contains(r.stderr, "permission denied") {
				t.Errorf("worker %s: %v; want exit 1, permission denied", what, r)
			}
		}
		// Without any credential: refused, saying what to do.
		if r := q("--context", "", "--ca", filepath.Join(d.dir, "tls", "ca.pem"), "queue", "list"); r.code != 1 || !strings.Contains(r.stderr, "unauthenticated") {
			t.Errorf("anonymous queue list: %v; want exit 1, unauthenticated", r)
		}
		if r := q("acl", "list", "-o", "table"); r.code != 0 || !strings.Contains(r.stdout, "worker") || !strings.Contains(r.stdout, "queue demo") {
			t.Errorf("acl list: %v", r)
		}
	})

	t.Run("errors", func(t *testing.T) {
		if r := q("send", "nosuch", "x"); r.code != 1 || !oneLine(r) || !strings.Contains(r.stderr, "not found") {
			t.Errorf("send to an unknown queue: %v; want exit 1 and one line saying not found", r)
		}
		if r := q("send", "demo", "--bogus", "x"); r.code != 2 || !oneLine(r) || !strings.Contains(r.stderr, "--bogus") {
			t.Errorf("bad flag: %v; want exit 2 naming the flag", r)
		}
		big := filepath.Join(t.TempDir(), "big")
		if err := os.WriteFile(big, bytes.Repeat([]byte("x"), 2<<20), 0o600); err != nil {
			t.Fatal(err)
		}
		if r := q("send", "demo", "--file", big); r.code != 1 || !oneLine(r) || !strings.Contains(r.stderr, "invalid argument") {
			t.Errorf("2 MiB message: %v; want exit 1, invalid argument", r)
		}
	})

	t.Run("server start fails", func(t *testing.T) {
		// A data directory in use (node dev1's) and a port in use (dev1's
		// client port) each end `quorumq server` with one line and exit 1.
		free := func() string { return "127.0.0.1:0" }
		for name, args := range map[string][]string{
			"locked":          {"--data-dir", filepath.Join(d.dir, "dev1"), "--client-addr", free()},
			"port in use":     {"--data-dir", t.TempDir(), "--client-addr", d.servers},
			"bad bootstrap":   {"--data-dir", t.TempDir(), "--client-addr", free(), "--bootstrap-expect", "-1"},
			"bad client addr": {"--data-dir", t.TempDir(), "--client-addr", "nohostport"},
		} {
			args = append([]string{"server", "--insecure", "--log-level", "error", "--peer-addr", free(), "--gossip-addr", free(), "--http-addr", free()}, args...)
			if r := quorumq(t, args...); r.code != 1 || !oneLine(r) {
				t.Errorf("%s: %v; want exit 1 with a one-line error", name, r)
			}
		}
		// Secure by default: no TLS material and no --insecure.
		r := quorumq(t, "server", "--data-dir", t.TempDir(), "--client-addr", free(), "--peer-addr", free(), "--gossip-addr", free(), "--http-addr", free())
		if r.code != 1 || !oneLine(r) || !strings.Contains(r.stderr, "--insecure") || !strings.Contains(r.stderr, "--tls-ca") {
			t.Errorf("server without TLS material: %v; want exit 1, naming the missing flags and --insecure", r)
		}
	})

	// Ctrl-C stops every node gracefully and exits 0.
	if err := d.stop(40 * time.Second); err != nil {
		t.Errorf("graceful stop: %v", err)
	}
	log, _ := os.ReadFile(d.logPath)
	if !strings.Contains(string(log), "quorumq dev: stopped") {
		t.Errorf("dev output does not end with its stop line:\n%s", log)
	}
}
