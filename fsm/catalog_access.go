package fsm

import (
	"cmp"
	"encoding/hex"
	"maps"
	"slices"
	"sync/atomic"

	"google.golang.org/protobuf/proto"

	fsmv1 "github.com/quorumq/quorumq/proto/quorumq/fsm/v1"
)

// Access control in the catalogue: grants, bearer tokens (hashed) and the
// receipt signing keys. The catalogue only stores them; who may do what is
// decided by the cluster from these.

// Limits on access records.
const (
	MaxGrants          = 10000 // grants in the catalogue
	MaxTokens          = 10000 // tokens in the catalogue
	MaxIdentityLen     = 128   // bytes of an identity
	MaxDescriptionLen  = 256   // bytes of a token's description
	TokenIDLen         = 16    // hex digits of a token id
	TokenHashLen       = 32    // SHA-256
	ReceiptKeyLen      = 32    // bytes of a receipt signing key
	maxReceiptKeysKept = 2     // the current key and the one before it
)

// ValidIdentity checks an identity (a client certificate's name, a
// token's owner): 1 to MaxIdentityLen bytes of letters, digits and . _ - :
// not starting with . or -, as client certificate names are.
func ValidIdentity(s string) error { return checkName("identity", s, MaxIdentityLen, true) }

// ValidateGrant checks a grant on its own.
func ValidateGrant(g *fsmv1.Grant) error {
	if g == nil {
		return invalidf("grant missing")
	}
	if err := ValidIdentity(g.GetIdentity()); err != nil {
		return err
	}
	switch g.GetPermission() {
	case fsmv1.Permission_PERMISSION_ADMIN:
		if g.GetQueue() != "" || g.GetPrefix() {
			return invalidf("an admin grant names no queue")
		}
		return nil
	case fsmv1.Permission_PERMISSION_PRODUCE, fsmv1.Permission_PERMISSION_CONSUME, fsmv1.Permission_PERMISSION_MANAGE:
	default:
		return invalidf("permission %v", g.GetPermission())
	}
	if g.GetPrefix() {
		if len(g.GetQueue()) > MaxQueueNameLen {
			return invalidf("queue prefix of %d bytes, at most %d", len(g.GetQueue()), MaxQueueNameLen)
		}
		return nil
	}
	return ValidQueueName(g.GetQueue())
}

func validateToken(t *fsmv1.TokenInfo) error {
	if t == nil {
		return invalidf("token missing")
	}
	if err := ValidTokenID(t.GetId()); err != nil {
		return err
	}
	if err := ValidIdentity(t.GetIdentity()); err != nil {
		return err
	}
	if len(t.GetHash()) != TokenHashLen {
		return invalidf("token hash of %d bytes, want %d", len(t.GetHash()), TokenHashLen)
	}
	if len(t.GetDescription()) > MaxDescriptionLen {
		return invalidf("token description of %d bytes, at most %d", len(t.GetDescription()), MaxDescriptionLen)
	}
	return nil
}

// ValidTokenID checks a token id: TokenIDLen lowercase hex digits.
func ValidTokenID(id string) error {
	if len(id) != TokenIDLen {
		return invalidf("token id %q: want %d hex digits", id, TokenIDLen)
	}
	if _, err := hex.DecodeString(id); err != nil || id != lowerASCII(id) {
		return invalidf("token id %q: want %d lowercase hex digits", id, TokenIDLen)
	}
	return nil
}

func lowerASCII(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

func grantLess(a, b *fsmv1.Grant) int {
	return cmp.Or(
		cmp.Compare(a.GetIdentity(), b.GetIdentity()),
		cmp.Compare(a.GetPermission(), b.GetPermission()),
		cmp.Compare(a.GetQueue(), b.GetQueue()),
		boolCompare(a.GetPrefix(), b.GetPrefix()),
	)
}

func boolCompare(a, b bool) int {
	switch {
	case a == b:
		return 0
	case !a:
		return -1
	default:
		return 1
	}
}

func (c *Catalog) putGrant(g *fsmv1.Grant) *CatalogResult {
	i, found := slices.BinarySearchFunc(c.grants, g, grantLess)
	if found {
		return &CatalogResult{Code: CatalogOK}
	}
	if len(c.grants) >= MaxGrants {
		return catalogResult(CatalogRefused, "%d grants: at most %d", len(c.grants), MaxGrants)
	}
	c.grants = slices.Insert(c.grants, i, proto.CloneOf(g))
	return &CatalogResult{Code: CatalogOK}
}

func (c *Catalog) revokeGrant(g *fsmv1.Grant) *CatalogResult {
	i, found := slices.BinarySearchFunc(c.grants, g, grantLess)
	if !found {
		return catalogResult(CatalogNotFound, "no such grant")
	}
	c.grants = slices.Delete(c.grants, i, i+1)
	return &CatalogResult{Code: CatalogOK}
}

func (c *Catalog) putToken(t *fsmv1.TokenInfo, now int64) *CatalogResult {
	if _, ok := c.tokens[t.GetId()]; ok {
		return catalogResult(CatalogExists, "token %s exists", t.GetId())
	}
	if len(c.tokens) >= MaxTokens {
		return catalogResult(CatalogRefused, "%d tokens: at most %d", len(c.tokens), MaxTokens)
	}
	t = proto.CloneOf(t)
	t.CreatedAt = now
	c.tokens[t.GetId()] = t
	return &CatalogResult{Code: CatalogOK}
}

func (c *Catalog) deleteToken(id string) *CatalogResult {
	if _, ok := c.tokens[id]; !ok {
		return catalogResult(CatalogNotFound, "no token %s", id)
	}
	delete(c.tokens, id)
	return &CatalogResult{Code: CatalogOK}
}

func (c *Catalog) rotateReceiptKey(key []byte, now int64) *CatalogResult {
	var id uint32 = 1
	if n := len(c.receiptKeys); n > 0 {
		id = c.receiptKeys[n-1].GetId() + 1
	}
	c.receiptKeys = append(c.receiptKeys, &fsmv1.ReceiptKey{Id: id, Key: slices.Clone(key), CreatedAt: now})
	if n := len(c.receiptKeys); n > maxReceiptKeysKept {
		c.receiptKeys = slices.Clone(c.receiptKeys[n-maxReceiptKeysKept:])
	}
	return &CatalogResult{Code: CatalogOK, KeyID: id}
}

// Grants returns a copy of every grant, sorted by identity, permission,
// queue and prefix.
func (c *Catalog) Grants() []*fsmv1.Grant {
	out := make([]*fsmv1.Grant, len(c.grants))
	for i, g := range c.grants {
		out[i] = proto.CloneOf(g)
	}
	return out
}

// Token returns a copy of token id.
func (c *Catalog) Token(id string) (*fsmv1.TokenInfo, bool) {
	t, ok := c.tokens[id]
	if !ok {
		return nil, false
	}
	return proto.CloneOf(t), true
}

// Tokens returns a copy of every token, sorted by id.
func (c *Catalog) Tokens() []*fsmv1.TokenInfo {
	out := make([]*fsmv1.TokenInfo, 0, len(c.tokens))
	for _, id := range slices.Sorted(maps.Keys(c.tokens)) {
		out = append(out, proto.CloneOf(c.tokens[id]))
	}
	return out
}

// ReceiptKeys returns a copy of the receipt keys, oldest first: the last
// one is current.
func (c *Catalog) ReceiptKeys() []*fsmv1.ReceiptKey {
	out := make([]*fsmv1.ReceiptKey, len(c.receiptKeys))
	for i, k := range c.receiptKeys {
		out[i] = proto.CloneOf(k)
	}
	return out
}

// accessVersions hands out AccessVersion values, unique in the process.
var accessVersions atomic.Uint64

// AccessVersion identifies the catalogue's access records (grants, tokens,
// receipt keys) in this process: it changes whenever they may have
// changed — an access command applied, a snapshot restored — and only
// then, so a reader may cache what it derives from them under it. It is
// not part of the state: replicas differ in it.
func (c *Catalog) AccessVersion() uint64 { return c.accessVersion }

func isAccessCommand(cmd *fsmv1.CatalogCommand) bool {
	switch cmd.GetOp().(type) {
	case *fsmv1.CatalogCommand_PutGrant, *fsmv1.CatalogCommand_RevokeGrant, *fsmv1.CatalogCommand_PutToken,
		*fsmv1.CatalogCommand_DeleteToken, *fsmv1.CatalogCommand_RotateReceiptKey:
		return true
	}
	return false
}

// restoreAccess checks and takes the access records of a snapshot.
func (c *Catalog) restoreAccess(s *fsmv1.CatalogSnapshot) error {
	if len(s.GetGrants()) > MaxGrants || len(s.GetTokens()) > MaxTokens || len(s.GetReceiptKeys()) > maxReceiptKeysKept {
		return catalogCorrupt("%d grants, %d tokens, %d receipt keys", len(s.GetGrants()), len(s.GetTokens()), len(s.GetReceiptKeys()))
	}
	for i, g := range s.GetGrants() {
		if err := ValidateGrant(g); err != nil {
			return catalogCorrupt("grant %d: %v", i, err)
		}
		if i > 0 && grantLess(s.Grants[i-1], g) >= 0 {
			return catalogCorrupt("grant %d out of order or twice", i)
		}
	}
	c.grants = s.GetGrants()
	for i, t := range s.GetTokens() {
		if err := validateToken(t); err != nil {
			return catalogCorrupt("token %d: %v", i, err)
		}
		if i > 0 && t.GetId() <= s.Tokens[i-1].GetId() {
			return catalogCorrupt("token %q out of order or twice", t.GetId())
		}
		c.tokens[t.GetId()] = t
	}
	for i, k := range s.GetReceiptKeys() {
		if len(k.GetKey()) != ReceiptKeyLen || k.GetId() == 0 || (i > 0 && k.GetId() <= s.ReceiptKeys[i-1].GetId()) {
			return catalogCorrupt("receipt key %d", i)
		}
	}
	c.receiptKeys = s.GetReceiptKeys()
	return nil
}

func validateAccessCommand(cmd *fsmv1.CatalogCommand) (handled bool, err error) {
	switch op := cmd.GetOp().(type) {
	case *fsmv1.CatalogCommand_PutGrant:
		return true, ValidateGrant(op.PutGrant.GetGrant())
	case *fsmv1.CatalogCommand_RevokeGrant:
		return true, ValidateGrant(op.RevokeGrant.GetGrant())
	case *fsmv1.CatalogCommand_PutToken:
		return true, validateToken(op.PutToken.GetToken())
	case *fsmv1.CatalogCommand_DeleteToken:
		return true, ValidTokenID(op.DeleteToken.GetId())
	case *fsmv1.CatalogCommand_RotateReceiptKey:
		if len(op.RotateReceiptKey.GetKey()) != ReceiptKeyLen {
			return true, invalidf("receipt key of %d bytes, want %d", len(op.RotateReceiptKey.GetKey()), ReceiptKeyLen)
		}
		return true, nil
	}
	return false, nil
}
