package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// opTimeout bounds one background ack, requeue or reject batch, retries
// included.
const opTimeout = 10 * time.Second

type rejectError struct{ reason string }

func (e *rejectError) Error() string { return "reject: " + e.reason }

// Reject returns an error that makes Consume move the message to the
// queue's dead-letter list with reason, instead of requeueing it. The
// handler may return it as it is or wrapped (fmt.Errorf("...: %w", ...)).
func Reject(reason string) error { return &rejectError{reason: reason} }

type requeueError struct{ delay time.Duration }

func (e *requeueError) Error() string { return fmt.Sprintf("requeue after %v", e.delay) }

// RequeueAfter returns an error that makes Consume requeue the message
// with delay: it becomes ready again only after delay.
func RequeueAfter(delay time.Duration) error { return &requeueError{delay: max(delay, 0)} }

// Consume receives messages from queue and runs handler on each, until ctx
// is cancelled. The handler's return finishes the message: nil acks it; an
// error wrapping Reject(reason) dead-letters it; one wrapping
// RequeueAfter(d) requeues it with that delay; any other error (or a
// panic) requeues it at once. A handler may instead finish the message
// itself with the Delivery's methods; Consume then leaves it alone.
//
// Consume holds at most Prefetch messages (default 100) — received, and
// not yet finished — and runs up to Concurrency handlers (default 10).
// Messages are leased for Visibility (default 30 s) and, with AutoExtend
// (default on), their leases are extended in batches whenever a third of
// the visibility is left, for as long as Consume holds them, running or
// waiting. Acks are sent in batches (AckBatch: up to 100, or after 10 ms).
//
// When ctx is cancelled, Consume stops receiving, lets running handlers
// finish (their context is cancelled after ShutdownTimeout, default 30 s;
// Consume waits for them to return), requeues every message it holds but
// did not start, sends pending acks, and returns nil. A long poll in
// flight is left to end by itself (within Wait, default 5 s) rather than
// cut short, because a Receive cancelled on its way may still lease
// messages whose answer never arrives; what it returns is requeued. So an
// idle Consume returns within Wait of the cancellation. Consume returns
// early, with an error, only when receiving fails for good (the queue does
// not exist, a bad option).
func (c *Client) Consume(ctx context.Context, queue string, handler func(context.Context, *Delivery) error, opts ...ConsumeOption) error {
	cfg := defaultConsumeConfig()
	for _, o := range opts {
		o.configureConsume(&cfg)
	}
	switch {
	case handler == nil:
		return wrapErr("Consume", invalidf("nil handler"))
	case cfg.visibility <= 0:
		return wrapErr("Consume", invalidf("visibility %v: Consume needs a positive one", cfg.visibility))
	case cfg.wait < 0 || cfg.wait > maxWait:
		return wrapErr("Consume", invalidf("wait %v outside [0, %v]", cfg.wait, maxWait))
	}
	k := &consumer{
		c: c, queue: queue, handler: handler, cfg: cfg,
		log:      c.log.With("queue", queue),
		held:     map[*Delivery]struct{}{},
		work:     make(chan *Delivery, cfg.prefetch),
		acks:     make(chan *Delivery, cfg.prefetch),
		room:     make(chan struct{}, 1),
		stopWork: make(chan struct{}),
	}
	return k.run(ctx)
}

// consumer is one Consume call. Its goroutines: the receiver, the
// workers, the acker and the extender; run starts and waits for all.
type consumer struct {
	c       *Client
	queue   string
	handler func(context.Context, *Delivery) error
	cfg     consumeConfig
	log     *slog.Logger
	bg      context.Context // for acks, requeues, extensions: outlives ctx until run returns

	mu        sync.Mutex
	held      map[*Delivery]struct{} // received and not finished
	unstarted []*Delivery            // taken off work by a stopping worker
	fatal     error

	work     chan *Delivery // received, waiting for a worker; never more than held
	acks     chan *Delivery
	room     chan struct{} // 1 slot: held shrank
	stopWork chan struct{}
	stopping atomic.Bool
}

func (k *consumer) run(ctx context.Context) error {
	// loop ends receiving: ctx is cancelled or receiving failed for good.
	loop, stopLoop := context.WithCancel(ctx)
	defer stopLoop()
	base := context.WithoutCancel(ctx)
	// A Receive in flight is not cancelled with ctx: a cancelled Receive
	// may still lease messages on the server, which would then stay
	// invisible for a whole lease. It ends by its wait; hard cuts it (and
	// the handlers' context) once the shutdown timeout has passed.
	hard, cancelHard := context.WithCancel(base)
	defer cancelHard()
	bg, stopBg := context.WithCancel(base)
	defer stopBg()
	k.bg = bg

	var recvWG, workWG, ackWG, extWG sync.WaitGroup
	recvWG.Go(func() { k.receiveLoop(loop, hard, stopLoop) })
	for range k.cfg.concurrency {
		workWG.Go(func() { k.worker(hard) })
	}
	ackWG.Go(k.ackLoop)
	if k.cfg.autoExtend {
		extWG.Go(func() { k.extendLoop(bg) })
	}

	<-loop.Done()
	// Start no more handlers; give running ones, and the Receive in
	// flight, the shutdown timeout.
	k.stopping.Store(true)
	close(k.stopWork)
	t := time.AfterFunc(k.cfg.shutdownTimeout, cancelHard)
	recvWG.Wait()
	workWG.Wait()
	t.Stop()
	k.requeueUnstarted()
	close(k.acks)
	ackWG.Wait()
	// Leases are extended until every message is finished.
	stopBg()
	extWG.Wait()
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.fatal
}

// fatalReceive says whether a Receive error ends Consume: the request can
// never succeed as it is.
func fatalReceive(err error) bool {
	if errors.Is(err, ErrClosed) || errors.Is(err, ErrInvalid) {
		return true
	}
	switch status.Code(err) {
	case codes.NotFound, codes.InvalidArgument, codes.PermissionDenied, codes.Unauthenticated, codes.Unimplemented, codes.FailedPrecondition:
		return true
	}
	return false
}

// receiveLoop receives until loop is done. Each Receive runs on rpc, which
// outlives loop (see run).
func (k *consumer) receiveLoop(loop, rpc context.Context, stop context.CancelFunc) {
	failures := 0
	for {
		n := k.waitRoom(loop)
		if n == 0 {
			return
		}
		start := time.Now()
		ds, err := k.c.receive(rpc, k.queue, min(n, maxReceive), k.cfg.receiveConfig)
		if err != nil {
			if loop.Err() != nil {
				return
			}
			if fatalReceive(err) {
				k.mu.Lock()
				k.fatal = err
				k.mu.Unlock()
				stop()
				return
			}
			failures++
			k.log.Warn("quorumq: consumer receive failed", "err", err, "failures", failures)
			t := time.NewTimer(k.c.cfg.retry.backoff(min(failures, 16)))
			select {
			case <-loop.Done():
				t.Stop()
				return
			case <-t.C:
			}
			continue
		}
		failures = 0
		k.mu.Lock()
		for _, d := range ds {
			d.cons, d.deadline = k, start.Add(k.cfg.visibility)
			k.held[d] = struct{}{}
		}
		k.mu.Unlock()
		for _, d := range ds {
			k.work <- d // never blocks: work holds at most len(held) <= prefetch
		}
	}
}

// waitRoom waits until there is room for more messages and returns how
// many, or 0 once ctx is done. It waits for half the prefetch to be free,
// so that Receives come in batches, unless no message waits for a worker.
func (k *consumer) waitRoom(ctx context.Context) int {
	for {
		if ctx.Err() != nil {
			return 0
		}
		k.mu.Lock()
		room := k.cfg.prefetch - len(k.held)
		k.mu.Unlock()
		if room > 0 && (room >= (k.cfg.prefetch+1)/2 || len(k.work) == 0) {
			return room
		}
		select {
		case <-ctx.Done():
			return 0
		case <-k.room:
		}
	}
}

// release forgets a finished (or lost) delivery and wakes the receiver.
func (k *consumer) release(d *Delivery) {
	k.mu.Lock()
	_, ok := k.held[d]
	delete(k.held, d)
	k.mu.Unlock()
	if ok {
		select {
		case k.room <- struct{}{}:
		default:
		}
	}
}

// extended records a lease extended by the handler.
func (k *consumer) extended(d *Delivery, until time.Time) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if until.After(d.deadline) {
		d.deadline = until
	}
}

func (k *consumer) worker(ctx context.Context) {
	for {
		select {
		case <-k.stopWork:
			return
		case d := <-k.work:
			if k.stopping.Load() {
				k.mu.Lock()
				k.unstarted = append(k.unstarted, d)
				k.mu.Unlock()
				return
			}
			k.process(ctx, d)
		}
	}
}

func (k *consumer) process(ctx context.Context, d *Delivery) {
	k.mu.Lock()
	// A message whose lease ended while it waited may be with another
	// consumer by now: do not run it twice.
	lost := d.lost || !time.Now().Before(d.deadline)
	d.started = !lost
	k.mu.Unlock()
	if lost {
		d.finished.Store(true)
		k.release(d)
		k.log.Debug("quorumq: dropping a message whose lease ended before a handler took it", "message", d.MessageID)
		return
	}
	err := k.call(ctx, d)
	if !d.finished.CompareAndSwap(false, true) {
		return // the handler finished it itself
	}
	var rej *rejectError
	var rq *requeueError
	switch {
	case err == nil:
		k.acks <- d
	case errors.As(err, &rej):
		k.settle(leaseOp{kind: opReject, reason: rej.reason}, []*Delivery{d})
	case errors.As(err, &rq):
		k.settle(leaseOp{kind: opRequeue, dur: rq.delay}, []*Delivery{d})
	default:
		k.log.Debug("quorumq: handler failed; requeueing", "message", d.MessageID, "err", err)
		k.settle(leaseOp{kind: opRequeue}, []*Delivery{d})
	}
}

// call runs the handler; a panic is an error.
func (k *consumer) call(ctx context.Context, d *Delivery) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("quorumq: handler panicked: %v", r)
			k.log.Error("quorumq: consumer handler panicked", "message", d.MessageID, "panic", r, "stack", string(debug.Stack()))
		}
	}()
	return k.handler(ctx, d)
}

// settle runs op on ds, logs failures and releases them.
func (k *consumer) settle(op leaseOp, ds []*Delivery) {
	if len(ds) == 0 {
		return
	}
	items := make([]leaseItem, len(ds))
	for i, d := range ds {
		items[i] = leaseItem{receipt: d.Receipt, part: int64(d.Partition)}
	}
	ctx, cancel := context.WithTimeout(k.bg, opTimeout)
	res := k.c.settle(ctx, op, k.queue, items)
	cancel()
	for i, r := range res {
		if r.Err != nil {
			k.log.Warn("quorumq: consumer could not finish a message", "op", op.kind, "message", ds[i].MessageID, "err", r.Err)
		}
		k.release(ds[i])
	}
}

// ackLoop sends acks in batches until acks is closed.
func (k *consumer) ackLoop() {
	var batch []*Delivery
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	var tick <-chan time.Time
	flush := func() {
		k.settle(leaseOp{kind: opAck}, batch)
		batch, tick = nil, nil
		timer.Stop()
	}
	for {
		select {
		case d, ok := <-k.acks:
			if !ok {
				flush()
				return
			}
			batch = append(batch, d)
			switch {
			case len(batch) >= k.cfg.ackMax || k.cfg.ackLinger == 0:
				flush()
			case len(batch) == 1:
				timer.Reset(k.cfg.ackLinger)
				tick = timer.C
			}
		case <-tick:
			flush()
		}
	}
}

// extendLoop extends, in batches, the leases of held messages with a third
// of the visibility or less left, until ctx is done.
func (k *consumer) extendLoop(ctx context.Context) {
	vis := k.cfg.visibility
	t := time.NewTicker(min(max(vis/6, 10*time.Millisecond), 5*time.Second))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		var due []*Delivery
		k.mu.Lock()
		for d := range k.held {
			if !d.lost && !d.finished.Load() && d.deadline.Sub(now) <= vis/3 {
				due = append(due, d)
			}
		}
		k.mu.Unlock()
		if len(due) == 0 {
			continue
		}
		items := make([]leaseItem, len(due))
		for i, d := range due {
			items[i] = leaseItem{receipt: d.Receipt, part: int64(d.Partition)}
		}
		start := time.Now()
		cctx, cancel := context.WithTimeout(ctx, max(vis/3, time.Second))
		res := k.c.settle(cctx, leaseOp{kind: opExtend, dur: vis}, k.queue, items)
		cancel()
		k.mu.Lock()
		for i, r := range res {
			d := due[i]
			switch {
			case r.Err == nil:
				d.deadline = start.Add(vis)
			case errors.Is(r.Err, ErrStaleReceipt) && !d.finished.Load():
				d.lost = true
				k.log.Warn("quorumq: lease lost before the message was finished", "message", d.MessageID, "started", d.started)
			}
		}
		k.mu.Unlock()
	}
}

// requeueUnstarted gives back every held message no handler started.
func (k *consumer) requeueUnstarted() {
	k.mu.Lock()
	ds := k.unstarted
	k.unstarted = nil
	k.mu.Unlock()
	for len(k.work) > 0 {
		ds = append(ds, <-k.work)
	}
	var give []*Delivery
	for _, d := range ds {
		k.mu.Lock()
		lost := d.lost
		k.mu.Unlock()
		if lost || !d.finished.CompareAndSwap(false, true) {
			k.release(d)
			continue
		}
		give = append(give, d)
	}
	k.settle(leaseOp{kind: opRequeue}, give)
}
