package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	qv1 "github.com/quorumq/quorumq/proto/quorumq/v1"
)

// receiptOp is one of the commands that act on received messages by their
// receipts.
type receiptOp int

const (
	ackOp receiptOp = iota
	requeueOp
	extendOp
	rejectOp
)

func (a *app) receiptCmd(op receiptOp) *cobra.Command {
	var (
		delay      time.Duration
		visibility time.Duration
		reason     string
	)
	cmd := &cobra.Command{
		Args: minArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			queue, receipts := args[0], args[1:]
			qc, err := a.queueClient()
			if err != nil {
				return err
			}
			ctx, cancel := a.callCtx(cmd.Context(), 0)
			defer cancel()
			var results []*qv1.ReceiptResult
			switch op {
			case ackOp:
				results, err = call(ctx, qc.Ack, &qv1.AckRequest{Queue: queue, Receipts: receipts})
			case requeueOp:
				req := &qv1.RequeueRequest{Queue: queue, Receipts: receipts}
				if delay != 0 {
					req.Delay = durationpb.New(delay)
				}
				results, err = call(ctx, qc.Requeue, req)
			case extendOp:
				req := &qv1.ExtendLeaseRequest{Queue: queue, Receipts: receipts}
				if visibility != 0 {
					req.VisibilityTimeout = durationpb.New(visibility)
				}
				results, err = call(ctx, qc.ExtendLease, req)
			case rejectOp:
				results, err = call(ctx, qc.Reject, &qv1.RejectRequest{Queue: queue, Receipts: receipts, Reason: reason})
			}
			if err != nil {
				return err
			}
			return a.printReceiptResults(cmd.Name(), results)
		},
	}
	switch op {
	case ackOp:
		cmd.Use = "ack QUEUE RECEIPT..."
		cmd.Short = "Acknowledge received messages: they are done and deleted"
		cmd.Example = `  quorumq ack demo <receipt> <receipt>
  quorumq recv demo -o json | jq -r .receipt | xargs quorumq ack demo`
	case requeueOp:
		cmd.Use = "requeue QUEUE RECEIPT..."
		cmd.Short = "Give received messages back, to be delivered again"
		cmd.Example = `  quorumq requeue demo <receipt>
  quorumq requeue demo <receipt> --delay 1m`
		cmd.Flags().DurationVar(&delay, "delay", 0, "deliver again no sooner than this")
	case extendOp:
		cmd.Use = "extend QUEUE RECEIPT..."
		cmd.Short = "Extend the lease of received messages"
		cmd.Long = "Extend the lease of received messages: they stay invisible to other consumers for --visibility from now."
		cmd.Example = `  quorumq extend jobs <receipt> --visibility 10m`
		cmd.Flags().DurationVar(&visibility, "visibility", 0, "new lease length from now (default: the queue's visibility timeout)")
	case rejectOp:
		cmd.Use = "reject QUEUE RECEIPT..."
		cmd.Short = "Move received messages to the dead-letter list at once"
		cmd.Example = `  quorumq reject jobs <receipt> --reason "malformed payload"`
		cmd.Flags().StringVar(&reason, "reason", "", "why, kept with the dead letter")
	}
	cmd.Long += "\n\nPrints each receipt's status; exits 1 if any is not ok (stale: the message\nwas leased again since; unknown: acked, expired or deleted)."
	cmd.Long = strings.TrimPrefix(cmd.Long, "\n\n")
	return cmd
}

// receiptResponse is the response of every receipt operation.
type receiptResponse interface {
	GetResults() []*qv1.ReceiptResult
}

// call runs one receipt RPC and returns its results.
func call[Req any, Resp receiptResponse](ctx context.Context, rpc func(context.Context, Req, ...grpc.CallOption) (Resp, error), req Req) ([]*qv1.ReceiptResult, error) {
	resp, err := rpc(ctx, req)
	if err != nil {
		return nil, err
	}
	return resp.GetResults(), nil
}

func (a *app) printReceiptResults(op string, results []*qv1.ReceiptResult) error {
	notOK := 0
	var t *table
	if !a.jsonOut() {
		t = newTable(a.stdout, "RECEIPT", "STATUS")
	}
	for _, r := range results {
		if r.GetStatus() != qv1.ReceiptStatus_RECEIPT_STATUS_OK {
			notOK++
		}
		if t == nil {
			if err := writeJSON(a.stdout, r); err != nil {
				return err
			}
			continue
		}
		t.row(r.GetReceipt(), receiptStatusName(r.GetStatus()))
	}
	if t != nil {
		if err := t.flush(); err != nil {
			return err
		}
	}
	if notOK > 0 {
		return fmt.Errorf("%s: %d of %d receipts not ok", op, notOK, len(results))
	}
	return nil
}

// receiptStatusName: RECEIPT_STATUS_STALE -> "stale".
func receiptStatusName(s qv1.ReceiptStatus) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "RECEIPT_STATUS_"))
}
