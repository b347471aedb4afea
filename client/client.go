package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	qv1 "github.com/quorumq/quorumq/proto/quorumq/v1"
)

const (
	// refreshEvery is how often members and routes are re-read when
	// nothing goes wrong.
	refreshEvery = 30 * time.Second
	// refreshGap spaces refreshes triggered by errors.
	refreshGap = 250 * time.Millisecond
	// refreshTimeout bounds one Members or Partitions call of a refresh; a
	// partition without a leader holds Partitions up to it.
	refreshTimeout = 2 * time.Second
	// maxRecvBytes: a Receive answers up to ~3 MiB plus one message, a
	// dead-letter page of large messages more; gRPC's default is 4 MiB.
	maxRecvBytes = 256 << 20
	// idleConnAge: a connection to an address that is no longer a member
	// is closed once unused for this long.
	idleConnAge = time.Minute
)

// Client talks to a quorumq cluster. It is safe for concurrent use; create
// one per process and Close it when done.
//
// A Client keeps one gRPC connection per node, learns the nodes from the
// seeds it was given, and keeps that list and the queues' partition leaders
// fresh in the background (every 30 s, and soon after an error). Calls go to
// the leader of the partition they touch when it is known, else to any
// node; either way the cluster serves them. Calls that fail with
// UNAVAILABLE (and, when repeating them is harmless, DEADLINE_EXCEEDED) are
// retried on another node with a jittered exponential backoff (see
// WithRetry), within the caller's context.
type Client struct {
	cfg      config
	log      *slog.Logger
	router   *router
	dialOpts []grpc.DialOption

	mu     sync.Mutex
	conns  map[string]*pooledConn
	closed bool

	kick   chan struct{} // 1 slot: refresh soon
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

type pooledConn struct {
	cc   *grpc.ClientConn
	used time.Time
}

// New connects to the cluster through seeds (node client addresses,
// "host:port", or any gRPC target such as "dns:///quorumq:7420"). It asks
// the seeds in turn for the members of the cluster and fails, within ctx,
// if none answers.
func New(ctx context.Context, seeds []string, opts ...Option) (*Client, error) {
	cfg := defaultConfig()
	for _, o := range opts {
		o(&cfg)
	}
	var clean []string
	for _, s := range seeds {
		if s = strings.TrimSpace(s); s != "" {
			clean = append(clean, s)
		}
	}
	if len(clean) == 0 {
		return nil, wrapErr("New", invalidf("no seed addresses"))
	}
	creds := insecure.NewCredentials()
	if cfg.tls != nil {
		creds = credentials.NewTLS(cfg.tls)
	}
	// Every connection, to a seed or to a node learnt later, is opened by
	// conn with these options: TLS and the token apply to all of them.
	dialOpts := []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxRecvBytes)),
	}
	if cfg.tokenSet {
		if cfg.tls == nil {
			return nil, wrapErr("New", invalidf("WithToken needs WithTLS: a token is never sent in plaintext"))
		}
		tc, err := newTokenCreds(cfg.token)
		if err != nil {
			return nil, wrapErr("New", err)
		}
		dialOpts = append(dialOpts, grpc.WithPerRPCCredentials(tc))
	}
	c := &Client{
		cfg:      cfg,
		log:      cfg.logger,
		router:   newRouter(clean),
		conns:    map[string]*pooledConn{},
		kick:     make(chan struct{}, 1),
		dialOpts: append(dialOpts, cfg.dialOpts...),
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	if err := c.refreshMembers(ctx, clean); err != nil {
		c.closeConns()
		c.cancel()
		return nil, err
	}
	c.wg.Add(1)
	go c.refreshLoop()
	return c, nil
}

// Close stops the background refresh and closes every connection. Calls
// in flight fail; Producers and Consume loops should be stopped first.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	c.cancel()
	c.wg.Wait()
	return c.closeConns()
}

func (c *Client) closeConns() error {
	c.mu.Lock()
	conns := c.conns
	c.conns = map[string]*pooledConn{}
	c.mu.Unlock()
	var errs []error
	for _, pc := range conns {
		if err := pc.cc.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// conn returns the pooled connection to addr, opening it on first use.
func (c *Client) conn(addr string) (*grpc.ClientConn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, errClosed
	}
	if pc := c.conns[addr]; pc != nil {
		pc.used = time.Now()
		return pc.cc, nil
	}
	cc, err := grpc.NewClient(addr, c.dialOpts...)
	if err != nil {
		return nil, invalidf("address %q: %v", addr, err)
	}
	c.conns[addr] = &pooledConn{cc: cc, used: time.Now()}
	return cc, nil
}

// pruneConns closes connections to addresses that are neither seeds nor
// live members and have not been used for a while.
func (c *Client) pruneConns() {
	keep := c.router.addrs()
	c.mu.Lock()
	var drop []*grpc.ClientConn
	for a, pc := range c.conns {
		if !keep[a] && time.Since(pc.used) > idleConnAge {
			drop = append(drop, pc.cc)
			delete(c.conns, a)
		}
	}
	c.mu.Unlock()
	for _, cc := range drop {
		_ = cc.Close()
	}
}

// refreshSoon asks the background loop for a refresh of members and routes.
func (c *Client) refreshSoon() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// refreshLoop keeps members and routes fresh until Close.
func (c *Client) refreshLoop() {
	defer c.wg.Done()
	tick := time.NewTicker(refreshEvery)
	defer tick.Stop()
	gap := time.NewTimer(0)
	defer gap.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-tick.C:
		case <-c.kick:
		}
		if err := c.refreshMembers(c.ctx, nil); err != nil && c.ctx.Err() == nil {
			c.log.Warn("quorumq: refreshing members", "err", err)
		}
		for _, q := range c.router.queueNames() {
			c.refreshRoutes(c.ctx, q)
		}
		c.pruneConns()
		gap.Reset(refreshGap)
		select {
		case <-c.ctx.Done():
			return
		case <-gap.C:
		}
	}
}

// refreshMembers asks the given addresses (nil: the known nodes, then the
// seeds) in turn for the members, until one answers.
func (c *Client) refreshMembers(ctx context.Context, addrs []string) error {
	if addrs == nil {
		c.router.mu.Lock()
		addrs = append(append([]string(nil), c.router.nodes...), c.router.seeds...)
		c.router.mu.Unlock()
	}
	var errs []error
	for _, a := range addrs {
		if !c.router.usable(a) && len(addrs) > 1 {
			continue
		}
		cc, err := c.conn(a)
		if err != nil {
			errs = append(errs, err)
			if errors.Is(err, ErrClosed) {
				break
			}
			continue
		}
		actx, cancel := context.WithTimeout(ctx, refreshTimeout)
		resp, err := qv1.NewClusterServiceClient(cc).Members(actx, &qv1.MembersRequest{})
		cancel()
		if err == nil {
			c.router.ok(a)
			c.router.setMembers(resp.GetMembers())
			return nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", a, err))
		if ctx.Err() != nil {
			break
		}
		if status.Code(err) == codes.Unavailable {
			c.router.fail(a)
		}
	}
	return fmt.Errorf("%w: no seed or member answered: %w", ErrUnavailable, errors.Join(errs...))
}

// refreshRoutes re-reads the partition leaders of queue.
func (c *Client) refreshRoutes(ctx context.Context, queue string) {
	ctx, cancel := context.WithTimeout(ctx, refreshTimeout)
	defer cancel()
	addr := c.router.any("")
	cc, err := c.conn(addr)
	if err != nil {
		return
	}
	resp, err := qv1.NewClusterServiceClient(cc).Partitions(ctx, &qv1.PartitionsRequest{Queue: queue})
	if err != nil {
		c.log.Debug("quorumq: refreshing routes", "queue", queue, "node", addr, "err", err)
		if status.Code(err) == codes.Unavailable {
			c.router.fail(addr)
		}
		return
	}
	c.router.setPartitions(queue, resp.GetPartitions())
}

// call describes one logical request for invoke.
type call struct {
	op   string
	safe bool // repeating it is harmless: retry DEADLINE_EXCEEDED too
	// queue and parts name what the request touches, for leader hints.
	queue string
	parts []uint32
	// target is the preferred node address ("" or nil: any node).
	target func() string
}

// invoke runs fn against a node chosen for cl, retrying as the policy
// allows: after a leader hint on the leader, after a bare UNAVAILABLE on
// another node.
func (c *Client) invoke(ctx context.Context, cl call, fn func(context.Context, *grpc.ClientConn) error) error {
	r := retrier{p: c.cfg.retry}
	var avoid, hinted string
	for {
		addr := hinted
		if addr == "" && cl.target != nil {
			addr = cl.target()
		}
		if addr == "" || addr == avoid || !c.router.usable(addr) {
			addr = c.router.any(avoid)
		}
		hinted, avoid = "", ""
		cc, err := c.conn(addr)
		if err == nil {
			err = fn(ctx, cc)
		}
		if err == nil {
			c.router.ok(addr)
			return nil
		}
		code := status.Code(err)
		switch {
		case code == codes.Unavailable:
			if h := leaderHint(err); h != nil {
				hinted = c.router.learnHint(cl.queue, cl.parts, h)
			} else {
				c.router.fail(addr)
			}
			if hinted == "" || hinted == addr {
				hinted, avoid = "", addr
			}
			c.refreshSoon()
		case code == codes.NotFound && cl.queue != "":
			c.router.forget(cl.queue)
		}
		if ctx.Err() != nil || !retryable(code, cl.safe) || !r.wait(ctx) {
			return wrapErr(cl.op, err)
		}
		c.log.Debug("quorumq: retrying", "op", cl.op, "node", addr, "attempt", r.attempt+1, "err", err)
	}
}

// anyNode is a call that any node serves equally well.
func anyNode(op string, safe bool) call { return call{op: op, safe: safe} }
