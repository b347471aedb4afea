package cluster

import (
	"testing"

	"go.uber.org/goleak"
)

// Every goroutine a node starts must be gone once it stops. memberlist's
// Shutdown does not wait for a probe already in flight; that goroutine ends
// by itself within the probe interval (1 s), so it is not ours to wait for.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/hashicorp/memberlist.(*Memberlist).probeNode"))
}
