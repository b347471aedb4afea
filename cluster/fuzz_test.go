package cluster

import (
	"context"
	"crypto/sha256"
	"runtime"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	fsmv1 "github.com/quorumq/quorumq/proto/quorumq/fsm/v1"
	qv1 "github.com/quorumq/quorumq/proto/quorumq/v1"
)

// The fuzz targets below send raw bytes as the request of one public method
// each to a live three-node cluster (started once per target, before the
// first input), so malformed protobuf reaches the server as well as valid
// requests with odd values. Each input must leave the node answering, and
// the process's heap bounded; an error status is fine, except UNKNOWN or
// INTERNAL (a panic or an error nobody mapped). Destructive admin calls
// (DrainNode, RemoveNode, GossipKeyring, DeleteQueue, Purge) are fuzzed
// too: the cluster must survive what its API allows, and each check asks
// the node that was called, which answers health checks whatever the
// catalogue says of it.

// maxFuzzHeap bounds the live heap after any input: the cluster uses a few
// tens of MiB; one request may hold 9 MiB.
const maxFuzzHeap = 1 << 30

type fuzzEnv struct {
	c        *testCluster
	conns    []*grpc.ClientConn
	receipts []string // leased messages of queue "fz"
}

// fuzzCluster starts the cluster of one fuzz target: queue "fz" with
// messages, some of them leased.
func fuzzCluster(f *testing.F) *fuzzEnv {
	f.Helper()
	// Small caps: a fuzzed CreateQueue of hundreds of partitions would
	// bury the three in-process nodes in replicas and slow every input
	// down; the limits' code runs all the same.
	c := startClusterWith(f, 3, func(cfg *Config) {
		cfg.Limits.MaxPartitionsPerQueue = 8
		cfg.Limits.MaxQueues = 32
		cfg.Limits.MaxReplicasPerNode = 128
	})
	env := &fuzzEnv{c: c}
	for i := range c.nodes {
		env.conns = append(env.conns, c.conn(i))
	}
	q, _ := c.client(0)
	ctx := ctxT(f, time.Minute)
	if _, err := q.CreateQueue(ctx, &qv1.CreateQueueRequest{Name: "fz", Partitions: 2, Replicas: 3}); err != nil {
		f.Fatal(err)
	}
	var msgs []*qv1.Message
	for range 20 {
		msgs = append(msgs, &qv1.Message{Payload: []byte("m"), Headers: map[string]string{"k": "v"}})
	}
	if _, err := q.Enqueue(ctx, &qv1.EnqueueRequest{Queue: "fz", Messages: msgs}); err != nil {
		f.Fatal(err)
	}
	got, err := q.Receive(ctx, &qv1.ReceiveRequest{Queue: "fz", Max: 5, Wait: durationpb.New(2 * time.Second), VisibilityTimeout: durationpb.New(time.Hour)})
	if err != nil {
		f.Fatal(err)
	}
	for _, m := range got.GetMessages() {
		env.receipts = append(env.receipts, m.GetReceipt())
	}
	return env
}

// fuzzMethod fuzzes method with seeds (and a few malformed inputs).
func fuzzMethod(f *testing.F, method string, seeds func(env *fuzzEnv) []proto.Message) {
	env := fuzzCluster(f)
	for i, m := range seeds(env) {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(uint8(i), b)
	}
	f.Add(uint8(0), []byte{})
	f.Add(uint8(1), []byte{0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f}) // a length past the end
	f.Add(uint8(2), emptyMessages("fz", 1500))                  // too many list elements
	f.Fuzz(func(t *testing.T, node uint8, body []byte) {
		i := int(node) % len(env.conns)
		cc := env.conns[i]
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		_, err := invokeRaw(ctx, cc, method, body)
		if c := status.Code(err); c == codes.Unknown || c == codes.Internal {
			t.Fatalf("%s(%x) on n%d: %v", method, body, i+1, err)
		}
		hctx, hcancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer hcancel()
		if _, err := healthpb.NewHealthClient(cc).Check(hctx, &healthpb.HealthCheckRequest{}); err != nil {
			t.Fatalf("n%d does not answer after %s(%x): %v", i+1, method, body, err)
		}
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		if ms.HeapAlloc > maxFuzzHeap {
			runtime.GC()
			if runtime.ReadMemStats(&ms); ms.HeapAlloc > maxFuzzHeap {
				t.Fatalf("heap of %d MiB after %s(%x)", ms.HeapAlloc>>20, method, body)
			}
		}
	})
}

func seeds(ms ...proto.Message) func(*fuzzEnv) []proto.Message {
	return func(*fuzzEnv) []proto.Message { return ms }
}

func dur(d time.Duration) *durationpb.Duration { return durationpb.New(d) }

func FuzzCreateQueue(f *testing.F) {
	md := uint32(3)
	fuzzMethod(f, qv1.QueueService_CreateQueue_FullMethodName, seeds(
		&qv1.CreateQueueRequest{Name: "a", Partitions: 2, Replicas: 3},
		&qv1.CreateQueueRequest{Name: "fz", Partitions: 2, Replicas: 3},
		&qv1.CreateQueueRequest{Name: "b", Partitions: 1024},
		&qv1.CreateQueueRequest{Name: "c", Settings: &qv1.QueueSettings{VisibilityTimeout: dur(time.Second), MaxDeliveries: &md, Retention: dur(-1)}},
	))
}

func FuzzDeleteQueue(f *testing.F) {
	fuzzMethod(f, qv1.QueueService_DeleteQueue_FullMethodName, seeds(
		&qv1.DeleteQueueRequest{Name: "nope"}, &qv1.DeleteQueueRequest{Name: ""}, &qv1.DeleteQueueRequest{Name: "fz"},
	))
}

func FuzzGetQueue(f *testing.F) {
	fuzzMethod(f, qv1.QueueService_GetQueue_FullMethodName, seeds(&qv1.GetQueueRequest{Name: "fz"}, &qv1.GetQueueRequest{Name: "../x"}))
}

func FuzzListQueues(f *testing.F) {
	fuzzMethod(f, qv1.QueueService_ListQueues_FullMethodName, seeds(&qv1.ListQueuesRequest{}))
}

func FuzzEnqueue(f *testing.F) {
	fuzzMethod(f, qv1.QueueService_Enqueue_FullMethodName, seeds(
		&qv1.EnqueueRequest{Queue: "fz", Messages: []*qv1.Message{{Payload: []byte("x"), Key: "k", DedupId: "d", Headers: map[string]string{"a": "b"}, Delay: dur(time.Second)}}},
		&qv1.EnqueueRequest{Queue: "fz", Messages: []*qv1.Message{{}, {Payload: make([]byte, 1<<10)}}},
		&qv1.EnqueueRequest{Queue: "nope", Messages: []*qv1.Message{{}}},
	))
}

func FuzzReceive(f *testing.F) {
	fuzzMethod(f, qv1.QueueService_Receive_FullMethodName, seeds(
		&qv1.ReceiveRequest{Queue: "fz", Max: 2, VisibilityTimeout: dur(time.Second)},
		&qv1.ReceiveRequest{Queue: "fz", Max: 100000, Wait: dur(time.Hour), Consumer: "c"},
	))
}

func receiptSeeds(mk func(queue string, receipts []string) proto.Message) func(*fuzzEnv) []proto.Message {
	return func(env *fuzzEnv) []proto.Message {
		return []proto.Message{mk("fz", env.receipts[:1]), mk("fz", env.receipts), mk("fz", []string{"r1.AQABAQ", ""}), mk("nope", env.receipts)}
	}
}

func FuzzAck(f *testing.F) {
	fuzzMethod(f, qv1.QueueService_Ack_FullMethodName, receiptSeeds(func(q string, r []string) proto.Message {
		return &qv1.AckRequest{Queue: q, Receipts: r}
	}))
}

func FuzzRequeue(f *testing.F) {
	fuzzMethod(f, qv1.QueueService_Requeue_FullMethodName, receiptSeeds(func(q string, r []string) proto.Message {
		return &qv1.RequeueRequest{Queue: q, Receipts: r, Delay: dur(time.Second)}
	}))
}

func FuzzExtendLease(f *testing.F) {
	fuzzMethod(f, qv1.QueueService_ExtendLease_FullMethodName, receiptSeeds(func(q string, r []string) proto.Message {
		return &qv1.ExtendLeaseRequest{Queue: q, Receipts: r, VisibilityTimeout: dur(time.Minute)}
	}))
}

func FuzzReject(f *testing.F) {
	fuzzMethod(f, qv1.QueueService_Reject_FullMethodName, receiptSeeds(func(q string, r []string) proto.Message {
		return &qv1.RejectRequest{Queue: q, Receipts: r, Reason: "bad"}
	}))
}

func FuzzListDeadLetters(f *testing.F) {
	fuzzMethod(f, qv1.QueueService_ListDeadLetters_FullMethodName, seeds(
		&qv1.ListDeadLettersRequest{Queue: "fz", Limit: 10}, &qv1.ListDeadLettersRequest{Queue: "fz", PageToken: "1-5"},
	))
}

func FuzzRedrive(f *testing.F) {
	fuzzMethod(f, qv1.QueueService_Redrive_FullMethodName, seeds(
		&qv1.RedriveRequest{Queue: "fz"}, &qv1.RedriveRequest{Queue: "fz", MessageIds: []string{"0-1", "1-2", "x"}, Max: 3},
	))
}

func FuzzPurge(f *testing.F) {
	fuzzMethod(f, qv1.QueueService_Purge_FullMethodName, seeds(
		&qv1.PurgeRequest{Queue: "fz", Dead: true}, &qv1.PurgeRequest{Queue: "fz", Ready: true},
	))
}

func FuzzStatus(f *testing.F) {
	fuzzMethod(f, qv1.ClusterService_Status_FullMethodName, seeds(&qv1.StatusRequest{}))
}

func FuzzMembers(f *testing.F) {
	fuzzMethod(f, qv1.ClusterService_Members_FullMethodName, seeds(&qv1.MembersRequest{}))
}

func FuzzPartitions(f *testing.F) {
	fuzzMethod(f, qv1.ClusterService_Partitions_FullMethodName, seeds(
		&qv1.PartitionsRequest{Queue: "fz"}, &qv1.PartitionsRequest{Local: true},
	))
}

func FuzzTransferLeadership(f *testing.F) {
	fuzzMethod(f, qv1.ClusterService_TransferLeadership_FullMethodName, seeds(
		&qv1.TransferLeadershipRequest{Queue: "fz", Partition: 1, To: "n2"}, &qv1.TransferLeadershipRequest{Queue: "fz", Partition: 7},
	))
}

func FuzzDrainNode(f *testing.F) {
	fuzzMethod(f, qv1.ClusterService_DrainNode_FullMethodName, seeds(
		&qv1.DrainNodeRequest{NodeId: "n3"}, &qv1.DrainNodeRequest{NodeId: "n3", Cancel: true}, &qv1.DrainNodeRequest{NodeId: "zz"},
	))
}

func FuzzRemoveNode(f *testing.F) {
	fuzzMethod(f, qv1.ClusterService_RemoveNode_FullMethodName, seeds(
		&qv1.RemoveNodeRequest{NodeId: "n3"}, &qv1.RemoveNodeRequest{NodeId: "zz"},
	))
}

func FuzzRebalance(f *testing.F) {
	fuzzMethod(f, qv1.ClusterService_Rebalance_FullMethodName, seeds(&qv1.RebalanceRequest{}))
}

func FuzzGossipKeyring(f *testing.F) {
	fuzzMethod(f, qv1.ClusterService_GossipKeyring_FullMethodName, seeds(
		&qv1.GossipKeyringRequest{Op: "list"},
		&qv1.GossipKeyringRequest{Op: "install", Key: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="},
		&qv1.GossipKeyringRequest{Op: "remove", Key: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="},
		&qv1.GossipKeyringRequest{Op: "use", Key: "!"},
	))
}

func FuzzWhoAmI(f *testing.F) {
	fuzzMethod(f, qv1.AccessService_WhoAmI_FullMethodName, seeds(&qv1.WhoAmIRequest{}))
}

func FuzzGrant(f *testing.F) {
	fuzzMethod(f, qv1.AccessService_Grant_FullMethodName, seeds(
		&qv1.GrantRequest{Grant: &qv1.AccessGrant{Identity: "w", Permission: qv1.Permission_PERMISSION_CONSUME, Queue: "fz"}},
		&qv1.GrantRequest{Grant: &qv1.AccessGrant{Identity: "w", Permission: qv1.Permission_PERMISSION_PRODUCE, Queue: "f", Prefix: true}},
		&qv1.GrantRequest{Grant: &qv1.AccessGrant{Identity: "ops", Permission: qv1.Permission_PERMISSION_ADMIN}},
		&qv1.GrantRequest{Grant: &qv1.AccessGrant{Identity: "w/../x", Permission: 9, Queue: "fz"}},
	))
}

func FuzzRevoke(f *testing.F) {
	fuzzMethod(f, qv1.AccessService_Revoke_FullMethodName, seeds(
		&qv1.RevokeRequest{Grant: &qv1.AccessGrant{Identity: "w", Permission: qv1.Permission_PERMISSION_CONSUME, Queue: "fz"}},
		&qv1.RevokeRequest{},
	))
}

func FuzzListGrants(f *testing.F) {
	fuzzMethod(f, qv1.AccessService_ListGrants_FullMethodName, seeds(&qv1.ListGrantsRequest{}, &qv1.ListGrantsRequest{Identity: "w"}))
}

func FuzzCreateToken(f *testing.F) {
	fuzzMethod(f, qv1.AccessService_CreateToken_FullMethodName, seeds(
		&qv1.CreateTokenRequest{Identity: "ci", Description: "fuzz"},
		&qv1.CreateTokenRequest{Identity: ""},
	))
}

func FuzzListTokens(f *testing.F) {
	fuzzMethod(f, qv1.AccessService_ListTokens_FullMethodName, seeds(&qv1.ListTokensRequest{}))
}

func FuzzDeleteToken(f *testing.F) {
	fuzzMethod(f, qv1.AccessService_DeleteToken_FullMethodName, seeds(
		&qv1.DeleteTokenRequest{Id: "0123456789abcdef"},
		&qv1.DeleteTokenRequest{Id: "XYZ"},
	))
}

func FuzzRotateReceiptKey(f *testing.F) {
	fuzzMethod(f, qv1.AccessService_RotateReceiptKey_FullMethodName, seeds(&qv1.RotateReceiptKeyRequest{}))
}

// FuzzCheckToken: any string presented as a bearer token is refused
// unless it is the token, without panicking.
func FuzzCheckToken(f *testing.F) {
	secret := make([]byte, tokenSecretLen)
	sum := sha256.Sum256(secret)
	p := &accessPolicy{tokens: map[string]*fsmv1.TokenInfo{"0123456789abcdef": {Id: "0123456789abcdef", Identity: "ci", Hash: sum[:]}}}
	good := formatToken("0123456789abcdef", secret)
	f.Add(good)
	f.Add("qq_0123456789abcdef_")
	f.Add("Bearer x")
	f.Fuzz(func(t *testing.T, tok string) {
		id, err := p.checkToken(tok)
		if (err == nil) != (tok == good) || (err == nil && id != "ci") {
			t.Fatalf("checkToken(%q) = %q, %v", tok, id, err)
		}
	})
}
