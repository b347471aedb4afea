package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/quorumq/quorumq/cluster"
)

// loadServer parses args as the server command would, completes them from
// env and the YAML text (if not empty), and returns the resulting config
// and log level.
func loadServer(t *testing.T, args []string, env map[string]string, yamlText string) (cluster.Config, string, error) {
	t.Helper()
	sf := &serverFlags{}
	fs := pflag.NewFlagSet("server", pflag.ContinueOnError)
	sf.register(fs)
	logLevel := fs.String("log-level", "info", "")
	if yamlText != "" {
		path := filepath.Join(t.TempDir(), "quorumq.yaml")
		if err := os.WriteFile(path, []byte(yamlText), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, ok := env["QUORUMQ_CONFIG"]; !ok {
			args = append(args, "--config", path)
		} else {
			env["QUORUMQ_CONFIG"] = path
		}
	}
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	if err := sf.load(fs, func(k string) string { return env[k] }); err != nil {
		return cluster.Config{}, "", err
	}
	cfg, err := sf.clusterConfig()
	return cfg, *logLevel, err
}

func TestConfigPrecedence(t *testing.T) {
	yamlText := `
data-dir: /yaml/data
node-id: yaml-node
zone: yaml-zone
http-addr: yaml:1
bootstrap-expect: 5
join: [a:7422, b:7422]
log-level: debug
`
	env := map[string]string{
		"QUORUMQ_DATA_DIR":         "/env/data",
		"QUORUMQ_NODE_ID":          "env-node",
		"QUORUMQ_BOOTSTRAP_EXPECT": "3",
		"QUORUMQ_HTTP_ADDR":        "env:1",
		"QUORUMQ_UNRELATED":        "x",
	}
	args := []string{"--data-dir", "/flag/data", "--http-addr", "flag:1"}
	cfg, level, err := loadServer(t, args, env, yamlText)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ name, got, want string }{
		{"data-dir: flag over env and yaml", cfg.DataDir, "/flag/data"},
		{"http-addr: flag over env and yaml", cfg.HTTPAddr, "flag:1"},
		{"node-id: env over yaml", cfg.NodeID, "env-node"},
		{"zone: yaml over default", cfg.Zone, "yaml-zone"},
		{"client-addr: default", cfg.ClientAddr, "0.0.0.0:7420"},
		{"peer-addr: default", cfg.PeerAddr, ":7421"},
		{"gossip-addr: default", cfg.GossipAddr, ":7422"},
		{"log-level: yaml", level, "debug"},
	} {
		if c.got != c.want {
			t.Errorf("%s: got %q, want %q", c.name, c.got, c.want)
		}
	}
	if cfg.BootstrapExpect != 3 {
		t.Errorf("bootstrap-expect: env over yaml: got %d, want 3", cfg.BootstrapExpect)
	}
	if want := []string{"a:7422", "b:7422"}; !slices.Equal(cfg.Join, want) {
		t.Errorf("join from a yaml list: got %q, want %q", cfg.Join, want)
	}
}

func TestConfigEnvAndDefaults(t *testing.T) {
	env := map[string]string{
		"QUORUMQ_DATA_DIR": "/env/data",
		"QUORUMQ_JOIN":     "x:1, y:2,",
		"QUORUMQ_ZONE":     "", // empty = unset
	}
	cfg, level, err := loadServer(t, nil, env, "")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.DataDir != "/env/data" || cfg.Zone != "" || level != "info" || cfg.BootstrapExpect != 0 {
		t.Errorf("got data dir %q, zone %q, level %q, bootstrap-expect %d", cfg.DataDir, cfg.Zone, level, cfg.BootstrapExpect)
	}
	if want := []string{"x:1", "y:2"}; !slices.Equal(cfg.Join, want) {
		t.Errorf("join: got %q, want %q", cfg.Join, want)
	}
	if cfg.ClientAddr != "0.0.0.0:7420" || cfg.HTTPAddr != ":7423" {
		t.Errorf("defaults: client %q, http %q", cfg.ClientAddr, cfg.HTTPAddr)
	}
}

func TestConfigFileFromEnv(t *testing.T) {
	env := map[string]string{"QUORUMQ_CONFIG": ""}
	cfg, _, err := loadServer(t, nil, env, "data-dir: /from/file\n")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.DataDir != "/from/file" {
		t.Errorf("data dir %q, want /from/file (file named by QUORUMQ_CONFIG)", cfg.DataDir)
	}
}

func TestConfigErrors(t *testing.T) {
	for _, c := range []struct {
		name string
		yaml string
		env  map[string]string
		want []string // substrings of the error
	}{
		{name: "unknown key", yaml: "data-dir: /d\ndata_dir: /d\n", want: []string{`unknown key "data_dir"`, "line 2"}},
		{name: "unknown nested key", yaml: "server:\n  data-dir: /d\n", want: []string{`unknown key "server"`}},
		{name: "duplicate key", yaml: "zone: a\nzone: b\n", want: []string{`"zone"`}},
		{name: "not a mapping", yaml: "- data-dir\n", want: []string{"mapping"}},
		{name: "bad int in yaml", yaml: "bootstrap-expect: three\n", want: []string{"bootstrap-expect", "line 1"}},
		{name: "map value", yaml: "zone: {a: b}\n", want: []string{"zone"}},
		{name: "bad yaml", yaml: "zone: [\n", want: []string{"config file"}},
		{name: "bad int in env", env: map[string]string{"QUORUMQ_BOOTSTRAP_EXPECT": "x"}, want: []string{"QUORUMQ_BOOTSTRAP_EXPECT"}},
		{name: "missing data dir", want: []string{"--data-dir is required"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			env := c.env
			if env == nil {
				env = map[string]string{}
			}
			_, _, err := loadServer(t, nil, env, c.yaml)
			if err == nil {
				t.Fatalf("no error")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestConfigFileEmptyAndNull(t *testing.T) {
	for _, text := range []string{"", "# nothing\n", "~\n", "zone:\n"} {
		cf, err := parseConfigFile("f.yaml", []byte(text), serverKeys)
		if err != nil {
			t.Errorf("%q: %v", text, err)
			continue
		}
		if v := cf.values["zone"]; v != "" {
			t.Errorf("%q: zone %q", text, v)
		}
	}
}

func TestEnvName(t *testing.T) {
	for name, want := range map[string]string{
		"data-dir":         "QUORUMQ_DATA_DIR",
		"bootstrap-expect": "QUORUMQ_BOOTSTRAP_EXPECT",
		"servers":          "QUORUMQ_SERVERS",
	} {
		if got := envName(name); got != want {
			t.Errorf("envName(%q) = %q, want %q", name, got, want)
		}
	}
}
