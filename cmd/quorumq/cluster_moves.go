package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"

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
			return clusterCall(a, cmd, func(ctx context.Context, cc qv1.ClusterServiceClient) (*qv1.DrainNodeResponse, error) {
				return cc.DrainNode(ctx, &qv1.DrainNodeRequest{NodeId: args[0], Cancel: cancelDrain})
			}, func(resp *qv1.DrainNodeResponse) string {
				what := "draining"
				if cancelDrain {
					what = "no longer draining"
				}
				return fmt.Sprintf("%s is %s; it hosts %d replicas", args[0], what, resp.GetReplicas())
			})
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
			return clusterCall(a, cmd, func(ctx context.Context, cc qv1.ClusterServiceClient) (*qv1.RemoveNodeResponse, error) {
				return cc.RemoveNode(ctx, &qv1.RemoveNodeRequest{NodeId: args[0]})
			}, func(*qv1.RemoveNodeResponse) string { return args[0] + " removed" })
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
			return clusterCall(a, cmd, func(ctx context.Context, cc qv1.ClusterServiceClient) (*qv1.RebalanceResponse, error) {
				return cc.Rebalance(ctx, &qv1.RebalanceRequest{})
			}, func(resp *qv1.RebalanceResponse) string {
				return fmt.Sprintf("%d replica moves planned, %d preferred leaders changed, %d leaderships in place",
					resp.GetMoves(), resp.GetLeaderChanges(), resp.GetLeadersTransferred())
			})
		},
	}
}

// clusterCall runs one ClusterService call within the request deadline and
// prints its response: as JSON with -o json, else text's one line.
func clusterCall[R proto.Message](a *app, cmd *cobra.Command, call func(context.Context, qv1.ClusterServiceClient) (R, error), text func(R) string) error {
	cc, err := a.clusterClient()
	if err != nil {
		return err
	}
	ctx, cancel := a.callCtx(cmd.Context(), 0)
	defer cancel()
	resp, err := call(ctx, cc)
	if err != nil {
		return err
	}
	if a.jsonOut() {
		return writeJSON(a.stdout, resp)
	}
	_, err = fmt.Fprintln(a.stdout, text(resp))
	return err
}
