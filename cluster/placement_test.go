package cluster

import (
	"cmp"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"
)

// testNodes returns n nodes "n0".."n<n-1>"; with zones > 0, node i is in zone
// "z<i%zones>".
func testNodes(n, zones int) []PlacementNode {
	nodes := make([]PlacementNode, n)
	for i := range nodes {
		nodes[i].ID = fmt.Sprintf("n%d", i)
		if zones > 0 {
			nodes[i].Zone = fmt.Sprintf("z%d", i%zones)
		}
	}
	return nodes
}

// placementTotals adds out to existing for each of nodes, and returns the
// max-min spread of the replica and of the leader counts.
func placementTotals(nodes []PlacementNode, existing map[string]Load, out []PartitionPlacement) (total map[string]Load, replicaSpread, leaderSpread int) {
	total = make(map[string]Load)
	for _, n := range nodes {
		total[n.ID] = existing[n.ID]
	}
	for _, p := range out {
		for k, id := range p.Replicas {
			l := total[id]
			l.Replicas++
			if k == 0 {
				l.Leaders++
			}
			total[id] = l
		}
	}
	var reps, leads []int
	for _, l := range total {
		reps, leads = append(reps, l.Replicas), append(leads, l.Leaders)
	}
	return total, slices.Max(reps) - slices.Min(reps), slices.Max(leads) - slices.Min(leads)
}

// zonesOf returns how many distinct zones p spans, a zoneless node counting
// as a zone of its own.
func zonesOf(nodes []PlacementNode, p PartitionPlacement) int {
	seen := make(map[string]bool)
	for _, n := range nodes {
		if slices.Contains(p.Replicas, n.ID) {
			seen[cmp.Or(n.Zone, "node "+n.ID)] = true
		}
	}
	return len(seen)
}

func TestPlace(t *testing.T) {
	tests := []struct {
		name                 string
		nodes                []PlacementNode
		existing             map[string]Load
		partitions, replicas int
		want                 [][]string      // exact placement, if set
		wantTotal            map[string]Load // exact totals, if set
		maxSpread            int             // of replicas and leaders; -1: leaders only, <= 1
		minZones             int             // per partition
	}{
		{name: "3 nodes 6 partitions R3", nodes: testNodes(3, 0), partitions: 6, replicas: 3,
			wantTotal: map[string]Load{"n0": {6, 2}, "n1": {6, 2}, "n2": {6, 2}}, maxSpread: 0},
		{name: "5 nodes 12 partitions R3", nodes: testNodes(5, 0), partitions: 12, replicas: 3, maxSpread: 1},
		{name: "existing load skews to light nodes", nodes: testNodes(5, 0), partitions: 2, replicas: 3,
			existing:  map[string]Load{"n0": {4, 1}, "n1": {4, 1}, "n2": {4, 1}, "gone": {9, 9}},
			want:      [][]string{{"n3", "n4", "n0"}, {"n4", "n3", "n1"}},
			wantTotal: map[string]Load{"n0": {5, 1}, "n1": {5, 1}, "n2": {4, 1}, "n3": {2, 1}, "n4": {2, 1}}, maxSpread: -1},
		{name: "6 nodes 3 zones R3", nodes: testNodes(6, 3), partitions: 12, replicas: 3, maxSpread: 0, minZones: 3},
		{name: "4 nodes 2 zones R3", nodes: testNodes(4, 2), partitions: 8, replicas: 3, maxSpread: 1, minZones: 2},
		{name: "zone with one node is in every partition", partitions: 4, replicas: 2, maxSpread: -1, minZones: 2,
			nodes: []PlacementNode{{"a", "x"}, {"b", "x"}, {"c", "x"}, {"d", "y"}},
			want:  [][]string{{"a", "d"}, {"b", "d"}, {"c", "d"}, {"d", "a"}}},
		{name: "leaders evened out when a zone forces a node into every partition", // greedy alone gives 3,2,1
			nodes: testNodes(3, 2), partitions: 6, replicas: 2, maxSpread: -1, minZones: 2,
			wantTotal: map[string]Load{"n0": {3, 2}, "n1": {6, 2}, "n2": {3, 2}}},
		{name: "R1", nodes: testNodes(4, 0), partitions: 8, replicas: 1,
			wantTotal: map[string]Load{"n0": {2, 2}, "n1": {2, 2}, "n2": {2, 2}, "n3": {2, 2}}},
		{name: "R equals node count", nodes: testNodes(3, 0), partitions: 3, replicas: 3,
			want: [][]string{{"n0", "n1", "n2"}, {"n1", "n2", "n0"}, {"n2", "n0", "n1"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := Place(tt.nodes, tt.existing, tt.partitions, tt.replicas)
			if err != nil {
				t.Fatal(err)
			}
			if len(out) != tt.partitions {
				t.Fatalf("got %d partitions, want %d", len(out), tt.partitions)
			}
			got := make([][]string, len(out))
			for i, p := range out {
				got[i] = p.Replicas
				if z := zonesOf(tt.nodes, p); z < tt.minZones {
					t.Errorf("partition %d %v spans %d zones, want >= %d", i, p.Replicas, z, tt.minZones)
				}
			}
			if tt.want != nil && !reflect.DeepEqual(got, tt.want) {
				t.Errorf("placement = %v, want %v", got, tt.want)
			}
			total, rs, ls := placementTotals(tt.nodes, tt.existing, out)
			if tt.wantTotal != nil && !reflect.DeepEqual(total, tt.wantTotal) {
				t.Errorf("totals = %v, want %v", total, tt.wantTotal)
			}
			if rs > tt.maxSpread && tt.maxSpread >= 0 || ls > max(tt.maxSpread, 1) {
				t.Errorf("replica spread %d, leader spread %d, want <= %d: %v", rs, ls, tt.maxSpread, total)
			}
		})
	}
}

func TestPlaceErrors(t *testing.T) {
	three := testNodes(3, 0)
	tests := []struct {
		name                 string
		nodes                []PlacementNode
		partitions, replicas int
		notEnough            bool
	}{
		{"zero replicas", three, 1, 0, false},
		{"zero partitions", three, 0, 1, false},
		{"negative partitions", three, -1, 1, false},
		{"empty id", []PlacementNode{{"a", ""}, {"", ""}}, 1, 1, false},
		{"duplicate id", []PlacementNode{{"a", "x"}, {"b", "x"}, {"a", "y"}}, 1, 1, false},
		{"fewer nodes than replicas", three, 1, 4, true},
		{"no nodes", nil, 1, 1, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := Place(tt.nodes, nil, tt.partitions, tt.replicas)
			if err == nil || out != nil {
				t.Fatalf("Place = %v, %v; want an error", out, err)
			}
			if got := errors.Is(err, ErrNotEnoughNodes); got != tt.notEnough {
				t.Errorf("errors.Is(%v, ErrNotEnoughNodes) = %v, want %v", err, got, tt.notEnough)
			}
		})
	}
}

func TestPlaceDeterministic(t *testing.T) {
	nodes := testNodes(9, 3)
	existing := map[string]Load{"n1": {3, 1}, "n4": {2, 2}, "n7": {5, 0}}
	want, err := Place(nodes, existing, 20, 3)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 20 {
		shuffled := slices.Clone(nodes)
		rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		got, err := Place(shuffled, existing, 20, 3)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("order %v: got %v, want %v", shuffled, got, want)
		}
	}
}

// TestPlaceProperties checks the invariants over many shapes, with zones laid
// out round robin and skewed (one big zone, the rest single nodes).
func TestPlaceProperties(t *testing.T) {
	for n := 1; n <= 9; n++ {
		for zones := 0; zones <= 3; zones++ {
			for _, skewed := range []bool{false, true} {
				nodes := testNodes(n, zones)
				var all PartitionPlacement
				for i := range nodes {
					if skewed && zones > 0 {
						nodes[i].Zone = fmt.Sprintf("z%d", min(i, zones-1))
					}
					all.Replicas = append(all.Replicas, nodes[i].ID)
				}
				allZones := zonesOf(nodes, all)
				for r := 1; r <= min(5, n); r++ {
					for p := 1; p <= 40; p++ {
						name := fmt.Sprintf("nodes=%v partitions=%d replicas=%d", nodes, p, r)
						out, err := Place(nodes, nil, p, r)
						if err != nil || len(out) != p {
							t.Fatalf("%s: got %v, %v", name, out, err)
						}
						for i, pp := range out {
							if len(pp.Replicas) != r || len(slices.Compact(slices.Sorted(slices.Values(pp.Replicas)))) != r {
								t.Fatalf("%s: partition %d is on %v", name, i, pp.Replicas)
							}
							// Zone maximality: one zone per replica, until all are used.
							if z := zonesOf(nodes, pp); z != min(r, allZones) {
								t.Fatalf("%s: partition %d %v spans %d zones", name, i, pp.Replicas, z)
							}
						}
						total, rs, ls := placementTotals(nodes, nil, out)
						if zones == 0 && rs > 1 || ls > 1 {
							t.Fatalf("%s: replica spread %d, leader spread %d: %v", name, rs, ls, total)
						}
					}
				}
			}
		}
	}
}
