package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"

	qv1 "github.com/quorumq/quorumq/proto/quorumq/v1"
)

// A batch read from stdin is sent as one Enqueue once it holds
// sendBatchMessages lines or sendBatchBytes bytes (under gRPC's default
// 4 MiB request limit), or as soon as no more input is waiting.
const (
	sendBatchMessages = 500
	sendBatchBytes    = 3 << 20
)

// sendOpts are what send puts on every message.
type sendOpts struct {
	key     string
	dedupID string
	delay   time.Duration
	headers []string // k=v
	file    string
}

func (o *sendOpts) message(payload []byte, headers map[string]string) *qv1.Message {
	m := &qv1.Message{Payload: payload, Key: o.key, Headers: headers, DedupId: o.dedupID}
	if o.delay != 0 {
		m.Delay = durationpb.New(o.delay)
	}
	return m
}

func parseHeaders(kvs []string) (map[string]string, error) {
	if len(kvs) == 0 {
		return nil, nil
	}
	h := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--header %q: want key=value", kv)
		}
		h[k] = v
	}
	return h, nil
}

func (a *app) sendCmd() *cobra.Command {
	o := &sendOpts{}
	cmd := &cobra.Command{
		Use:   "send QUEUE [DATA...]",
		Short: "Enqueue messages",
		Long: `Enqueue one message per DATA argument; with none, one message per line of
standard input (without its newline), sent in batches of up to 500; with
--file, the whole file as one message ("-" for standard input).

Each message is acknowledged only once it is on disk on a majority of its
partition's replicas. Prints each message's id, partition and whether it was
a duplicate (-o json: one EnqueueResult per line).`,
		Example: `  quorumq send demo hello world
  echo hello | quorumq send demo
  seq 1 10000 | quorumq send demo -o json
  quorumq send jobs --key customer-42 --header type=invoice '{"id": 7}'
  quorumq send jobs --dedup-id order-1001 --delay 30s "charge order 1001"
  quorumq send images --file photo.jpg`,
		Args: minArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			queue, data := args[0], args[1:]
			headers, err := parseHeaders(o.headers)
			if err != nil {
				return &usageError{cmd: cmd, err: err}
			}
			if o.file != "" && len(data) > 0 {
				return usageErrorf(cmd, "--file and DATA arguments exclude each other")
			}
			if o.dedupID != "" && len(data) > 1 {
				return usageErrorf(cmd, "--dedup-id needs exactly one message, got %d", len(data))
			}
			s, err := a.newSender(cmd.Context(), queue)
			if err != nil {
				return err
			}
			switch {
			case o.file != "":
				payload, err := a.readFile(o.file)
				if err != nil {
					return err
				}
				return s.send([]*qv1.Message{o.message(payload, headers)})
			case len(data) > 0:
				for len(data) > 0 {
					n := min(len(data), sendBatchMessages)
					msgs := make([]*qv1.Message, n)
					for i, d := range data[:n] {
						msgs[i] = o.message([]byte(d), headers)
					}
					if err := s.send(msgs); err != nil {
						return err
					}
					data = data[n:]
				}
				return nil
			}
			return a.sendLines(cmd, s, o, headers)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&o.key, "key", "", "partition key: messages with one key go to one partition, in order")
	fs.StringVar(&o.dedupID, "dedup-id", "", "deduplication id (a single message only)")
	fs.DurationVar(&o.delay, "delay", 0, "deliver no sooner than this")
	fs.StringArrayVar(&o.headers, "header", nil, "header key=value (repeatable)")
	fs.StringVar(&o.file, "file", "", `send this file's contents as one message ("-" = standard input)`)
	return cmd
}

func (a *app) readFile(name string) ([]byte, error) {
	if name == "-" {
		return io.ReadAll(a.stdin)
	}
	return os.ReadFile(name)
}

// sender enqueues batches and prints their results.
type sender struct {
	a     *app
	ctx   context.Context
	qc    qv1.QueueServiceClient
	queue string
	table *table // nil with -o json
	sent  int
}

func (a *app) newSender(ctx context.Context, queue string) (*sender, error) {
	qc, err := a.queueClient()
	if err != nil {
		return nil, err
	}
	s := &sender{a: a, ctx: ctx, qc: qc, queue: queue}
	if !a.jsonOut() {
		s.table = newTable(a.stdout, "MESSAGE ID", "PARTITION", "DUPLICATE")
	}
	return s, nil
}

func (s *sender) send(msgs []*qv1.Message) error {
	ctx, cancel := s.a.callCtx(s.ctx, 0)
	defer cancel()
	resp, err := s.qc.Enqueue(ctx, &qv1.EnqueueRequest{Queue: s.queue, Messages: msgs})
	if err != nil {
		if s.sent > 0 {
			return fmt.Errorf("after %d messages sent: %w", s.sent, err)
		}
		return err
	}
	s.sent += len(msgs)
	for _, r := range resp.GetResults() {
		if s.table == nil {
			if err := writeJSON(s.a.stdout, r); err != nil {
				return err
			}
			continue
		}
		s.table.row(r.GetMessageId(), r.GetPartition(), r.GetDuplicate())
	}
	if s.table != nil {
		return s.table.flush()
	}
	return nil
}

// sendLines sends one message per line of stdin. Lines are read ahead by a
// goroutine; each batch takes what is already waiting, so a file goes in
// large batches and a slow pipe is sent line by line without delay.
func (a *app) sendLines(cmd *cobra.Command, s *sender, o *sendOpts, headers map[string]string) error {
	lines := make(chan []byte, sendBatchMessages)
	readErr := make(chan error, 1)
	done := make(chan struct{})
	defer close(done)
	go func() {
		defer close(lines)
		r := bufio.NewReaderSize(a.stdin, 64<<10)
		for {
			line, err := r.ReadBytes('\n')
			if len(line) > 0 {
				select {
				case lines <- bytes.TrimSuffix(line, []byte("\n")):
				case <-done:
					return
				}
			}
			if err != nil {
				if !errors.Is(err, io.EOF) {
					readErr <- err
				}
				return
			}
		}
	}()
	var carry []byte // a line read that did not fit the last batch
	for {
		line, ok := carry, carry != nil
		carry = nil
		if !ok {
			if line, ok = <-lines; !ok {
				break
			}
		}
		batch := []*qv1.Message{o.message(line, headers)}
		size := len(line)
	fill:
		for len(batch) < sendBatchMessages {
			select {
			case l, ok := <-lines:
				if !ok {
					break fill
				}
				if size+len(l) > sendBatchBytes {
					carry = l
					break fill
				}
				batch = append(batch, o.message(l, headers))
				size += len(l)
			default:
				break fill
			}
		}
		if o.dedupID != "" && (s.sent+len(batch) > 1 || carry != nil) {
			return usageErrorf(cmd, "--dedup-id needs exactly one message, but standard input has more than one line")
		}
		if err := s.send(batch); err != nil {
			return err
		}
	}
	select {
	case err := <-readErr:
		return fmt.Errorf("reading standard input: %w", err)
	default:
		return nil
	}
}
