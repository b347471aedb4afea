package main

import (
	"fmt"

	"github.com/spf13/cobra"

	qv1 "github.com/quorumq/quorumq/proto/quorumq/v1"
)

func (a *app) clusterDrainCmd() *cobra.Command {
	var cancelDrain bool
	cmd := &cobra.Command{
		Use:   "drain NODE",
		Short: "Move every replica and leadership off a node while it keeps serving",
		Long: `Mark NODE draining: it takes no new replicas, and the controller moves its
replicas to other nodes (at most a few at a time), each new replica catching
up before the old one goes. Follow the progress with "quorumq cluster
partitions"; once the node hosts nothing, "quorumq cluster remove NODE"
takes it out of the cluster. --cancel makes it a normal node again.`,
		Example: `  quorumq cluster drain dev3
  quorumq cluster drain dev3 --cancel`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cc, err := a.clusterClient()
			if err != nil {
				return err
			}
			ctx, cancel := a.callCtx(cmd.Context(), 0)
			defer cancel()
			resp, err := cc.DrainNode(ctx, &qv1.DrainNodeRequest{NodeId: args[0], Cancel: cancelDrain})
			if err != nil {
				return err
			}
			if a.jsonOut() {
				return writeJSON(a.stdout, resp)
			}
			what := "draining"
			if cancelDrain {
				what = "no longer draining"
			}
			_, err = fmt.Fprintf(a.stdout, "%s is %s; it hosts %d replicas\n", args[0], what, resp.GetReplicas())
			return err
		},
	}
	cmd.Flags().BoolVar(&cancelDrain, "cancel", false, "stop draining: the node takes replicas again")
	return cmd
}

func (a *app) clusterRemoveCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "remove NODE",
		Short: "Take a node that hosts no replica out of the cluster for good",
		Long: `Remove NODE from the catalogue, the controller group and gossip. Its id is
never placed again; if it comes back with old data it rejoins no Raft group.
A node that still hosts replicas is refused: drain it first.`,
		Example: `  quorumq cluster drain dev3   # wait until it hosts nothing
  quorumq cluster remove dev3`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cc, err := a.clusterClient()
			if err != nil {
				return err
			}
			ctx, cancel := a.callCtx(cmd.Context(), 0)
			defer cancel()
			resp, err := cc.RemoveNode(ctx, &qv1.RemoveNodeRequest{NodeId: args[0]})
			if err != nil {
				return err
			}
			if a.jsonOut() {
				return writeJSON(a.stdout, resp)
			}
			_, err = fmt.Fprintf(a.stdout, "%s removed\n", args[0])
			return err
		},
	}
}

func (a *app) clusterRebalanceCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "rebalance",
		Short: "Even out replicas and leaderships over the healthy nodes",
		Long: `Plan replica moves until every healthy node holds as many replicas as the
others, within one, and spread preferred leaders the same way; hand each
partition's leadership to its preferred leader now. The moves run in the
background, a few at a time; run rebalance again once they are done
("quorumq cluster partitions" shows none in progress) to even out the
leaderships over the new layout.`,
		Example: `  quorumq cluster rebalance`,
		Args:    exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			cc, err := a.clusterClient()
			if err != nil {
				return err
			}
			ctx, cancel := a.callCtx(cmd.Context(), 0)
			defer cancel()
			resp, err := cc.Rebalance(ctx, &qv1.RebalanceRequest{})
			if err != nil {
				return err
			}
			if a.jsonOut() {
				return writeJSON(a.stdout, resp)
			}
			_, err = fmt.Fprintf(a.stdout, "%d replica moves planned, %d preferred leaders changed, %d leaderships in place\n",
				resp.GetMoves(), resp.GetLeaderChanges(), resp.GetLeadersTransferred())
			return err
		},
	}
}
