package main

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quorumq/quorumq/client"
	qv1 "github.com/quorumq/quorumq/proto/quorumq/v1"
)

// maxRecvBytes bounds one response. A Receive of many large messages is far
// bigger than gRPC's 4 MiB default.
const maxRecvBytes = 256 << 20

// failover is a grpc.ClientConnInterface over the --servers list. A call
// goes to the server that answered last; a server that answers UNAVAILABLE
// (down, unreachable, leaving, no leader) hands the call to the next one,
// until each has been tried once.
type failover struct {
	mu    sync.Mutex
	addrs []string
	opts  []grpc.DialOption  // transport credentials and call credentials
	conns []*grpc.ClientConn // opened on first use
	cur   int
}

var _ grpc.ClientConnInterface = (*failover)(nil)

func newFailover(servers []string, opts []grpc.DialOption) (*failover, error) {
	var addrs []string
	for _, s := range servers {
		if s = strings.TrimSpace(s); s != "" {
			addrs = append(addrs, s)
		}
	}
	if len(addrs) == 0 {
		return nil, errors.New("no servers: set --servers or QUORUMQ_SERVERS")
	}
	return &failover{addrs: addrs, opts: opts, conns: make([]*grpc.ClientConn, len(addrs))}, nil
}

func (f *failover) conn(i int) (*grpc.ClientConn, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conns[i] == nil {
		opts := append([]grpc.DialOption{grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxRecvBytes))}, f.opts...)
		cc, err := grpc.NewClient(f.addrs[i], opts...)
		if err != nil {
			return nil, err
		}
		f.conns[i] = cc
	}
	return f.conns[i], nil
}

func (f *failover) current() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cur
}

func (f *failover) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	start := f.current()
	var err error
	for i := range f.addrs {
		k := (start + i) % len(f.addrs)
		var cc *grpc.ClientConn
		if cc, err = f.conn(k); err != nil {
			slog.Debug("bad server address", "server", f.addrs[k], "err", err)
			continue
		}
		err = cc.Invoke(ctx, method, args, reply, opts...)
		if status.Code(err) != codes.Unavailable || ctx.Err() != nil {
			f.mu.Lock()
			f.cur = k
			f.mu.Unlock()
			return err
		}
		slog.Debug("server unavailable", "server", f.addrs[k], "method", method, "err", err)
	}
	return err
}

func (f *failover) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	cc, err := f.conn(f.current())
	if err != nil {
		return nil, err
	}
	return cc.NewStream(ctx, desc, method, opts...)
}

// Close closes every connection opened.
func (f *failover) Close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, cc := range f.conns {
		if cc != nil {
			_ = cc.Close()
		}
	}
}

// dial returns the connection to the cluster, opening it on first use.
func (a *app) dial() (*failover, error) {
	if a.conn == nil {
		s, err := a.connSettings()
		if err != nil {
			return nil, err
		}
		opts, err := s.dialOptions()
		if err != nil {
			return nil, err
		}
		f, err := newFailover(s.servers, opts)
		if err != nil {
			return nil, err
		}
		a.conn = f
	}
	return a.conn, nil
}

func (a *app) queueClient() (qv1.QueueServiceClient, error) {
	f, err := a.dial()
	if err != nil {
		return nil, err
	}
	return qv1.NewQueueServiceClient(f), nil
}

func (a *app) clusterClient() (qv1.ClusterServiceClient, error) {
	f, err := a.dial()
	if err != nil {
		return nil, err
	}
	return qv1.NewClusterServiceClient(f), nil
}

// callCtx bounds one request by --timeout plus extra (a long poll's wait).
func (a *app) callCtx(ctx context.Context, extra time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, a.timeout+extra)
}

// goClient connects the Go client (routing, retries) to --servers, with
// the run's TLS and credentials, within one call's deadline. Close it when
// done.
func (a *app) goClient(ctx context.Context) (*client.Client, error) {
	s, err := a.connSettings()
	if err != nil {
		return nil, err
	}
	opts, err := s.clientOptions()
	if err != nil {
		return nil, err
	}
	cctx, cancel := a.callCtx(ctx, 0)
	defer cancel()
	return client.New(cctx, s.servers, append(opts, client.WithLogger(slog.Default()))...)
}
