package fsm

import (
	"bytes"
	"strings"
	"testing"

	fsmv1 "github.com/quorumq/quorumq/proto/quorumq/fsm/v1"
)

func cmdOp(stamp int64, op any) *fsmv1.CatalogCommand {
	c := catCmd(stamp)
	switch o := op.(type) {
	case *fsmv1.PutGrant:
		c.Op = &fsmv1.CatalogCommand_PutGrant{PutGrant: o}
	case *fsmv1.RevokeGrant:
		c.Op = &fsmv1.CatalogCommand_RevokeGrant{RevokeGrant: o}
	case *fsmv1.PutToken:
		c.Op = &fsmv1.CatalogCommand_PutToken{PutToken: o}
	case *fsmv1.DeleteToken:
		c.Op = &fsmv1.CatalogCommand_DeleteToken{DeleteToken: o}
	case *fsmv1.RotateReceiptKey:
		c.Op = &fsmv1.CatalogCommand_RotateReceiptKey{RotateReceiptKey: o}
	}
	return c
}

func grant(id string, p fsmv1.Permission, queue string, prefix bool) *fsmv1.Grant {
	return &fsmv1.Grant{Identity: id, Permission: p, Queue: queue, Prefix: prefix}
}

func TestCatalogAccessRecords(t *testing.T) {
	c := NewCatalog()
	must := func(cmd *fsmv1.CatalogCommand, want CatalogCode) *CatalogResult {
		t.Helper()
		res := c.Apply(cmd)
		if res.Code != want {
			t.Fatalf("%v: %v %q, want %v", cmd.GetOp(), res.Code, res.Detail, want)
		}
		return res
	}
	consumeA := grant("worker", fsmv1.Permission_PERMISSION_CONSUME, "a", false)
	must(cmdOp(1, &fsmv1.PutGrant{Grant: grant("zed", fsmv1.Permission_PERMISSION_ADMIN, "", false)}), CatalogOK)
	must(cmdOp(2, &fsmv1.PutGrant{Grant: consumeA}), CatalogOK)
	must(cmdOp(3, &fsmv1.PutGrant{Grant: grant("worker", fsmv1.Permission_PERMISSION_PRODUCE, "orders.", true)}), CatalogOK)
	must(cmdOp(4, &fsmv1.PutGrant{Grant: consumeA}), CatalogOK) // again: ok, one copy
	if got := c.Grants(); len(got) != 3 || got[0].GetIdentity() != "worker" || got[2].GetIdentity() != "zed" {
		t.Fatalf("grants %v", got)
	}
	must(cmdOp(5, &fsmv1.RevokeGrant{Grant: grant("worker", fsmv1.Permission_PERMISSION_CONSUME, "b", false)}), CatalogNotFound)
	must(cmdOp(6, &fsmv1.RevokeGrant{Grant: consumeA}), CatalogOK)
	if got := c.Grants(); len(got) != 2 {
		t.Fatalf("grants after revoke %v", got)
	}

	tok := &fsmv1.TokenInfo{Id: "0123456789abcdef", Identity: "worker", Hash: bytes.Repeat([]byte{7}, 32), Description: "ci"}
	must(cmdOp(7, &fsmv1.PutToken{Token: tok}), CatalogOK)
	must(cmdOp(8, &fsmv1.PutToken{Token: tok}), CatalogExists)
	if got, ok := c.Token(tok.Id); !ok || got.GetCreatedAt() != 7 || got.GetIdentity() != "worker" {
		t.Fatalf("token %v %v", got, ok)
	}
	must(cmdOp(9, &fsmv1.DeleteToken{Id: "ffffffffffffffff"}), CatalogNotFound)

	for i, want := range []uint32{1, 2, 3} {
		res := must(cmdOp(int64(10+i), &fsmv1.RotateReceiptKey{Key: bytes.Repeat([]byte{byte(i)}, 32)}), CatalogOK)
		if res.KeyID != want {
			t.Fatalf("rotation %d: key id %d, want %d", i, res.KeyID, want)
		}
	}
	if ks := c.ReceiptKeys(); len(ks) != 2 || ks[0].GetId() != 2 || ks[1].GetId() != 3 || ks[1].GetKey()[0] != 2 {
		t.Fatalf("receipt keys %v", ks)
	}

	// A snapshot keeps all of it, byte for byte.
	before := catBytes(t, c)
	r := NewCatalog()
	if err := r.Restore(bytes.NewReader(before)); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, catBytes(t, r)) {
		t.Fatal("restored catalogue differs")
	}
	if _, ok := r.Token(tok.Id); !ok || len(r.Grants()) != 2 || len(r.ReceiptKeys()) != 2 {
		t.Fatal("restored catalogue lost access records")
	}
	must(cmdOp(20, &fsmv1.DeleteToken{Id: tok.Id}), CatalogOK)
	if _, ok := c.Token(tok.Id); ok {
		t.Fatal("token still there after delete")
	}
}

func TestCatalogAccessValidation(t *testing.T) {
	for _, tc := range []struct {
		name string
		cmd  *fsmv1.CatalogCommand
		want string
	}{
		{"admin with a queue", cmdOp(1, &fsmv1.PutGrant{Grant: grant("a", fsmv1.Permission_PERMISSION_ADMIN, "q", false)}), "names no queue"},
		{"no permission", cmdOp(1, &fsmv1.PutGrant{Grant: grant("a", 0, "q", false)}), "permission"},
		{"unknown permission", cmdOp(1, &fsmv1.PutGrant{Grant: grant("a", 9, "q", false)}), "permission"},
		{"bad identity", cmdOp(1, &fsmv1.PutGrant{Grant: grant("a/b", fsmv1.Permission_PERMISSION_PRODUCE, "q", false)}), "identity"},
		{"empty identity", cmdOp(1, &fsmv1.PutGrant{Grant: grant("", fsmv1.Permission_PERMISSION_PRODUCE, "q", false)}), "identity"},
		{"bad queue", cmdOp(1, &fsmv1.PutGrant{Grant: grant("a", fsmv1.Permission_PERMISSION_PRODUCE, "", false)}), "queue"},
		{"long prefix", cmdOp(1, &fsmv1.PutGrant{Grant: grant("a", fsmv1.Permission_PERMISSION_PRODUCE, strings.Repeat("x", 200), true)}), "prefix"},
		{"no grant", cmdOp(1, &fsmv1.RevokeGrant{}), "grant missing"},
		{"token id", cmdOp(1, &fsmv1.PutToken{Token: &fsmv1.TokenInfo{Id: "XYZ", Identity: "a", Hash: make([]byte, 32)}}), "token id"},
		{"token hash", cmdOp(1, &fsmv1.PutToken{Token: &fsmv1.TokenInfo{Id: "0123456789abcdef", Identity: "a", Hash: make([]byte, 3)}}), "hash"},
		{"upper token id", cmdOp(1, &fsmv1.DeleteToken{Id: "0123456789ABCDEF"}), "lowercase"},
		{"short key", cmdOp(1, &fsmv1.RotateReceiptKey{Key: []byte("k")}), "receipt key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := NewCatalog()
			before := catBytes(t, c)
			res := c.Apply(tc.cmd)
			if res.Code != CatalogInvalid || !strings.Contains(res.Detail, tc.want) {
				t.Fatalf("%v %q, want invalid mentioning %q", res.Code, res.Detail, tc.want)
			}
			if !bytes.Equal(before, catBytes(t, c)) {
				t.Fatal("a refused command changed the catalogue")
			}
		})
	}
}
