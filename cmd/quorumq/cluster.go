package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	qv1 "github.com/quorumq/quorumq/proto/quorumq/v1"
)

func (a *app) clusterCmd() *cobra.Command {
	return group("cluster", "Inspect the cluster: status, members, partitions",
		`  quorumq cluster status
  quorumq cluster members
  quorumq cluster partitions --queue demo
  quorumq cluster transfer-leader demo 0 --to dev2
  quorumq cluster drain dev3 && quorumq cluster remove dev3
  quorumq cluster rebalance
  quorumq cluster gossip-key list`,
		a.clusterStatusCmd(), a.clusterMembersCmd(), a.clusterPartitionsCmd(), a.clusterTransferCmd(),
		a.clusterDrainCmd(), a.clusterRemoveCmd(), a.clusterRebalanceCmd(), a.clusterGossipKeyCmd())
}

func (a *app) clusterStatusCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show the answering node's view of the cluster",
		Example: `  quorumq cluster status
  quorumq cluster status --servers 10.0.0.7:7420 -o json`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			cc, err := a.clusterClient()
			if err != nil {
				return err
			}
			ctx, cancel := a.callCtx(cmd.Context(), 0)
			defer cancel()
			st, err := cc.Status(ctx, &qv1.StatusRequest{})
			if err != nil {
				return err
			}
			if a.jsonOut() {
				return writeJSON(a.stdout, st)
			}
			u := func(n uint32) string { return strconv.FormatUint(uint64(n), 10) }
			return writeKV(a.stdout,
				[2]string{"node", st.GetNodeId()},
				[2]string{"version", st.GetVersion()},
				[2]string{"ready", strconv.FormatBool(st.GetReady())},
				[2]string{"controller leader", st.GetControllerLeader()},
				[2]string{"members", u(st.GetMembers())},
				[2]string{"queues", u(st.GetQueues())},
				[2]string{"partitions", u(st.GetPartitions())},
				[2]string{"local replicas", u(st.GetLocalReplicas())},
				[2]string{"local leaders", u(st.GetLocalLeaders())},
			)
		},
	}
}

func (a *app) clusterMembersCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "members",
		Short: "List the nodes, as gossip and the catalogue see them",
		Long:  "List the nodes, as gossip and the catalogue see them. With -o json, one Member per line.",
		Example: `  quorumq cluster members
  quorumq cluster members -o json | jq -r .clientAddr`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			cc, err := a.clusterClient()
			if err != nil {
				return err
			}
			ctx, cancel := a.callCtx(cmd.Context(), 0)
			defer cancel()
			resp, err := cc.Members(ctx, &qv1.MembersRequest{})
			if err != nil {
				return err
			}
			if a.jsonOut() {
				for _, m := range resp.GetMembers() {
					if err := writeJSON(a.stdout, m); err != nil {
						return err
					}
				}
				return nil
			}
			t := newTable(a.stdout, "ID", "GOSSIP", "CATALOG", "CLIENT", "PEER", "GOSSIP ADDR", "HTTP", "ZONE", "VERSION")
			var refused []string
			for _, m := range resp.GetMembers() {
				catalog := m.GetCatalogState()
				if m.GetRefused() {
					catalog = "refused"
					refused = append(refused, fmt.Sprintf("%s refused: %s", m.GetId(), m.GetRefusedReason()))
				}
				t.row(m.GetId(), m.GetGossipState(), catalog, m.GetClientAddr(), m.GetPeerAddr(),
					m.GetGossipAddr(), m.GetHttpAddr(), m.GetZone(), m.GetVersion())
			}
			if err := t.flush(); err != nil {
				return err
			}
			for _, r := range refused {
				fmt.Fprintln(a.stdout, r)
			}
			return nil
		},
	}
}

func (a *app) clusterPartitionsCmd() *cobra.Command {
	var queue string
	cmd := &cobra.Command{
		Use:   "partitions",
		Short: "List partitions: leader, Raft indexes, replicas and counts",
		Long: `List partitions with their leader, term, commit and applied index, replicas
("+" marks a new replica catching up, "-" one leaving: a move in progress)
and message counts.
With -o json, one PartitionInfo per line.`,
		Example: `  quorumq cluster partitions
  quorumq cluster partitions --queue demo`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			cc, err := a.clusterClient()
			if err != nil {
				return err
			}
			ctx, cancel := a.callCtx(cmd.Context(), 0)
			defer cancel()
			resp, err := cc.Partitions(ctx, &qv1.PartitionsRequest{Queue: queue})
			if err != nil {
				return err
			}
			if a.jsonOut() {
				for _, p := range resp.GetPartitions() {
					if err := writeJSON(a.stdout, p); err != nil {
						return err
					}
				}
				return nil
			}
			t := newTable(a.stdout, "QUEUE", "PARTITION", "LEADER", "TERM", "COMMIT", "APPLIED", "REPLICAS", "READY", "LEASED", "DEAD")
			for _, p := range resp.GetPartitions() {
				var reps []string
				for _, r := range p.GetReplicas() {
					s := r.GetNodeId()
					if !r.GetVoter() {
						s += "+"
					}
					if r.GetLeaving() {
						s += "-"
					}
					if r.GetLag() > 0 {
						s += fmt.Sprintf("(lag %d)", r.GetLag())
					}
					reps = append(reps, s)
				}
				st := p.GetStats()
				t.row(p.GetQueue(), p.GetPartition(), p.GetLeader(), p.GetTerm(), p.GetCommitIndex(), p.GetAppliedIndex(),
					strings.Join(reps, ","), st.GetReady(), st.GetLeased(), st.GetDead())
			}
			return t.flush()
		},
	}
	cmd.Flags().StringVar(&queue, "queue", "", "only this queue's partitions")
	return cmd
}

func (a *app) clusterTransferCmd() *cobra.Command {
	var to string
	cmd := &cobra.Command{
		Use:   "transfer-leader QUEUE PARTITION",
		Short: "Move a partition's leadership to another replica",
		Example: `  quorumq cluster transfer-leader demo 0
  quorumq cluster transfer-leader demo 2 --to dev3`,
		Args: exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := strconv.ParseUint(args[1], 10, 32)
			if err != nil {
				return usageErrorf(cmd, "PARTITION %q: want a partition number", args[1])
			}
			return clusterCall(a, cmd, func(ctx context.Context, cc qv1.ClusterServiceClient) (*qv1.TransferLeadershipResponse, error) {
				return cc.TransferLeadership(ctx, &qv1.TransferLeadershipRequest{Queue: args[0], Partition: uint32(p), To: to})
			}, func(resp *qv1.TransferLeadershipResponse) string {
				return fmt.Sprintf("leader of %s/%d: %s", args[0], p, resp.GetLeader())
			})
		},
	}
	cmd.Flags().StringVar(&to, "to", "", "node id of the new leader (default: Raft's choice)")
	return cmd
}
