package main

import (
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	qv1 "github.com/quorumq/quorumq/proto/quorumq/v1"
)

func (a *app) clusterGossipKeyCmd() *cobra.Command {
	return group("gossip-key", "Rotate the gossip encryption key on every live node: install, use, remove, list",
		`  quorumq certs gossip-key --out new.key
  quorumq cluster gossip-key install --key-file new.key   # every node can now read it
  quorumq cluster gossip-key use --key-file new.key       # every node now writes with it
  quorumq cluster gossip-key remove --key-file old.key    # the old one is gone
  quorumq cluster gossip-key list`,
		a.keyringOpCmd("install", "Add a key to every live node's keyring (it decrypts with it; the primary key still encrypts)"),
		a.keyringOpCmd("use", "Make an installed key the primary one on every live node: gossip is encrypted with it from now on"),
		a.keyringOpCmd("remove", "Remove a key (not the primary) from every live node's keyring"),
		a.keyringListCmd())
}

func (a *app) keyringOpCmd(op, short string) *cobra.Command {
	var keyFile string
	cmd := &cobra.Command{
		Use:   op + " [KEY]",
		Short: short,
		Long: short + `.

KEY is a base64 gossip key ('quorumq certs gossip-key' writes one), given as
the argument or read from --key-file. Each node keeps its keyring in its data
directory. A node that did not answer keeps its old keyring: the command
says which; run it again once the node is back (each step is idempotent).`,
		Example: fmt.Sprintf("  quorumq cluster gossip-key %s --key-file new.key", op),
		Args:    cobra.RangeArgs(0, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			key, err := keyArg(cmd, args, keyFile)
			if err != nil {
				return err
			}
			return a.keyringCall(cmd, &qv1.GossipKeyringRequest{Op: op, Key: key})
		},
	}
	cmd.Flags().StringVar(&keyFile, "key-file", "", "file holding the base64 key")
	return cmd
}

func (a *app) keyringListCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List every live node's gossip keys, the primary first",
		Example: `  quorumq cluster gossip-key list
  quorumq cluster gossip-key list -o json`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.keyringCall(cmd, &qv1.GossipKeyringRequest{Op: "list"})
		},
	}
}

// keyArg is the key of a keyring operation: the argument or the file.
func keyArg(cmd *cobra.Command, args []string, file string) (string, error) {
	switch {
	case len(args) == 1 && file != "":
		return "", usageErrorf(cmd, "give the key or --key-file, not both")
	case len(args) == 1:
		return args[0], nil
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return "", err
		}
		return strings.TrimSpace(string(b)), nil
	}
	return "", usageErrorf(cmd, "a key is required: KEY or --key-file FILE")
}

func (a *app) keyringCall(cmd *cobra.Command, req *qv1.GossipKeyringRequest) error {
	cc, err := a.clusterClient()
	if err != nil {
		return err
	}
	ctx, cancel := a.callCtx(cmd.Context(), 0)
	defer cancel()
	resp, err := cc.GossipKeyring(ctx, req)
	if err != nil {
		return err
	}
	nodes := resp.GetNodes()
	slices.SortFunc(nodes, func(x, y *qv1.GossipKeyringNode) int { return strings.Compare(x.GetNodeId(), y.GetNodeId()) })
	failed := 0
	for _, n := range nodes {
		if n.GetError() != "" {
			failed++
		}
	}
	if a.jsonOut() {
		for _, n := range nodes {
			if err := writeJSON(a.stdout, n); err != nil {
				return err
			}
		}
	} else {
		t := newTable(a.stdout, "NODE", "RESULT", "PRIMARY KEY", "OTHER KEYS")
		for _, n := range nodes {
			result, primary, others := "ok", "", ""
			if n.GetError() != "" {
				result = "failed: " + n.GetError()
			}
			if ks := n.GetKeys(); len(ks) > 0 {
				primary, others = ks[0], strings.Join(ks[1:], ",")
			}
			t.row(n.GetNodeId(), result, primary, others)
		}
		if err := t.flush(); err != nil {
			return err
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d nodes did not %s the key; run the command again once they are back", failed, len(nodes), req.GetOp())
	}
	return nil
}
