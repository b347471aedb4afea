package cluster

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	protocodec "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/quorumq/quorumq/fsm"
	qv1 "github.com/quorumq/quorumq/proto/quorumq/v1"
)

// Limits are the numbers no client request can get past (cluster/DESIGN.md,
// "Limits"). The zero value of a field means its default.
type Limits struct {
	// MaxConns caps the open connections of the client port and of the
	// peer port, each. Past it, accepting waits until one closes.
	MaxConns int
	// MaxStreamsPerConn caps the concurrent calls on one client
	// connection (HTTP/2 MAX_CONCURRENT_STREAMS).
	MaxStreamsPerConn uint32
	// HandshakeTimeout: a client connection that has not finished its
	// TLS and HTTP/2 handshake by then is closed.
	HandshakeTimeout time.Duration
	// IdleTimeout: a client connection without a call for this long is
	// sent GOAWAY and closed.
	IdleTimeout time.Duration

	// MaxQueues caps the queues of the cluster; MaxPartitionsPerQueue the
	// partitions of one queue (fsm.MaxQueuePartitions is the catalogue's
	// hard limit); MaxReplicasPerNode the partition replicas placed on one
	// node. The controller leader's values are the ones enforced.
	MaxQueues             int
	MaxPartitionsPerQueue int
	MaxReplicasPerNode    int
	// QueueOpsRate: queue creations and deletions per second, cluster-wide
	// (on the controller leader), with a burst of twice that (at least 1).
	QueueOpsRate float64
}

// Defaults of Limits.
const (
	DefaultMaxConns              = 4096
	DefaultMaxStreamsPerConn     = 256
	DefaultHandshakeTimeout      = 10 * time.Second
	DefaultIdleTimeout           = 15 * time.Minute
	DefaultMaxQueues             = 1000
	DefaultMaxPartitionsPerQueue = 256
	DefaultMaxReplicasPerNode    = 512
	DefaultQueueOpsRate          = 5
)

// Message size limits of the client port. An Enqueue carries up to
// fsm.MaxBatchBytes of payloads, keys and headers plus their framing (at
// most 1,000 messages of a few dozen bytes of tags, lengths, dedup id and
// delay: well under 1 MiB). Every other request names a queue and at most
// 1,000 receipts or message ids (a receipt is under 100 bytes), so 1 MiB
// leaves room for ten times that.
const (
	publishMsgBytes = fsm.MaxBatchBytes + 1<<20
	otherMsgBytes   = 1 << 20
	// maxListLen caps every repeated or map field of a request, at any
	// depth (an Enqueue's messages, an Ack's receipts, a message's
	// headers); maxElements caps their sum over one request, so that
	// merged occurrences of a field cannot add up past it either; each
	// message occurrence counts too (it allocates). A valid Enqueue holds
	// at most 1,000 messages of at most 32 headers and a few message
	// fields each.
	maxListLen  = fsm.MaxBatchMessages
	maxElements = fsm.MaxBatchMessages * (1 + fsm.MaxHeaders + 8)
	maxDepth    = 16
)

// Keepalive enforcement on the client port: a client may ping at most every
// 10 s (also without a call in flight); the server pings a connection idle
// for a minute and closes it when the ping is not answered in 20 s.
const (
	keepaliveMinPing = 10 * time.Second
	keepaliveTime    = time.Minute
	keepaliveTimeout = 20 * time.Second
)

func (l *Limits) validate() error {
	defInt := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	defInt(&l.MaxConns, DefaultMaxConns)
	defInt(&l.MaxQueues, DefaultMaxQueues)
	defInt(&l.MaxPartitionsPerQueue, DefaultMaxPartitionsPerQueue)
	defInt(&l.MaxReplicasPerNode, DefaultMaxReplicasPerNode)
	if l.MaxStreamsPerConn == 0 {
		l.MaxStreamsPerConn = DefaultMaxStreamsPerConn
	}
	if l.HandshakeTimeout == 0 {
		l.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if l.IdleTimeout == 0 {
		l.IdleTimeout = DefaultIdleTimeout
	}
	if l.QueueOpsRate == 0 {
		l.QueueOpsRate = DefaultQueueOpsRate
	}
	switch {
	case l.MaxConns < 1, l.MaxQueues < 1, l.MaxPartitionsPerQueue < 1, l.MaxReplicasPerNode < 1:
		return fmt.Errorf("config: --max-conns, --max-queues, --max-partitions-per-queue and --max-replicas-per-node must be positive")
	case l.MaxPartitionsPerQueue > fsm.MaxQueuePartitions:
		return fmt.Errorf("config: --max-partitions-per-queue %d: at most %d", l.MaxPartitionsPerQueue, fsm.MaxQueuePartitions)
	case l.HandshakeTimeout < 0, l.IdleTimeout < 0:
		return fmt.Errorf("config: --handshake-timeout and --idle-timeout must be positive")
	case l.QueueOpsRate < 0:
		return fmt.Errorf("config: --queue-ops-rate must be positive")
	}
	return nil
}

// LimitError is a request refused by a limit. Exhausted: the cluster is out
// of what the limit counts (RESOURCE_EXHAUSTED, may pass later); otherwise
// the request itself is over it (INVALID_ARGUMENT).
type LimitError struct {
	Flag      string // the flag that sets the limit, "--max-queues"
	Detail    string
	Exhausted bool
}

func (e *LimitError) Error() string { return fmt.Sprintf("%s (limit %s)", e.Detail, e.Flag) }

// status is the error's gRPC status (the service edge).
func (e *LimitError) status() error {
	code := codes.InvalidArgument
	if e.Exhausted {
		code = codes.ResourceExhausted
	}
	return status.Error(code, e.Error())
}

// clientLimitOptions are the client gRPC server's limits.
func (n *Node) clientLimitOptions() []grpc.ServerOption {
	l := n.cfg.Limits
	return []grpc.ServerOption{
		// gRPC reads a message whole before decoding it; this bounds that
		// read for every method (the largest, Enqueue's), the codec then
		// applies each method's own limit before decoding.
		grpc.MaxRecvMsgSize(publishMsgBytes),
		grpc.ForceServerCodecV2(n.lim.recv),
		grpc.ChainUnaryInterceptor(n.lim.recv.unaryInterceptor),
		grpc.ChainStreamInterceptor(n.lim.recv.streamInterceptor),
		grpc.MaxConcurrentStreams(l.MaxStreamsPerConn),
		grpc.ConnectionTimeout(l.HandshakeTimeout),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: keepaliveMinPing, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: l.IdleTimeout, Time: keepaliveTime, Timeout: keepaliveTimeout}),
	}
}

// recvLimits is the client port's codec: the proto codec, except that a
// request is measured and its lists counted (protowire, without
// allocating) before it is decoded. A request over a limit is not decoded;
// gRPC would turn a codec error into INTERNAL, so the refusal is kept for
// the request and returned, with its own code, by the first interceptor
// (unaryInterceptor, installed by clientLimitOptions ahead of any other).
type recvLimits struct {
	inner   encoding.CodecV2
	refused sync.Map // request message -> error (a status)
	// counts of refusals, by reason (metrics)
	tooLarge, tooMany, malformed atomic.Uint64
}

var _ encoding.CodecV2 = (*recvLimits)(nil)

func newRecvLimits() *recvLimits {
	return &recvLimits{inner: encoding.GetCodecV2(protocodec.Name)}
}

func (c *recvLimits) Name() string { return protocodec.Name }

func (c *recvLimits) Marshal(v any) (mem.BufferSlice, error) { return c.inner.Marshal(v) }

func (c *recvLimits) Unmarshal(data mem.BufferSlice, v any) error {
	m, ok := v.(proto.Message)
	if !ok {
		return c.inner.Unmarshal(data, v)
	}
	if n, limit := data.Len(), requestLimit(m); n > limit {
		// Refused before it is copied.
		c.tooLarge.Add(1)
		c.refused.Store(v, status.Errorf(codes.ResourceExhausted, "%s of %d bytes, at most %d", m.ProtoReflect().Descriptor().Name(), n, limit))
		return nil
	}
	// One copy of the request (gRPC hands it over in frames), for the
	// check and the decode both.
	buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
	defer buf.Free()
	if err := checkRequest(buf.ReadOnlyData(), m); err != nil {
		if status.Code(err) == codes.ResourceExhausted {
			c.tooLarge.Add(1)
		} else {
			c.tooMany.Add(1)
		}
		c.refused.Store(v, err)
		return nil
	}
	if err := proto.Unmarshal(buf.ReadOnlyData(), m); err != nil {
		// Bad input, not a server fault: INVALID_ARGUMENT, not INTERNAL.
		c.malformed.Add(1)
		c.refused.Store(v, status.Errorf(codes.InvalidArgument, "malformed %s: %v", m.ProtoReflect().Descriptor().Name(), err))
	}
	return nil
}

// requestLimit is the size limit of a request of m's type.
func requestLimit(m proto.Message) int {
	if _, ok := m.(*qv1.EnqueueRequest); ok {
		return publishMsgBytes
	}
	return otherMsgBytes
}

// checkRequest refuses a request larger than its method's limit
// (RESOURCE_EXHAUSTED, as gRPC's own size limit) or holding more elements
// than a valid one can (INVALID_ARGUMENT, as the batch checks after
// decoding), without decoding it.
func checkRequest(b []byte, m proto.Message) error {
	if n, limit := len(b), requestLimit(m); n > limit {
		return status.Errorf(codes.ResourceExhausted, "%s of %d bytes, at most %d", m.ProtoReflect().Descriptor().Name(), n, limit)
	}
	total := 0
	if err := countLists(b, m.ProtoReflect().Descriptor(), 0, &total); err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	return nil
}

// countLists walks the wire form b of a message of type md and counts the
// elements of its repeated and map fields, recursing into message fields.
// Malformed input ends the walk without an error: proto.Unmarshal refuses
// it, having allocated no more than what was counted up to there.
func countLists(b []byte, md protoreflect.MessageDescriptor, depth int, total *int) error {
	if depth > maxDepth {
		return fmt.Errorf("%s nested more than %d deep", md.Name(), maxDepth)
	}
	var counts map[protowire.Number]int
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil
		}
		b = b[n:]
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return nil
		}
		val := b[:n]
		b = b[n:]
		fd := md.Fields().ByNumber(num)
		if fd == nil {
			continue // unknown fields are kept as raw bytes: bounded by the size
		}
		k := 1
		if fd.IsList() && typ == protowire.BytesType && fd.Kind() != protoreflect.StringKind &&
			fd.Kind() != protoreflect.BytesKind && fd.Kind() != protoreflect.MessageKind {
			k = packedLen(val, fd.Kind())
		}
		if fd.IsList() || fd.IsMap() {
			if counts == nil {
				counts = map[protowire.Number]int{}
			}
			counts[num] += k
			if counts[num] > maxListLen {
				return fmt.Errorf("%s.%s holds more than %d elements", md.Name(), fd.Name(), maxListLen)
			}
		}
		isMsg := fd.Kind() == protoreflect.MessageKind
		if !fd.IsList() && !fd.IsMap() && !isMsg {
			continue // a scalar: its bytes are bounded by the size
		}
		if *total += k; *total > maxElements {
			return fmt.Errorf("%s holds more than %d elements in all", md.Name(), maxElements)
		}
		if isMsg && typ == protowire.BytesType {
			inner, _ := protowire.ConsumeBytes(val)
			if err := countLists(inner, fd.Message(), depth+1, total); err != nil {
				return err
			}
		}
	}
	return nil
}

// packedLen is the number of elements of a packed repeated scalar field.
func packedLen(b []byte, kind protoreflect.Kind) int {
	b, _ = protowire.ConsumeBytes(b)
	switch kind {
	case protoreflect.Fixed32Kind, protoreflect.Sfixed32Kind, protoreflect.FloatKind:
		return len(b) / 4
	case protoreflect.Fixed64Kind, protoreflect.Sfixed64Kind, protoreflect.DoubleKind:
		return len(b) / 8
	}
	k := 0
	for _, c := range b {
		if c < 0x80 { // the last byte of a varint
			k++
		}
	}
	return k
}

// unaryInterceptor returns the refusal the codec kept for req, if any.
func (c *recvLimits) unaryInterceptor(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if err, ok := c.refused.LoadAndDelete(req); ok {
		return nil, err.(error)
	}
	return h(ctx, req)
}

// streamInterceptor does the same for the messages of a stream (server
// reflection, health Watch).
func (c *recvLimits) streamInterceptor(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	return h(srv, &limitedStream{ServerStream: ss, c: c})
}

type limitedStream struct {
	grpc.ServerStream
	c *recvLimits
}

func (s *limitedStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	if err, ok := s.c.refused.LoadAndDelete(m); ok {
		return err.(error)
	}
	return nil
}

// writeLimitMetrics prints the counts of requests and queue operations
// refused by a limit.
func (n *Node) writeLimitMetrics(w io.Writer) {
	c, l := n.lim.recv, n.lim
	fmt.Fprintln(w, "# TYPE quorumq_requests_refused_total counter")
	fmt.Fprintf(w, "quorumq_requests_refused_total{reason=\"too_large\"} %d\nquorumq_requests_refused_total{reason=\"too_many_elements\"} %d\nquorumq_requests_refused_total{reason=\"malformed\"} %d\n",
		c.tooLarge.Load(), c.tooMany.Load(), c.malformed.Load())
	fmt.Fprintln(w, "# TYPE quorumq_queue_ops_refused_total counter")
	l.refusedMu.Lock()
	defer l.refusedMu.Unlock()
	for _, flag := range []string{"--queue-ops-rate", "--max-queues", "--max-partitions-per-queue", "--max-replicas-per-node"} {
		fmt.Fprintf(w, "quorumq_queue_ops_refused_total{limit=%q} %d\n", strings.TrimPrefix(flag, "--"), l.refused[flag])
	}
}
