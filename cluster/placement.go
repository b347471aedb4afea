package cluster

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// ErrNotEnoughNodes is wrapped by Place when there are fewer nodes than
// replicas per partition.
var ErrNotEnoughNodes = errors.New("not enough nodes")

// PlacementNode is a node that can take replicas.
type PlacementNode struct {
	ID   string
	Zone string // "" = no zone
}

// Load is what a node already hosts, over all queues.
type Load struct {
	Replicas int
	Leaders  int // partitions whose preferred leader it is
}

// PartitionPlacement is one partition's replica nodes; Replicas[0] is the
// preferred leader.
type PartitionPlacement struct {
	Replicas []string
}

// Place chooses replicas for partitions new partitions of replicas replicas
// each, on top of the existing load (entries for nodes not in nodes are
// ignored, missing ones are zero). It is used when a queue is created and
// when rebalancing.
//
// Replicas are picked one at a time. A partition's replicas are on distinct
// nodes, and a replica never goes to a zone holding more of the partition's
// replicas than another zone with a free node: no zone is doubled while one
// is unused, and a zone failure takes as few replicas as the nodes allow. A
// node with no zone is a zone of its own. Among equally good zones the node
// with the fewest replicas wins, then the fewest leaders, then the lowest ID.
// Zone spread comes first because it decides whether a partition keeps its
// quorum when a zone fails; balance only chooses within it.
//
// The preferred leader is first picked as the replica with the fewest
// leaders, then the lowest ID; afterwards leadership is moved between
// replicas until leader counts are as even as the replica sets allow. The
// other replicas follow in pick order.
//
// Place is pure and deterministic: the same nodes (in any order), load and
// counts give the same result. It returns an error wrapping ErrNotEnoughNodes
// when len(nodes) < replicas, and an error for replicas < 1, partitions < 1,
// an empty node ID or a duplicate one.
func Place(nodes []PlacementNode, existing map[string]Load, partitions, replicas int) ([]PartitionPlacement, error) {
	if replicas < 1 {
		return nil, fmt.Errorf("placement: replicas must be at least 1, got %d", replicas)
	}
	if partitions < 1 {
		return nil, fmt.Errorf("placement: partitions must be at least 1, got %d", partitions)
	}
	// Work on nodes sorted by ID, so a node's index is its tie-break rank and
	// the input order cannot matter.
	sorted := slices.Clone(nodes)
	slices.SortFunc(sorted, func(a, b PlacementNode) int { return strings.Compare(a.ID, b.ID) })
	load := make([]Load, len(sorted))
	for i, n := range sorted {
		if n.ID == "" {
			return nil, errors.New("placement: empty node id")
		}
		if i > 0 && sorted[i-1].ID == n.ID {
			return nil, fmt.Errorf("placement: duplicate node id %q", n.ID)
		}
		load[i] = existing[n.ID]
	}
	if len(sorted) < replicas {
		return nil, fmt.Errorf("placement: %d replicas on %d nodes: %w", replicas, len(sorted), ErrNotEnoughNodes)
	}

	sets := make([][]int, partitions) // each partition's nodes, as indices into sorted, in pick order
	lead := make([]int, partitions)   // each partition's preferred leader, an index into sorted
	for p := range sets {
		inZone := make(map[string]int) // this partition's replicas per zone
		zoneUse := func(i int) int {
			if sorted[i].Zone == "" {
				return 0 // a zoneless node is its own, still unused, zone
			}
			return inZone[sorted[i].Zone]
		}
		for range replicas {
			best := -1
			for i := range sorted {
				if slices.Contains(sets[p], i) {
					continue
				}
				if best < 0 || cmp.Or(
					cmp.Compare(zoneUse(i), zoneUse(best)),
					cmp.Compare(load[i].Replicas, load[best].Replicas),
					cmp.Compare(load[i].Leaders, load[best].Leaders),
				) < 0 { // equal keys keep best, the lower ID
					best = i
				}
			}
			sets[p] = append(sets[p], best)
			load[best].Replicas++
			if z := sorted[best].Zone; z != "" {
				inZone[z]++
			}
		}
		lead[p] = slices.MinFunc(sets[p], func(a, b int) int {
			return cmp.Or(cmp.Compare(load[a].Leaders, load[b].Leaders), cmp.Compare(a, b))
		})
		load[lead[p]].Leaders++
	}

	// The greedy leader choice cannot see which nodes later partitions will
	// include, so it can leave a node two leaders behind another; fix that.
	for moved := true; moved; {
		moved = false
		for u := range sorted {
			moved = shiftLeader(sets, lead, load, u) || moved
		}
	}

	out := make([]PartitionPlacement, partitions)
	for p, set := range sets {
		out[p].Replicas = []string{sorted[lead[p]].ID}
		for _, i := range set {
			if i != lead[p] {
				out[p].Replicas = append(out[p].Replicas, sorted[i].ID)
			}
		}
	}
	return out, nil
}

// shiftLeader looks, breadth first, for a chain from node u to a node v with
// at least two leaders fewer: u leads partition p1, which has a replica on w1,
// which leads p2, ... which has a replica on v. If it finds one, it moves each
// partition's leadership one step along the chain, so u loses a leader, v
// gains one, and the nodes between keep their counts, and reports true. When
// no node has such a chain, the leader counts are as even as the replica sets
// allow (the optimality condition for semi-matchings, Harvey et al. 2006).
func shiftLeader(sets [][]int, lead []int, load []Load, u int) bool {
	via := map[int]int{u: -1} // node -> partition it was reached through
	for queue := []int{u}; len(queue) > 0; queue = queue[1:] {
		for p, set := range sets {
			if lead[p] != queue[0] {
				continue
			}
			for _, w := range set {
				if _, seen := via[w]; seen {
					continue
				}
				via[w] = p
				if load[w].Leaders > load[u].Leaders-2 {
					queue = append(queue, w)
					continue
				}
				load[u].Leaders--
				load[w].Leaders++
				for w != u {
					p := via[w]
					w, lead[p] = lead[p], w
				}
				return true
			}
		}
	}
	return false
}
