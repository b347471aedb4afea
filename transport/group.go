package transport

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

var _ raft.StreamLayer = (*GroupLayer)(nil)

// GroupLayer is the raft.StreamLayer of one member of a Raft group on a
// Mux. Accept yields the inbound connections whose header names the group
// and this member's server id (any other target is refused by the Mux);
// Dial opens a connection to a peer's Mux and writes a header naming the
// group and the member it means to reach.
//
// A GroupLayer tracks every connection it accepted or dialed. Close
// unregisters the group from the Mux and closes them all, so a closed
// group holds no socket and no goroutine of raft.NetworkTransport stays
// blocked reading one. raft.NetworkTransport.Close calls Close.
type GroupLayer struct {
	m         *Mux
	id        string
	local     raft.ServerID
	advertise raft.ServerAddress
	q         *acceptQueue

	ctx    context.Context // cancelled by Close; aborts dials in progress
	cancel context.CancelFunc

	mu     sync.Mutex
	closed bool
	conns  map[*trackedConn]struct{}
}

func newGroupLayer(m *Mux, id string, local raft.ServerID, advertise raft.ServerAddress) *GroupLayer {
	ctx, cancel := context.WithCancel(context.Background())
	return &GroupLayer{
		m:         m,
		id:        id,
		local:     local,
		advertise: advertise,
		q:         newAcceptQueue(),
		ctx:       ctx,
		cancel:    cancel,
		conns:     make(map[*trackedConn]struct{}),
	}
}

// ID returns the group id.
func (l *GroupLayer) ID() string { return l.id }

// Local returns the server id of the member this layer serves.
func (l *GroupLayer) Local() raft.ServerID { return l.local }

// Accept returns the next inbound connection of the group, or net.ErrClosed
// once the layer is closed.
func (l *GroupLayer) Accept() (net.Conn, error) {
	c, err := l.q.accept()
	if err != nil {
		return nil, err
	}
	tc, err := l.track(c)
	if err != nil {
		return nil, err
	}
	l.m.stats.raft.Add(1)
	return tc, nil
}

// Dial opens a TCP connection to the peer's peer port and writes a header
// naming this group and the member the address names. timeout bounds the
// connect and the header write. The peer closes the connection unless it
// runs exactly that member of the group (Stats().UnknownGroup,
// Stats().WrongTarget on its side).
//
// An address is "host:port#<server id>" (see SplitAddress): the server id
// says which member of the group the connection is for, so that a node
// never answers for a member it does not hold (a wiped replica's old
// identity, a removed one). Raft also refuses two servers with the same
// address in one configuration, and a replacement node may well come back
// at its predecessor's address; the id keeps them apart. An address
// without a server id is refused with ErrNoServerID.
func (l *GroupLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	if l.isClosed() {
		return nil, l.closedErr()
	}
	hostport, target := SplitAddress(address)
	if target == "" || len(target) > MaxServerIDLen {
		return nil, fmt.Errorf("transport: group %q: %w: %q", l.id, ErrNoServerID, address)
	}
	ctx := l.ctx
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	c, err := l.m.dial(context.WithValue(ctx, dialMembersKey{}, [2]raft.ServerID{l.local, target}), hostport)
	if err != nil {
		return nil, err
	}
	if l.m.Security != nil {
		tc, err := l.m.clientHandshake(ctx, c, target)
		if err != nil {
			c.Close()
			return nil, err
		}
		c = tc
	}
	if timeout > 0 {
		if err := c.SetWriteDeadline(time.Now().Add(timeout)); err != nil {
			c.Close()
			return nil, err
		}
	}
	if _, err := c.Write(appendHeader(nil, l.id, string(target))); err != nil {
		c.Close()
		return nil, fmt.Errorf("transport: group %q: write header to %s: %w", l.id, address, err)
	}
	if err := c.SetWriteDeadline(time.Time{}); err != nil {
		c.Close()
		return nil, err
	}
	return l.track(c)
}

// Addr returns the advertised address of this node, which raft's
// NetworkTransport reports as its LocalAddr.
func (l *GroupLayer) Addr() net.Addr { return advertiseAddr(l.advertise) }

// Close unregisters the group from the Mux, stops Accept, aborts dials in
// progress and closes every connection the layer accepted or dialed.
// Connections for the group that arrive afterwards are closed by the Mux.
// Close is idempotent and returns nil.
func (l *GroupLayer) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	conns := l.conns
	l.conns = nil
	l.mu.Unlock()

	l.m.unregister(l)
	l.cancel()
	l.q.close()
	for c := range conns {
		c.Conn.Close()
	}
	return nil
}

func (l *GroupLayer) isClosed() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.closed
}

func (l *GroupLayer) closedErr() error {
	return fmt.Errorf("transport: group %q: %w", l.id, net.ErrClosed)
}

// track wraps c so that the layer can close it, or closes c and fails if the
// layer is already closed.
func (l *GroupLayer) track(c net.Conn) (net.Conn, error) {
	tc := &trackedConn{Conn: c, l: l}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		c.Close()
		return nil, l.closedErr()
	}
	l.conns[tc] = struct{}{}
	return tc, nil
}

func (l *GroupLayer) untrack(c *trackedConn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.conns, c) // no-op once Close has taken the map
}

// trackedConn removes itself from its layer when closed.
type trackedConn struct {
	net.Conn
	l    *GroupLayer
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() { c.l.untrack(c) })
	return c.Conn.Close()
}

// advertiseAddr is a net.Addr that is just the advertised host:port.
type advertiseAddr string

func (a advertiseAddr) Network() string { return "tcp" }
func (a advertiseAddr) String() string  { return string(a) }

type dialMembersKey struct{}

// DialMembers tells a Dialer, from the context it is given, which members
// of a Raft group a connection is for: the dialing member (local) and the
// one it means to reach (target). ok is false for other connections.
func DialMembers(ctx context.Context) (local, target raft.ServerID, ok bool) {
	m, ok := ctx.Value(dialMembersKey{}).([2]raft.ServerID)
	return m[0], m[1], ok
}

// ErrNoServerID: a Raft address without the "#<server id>" that says which
// member of the group a connection is for.
var ErrNoServerID = errors.New("transport: raft address names no server id")

// Address is the Raft address of the member id of a group on the node whose
// peer port is hostport: "hostport#id".
func Address(hostport string, id raft.ServerID) raft.ServerAddress {
	return raft.ServerAddress(hostport + "#" + string(id))
}

// SplitAddress splits a Raft address into the host:port to dial and the
// server id after the '#' ("" when there is none).
func SplitAddress(a raft.ServerAddress) (hostport string, id raft.ServerID) {
	s := string(a)
	if i := strings.IndexByte(s, '#'); i >= 0 {
		return s[:i], raft.ServerID(s[i+1:])
	}
	return s, ""
}

// DialAddress is the host:port of a Raft server address, without the
// "#<server id>" that follows it.
func DialAddress(a raft.ServerAddress) string {
	hostport, _ := SplitAddress(a)
	return hostport
}
