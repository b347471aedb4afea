package cluster

import (
	"bytes"
	"context"
	"crypto/sha256"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/quorumq/quorumq/fsm"
	fsmv1 "github.com/quorumq/quorumq/proto/quorumq/fsm/v1"
	qv1 "github.com/quorumq/quorumq/proto/quorumq/v1"
)

// bearer sends a token with every call.
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}
func (bearer) RequireTransportSecurity() bool { return true }

func wantCode(t *testing.T, what string, err error, code codes.Code, mention string) {
	t.Helper()
	if status.Code(err) != code || !strings.Contains(status.Convert(err).Message(), mention) {
		t.Fatalf("%s: %v, want %v mentioning %q", what, err, code, mention)
	}
}

// syncBuffer is a log sink tests read while nodes write.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestWhoMayDoWhat replays the probes against a secure cluster:
// anonymous calls refused, a consumer of queue a confined to consuming a,
// guessed and altered receipts refused, tokens, grants in force on every
// node within a second, admin actions audited.
func TestWhoMayDoWhat(t *testing.T) {
	var logs syncBuffer
	c := startClusterWith(t, 3, func(cfg *Config) {
		cfg.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	})
	ctx := ctxT(t, 60*time.Second)
	adminConn := c.conn(0)
	aq, ac := qv1.NewQueueServiceClient(adminConn), qv1.NewAccessServiceClient(adminConn)
	for _, name := range []string{"a", "b"} {
		if _, err := aq.CreateQueue(ctx, &qv1.CreateQueueRequest{Name: name, Partitions: 2}); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("anonymous", func(t *testing.T) {
		anon := c.connAs(1, "")
		q, cl := qv1.NewQueueServiceClient(anon), qv1.NewClusterServiceClient(anon)
		_, err := q.CreateQueue(ctx, &qv1.CreateQueueRequest{Name: "evil", Partitions: 1})
		wantCode(t, "create", err, codes.Unauthenticated, "no credentials")
		_, err = q.Purge(ctx, &qv1.PurgeRequest{Queue: "a"})
		wantCode(t, "purge", err, codes.Unauthenticated, "no credentials")
		_, err = q.DeleteQueue(ctx, &qv1.DeleteQueueRequest{Name: "a"})
		wantCode(t, "delete", err, codes.Unauthenticated, "no credentials")
		_, err = cl.DrainNode(ctx, &qv1.DrainNodeRequest{NodeId: "n2"})
		wantCode(t, "drain", err, codes.Unauthenticated, "no credentials")
		_, err = qv1.NewQueueServiceClient(c.connAs(1, "", grpc.WithPerRPCCredentials(bearer("qq_0123456789abcdef_"+strings.Repeat("A", 43))))).ListQueues(ctx, &qv1.ListQueuesRequest{})
		wantCode(t, "forged token", err, codes.Unauthenticated, "bearer token")
		// Probes need no identity.
		if _, err := healthpb.NewHealthClient(anon).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
			t.Fatalf("health check without credentials: %v", err)
		}
	})

	// A worker may consume queue a and nothing else; the grant is made on
	// node 1 and must hold on node 3 within a second.
	if _, err := ac.Grant(ctx, &qv1.GrantRequest{Grant: &qv1.AccessGrant{Identity: "worker", Permission: qv1.Permission_PERMISSION_CONSUME, Queue: "a"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := aq.Enqueue(ctx, &qv1.EnqueueRequest{Queue: "a", Messages: []*qv1.Message{{Payload: []byte("m1")}, {Payload: []byte("m2")}}}); err != nil {
		t.Fatal(err)
	}
	worker := qv1.NewQueueServiceClient(c.connAs(2, "worker"))
	granted := time.Now()
	var got *qv1.ReceiveResponse
	for {
		var err error
		got, err = worker.Receive(ctx, &qv1.ReceiveRequest{Queue: "a", Max: 1, Wait: durationpb.New(time.Second), VisibilityTimeout: durationpb.New(time.Minute)})
		if err == nil && len(got.GetMessages()) == 1 {
			break
		}
		if time.Since(granted) > time.Second {
			t.Fatalf("grant not in force on another node within a second: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}

	t.Run("confined", func(t *testing.T) {
		_, err := worker.Receive(ctx, &qv1.ReceiveRequest{Queue: "b", Max: 1})
		wantCode(t, "receive b", err, codes.PermissionDenied, `"worker" lacks the consume permission on queue "b"`)
		_, err = worker.Purge(ctx, &qv1.PurgeRequest{Queue: "a"})
		wantCode(t, "purge a", err, codes.PermissionDenied, "manage")
		_, err = worker.Enqueue(ctx, &qv1.EnqueueRequest{Queue: "a", Messages: []*qv1.Message{{Payload: []byte("x")}}})
		wantCode(t, "enqueue a", err, codes.PermissionDenied, "produce")
		_, err = qv1.NewClusterServiceClient(c.connAs(2, "worker")).DrainNode(ctx, &qv1.DrainNodeRequest{NodeId: "n2"})
		wantCode(t, "drain", err, codes.PermissionDenied, "admin")
		_, err = qv1.NewAccessServiceClient(c.connAs(2, "worker")).Grant(ctx, &qv1.GrantRequest{Grant: &qv1.AccessGrant{Identity: "worker", Permission: qv1.Permission_PERMISSION_ADMIN}})
		wantCode(t, "self-grant", err, codes.PermissionDenied, "admin")
		list, err := worker.ListQueues(ctx, &qv1.ListQueuesRequest{})
		if err != nil || len(list.GetQueues()) != 1 || list.GetQueues()[0].GetName() != "a" {
			t.Fatalf("worker lists %v, %v; want queue a only", list, err)
		}
		wc := qv1.NewClusterServiceClient(c.connAs(2, "worker"))
		for _, local := range []bool{false, true} {
			parts, err := wc.Partitions(ctx, &qv1.PartitionsRequest{Local: local})
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range parts.GetPartitions() {
				if p.GetQueue() != "a" {
					t.Fatalf("worker sees partition %s/%d (local %v)", p.GetQueue(), p.GetPartition(), local)
				}
			}
		}
		_, err = wc.Partitions(ctx, &qv1.PartitionsRequest{Queue: "b"})
		wantCode(t, "partitions of b", err, codes.PermissionDenied, `queue "b"`)
	})

	t.Run("receipts", func(t *testing.T) {
		real := got.GetMessages()[0].GetReceipt()
		altered := []byte(real)
		altered[len(altered)-3] ^= 1 // still base64url
		if altered[len(altered)-3] == real[len(real)-3] {
			t.Fatal("alteration changed nothing")
		}
		for _, forged := range []string{"r1.AQABAQ", string(altered), real[:len(real)-4], "r2." + strings.Repeat("A", 30)} {
			res, err := worker.Ack(ctx, &qv1.AckRequest{Queue: "a", Receipts: []string{forged}})
			if err != nil {
				t.Fatalf("ack %q: %v", forged, err)
			}
			if st := res.GetResults()[0].GetStatus(); st != qv1.ReceiptStatus_RECEIPT_STATUS_UNKNOWN {
				t.Fatalf("ack of forged receipt %q: %v, want UNKNOWN", forged, st)
			}
		}
		res, err := worker.Ack(ctx, &qv1.AckRequest{Queue: "a", Receipts: []string{real}})
		if err != nil || res.GetResults()[0].GetStatus() != qv1.ReceiptStatus_RECEIPT_STATUS_OK {
			t.Fatalf("ack of the real receipt: %v %v", res, err)
		}

		// After one rotation a receipt still verifies; after two it does not.
		next, err := worker.Receive(ctx, &qv1.ReceiveRequest{Queue: "a", Max: 1, Wait: durationpb.New(time.Second), VisibilityTimeout: durationpb.New(time.Minute)})
		if err != nil || len(next.GetMessages()) != 1 {
			t.Fatalf("receive: %v %v", next, err)
		}
		r := next.GetMessages()[0].GetReceipt()
		if _, err := ac.RotateReceiptKey(ctx, &qv1.RotateReceiptKeyRequest{}); err != nil {
			t.Fatal(err)
		}
		ext, err := aq.ExtendLease(ctx, &qv1.ExtendLeaseRequest{Queue: "a", Receipts: []string{r}, VisibilityTimeout: durationpb.New(time.Minute)})
		if err != nil || ext.GetResults()[0].GetStatus() != qv1.ReceiptStatus_RECEIPT_STATUS_OK {
			t.Fatalf("extend after one rotation: %v %v", ext, err)
		}
		if _, err := ac.RotateReceiptKey(ctx, &qv1.RotateReceiptKeyRequest{}); err != nil {
			t.Fatal(err)
		}
		res, err = aq.Ack(ctx, &qv1.AckRequest{Queue: "a", Receipts: []string{r}})
		if err != nil || res.GetResults()[0].GetStatus() != qv1.ReceiptStatus_RECEIPT_STATUS_UNKNOWN {
			t.Fatalf("ack after two rotations: %v %v, want UNKNOWN", res, err)
		}
	})

	t.Run("tokens", func(t *testing.T) {
		if _, err := ac.Grant(ctx, &qv1.GrantRequest{Grant: &qv1.AccessGrant{Identity: "ci", Permission: qv1.Permission_PERMISSION_PRODUCE, Queue: "b", Prefix: true}}); err != nil {
			t.Fatal(err)
		}
		tok, err := ac.CreateToken(ctx, &qv1.CreateTokenRequest{Identity: "ci", Description: "pipeline"})
		if err != nil || !strings.HasPrefix(tok.GetToken(), "qq_"+tok.GetId()+"_") {
			t.Fatalf("create token: %v %v", tok, err)
		}
		ci := c.connAs(1, "", grpc.WithPerRPCCredentials(bearer(tok.GetToken())))
		var who *qv1.WhoAmIResponse
		created := time.Now()
		for who, err = qv1.NewAccessServiceClient(ci).WhoAmI(ctx, &qv1.WhoAmIRequest{}); err != nil && time.Since(created) < time.Second; {
			time.Sleep(20 * time.Millisecond) // in force everywhere within a second
			who, err = qv1.NewAccessServiceClient(ci).WhoAmI(ctx, &qv1.WhoAmIRequest{})
		}
		if err != nil || who.GetIdentity() != "ci" || who.GetMethod() != "token" || who.GetAdmin() {
			t.Fatalf("whoami with a token: %v %v", who, err)
		}
		if _, err := qv1.NewQueueServiceClient(ci).Enqueue(ctx, &qv1.EnqueueRequest{Queue: "b", Messages: []*qv1.Message{{Payload: []byte("p")}}}); err != nil {
			t.Fatalf("enqueue with a token: %v", err)
		}
		list, err := ac.ListTokens(ctx, &qv1.ListTokensRequest{})
		if err != nil || len(list.GetTokens()) != 1 || list.GetTokens()[0].GetIdentity() != "ci" {
			t.Fatalf("tokens: %v %v", list, err)
		}
		if _, err := ac.DeleteToken(ctx, &qv1.DeleteTokenRequest{Id: tok.GetId()}); err != nil {
			t.Fatal(err)
		}
		c.waitFor("token revoked everywhere", 5*time.Second, func() bool {
			_, err := qv1.NewQueueServiceClient(ci).Enqueue(ctx, &qv1.EnqueueRequest{Queue: "b", Messages: []*qv1.Message{{Payload: []byte("p")}}})
			return status.Code(err) == codes.Unauthenticated
		})
	})

	t.Run("audit", func(t *testing.T) {
		for _, want := range []string{
			`msg=audit node=n\d identity=admin auth=certificate method=/quorumq.v1.AccessService/Grant request=".*worker.*" code=OK`,
			`msg=audit node=n\d identity=admin auth=certificate method=/quorumq.v1.QueueService/CreateQueue request=".*" code=OK`,
			`msg=audit node=n\d identity=worker auth=certificate method=/quorumq.v1.AccessService/Grant request=".*" code=PermissionDenied`,
		} {
			if !regexp.MustCompile(want).MatchString(logs.String()) {
				t.Errorf("no audit line matching %q", want)
			}
		}
		if strings.Contains(logs.String(), "msg=audit node=n2 identity=ci auth=token method=/quorumq.v1.QueueService/Enqueue") {
			t.Error("enqueue audited")
		}
		if strings.Contains(logs.String(), "qq_") {
			t.Error("a token reached the log")
		}
	})
}

// TestEveryClientMethodHasARule: the authorization table names every
// method the client port serves (a method without one is refused, and so
// is a method added without thinking about who may call it).
func TestEveryClientMethodHasARule(t *testing.T) {
	for _, sd := range []grpc.ServiceDesc{qv1.QueueService_ServiceDesc, qv1.ClusterService_ServiceDesc, qv1.AccessService_ServiceDesc} {
		for _, m := range sd.Methods {
			full := "/" + sd.ServiceName + "/" + m.MethodName
			if _, ok := rules[full]; !ok {
				t.Errorf("%s has no access rule", full)
			}
		}
		if len(sd.Streams) > 0 {
			t.Errorf("%s has streams: authorizeClientStream lets any identity call them", sd.ServiceName)
		}
	}
}

func TestPolicyMatches(t *testing.T) {
	p := &accessPolicy{admins: map[string]bool{"root": true}, grants: map[string][]*fsmv1.Grant{
		"w": {
			{Identity: "w", Permission: fsmv1.Permission_PERMISSION_CONSUME, Queue: "orders"},
			{Identity: "w", Permission: fsmv1.Permission_PERMISSION_PRODUCE, Queue: "logs.", Prefix: true},
			{Identity: "w", Permission: fsmv1.Permission_PERMISSION_MANAGE, Queue: "", Prefix: true},
		},
	}}
	for _, tc := range []struct {
		who, queue string
		perm       fsmv1.Permission
		want       bool
	}{
		{"w", "orders", fsmv1.Permission_PERMISSION_CONSUME, true},
		{"w", "orders2", fsmv1.Permission_PERMISSION_CONSUME, false},
		{"w", "order", fsmv1.Permission_PERMISSION_CONSUME, false},
		{"w", "orders", fsmv1.Permission_PERMISSION_PRODUCE, false},
		{"w", "logs.app", fsmv1.Permission_PERMISSION_PRODUCE, true},
		{"w", "logs", fsmv1.Permission_PERMISSION_PRODUCE, false},
		{"w", "anything", fsmv1.Permission_PERMISSION_MANAGE, true},
		{"x", "orders", fsmv1.Permission_PERMISSION_CONSUME, false},
		{"root", "orders", fsmv1.Permission_PERMISSION_CONSUME, true},
	} {
		if got := p.allows(tc.who, tc.perm, tc.queue); got != tc.want {
			t.Errorf("%s %v on %q: %v, want %v", tc.who, tc.perm, tc.queue, got, tc.want)
		}
	}
}

func TestReceiptSignature(t *testing.T) {
	k := &receiptKeys{keys: map[uint32][]byte{3: bytes.Repeat([]byte{1}, 32), 4: bytes.Repeat([]byte{2}, 32)}, current: 4}
	r := receipt{queueID: 7, partition: 2, seq: 1 << 40, epoch: 9}
	s, ok := k.sign(r)
	if !ok {
		t.Fatal("no key")
	}
	got, v := k.open(s)
	r.keyID = 4
	if v != receiptValid || got != r {
		t.Fatalf("open(sign(r)) = %+v %v, want %+v", got, v, r)
	}
	older := &receiptKeys{keys: map[uint32][]byte{3: k.keys[3]}, current: 3}
	if _, v := older.open(s); v != receiptNewerKey {
		t.Fatalf("a node behind on keys: %v, want newer-key", v)
	}
	newer := &receiptKeys{keys: map[uint32][]byte{5: k.keys[3], 6: k.keys[4]}, current: 6}
	if _, v := newer.open(s); v != receiptForged {
		t.Fatalf("a retired key: %v, want forged", v)
	}
	none := &receiptKeys{keys: map[uint32][]byte{}}
	if _, ok := none.sign(r); ok {
		t.Fatal("signed without a key")
	}
}

func FuzzReceiptOpen(f *testing.F) {
	k := &receiptKeys{keys: map[uint32][]byte{1: bytes.Repeat([]byte{9}, 32)}, current: 1}
	s, _ := k.sign(receipt{queueID: 1, partition: 1, seq: 1, epoch: 1})
	f.Add(s)
	f.Add("r1.AQABAQ")
	f.Add("r2.")
	f.Fuzz(func(t *testing.T, in string) {
		r, v := k.open(in)
		if v == receiptValid {
			// Only a receipt the key signed opens: re-signing gives it back.
			if again, _ := k.sign(r); again != in {
				t.Fatalf("%q opened as %+v, which signs as %q", in, r, again)
			}
		}
	})
}

// TestTokenIsExact: only the exact token string authenticates; another
// encoding of the same secret (base64's spare bits) does not.
func TestTokenIsExact(t *testing.T) {
	secret := make([]byte, tokenSecretLen)
	sum := sha256.Sum256(secret)
	p := &accessPolicy{tokens: map[string]*fsmv1.TokenInfo{"0123456789abcdef": {Id: "0123456789abcdef", Identity: "ci", Hash: sum[:]}}}
	good := formatToken("0123456789abcdef", secret)
	if id, err := p.checkToken(good); err != nil || id != "ci" {
		t.Fatalf("the token: %q %v", id, err)
	}
	spare := good[:len(good)-1] + "B" // the last character's two spare bits set
	if _, err := p.checkToken(spare); err == nil {
		t.Fatalf("%q (another spelling of the same secret) was accepted", spare)
	}
	for _, bad := range []string{"", "qq_", good + "A", "qq_0123456789ABCDEF" + good[19:], "xx" + good[2:]} {
		if _, err := p.checkToken(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// TestAccessWaitsForEveryNode: during a rolling upgrade (a node that
// cannot apply access commands still in the cluster) no access command
// is proposed — it would split the catalogue — and receipts stay as the
// older version makes them; once every node can, the receipt key is made
// and unsigned receipts are refused.
func TestAccessWaitsForEveryNode(t *testing.T) {
	c := startClusterWith(t, 3, func(cfg *Config) {
		if cfg.NodeID == "n3" {
			cfg.olderVersion = true
		}
	})
	ctx := ctxT(t, 60*time.Second)
	q := qv1.NewQueueServiceClient(c.conn(0))
	if _, err := q.CreateQueue(ctx, &qv1.CreateQueueRequest{Name: "up", Partitions: 1}); err != nil {
		t.Fatal(err)
	}
	_, err := qv1.NewAccessServiceClient(c.conn(0)).Grant(ctx, &qv1.GrantRequest{Grant: &qv1.AccessGrant{Identity: "w", Permission: qv1.Permission_PERMISSION_CONSUME, Queue: "up"}})
	wantCode(t, "grant during the upgrade", err, codes.FailedPrecondition, "n3")
	if _, err := q.Enqueue(ctx, &qv1.EnqueueRequest{Queue: "up", Messages: []*qv1.Message{{Payload: []byte("1")}, {Payload: []byte("2")}}}); err != nil {
		t.Fatal(err)
	}
	got, err := q.Receive(ctx, &qv1.ReceiveRequest{Queue: "up", Max: 1, Wait: durationpb.New(2 * time.Second), VisibilityTimeout: durationpb.New(time.Minute)})
	if err != nil || len(got.GetMessages()) != 1 || !strings.HasPrefix(got.GetMessages()[0].GetReceipt(), "r1.") {
		t.Fatalf("receive during the upgrade: %v %v; want an r1 receipt", got, err)
	}
	old := got.GetMessages()[0].GetReceipt()
	var keys int
	c.nodes[0].ctrl.read(func(cat *fsm.Catalog) { keys = len(cat.ReceiptKeys()) })
	if keys != 0 {
		t.Fatal("a receipt key was made while n3 could not apply it")
	}

	// n3 upgraded: the key is made, receipts are signed, r1 refused.
	c.kill(2)
	c.cfgs[2].olderVersion = false
	c.restart(2)
	c.waitFor("the receipt key", 20*time.Second, func() bool {
		c.nodes[0].ctrl.read(func(cat *fsm.Catalog) { keys = len(cat.ReceiptKeys()) })
		return keys == 1
	})
	c.waitFor("signed receipts on every node", 20*time.Second, func() bool {
		for i := range c.nodes {
			if c.nodes[i].policy().current == 0 {
				return false
			}
		}
		return true
	})
	res, err := q.Ack(ctx, &qv1.AckRequest{Queue: "up", Receipts: []string{old}})
	if err != nil || res.GetResults()[0].GetStatus() != qv1.ReceiptStatus_RECEIPT_STATUS_UNKNOWN {
		t.Fatalf("ack of an r1 receipt after the upgrade: %v %v, want UNKNOWN", res, err)
	}
	got, err = q.Receive(ctx, &qv1.ReceiveRequest{Queue: "up", Max: 1, Wait: durationpb.New(2 * time.Second)})
	if err != nil || len(got.GetMessages()) != 1 || !strings.HasPrefix(got.GetMessages()[0].GetReceipt(), "r2.") {
		t.Fatalf("receive after the upgrade: %v %v; want an r2 receipt", got, err)
	}
}
