package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	"github.com/quorumq/quorumq/cluster"
	qv1 "github.com/quorumq/quorumq/proto/quorumq/v1"
	"github.com/quorumq/quorumq/transport/pki"
)

// formTimeout bounds how long dev waits for its cluster to form.
const formTimeout = 30 * time.Second

func (a *app) devCmd() *cobra.Command {
	var (
		dir      string
		nodes    int
		basePort int
		insecure bool
	)
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run a local multi-node cluster in this process",
		Long: `Run a local cluster of --nodes nodes in this one process, on 127.0.0.1, until
Ctrl-C. Node i (from 0) listens on --base-port+10*i (client), +1 (peer),
+2 (gossip) and +3 (HTTP): the first node has the standard ports
7420-7423, so client commands reach it without --servers.

Data is kept under --dir (default: quorumq-dev in the temporary directory)
and reused by the next run; delete the directory to start afresh.

The cluster is secure as a production one is: the nodes talk mutual TLS with
a throwaway CA, node certificates and gossip key created in --dir/tls (kept
with the data), and the client port wants TLS and a credential. dev issues
the admin client certificate (--dir/tls/client-admin.pem), writes a context
named "dev" (servers, CA, certificate) and selects it, so that client
commands reach the cluster as admin with no flag. --insecure turns all of
that off; the "dev" context then holds the servers only.`,
		Example: `  quorumq dev
  quorumq dev --nodes 5 --dir ./data
  quorumq dev --base-port 8420 &
  quorumq cluster members              # through the "dev" context
  quorumq context show dev`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if nodes < 1 || nodes > 99 {
				return usageErrorf(cmd, "--nodes %d: want 1 to 99", nodes)
			}
			if basePort < 1 || basePort+10*(nodes-1)+3 > 65535 {
				return usageErrorf(cmd, "--base-port %d: the ports of %d nodes do not fit below 65536", basePort, nodes)
			}
			if dir == "" {
				dir = filepath.Join(os.TempDir(), "quorumq-dev")
			}
			// The context stores absolute paths; the nodes do not care.
			abs, err := filepath.Abs(dir)
			if err != nil {
				return err
			}
			dir = abs
			cfgs, err := devConfigs(dir, nodes, basePort, insecure)
			if err != nil {
				return err
			}
			ctxCfg, err := devContext(dir, cfgs)
			if err != nil {
				return err
			}
			return a.dev(cmd.Context(), cfgs, ctxCfg)
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "data directory of the nodes, one subdirectory each (default: $TMPDIR/quorumq-dev)")
	cmd.Flags().IntVar(&nodes, "nodes", 3, "number of nodes")
	cmd.Flags().IntVar(&basePort, "base-port", cluster.DefaultClientPort, "first port; node i uses base+10*i to base+10*i+3")
	cmd.Flags().BoolVar(&insecure, "insecure", false, "no TLS (client port, between nodes), no authentication, no gossip encryption")
	return cmd
}

// devConfigs are the configurations of a local cluster of n nodes: ids
// dev1..devN, data in dir/devI, ports from base, every node but the first
// joining the first's gossip address; unless insecure, TLS material and a
// gossip key in dir/tls (created on first use).
func devConfigs(dir string, n, base int, insecure bool) ([]cluster.Config, error) {
	var local *pki.Local
	if !insecure {
		var err error
		if local, err = pki.OpenLocal(filepath.Join(dir, "tls")); err != nil {
			return nil, fmt.Errorf("dev TLS material: %w", err)
		}
	}
	addr := func(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }
	cfgs := make([]cluster.Config, n)
	for i := range cfgs {
		id := "dev" + strconv.Itoa(i+1)
		p := base + 10*i
		cfgs[i] = cluster.Config{
			NodeID:          id,
			DataDir:         filepath.Join(dir, id),
			ClientAddr:      addr(p),
			PeerAddr:        addr(p + 1),
			GossipAddr:      addr(p + 2),
			HTTPAddr:        addr(p + 3),
			AdvertiseHost:   "127.0.0.1",
			BootstrapExpect: n,
		}
		if i > 0 {
			cfgs[i].Join = []string{addr(base + 2)}
		}
		if insecure {
			cfgs[i].Insecure = true
			continue
		}
		f, err := local.Node(id)
		if err != nil {
			return nil, fmt.Errorf("dev TLS material: %w", err)
		}
		cfgs[i].TLSCAFile, cfgs[i].TLSCertFile, cfgs[i].TLSKeyFile, cfgs[i].GossipKeyFile = f.CA, f.Cert, f.Key, local.GossipKeyFile
	}
	return cfgs, nil
}

// devContextName is the context dev writes and selects.
const devContextName = "dev"

// devAdmin is the client name of the admin certificate dev issues (one of
// cluster.DefaultAdminIdentities).
const devAdmin = "admin"

// devContext is the context of the cluster of cfgs: its client addresses,
// and unless it is insecure, the CA and the admin client certificate
// (issued in dir/tls if missing).
func devContext(dir string, cfgs []cluster.Config) (*cliContext, error) {
	c := &cliContext{}
	for _, cfg := range cfgs {
		c.Servers = append(c.Servers, cfg.ClientAddr)
	}
	if cfgs[0].Insecure {
		return c, nil
	}
	local, err := pki.OpenLocal(filepath.Join(dir, "tls"))
	if err != nil {
		return nil, fmt.Errorf("dev TLS material: %w", err)
	}
	f, err := local.Client(devAdmin)
	if err != nil {
		return nil, fmt.Errorf("dev admin certificate: %w", err)
	}
	c.CA, c.Cert, c.Key = f.CA, f.Cert, f.Key
	return c, nil
}

// dev starts the nodes, waits for them to form a cluster, and stops them
// all gracefully on SIGINT or SIGTERM. Its context is written and selected
// once the nodes listen.
func (a *app) dev(ctx context.Context, cfgs []cluster.Config, devCtx *cliContext) error {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	dir := filepath.Dir(cfgs[0].DataDir)
	fmt.Fprintf(a.stdout, "quorumq dev: %d nodes, data in %s (kept across runs; delete it to start afresh)\n", len(cfgs), dir)

	var nodes []*cluster.Node
	for _, cfg := range cfgs {
		cfg.Logger = slog.Default()
		n, err := cluster.Start(cfg)
		if err != nil {
			return errors.Join(fmt.Errorf("%s: %w", cfg.NodeID, err), stopAll(nodes))
		}
		nodes = append(nodes, n)
	}
	store, err := a.contextStore()
	if err == nil {
		err = store.save(devContextName, devCtx)
	}
	if err == nil {
		err = store.use(devContextName)
	}
	if err != nil {
		return errors.Join(fmt.Errorf("writing the dev context: %w", err), stopAll(nodes))
	}
	how := "servers only: the cluster is insecure"
	if devCtx.CA != "" {
		how = "as " + devAdmin + ", with the certificate in " + filepath.Dir(devCtx.Cert)
	}
	fmt.Fprintf(a.stdout, "quorumq dev: context %q written to %s and selected (%s); client commands use it\n", devContextName, store.path(devContextName), how)

	creds, err := (&connSettings{ca: devCtx.CA, cert: devCtx.Cert, key: devCtx.Key, tls: devCtx.CA != ""}).dialOptions()
	if err != nil {
		return errors.Join(err, stopAll(nodes))
	}
	leader, err := waitFormed(ctx, nodes[0].ClientAddr(), len(nodes), creds)
	if err != nil {
		if ctx.Err() != nil {
			err = nil // interrupted while forming: just stop
		}
		return errors.Join(err, stopAll(nodes))
	}

	fmt.Fprintf(a.stdout, "quorumq dev: cluster of %d nodes is up, controller leader %s\n", len(nodes), leader)
	t := newTable(a.stdout)
	for _, n := range nodes {
		t.row("  "+n.ID(), "client "+n.ClientAddr(), "http http://"+n.HTTPAddr()+"/")
	}
	_ = t.flush()
	fmt.Fprintln(a.stdout, "Try:")
	if v := a.getenv(envName("context")); v != "" && v != devContextName {
		fmt.Fprintf(a.stdout, "  unset %s   # it selects context %q instead\n", envName("context"), v)
	}
	fmt.Fprint(a.stdout, `  quorumq queue create demo --partitions 3
  echo hello | quorumq send demo
  quorumq recv demo --ack
  quorumq cluster partitions
Ctrl-C stops the cluster.
`)

	<-ctx.Done()
	stop() // a second signal ends the process at once
	slog.Info("stopping all nodes", "timeout", stopTimeout)
	if err := stopAll(nodes); err != nil {
		return err
	}
	fmt.Fprintln(a.stdout, "quorumq dev: stopped")
	return nil
}

// stopAll stops the nodes gracefully, one after the other, within
// stopTimeout. One at a time, each node leaves while the rest are up to hear
// it and to take over what it led.
func stopAll(nodes []*cluster.Node) error {
	ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
	defer cancel()
	var errs []error
	for _, n := range nodes {
		if err := n.Stop(ctx); err != nil {
			errs = append(errs, fmt.Errorf("stop %s: %w", n.ID(), err))
		}
	}
	return errors.Join(errs...)
}

// waitFormed polls the node at addr (dialled with opts) until it reports a controller leader
// and n members, for at most formTimeout. It returns the leader's id.
func waitFormed(ctx context.Context, addr string, n int, opts []grpc.DialOption) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, formTimeout)
	defer cancel()
	cc, err := grpc.NewClient(addr, opts...)
	if err != nil {
		return "", err
	}
	defer cc.Close()
	client := qv1.NewClusterServiceClient(cc)
	last := "no answer yet"
	for {
		cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := client.Status(cctx, &qv1.StatusRequest{})
		ccancel()
		switch {
		case err != nil:
			last = errorMessage(err)
		case st.GetControllerLeader() != "" && int(st.GetMembers()) == n:
			return st.GetControllerLeader(), nil
		default:
			last = fmt.Sprintf("controller leader %q, %d of %d members", st.GetControllerLeader(), st.GetMembers(), n)
		}
		slog.Debug("waiting for the cluster to form", "status", last)
		if !sleepCtx(ctx, 200*time.Millisecond) {
			return "", fmt.Errorf("cluster did not form within %v: %s", formTimeout, last)
		}
	}
}
