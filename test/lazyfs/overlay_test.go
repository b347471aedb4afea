package lazyfs

import (
	"bytes"
	"math/rand/v2"
	"testing"
)

// TestOverlayModel checks the overlay against a plain byte slice: random
// writes and truncations, then every byte read back.
func TestOverlayModel(t *testing.T) {
	for seed := range uint64(200) {
		r := rand.New(rand.NewPCG(seed, 1))
		var o overlay
		model := []byte{}
		dirty := []bool{}
		for range 50 {
			if r.IntN(8) == 0 {
				size := int64(r.IntN(300))
				o.truncate(size)
				if int(size) < len(model) {
					model, dirty = model[:size], dirty[:size]
				}
				continue
			}
			off := int64(r.IntN(256))
			p := make([]byte, 1+r.IntN(64))
			for i := range p {
				p[i] = byte(1 + r.IntN(255))
			}
			o.write(off, p)
			for int64(len(model)) < off+int64(len(p)) {
				model, dirty = append(model, 0), append(dirty, false)
			}
			copy(model[off:], p)
			for i := range p {
				dirty[off+int64(i)] = true
			}
		}
		// Extents sorted, non-empty, neither overlapping nor touching.
		for i, e := range o.ext {
			if len(e.data) == 0 || (i > 0 && o.ext[i-1].end() >= e.off) {
				t.Fatalf("seed %d: extents %v not sorted apart", seed, spans(o.ext))
			}
		}
		var want []byte
		var n int64
		for i, d := range dirty {
			if d {
				n++
				want = append(want, model[i])
			} else {
				want = append(want, 0)
			}
		}
		if o.bytes() != n {
			t.Fatalf("seed %d: %d bytes, want %d", seed, o.bytes(), n)
		}
		for len(want) > 0 && !dirty[len(want)-1] {
			want = want[:len(want)-1]
		}
		if o.end() != int64(len(want)) {
			t.Fatalf("seed %d: end %d, want %d", seed, o.end(), len(want))
		}
		got := make([]byte, len(want))
		o.readAt(got, 0)
		if !bytes.Equal(got, want) {
			t.Fatalf("seed %d: read\n%v\nwant\n%v", seed, got, want)
		}
		// A read in the middle sees the same bytes.
		if len(want) > 10 {
			got := make([]byte, len(want)-10)
			o.readAt(got, 5)
			if !bytes.Equal(got, want[5:len(want)-5]) {
				t.Fatalf("seed %d: read at 5 differs", seed)
			}
		}
	}
}

func spans(ext []extent) [][2]int64 {
	var out [][2]int64
	for _, e := range ext {
		out = append(out, [2]int64{e.off, e.end()})
	}
	return out
}

// TestOverlayAppend: appends grow one extent.
func TestOverlayAppend(t *testing.T) {
	var o overlay
	for i := range 1000 {
		o.write(int64(i*10), bytes.Repeat([]byte{byte(i)}, 10))
	}
	if len(o.ext) != 1 || o.bytes() != 10000 {
		t.Fatalf("%d extents, %d bytes; want 1, 10000", len(o.ext), o.bytes())
	}
}
