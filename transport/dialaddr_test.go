package transport

import (
	"testing"

	"github.com/hashicorp/raft"
)

func TestDialAddress(t *testing.T) {
	for in, want := range map[string]string{
		"10.0.0.1:7421":           "10.0.0.1:7421",
		"10.0.0.1:7421#n1r1/10":   "10.0.0.1:7421",
		"[::1]:7421#n1":           "[::1]:7421",
		"quorumq-0.svc:7421#q0/3": "quorumq-0.svc:7421",
	} {
		if got := DialAddress(raft.ServerAddress(in)); got != want {
			t.Errorf("DialAddress(%q) = %q, want %q", in, got, want)
		}
	}
}
