package lazyfs

import "sort"

// extent is one dirty range of a file: data written at off and not yet
// synced.
type extent struct {
	off  int64
	data []byte
}

func (e extent) end() int64 { return e.off + int64(len(e.data)) }

// overlay is the unsynced data of one file: sorted extents that neither
// overlap nor touch (two that touch are merged).
type overlay struct {
	ext []extent
}

// write records p at off, over whatever was there.
func (o *overlay) write(off int64, p []byte) {
	if len(p) == 0 {
		return
	}
	end := off + int64(len(p))
	// [i, j) are the extents that overlap or touch [off, end).
	i := sort.Search(len(o.ext), func(k int) bool { return o.ext[k].end() >= off })
	j := i
	for j < len(o.ext) && o.ext[j].off <= end {
		j++
	}
	switch {
	case i == j:
		// Touches nothing: a new extent.
		o.ext = append(o.ext, extent{})
		copy(o.ext[i+1:], o.ext[i:])
		o.ext[i] = extent{off: off, data: append([]byte(nil), p...)}
		return
	case j == i+1 && o.ext[i].off <= off:
		// Within or at the end of one extent: appends, the common case
		// of a log, grow it in place.
		e := &o.ext[i]
		n := copy(e.data[off-e.off:], p)
		e.data = append(e.data, p[n:]...)
		return
	}
	start := min(off, o.ext[i].off)
	stop := max(end, o.ext[j-1].end())
	data := make([]byte, stop-start)
	for _, e := range o.ext[i:j] {
		copy(data[e.off-start:], e.data)
	}
	copy(data[off-start:], p)
	o.ext[i] = extent{off: start, data: data}
	o.ext = append(o.ext[:i+1], o.ext[j:]...)
}

// truncate drops everything at or past size.
func (o *overlay) truncate(size int64) {
	i := sort.Search(len(o.ext), func(k int) bool { return o.ext[k].end() > size })
	if i < len(o.ext) && o.ext[i].off < size {
		o.ext[i].data = o.ext[i].data[:size-o.ext[i].off]
		i++
	}
	clear(o.ext[i:])
	o.ext = o.ext[:i]
}

// end is where the last extent ends (0 with none): the file is at least
// this long.
func (o *overlay) end() int64 {
	if len(o.ext) == 0 {
		return 0
	}
	return o.ext[len(o.ext)-1].end()
}

// readAt copies the overlay's bytes within [off, off+len(p)) into p,
// leaving the rest of p as it is.
func (o *overlay) readAt(p []byte, off int64) {
	end := off + int64(len(p))
	i := sort.Search(len(o.ext), func(k int) bool { return o.ext[k].end() > off })
	for ; i < len(o.ext) && o.ext[i].off < end; i++ {
		e := o.ext[i]
		if e.off >= off {
			copy(p[e.off-off:], e.data)
		} else {
			copy(p, e.data[off-e.off:])
		}
	}
}

// bytes is how many bytes the overlay holds.
func (o *overlay) bytes() int64 {
	var n int64
	for _, e := range o.ext {
		n += int64(len(e.data))
	}
	return n
}

// reset drops every extent.
func (o *overlay) reset() { o.ext = nil }
