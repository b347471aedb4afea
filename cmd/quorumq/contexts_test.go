package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/quorumq/quorumq/cluster"
	qv1 "github.com/quorumq/quorumq/proto/quorumq/v1"
	"github.com/quorumq/quorumq/transport/pki"
)

// testTLS is a CA with a node and an admin client in a temporary directory.
type testTLS struct {
	local       *pki.Local
	node, admin pki.Files
}

func newTestTLS(t *testing.T) testTLS {
	t.Helper()
	l, err := pki.OpenLocal(filepath.Join(t.TempDir(), "tls"))
	if err != nil {
		t.Fatal(err)
	}
	n, err := l.Node("n1")
	if err != nil {
		t.Fatal(err)
	}
	a, err := l.Client("admin")
	if err != nil {
		t.Fatal(err)
	}
	return testTLS{local: l, node: n, admin: a}
}

// freshConfig gives the test an empty config directory.
func freshConfig(t *testing.T) string {
	t.Helper()
	d := filepath.Join(t.TempDir(), "cfg")
	t.Setenv(configDirEnv, d)
	return d
}

// cli runs a command that must succeed and returns its stdout.
func cli(t *testing.T, env map[string]string, stdin string, args ...string) string {
	t.Helper()
	_, out, errOut, code := runCLIEnv(t, env, stdin, args...)
	if code != 0 {
		t.Fatalf("quorumq %q: exit %d, stderr %q", args, code, errOut)
	}
	return out
}

func TestContextCommands(t *testing.T) {
	cfg := freshConfig(t)
	m := newTestTLS(t)

	// Relative paths are stored absolute.
	t.Chdir(filepath.Dir(m.admin.CA))
	out := cli(t, nil, "", "context", "add", "prod", "--servers", "q1:7420,q2:7420", "--ca", "ca.pem",
		"--cert", filepath.Base(m.admin.Cert), "--key", filepath.Base(m.admin.Key))
	if !strings.Contains(out, `context "prod" saved`) || strings.Contains(out, "selected") {
		t.Errorf("add: %q", out)
	}
	cli(t, nil, "qq_abc.secretpart\n", "context", "add", "ci", "--servers", "10.0.0.5:7420", "--ca", m.admin.CA, "--token", "-", "--select")

	for path, want := range map[string]os.FileMode{
		cfg: 0o700, filepath.Join(cfg, "contexts"): 0o700, filepath.Join(cfg, "contexts", "prod.json"): 0o600,
		filepath.Join(cfg, "contexts", "ci.json"): 0o600, filepath.Join(cfg, "current"): 0o600,
	} {
		st, err := os.Stat(path)
		if err != nil || st.Mode().Perm() != want {
			t.Errorf("%s: %v, mode %v; want %v", path, err, st.Mode().Perm(), want)
		}
	}
	var stored cliContext
	b, _ := os.ReadFile(filepath.Join(cfg, "contexts", "prod.json"))
	if err := json.Unmarshal(b, &stored); err != nil {
		t.Fatal(err)
	}
	if stored.CA != m.admin.CA || stored.Cert != m.admin.Cert || stored.Key != m.admin.Key || !slices.Equal(stored.Servers, []string{"q1:7420", "q2:7420"}) {
		t.Errorf("stored %+v", stored)
	}

	// ls: both, ci selected (by --select); the token never shows.
	out = cli(t, nil, "", "context", "ls", "-o", "json")
	var views []contextView
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var v contextView
		if err := json.Unmarshal([]byte(line), &v); err != nil {
			t.Fatalf("ls line %q: %v", line, err)
		}
		views = append(views, v)
	}
	if len(views) != 2 || views[0].Name != "ci" || !views[0].Selected || views[1].Name != "prod" || views[1].Selected {
		t.Errorf("ls: %+v", views)
	}
	if views[0].Token != "qq_<redacted>" {
		t.Errorf("ls token %q, want it redacted", views[0].Token)
	}
	for _, args := range [][]string{{"context", "ls"}, {"context", "ls", "-o", "json"}, {"context", "show"}, {"context", "show", "ci", "-o", "json"}} {
		if out := cli(t, nil, "", args...); strings.Contains(out, "secretpart") {
			t.Errorf("%q shows the token: %q", args, out)
		}
	}
	out = cli(t, nil, "", "context", "ls", "-o", "table")
	if !strings.Contains(out, "*  ci ") || !strings.Contains(out, "token") || !strings.Contains(out, "certificate "+m.admin.Cert) {
		t.Errorf("ls table:\n%s", out)
	}

	// use / show.
	if out := cli(t, nil, "", "context", "use", "prod"); !strings.Contains(out, `"prod" selected`) {
		t.Errorf("use: %q", out)
	}
	out = cli(t, nil, "", "context", "show", "-o", "table")
	for _, want := range []string{"prod", m.admin.CA, "admin, expires", "q1:7420,q2:7420", "yes, by " + filepath.Join(cfg, "current")} {
		if !strings.Contains(out, want) {
			t.Errorf("show lacks %q:\n%s", want, out)
		}
	}
	out = cli(t, map[string]string{"QUORUMQ_CONTEXT": "ci"}, "", "context", "show", "-o", "json")
	if !strings.Contains(out, `"name":"ci"`) || !strings.Contains(out, `"selected":true`) {
		t.Errorf("show with QUORUMQ_CONTEXT=ci: %q", out)
	}

	// rm: the selected one, then the selection is gone.
	if out := cli(t, nil, "", "context", "rm", "prod"); !strings.Contains(out, "no context is selected now") {
		t.Errorf("rm of the selected context: %q", out)
	}
	if _, err := os.Stat(filepath.Join(cfg, "current")); !os.IsNotExist(err) {
		t.Errorf("current file after rm: %v", err)
	}
	if _, _, errOut, code := runCLIEnv(t, nil, "", "context", "show"); code != 1 || !strings.Contains(errOut, "no context selected") {
		t.Errorf("show with none selected: exit %d, %q", code, errOut)
	}
	cli(t, nil, "", "context", "rm", "ci")
	if out := cli(t, nil, "", "context", "ls", "-o", "table"); !strings.Contains(out, "no contexts") {
		t.Errorf("ls of none: %q", out)
	}
}

func TestContextErrors(t *testing.T) {
	freshConfig(t)
	m := newTestTLS(t)
	cli(t, nil, "", "context", "add", "a", "--servers", "h:1")
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"context", "add", "../evil", "--servers", "h:1"}, 2, "must not start"},
		{[]string{"context", "add", "x/../../evil", "--servers", "h:1"}, 2, "not allowed"},
		{[]string{"context", "add", "a/b", "--servers", "h:1"}, 2, "not allowed"},
		{[]string{"context", "add", ".hidden", "--servers", "h:1"}, 2, "must not start"},
		{[]string{"context", "add", "b"}, 2, "--servers is required"},
		{[]string{"context", "add", "b", "--servers", "h:1", "--cert", m.admin.Cert, "--ca", m.admin.CA}, 2, "--cert and --key"},
		{[]string{"context", "add", "b", "--servers", "h:1", "--token", "qq_x"}, 2, "--ca"},
		{[]string{"context", "add", "b", "--servers", "h:1", "--ca", "/nonexistent/ca.pem"}, 1, "/nonexistent/ca.pem"},
		{[]string{"context", "add", "b", "--servers", "h:1", "--ca", m.admin.CA, "--cert", m.admin.Cert, "--key", m.node.Key}, 1, m.node.Key},
		{[]string{"context", "add", "a", "--servers", "h:2"}, 1, "--force"},
		{[]string{"context", "use", "nosuch"}, 1, "no such context"},
		{[]string{"context", "use", "a/../b"}, 2, "not allowed"},
		{[]string{"context", "rm", "nosuch"}, 1, "no such context"},
		{[]string{"context", "show", "nosuch"}, 1, "no such context"},
		{[]string{"--context", "nosuch", "queue", "list"}, 1, `context "nosuch": no such context (see 'quorumq context ls'), selected by --context`},
	} {
		_, _, errOut, code := runCLIEnv(t, nil, "", c.args...)
		if code != c.code || !strings.Contains(errOut, c.want) || strings.Count(errOut, "\n") != 1 {
			t.Errorf("%q: exit %d, stderr %q; want exit %d and one line with %q", c.args, code, errOut, c.code, c.want)
		}
	}
	if out := cli(t, nil, "", "context", "add", "a", "--servers", "h:2", "--force"); !strings.Contains(out, "saved") {
		t.Errorf("add --force: %q", out)
	}
}

// settingsOf runs a command that connects (to nothing that answers) and
// returns the settings it resolved.
func settingsOf(t *testing.T, env map[string]string, args ...string) *connSettings {
	t.Helper()
	a, _, errOut, _ := runCLIEnv(t, env, "", append(args, "--timeout", "1s", "queue", "list")...)
	if a.settings == nil {
		t.Fatalf("%q: no settings resolved; stderr %q", args, errOut)
	}
	return a.settings
}

func TestConnectionSettingsOrder(t *testing.T) {
	freshConfig(t)
	m := newTestTLS(t)
	other := newTestTLS(t)
	// Nothing listens on port 1: every command fails fast.
	cli(t, nil, "", "context", "add", "sel", "--servers", "127.0.0.1:1", "--ca", m.admin.CA, "--cert", m.admin.Cert, "--key", m.admin.Key, "--select")
	cli(t, nil, "", "context", "add", "envctx", "--servers", "127.0.0.1:2", "--ca", other.admin.CA, "--token", "qq_env")
	cli(t, nil, "", "context", "add", "flagctx", "--servers", "127.0.0.1:3")

	for _, c := range []struct {
		name    string
		env     map[string]string
		args    []string
		context string
		servers string
		ca      string
		cert    string
		token   string
	}{
		{name: "selected context", context: "sel", servers: "127.0.0.1:1", ca: m.admin.CA, cert: m.admin.Cert},
		{name: "QUORUMQ_CONTEXT over the selection", env: map[string]string{"QUORUMQ_CONTEXT": "envctx"},
			context: "envctx", servers: "127.0.0.1:2", ca: other.admin.CA, token: "qq_env"},
		{name: "--context over QUORUMQ_CONTEXT", env: map[string]string{"QUORUMQ_CONTEXT": "envctx"}, args: []string{"--context", "flagctx"},
			context: "flagctx", servers: "127.0.0.1:3"},
		{name: "--context '': none", args: []string{"--context", ""}, servers: "127.0.0.1:7420"},
		{name: "env over the context", env: map[string]string{"QUORUMQ_SERVERS": "127.0.0.1:4", "QUORUMQ_CA": other.admin.CA},
			context: "sel", servers: "127.0.0.1:4", ca: other.admin.CA, cert: m.admin.Cert},
		{name: "flag over env over context", env: map[string]string{"QUORUMQ_SERVERS": "127.0.0.1:4"}, args: []string{"--servers", "127.0.0.1:5"},
			context: "sel", servers: "127.0.0.1:5", ca: m.admin.CA, cert: m.admin.Cert},
		{name: "token from env completes a context", env: map[string]string{"QUORUMQ_TOKEN": "qq_t"}, args: []string{"--cert", "", "--key", ""},
			context: "sel", servers: "127.0.0.1:1", ca: m.admin.CA, token: "qq_t"},
		{name: "a token given replaces the context's certificate", env: map[string]string{"QUORUMQ_TOKEN": "qq_t"},
			context: "sel", servers: "127.0.0.1:1", ca: m.admin.CA, token: "qq_t"},
		{name: "a certificate given replaces the context's token", env: map[string]string{"QUORUMQ_CONTEXT": "envctx"}, args: []string{"--ca", m.admin.CA, "--cert", m.admin.Cert, "--key", m.admin.Key},
			context: "envctx", servers: "127.0.0.1:2", ca: m.admin.CA, cert: m.admin.Cert},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := settingsOf(t, c.env, c.args...)
			if s.context != c.context || strings.Join(s.servers, ",") != c.servers || s.ca != c.ca || s.cert != c.cert || s.token != c.token || s.tls != (c.ca != "") {
				t.Errorf("settings %+v; want context %q servers %q ca %q cert %q token %q", s, c.context, c.servers, c.ca, c.cert, c.token)
			}
		})
	}
	// send's own --key (the partition key) neither sets the TLS key nor
	// takes QUORUMQ_KEY.
	a, _, errOut, _ := runCLIEnv(t, nil, "", "--timeout", "1s", "send", "demo", "--key", "part", "x")
	if a.settings == nil || a.settings.key != m.admin.Key {
		t.Errorf("send --key: settings %+v (%s); want the context's key", a.settings, errOut)
	}
	a, _, errOut, _ = runCLIEnv(t, map[string]string{"QUORUMQ_KEY": other.admin.Key, "QUORUMQ_CERT": other.admin.Cert, "QUORUMQ_CA": other.admin.CA},
		"", "--timeout", "1s", "send", "demo", "x")
	if a.settings == nil || a.settings.key != other.admin.Key {
		t.Errorf("send with QUORUMQ_KEY: settings %+v (%s)", a.settings, errOut)
	}

	// Commands that do not connect never read the contexts: a broken
	// selection does not stop them.
	cli(t, map[string]string{"QUORUMQ_CONTEXT": "nosuch"}, "", "version")
}

// authFake is a client port that refuses every ListQueues as
// unauthenticated.
type authFake struct {
	qv1.UnimplementedQueueServiceServer
}

func (authFake) ListQueues(context.Context, *qv1.ListQueuesRequest) (*qv1.ListQueuesResponse, error) {
	return nil, status.Error(codes.Unauthenticated, "no credentials")
}

func serveFake(t *testing.T, creds credentials.TransportCredentials) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var opts []grpc.ServerOption
	if creds != nil {
		opts = append(opts, grpc.Creds(creds))
	}
	s := grpc.NewServer(opts...)
	qv1.RegisterQueueServiceServer(s, authFake{})
	go func() { _ = s.Serve(l) }()
	t.Cleanup(s.Stop)
	return l.Addr().String()
}

// A TLS mismatch or a missing credential says what to do.
func TestConnectionHints(t *testing.T) {
	freshConfig(t)
	m := newTestTLS(t)
	rl, err := pki.NewReloader(m.node, nil)
	if err != nil {
		t.Fatal(err)
	}
	// As the client port: the node's certificate, a client's optional.
	portCfg := rl.ServerConfig()
	portCfg.ClientAuth, portCfg.VerifyPeerCertificate = tls.RequestClientCert, nil
	tlsAddr := serveFake(t, credentials.NewTLS(portCfg))
	plainAddr := serveFake(t, nil)
	for _, c := range []struct {
		name string
		args []string
		want []string
	}{
		{"plaintext to TLS", []string{"--servers", tlsAddr}, []string{"speaks TLS", "--ca", "quorumq context use"}},
		{"TLS to plaintext", []string{"--servers", plainAddr, "--ca", m.admin.CA}, []string{"does not speak TLS", "--insecure"}},
		{"no credential", []string{"--servers", tlsAddr, "--ca", m.admin.CA}, []string{"unauthenticated: no credentials", "no credential was given", "--token"}},
		{"refused credential", []string{"--servers", tlsAddr, "--ca", m.admin.CA, "--token", "qq_bad"}, []string{"unauthenticated", "the credential came from flags and environment"}},
		{"token without CA", []string{"--servers", plainAddr, "--token", "qq_x"}, []string{"only used over TLS", "--ca"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, _, errOut, code := runCLIEnv(t, nil, "", append(c.args, "--timeout", "5s", "queue", "list")...)
			if code != 1 || strings.Count(errOut, "\n") != 1 {
				t.Errorf("exit %d, stderr %q; want exit 1, one line", code, errOut)
			}
			for _, w := range c.want {
				if !strings.Contains(errOut, w) {
					t.Errorf("stderr %q lacks %q", errOut, w)
				}
			}
		})
	}
	// health checks a TLS port without a CA: no configuration for probes.
	hs := grpc.NewServer(grpc.Creds(credentials.NewTLS(portCfg)))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	healthpb.RegisterHealthServer(hs, health.NewServer())
	go func() { _ = hs.Serve(l) }()
	defer hs.Stop()
	for _, args := range [][]string{{"health", "--addr", l.Addr().String()}, {"health", "--addr", l.Addr().String(), "--ca", m.admin.CA}} {
		if out := cli(t, nil, "", append(args, "-o", "table")...); !strings.Contains(out, "SERVING") {
			t.Errorf("%q: %q", args, out)
		}
	}
}

func TestDevContext(t *testing.T) {
	d := t.TempDir()
	cfgs, err := devConfigs(d, 3, 9000, false)
	if err != nil {
		t.Fatal(err)
	}
	c, err := devContext(d, cfgs)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(c.Servers, []string{"127.0.0.1:9000", "127.0.0.1:9010", "127.0.0.1:9020"}) || c.CA != cfgs[0].TLSCAFile || c.Token != "" {
		t.Errorf("dev context %+v", c)
	}
	b, err := os.ReadFile(c.Cert)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := pki.ParseCertificates(b)
	if err != nil {
		t.Fatal(err)
	}
	if names := pki.ClientNames(certs[0]); !slices.Equal(names, []string{devAdmin}) || !slices.Contains(cluster.DefaultAdminIdentities, devAdmin) {
		t.Errorf("dev admin certificate names %v; default admins %v", names, cluster.DefaultAdminIdentities)
	}
	if _, err := pki.ClientTLSConfig(c.CA, c.Cert, c.Key); err != nil {
		t.Errorf("dev context material: %v", err)
	}
	insecure, err := devConfigs(d, 1, 9000, true)
	if err != nil {
		t.Fatal(err)
	}
	if c, err := devContext(d, insecure); err != nil || c.CA != "" || c.Cert != "" || len(c.Servers) != 1 {
		t.Errorf("insecure dev context %+v, %v", c, err)
	}
}
