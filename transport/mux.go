// Package transport is quorumq's node-to-node plumbing: one peer listener
// that carries the Raft traffic of every group (multiplexed by group id) and
// the node-to-node gRPC service, and a pool of gRPC connections to peers.
//
// See DESIGN.md in this directory for what the package promises.
package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
)

// DefaultHandshakeTimeout is how long an inbound connection has to identify
// itself (HTTP/2 preface or Raft header) and be accepted by its consumer.
const DefaultHandshakeTimeout = 5 * time.Second

var (
	// ErrMuxClosed is returned by Group after the Mux is closed.
	ErrMuxClosed = errors.New("transport: mux closed")
	// ErrGroupExists is returned by Group when the id is already registered.
	ErrGroupExists = errors.New("transport: group already registered")
	// ErrInvalidGroupID is returned by Group for an empty id or one longer
	// than MaxGroupIDLen bytes.
	ErrInvalidGroupID = errors.New("transport: invalid group id")
	// ErrInvalidServerID is returned by Group for an empty local server id
	// or one longer than MaxServerIDLen bytes.
	ErrInvalidServerID = errors.New("transport: invalid server id")
)

// Dialer opens a connection to a peer's peer port (host:port). ctx bounds
// the connect.
type Dialer func(ctx context.Context, addr string) (net.Conn, error)

// Mux owns the node's peer listener and sorts each inbound connection by its
// first bytes: an HTTP/2 client preface goes to GRPCListener, a Raft header
// goes to the GroupLayer registered for its group id, and anything else is
// closed.
//
// A Mux starts nothing until Serve is called. Close stops Serve, closes every
// GroupLayer and the gRPC listener, and waits for the Mux's goroutines.
type Mux struct {
	// HandshakeTimeout bounds the time between accepting a connection and
	// handing it to its consumer: the sniff of its first bytes and the wait
	// for Accept. A connection that takes longer is closed. Zero means
	// DefaultHandshakeTimeout. Set it before calling Serve.
	HandshakeTimeout time.Duration
	// Dial opens the connections of every GroupLayer's Dial; nil means a
	// plain TCP net.Dialer. Set it before registering groups.
	Dial Dialer
	// Security, if set, makes the port mutual TLS (see Security). Set it
	// before Serve and before registering groups.
	Security  *Security
	serverTLS *tls.Config // from Security, built by Serve

	l    net.Listener
	log  *slog.Logger
	grpc *grpcListener
	done chan struct{} // closed by Close

	mu       sync.Mutex
	closed   bool
	serving  bool
	groups   map[string]*GroupLayer
	sniffing map[net.Conn]struct{} // conns whose header is being read
	wg       sync.WaitGroup        // Serve and the per-connection goroutines

	stats struct {
		accepted, grpc, raft, badHeader, unknownGroup, wrongTarget, dropped, tlsFailed, unauthorized atomic.Uint64
	}
	// refusedLog rate-limits the warnings about refused Raft connections.
	refusedLog rateLimit
}

// MuxStats counts the connections a Mux has seen since it was created.
type MuxStats struct {
	Accepted     uint64 // accepted from the listener
	GRPC         uint64 // returned by the gRPC listener's Accept
	Raft         uint64 // returned by a GroupLayer's Accept
	BadHeader    uint64 // closed: neither an HTTP/2 preface nor a valid Raft header, or too slow to send one
	UnknownGroup uint64 // closed: Raft header for a group that is not registered
	WrongTarget  uint64 // closed: Raft header for a member of a registered group that this node does not hold (an old or wiped identity)
	Dropped      uint64 // closed: identified, but its listener was closed or did not accept it in time
	TLSFailed    uint64 // closed: the TLS handshake failed (no certificate, another CA, too slow)
	Unauthorized uint64 // closed: a valid certificate of a node that may not use the port
}

// NewMux returns a Mux that will serve l. It starts nothing; call Serve.
// A nil log discards.
func NewMux(l net.Listener, log *slog.Logger) *Mux {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &Mux{
		l:        l,
		log:      log,
		done:     make(chan struct{}),
		groups:   make(map[string]*GroupLayer),
		sniffing: make(map[net.Conn]struct{}),
	}
	m.grpc = &grpcListener{m: m, q: newAcceptQueue()}
	return m
}

// Addr returns the address of the underlying listener.
func (m *Mux) Addr() net.Addr { return m.l.Addr() }

// Stats returns the connection counters.
func (m *Mux) Stats() MuxStats {
	return MuxStats{
		Accepted:     m.stats.accepted.Load(),
		GRPC:         m.stats.grpc.Load(),
		Raft:         m.stats.raft.Load(),
		BadHeader:    m.stats.badHeader.Load(),
		UnknownGroup: m.stats.unknownGroup.Load(),
		WrongTarget:  m.stats.wrongTarget.Load(),
		Dropped:      m.stats.dropped.Load(),
		TLSFailed:    m.stats.tlsFailed.Load(),
		Unauthorized: m.stats.unauthorized.Load(),
	}
}

// GRPCListener returns the virtual listener whose Accept yields the
// connections that began with the HTTP/2 client preface (the preface is
// replayed to the reader). Pass it to grpc.Server.Serve. Closing it does not
// close the Mux; gRPC connections that arrive afterwards are closed. Every
// call returns the same listener.
func (m *Mux) GRPCListener() net.Listener { return m.grpc }

// Group registers this node's member local of the Raft group id and
// returns its stream layer. Only connections whose header names both id and
// local reach it: a connection for another member of the group (an
// identity this node no longer holds) is refused. advertise is the address
// peers dial to reach this node; when empty it is the listener's address,
// which is only right if the listener is bound to a specific, reachable IP
// (not ":7421"). It fails with ErrGroupExists if id is registered,
// ErrInvalidGroupID if id is empty or longer than MaxGroupIDLen bytes,
// ErrInvalidServerID if local is empty or longer than MaxServerIDLen bytes,
// and ErrMuxClosed after Close.
func (m *Mux) Group(id string, local raft.ServerID, advertise raft.ServerAddress) (*GroupLayer, error) {
	if len(id) == 0 || len(id) > MaxGroupIDLen {
		return nil, fmt.Errorf("%w: %d bytes", ErrInvalidGroupID, len(id))
	}
	if len(local) == 0 || len(local) > MaxServerIDLen {
		return nil, fmt.Errorf("%w: %d bytes", ErrInvalidServerID, len(local))
	}
	if advertise == "" {
		advertise = raft.ServerAddress(m.l.Addr().String())
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, ErrMuxClosed
	}
	if _, ok := m.groups[id]; ok {
		return nil, fmt.Errorf("%w: %q", ErrGroupExists, id)
	}
	l := newGroupLayer(m, id, local, advertise)
	m.groups[id] = l
	return l, nil
}

// unregister removes l if it is still the layer registered for its id.
func (m *Mux) unregister(l *GroupLayer) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.groups[l.id] == l {
		delete(m.groups, l.id)
	}
}

// Serve runs the accept loop until Close, then returns nil. It returns an
// error if the listener fails for good (closed by someone else) or if Serve
// is already running. Temporary accept errors (such as running out of file
// descriptors) are logged and retried with backoff.
func (m *Mux) Serve() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	if m.serving {
		m.mu.Unlock()
		return errors.New("transport: Mux.Serve called twice")
	}
	m.serving = true
	if m.Security != nil {
		m.serverTLS = m.Security.TLS.ServerConfig()
	}
	m.wg.Add(1)
	m.mu.Unlock()
	defer m.wg.Done()

	const maxDelay = time.Second
	var delay time.Duration
	for {
		c, err := m.l.Accept()
		if err != nil {
			if m.isClosed() {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("transport: peer listener: %w", err)
			}
			delay = min(max(2*delay, 5*time.Millisecond), maxDelay)
			m.log.Warn("peer listener accept failed; retrying", "error", err, "delay", delay)
			t := time.NewTimer(delay)
			select {
			case <-m.done:
				t.Stop()
				return nil
			case <-t.C:
			}
			continue
		}
		delay = 0
		m.stats.accepted.Add(1)

		m.mu.Lock()
		if m.closed {
			m.mu.Unlock()
			c.Close()
			return nil
		}
		m.sniffing[c] = struct{}{}
		m.wg.Add(1)
		m.mu.Unlock()
		go m.handle(c)
	}
}

func (m *Mux) isClosed() bool {
	select {
	case <-m.done:
		return true
	default:
		return false
	}
}

func (m *Mux) handshakeTimeout() time.Duration {
	if m.HandshakeTimeout > 0 {
		return m.HandshakeTimeout
	}
	return DefaultHandshakeTimeout
}

// handle identifies one inbound connection and hands it to its consumer. It
// owns c until the hand-off succeeds, and closes it on every other path.
func (m *Mux) handle(c net.Conn) {
	defer m.wg.Done()
	deadline := time.Now().Add(m.handshakeTimeout())
	raw := c
	err := c.SetDeadline(deadline)
	if err == nil && m.Security != nil {
		c, err = m.serverHandshake(c)
	}
	var h header
	if err == nil {
		h, err = readHeader(c)
	}

	if c == nil {
		c = raw
	}
	m.mu.Lock()
	delete(m.sniffing, raw)
	closed := m.closed
	var layer *GroupLayer
	if err == nil && h.kind == kindRaft {
		layer = m.groups[h.group]
	}
	m.mu.Unlock()

	remote := c.RemoteAddr().String()
	switch {
	case closed:
		c.Close()
		return
	case errors.Is(err, ErrUnauthorized) || errors.Is(err, errHandshake):
		if m.refusedLog.allow(time.Now(), 10*time.Second) {
			m.log.Warn("refused peer connection", "remote", remote, "error", err,
				"tls_failed_total", m.stats.tlsFailed.Load(), "unauthorized_total", m.stats.unauthorized.Load())
		}
		c.Close()
		return
	case err != nil:
		m.stats.badHeader.Add(1)
		m.log.Debug("peer connection closed: bad header", "remote", remote, "error", err)
		c.Close()
		return
	case h.kind == kindRaft && layer == nil:
		m.stats.unknownGroup.Add(1)
		m.log.Debug("peer connection closed: unknown raft group", "remote", remote, "group", h.group, "target", h.target)
		c.Close()
		return
	case h.kind == kindRaft && raft.ServerID(h.target) != layer.local:
		// The dialer means a member of this group that this node does not
		// hold: an identity whose data is gone (wiped, replaced) or that
		// was removed. Answering as it would let a replica vote and
		// acknowledge with a log it does not have.
		m.stats.wrongTarget.Add(1)
		if m.refusedLog.allow(time.Now(), 10*time.Second) {
			m.log.Warn("refused raft connection for a member this node does not hold",
				"remote", remote, "group", h.group, "target", h.target, "local", layer.local,
				"refused_total", m.stats.wrongTarget.Load())
		}
		c.Close()
		return
	}
	if err := c.SetDeadline(time.Time{}); err != nil {
		c.Close()
		return
	}

	var q *acceptQueue
	var conn net.Conn = c
	if h.kind == kindGRPC {
		q = m.grpc.q
		conn = &replayConn{Conn: c, buf: h.replay}
	} else {
		q = layer.q
	}
	if !q.offer(conn, m.done, deadline) {
		m.stats.dropped.Add(1)
		m.log.Debug("peer connection closed: not accepted", "remote", remote, "kind", h.kind.String(), "group", h.group)
		c.Close()
	}
	// The GRPC and Raft counters are bumped by the Accept that took the conn,
	// so that they are current when Accept returns.
}

// Close stops the accept loop, closes the listener, every GroupLayer (and so
// every Raft connection they hold) and the gRPC listener, closes connections
// that have not been handed off yet, and waits for the Mux's goroutines.
// gRPC connections already accepted belong to the gRPC server and are left
// alone. Close is idempotent; it returns the listener's close error.
func (m *Mux) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	close(m.done)
	groups := make([]*GroupLayer, 0, len(m.groups))
	for _, l := range m.groups {
		groups = append(groups, l)
	}
	for c := range m.sniffing {
		c.Close() // unblocks the header read
	}
	m.mu.Unlock()

	err := m.l.Close()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	for _, l := range groups {
		l.Close()
	}
	m.grpc.Close()
	m.wg.Wait()
	return err
}

// dial opens a connection to a peer's peer port with m.Dial, or TCP.
func (m *Mux) dial(ctx context.Context, addr string) (net.Conn, error) {
	if m.Dial != nil {
		return m.Dial(ctx, addr)
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}

// rateLimit lets one event through per interval.
type rateLimit struct {
	mu   sync.Mutex
	last time.Time
}

func (r *rateLimit) allow(now time.Time, every time.Duration) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.last.IsZero() && now.Sub(r.last) < every {
		return false
	}
	r.last = now
	return true
}

// acceptQueue hands connections from the Mux's per-connection goroutines to
// a listener's Accept, one at a time and without buffering: a connection is
// either taken by Accept or closed by the Mux, never stranded.
type acceptQueue struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newAcceptQueue() *acceptQueue {
	return &acceptQueue{ch: make(chan net.Conn), done: make(chan struct{})}
}

// offer waits until Accept takes c and reports whether it did. It gives up
// when the queue or the Mux closes or the deadline passes.
func (q *acceptQueue) offer(c net.Conn, muxDone <-chan struct{}, deadline time.Time) bool {
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case q.ch <- c:
		return true
	case <-q.done:
	case <-muxDone:
	case <-t.C:
	}
	return false
}

func (q *acceptQueue) accept() (net.Conn, error) {
	select {
	case <-q.done:
		return nil, net.ErrClosed
	default:
	}
	select {
	case c := <-q.ch:
		return c, nil
	case <-q.done:
		return nil, net.ErrClosed
	}
}

func (q *acceptQueue) close() { q.once.Do(func() { close(q.done) }) }

// grpcListener is the virtual listener of the gRPC connections.
type grpcListener struct {
	m *Mux
	q *acceptQueue
}

// Accept returns the next gRPC connection, or net.ErrClosed once the
// listener or the Mux is closed.
func (l *grpcListener) Accept() (net.Conn, error) {
	c, err := l.q.accept()
	if err != nil {
		return nil, err
	}
	l.m.stats.grpc.Add(1)
	return c, nil
}

// Close stops Accept. It does not close the Mux.
func (l *grpcListener) Close() error {
	l.q.close()
	return nil
}

// Addr returns the Mux's address.
func (l *grpcListener) Addr() net.Addr { return l.m.l.Addr() }

// replayConn returns the sniffed bytes before reading on from the conn.
// Only the reader of the connection touches buf.
type replayConn struct {
	net.Conn
	buf []byte
}

func (c *replayConn) Read(p []byte) (int, error) {
	if len(c.buf) > 0 {
		n := copy(p, c.buf)
		c.buf = c.buf[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}
