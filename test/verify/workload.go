package verify

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/quorumq/quorumq/client"
)

// payloadPrefix starts every payload the workload writes; the message's
// id follows it.
const payloadPrefix = "quorumq-verify "

// Config describes a workload. Zero values take the defaults in brackets.
type Config struct {
	// Client is the cluster to run against (required).
	Client *client.Client
	// Queues are the queues to use, created when missing with Partitions
	// and Replicas; each must be empty. None: NumQueues new queues named
	// "verify-<Tag>-<i>".
	Queues    []string
	NumQueues int // [1]
	// Partitions [3] and Replicas [3] of the queues created.
	Partitions, Replicas uint32

	Producers int // [2]
	Consumers int // [2]
	// Rate is the messages per second of all producers together
	// (0: as fast as they go).
	Rate float64
	// Batch is the messages of one Enqueue call [5]. The messages of a
	// batch share a key, so that a call is one request to one partition
	// and its error is every unstored message's.
	Batch int
	// ReceiveMax is the messages one Receive asks for [10].
	ReceiveMax int
	// Duration ends the run (0: only ctx does).
	Duration time.Duration

	// RequeueFraction of the deliveries are requeued after RequeueDelay
	// [100ms] instead of acked.
	RequeueFraction float64
	RequeueDelay    time.Duration
	// ExpireFraction of the receives take one message with a lease of
	// ExpireVisibility [1s] and never finish it: the lease expires.
	ExpireFraction   float64
	ExpireVisibility time.Duration
	// Visibility is the lease of every other receive [10s].
	Visibility time.Duration
	// Wait is a receive's long poll [1s].
	Wait time.Duration
	// Timeout is the deadline of each call, a receive's wait added [5s].
	// The client retries within it.
	Timeout time.Duration

	// Seed drives the workload's choices (0: random).
	Seed uint64
	// Tag makes the message ids and queue names of this run unique
	// (default: random).
	Tag string
	// History records the operations (default: a new one).
	History *History
	// Logger gets the workload's notes (default: none).
	Logger *slog.Logger
}

// withDefaults checks cfg and fills in its defaults.
func (cfg Config) withDefaults() (Config, error) {
	if cfg.Client == nil {
		return cfg, errors.New("verify: no client")
	}
	switch {
	case cfg.RequeueFraction < 0 || cfg.RequeueFraction > 1:
		return cfg, fmt.Errorf("verify: requeue fraction %v outside [0, 1]", cfg.RequeueFraction)
	case cfg.ExpireFraction < 0 || cfg.ExpireFraction > 1:
		return cfg, fmt.Errorf("verify: expire fraction %v outside [0, 1]", cfg.ExpireFraction)
	case cfg.Rate < 0:
		return cfg, fmt.Errorf("verify: negative rate %v", cfg.Rate)
	case cfg.Producers < 0 || cfg.Consumers < 0 || cfg.NumQueues < 0 || cfg.Batch < 0 || cfg.ReceiveMax < 0:
		return cfg, errors.New("verify: negative count in config")
	case cfg.Batch > 1000 || cfg.ReceiveMax > 1000:
		return cfg, errors.New("verify: batch and receive max are at most 1000")
	}
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	defDur := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&cfg.NumQueues, 1)
	def(&cfg.Producers, 2)
	def(&cfg.Consumers, 2)
	def(&cfg.Batch, 5)
	def(&cfg.ReceiveMax, 10)
	if cfg.Partitions == 0 {
		cfg.Partitions = 3
	}
	if cfg.Replicas == 0 {
		cfg.Replicas = 3
	}
	defDur(&cfg.RequeueDelay, 100*time.Millisecond)
	defDur(&cfg.ExpireVisibility, time.Second)
	defDur(&cfg.Visibility, 10*time.Second)
	defDur(&cfg.Wait, time.Second)
	defDur(&cfg.Timeout, 5*time.Second)
	if cfg.Seed == 0 {
		cfg.Seed = rand.Uint64()
	}
	if cfg.Tag == "" {
		cfg.Tag = fmt.Sprintf("%08x", rand.Uint32())
	}
	if cfg.History == nil {
		cfg.History = NewHistory()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if len(cfg.Queues) == 0 {
		for i := range cfg.NumQueues {
			cfg.Queues = append(cfg.Queues, fmt.Sprintf("verify-%s-%d", cfg.Tag, i))
		}
	}
	return cfg, nil
}

// Workload runs producers and consumers against a cluster and records
// what they did in a History.
type Workload struct {
	cfg        Config
	c          *client.Client
	h          *History
	partitions map[string]uint32 // per queue, set by Setup
}

// New checks cfg and returns a workload; Setup prepares its queues.
func New(cfg Config) (*Workload, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	return &Workload{cfg: cfg, c: cfg.Client, h: cfg.History, partitions: map[string]uint32{}}, nil
}

// Run is New, Setup and Workload.Run in one: it returns once the run is
// over, with the workload to Drain.
func Run(ctx context.Context, cfg Config) (*Workload, error) {
	w, err := New(cfg)
	if err != nil {
		return nil, err
	}
	if err := w.Setup(ctx); err != nil {
		return w, err
	}
	return w, w.Run(ctx)
}

// Queues returns the queues the workload uses.
func (w *Workload) Queues() []string { return append([]string(nil), w.cfg.Queues...) }

// History returns the workload's history.
func (w *Workload) History() *History { return w.h }

// Config returns the workload's configuration, defaults filled in.
func (w *Workload) Config() Config { return w.cfg }

// Setup creates the queues that are missing, checks that every queue is
// empty, and waits until each partition has a leader.
func (w *Workload) Setup(ctx context.Context) error {
	for _, q := range w.cfg.Queues {
		if err := w.setupQueue(ctx, q); err != nil {
			return err
		}
	}
	return nil
}

func (w *Workload) setupQueue(ctx context.Context, q string) error {
	cctx, cancel := context.WithTimeout(ctx, w.cfg.Timeout)
	_, err := w.c.CreateQueue(cctx, q, client.QueueOptions{Partitions: w.cfg.Partitions, Replicas: w.cfg.Replicas})
	cancel()
	if err != nil && !errors.Is(err, client.ErrAlreadyExists) {
		return fmt.Errorf("verify: creating queue %s: %w", q, err)
	}
	cctx, cancel = context.WithTimeout(ctx, w.cfg.Timeout)
	info, err := w.c.GetQueue(cctx, q)
	cancel()
	if err != nil {
		return fmt.Errorf("verify: queue %s: %w", q, err)
	}
	if st := info.GetStats(); st.GetReady()+st.GetDelayed()+st.GetLeased()+st.GetDead() > 0 {
		return fmt.Errorf("verify: queue %s is not empty (%d ready, %d delayed, %d leased, %d dead): use a new one", q,
			st.GetReady(), st.GetDelayed(), st.GetLeased(), st.GetDead())
	}
	w.partitions[q] = info.GetPartitions()
	if err := w.waitLeaders(ctx, q); err != nil {
		return err
	}
	now := time.Now()
	w.h.Add(Op{Kind: KindQueue, Queue: q, Invoke: now, Complete: now, Outcome: OK, Partitions: info.GetPartitions(),
		Unordered: w.cfg.RequeueFraction > 0 || w.cfg.ExpireFraction > 0})
	return nil
}

// waitLeaders polls until every partition of q has a leader.
func (w *Workload) waitLeaders(ctx context.Context, q string) error {
	last := "no answer"
	for {
		cctx, cancel := context.WithTimeout(ctx, w.cfg.Timeout)
		ps, err := w.c.Partitions(cctx, q)
		cancel()
		switch {
		case err != nil:
			last = err.Error()
		case uint32(len(ps)) != w.partitions[q]:
			last = fmt.Sprintf("%d of %d partitions listed", len(ps), w.partitions[q])
		default:
			led := 0
			for _, p := range ps {
				if p.GetLeader() != "" {
					led++
				}
			}
			if led == len(ps) {
				return nil
			}
			last = fmt.Sprintf("%d of %d partitions have a leader", led, len(ps))
		}
		if !sleepCtx(ctx, 100*time.Millisecond) {
			return fmt.Errorf("verify: queue %s: waiting for partition leaders: %w (%s)", q, ctx.Err(), last)
		}
	}
}

// Run runs the producers and consumers until ctx ends or the configured
// duration passes, then lets the calls in flight finish (each within its
// deadline) and returns. Every call and its outcome is in the history.
func (w *Workload) Run(ctx context.Context) error {
	if len(w.partitions) != len(w.cfg.Queues) {
		return errors.New("verify: Run before Setup")
	}
	if w.cfg.Duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, w.cfg.Duration)
		defer cancel()
	}
	var wg sync.WaitGroup
	for i := range w.cfg.Producers {
		wg.Go(func() { w.produce(ctx, i) })
	}
	for i := range w.cfg.Consumers {
		wg.Go(func() { w.consume(ctx, i) })
	}
	wg.Wait()
	return nil
}

// produce enqueues batches until ctx ends, paced to its share of the rate.
func (w *Workload) produce(ctx context.Context, id int) {
	proc := "p" + strconv.Itoa(id)
	var every time.Duration
	if w.cfg.Rate > 0 {
		every = time.Duration(float64(time.Second) * float64(w.cfg.Batch*w.cfg.Producers) / w.cfg.Rate)
	}
	next := time.Now()
	var sent uint64
	for n := 0; ; n++ {
		if every > 0 {
			if !sleepCtx(ctx, time.Until(next)) {
				return
			}
			next = next.Add(every)
			if late := time.Since(next); late > time.Second {
				next = time.Now() // after a stall, do not make up for it in a burst
			}
		} else if ctx.Err() != nil {
			return
		}
		q := w.cfg.Queues[(id+n)%len(w.cfg.Queues)]
		w.enqueue(ctx, proc, q, n, sent)
		sent += uint64(w.cfg.Batch)
	}
}

// enqueue sends one batch and records each message's outcome. A call in
// flight is not cut short when the run ends, only by its deadline.
func (w *Workload) enqueue(ctx context.Context, proc, q string, batch int, first uint64) {
	key := fmt.Sprintf("%s-%s-b%d", w.cfg.Tag, proc, batch)
	msgs := make([]*client.Message, w.cfg.Batch)
	ids := make([]string, w.cfg.Batch)
	for i := range msgs {
		ids[i] = fmt.Sprintf("%s-%s-%d", w.cfg.Tag, proc, first+uint64(i))
		msgs[i] = &client.Message{Payload: []byte(payloadPrefix + ids[i]), Key: key, DedupID: ids[i]}
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), w.cfg.Timeout)
	t0 := time.Now()
	res, err := w.c.Enqueue(cctx, q, msgs...)
	t1 := time.Now()
	cancel()
	outcome := Classify(err)
	for i := range msgs {
		op := Op{Kind: KindEnqueue, Queue: q, Process: proc, Invoke: t0, Complete: t1, Msg: ids[i], DedupID: ids[i]}
		if i < len(res) && res[i].MessageID != "" {
			r := res[i]
			op.Outcome, op.Partition, op.Seq, op.Duplicate = OK, r.Partition, r.Seq, r.Duplicate
		} else {
			op.Outcome = outcome
			if op.Outcome == OK { // no error, yet no id: cannot be sure
				op.Outcome = Unknown
			}
			if err != nil {
				op.Err = err.Error()
			}
		}
		w.h.Add(op)
	}
}

// consume receives and finishes messages until ctx ends.
func (w *Workload) consume(ctx context.Context, id int) {
	proc := "c" + strconv.Itoa(id)
	rng := rand.New(rand.NewPCG(w.cfg.Seed, uint64(id)))
	for n := 0; ctx.Err() == nil; n++ {
		q := w.cfg.Queues[(id+n)%len(w.cfg.Queues)]
		expire := rng.Float64() < w.cfg.ExpireFraction
		most, vis := w.cfg.ReceiveMax, w.cfg.Visibility
		if expire {
			most, vis = 1, w.cfg.ExpireVisibility
		}
		ds, err := w.receive(context.WithoutCancel(ctx), KindDeliver, proc, q, most, w.cfg.Wait, vis)
		if err != nil {
			sleepCtx(ctx, 100*time.Millisecond)
			continue
		}
		if expire {
			now := time.Now()
			for _, d := range ds {
				w.h.Add(Op{Kind: KindExpire, Queue: q, Process: proc, Invoke: now, Complete: now, Outcome: OK,
					Msg: msgOf(d.Payload), Partition: d.Partition, Seq: d.Seq, Receipt: d.Receipt})
			}
			continue
		}
		var acks, requeues []*client.Delivery
		for _, d := range ds {
			if rng.Float64() < w.cfg.RequeueFraction {
				requeues = append(requeues, d)
			} else {
				acks = append(acks, d)
			}
		}
		w.finish(context.WithoutCancel(ctx), KindRequeue, proc, q, requeues)
		w.finish(context.WithoutCancel(ctx), KindAck, proc, q, acks)
	}
}

// receive makes one Receive call and records it: a delivery op per
// message, or a receive op if it failed.
func (w *Workload) receive(ctx context.Context, kind Kind, proc, q string, most int, wait, vis time.Duration) ([]*client.Delivery, error) {
	cctx, cancel := context.WithTimeout(ctx, w.cfg.Timeout+wait)
	defer cancel()
	t0 := time.Now()
	ds, err := w.c.Receive(cctx, q, most, client.Wait(wait), client.Visibility(vis), client.ConsumerName(proc))
	t1 := time.Now()
	if err != nil {
		w.h.Add(Op{Kind: KindReceive, Queue: q, Process: proc, Invoke: t0, Complete: t1, Outcome: Classify(err), Err: err.Error()})
		return nil, err
	}
	for _, d := range ds {
		w.h.Add(Op{Kind: kind, Queue: q, Process: proc, Invoke: t0, Complete: t1, Outcome: OK, Msg: msgOf(d.Payload),
			Partition: d.Partition, Seq: d.Seq, DeliveryCount: d.DeliveryCount, Receipt: d.Receipt})
	}
	return ds, nil
}

// finish acks (kind KindAck) or requeues (KindRequeue) ds in one call and
// records each receipt's outcome.
func (w *Workload) finish(ctx context.Context, kind Kind, proc, q string, ds []*client.Delivery) {
	if len(ds) == 0 {
		return
	}
	receipts := make([]string, len(ds))
	for i, d := range ds {
		receipts[i] = d.Receipt
	}
	cctx, cancel := context.WithTimeout(ctx, w.cfg.Timeout)
	t0 := time.Now()
	var res []client.ReceiptResult
	var err error
	if kind == KindRequeue {
		res, err = w.c.Requeue(cctx, q, w.cfg.RequeueDelay, receipts...)
	} else {
		res, err = w.c.Ack(cctx, q, receipts...)
	}
	t1 := time.Now()
	cancel()
	for i, d := range ds {
		op := Op{Kind: kind, Queue: q, Process: proc, Invoke: t0, Complete: t1, Msg: msgOf(d.Payload),
			Partition: d.Partition, Seq: d.Seq, Receipt: d.Receipt}
		rerr := err
		if i < len(res) {
			rerr, op.Presumed = res[i].Err, res[i].Presumed
		}
		op.Outcome = Classify(rerr)
		if rerr != nil {
			op.Err = rerr.Error()
		}
		w.h.Add(op)
	}
}

// msgOf is the workload's message id in payload, or "" if the workload did
// not write it.
func msgOf(payload []byte) string {
	id, ok := strings.CutPrefix(string(payload), payloadPrefix)
	if !ok {
		return ""
	}
	return id
}

// sleepCtx waits d or until ctx ends, and reports whether ctx is still
// live.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
