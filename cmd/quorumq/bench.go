package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/quorumq/quorumq/client"
)

const (
	// benchMaxPayload and benchMaxBatch are the server's limits on one
	// message's payload and on the messages of one Enqueue or Receive
	// (fsm/limits.go).
	benchMaxPayload = 1 << 20
	benchMaxBatch   = 1000
	// benchDefaultMsgs is --msgs when neither it nor --duration is given.
	benchDefaultMsgs = 100_000
)

// Bench modes.
const (
	modeEnqueue = "enqueue"
	modeConsume = "consume"
	modeE2E     = "e2e"
)

// benchOpts are the flags of bench.
type benchOpts struct {
	queue      string
	create     bool
	partitions uint32
	replicas   uint32
	mode       string
	producers  int
	consumers  int
	msgs       int64 // 0 with --duration
	duration   time.Duration
	size       int
	batch      int
	rate       int
	linger     time.Duration
	inFlight   int
}

func (a *app) benchCmd() *cobra.Command {
	o := &benchOpts{}
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure throughput and latency",
		Long: `Measure the throughput and latency of a queue (--queue, default "bench";
--create creates it, with --partitions and --replicas).

--mode enqueue: --producers enqueue --msgs messages (or for --duration) of
  --size bytes. Each producer is pipelined: it gathers batches of up to
  --batch messages per partition leader (waiting up to --linger for a
  batch to fill) and keeps up to --in-flight batches in flight. Latency:
  per message, from Send until the cluster has it on a majority of disks;
  as fast as possible, it is mostly time spent queued behind the batches
  in flight. With --consumers, consumers receive and ack at the same time.
--mode consume: --consumers receive batches of up to --batch messages and
  ack them, until --msgs are consumed, the queue is empty, or --duration
  ends. If the queue holds fewer than --msgs ready messages, it is filled
  first (said on stderr). Latency: per batch, from the start of the receive
  to the end of its ack.
--mode e2e: producers and consumers at once. Each payload starts with its
  send time and a unique id (16 bytes); consumers check that every message
  acknowledged by an enqueue is received, and count those received twice.
  Latency: per message, from its send time to its receipt. A run that
  loses a message exits 1.

--rate caps the messages per second of all producers together (0: as fast
as they go). Ctrl-C stops sending early; what was sent is still measured.

Progress goes to stderr: one line rewritten each second on a terminal,
else a line every 5 s. The result is a table, or with -o json one object:
msgs, seconds, msgs_per_sec, mb_per_sec (10^6 payload bytes), latency_us
(p50, p90, p99, p999, max), lost, duplicates, and the parameters of the
run; "phases" has the same figures for each part of the run (enqueue,
prefill, consume, e2e).`,
		Example: `  quorumq bench --create                              # enqueue 100000 messages of 128 B
  quorumq bench --producers 32 --size 1024 --duration 10s
  quorumq bench --batch 1 --in-flight 1 --msgs 2000  # one message per round trip
  quorumq bench --mode consume --consumers 4 --msgs 100000
  quorumq bench --mode e2e --rate 1000 --duration 30s -o json | jq .latency_us`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.check(cmd); err != nil {
				return err
			}
			return a.bench(cmd.Context(), o)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&o.queue, "queue", "bench", "queue to use")
	fs.BoolVar(&o.create, "create", false, "create the queue first (an existing one of the same shape is fine)")
	fs.Uint32Var(&o.partitions, "partitions", 6, "partitions of the queue --create makes")
	fs.Uint32Var(&o.replicas, "replicas", 3, "replicas of each partition of the queue --create makes")
	fs.StringVar(&o.mode, "mode", modeEnqueue, "what to measure: enqueue, consume or e2e")
	fs.IntVar(&o.producers, "producers", 1, "concurrent producers (in consume mode, to fill the queue)")
	fs.IntVar(&o.consumers, "consumers", 0, "concurrent consumers (default 0 in enqueue mode, else 1)")
	fs.Int64Var(&o.msgs, "msgs", benchDefaultMsgs, "messages in all (excludes --duration)")
	fs.DurationVar(&o.duration, "duration", 0, "send (or consume) for this long instead of --msgs messages")
	fs.IntVar(&o.size, "size", 128, "payload bytes of each message (e2e: at least 16)")
	fs.IntVar(&o.batch, "batch", 100, "messages per producer batch and per receive (1 to 1000)")
	fs.IntVar(&o.rate, "rate", 0, "messages per second of all producers together; 0 = as fast as possible")
	fs.DurationVar(&o.linger, "linger", 5*time.Millisecond, "how long a producer batch waits to fill before it is sent")
	fs.IntVar(&o.inFlight, "in-flight", 64, "batches each producer keeps in flight (1: wait for each batch)")
	return cmd
}

// check validates and completes the flags; a bad one is a usage error.
func (o *benchOpts) check(cmd *cobra.Command) error {
	fs := cmd.Flags()
	bad := func(format string, args ...any) error { return usageErrorf(cmd, format, args...) }
	switch o.mode {
	case modeEnqueue, modeConsume, modeE2E:
	default:
		return bad("--mode %q: want enqueue, consume or e2e", o.mode)
	}
	if !fs.Changed("consumers") && o.mode != modeEnqueue {
		o.consumers = 1
	}
	switch {
	case o.queue == "":
		return bad("--queue: want a name")
	case o.producers < 1:
		return bad("--producers %d: want at least 1", o.producers)
	case o.consumers < 0:
		return bad("--consumers %d: want 0 or more", o.consumers)
	case o.consumers == 0 && o.mode != modeEnqueue:
		return bad("--consumers 0: %s mode needs at least 1", o.mode)
	case fs.Changed("msgs") && fs.Changed("duration"):
		return bad("--msgs and --duration exclude each other")
	case fs.Changed("duration") && o.duration <= 0:
		return bad("--duration %v: want a positive duration", o.duration)
	case o.msgs < 1 || o.msgs >= 1<<40:
		return bad("--msgs %d: want 1 to 2^40-1", o.msgs)
	case o.size < 0 || o.size > benchMaxPayload:
		return bad("--size %d: want 0 to %d bytes", o.size, benchMaxPayload)
	case o.mode == modeE2E && o.size < benchStampBytes:
		return bad("--size %d: e2e mode needs at least %d bytes for its stamp", o.size, benchStampBytes)
	case o.batch < 1 || o.batch > benchMaxBatch:
		return bad("--batch %d: want 1 to %d", o.batch, benchMaxBatch)
	case o.rate < 0:
		return bad("--rate %d: want 0 (unlimited) or more", o.rate)
	case o.linger < 0:
		return bad("--linger %v: want 0 or more", o.linger)
	case o.inFlight < 1:
		return bad("--in-flight %d: want at least 1", o.inFlight)
	case !o.create && (fs.Changed("partitions") || fs.Changed("replicas")):
		return bad("--partitions and --replicas need --create")
	case o.partitions < 1:
		return bad("--partitions %d: want at least 1", o.partitions)
	case o.replicas < 1:
		return bad("--replicas %d: want at least 1", o.replicas)
	}
	if fs.Changed("duration") {
		o.msgs = 0
	}
	return nil
}

// bench runs one benchmark and prints its report.
func (a *app) bench(ctx context.Context, o *benchOpts) error {
	c, err := a.goClient(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = c.Close() }()

	b := &bencher{a: a, o: o, c: c, tag: rand.Uint64() & (1<<24 - 1), stop: make(chan struct{})}
	b.payload = make([]byte, o.size)
	for i := range b.payload {
		b.payload[i] = byte(rand.Uint32())
	}
	ready, err := b.prepare(ctx)
	if err != nil {
		return err
	}

	// The first Ctrl-C stops sending; the run then ends as usual. A second
	// one kills the process.
	sig, stopSignals := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stopSignals()
	go func() {
		<-sig.Done() // also when the run is over: then interrupt is moot
		stopSignals()
		b.interrupt()
	}()

	if !a.jsonOut() {
		fmt.Fprintln(a.stdout, b.describe())
	}
	prog := b.startProgress()
	rep, err := b.run(ctx, ready)
	prog.stop()
	if err != nil {
		return err
	}
	if err := b.print(rep); err != nil {
		return err
	}
	if rep.Lost > 0 {
		return &exitError{code: 1, msg: fmt.Sprintf("bench: %d of %d messages acknowledged by an enqueue were never received%s",
			rep.Lost, rep.sent, b.lostSample)}
	}
	return nil
}

// prepare creates the queue if asked, learns its partitions, and returns
// how many ready messages it holds.
func (b *bencher) prepare(ctx context.Context) (ready uint64, err error) {
	ctx, cancel := b.a.callCtx(ctx, 0)
	defer cancel()
	o := b.o
	if o.create {
		_, err := b.c.CreateQueue(ctx, o.queue, client.QueueOptions{Partitions: o.partitions, Replicas: o.replicas})
		if errors.Is(err, client.ErrAlreadyExists) {
			// Same shape, other settings: good enough for a benchmark.
			q, gerr := b.c.GetQueue(ctx, o.queue)
			if gerr != nil {
				return 0, gerr
			}
			if q.GetPartitions() != o.partitions || q.GetReplicas() != o.replicas {
				return 0, fmt.Errorf("queue %q exists with %d partitions of %d replicas, not %d of %d (delete it, or leave out --create)",
					o.queue, q.GetPartitions(), q.GetReplicas(), o.partitions, o.replicas)
			}
		} else if err != nil {
			return 0, fmt.Errorf("creating queue %q: %w", o.queue, err)
		}
	}
	q, err := b.c.GetQueue(ctx, o.queue)
	if errors.Is(err, client.ErrNotFound) {
		return 0, fmt.Errorf("queue %q not found (add --create to create it)", o.queue)
	}
	if err != nil {
		return 0, err
	}
	// Learn the partition leaders now, so that the first batches go
	// straight to them.
	parts, err := b.c.Partitions(ctx, o.queue)
	if err != nil {
		return 0, err
	}
	for _, p := range parts {
		if p.GetLeader() == "" {
			slog.Warn("bench: a partition has no leader yet", "queue", o.queue, "partition", p.GetPartition())
		}
	}
	return q.GetStats().GetReady(), nil
}

// describe is the line that opens a table report.
func (b *bencher) describe() string {
	o := b.o
	amount := fmt.Sprintf("%d messages", o.msgs)
	if o.msgs == 0 {
		amount = o.duration.String()
	}
	rate := "as fast as possible"
	if o.rate > 0 {
		rate = fmt.Sprintf("at %d msgs/s", o.rate)
	}
	return fmt.Sprintf("bench %s on queue %s: %s, %s, %d B messages, batches of %d, %s, %s",
		o.mode, o.queue, plural(o.producers, "producer"), plural(o.consumers, "consumer"), o.size, o.batch, amount, rate)
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return strconv.Itoa(n) + " " + what + "s"
}

// benchReport is the result of a run; -o json prints it as it is.
type benchReport struct {
	Mode string `json:"mode"`
	// The headline figures: of the enqueue phase in enqueue mode, of the
	// consume phase in consume mode, of the e2e phase in e2e mode.
	phaseReport
	Lost       int64         `json:"lost"`
	Duplicates int64         `json:"duplicates"`
	Queue      string        `json:"queue"`
	Size       int           `json:"size"`
	Producers  int           `json:"producers"`
	Consumers  int           `json:"consumers"`
	Batch      int           `json:"batch"`
	Rate       int           `json:"rate"`
	InFlight   int           `json:"in_flight"`
	LingerMS   float64       `json:"linger_ms"`
	Phases     []phaseReport `json:"phases"`

	sent     int64 // e2e: messages acknowledged by an enqueue
	foreign  int64 // e2e: messages received that this run did not send
	ackStale int64 // acks refused because the lease had ended
}

// phaseReport is the figures of one phase.
type phaseReport struct {
	Phase      string         `json:"phase,omitempty"` // "" in the headline
	Msgs       int64          `json:"msgs"`
	Seconds    float64        `json:"seconds"`
	MsgsPerSec float64        `json:"msgs_per_sec"`
	MBPerSec   float64        `json:"mb_per_sec"`
	LatencyUS  latencySummary `json:"latency_us"`
}

// newPhaseReport sums up msgs of bytes payload in all in elapsed, with
// latencies h.
func newPhaseReport(name string, msgs, bytes int64, elapsed time.Duration, h *histogram) phaseReport {
	p := phaseReport{Phase: name, Msgs: msgs, Seconds: round(elapsed.Seconds(), 3), LatencyUS: h.summary()}
	if elapsed > 0 {
		p.MsgsPerSec = round(float64(msgs)/elapsed.Seconds(), 1)
		p.MBPerSec = round(float64(bytes)/1e6/elapsed.Seconds(), 3)
	}
	return p
}

func round(v float64, digits int) float64 {
	p := math.Pow10(digits)
	return math.Round(v*p) / p
}

// print writes the report as a table or as one JSON object.
func (b *bencher) print(r *benchReport) error {
	w := b.a.stdout
	if b.a.jsonOut() {
		if r.Phases == nil {
			r.Phases = []phaseReport{}
		}
		data, err := json.Marshal(r)
		if err != nil {
			return err
		}
		_, err = w.Write(append(data, '\n'))
		return err
	}
	t := newTable(w, "PHASE", "MSGS", "SECONDS", "MSGS/S", "MB/S", "P50", "P90", "P99", "P99.9", "MAX")
	for _, p := range r.Phases {
		l := p.LatencyUS
		t.row(p.Phase, p.Msgs, strconv.FormatFloat(p.Seconds, 'f', 3, 64), strconv.FormatFloat(p.MsgsPerSec, 'f', 0, 64),
			strconv.FormatFloat(p.MBPerSec, 'f', 2, 64), fmtMicros(l.P50), fmtMicros(l.P90), fmtMicros(l.P99), fmtMicros(l.P999), fmtMicros(l.Max))
	}
	if err := t.flush(); err != nil {
		return err
	}
	var notes []string
	for _, p := range r.Phases {
		switch p.Phase {
		case "enqueue", "prefill":
			notes = append(notes, p.Phase+" latency: per message, from Send to stored on a majority")
		case "consume":
			notes = append(notes, "consume latency: per batch, from receive to acked")
		case "e2e":
			notes = append(notes, "e2e latency: per message, from send to received")
		}
	}
	if r.Mode == modeE2E {
		notes = append(notes, fmt.Sprintf("sent %d, lost %d, received twice %d", r.sent, r.Lost, r.Duplicates))
	}
	if r.foreign > 0 {
		notes = append(notes, fmt.Sprintf("%d messages received were not sent by this run (acked, not counted)", r.foreign))
	}
	if r.ackStale > 0 {
		notes = append(notes, fmt.Sprintf("%d acks came after the lease ended; those messages will be delivered again", r.ackStale))
	}
	for _, n := range notes {
		if _, err := fmt.Fprintln(w, n); err != nil {
			return err
		}
	}
	return nil
}

// fmtMicros shows a latency in microseconds with a unit that suits it.
func fmtMicros(us float64) string {
	switch {
	case us == 0:
		return "0"
	case us < 10:
		return strconv.FormatFloat(us, 'f', 1, 64) + "µs"
	case us < 1000:
		return strconv.FormatFloat(us, 'f', 0, 64) + "µs"
	case us < 1e6:
		return strconv.FormatFloat(us/1e3, 'f', 2, 64) + "ms"
	}
	return strconv.FormatFloat(us/1e6, 'f', 2, 64) + "s"
}

// progress prints how a run goes, on stderr, until stop.
type progress struct {
	done chan struct{}
	end  chan struct{}
}

// startProgress prints, every second on a terminal (rewriting one line),
// else every 5 s, the count and rate so far of every phase started.
func (b *bencher) startProgress() *progress {
	p := &progress{done: make(chan struct{}), end: make(chan struct{})}
	w := b.a.stderr
	tty := false
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		tty = true
	}
	every := 5 * time.Second
	if tty {
		every = time.Second
	}
	start := time.Now()
	go func() {
		defer close(p.end)
		t := time.NewTicker(every)
		defer t.Stop()
		wrote := false
		for {
			select {
			case <-p.done:
				if wrote {
					_, _ = io.WriteString(w, "\r\033[K")
				}
				return
			case now := <-t.C:
				line := b.progressLine(now, now.Sub(start))
				if line == "" {
					continue
				}
				if tty {
					_, _ = io.WriteString(w, "\r"+line+"\033[K")
					wrote = true
				} else {
					_, _ = io.WriteString(w, line+"\n")
				}
			}
		}
	}()
	return p
}

func (p *progress) stop() {
	close(p.done)
	<-p.end
}

func (b *bencher) progressLine(now time.Time, elapsed time.Duration) string {
	var parts []string
	for _, m := range b.meters() {
		n, rate, ok := m.read(now)
		if !ok {
			continue
		}
		parts = append(parts, fmt.Sprintf("%s %d msgs (%.0f msgs/s)", m.name, n, rate))
	}
	if len(parts) == 0 {
		return ""
	}
	return fmt.Sprintf("bench %s: %s", elapsed.Round(time.Second), strings.Join(parts, ", "))
}
