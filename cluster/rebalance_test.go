package cluster

import (
	"fmt"
	"testing"

	fsmv1 "github.com/quorumq/quorumq/proto/quorumq/fsm/v1"
)

// testQueue lays out partitions over nodes: parts[i] lists partition i's
// replica nodes, the first preferred.
func testQueue(parts ...[]string) *fsmv1.QueueInfo {
	q := &fsmv1.QueueInfo{Name: "q", Id: 1, ReplicationFactor: uint32(len(parts[0]))}
	for i, ns := range parts {
		a := &fsmv1.PartitionAssignment{Partition: uint32(i), Epoch: 1, PreferredLeader: ns[0]}
		for k, n := range ns {
			a.Replicas = append(a.Replicas, &fsmv1.Replica{NodeId: n, Epoch: uint64(i*10 + k + 1), Voter: true})
		}
		q.Partitions = append(q.Partitions, a)
	}
	return q
}

// countAfter counts, once plan applied, the staying replicas per node and
// the preferred leaders per node.
func countAfter(q *fsmv1.QueueInfo, plan []*rebalanceChange) (replicas, leaders map[string]int) {
	replicas, leaders = map[string]int{}, map[string]int{}
	byPart := map[uint32]*rebalanceChange{}
	for _, ch := range plan {
		byPart[ch.a.GetPartition()] = ch
	}
	for _, a := range q.GetPartitions() {
		rs, pref := a.GetReplicas(), a.GetPreferredLeader()
		if ch := byPart[a.GetPartition()]; ch != nil {
			rs, pref = ch.replicas, ch.preferred
		}
		for _, r := range rs {
			if !r.GetLeaving() {
				replicas[r.GetNodeId()]++
			}
		}
		leaders[pref]++
	}
	return replicas, leaders
}

func TestPlanRebalanceLeaders(t *testing.T) {
	// 10 partitions spread evenly over 5 nodes (6 replicas each): leaders
	// must spread too, and no replica moves.
	nodes := []string{"n1", "n2", "n3", "n4", "n5"}
	var parts [][]string
	for i := range 10 {
		parts = append(parts, []string{nodes[i%5], nodes[(i+1)%5], nodes[(i+2)%5]})
	}
	// Skew preferred leaders onto n1.
	q := testQueue(parts...)
	for _, a := range q.GetPartitions() {
		for _, r := range a.GetReplicas() {
			if r.GetNodeId() == "n1" {
				a.PreferredLeader = "n1"
			}
		}
	}
	healthy := map[string]bool{}
	for _, n := range nodes {
		healthy[n] = true
	}
	plan := planRebalance([]*fsmv1.QueueInfo{q}, healthy, true)
	_, leads := countAfter(q, plan)
	if !within(leads, 1) || len(leads) != 5 {
		t.Fatalf("after the plan: leaders %v", leads)
	}
	for _, ch := range plan {
		if ch.moves {
			t.Fatalf("replicas are even (within one), yet partition %d moves", ch.a.GetPartition())
		}
	}
}

func TestPlanRebalanceScaleUp(t *testing.T) {
	var parts [][]string
	for range 12 {
		parts = append(parts, []string{"n1", "n2", "n3"})
	}
	q := testQueue(parts...)
	healthy := map[string]bool{"n1": true, "n2": true, "n3": true, "n4": true, "n5": true}
	plan := planRebalance([]*fsmv1.QueueInfo{q}, healthy, true)
	reps, _ := countAfter(q, plan)
	moves := 0
	for _, ch := range plan {
		for _, r := range ch.replicas {
			if r.GetLeaving() {
				moves++
			}
		}
	}
	// 36 replicas over 5 nodes: 14 must move to n4 and n5.
	if moves != 14 {
		t.Fatalf("%d moves planned, want 14 (%v)", moves, reps)
	}
	if fmt.Sprint(reps) != "map[n1:8 n2:7 n3:7]" && fmt.Sprint(reps) != "map[n1:7 n2:7 n3:8]" && fmt.Sprint(reps) != "map[n1:7 n2:8 n3:7]" {
		t.Fatalf("staying replicas %v, want 8, 7, 7", reps)
	}
}
