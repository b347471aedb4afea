// Command quorumq is both the quorumq server and its command-line client.
//
//	quorumq server --data-dir /var/lib/quorumq --bootstrap-expect 3 --join quorumq-0.quorumq
//	quorumq dev
//	quorumq queue create demo --partitions 3
//	echo hello | quorumq send demo
//	quorumq recv demo --ack
//
// It only parses flags and calls the cluster package (server, dev) or the
// public gRPC API (everything else).
package main

import (
	"context"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/term"
)

func main() {
	a := &app{
		stdin:  os.Stdin,
		stdout: os.Stdout,
		stderr: os.Stderr,
		getenv: os.Getenv,
		isTerminal: func() bool {
			return term.IsTerminal(int(os.Stdout.Fd()))
		},
	}
	os.Exit(a.run(context.Background(), os.Args[1:]))
}

// app is one run of the binary: its streams, its environment and the
// global flags every command shares.
type app struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	getenv         func(string) string
	isTerminal     func() bool // stdout is a terminal

	// Global flags.
	servers              []string
	ca, cert, key, token string
	contextName          string
	output               string
	timeout              time.Duration
	logLevel             string

	// cmdline: the flags set on the command line; explicit: those set on
	// the command line or by their environment variable.
	cmdline, explicit map[string]bool

	settings *connSettings // resolved by the first command that connects
	conn     *failover     // opened by the first client command
}

// run executes the command line args and returns the exit status: 0, 1 for
// a failure, 2 for a usage error.
func (a *app) run(ctx context.Context, args []string) int {
	root := a.rootCmd()
	root.SetArgs(args)
	root.SetIn(a.stdin)
	root.SetOut(a.stdout)
	root.SetErr(a.stderr)
	err := root.ExecuteContext(ctx)
	err = a.explain(ctx, err)
	if a.conn != nil {
		a.conn.Close()
	}
	return a.report(err)
}

// globalFlags are the root's persistent flags, which also come from
// QUORUMQ_<NAME> environment variables.
var globalFlags = []string{"servers", "ca", "cert", "key", "token", "context", "output", "timeout", "log-level"}

func (a *app) rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "quorumq",
		Short: "A distributed, replicated work queue",
		Long: `quorumq is a distributed, replicated work queue: one binary that is both
the server and the command-line client.

Client commands talk to any node of a cluster (--servers); the node forwards
to the partition's leader. Every flag NAME can also be set with the
environment variable QUORUMQ_<NAME>, dashes written as underscores
(QUORUMQ_SERVERS, QUORUMQ_DATA_DIR).

A secure cluster speaks TLS on its client port: give its CA (--ca) and a
credential, a client certificate (--cert, --key) or a token (--token). A
context ('quorumq context add') keeps these settings under a name; the
selected one completes what neither a flag nor QUORUMQ_<NAME> sets.
'quorumq dev' writes and selects one for its cluster.`,
		Example: `  # A local three-node cluster, then a queue, a message and a consumer:
  quorumq dev
  quorumq queue create demo --partitions 3
  echo hello | quorumq send demo
  quorumq recv demo --ack`,
		Args:          noSubcommand,
		RunE:          func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			// The root's own flag set: a command's flag of the same name
			// (send --key, the partition key) shadows a global one on its
			// command line, and must not take the global's environment.
			gf := cmd.Root().PersistentFlags()
			a.cmdline, a.explicit = map[string]bool{}, map[string]bool{}
			gf.VisitAll(func(f *pflag.Flag) { a.cmdline[f.Name] = f.Changed })
			if err := applyConfig(gf, globalFlags, a.getenv, nil); err != nil {
				return usageErrorf(cmd, "%v", err)
			}
			gf.VisitAll(func(f *pflag.Flag) { a.explicit[f.Name] = f.Changed })
			if a.output == "" {
				a.output = "json"
				if a.isTerminal != nil && a.isTerminal() {
					a.output = "table"
				}
			}
			if a.output != "table" && a.output != "json" {
				return usageErrorf(cmd, "--output %q: want table or json", a.output)
			}
			if a.timeout <= 0 {
				return usageErrorf(cmd, "--timeout %v: want a positive duration", a.timeout)
			}
			if err := a.setupLogging(); err != nil {
				return usageErrorf(cmd, "%v", err)
			}
			return nil
		},
	}
	root.CompletionOptions.DisableDefaultCmd = true
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return &usageError{cmd: cmd, err: err}
	})

	pf := root.PersistentFlags()
	pf.StringSliceVar(&a.servers, "servers", []string{"127.0.0.1:7420"}, "client addresses (host:port) of cluster nodes, tried in order")
	pf.StringVar(&a.ca, "ca", "", "PEM bundle of the cluster's CA: speak TLS to the servers and check their certificates against it (default: plaintext)")
	pf.StringVar(&a.cert, "cert", "", "client certificate, to authenticate with ('quorumq certs client'; needs --key and --ca)")
	pf.StringVar(&a.key, "key", "", "private key of --cert (on send, --key is the partition key: use QUORUMQ_KEY or a context there)")
	pf.StringVar(&a.token, "token", "", "bearer token to authenticate with ('quorumq acl token create'; only sent over TLS, needs --ca)")
	pf.StringVar(&a.contextName, "context", "", "context to take connection settings from (default: the one 'quorumq context use' selected)")
	pf.StringVarP(&a.output, "output", "o", "", "output format: table or json (default: table on a terminal, else json)")
	pf.DurationVar(&a.timeout, "timeout", 10*time.Second, "deadline of each request (a receive's --wait is added)")
	pf.StringVar(&a.logLevel, "log-level", "info", "log level on stderr: debug, info, warn or error")

	root.AddCommand(
		a.serverCmd(),
		a.devCmd(),
		a.queueCmd(),
		a.sendCmd(),
		a.recvCmd(),
		a.receiptCmd(ackOp),
		a.receiptCmd(requeueOp),
		a.receiptCmd(extendOp),
		a.receiptCmd(rejectOp),
		a.dlqCmd(),
		a.clusterCmd(),
		a.aclCmd(),
		a.certsCmd(),
		a.contextCmd(),
		a.healthCmd(),
		a.benchCmd(),
		a.verifyCmd(),
		a.versionCmd(),
	)
	return root
}

// group returns a command that only holds subcommands: alone it prints its
// help; with an unknown subcommand it is a usage error.
func group(use, short, example string, subs ...*cobra.Command) *cobra.Command {
	c := &cobra.Command{
		Use:     use,
		Short:   short,
		Example: example,
		Args:    noSubcommand,
		RunE:    func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	c.AddCommand(subs...)
	return c
}
