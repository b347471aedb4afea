package client

import (
	"context"
	"sync"
	"time"
)

// Producer enqueues messages to one queue asynchronously, in batches: a
// batch collects messages bound for one partition leader (as Enqueue
// routes them) and is sent when it is full (MaxBatchMessages,
// MaxBatchBytes) or has waited Linger. Up to MaxInFlight batches are sent
// at once. Create one with Client.NewProducer and Close it when done.
//
// Every message gets a dedup id unless it has one, so a batch retried
// after an ambiguous failure never stores a message twice.
type Producer struct {
	c     *Client
	queue string
	cfg   producerConfig

	in      chan *pending
	flushes chan chan []*batch
	closing chan struct{}
	loopEnd chan struct{}
	sem     chan struct{} // one slot per batch in flight
	once    sync.Once

	ctx    context.Context // batches' requests; cancelled by an aborted Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // batches in flight

	mu       sync.Mutex
	inFlight map[*batch]struct{}
}

// pending is a message handed to the producer.
type pending struct {
	m   outMsg
	fut *Future
}

// batch is messages sent together to one node.
type batch struct {
	group enqGroup
	futs  []*Future
	start time.Time
	done  chan struct{}
}

// Future is the outcome of one Send.
type Future struct {
	done chan struct{}
	res  EnqueueResult
	err  error
}

func (f *Future) resolve(res EnqueueResult, err error) {
	f.res, f.err = res, err
	close(f.done)
}

// Done is closed once the message is stored or has failed.
func (f *Future) Done() <-chan struct{} { return f.done }

// Wait waits until the message is stored (or failed), or ctx is done, and
// returns where it was stored.
func (f *Future) Wait(ctx context.Context) (EnqueueResult, error) {
	select {
	case <-f.done:
		return f.res, f.err
	case <-ctx.Done():
		return EnqueueResult{}, ctx.Err()
	}
}

// NewProducer returns a batching producer for queue. It owns goroutines
// until Close.
func (c *Client) NewProducer(queue string, opts ...ProducerOption) *Producer {
	cfg := defaultProducerConfig()
	for _, o := range opts {
		o(&cfg)
	}
	p := &Producer{
		c: c, queue: queue, cfg: cfg,
		in:       make(chan *pending),
		flushes:  make(chan chan []*batch),
		closing:  make(chan struct{}),
		loopEnd:  make(chan struct{}),
		sem:      make(chan struct{}, cfg.maxInFlight),
		inFlight: map[*batch]struct{}{},
	}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	if _, learn := c.router.partitions(queue); learn {
		c.refreshSoon()
	}
	go p.loop()
	return p
}

// Send hands m to the producer and returns at once, unless MaxInFlight
// batches are in flight: then it blocks until one is answered or ctx is
// done. The message is sent even if ctx ends after Send returned; its
// outcome is in the Future. m must not be changed until then.
func (p *Producer) Send(ctx context.Context, m *Message) *Future {
	f := &Future{done: make(chan struct{})}
	pb, size, err := toWire(m)
	if err != nil {
		f.resolve(EnqueueResult{}, wrapErr("Enqueue", err))
		return f
	}
	select {
	case <-p.closing:
		f.resolve(EnqueueResult{}, wrapErr("Enqueue", errClosed))
		return f
	default:
	}
	select {
	case p.in <- &pending{m: outMsg{pb: pb, size: size}, fut: f}:
	case <-ctx.Done():
		f.resolve(EnqueueResult{}, ctx.Err())
	case <-p.closing:
		f.resolve(EnqueueResult{}, wrapErr("Enqueue", errClosed))
	}
	return f
}

// Flush sends every batch now and waits until each message sent before it
// is stored or has failed, or ctx is done. Outcomes are in the Futures.
func (p *Producer) Flush(ctx context.Context) error {
	reply := make(chan []*batch, 1)
	select {
	case p.flushes <- reply:
	case <-p.loopEnd:
		reply <- p.snapshot()
	case <-ctx.Done():
		return ctx.Err()
	}
	var bs []*batch
	select {
	case bs = <-reply:
	case <-ctx.Done():
		return ctx.Err()
	}
	for _, b := range bs {
		select {
		case <-b.done:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// Close stops accepting messages, sends what is pending, waits for every
// batch to be answered, and stops the producer's goroutines. If ctx ends
// first, batches still in flight are abandoned (their Futures fail) and
// Close returns ctx's error once the goroutines are gone. Send after Close
// fails with ErrClosed.
func (p *Producer) Close(ctx context.Context) error {
	p.once.Do(func() { close(p.closing) })
	var err error
	select {
	case <-p.loopEnd:
	case <-ctx.Done():
		err = ctx.Err()
		p.cancel()
		<-p.loopEnd
	}
	for _, b := range p.snapshot() {
		select {
		case <-b.done:
		case <-ctx.Done():
			err = ctx.Err()
			p.cancel()
		}
	}
	p.cancel()
	p.wg.Wait()
	return err
}

func (p *Producer) snapshot() []*batch {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]*batch, 0, len(p.inFlight))
	for b := range p.inFlight {
		out = append(out, b)
	}
	return out
}

// loop forms batches and dispatches them; it is the only goroutine that
// touches open batches.
func (p *Producer) loop() {
	defer close(p.loopEnd)
	open := map[string]*batch{}
	var order []*batch // open batches, oldest first
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	armed := false
	dispatch := func(b *batch) {
		delete(open, b.group.target)
		for i, o := range order {
			if o == b {
				order = append(order[:i], order[i+1:]...)
				break
			}
		}
		p.dispatch(b)
	}
	rearm := func() {
		timer.Stop()
		armed = len(order) > 0
		if armed {
			timer.Reset(time.Until(order[0].start.Add(p.cfg.linger)))
		}
	}
	for {
		var tick <-chan time.Time
		if armed {
			tick = timer.C
		}
		select {
		case pm := <-p.in:
			target, part, known := p.route(pm.m)
			b := open[target]
			if b != nil && (len(b.group.msgs) >= p.cfg.maxMessages || b.group.bytes+pm.m.size > p.cfg.maxBytes) {
				dispatch(b)
				b = nil
			}
			if b == nil {
				b = &batch{group: enqGroup{target: target}, start: time.Now(), done: make(chan struct{})}
				open[target] = b
				order = append(order, b)
			}
			pm.m.idx = len(b.group.msgs)
			b.group.msgs = append(b.group.msgs, pm.m)
			b.group.bytes += pm.m.size
			if known {
				b.group.addPart(part)
			}
			b.futs = append(b.futs, pm.fut)
			if len(b.group.msgs) >= p.cfg.maxMessages || b.group.bytes >= p.cfg.maxBytes || p.cfg.linger == 0 {
				dispatch(b)
			}
			rearm()
		case <-tick:
			now := time.Now()
			for len(order) > 0 && !now.Before(order[0].start.Add(p.cfg.linger)) {
				dispatch(order[0])
			}
			rearm()
		case reply := <-p.flushes:
			for len(order) > 0 {
				dispatch(order[0])
			}
			rearm()
			reply <- p.snapshot()
		case <-p.closing:
			for len(order) > 0 {
				dispatch(order[0])
			}
			return
		}
	}
}

// route is the node a message goes to: its partition leader's address,
// "" when not known.
func (p *Producer) route(m outMsg) (target string, part uint32, known bool) {
	parts, learn := p.c.router.partitions(p.queue)
	if learn {
		p.c.refreshSoon()
	}
	if parts == 0 {
		return "", 0, false
	}
	part = partitionFor(m.pb.GetKey(), m.pb.GetDedupId(), parts)
	return p.c.router.leaderAddr(p.queue, part), part, true
}

// dispatch sends b once a slot in flight is free (blocking the loop, and
// so Send, until then).
func (p *Producer) dispatch(b *batch) {
	select {
	case p.sem <- struct{}{}:
	case <-p.ctx.Done():
		for _, f := range b.futs {
			f.resolve(EnqueueResult{}, wrapErr("Enqueue", p.ctx.Err()))
		}
		close(b.done)
		return
	}
	p.mu.Lock()
	p.inFlight[b] = struct{}{}
	p.mu.Unlock()
	p.wg.Go(func() {
		defer func() {
			p.mu.Lock()
			delete(p.inFlight, b)
			p.mu.Unlock()
			close(b.done)
			<-p.sem
		}()
		ctx, cancel := context.WithTimeout(p.ctx, p.cfg.timeout)
		defer cancel()
		results := make([]EnqueueResult, len(b.group.msgs))
		err := p.c.sendGroup(ctx, p.queue, &b.group, results)
		for i, f := range b.futs {
			r := results[i]
			r.DedupID = b.group.msgs[i].pb.GetDedupId()
			f.resolve(r, err)
		}
	})
}
