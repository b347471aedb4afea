package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/quorumq/quorumq/transport/pki"
)

func (a *app) contextCmd() *cobra.Command {
	return group("context", "Keep connection settings (servers, CA, certificate or token) under names: add, use, ls, show, rm",
		`  quorumq context add prod --servers q1.example:7420,q2.example:7420 --ca ./tls/ca.pem --cert ./tls/worker.pem --key ./tls/worker-key.pem --select
  quorumq context add ci --servers 10.0.0.5:7420 --ca ca.pem --token - < token.txt
  quorumq context ls
  quorumq context use prod
  quorumq --context ci queue ls
  quorumq context show
  quorumq context rm ci`,
		a.contextAddCmd(), a.contextUseCmd(), a.contextLsCmd(), a.contextShowCmd(), a.contextRmCmd())
}

func (a *app) contextStore() (*contextStore, error) { return openContextStore(a.getenv) }

func (a *app) contextAddCmd() *cobra.Command {
	var selectIt, force bool
	cmd := &cobra.Command{
		Use:   "add NAME --servers HOST:PORT,... [--ca FILE] [--cert FILE --key FILE | --token TOKEN]",
		Short: "Save connection settings as a context",
		Long: `Save the connection settings given on this command line (--servers, --ca,
--cert, --key, --token; the environment is not read) as context NAME, in
$QUORUMQ_CONFIG_DIR/contexts (default: your config directory's quorumq/),
mode 0600. Paths are stored absolute. '--token -' reads the token from
stdin, so that it stays out of the shell history.

When a context is selected (--select, 'quorumq context use', --context or
QUORUMQ_CONTEXT), each of its settings applies unless a flag or
QUORUMQ_<NAME> sets it.`,
		Example: `  quorumq context add prod --servers q1.example:7420,q2.example:7420 --ca ./tls/ca.pem --cert ./tls/me.pem --key ./tls/me-key.pem --select
  quorumq context add local --servers 127.0.0.1:7420`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if err := validContextName(name); err != nil {
				return usageErrorf(cmd, "%v", err)
			}
			if !a.cmdline["servers"] {
				return usageErrorf(cmd, "--servers is required: the client addresses of the cluster's nodes")
			}
			c := &cliContext{}
			for _, s := range a.servers {
				if s = strings.TrimSpace(s); s != "" {
					c.Servers = append(c.Servers, s)
				}
			}
			if len(c.Servers) == 0 {
				return usageErrorf(cmd, "--servers is empty")
			}
			for _, f := range []struct {
				flag, val string
				dst       *string
			}{{"ca", a.ca, &c.CA}, {"cert", a.cert, &c.Cert}, {"key", a.key, &c.Key}} {
				if !a.cmdline[f.flag] {
					continue
				}
				p, err := absPath(f.val)
				if err != nil {
					return fmt.Errorf("--%s: %w", f.flag, err)
				}
				*f.dst = p
			}
			if a.cmdline["token"] {
				c.Token = a.token
				if c.Token == "-" {
					tok, err := readTokenLine(cmd)
					if err != nil {
						return err
					}
					c.Token = tok
				}
				if c.Token == "" {
					return usageErrorf(cmd, "--token is empty")
				}
			}
			if err := checkCredentials(c.CA, c.Cert, c.Key, c.Token); err != nil {
				return usageErrorf(cmd, "%v", err)
			}
			if c.CA != "" {
				// Refuse material that would fail every command later.
				if _, err := pki.ClientTLSConfig(c.CA, c.Cert, c.Key); err != nil {
					return err
				}
			}
			store, err := a.contextStore()
			if err != nil {
				return err
			}
			if _, err := os.Stat(store.path(name)); err == nil && !force {
				return fmt.Errorf("context %q exists: --force replaces it", name)
			}
			if err := store.save(name, c); err != nil {
				return err
			}
			msg := fmt.Sprintf("context %q saved in %s", name, store.path(name))
			if selectIt {
				if err := store.use(name); err != nil {
					return err
				}
				msg += "; selected"
			}
			fmt.Fprintln(a.stdout, msg)
			return nil
		},
	}
	cmd.Flags().BoolVar(&selectIt, "select", false, "select the context too, as 'quorumq context use' does")
	cmd.Flags().BoolVar(&force, "force", false, "replace a context of that name")
	return cmd
}

// readTokenLine reads the first line of stdin, for '--token -'.
func readTokenLine(cmd *cobra.Command) (string, error) {
	sc := bufio.NewScanner(cmd.InOrStdin())
	if !sc.Scan() {
		if err := sc.Err(); err != nil {
			return "", fmt.Errorf("--token -: reading stdin: %w", err)
		}
		return "", usageErrorf(cmd, "--token -: stdin is empty")
	}
	return strings.TrimSpace(sc.Text()), nil
}

func (a *app) contextUseCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "use NAME",
		Short: "Select a context: later commands take their connection settings from it",
		Long: `Select context NAME: commands take from it every connection setting that
neither a flag nor QUORUMQ_<NAME> sets (the credential — certificate, key,
token — as one: giving any of them replaces the context's). --context and
QUORUMQ_CONTEXT pick
another context for one command or one shell.`,
		Example: `  quorumq context use prod`,
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			store, err := a.contextStore()
			if err != nil {
				return err
			}
			if err := validContextName(args[0]); err != nil {
				return usageErrorf(cmd, "%v", err)
			}
			if err := store.use(args[0]); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "context %q selected\n", args[0])
			if v := a.getenv(envName("context")); v != "" && v != args[0] {
				fmt.Fprintf(a.stderr, "quorumq: note: %s=%s overrides it where it is set\n", envName("context"), v)
			}
			return nil
		},
	}
}

// contextView is a context as ls and show print it: the token redacted.
type contextView struct {
	Name     string   `json:"name"`
	Selected bool     `json:"selected"`
	Servers  []string `json:"servers,omitempty"`
	CA       string   `json:"ca,omitempty"`
	Cert     string   `json:"cert,omitempty"`
	Key      string   `json:"key,omitempty"`
	Token    string   `json:"token,omitempty"`
	Path     string   `json:"path"`
}

func newContextView(store *contextStore, name, selected string, c *cliContext) contextView {
	return contextView{Name: name, Selected: name == selected, Servers: c.Servers, CA: c.CA, Cert: c.Cert, Key: c.Key,
		Token: redactToken(c.Token), Path: store.path(name)}
}

// redactToken keeps a token's kind (the "qq_" of a quorumq token) only.
func redactToken(t string) string {
	if t == "" {
		return ""
	}
	if strings.HasPrefix(t, "qq_") {
		return "qq_<redacted>"
	}
	return "<redacted>"
}

// credential says how a context authenticates, for ls.
func (v contextView) credential() string {
	switch {
	case v.Cert != "" && v.Token != "":
		return "certificate and token"
	case v.Cert != "":
		return "certificate " + v.Cert
	case v.Token != "":
		return "token"
	}
	return ""
}

func (a *app) contextLsCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List the contexts; * marks the selected one",
		Example: `  quorumq context ls
  quorumq context ls -o json`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			store, err := a.contextStore()
			if err != nil {
				return err
			}
			names, err := store.names()
			if err != nil {
				return err
			}
			selected, _, err := a.selectedContext(store)
			if err != nil {
				return err
			}
			t := newTable(a.stdout)
			if !a.jsonOut() {
				t.row(" ", "NAME", "SERVERS", "TLS", "CREDENTIAL")
			}
			for _, n := range names {
				c, err := store.load(n)
				if err != nil {
					return err
				}
				v := newContextView(store, n, selected, c)
				if a.jsonOut() {
					if err := writeLineJSON(a.stdout, v); err != nil {
						return err
					}
					continue
				}
				mark, tlsCol := " ", "no"
				if v.Selected {
					mark = "*"
				}
				if v.CA != "" {
					tlsCol = "CA " + v.CA
				}
				t.row(mark, n, strings.Join(v.Servers, ","), tlsCol, v.credential())
			}
			if a.jsonOut() {
				return nil
			}
			if len(names) == 0 {
				fmt.Fprintf(a.stdout, "no contexts in %s: 'quorumq context add' saves one\n", store.contextsDir())
				return nil
			}
			return t.flush()
		},
	}
}

func (a *app) contextShowCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "show [NAME]",
		Short: "Show a context (default: the selected one), its token redacted",
		Example: `  quorumq context show
  quorumq context show prod -o json`,
		Args: rangeArgs(0, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			store, err := a.contextStore()
			if err != nil {
				return err
			}
			selected, by, err := a.selectedContext(store)
			if err != nil {
				return err
			}
			name := selected
			if len(args) == 1 {
				name = args[0]
			}
			if name == "" {
				return fmt.Errorf("no context selected: name one, or select one with 'quorumq context use NAME'")
			}
			c, err := store.load(name)
			if err != nil {
				if len(args) == 0 {
					err = fmt.Errorf("%w, selected by %s", err, by)
				}
				return err
			}
			v := newContextView(store, name, selected, c)
			if a.jsonOut() {
				return writeLineJSON(a.stdout, v)
			}
			sel := "no"
			if v.Selected {
				sel = "yes, by " + by
			}
			client := ""
			if v.Cert != "" {
				client = certClientNames(v.Cert)
			}
			return writeKV(a.stdout,
				[2]string{"name", v.Name},
				[2]string{"selected", sel},
				[2]string{"servers", strings.Join(v.Servers, ",")},
				[2]string{"ca", v.CA},
				[2]string{"cert", v.Cert},
				[2]string{"key", v.Key},
				[2]string{"client", client},
				[2]string{"token", v.Token},
				[2]string{"file", v.Path})
		},
	}
}

// certClientNames names the client a certificate file identifies, or says
// why it cannot.
func certClientNames(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	certs, err := pki.ParseCertificates(b)
	if err != nil {
		return fmt.Sprintf("(%s: %v)", path, err)
	}
	names := pki.ClientNames(certs[0])
	if len(names) == 0 {
		return "(the certificate names no client)"
	}
	return strings.Join(names, ",") + ", expires " + certs[0].NotAfter.Local().Format("2006-01-02")
}

func (a *app) contextRmCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "rm NAME",
		Aliases: []string{"remove"},
		Short:   "Delete a context (and the selection, if it was the selected one)",
		Example: `  quorumq context rm ci`,
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			store, err := a.contextStore()
			if err != nil {
				return err
			}
			if err := validContextName(args[0]); err != nil {
				return usageErrorf(cmd, "%v", err)
			}
			cur, _ := store.current()
			if err := store.remove(args[0]); err != nil {
				return err
			}
			msg := fmt.Sprintf("context %q removed", args[0])
			if cur == args[0] {
				msg += "; no context is selected now"
			}
			fmt.Fprintln(a.stdout, msg)
			return nil
		},
	}
}

// writeLineJSON writes v as one line of JSON.
func writeLineJSON(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}
