package cluster

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"

	"github.com/quorumq/quorumq/fsm"
	fsmv1 "github.com/quorumq/quorumq/proto/quorumq/fsm/v1"
	qv1 "github.com/quorumq/quorumq/proto/quorumq/v1"
	"github.com/quorumq/quorumq/transport/pki"
)

// Who may do what on the client port (see DESIGN.md, "Who may do what").
// Every call names an identity — the client certificate's name, or a
// bearer token's owner — except gRPC health; the method's rule then needs
// a permission on the request's queue, or admin, from the grants in the
// catalogue or the --admin-identities.

// caller is the authenticated identity of a call.
type caller struct {
	name string
	// how: "certificate", "token" or "insecure" (no authentication).
	how string
}

type callerKey struct{}

func callerOf(ctx context.Context) (caller, bool) {
	c, ok := ctx.Value(callerKey{}).(caller)
	return c, ok
}

// clientSecurityOptions are the client gRPC server's credentials and
// authentication/authorization interceptors.
func (n *Node) clientSecurityOptions() []grpc.ServerOption {
	opts := []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(n.metrics.unaryInterceptor, n.authorizeClientCall),
		grpc.ChainStreamInterceptor(n.authorizeClientStream),
	}
	if n.tls != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(n.tls.ClientPortConfig())))
	}
	return opts
}

// accessPolicy is the access part of one catalogue state, compiled for
// lookups; rebuilt when the catalogue's access records change.
type accessPolicy struct {
	version uint64 // fsm.Catalog.AccessVersion compiled
	tokens  map[string]*fsmv1.TokenInfo
	grants  map[string][]*fsmv1.Grant // by identity
	admins  map[string]bool           // granted admin, or by flag
	receiptKeys
}

// policyCache holds the last compiled policy; mu lets one caller compile
// a new one while the others wait for it.
type policyCache struct {
	p  atomic.Pointer[accessPolicy]
	mu sync.Mutex
}

// policy returns the access policy of the current catalogue: the cached
// one while the catalogue's access records are unchanged (one read of
// their version under the catalogue's read lock per call).
func (n *Node) policy() *accessPolicy {
	var version uint64
	n.ctrl.read(func(c *fsm.Catalog) { version = c.AccessVersion() })
	if cur := n.access.p.Load(); cur != nil && cur.version == version {
		return cur
	}
	n.access.mu.Lock()
	defer n.access.mu.Unlock()
	var out *accessPolicy
	n.ctrl.read(func(c *fsm.Catalog) {
		if cur := n.access.p.Load(); cur != nil && cur.version == c.AccessVersion() {
			out = cur
			return
		}
		out = compilePolicy(c, n.cfg.AdminIdentities)
	})
	n.access.p.Store(out)
	return out
}

func compilePolicy(c *fsm.Catalog, admins []string) *accessPolicy {
	p := &accessPolicy{
		version:     c.AccessVersion(),
		tokens:      map[string]*fsmv1.TokenInfo{},
		grants:      map[string][]*fsmv1.Grant{},
		admins:      map[string]bool{},
		receiptKeys: receiptKeys{keys: map[uint32][]byte{}},
	}
	for _, a := range admins {
		p.admins[a] = true
	}
	for _, t := range c.Tokens() {
		p.tokens[t.GetId()] = t
	}
	for _, g := range c.Grants() {
		if g.GetPermission() == fsmv1.Permission_PERMISSION_ADMIN {
			p.admins[g.GetIdentity()] = true
		}
		p.grants[g.GetIdentity()] = append(p.grants[g.GetIdentity()], g)
	}
	for _, k := range c.ReceiptKeys() {
		p.keys[k.GetId()] = k.GetKey()
		p.current = k.GetId()
	}
	return p
}

// allows reports whether identity holds perm on queue.
func (p *accessPolicy) allows(identity string, perm fsmv1.Permission, queue string) bool {
	if p.admins[identity] {
		return true
	}
	for _, g := range p.grants[identity] {
		if g.GetPermission() == perm && (g.GetQueue() == queue || g.GetPrefix() && strings.HasPrefix(queue, g.GetQueue())) {
			return true
		}
	}
	return false
}

// allowsAny reports whether identity holds any permission on queue.
func (p *accessPolicy) allowsAny(identity, queue string) bool {
	for _, perm := range []fsmv1.Permission{fsmv1.Permission_PERMISSION_PRODUCE, fsmv1.Permission_PERMISSION_CONSUME, fsmv1.Permission_PERMISSION_MANAGE} {
		if p.allows(identity, perm, queue) {
			return true
		}
	}
	return false
}

// Token format: "qq_" + 16 hex digits (the id, public) + "_" + 43
// base64url characters (32 random bytes, the secret). The catalogue keeps
// SHA-256(secret): the secrets have 256 bits of entropy, so a fast hash is
// as strong as a slow one and costs nothing per call.
const (
	tokenPrefix    = "qq_"
	tokenSecretLen = 32
)

var errBadToken = errors.New("unknown or malformed token")

func formatToken(id string, secret []byte) string {
	return tokenPrefix + id + "_" + base64.RawURLEncoding.EncodeToString(secret)
}

// checkToken returns the identity a token authenticates.
func (p *accessPolicy) checkToken(tok string) (string, error) {
	rest, ok := strings.CutPrefix(tok, tokenPrefix)
	if !ok || len(rest) != fsm.TokenIDLen+1+base64.RawURLEncoding.EncodedLen(tokenSecretLen) || rest[fsm.TokenIDLen] != '_' {
		return "", errBadToken
	}
	secret, err := base64.RawURLEncoding.Strict().DecodeString(rest[fsm.TokenIDLen+1:])
	if err != nil {
		return "", errBadToken
	}
	t, ok := p.tokens[rest[:fsm.TokenIDLen]]
	sum := sha256.Sum256(secret)
	if !ok || subtle.ConstantTimeCompare(sum[:], t.GetHash()) != 1 {
		return "", errBadToken
	}
	return t.GetIdentity(), nil
}

// authenticate names the caller of ctx: a bearer token wins over the
// client certificate.
func (n *Node) authenticate(ctx context.Context, p *accessPolicy) (caller, error) {
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if vals := md.Get("authorization"); len(vals) > 0 {
			tok, ok := strings.CutPrefix(vals[0], "Bearer ")
			if !ok {
				return caller{}, status.Error(codes.Unauthenticated, "authorization metadata: want \"Bearer <token>\"")
			}
			id, err := p.checkToken(strings.TrimSpace(tok))
			if err != nil {
				n.metrics.authFailed("token")
				return caller{}, status.Error(codes.Unauthenticated, "unknown or malformed bearer token")
			}
			return caller{name: id, how: "token"}, nil
		}
	}
	if pr, ok := peer.FromContext(ctx); ok {
		if ti, ok := pr.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.PeerCertificates) > 0 {
			// The chain was verified in the handshake (ClientPortConfig).
			if names := pki.ClientNames(ti.State.PeerCertificates[0]); len(names) > 0 {
				return caller{name: names[0], how: "certificate"}, nil
			}
			n.metrics.authFailed("certificate")
			return caller{}, status.Error(codes.Unauthenticated, "the client certificate names no client (issue one with 'quorumq certs client --name <name>')")
		}
	}
	n.metrics.authFailed("none")
	return caller{}, status.Error(codes.Unauthenticated, "no credentials: present a client certificate or a bearer token (quorumq context add …)")
}

// rule is what a client method needs.
type rule struct {
	// perm: the permission the call needs on the request's queue (admin:
	// needs admin). Unspecified: any authenticated caller.
	perm fsmv1.Permission
	// anyOnQueue: any of produce, consume, manage on the queue does.
	anyOnQueue bool
	// audit: log the call with its caller.
	audit bool
}

var (
	produce = rule{perm: fsmv1.Permission_PERMISSION_PRODUCE}
	consume = rule{perm: fsmv1.Permission_PERMISSION_CONSUME}
	manage  = rule{perm: fsmv1.Permission_PERMISSION_MANAGE}
	audited = rule{perm: fsmv1.Permission_PERMISSION_MANAGE, audit: true}
	admin   = rule{perm: fsmv1.Permission_PERMISSION_ADMIN, audit: true}
	anyone  = rule{}
)

// rules: every client method. A method missing here is refused (default
// deny); TestEveryClientMethodHasARule keeps the table whole.
var rules = map[string]rule{
	qv1.QueueService_CreateQueue_FullMethodName:     audited,
	qv1.QueueService_DeleteQueue_FullMethodName:     audited,
	qv1.QueueService_GetQueue_FullMethodName:        {anyOnQueue: true},
	qv1.QueueService_ListQueues_FullMethodName:      anyone, // filtered by the handler
	qv1.QueueService_Enqueue_FullMethodName:         produce,
	qv1.QueueService_Receive_FullMethodName:         consume,
	qv1.QueueService_Ack_FullMethodName:             consume,
	qv1.QueueService_Requeue_FullMethodName:         consume,
	qv1.QueueService_ExtendLease_FullMethodName:     consume,
	qv1.QueueService_Reject_FullMethodName:          consume,
	qv1.QueueService_ListDeadLetters_FullMethodName: manage,
	qv1.QueueService_Redrive_FullMethodName:         audited,
	qv1.QueueService_Purge_FullMethodName:           audited,

	qv1.ClusterService_Status_FullMethodName:             anyone,
	qv1.ClusterService_Members_FullMethodName:            anyone,
	qv1.ClusterService_Partitions_FullMethodName:         anyone, // filtered by the handler
	qv1.ClusterService_TransferLeadership_FullMethodName: admin,
	qv1.ClusterService_DrainNode_FullMethodName:          admin,
	qv1.ClusterService_RemoveNode_FullMethodName:         admin,
	qv1.ClusterService_Rebalance_FullMethodName:          admin,
	qv1.ClusterService_GossipKeyring_FullMethodName:      admin,

	qv1.AccessService_WhoAmI_FullMethodName:           anyone,
	qv1.AccessService_Grant_FullMethodName:            admin,
	qv1.AccessService_Revoke_FullMethodName:           admin,
	qv1.AccessService_ListGrants_FullMethodName:       admin,
	qv1.AccessService_CreateToken_FullMethodName:      admin,
	qv1.AccessService_ListTokens_FullMethodName:       admin,
	qv1.AccessService_DeleteToken_FullMethodName:      admin,
	qv1.AccessService_RotateReceiptKey_FullMethodName: admin,
}

// openMethod: served without any identity (probes).
func openMethod(m string) bool { return strings.HasPrefix(m, "/grpc.health.v1.Health/") }

var permNames = map[fsmv1.Permission]string{
	fsmv1.Permission_PERMISSION_PRODUCE: "produce",
	fsmv1.Permission_PERMISSION_CONSUME: "consume",
	fsmv1.Permission_PERMISSION_MANAGE:  "manage",
	fsmv1.Permission_PERMISSION_ADMIN:   "admin",
}

func permName(p fsmv1.Permission) string { return permNames[p] }

// queueOf is the queue a request names.
func queueOf(req any) string {
	switch r := req.(type) {
	case interface{ GetQueue() string }:
		return r.GetQueue()
	case interface{ GetName() string }:
		return r.GetName()
	}
	return ""
}

// authorize checks the caller against the method's rule.
func (n *Node) authorize(ctx context.Context, method string, req any) (context.Context, rule, caller, error) {
	if openMethod(method) {
		return ctx, anyone, caller{}, nil
	}
	if n.cfg.Insecure {
		c := caller{how: "insecure"}
		return context.WithValue(ctx, callerKey{}, c), rules[method], c, nil
	}
	p := n.policy()
	c, err := n.authenticate(ctx, p)
	if err != nil {
		return ctx, rule{}, c, err
	}
	ctx = context.WithValue(ctx, callerKey{}, c)
	r, known := rules[method]
	if !known {
		if strings.HasPrefix(method, "/grpc.reflection.") {
			return ctx, anyone, c, nil // only served with --reflection
		}
		n.metrics.authDenied()
		return ctx, r, c, status.Errorf(codes.PermissionDenied, "%s: no access rule for this method", method)
	}
	switch {
	case r.anyOnQueue:
		if q := queueOf(req); !p.allowsAny(c.name, q) {
			n.metrics.authDenied()
			return ctx, r, c, status.Errorf(codes.PermissionDenied, "%q has no permission on queue %q (needs produce, consume or manage)", c.name, q)
		}
	case r.perm == fsmv1.Permission_PERMISSION_ADMIN:
		if !p.admins[c.name] {
			n.metrics.authDenied()
			return ctx, r, c, status.Errorf(codes.PermissionDenied, "%q lacks the admin permission", c.name)
		}
	case r.perm != fsmv1.Permission_PERMISSION_UNSPECIFIED:
		if q := queueOf(req); !p.allows(c.name, r.perm, q) {
			n.metrics.authDenied()
			return ctx, r, c, status.Errorf(codes.PermissionDenied, "%q lacks the %s permission on queue %q", c.name, permName(r.perm), q)
		}
	}
	return ctx, r, c, nil
}

// authorizeClientCall authenticates and authorizes every unary client
// call, and writes the audit line of the calls that change access or the
// cluster.
func (n *Node) authorizeClientCall(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	ctx, r, c, err := n.authorize(ctx, info.FullMethod, req)
	if err != nil {
		if r.audit {
			n.auditLog(c, info.FullMethod, req, err)
		}
		return nil, err
	}
	resp, err := handler(ctx, req)
	if r.audit {
		n.auditLog(c, info.FullMethod, req, err)
	}
	return resp, err
}

// authorizeClientStream: the client API has no streams; gRPC health Watch
// is open and reflection (with --reflection) needs an identity.
func (n *Node) authorizeClientStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if _, _, _, err := n.authorize(ss.Context(), info.FullMethod, nil); err != nil {
		return err
	}
	return handler(srv, ss)
}

// auditLog writes one line per audited call: who, what, with which
// arguments (secrets left out), and the outcome.
func (n *Node) auditLog(c caller, method string, req any, err error) {
	n.log.Info("audit", "identity", c.name, "auth", c.how, "method", method, "request", auditRequest(req), "code", status.Code(err).String())
}

func auditRequest(req any) string {
	m, ok := req.(proto.Message)
	if !ok {
		return ""
	}
	if k, ok := m.(*qv1.GossipKeyringRequest); ok && k.GetKey() != "" {
		m = &qv1.GossipKeyringRequest{Op: k.GetOp(), Key: "<redacted>"}
	}
	s := prototext.MarshalOptions{}.Format(m)
	if len(s) > 512 {
		s = s[:512] + "…"
	}
	return s
}

// queueFilter reports which queues the caller of ctx may see: those it
// holds any permission on (all of them for an admin, with --insecure, or
// for a call that did not come through the client port's interceptor).
func (n *Node) queueFilter(ctx context.Context) func(queue string) bool {
	c, ok := callerOf(ctx)
	if !ok || c.how == "insecure" {
		return func(string) bool { return true }
	}
	p := n.policy()
	return func(q string) bool { return p.allowsAny(c.name, q) }
}

// visibleQueues filters ListQueues for the caller.
func (n *Node) visibleQueues(ctx context.Context, qs []*qv1.Queue) []*qv1.Queue {
	visible := n.queueFilter(ctx)
	return slices.DeleteFunc(qs, func(q *qv1.Queue) bool { return !visible(q.GetName()) })
}

// receiptSigner returns how receipts are written now: signed with the
// current key; unsigned (as before receipt keys) while an upgrade is under
// way and the cluster has no key yet; or UNAVAILABLE for the moment a new
// cluster has none yet (the controller leader creates it).
func (n *Node) receiptSigner() (func(receipt) string, error) {
	p := n.policy()
	if p.current == 0 {
		if len(n.nodesWithoutAccess()) > 0 {
			// An upgrade under way: the receipts of the older version
			// (legacyReceipt), until every node can apply the first key.
			return legacyReceipt, nil
		}
		return nil, status.Error(codes.Unavailable, "the cluster has no receipt key yet (the controller leader creates one): retry")
	}
	return func(r receipt) string {
		s, _ := p.sign(r)
		return s
	}, nil
}

// nodesWithoutAccess are the nodes that may not apply access commands
// (Meta.Access): those alive in gossip that do not say they can, and those
// of the catalogue (not removed) that are not alive in gossip saying so.
func (n *Node) nodesWithoutAccess() []string {
	ok, lagging := map[string]bool{}, map[string]bool{}
	if g := n.gossipReady.Load(); g != nil {
		for _, m := range g.members() {
			switch {
			case m.State == "alive" && m.Access:
				ok[m.ID] = true
			case m.State == "alive":
				lagging[m.ID] = true
			}
		}
	}
	for _, info := range n.ctrl.nodes() {
		if info.GetState() != fsmv1.NodeState_NODE_STATE_REMOVED && !ok[info.GetId()] {
			lagging[info.GetId()] = true
		}
	}
	return slices.Sorted(maps.Keys(lagging))
}
