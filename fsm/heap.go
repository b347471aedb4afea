package fsm

// msgHeap is a binary min-heap of messages that keeps each message's index
// (message.hidx) so that any member can be removed or re-keyed in O(log n).
// Ordering is total, so the order messages leave the heap never depends on
// the heap's layout: byUntil heaps order by (until, seq), others by seq.
type msgHeap struct {
	items   []*message
	byUntil bool
}

func (h *msgHeap) less(a, b *message) bool {
	if h.byUntil && a.until != b.until {
		return a.until < b.until
	}
	return a.seq < b.seq
}

// min returns the smallest message, or nil.
func (h *msgHeap) min() *message {
	if len(h.items) == 0 {
		return nil
	}
	return h.items[0]
}

func (h *msgHeap) push(m *message) {
	m.hidx = int32(len(h.items))
	h.items = append(h.items, m)
	h.up(len(h.items) - 1)
}

// remove takes m, which must be in h, out of the heap.
func (h *msgHeap) remove(m *message) *message {
	i := int(m.hidx)
	if i < 0 || i >= len(h.items) || h.items[i] != m {
		panic("fsm: removing a message that is not in the heap")
	}
	last := len(h.items) - 1
	if i != last {
		h.swap(i, last)
	}
	h.items[last] = nil
	h.items = h.items[:last]
	if i != last {
		if !h.down(i) {
			h.up(i)
		}
	}
	m.hidx = -1
	h.shrink()
	return m
}

// fix restores the order after m's key changed.
func (h *msgHeap) fix(m *message) {
	i := int(m.hidx)
	if !h.down(i) {
		h.up(i)
	}
}

// clear empties the heap, calling fn for every member in no given order.
func (h *msgHeap) clear(fn func(*message)) {
	items := h.items
	h.items = nil
	for _, m := range items {
		m.hidx = -1
		fn(m)
	}
}

// shrink gives back memory once the heap is much smaller than its array, so
// the index shrinks with the partition.
func (h *msgHeap) shrink() {
	if c := cap(h.items); c > 1024 && len(h.items) < c/4 {
		h.items = append(make([]*message, 0, c/2), h.items...)
	}
}

func (h *msgHeap) swap(i, j int) {
	h.items[i], h.items[j] = h.items[j], h.items[i]
	h.items[i].hidx = int32(i)
	h.items[j].hidx = int32(j)
}

func (h *msgHeap) up(j int) {
	for j > 0 {
		i := (j - 1) / 2
		if !h.less(h.items[j], h.items[i]) {
			break
		}
		h.swap(i, j)
		j = i
	}
}

func (h *msgHeap) down(i0 int) bool {
	i, n := i0, len(h.items)
	for {
		l := 2*i + 1
		if l >= n {
			break
		}
		j := l
		if r := l + 1; r < n && h.less(h.items[r], h.items[l]) {
			j = r
		}
		if !h.less(h.items[j], h.items[i]) {
			break
		}
		h.swap(i, j)
		i = j
	}
	return i > i0
}
