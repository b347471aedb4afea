package cluster

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/quorumq/quorumq/fsm"
	fsmv1 "github.com/quorumq/quorumq/proto/quorumq/fsm/v1"
	qv1 "github.com/quorumq/quorumq/proto/quorumq/v1"
)

// accessServer serves AccessService: grants, tokens and the receipt key,
// all kept in the catalogue (the interceptor in auth.go lets only admins
// in, but for WhoAmI).
type accessServer struct {
	qv1.UnimplementedAccessServiceServer
	n *Node
}

func grantFromPublic(g *qv1.AccessGrant) (*fsmv1.Grant, error) {
	out := &fsmv1.Grant{Identity: g.GetIdentity(), Permission: fsmv1.Permission(g.GetPermission()), Queue: g.GetQueue(), Prefix: g.GetPrefix()}
	if err := fsm.ValidateGrant(out); err != nil {
		return nil, status.Error(codes.InvalidArgument, invalidMessage(err))
	}
	return out, nil
}

func grantToPublic(g *fsmv1.Grant) *qv1.AccessGrant {
	return &qv1.AccessGrant{Identity: g.GetIdentity(), Permission: qv1.Permission(g.GetPermission()), Queue: g.GetQueue(), Prefix: g.GetPrefix()}
}

// proposeAccess proposes an access change and maps the outcome. Until
// the cluster has its first receipt key — which the controller creates
// once every node runs a version with access control — a node of an older
// version could still be in the catalogue, and would refuse the command.
func (s *accessServer) proposeAccess(ctx context.Context, cmd *fsmv1.CatalogCommand) (*fsm.CatalogResult, error) {
	if s.n.policy().current == 0 {
		if lagging := s.n.nodesWithoutAccess(); len(lagging) > 0 {
			return nil, status.Errorf(codes.FailedPrecondition, "nodes %v do not run a version with access control yet: finish the upgrade first", lagging)
		}
	}
	res, err := s.n.ctrl.propose(ctx, cmd)
	if err != nil {
		return nil, toStatus(err)
	}
	if err := catalogStatus(res); err != nil {
		return nil, err
	}
	return res, nil
}

func (s *accessServer) WhoAmI(ctx context.Context, _ *qv1.WhoAmIRequest) (*qv1.WhoAmIResponse, error) {
	c, _ := callerOf(ctx)
	p := s.n.policy()
	resp := &qv1.WhoAmIResponse{Identity: c.name, Method: c.how, Admin: c.how == "insecure" || p.admins[c.name]}
	for _, g := range p.grants[c.name] {
		resp.Grants = append(resp.Grants, grantToPublic(g))
	}
	return resp, nil
}

func (s *accessServer) Grant(ctx context.Context, req *qv1.GrantRequest) (*qv1.GrantResponse, error) {
	g, err := grantFromPublic(req.GetGrant())
	if err != nil {
		return nil, err
	}
	if _, err := s.proposeAccess(ctx, &fsmv1.CatalogCommand{Op: &fsmv1.CatalogCommand_PutGrant{PutGrant: &fsmv1.PutGrant{Grant: g}}}); err != nil {
		return nil, err
	}
	return &qv1.GrantResponse{}, nil
}

func (s *accessServer) Revoke(ctx context.Context, req *qv1.RevokeRequest) (*qv1.RevokeResponse, error) {
	g, err := grantFromPublic(req.GetGrant())
	if err != nil {
		return nil, err
	}
	if _, err := s.proposeAccess(ctx, &fsmv1.CatalogCommand{Op: &fsmv1.CatalogCommand_RevokeGrant{RevokeGrant: &fsmv1.RevokeGrant{Grant: g}}}); err != nil {
		return nil, err
	}
	return &qv1.RevokeResponse{}, nil
}

func (s *accessServer) ListGrants(ctx context.Context, req *qv1.ListGrantsRequest) (*qv1.ListGrantsResponse, error) {
	var grants []*fsmv1.Grant
	s.n.ctrl.read(func(c *fsm.Catalog) { grants = c.Grants() })
	resp := &qv1.ListGrantsResponse{AdminIdentities: slices.Clone(s.n.cfg.AdminIdentities)}
	for _, g := range grants {
		if req.GetIdentity() == "" || g.GetIdentity() == req.GetIdentity() {
			resp.Grants = append(resp.Grants, grantToPublic(g))
		}
	}
	return resp, nil
}

func (s *accessServer) CreateToken(ctx context.Context, req *qv1.CreateTokenRequest) (*qv1.CreateTokenResponse, error) {
	var idb [fsm.TokenIDLen / 2]byte
	secret := make([]byte, tokenSecretLen)
	if _, err := rand.Read(idb[:]); err != nil {
		return nil, status.Errorf(codes.Internal, "random: %v", err)
	}
	if _, err := rand.Read(secret); err != nil {
		return nil, status.Errorf(codes.Internal, "random: %v", err)
	}
	sum := sha256.Sum256(secret)
	t := &fsmv1.TokenInfo{Id: hex.EncodeToString(idb[:]), Identity: req.GetIdentity(), Hash: sum[:], Description: req.GetDescription()}
	cmd := &fsmv1.CatalogCommand{Op: &fsmv1.CatalogCommand_PutToken{PutToken: &fsmv1.PutToken{Token: t}}}
	if err := fsm.ValidateCatalogCommand(withCatalogVersion(cmd)); err != nil {
		return nil, status.Error(codes.InvalidArgument, invalidMessage(err))
	}
	if _, err := s.proposeAccess(ctx, cmd); err != nil {
		return nil, err
	}
	return &qv1.CreateTokenResponse{Token: formatToken(t.GetId(), secret), Id: t.GetId()}, nil
}

func (s *accessServer) ListTokens(ctx context.Context, _ *qv1.ListTokensRequest) (*qv1.ListTokensResponse, error) {
	var toks []*fsmv1.TokenInfo
	s.n.ctrl.read(func(c *fsm.Catalog) { toks = c.Tokens() })
	resp := &qv1.ListTokensResponse{}
	for _, t := range toks {
		resp.Tokens = append(resp.Tokens, &qv1.TokenSummary{Id: t.GetId(), Identity: t.GetIdentity(), Description: t.GetDescription(), CreatedAt: timestamppb.New(time.Unix(0, t.GetCreatedAt()))})
	}
	return resp, nil
}

func (s *accessServer) DeleteToken(ctx context.Context, req *qv1.DeleteTokenRequest) (*qv1.DeleteTokenResponse, error) {
	if err := fsm.ValidTokenID(req.GetId()); err != nil {
		return nil, status.Error(codes.InvalidArgument, invalidMessage(err))
	}
	if _, err := s.proposeAccess(ctx, &fsmv1.CatalogCommand{Op: &fsmv1.CatalogCommand_DeleteToken{DeleteToken: &fsmv1.DeleteToken{Id: req.GetId()}}}); err != nil {
		return nil, err
	}
	return &qv1.DeleteTokenResponse{}, nil
}

func (s *accessServer) RotateReceiptKey(ctx context.Context, _ *qv1.RotateReceiptKeyRequest) (*qv1.RotateReceiptKeyResponse, error) {
	cmd, err := newReceiptKeyCommand()
	if err != nil {
		return nil, status.Errorf(codes.Internal, "%v", err)
	}
	res, err := s.proposeAccess(ctx, cmd)
	if err != nil {
		return nil, err
	}
	return &qv1.RotateReceiptKeyResponse{KeyId: res.KeyID}, nil
}

// newReceiptKeyCommand draws a new receipt key.
func newReceiptKeyCommand() (*fsmv1.CatalogCommand, error) {
	key := make([]byte, fsm.ReceiptKeyLen)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	return &fsmv1.CatalogCommand{Op: &fsmv1.CatalogCommand_RotateReceiptKey{RotateReceiptKey: &fsmv1.RotateReceiptKey{Key: key}}}, nil
}

func withCatalogVersion(cmd *fsmv1.CatalogCommand) *fsmv1.CatalogCommand {
	cmd.Version = fsm.CatalogVersion
	return cmd
}
