package cluster

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/quorumq/quorumq/fsm"
	qv1 "github.com/quorumq/quorumq/proto/quorumq/v1"
)

// rawCodec sends and receives bytes as they are, so that a test can send
// any request, malformed or not.
type rawCodec struct{}

func (rawCodec) Name() string { return "proto" }

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(*v.(*[]byte))}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	*v.(*[]byte) = data.Materialize()
	return nil
}

// invokeRaw calls method with body as the request bytes.
func invokeRaw(ctx context.Context, cc *grpc.ClientConn, method string, body []byte) ([]byte, error) {
	var out []byte
	err := cc.Invoke(ctx, method, &body, &out, grpc.ForceCodecV2(rawCodec{}))
	return out, err
}

// emptyMessages is an EnqueueRequest for queue holding k empty messages:
// two bytes each on the wire, and a struct each once decoded.
func emptyMessages(queue string, k int) []byte {
	b := protowire.AppendTag(nil, 1, protowire.BytesType)
	b = protowire.AppendString(b, queue)
	b = append(b, make([]byte, 2*k)...)
	for i := len(b) - 2*k; i < len(b); i += 2 {
		b[i] = byte(protowire.EncodeTag(2, protowire.BytesType))
	}
	return b
}

func TestCheckRequest(t *testing.T) {
	msgs := func(k int) *qv1.EnqueueRequest {
		r := &qv1.EnqueueRequest{Queue: "q"}
		for range k {
			r.Messages = append(r.Messages, &qv1.Message{Payload: []byte("x"), Headers: map[string]string{"a": "b", "c": "d"}})
		}
		return r
	}
	receipts := func(k int) *qv1.AckRequest {
		r := &qv1.AckRequest{Queue: "q"}
		for i := range k {
			r.Receipts = append(r.Receipts, fmt.Sprintf("r%d", i))
		}
		return r
	}
	headers := &qv1.EnqueueRequest{Queue: "q", Messages: []*qv1.Message{{Headers: map[string]string{}}}}
	for i := range fsm.MaxBatchMessages + 1 {
		headers.Messages[0].Headers[strconv.Itoa(i)] = ""
	}
	big := &qv1.AckRequest{Queue: "q", Receipts: []string{strings.Repeat("r", otherMsgBytes)}}
	for _, tc := range []struct {
		name string
		msg  proto.Message
		raw  []byte
		into proto.Message
		code codes.Code
	}{
		{"1000 messages", msgs(fsm.MaxBatchMessages), nil, &qv1.EnqueueRequest{}, codes.OK},
		{"1001 messages", msgs(fsm.MaxBatchMessages + 1), nil, &qv1.EnqueueRequest{}, codes.InvalidArgument},
		{"4.5M empty messages", nil, emptyMessages("q", 4_500_000), &qv1.EnqueueRequest{}, codes.InvalidArgument},
		{"1001 headers", headers, nil, &qv1.EnqueueRequest{}, codes.InvalidArgument},
		{"1000 receipts", receipts(fsm.MaxBatchMessages), nil, &qv1.AckRequest{}, codes.OK},
		{"1001 receipts", receipts(fsm.MaxBatchMessages + 1), nil, &qv1.AckRequest{}, codes.InvalidArgument},
		{"ack over 1 MiB", big, nil, &qv1.AckRequest{}, codes.ResourceExhausted},
		{"enqueue over 9 MiB", nil, make([]byte, publishMsgBytes+1), &qv1.EnqueueRequest{}, codes.ResourceExhausted},
		// Malformed: not refused here; proto.Unmarshal refuses it (the codec
		// turns that into INVALID_ARGUMENT too).
		{"truncated", nil, []byte{0x12, 0x05, 0x00}, &qv1.EnqueueRequest{}, codes.OK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := tc.raw
			if tc.msg != nil {
				var err error
				if b, err = proto.Marshal(tc.msg); err != nil {
					t.Fatal(err)
				}
			}
			err := checkRequest(b, tc.into)
			if status.Code(err) != tc.code {
				t.Fatalf("%v, want %v", err, tc.code)
			}
		})
	}
}

// TestCodecRefusalCode: a refused request gets its own code, not gRPC's
// INTERNAL for a codec error, and is never handed to the service.
func TestCodecRefusalCode(t *testing.T) {
	c := newRecvLimits()
	req := &qv1.EnqueueRequest{}
	if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(emptyMessages("q", 2000))}, req); err != nil {
		t.Fatal(err)
	}
	called := false
	_, err := c.unaryInterceptor(context.Background(), req, &grpc.UnaryServerInfo{}, func(context.Context, any) (any, error) {
		called = true
		return nil, nil
	})
	if status.Code(err) != codes.InvalidArgument || called {
		t.Fatalf("err %v, handler called %v", err, called)
	}
	if _, ok := c.refused.Load(req); ok {
		t.Fatal("refusal kept after it was returned")
	}
}

// vmRSS is the process's resident set (bytes), from /proc/self/status.
func vmRSS(t testing.TB, field string) int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no %s in /proc/self/status", field)
	return 0
}

// settledRSS is the resident set once garbage is collected and returned.
func settledRSS(t testing.TB) int64 {
	runtime.GC()
	debug.FreeOSMemory()
	return vmRSS(t, "VmRSS")
}

// TestHugeBatchesDoNotTakeMemory replays the probe of issue 13: eight
// concurrent 9 MB Enqueue requests holding 4.5 million empty messages each
// are refused before they are decoded, and the node's memory is where it
// was. (It took a node from 193 MiB to 3.6 GiB.)
func TestHugeBatchesDoNotTakeMemory(t *testing.T) {
	c := startCluster(t, 3)
	q, _ := c.client(0)
	ctx := ctxT(t, 2*time.Minute)
	if _, err := q.CreateQueue(ctx, &qv1.CreateQueueRequest{Name: "big", Partitions: 1, Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	cc := c.conn(0)
	body := emptyMessages("big", 4_500_000)
	if len(body) < 9_000_000 || len(body) > publishMsgBytes {
		t.Fatalf("request of %d bytes", len(body))
	}
	// Warm the connection up so that its buffers are in "before".
	if _, err := invokeRaw(ctx, cc, qv1.QueueService_Enqueue_FullMethodName, emptyMessages("big", 1)); err != nil {
		t.Fatal(err)
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	allocBefore := ms.TotalAlloc
	before := settledRSS(t)
	// VmHWM from here on is this probe's peak (Linux: writing 5 to
	// clear_refs resets it).
	peakKnown := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) == nil
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Go(func() { _, errs[i] = invokeRaw(ctx, cc, qv1.QueueService_Enqueue_FullMethodName, body) })
	}
	wg.Wait()
	peak := vmRSS(t, "VmHWM")
	after := settledRSS(t)
	runtime.ReadMemStats(&ms)
	t.Logf("8 x %d-byte requests of 4.5M messages: RSS %d MiB before, %d MiB after (peak %d MiB, known %v); %d MiB allocated meanwhile (client and server)",
		len(body), before>>20, after>>20, peak>>20, peakKnown, (ms.TotalAlloc-allocBefore)>>20)
	// The race detector keeps shadow memory for every heap page touched,
	// which returning the heap to the OS does not release: RSS says
	// nothing then, what was allocated still does.
	if after-before > 100<<20 && !raceEnabled {
		t.Fatalf("RSS grew from %d to %d MiB", before>>20, after>>20)
	}
	// What was allocated meanwhile (freed by now) is the better measure
	// of what decoding would have cost: the requests' bytes are 72 MB, the
	// 36 M messages they hold would be gigabytes.
	if alloc := ms.TotalAlloc - allocBefore; alloc > 512<<20 {
		t.Fatalf("%d MiB allocated to refuse the requests", alloc>>20)
	}
	for i, err := range errs {
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "more than 1000") {
			t.Fatalf("request %d: %v, want INVALID_ARGUMENT for too many messages", i, err)
		}
	}
	if code, body := httpGet(t, "http://"+c.nodes[0].HTTPAddr()+"/metrics"); code != 200 ||
		!strings.Contains(body, `quorumq_requests_refused_total{reason="too_many_elements"} 8`) {
		t.Fatalf("metrics: %d\n%s", code, body)
	}
	// The node still serves.
	if _, err := q.Enqueue(ctx, &qv1.EnqueueRequest{Queue: "big", Messages: []*qv1.Message{{Payload: []byte("after")}}}); err != nil {
		t.Fatal(err)
	}
}

// TestSilentConnectionsClosed replays the probe of issue 13: 3,000
// connections to the client port that send nothing are closed within the
// handshake timeout, while a producer on another connection keeps going.
func TestSilentConnectionsClosed(t *testing.T) {
	const silent, handshake = 3000, 2 * time.Second
	c := startClusterWith(t, 3, func(cfg *Config) { cfg.Limits.HandshakeTimeout = handshake })
	q, _ := c.client(0)
	ctx := ctxT(t, 2*time.Minute)
	if _, err := q.CreateQueue(ctx, &qv1.CreateQueueRequest{Name: "work", Partitions: 2, Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var sent atomic.Int64
	var produceErr atomic.Value
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, err := q.Enqueue(rctx, &qv1.EnqueueRequest{Queue: "work", Messages: []*qv1.Message{{Payload: []byte("m")}}})
			cancel()
			if err != nil {
				produceErr.CompareAndSwap(nil, err)
				return
			}
			sent.Add(1)
		}
	})
	addr := c.nodes[0].ClientAddr()
	start := time.Now()
	conns := make([]net.Conn, 0, silent)
	defer func() {
		for _, cn := range conns {
			cn.Close()
		}
	}()
	for range silent {
		cn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("after %d connections: %v", len(conns), err)
		}
		conns = append(conns, cn)
	}
	opened := time.Since(start)
	sentAtOpen := sent.Load()
	// Each connection ends (EOF or reset) once the server closes it.
	closedAt := make([]time.Duration, silent)
	var cw sync.WaitGroup
	for i, cn := range conns {
		cw.Go(func() {
			_ = cn.SetReadDeadline(start.Add(handshake + 30*time.Second))
			_, err := io.Copy(io.Discard, cn)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				closedAt[i] = -1
				return
			}
			closedAt[i] = time.Since(start)
		})
	}
	cw.Wait()
	close(stop)
	wg.Wait()
	var last time.Duration
	for i, d := range closedAt {
		if d < 0 {
			t.Fatalf("connection %d still open after %v", i, handshake+30*time.Second)
		}
		last = max(last, d)
	}
	t.Logf("%d silent connections opened in %v, all closed %v after the first was opened (handshake timeout %v); %d enqueues meanwhile (%d before all were open)",
		silent, opened.Round(time.Millisecond), last.Round(time.Millisecond), handshake, sent.Load(), sentAtOpen)
	if err := produceErr.Load(); err != nil {
		t.Fatalf("producer: %v", err)
	}
	// The last connection opened at `opened`; give the server's timer and
	// a loaded machine two seconds.
	if last > opened+handshake+2*time.Second {
		t.Fatalf("last silent connection closed after %v", last)
	}
	if sent.Load() == sentAtOpen {
		t.Fatal("no enqueue succeeded while the silent connections were open")
	}
}

// TestMaxConns: past --max-conns a connection waits to be accepted until
// one closes.
func TestMaxConns(t *testing.T) {
	c := startClusterWith(t, 3, func(cfg *Config) {
		cfg.Limits.MaxConns = 4
		cfg.Limits.HandshakeTimeout = time.Second
	})
	addr := c.nodes[1].ClientAddr()
	var held []net.Conn
	for range 4 {
		cn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, cn)
	}
	defer func() {
		for _, cn := range held {
			cn.Close()
		}
	}()
	// The fifth is in the kernel's backlog, not served, until the server
	// closes the silent four (handshake timeout, 1 s).
	_, cl := c.client(1)
	start := time.Now()
	if _, err := cl.Status(ctxT(t, 300*time.Millisecond), &qv1.StatusRequest{}); err == nil {
		t.Fatal("a fifth connection was served while four were open")
	}
	if _, err := cl.Status(ctxT(t, 10*time.Second), &qv1.StatusRequest{}); err != nil && status.Code(err) == codes.DeadlineExceeded {
		t.Fatalf("not served once the silent connections were closed: %v", err)
	}
	t.Logf("served after %v", time.Since(start).Round(time.Millisecond))
}

// TestReflectionOffByDefault: server reflection answers only with
// --reflection.
func TestReflectionOffByDefault(t *testing.T) {
	c := startClusterWith(t, 3, func(cfg *Config) { cfg.Reflection = cfg.NodeID == "n2" })
	ctx := ctxT(t, 30*time.Second)
	for i, want := range []codes.Code{codes.Unimplemented, codes.OK} {
		cc := c.conn(i)
		// A ServerReflectionRequest for list_services (field 7), raw.
		req := protowire.AppendString(protowire.AppendTag(nil, 7, protowire.BytesType), "*")
		st, err := cc.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true},
			"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", grpc.ForceCodecV2(rawCodec{}))
		if err != nil {
			t.Fatal(err)
		}
		if err := st.SendMsg(&req); err != nil {
			t.Fatal(err)
		}
		var resp []byte
		err = st.RecvMsg(&resp)
		if status.Code(err) != want {
			t.Fatalf("node %d: reflection answered %v, want %v", i+1, err, want)
		}
		_ = st.CloseSend()
	}
}

func TestLimitsValidate(t *testing.T) {
	var l Limits
	if err := l.validate(); err != nil {
		t.Fatal(err)
	}
	if l != (Limits{MaxConns: DefaultMaxConns, MaxStreamsPerConn: DefaultMaxStreamsPerConn, HandshakeTimeout: DefaultHandshakeTimeout,
		IdleTimeout: DefaultIdleTimeout, MaxQueues: DefaultMaxQueues, MaxPartitionsPerQueue: DefaultMaxPartitionsPerQueue,
		MaxReplicasPerNode: DefaultMaxReplicasPerNode, QueueOpsRate: DefaultQueueOpsRate}) {
		t.Fatalf("defaults: %+v", l)
	}
	for _, bad := range []Limits{
		{MaxPartitionsPerQueue: fsm.MaxQueuePartitions + 1}, {MaxQueues: -1}, {MaxConns: -5},
		{QueueOpsRate: -1}, {HandshakeTimeout: -time.Second},
	} {
		if err := bad.validate(); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}
