package main

import (
	"fmt"
	"strconv"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	qv1 "github.com/quorumq/quorumq/proto/quorumq/v1"
)

func (a *app) queueCmd() *cobra.Command {
	return group("queue", "Create, inspect, list, delete and purge queues",
		`  quorumq queue create jobs --partitions 6 --visibility 2m
  quorumq queue get jobs
  quorumq queue list
  quorumq queue purge jobs --dead
  quorumq queue delete jobs`,
		a.queueCreateCmd(), a.queueGetCmd(), a.queueListCmd(), a.queueDeleteCmd(), a.queuePurgeCmd())
}

func (a *app) queueCreateCmd() *cobra.Command {
	var (
		partitions, replicas uint32
		visibility           time.Duration
		maxDeliveries        uint32
		dedupWindow          time.Duration
		retention            time.Duration
		maxMessages          uint64
		maxBytes             uint64
	)
	cmd := &cobra.Command{
		Use:   "create NAME",
		Short: "Create a queue",
		Long: `Create a queue of --partitions partitions, each replicated on --replicas
nodes. Settings not given take the server's defaults (visibility 30s,
max deliveries 10, dedup window 5m, retention 96h, no size limits).`,
		Example: `  quorumq queue create demo --partitions 3
  quorumq queue create jobs --partitions 12 --replicas 3 --visibility 5m --max-deliveries 5
  quorumq queue create events --retention 24h --max-messages 1000000 --dedup-window 0`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			fs := cmd.Flags()
			s := &qv1.QueueSettings{
				MaxMessagesPerPartition: maxMessages,
				MaxBytesPerPartition:    maxBytes,
			}
			if fs.Changed("visibility") {
				s.VisibilityTimeout = durationpb.New(visibility)
			}
			if fs.Changed("max-deliveries") {
				s.MaxDeliveries = proto.Uint32(maxDeliveries)
			}
			if fs.Changed("dedup-window") {
				s.DedupWindow = durationpb.New(dedupWindow)
			}
			if fs.Changed("retention") {
				s.Retention = durationpb.New(retention)
			}
			qc, err := a.queueClient()
			if err != nil {
				return err
			}
			ctx, cancel := a.callCtx(cmd.Context(), 0)
			defer cancel()
			resp, err := qc.CreateQueue(ctx, &qv1.CreateQueueRequest{Name: args[0], Partitions: partitions, Replicas: replicas, Settings: s})
			if err != nil {
				return err
			}
			return a.printQueue(resp.GetQueue())
		},
	}
	fs := cmd.Flags()
	fs.Uint32Var(&partitions, "partitions", 1, "number of partitions (at most 1024)")
	fs.Uint32Var(&replicas, "replicas", 0, "replicas of each partition (default: 3, or the number of nodes if fewer)")
	fs.DurationVar(&visibility, "visibility", 0, "default lease of a received message (server default 30s)")
	fs.Uint32Var(&maxDeliveries, "max-deliveries", 0, "deliveries before a message goes to dead-letter; 0 = unlimited (server default 10)")
	fs.DurationVar(&dedupWindow, "dedup-window", 0, "how long a dedup id is remembered; 0 = off (server default 5m)")
	fs.DurationVar(&retention, "retention", 0, "age at which messages are deleted; 0 = kept until acked (server default 96h)")
	fs.Uint64Var(&maxMessages, "max-messages", 0, "messages stored per partition; 0 = unlimited")
	fs.Uint64Var(&maxBytes, "max-bytes", 0, "bytes stored per partition; 0 = unlimited")
	return cmd
}

func (a *app) queueGetCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "get NAME",
		Short:   "Show a queue's settings and message counts",
		Example: `  quorumq queue get demo`,
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			qc, err := a.queueClient()
			if err != nil {
				return err
			}
			ctx, cancel := a.callCtx(cmd.Context(), 0)
			defer cancel()
			resp, err := qc.GetQueue(ctx, &qv1.GetQueueRequest{Name: args[0]})
			if err != nil {
				return err
			}
			return a.printQueue(resp.GetQueue())
		},
	}
}

func (a *app) queueListCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List queues",
		Long:  "List queues. With -o json, one Queue object per line.",
		Example: `  quorumq queue list
  quorumq queue list -o json | jq -r .name`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			qc, err := a.queueClient()
			if err != nil {
				return err
			}
			ctx, cancel := a.callCtx(cmd.Context(), 0)
			defer cancel()
			resp, err := qc.ListQueues(ctx, &qv1.ListQueuesRequest{})
			if err != nil {
				return err
			}
			if a.jsonOut() {
				for _, q := range resp.GetQueues() {
					if err := writeJSON(a.stdout, q); err != nil {
						return err
					}
				}
				return nil
			}
			t := newTable(a.stdout, "NAME", "PARTITIONS", "REPLICAS", "VISIBILITY", "MAX DELIVERIES", "RETENTION", "CREATED")
			for _, q := range resp.GetQueues() {
				s := q.GetSettings()
				t.row(q.GetName(), q.GetPartitions(), q.GetReplicas(), fmtDuration(s.GetVisibilityTimeout()),
					maxDeliveriesText(s), fmtDuration(s.GetRetention()), fmtTime(q.GetCreatedAt()))
			}
			return t.flush()
		},
	}
}

func (a *app) queueDeleteCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "delete NAME",
		Short:   "Delete a queue and all its messages",
		Example: `  quorumq queue delete demo`,
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			qc, err := a.queueClient()
			if err != nil {
				return err
			}
			ctx, cancel := a.callCtx(cmd.Context(), 0)
			defer cancel()
			resp, err := qc.DeleteQueue(ctx, &qv1.DeleteQueueRequest{Name: args[0]})
			if err != nil {
				return err
			}
			if a.jsonOut() {
				return writeJSON(a.stdout, resp)
			}
			_, err = fmt.Fprintf(a.stdout, "deleted queue %s\n", args[0])
			return err
		},
	}
}

func (a *app) queuePurgeCmd() *cobra.Command {
	var ready, dead bool
	cmd := &cobra.Command{
		Use:   "purge NAME",
		Short: "Delete a queue's ready messages, or its dead letters",
		Long: `Delete a queue's ready and delayed messages (--ready, the default) and/or its
dead-letter list (--dead). Leased messages are left alone.`,
		Example: `  quorumq queue purge demo
  quorumq queue purge demo --dead
  quorumq queue purge demo --ready --dead`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !dead {
				ready = true
			}
			return a.purge(cmd, args[0], ready, dead)
		},
	}
	cmd.Flags().BoolVar(&ready, "ready", false, "purge ready and delayed messages (the default unless --dead)")
	cmd.Flags().BoolVar(&dead, "dead", false, "purge the dead-letter list")
	return cmd
}

func (a *app) purge(cmd *cobra.Command, queue string, ready, dead bool) error {
	qc, err := a.queueClient()
	if err != nil {
		return err
	}
	ctx, cancel := a.callCtx(cmd.Context(), 0)
	defer cancel()
	resp, err := qc.Purge(ctx, &qv1.PurgeRequest{Queue: queue, Ready: ready, Dead: dead})
	if err != nil {
		return err
	}
	if a.jsonOut() {
		return writeJSON(a.stdout, resp)
	}
	_, err = fmt.Fprintf(a.stdout, "purged %d ready, %d dead\n", resp.GetPurgedReady(), resp.GetPurgedDead())
	return err
}

// printQueue writes one queue: its settings, then its counts when the
// server sent them.
func (a *app) printQueue(q *qv1.Queue) error {
	if a.jsonOut() {
		return writeJSON(a.stdout, q)
	}
	s := q.GetSettings()
	kv := [][2]string{
		{"name", q.GetName()},
		{"id", strconv.FormatUint(q.GetId(), 10)},
		{"partitions", strconv.FormatUint(uint64(q.GetPartitions()), 10)},
		{"replicas", strconv.FormatUint(uint64(q.GetReplicas()), 10)},
		{"created", fmtTime(q.GetCreatedAt())},
		{"visibility", fmtDuration(s.GetVisibilityTimeout())},
		{"max deliveries", maxDeliveriesText(s)},
		{"dedup window", offIfZero(s.GetDedupWindow())},
		{"retention", offIfZero(s.GetRetention())},
		{"max messages", limitText(s.GetMaxMessagesPerPartition(), strconv.FormatUint(s.GetMaxMessagesPerPartition(), 10)+" per partition")},
		{"max bytes", limitText(s.GetMaxBytesPerPartition(), fmtBytes(s.GetMaxBytesPerPartition())+" per partition")},
	}
	if st := q.GetStats(); st != nil {
		kv = append(kv,
			[2]string{"ready", strconv.FormatUint(st.GetReady(), 10)},
			[2]string{"delayed", strconv.FormatUint(st.GetDelayed(), 10)},
			[2]string{"leased", strconv.FormatUint(st.GetLeased(), 10)},
			[2]string{"dead", strconv.FormatUint(st.GetDead(), 10)},
			[2]string{"bytes", fmtBytes(st.GetBytes())},
			[2]string{"oldest ready", fmtDuration(st.GetOldestReadyAge())},
			[2]string{"enqueued total", strconv.FormatUint(st.GetEnqueuedTotal(), 10)},
			[2]string{"acked total", strconv.FormatUint(st.GetAckedTotal(), 10)},
			[2]string{"dead-lettered total", strconv.FormatUint(st.GetDeadLetteredTotal(), 10)},
			[2]string{"expired total", strconv.FormatUint(st.GetExpiredTotal(), 10)},
		)
	}
	if n := q.GetPartitionsUnavailable(); n > 0 {
		kv = append(kv, [2]string{"unavailable", fmt.Sprintf("%d partitions did not answer; counts are partial", n)})
	}
	return writeKV(a.stdout, kv...)
}

func maxDeliveriesText(s *qv1.QueueSettings) string {
	if s.MaxDeliveries == nil {
		return ""
	}
	return limitText(uint64(s.GetMaxDeliveries()), strconv.FormatUint(uint64(s.GetMaxDeliveries()), 10))
}

func limitText(n uint64, text string) string {
	if n == 0 {
		return "unlimited"
	}
	return text
}

func offIfZero(d *durationpb.Duration) string {
	if d != nil && d.AsDuration() == 0 {
		return "off"
	}
	return fmtDuration(d)
}
