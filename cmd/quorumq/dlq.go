package main

import (
	"fmt"

	"github.com/spf13/cobra"

	qv1 "github.com/quorumq/quorumq/proto/quorumq/v1"
)

// dlqPage is how many dead letters one ListDeadLetters asks for.
const dlqPage = 1000

func (a *app) dlqCmd() *cobra.Command {
	return group("dlq", "Inspect, redrive and purge dead letters",
		`  quorumq dlq list jobs
  quorumq dlq redrive jobs 2-17 0-4
  quorumq dlq redrive jobs --max 100
  quorumq dlq purge jobs`,
		a.dlqListCmd(), a.dlqRedriveCmd(), a.dlqPurgeCmd())
}

func (a *app) dlqListCmd() *cobra.Command {
	var limit uint32
	cmd := &cobra.Command{
		Use:   "list QUEUE",
		Short: "List a queue's dead letters",
		Long: `List a queue's dead letters: messages that failed too often or were rejected.
With -o json, one DeadLetter per line.`,
		Example: `  quorumq dlq list jobs
  quorumq dlq list jobs --limit 1000 -o json | jq -r .reason`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			qc, err := a.queueClient()
			if err != nil {
				return err
			}
			var t *table
			if !a.jsonOut() {
				t = newTable(a.stdout, "MESSAGE ID", "DELIVERIES", "DEAD AT", "REASON", "PAYLOAD")
			}
			left, token := limit, ""
			for left > 0 {
				ctx, cancel := a.callCtx(cmd.Context(), 0)
				resp, err := qc.ListDeadLetters(ctx, &qv1.ListDeadLettersRequest{Queue: args[0], Limit: min(left, dlqPage), PageToken: token})
				cancel()
				if err != nil {
					return err
				}
				for _, d := range resp.GetDeadLetters() {
					if t == nil {
						if err := writeJSON(a.stdout, d); err != nil {
							return err
						}
						continue
					}
					t.row(d.GetMessageId(), d.GetDeliveryCount(), fmtTime(d.GetDeadAt()), d.GetReason(), payloadText(d.GetPayload()))
				}
				left -= min(left, uint32(len(resp.GetDeadLetters())))
				token = resp.GetNextPageToken()
				if token == "" || len(resp.GetDeadLetters()) == 0 {
					break
				}
			}
			if t != nil {
				return t.flush()
			}
			return nil
		},
	}
	cmd.Flags().Uint32Var(&limit, "limit", 100, "list at most this many")
	return cmd
}

func (a *app) dlqRedriveCmd() *cobra.Command {
	var maxPerPartition uint64
	cmd := &cobra.Command{
		Use:   "redrive QUEUE [MESSAGE_ID...]",
		Short: "Move dead letters back to the queue",
		Long: `Move dead letters back to the queue, ready to be delivered again with a fresh
delivery count: the ones named by MESSAGE_ID ("<partition>-<seq>", as dlq list
shows), else up to --max per partition (0 = all).`,
		Example: `  quorumq dlq redrive jobs
  quorumq dlq redrive jobs 2-17 0-4
  quorumq dlq redrive jobs --max 10`,
		Args: minArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 1 && cmd.Flags().Changed("max") {
				return usageErrorf(cmd, "--max and MESSAGE_ID arguments exclude each other")
			}
			qc, err := a.queueClient()
			if err != nil {
				return err
			}
			ctx, cancel := a.callCtx(cmd.Context(), 0)
			defer cancel()
			resp, err := qc.Redrive(ctx, &qv1.RedriveRequest{Queue: args[0], MessageIds: args[1:], Max: maxPerPartition})
			if err != nil {
				return err
			}
			if a.jsonOut() {
				return writeJSON(a.stdout, resp)
			}
			_, err = fmt.Fprintf(a.stdout, "moved %d\n", resp.GetMoved())
			return err
		},
	}
	cmd.Flags().Uint64Var(&maxPerPartition, "max", 0, "move at most this many per partition (0 = all)")
	return cmd
}

func (a *app) dlqPurgeCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "purge QUEUE",
		Short:   "Delete a queue's dead letters",
		Example: `  quorumq dlq purge jobs`,
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.purge(cmd, args[0], false, true)
		},
	}
}
