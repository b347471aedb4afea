package transport

import (
	"errors"
	"fmt"
	"slices"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// ErrPoolClosed is returned by Pool.Conn after Close.
var ErrPoolClosed = errors.New("transport: pool closed")

// Pool shares one *grpc.ClientConn per peer (node and address).
// Connections are created lazily (grpc.NewClient does not dial until the
// first RPC) and reconnect on their own; callers must not Close them, the
// Pool does.
type Pool struct {
	opts []grpc.DialOption
	// Creds, if set, gives the transport credentials of a connection to
	// node (mutual TLS that checks the server names node); else the
	// options' credentials (insecure by default). Set it before Conn.
	Creds func(node string) credentials.TransportCredentials

	mu     sync.Mutex
	closed bool
	conns  map[string]*grpc.ClientConn
}

// NewPool returns an empty pool whose connections are made with opts. The
// transport credentials default to insecure; pass
// grpc.WithTransportCredentials to override (the last one wins).
func NewPool(opts ...grpc.DialOption) *Pool {
	all := make([]grpc.DialOption, 0, len(opts)+1)
	all = append(all, grpc.WithTransportCredentials(insecure.NewCredentials()))
	return &Pool{
		opts:  append(all, opts...),
		conns: make(map[string]*grpc.ClientConn),
	}
}

// Conn returns the shared connection to node at addr (a host:port peer
// address), creating it on first use. It fails after Close, or if
// grpc.NewClient rejects the target or the options.
func (p *Pool) Conn(node, addr string) (*grpc.ClientConn, error) {
	if addr == "" {
		return nil, errors.New("transport: empty peer address")
	}
	key := node + "@" + addr
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, ErrPoolClosed
	}
	if cc, ok := p.conns[key]; ok {
		return cc, nil
	}
	opts := p.opts
	if p.Creds != nil {
		opts = append(slices.Clone(opts), grpc.WithTransportCredentials(p.Creds(node)))
	}
	// NewClient does no I/O, so holding the lock is cheap.
	cc, err := grpc.NewClient(addr, opts...)
	if err != nil {
		return nil, fmt.Errorf("transport: peer %s at %s: %w", node, addr, err)
	}
	p.conns[key] = cc
	return cc, nil
}

// Remove closes and forgets the connection to node at addr, if any, for a
// peer that has left for good. A later Conn makes a new one. RPCs in
// flight on the old connection fail with codes.Canceled.
func (p *Pool) Remove(node, addr string) error {
	key := node + "@" + addr
	p.mu.Lock()
	cc, ok := p.conns[key]
	delete(p.conns, key)
	p.mu.Unlock()
	if !ok {
		return nil
	}
	return cc.Close()
}

// Close closes every connection; later calls to Conn fail with
// ErrPoolClosed. Close is idempotent.
func (p *Pool) Close() error {
	p.mu.Lock()
	conns := p.conns
	p.conns = nil
	p.closed = true
	p.mu.Unlock()
	var errs []error
	for _, cc := range conns {
		if err := cc.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
