package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"

	qv1 "github.com/quorumq/quorumq/proto/quorumq/v1"
)

func (a *app) accessClient() (qv1.AccessServiceClient, error) {
	f, err := a.dial()
	if err != nil {
		return nil, err
	}
	return qv1.NewAccessServiceClient(f), nil
}

func (a *app) aclCmd() *cobra.Command {
	return group("acl", "Who may do what: grants of produce, consume, manage and admin; bearer tokens; the receipt key",
		`  quorumq acl grant worker consume --queue orders      # worker may receive/ack orders, nothing else
  quorumq acl grant ci produce --prefix builds.           # every queue whose name starts with builds.
  quorumq acl grant ops admin
  quorumq acl list
  quorumq acl token create ci --description "build pipeline"
  quorumq acl whoami`,
		a.grantCmd("grant"),
		a.grantCmd("revoke"),
		a.aclListCmd(),
		a.whoamiCmd(),
		group("token", "Bearer tokens, for clients that cannot present a certificate",
			`  quorumq acl token create ci --description "build pipeline"
  quorumq acl token list
  quorumq acl token delete 0123456789abcdef`,
			a.tokenCreateCmd(), a.tokenListCmd(), a.tokenDeleteCmd()),
		a.rotateReceiptKeyCmd(),
	)
}

var permissions = map[string]qv1.Permission{
	"produce": qv1.Permission_PERMISSION_PRODUCE,
	"consume": qv1.Permission_PERMISSION_CONSUME,
	"manage":  qv1.Permission_PERMISSION_MANAGE,
	"admin":   qv1.Permission_PERMISSION_ADMIN,
}

func permissionName(p qv1.Permission) string {
	for n, v := range permissions {
		if v == p {
			return n
		}
	}
	return p.String()
}

func (a *app) grantCmd(op string) *cobra.Command {
	var queue, prefix string
	var all bool
	short := map[string]string{
		"grant":  "Give an identity a permission on a queue, on queues by prefix, or admin",
		"revoke": "Take back a grant (name it exactly as it was given)",
	}[op]
	cmd := &cobra.Command{
		Use:   op + " IDENTITY PERMISSION",
		Short: short,
		Long: short + `.

IDENTITY is a client certificate's name ('quorumq certs client --name') or a
token's owner ('quorumq acl token create'). PERMISSION is one of
  produce  enqueue
  consume  receive, ack, requeue, extend, reject
  manage   create, delete, purge; dead letters: list, redrive
  admin    drain, remove, rebalance, transfer-leader, gossip keys, acl; and
           every other permission on every queue (names no queue)
A queue permission names --queue (exactly), --prefix (every queue whose name
starts with it) or --all-queues. Everything not granted is denied. A change
is in force on every node within a second; each is written to the servers'
audit log with the caller's identity.`,
		Example: fmt.Sprintf("  quorumq acl %s worker consume --queue orders\n  quorumq acl %s ci produce --prefix builds.\n  quorumq acl %s ops admin", op, op, op),
		Args:    exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			perm, ok := permissions[args[1]]
			if !ok {
				return usageErrorf(cmd, "permission %q: want produce, consume, manage or admin", args[1])
			}
			g := &qv1.AccessGrant{Identity: args[0], Permission: perm}
			set := 0
			for _, b := range []bool{queue != "", cmd.Flags().Changed("prefix"), all} {
				if b {
					set++
				}
			}
			switch {
			case perm == qv1.Permission_PERMISSION_ADMIN && set > 0:
				return usageErrorf(cmd, "admin names no queue: drop --queue, --prefix and --all-queues")
			case perm != qv1.Permission_PERMISSION_ADMIN && set != 1:
				return usageErrorf(cmd, "name the queues: one of --queue NAME, --prefix PREFIX or --all-queues")
			case queue != "":
				g.Queue = queue
			case all:
				g.Prefix = true
			case cmd.Flags().Changed("prefix"):
				if prefix == "" {
					return usageErrorf(cmd, "--prefix is empty: use --all-queues for every queue")
				}
				g.Queue, g.Prefix = prefix, true
			}
			verb := map[string]string{"grant": "granted", "revoke": "revoked"}[op]
			return a.accessCall(cmd, func(ctx context.Context, ac qv1.AccessServiceClient) (proto.Message, error) {
				var err error
				if op == "grant" {
					_, err = ac.Grant(ctx, &qv1.GrantRequest{Grant: g})
				} else {
					_, err = ac.Revoke(ctx, &qv1.RevokeRequest{Grant: g})
				}
				return g, err
			}, func(proto.Message) error {
				_, err := fmt.Fprintf(a.stdout, "%s: %s %s %s\n", verb, g.GetIdentity(), permissionName(g.GetPermission()), grantScope(g))
				return err
			})
		},
	}
	cmd.Flags().StringVar(&queue, "queue", "", "the queue, named exactly")
	cmd.Flags().StringVar(&prefix, "prefix", "", "every queue whose name starts with this")
	cmd.Flags().BoolVar(&all, "all-queues", false, "every queue")
	return cmd
}

func grantScope(g *qv1.AccessGrant) string {
	switch {
	case g.GetPermission() == qv1.Permission_PERMISSION_ADMIN:
		return "(cluster)"
	case g.GetPrefix() && g.GetQueue() == "":
		return "on every queue"
	case g.GetPrefix():
		return fmt.Sprintf("on queues %s*", g.GetQueue())
	}
	return "on queue " + g.GetQueue()
}

func (a *app) aclListCmd() *cobra.Command {
	var identity string
	cmd := &cobra.Command{
		Use:     "list",
		Short:   "List the grants (and the identities that are admin by the servers' --admin-identities)",
		Example: "  quorumq acl list\n  quorumq acl list --identity worker -o json",
		Args:    exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.accessCall(cmd, func(ctx context.Context, ac qv1.AccessServiceClient) (proto.Message, error) {
				return ac.ListGrants(ctx, &qv1.ListGrantsRequest{Identity: identity})
			}, func(m proto.Message) error {
				resp := m.(*qv1.ListGrantsResponse)
				t := newTable(a.stdout, "IDENTITY", "PERMISSION", "SCOPE")
				for _, id := range resp.GetAdminIdentities() {
					if identity == "" || identity == id {
						t.row(id, "admin", "(cluster, by --admin-identities)")
					}
				}
				for _, g := range resp.GetGrants() {
					t.row(g.GetIdentity(), permissionName(g.GetPermission()), strings.TrimPrefix(grantScope(g), "on "))
				}
				return t.flush()
			})
		},
	}
	cmd.Flags().StringVar(&identity, "identity", "", "only this identity's grants")
	return cmd
}

func (a *app) whoamiCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "whoami",
		Short:   "Show the identity the servers see for these credentials, and what it may do",
		Example: "  quorumq acl whoami\n  quorumq --context prod acl whoami",
		Args:    exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.accessCall(cmd, func(ctx context.Context, ac qv1.AccessServiceClient) (proto.Message, error) {
				return ac.WhoAmI(ctx, &qv1.WhoAmIRequest{})
			}, func(m proto.Message) error {
				resp := m.(*qv1.WhoAmIResponse)
				who := resp.GetIdentity()
				if resp.GetMethod() == "insecure" {
					who = "(nobody: the cluster runs --insecure, everything is allowed)"
				}
				fmt.Fprintf(a.stdout, "identity: %s\nauthenticated by: %s\nadmin: %v\n", who, resp.GetMethod(), resp.GetAdmin())
				for _, g := range resp.GetGrants() {
					fmt.Fprintf(a.stdout, "grant: %s %s\n", permissionName(g.GetPermission()), grantScope(g))
				}
				return nil
			})
		},
	}
}

func (a *app) tokenCreateCmd() *cobra.Command {
	var description string
	cmd := &cobra.Command{
		Use:   "create IDENTITY",
		Short: "Create a bearer token that authenticates as IDENTITY (printed once; the cluster keeps only its hash)",
		Long: `Create a bearer token that authenticates as IDENTITY. The token is printed
once: the cluster keeps only its SHA-256. Grants are made to the identity
('quorumq acl grant'), not to the token; delete the token to revoke it. A
client sends it as 'authorization: Bearer <token>', over TLS only.`,
		Example: `  quorumq acl token create ci --description "build pipeline"
  quorumq --token qq_… send builds.app hello`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.accessCall(cmd, func(ctx context.Context, ac qv1.AccessServiceClient) (proto.Message, error) {
				return ac.CreateToken(ctx, &qv1.CreateTokenRequest{Identity: args[0], Description: description})
			}, func(m proto.Message) error {
				_, err := fmt.Fprintln(a.stdout, m.(*qv1.CreateTokenResponse).GetToken())
				return err
			})
		},
	}
	cmd.Flags().StringVar(&description, "description", "", "what the token is for (at most 256 bytes)")
	return cmd
}

func (a *app) tokenListCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Short:   "List tokens (ids, owners, descriptions; never the secrets)",
		Example: "  quorumq acl token list",
		Args:    exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.accessCall(cmd, func(ctx context.Context, ac qv1.AccessServiceClient) (proto.Message, error) {
				return ac.ListTokens(ctx, &qv1.ListTokensRequest{})
			}, func(m proto.Message) error {
				t := newTable(a.stdout, "ID", "IDENTITY", "CREATED", "DESCRIPTION")
				for _, tok := range m.(*qv1.ListTokensResponse).GetTokens() {
					t.row(tok.GetId(), tok.GetIdentity(), tok.GetCreatedAt().AsTime().Format(time.RFC3339), tok.GetDescription())
				}
				return t.flush()
			})
		},
	}
}

func (a *app) tokenDeleteCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "delete ID",
		Short:   "Delete a token: calls with it are refused on every node within a second",
		Example: "  quorumq acl token delete 0123456789abcdef",
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.accessCall(cmd, func(ctx context.Context, ac qv1.AccessServiceClient) (proto.Message, error) {
				return ac.DeleteToken(ctx, &qv1.DeleteTokenRequest{Id: args[0]})
			}, a.says("deleted token "+args[0]))
		},
	}
}

func (a *app) rotateReceiptKeyCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "rotate-receipt-key",
		Short: "Make a new receipt signing key current (receipts of the previous key verify until the next rotation)",
		Long: `Make a new receipt signing key current. Receipts are signed (HMAC-SHA256)
so that they can be neither guessed nor altered. Receipts signed with the
key before stay valid until the next rotation: rotate at most once per
longest visibility timeout, or leases held across two rotations can no
longer be acked (their messages come back when the lease ends).`,
		Example: "  quorumq acl rotate-receipt-key",
		Args:    exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.accessCall(cmd, func(ctx context.Context, ac qv1.AccessServiceClient) (proto.Message, error) {
				return ac.RotateReceiptKey(ctx, &qv1.RotateReceiptKeyRequest{})
			}, a.says("receipt key rotated"))
		},
	}
}

// accessCall runs one AccessService call within --timeout and prints its
// answer: JSON with -o json, else by table.
func (a *app) accessCall(cmd *cobra.Command, call func(context.Context, qv1.AccessServiceClient) (proto.Message, error), table func(proto.Message) error) error {
	ac, err := a.accessClient()
	if err != nil {
		return err
	}
	ctx, cancel := a.callCtx(cmd.Context(), 0)
	defer cancel()
	resp, err := call(ctx, ac)
	if err != nil {
		return err
	}
	if a.jsonOut() {
		return writeJSON(a.stdout, resp)
	}
	return table(resp)
}

// says prints line, whatever the answer.
func (a *app) says(line string) func(proto.Message) error {
	return func(proto.Message) error {
		_, err := fmt.Fprintln(a.stdout, line)
		return err
	}
}
