package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	qv1 "github.com/quorumq/quorumq/proto/quorumq/v1"
)

// followWait is the long poll of recv --follow unless --wait says otherwise
// (the server's maximum).
const followWait = 20 * time.Second

type recvOpts struct {
	max        uint32
	wait       time.Duration
	visibility time.Duration
	consumer   string
	ack        bool
	follow     bool
}

func (a *app) recvCmd() *cobra.Command {
	o := &recvOpts{}
	cmd := &cobra.Command{
		Use:   "recv QUEUE",
		Short: "Receive messages",
		Long: `Receive up to --max messages, waiting up to --wait for one to be ready. Each
message is leased: invisible to other consumers until its lease ends, it is
acked (--ack, or "quorumq ack QUEUE RECEIPT") or requeued.

-o json prints one ReceivedMessage per line (payload in base64); the table
shows the payload as text when it is UTF-8, else as base64.

--follow receives in a loop of long polls (--wait defaults to 20s) until
Ctrl-C.`,
		Example: `  quorumq recv demo
  quorumq recv demo --max 10 --wait 5s --ack
  quorumq recv demo --follow --ack -o json | jq -r .payload | base64 -d
  quorumq recv jobs --visibility 10m     # a long job; ack it when done:
  quorumq ack jobs <receipt>`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.follow && !cmd.Flags().Changed("wait") {
				o.wait = followWait
			}
			return a.recv(cmd.Context(), args[0], o)
		},
	}
	fs := cmd.Flags()
	fs.Uint32Var(&o.max, "max", 1, "receive at most this many messages per request")
	fs.DurationVar(&o.wait, "wait", 0, "wait up to this long for a message (at most 20s; --follow: default 20s)")
	fs.DurationVar(&o.visibility, "visibility", 0, "lease length (default: the queue's visibility timeout)")
	fs.StringVar(&o.consumer, "consumer", "", "consumer name, for the server's records")
	fs.BoolVar(&o.ack, "ack", false, "acknowledge each message once printed")
	fs.BoolVar(&o.follow, "follow", false, "keep receiving until interrupted")
	return cmd
}

func (a *app) recv(ctx context.Context, queue string, o *recvOpts) error {
	qc, err := a.queueClient()
	if err != nil {
		return err
	}
	if o.follow {
		var stop context.CancelFunc
		ctx, stop = signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
		defer stop()
	}
	req := &qv1.ReceiveRequest{Queue: queue, Max: o.max, Consumer: o.consumer}
	if o.wait > 0 {
		req.Wait = durationpb.New(o.wait)
	}
	if o.visibility > 0 {
		req.VisibilityTimeout = durationpb.New(o.visibility)
	}
	var t *table
	if !a.jsonOut() {
		t = newTable(a.stdout, "MESSAGE ID", "DELIVERIES", "PAYLOAD", "RECEIPT")
	}
	var notOK int
	backoff := time.Duration(0)
	for {
		resp, err := a.receiveOnce(ctx, qc, req, o.wait)
		if err != nil {
			if !o.follow {
				return err
			}
			if ctx.Err() != nil {
				break // interrupted
			}
			if c := status.Code(err); c != codes.Unavailable && c != codes.DeadlineExceeded {
				return err
			}
			backoff = min(max(2*backoff, 100*time.Millisecond), 5*time.Second)
			slog.Warn("receive failed; retrying", "err", errorMessage(err), "in", backoff)
			if !sleepCtx(ctx, backoff) {
				break
			}
			continue
		}
		backoff = 0
		msgs := resp.GetMessages()
		for _, m := range msgs {
			if t == nil {
				if err := writeJSON(a.stdout, m); err != nil {
					return err
				}
				continue
			}
			t.row(m.GetMessageId(), m.GetDeliveryCount(), payloadText(m.GetPayload()), m.GetReceipt())
		}
		if t != nil {
			if err := t.flush(); err != nil {
				return err
			}
		}
		if o.ack && len(msgs) > 0 {
			// What was printed is acked even when Ctrl-C came meanwhile.
			n, err := a.ackPrinted(context.WithoutCancel(ctx), qc, queue, msgs)
			if err != nil {
				return err
			}
			notOK += n
		}
		if !o.follow || ctx.Err() != nil {
			break
		}
	}
	if notOK > 0 {
		return &exitError{code: 1}
	}
	return nil
}

func (a *app) receiveOnce(ctx context.Context, qc qv1.QueueServiceClient, req *qv1.ReceiveRequest, wait time.Duration) (*qv1.ReceiveResponse, error) {
	ctx, cancel := a.callCtx(ctx, wait)
	defer cancel()
	return qc.Receive(ctx, req)
}

// ackPrinted acks msgs and reports on stderr each receipt that is not OK;
// it returns how many were not.
func (a *app) ackPrinted(ctx context.Context, qc qv1.QueueServiceClient, queue string, msgs []*qv1.ReceivedMessage) (int, error) {
	receipts := make([]string, len(msgs))
	for i, m := range msgs {
		receipts[i] = m.GetReceipt()
	}
	ctx, cancel := a.callCtx(ctx, 0)
	defer cancel()
	resp, err := qc.Ack(ctx, &qv1.AckRequest{Queue: queue, Receipts: receipts})
	if err != nil {
		return 0, fmt.Errorf("ack: %w", err)
	}
	n := 0
	for i, r := range resp.GetResults() {
		if r.GetStatus() != qv1.ReceiptStatus_RECEIPT_STATUS_OK {
			n++
			id := ""
			if i < len(msgs) {
				id = " (message " + msgs[i].GetMessageId() + ")"
			}
			fmt.Fprintf(a.stderr, "quorumq: ack %s%s: %s\n", r.GetReceipt(), id, receiptStatusName(r.GetStatus()))
		}
	}
	return n, nil
}

// sleepCtx sleeps for d; false if ctx ended first.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
