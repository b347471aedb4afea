package transport

import (
	"errors"
	"fmt"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// ErrPoolClosed is returned by Pool.Conn after Close.
var ErrPoolClosed = errors.New("transport: pool closed")

// Pool shares one *grpc.ClientConn per peer address. Connections are
// created lazily (grpc.NewClient does not dial until the first RPC) and
// reconnect on their own; callers must not Close them, the Pool does.
type Pool struct {
	opts []grpc.DialOption

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

// Conn returns the shared connection to addr (a host:port peer address),
// creating it on first use. It fails after Close, or if grpc.NewClient
// rejects the target or the options.
func (p *Pool) Conn(addr string) (*grpc.ClientConn, error) {
	if addr == "" {
		return nil, errors.New("transport: empty peer address")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, ErrPoolClosed
	}
	if cc, ok := p.conns[addr]; ok {
		return cc, nil
	}
	// NewClient does no I/O, so holding the lock is cheap.
	cc, err := grpc.NewClient(addr, p.opts...)
	if err != nil {
		return nil, fmt.Errorf("transport: peer %s: %w", addr, err)
	}
	p.conns[addr] = cc
	return cc, nil
}

// Remove closes and forgets the connection to addr, if any, for a peer that
// has left for good. A later Conn(addr) makes a new one. RPCs in flight on
// the old connection fail with codes.Canceled.
func (p *Pool) Remove(addr string) error {
	p.mu.Lock()
	cc, ok := p.conns[addr]
	delete(p.conns, addr)
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
