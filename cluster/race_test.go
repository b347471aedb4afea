//go:build race

package cluster

// raceEnabled: the tests run under the race detector, which makes the
// nodes several times slower; load tests scale down.
const raceEnabled = true
