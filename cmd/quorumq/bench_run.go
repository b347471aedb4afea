package main

import (
	"context"
	endian "encoding/binary" // "binary" is the test binary's path in e2e_test.go
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quorumq/quorumq/client"
)

const (
	// benchStampBytes open every e2e payload: the send time (Unix ns) and
	// the message id, both big-endian; the id is the run's 24-bit tag, then
	// a 40-bit sequence number.
	benchStampBytes = 16
	benchSeqBits    = 40
	// consumeWait is the long poll of a receive in consume mode: a
	// consumer whose receive finds nothing in that time stops.
	consumeWait = time.Second
	// e2eWait is the long poll of a receive while producers may still send.
	e2eWait = 500 * time.Millisecond
	// drainIdle: once the producers are done, e2e consumers stop when
	// every message is in, or when no new one came for this long. A message
	// whose receive answer was lost comes back only after its lease (the
	// queue's visibility timeout, 30 s by default), too late for this.
	drainIdle = 10 * time.Second
	// paceSlack is how far the pacer lets producers fall behind and then
	// catch up at full speed: enough to absorb a timer's oversleep or a
	// busy machine's scheduling delay, too little for a burst after a
	// long stall.
	paceSlack = 100 * time.Millisecond
)

// bencher is one run of bench.
type bencher struct {
	a       *app
	o       *benchOpts
	c       *client.Client
	tag     uint64 // e2e: this run's tag in every message id
	payload []byte // of every message (e2e: after the stamp)

	stop     chan struct{} // closed by interrupt: send no more
	stopOnce sync.Once

	mu sync.Mutex
	ms []*meter // in the order the phases were set up

	lostSample string // e2e: "; first: <ids>" of lost messages
}

// interrupt stops the producers (Ctrl-C).
func (b *bencher) interrupt() { b.stopOnce.Do(func() { close(b.stop) }) }

func (b *bencher) interrupted() bool {
	select {
	case <-b.stop:
		return true
	default:
		return false
	}
}

// meter counts a phase's messages for the progress line.
type meter struct {
	name       string
	n          atomic.Int64
	start, end atomic.Int64 // Unix ns; 0 = not yet
}

func (b *bencher) newMeter(name string) *meter {
	m := &meter{name: name}
	b.mu.Lock()
	b.ms = append(b.ms, m)
	b.mu.Unlock()
	return m
}

func (b *bencher) meters() []*meter {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]*meter(nil), b.ms...)
}

func (m *meter) begin(t time.Time)  { m.start.Store(t.UnixNano()) }
func (m *meter) finish(t time.Time) { m.end.Store(t.UnixNano()) }

// read returns the count and the rate so far; ok is false before begin.
func (m *meter) read(now time.Time) (n int64, rate float64, ok bool) {
	s := m.start.Load()
	if s == 0 {
		return 0, 0, false
	}
	e := m.end.Load()
	if e == 0 {
		e = now.UnixNano()
	}
	n = m.n.Load()
	if d := time.Duration(e - s); d > 0 {
		rate = float64(n) / d.Seconds()
	}
	return n, rate, true
}

// pacer spaces sends to a rate shared by every producer. Send slots follow
// a fixed schedule, so that a producer that overslept catches up; but the
// schedule never lags the clock by more than paceSlack, so that a stall
// is not followed by a burst.
type pacer struct {
	every time.Duration // between two sends; 0 = no limit
	mu    sync.Mutex
	next  time.Time
}

// newPacer paces to rate messages per second; 0 means no limit.
func newPacer(rate int) *pacer {
	if rate <= 0 {
		return &pacer{}
	}
	return &pacer{every: max(time.Second/time.Duration(rate), 1)}
}

// reserve takes the next send slot and returns how long the caller has to
// wait, from now, for it to come (<= 0: send at once).
func (p *pacer) reserve(now time.Time) time.Duration {
	if p.every == 0 {
		return 0
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.next.IsZero() {
		p.next = now // the first send: no catching up to do
	}
	if floor := now.Add(-paceSlack); p.next.Before(floor) {
		p.next = floor
	}
	at := p.next
	p.next = at.Add(p.every)
	return at.Sub(now)
}

// putStamp writes the e2e stamp at the start of p.
func putStamp(p []byte, sent time.Time, tag, seq uint64) {
	endian.BigEndian.PutUint64(p[0:8], uint64(sent.UnixNano()))
	endian.BigEndian.PutUint64(p[8:16], tag<<benchSeqBits|seq)
}

// readStamp reads what putStamp wrote; ok is false if p is too short.
func readStamp(p []byte) (sent time.Time, tag, seq uint64, ok bool) {
	if len(p) < benchStampBytes {
		return time.Time{}, 0, 0, false
	}
	id := endian.BigEndian.Uint64(p[8:16])
	return time.Unix(0, int64(endian.BigEndian.Uint64(p[0:8]))), id >> benchSeqBits, id & (1<<benchSeqBits - 1), true
}

// bitset is a growable set of small integers.
type bitset []uint64

// set adds i and says whether it was there already.
func (s *bitset) set(i uint64) (was bool) {
	w := int(i / 64)
	if w >= len(*s) {
		*s = append(*s, make([]uint64, max(w+1, 2*len(*s))-len(*s))...)
	}
	m := uint64(1) << (i % 64)
	was = (*s)[w]&m != 0
	(*s)[w] |= m
	return was
}

func (s bitset) has(i uint64) bool {
	w := int(i / 64)
	return w < len(s) && s[w]&(1<<(i%64)) != 0
}

// tracker checks an e2e run: which messages were acknowledged by an
// enqueue (sent), which were received, and which were received twice.
type tracker struct {
	mu           sync.Mutex
	sent, seen   bitset
	nSent, nSeen int64
	nBoth, nDup  int64 // sent and seen; seen again
	nForeign     int64
	lastNew      time.Time
}

func (t *tracker) markSent(seq uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.sent.set(seq) {
		t.nSent++
		if t.seen.has(seq) {
			t.nBoth++
		}
	}
}

// markSeen records messages received at at, and foreign ones that were
// not this run's.
func (t *tracker) markSeen(seqs []uint64, foreign int64, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.nForeign += foreign
	for _, s := range seqs {
		if t.seen.set(s) {
			t.nDup++
			continue
		}
		t.nSeen++
		t.lastNew = at
		if t.sent.has(s) {
			t.nBoth++
		}
	}
}

// missing is how many messages sent so far were not received (yet).
func (t *tracker) missing() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.nSent - t.nBoth
}

func (t *tracker) lastReceived() time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.lastNew
}

// lostSeqs returns up to n sequence numbers sent and never received.
func (t *tracker) lostSeqs(n int) []uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []uint64
	for w, bits := range t.sent {
		if w < len(t.seen) {
			bits &^= t.seen[w]
		}
		for i := uint64(0); bits != 0 && len(out) < n; i++ {
			if bits&1 != 0 {
				out = append(out, uint64(w)*64+i)
			}
			bits >>= 1
		}
		if len(out) >= n {
			break
		}
	}
	return out
}

// phaseResult is what a group of producers or consumers measured.
type phaseResult struct {
	msgs  int64
	bytes int64 // of the payloads of msgs
	start time.Time
	last  time.Time // the last message done
	lat   *histogram
	stale int64 // consumers: acks refused as stale
}

func (r *phaseResult) elapsed() time.Duration {
	if r.last.Before(r.start) {
		return 0
	}
	return r.last.Sub(r.start)
}

// merge adds o, a result of another goroutine of the same phase.
func (r *phaseResult) merge(o *phaseResult) {
	r.msgs += o.msgs
	r.bytes += o.bytes
	r.stale += o.stale
	if o.last.After(r.last) {
		r.last = o.last
	}
	r.lat.merge(o.lat)
}

// produceCfg is a group of producers.
type produceCfg struct {
	total    int64         // messages; 0 = for duration
	duration time.Duration // with total == 0
	pace     *pacer
	tr       *tracker // e2e: stamp messages and record them as sent
	m        *meter
}

// produce runs the producers until they have sent cfg.total messages or
// for cfg.duration, or until interrupt, and waits for every message's
// outcome. The first failure is given to fail and ends the run.
func (b *bencher) produce(ctx context.Context, fail func(error), cfg produceCfg) *phaseResult {
	var next atomic.Int64
	res := &phaseResult{start: time.Now(), lat: &histogram{}}
	cfg.m.begin(res.start)
	var until time.Time
	if cfg.total == 0 {
		until = res.start.Add(cfg.duration)
	}
	results := make([]*phaseResult, b.o.producers)
	var wg sync.WaitGroup
	for i := range results {
		r := &phaseResult{lat: &histogram{}}
		results[i] = r
		wg.Go(func() { b.producer(ctx, fail, &next, until, cfg, r) })
	}
	wg.Wait()
	for _, r := range results {
		res.merge(r)
	}
	cfg.m.finish(res.last)
	return res
}

// sending is a message sent and not yet known to be stored.
type sending struct {
	at  time.Time
	fut *client.Future
	seq uint64
}

// producer is one pipelined producer. Send returns at once while fewer
// than MaxInFlight batches are in flight; the futures are reaped in order
// by a second goroutine, which records each message's latency when it sees
// its future done. A future done before one sent earlier is seen late,
// which overstates its latency by that much.
func (b *bencher) producer(ctx context.Context, fail func(error), next *atomic.Int64, until time.Time, cfg produceCfg, r *phaseResult) {
	o := b.o
	opts := []client.ProducerOption{client.Linger(o.linger), client.MaxBatchMessages(o.batch),
		client.MaxInFlight(o.inFlight), client.SendTimeout(b.a.timeout)}
	if n := o.batch * (o.size + 64); n > 1<<20 {
		opts = append(opts, client.MaxBatchBytes(n))
	}
	p := b.c.NewProducer(o.queue, opts...)
	pending := make(chan sending, (o.inFlight+1)*o.batch)
	reaped := make(chan struct{})
	go func() {
		defer close(reaped)
		for s := range pending {
			<-s.fut.Done()
			now := time.Now()
			if _, err := s.fut.Wait(context.Background()); err != nil {
				fail(fmt.Errorf("enqueue: %w", err))
				continue
			}
			r.lat.record(now.Sub(s.at))
			r.msgs++
			r.bytes += int64(o.size)
			r.last = now
			cfg.m.n.Add(1)
			if cfg.tr != nil {
				cfg.tr.markSent(s.seq)
			}
		}
	}()
	for ctx.Err() == nil && !b.interrupted() {
		seq := next.Add(1) - 1
		if cfg.total > 0 && seq >= cfg.total {
			break
		}
		now := time.Now()
		if !until.IsZero() && !now.Before(until) {
			break
		}
		if wait := cfg.pace.reserve(now); wait > 0 && !b.sleep(ctx, wait) {
			break
		}
		m := &client.Message{Payload: b.payload}
		at := time.Now()
		if cfg.tr != nil {
			m.Payload = make([]byte, len(b.payload))
			copy(m.Payload[benchStampBytes:], b.payload[benchStampBytes:])
			putStamp(m.Payload, at, b.tag, uint64(seq))
		}
		pending <- sending{at: at, fut: p.Send(ctx, m), seq: uint64(seq)}
	}
	// Close sends what is left and waits for every batch; with ctx done
	// (a failure), it abandons them at once.
	_ = p.Close(ctx)
	close(pending)
	<-reaped
}

// sleep waits for d; false if ctx ended or the run was interrupted first.
func (b *bencher) sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
	case <-b.stop:
	}
	return false
}

// consumeCfg is a group of consumers.
type consumeCfg struct {
	budget   *atomic.Int64 // messages left to consume; nil = no limit
	duration time.Duration // 0 = no limit
	wait     time.Duration // long poll of each receive
	// done is asked after an empty receive, and before each receive when
	// untilDone is set: true stops the consumer.
	done      func() bool
	untilDone bool
	// interruptible: stop on Ctrl-C (consume mode), rather than drain.
	interruptible bool
	tr            *tracker   // e2e: check and time the messages
	e2e           *histogram // e2e: latencies, merged from every consumer
	m             *meter
}

// consume runs the consumers until cfg says to stop, and returns their
// acked messages and receive+ack batch latencies.
func (b *bencher) consume(ctx context.Context, fail func(error), cfg consumeCfg) *phaseResult {
	res := &phaseResult{start: time.Now(), lat: &histogram{}}
	cfg.m.begin(res.start)
	var until time.Time
	if cfg.duration > 0 {
		until = res.start.Add(cfg.duration)
	}
	results := make([]*phaseResult, b.o.consumers)
	e2e := make([]*histogram, b.o.consumers)
	var wg sync.WaitGroup
	for i := range results {
		r := &phaseResult{lat: &histogram{}}
		results[i], e2e[i] = r, &histogram{}
		wg.Go(func() { b.consumer(ctx, fail, i, until, cfg, r, e2e[i]) })
	}
	wg.Wait()
	for i, r := range results {
		res.merge(r)
		if cfg.e2e != nil {
			cfg.e2e.merge(e2e[i])
		}
	}
	cfg.m.finish(res.last)
	return res
}

// ackJob is a received batch to ack.
type ackJob struct {
	start    time.Time // of its receive
	receipts []string
	bytes    int64 // of the payloads
}

// consumer receives batches and acks them. Acks go from a second
// goroutine, so that the next receive overlaps the last ack.
func (b *bencher) consumer(ctx context.Context, fail func(error), i int, until time.Time, cfg consumeCfg, r *phaseResult, e2e *histogram) {
	o := b.o
	acks := make(chan ackJob, 1)
	acked := make(chan struct{})
	go func() {
		defer close(acked)
		for j := range acks {
			actx, cancel := b.a.callCtx(ctx, 0)
			res, err := b.c.Ack(actx, o.queue, j.receipts...)
			cancel()
			now := time.Now()
			if res == nil && err != nil {
				fail(fmt.Errorf("ack: %w", err))
				continue
			}
			var ok int64
			for _, rr := range res {
				switch {
				case rr.Err == nil:
					ok++
				case errors.Is(rr.Err, client.ErrStaleReceipt):
					r.stale++
				default:
					fail(fmt.Errorf("ack: %w", rr.Err))
				}
			}
			r.lat.record(now.Sub(j.start))
			r.msgs += ok
			r.bytes += j.bytes * ok / int64(len(j.receipts))
			r.last = now
			if cfg.tr == nil {
				cfg.m.n.Add(ok)
			}
		}
	}()
	defer func() {
		close(acks)
		<-acked
	}()
	name := client.ConsumerName(fmt.Sprintf("bench-%d", i))
	for ctx.Err() == nil {
		if (cfg.interruptible && b.interrupted()) || (!until.IsZero() && !time.Now().Before(until)) ||
			(cfg.untilDone && cfg.done()) {
			return
		}
		n := o.batch
		if cfg.budget != nil {
			if n = take(cfg.budget, n); n == 0 {
				return
			}
		}
		start := time.Now()
		rctx, cancel := b.a.callCtx(ctx, cfg.wait)
		ds, err := b.c.Receive(rctx, o.queue, n, client.Wait(cfg.wait), name)
		cancel()
		now := time.Now()
		if cfg.budget != nil {
			cfg.budget.Add(int64(n - len(ds)))
		}
		if err != nil {
			if ctx.Err() == nil {
				fail(fmt.Errorf("receive: %w", err))
			}
			return
		}
		if len(ds) == 0 {
			if cfg.done() {
				return
			}
			continue
		}
		if cfg.tr != nil {
			seqs := make([]uint64, 0, len(ds))
			var foreign int64
			for _, d := range ds {
				sent, tag, seq, ok := readStamp(d.Payload)
				if !ok || tag != b.tag {
					foreign++
					continue
				}
				e2e.record(max(now.Sub(sent), 0))
				seqs = append(seqs, seq)
			}
			cfg.tr.markSeen(seqs, foreign, now)
			cfg.m.n.Add(int64(len(seqs)))
		}
		job := ackJob{start: start, receipts: make([]string, len(ds))}
		for k, d := range ds {
			job.receipts[k] = d.Receipt
			job.bytes += int64(len(d.Payload))
		}
		acks <- job
	}
}

// take takes up to n from budget and returns how many it took.
func take(budget *atomic.Int64, n int) int {
	for {
		left := budget.Load()
		if left <= 0 {
			return 0
		}
		k := min(int64(n), left)
		if budget.CompareAndSwap(left, left-k) {
			return int(k)
		}
	}
}

// run runs the phases of the mode and sums them up.
func (b *bencher) run(ctx context.Context, ready uint64) (*benchReport, error) {
	o := b.o
	rep := &benchReport{Mode: o.mode, Queue: o.queue, Size: o.size, Producers: o.producers, Consumers: o.consumers, Batch: o.batch, Rate: o.rate,
		InFlight: o.inFlight, LingerMS: round(o.linger.Seconds()*1e3, 3)}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	fail := func(err error) { cancel(err) }
	phase := func(name string, r *phaseResult) phaseReport {
		p := newPhaseReport(name, r.msgs, r.bytes, r.elapsed(), r.lat)
		rep.Phases = append(rep.Phases, p)
		rep.ackStale += r.stale
		return p
	}
	switch o.mode {
	case modeEnqueue:
		prod := produceCfg{total: o.msgs, duration: o.duration, pace: newPacer(o.rate), m: b.newMeter("enqueue")}
		if o.consumers == 0 {
			rep.phaseReport = phase("enqueue", b.produce(ctx, fail, prod))
			break
		}
		var produced atomic.Bool
		var pr *phaseResult
		done := make(chan struct{})
		go func() {
			defer close(done)
			pr = b.produce(ctx, fail, prod)
			produced.Store(true)
		}()
		cr := b.consume(ctx, fail, consumeCfg{wait: e2eWait, done: produced.Load, m: b.newMeter("consume")})
		<-done
		rep.phaseReport = phase("enqueue", pr)
		phase("consume", cr)

	case modeConsume:
		var budget *atomic.Int64
		if o.msgs > 0 {
			budget = &atomic.Int64{}
			budget.Store(o.msgs)
			if ready < uint64(o.msgs) {
				fill := o.msgs - int64(ready)
				fmt.Fprintf(b.a.stderr, "bench: queue %s holds %d ready messages, fewer than --msgs %d: enqueueing %d first\n",
					o.queue, ready, o.msgs, fill)
				phase("prefill", b.produce(ctx, fail, produceCfg{total: fill, pace: newPacer(0), m: b.newMeter("prefill")}))
				if err := context.Cause(ctx); err != nil {
					return nil, err
				}
			}
		} else if ready == 0 {
			fmt.Fprintf(b.a.stderr, "bench: queue %s holds no ready messages\n", o.queue)
		}
		cr := b.consume(ctx, fail, consumeCfg{budget: budget, duration: o.duration, wait: consumeWait,
			done: func() bool { return true }, interruptible: true, m: b.newMeter("consume")})
		rep.phaseReport = phase("consume", cr)

	case modeE2E:
		if ready > 0 {
			fmt.Fprintf(b.a.stderr, "bench: queue %s holds %d ready messages from before; they are received and acked, not counted\n", o.queue, ready)
		}
		tr := &tracker{}
		prod := produceCfg{total: o.msgs, duration: o.duration, pace: newPacer(o.rate), tr: tr, m: b.newMeter("enqueue")}
		var stop atomic.Bool
		var pr *phaseResult
		done := make(chan struct{})
		go func() {
			defer close(done)
			pr = b.produce(ctx, fail, prod)
		}()
		go func() {
			<-done
			idleSince := time.Now()
			t := time.NewTicker(20 * time.Millisecond)
			defer t.Stop()
			for range t.C {
				if last := tr.lastReceived(); last.After(idleSince) {
					idleSince = last
				}
				if ctx.Err() != nil || tr.missing() == 0 || time.Since(idleSince) > drainIdle {
					stop.Store(true)
					return
				}
			}
		}()
		lat := &histogram{}
		cr := b.consume(ctx, fail, consumeCfg{wait: e2eWait, done: stop.Load, untilDone: true, tr: tr, e2e: lat, m: b.newMeter("e2e")})
		<-done
		phase("enqueue", pr)
		tr.mu.Lock()
		rep.sent, rep.Lost, rep.Duplicates, rep.foreign = tr.nSent, tr.nSent-tr.nBoth, tr.nDup, tr.nForeign
		e2eEnd, received := tr.lastNew, tr.nSeen
		tr.mu.Unlock()
		rep.phaseReport = phase("e2e", &phaseResult{msgs: received, bytes: received * int64(o.size), start: pr.start, last: e2eEnd, lat: lat})
		rep.ackStale += cr.stale
		if rep.Lost > 0 {
			var ids []string
			for _, s := range tr.lostSeqs(5) {
				ids = append(ids, fmt.Sprintf("%d", s))
			}
			b.lostSample = "; first lost (by send order): " + strings.Join(ids, ", ")
		}
	}
	if err := context.Cause(ctx); err != nil {
		return nil, err
	}
	rep.Phase = ""
	return rep, nil
}
