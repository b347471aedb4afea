package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	qv1 "github.com/quorumq/quorumq/proto/quorumq/v1"
)

// runCLI runs the binary's command line in process, with no server, in an
// empty environment but for QUORUMQ_CONFIG_DIR (never the user's own: see
// TestMain).
func runCLI(t *testing.T, stdin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	_, stdout, stderr, code = runCLIEnv(t, nil, stdin, args...)
	return stdout, stderr, code
}

// runCLIEnv runs the command line with environment env (plus
// QUORUMQ_CONFIG_DIR from the process's) and returns the app after the run.
func runCLIEnv(t *testing.T, env map[string]string, stdin string, args ...string) (a *app, stdout, stderr string, code int) {
	t.Helper()
	var out, errOut bytes.Buffer
	a = &app{
		stdin:  strings.NewReader(stdin),
		stdout: &out,
		stderr: &errOut,
		getenv: func(k string) string {
			if v, ok := env[k]; ok {
				return v
			}
			if k == configDirEnv {
				return os.Getenv(k)
			}
			return ""
		},
		isTerminal: func() bool { return false },
	}
	if a.getenv(configDirEnv) == "" {
		t.Fatalf("%s is not set: a test would use the user's own contexts", configDirEnv)
	}
	code = a.run(context.Background(), args)
	return a, out.String(), errOut.String(), code
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"send", "demo", "--bogus"},
		{"nosuch"},
		{"queue", "nosuch"},
		{"queue", "create"},
		{"queue", "create", "a", "b"},
		{"queue", "create", "a", "--partitions", "x"},
		{"ack", "demo"},
		{"-o", "xml", "version"},
		{"--log-level", "loud", "version"},
		{"send", "demo", "a", "b", "--dedup-id", "d"},
		{"send", "demo", "a", "--file", "f"},
		{"send", "demo", "--header", "novalue", "x"},
		{"cluster", "transfer-leader", "demo", "one"},
		{"dev", "--nodes", "0"},
		{"server"}, // no data dir
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			stdout, stderr, code := runCLI(t, "", args...)
			if code != 2 {
				t.Errorf("exit %d, want 2; stderr %q", code, stderr)
			}
			if !strings.HasPrefix(stderr, "quorumq: ") || strings.Count(stderr, "\n") != 1 {
				t.Errorf("stderr is not one line starting with \"quorumq: \": %q", stderr)
			}
			if stdout != "" {
				t.Errorf("stdout %q, want none", stdout)
			}
		})
	}
}

func TestHelpAndVersion(t *testing.T) {
	for _, args := range [][]string{{}, {"--help"}, {"queue"}, {"send", "--help"}, {"version"}} {
		stdout, stderr, code := runCLI(t, "", args...)
		if code != 0 || stderr != "" || stdout == "" {
			t.Errorf("%q: exit %d, stderr %q, stdout %d bytes", args, code, stderr, len(stdout))
		}
	}
}

// Every command documents itself with an example.
func TestEveryCommandHasExample(t *testing.T) {
	a := &app{}
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Example == "" && c.Name() != "help" {
			t.Errorf("%q has no Example", c.CommandPath())
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(a.rootCmd())
}

func TestErrorMessage(t *testing.T) {
	for _, c := range []struct {
		err  error
		want string
	}{
		{status.Error(codes.NotFound, `queue "x" not found`), `not found: queue "x" not found`},
		{status.Error(codes.InvalidArgument, "payload\ntoo large"), "invalid argument: payload too large"},
		{status.Error(codes.FailedPrecondition, "stale"), "failed precondition: stale"},
		{fmt.Errorf("send: %w", status.Error(codes.Unavailable, "no leader")), "send: unavailable: no leader"},
		{errors.New("plain"), "plain"},
	} {
		if got := errorMessage(c.err); got != c.want {
			t.Errorf("errorMessage(%v) = %q, want %q", c.err, got, c.want)
		}
	}
	if got := codeName(codes.DeadlineExceeded); got != "deadline exceeded" {
		t.Errorf("codeName = %q", got)
	}
}

func TestPayloadText(t *testing.T) {
	for in, want := range map[string]string{
		"hello world": "hello world",
		"a\tb":        `"a\tb"`,
		"\xff\x00":    "base64:/wA=",
		"héllo":       "héllo",
	} {
		if got := payloadText([]byte(in)); got != want {
			t.Errorf("payloadText(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestDevConfigs(t *testing.T) {
	d := t.TempDir()
	cfgs, err := devConfigs(d, 3, 9000, false)
	if err != nil || len(cfgs) != 3 {
		t.Fatalf("%d configs, %v", len(cfgs), err)
	}
	c := cfgs[2]
	if err := c.Validate(); err != nil {
		t.Fatalf("dev config not valid (secure by default): %v", err)
	}
	for _, f := range []string{c.TLSCAFile, c.TLSCertFile, c.TLSKeyFile, c.GossipKeyFile} {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("TLS material: %v", err)
		}
	}
	if c.NodeID != "dev3" || c.DataDir != filepath.Join(d, "dev3") || c.ClientAddr != "127.0.0.1:9020" || c.PeerAddr != "127.0.0.1:9021" ||
		c.GossipAddr != "127.0.0.1:9022" || c.HTTPAddr != "127.0.0.1:9023" || c.BootstrapExpect != 3 {
		t.Errorf("node 3: %+v", c)
	}
	if len(cfgs[0].Join) != 0 || len(c.Join) != 1 || c.Join[0] != "127.0.0.1:9002" {
		t.Errorf("joins: %q, %q", cfgs[0].Join, c.Join)
	}
	// Again: the material is kept.
	again, _ := devConfigs(d, 3, 9000, false)
	a, _ := os.ReadFile(again[0].TLSCAFile)
	b, _ := os.ReadFile(cfgs[0].TLSCAFile)
	if string(a) != string(b) {
		t.Error("a second dev run made a new CA")
	}
	insecure, err := devConfigs(t.TempDir(), 1, 9000, true)
	if err != nil || !insecure[0].Insecure || insecure[0].TLSCAFile != "" {
		t.Errorf("--insecure: %+v, %v", insecure[0], err)
	}
}

// fakeQueues records Enqueue batches.
type fakeQueues struct {
	qv1.QueueServiceClient
	batches [][]string
}

func (f *fakeQueues) Enqueue(_ context.Context, req *qv1.EnqueueRequest, _ ...grpc.CallOption) (*qv1.EnqueueResponse, error) {
	var b []string
	resp := &qv1.EnqueueResponse{}
	for _, m := range req.GetMessages() {
		b = append(b, string(m.GetPayload()))
		resp.Results = append(resp.Results, &qv1.EnqueueResult{MessageId: fmt.Sprintf("0-%d", len(resp.Results))})
	}
	f.batches = append(f.batches, b)
	return resp, nil
}

func TestSendLines(t *testing.T) {
	var in strings.Builder
	for i := range 1203 {
		fmt.Fprintf(&in, "m%d\n", i)
	}
	in.WriteString("\nlast") // an empty line, then one without a newline
	var out bytes.Buffer
	a := &app{stdin: strings.NewReader(in.String()), stdout: &out, output: "json", timeout: 1e9}
	fq := &fakeQueues{}
	s := &sender{a: a, ctx: context.Background(), qc: fq, queue: "q"}
	if err := a.sendLines(&cobra.Command{Use: "send"}, s, &sendOpts{}, nil); err != nil {
		t.Fatal(err)
	}
	var all []string
	for _, b := range fq.batches {
		if len(b) > sendBatchMessages {
			t.Errorf("batch of %d", len(b))
		}
		all = append(all, b...)
	}
	if len(all) != 1205 || all[0] != "m0" || all[1202] != "m1202" || all[1203] != "" || all[1204] != "last" {
		t.Errorf("sent %d messages: first %q, last %q", len(all), all[0], all[len(all)-1])
	}
	if n := strings.Count(out.String(), "\n"); n != 1205 {
		t.Errorf("%d result lines", n)
	}

	a.stdin = strings.NewReader("one\ntwo\n")
	s = &sender{a: a, ctx: context.Background(), qc: &fakeQueues{}, queue: "q"}
	err := a.sendLines(&cobra.Command{Use: "send"}, s, &sendOpts{dedupID: "d"}, nil)
	var ue *usageError
	if !errors.As(err, &ue) {
		t.Errorf("two lines with --dedup-id: %v, want a usage error", err)
	}
}
