package storage

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"testing"
)

// TestEngineGetMany: GetMany answers what Get answers, key by key, whether
// a key's latest version is pending, committed in the overlay, flushed to
// pebble, or hidden by a range deletion of any of them.
func TestEngineGetMany(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	e := openTestEngine(t, filepath.Join(t.TempDir(), "state"), nil)
	defer func() { closeEngine(t, e) }()
	kv := e.Partition("q/g/1/0")
	keys := modelKeys()
	for op := range 3000 {
		k := keys[rng.IntN(len(keys))]
		switch r := rng.IntN(10); {
		case r < 5:
			kv.Set(k, fmt.Appendf(nil, "v%d", op))
		case r < 7:
			kv.Delete(k)
		case r < 8:
			hi := keys[rng.IntN(len(keys))]
			if bytes.Compare(k, hi) < 0 {
				kv.DeleteRange(k, hi)
			}
		case r < 9:
			if err := kv.Commit(); err != nil {
				t.Fatal(err)
			}
		default:
			if err := kv.Sync(); err != nil {
				t.Fatal(err)
			}
		}
		var ask [][]byte
		for range 1 + rng.IntN(20) {
			ask = append(ask, keys[rng.IntN(len(keys))])
		}
		slices.SortFunc(ask, bytes.Compare)
		ask = slices.CompactFunc(ask, bytes.Equal)
		seen := make([]bool, len(ask))
		kv.GetMany(ask, func(i int, v []byte, ok bool) {
			if seen[i] {
				t.Fatalf("op %d: key %q answered twice", op, ask[i])
			}
			seen[i] = true
			want, wok := kv.peekForTest(ask[i])
			if ok != wok || !bytes.Equal(v, want) {
				t.Fatalf("op %d: GetMany(%q) = %q, %v; Get says %q, %v", op, ask[i], v, ok, want, wok)
			}
		})
		if slices.Contains(seen, false) {
			t.Fatalf("op %d: a key was not answered", op)
		}
	}
}

// peekForTest is Get for a test inside a GetMany callback (which may not
// call the PartitionKV): it reads without taking the lock the callback's
// caller holds.
func (p *PartitionKV) peekForTest(key []byte) ([]byte, bool) {
	p.mu.Unlock()
	defer p.mu.Lock()
	v, ok := p.Get(key)
	return bytes.Clone(v), ok
}

// TestEngineOverlayFlushes: committed writes reach pebble by a flush (at a
// Commit past overlayFlushBytes, by the flusher after overlayMaxAge, at
// Close); writes never committed never do.
func TestEngineOverlayFlushes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	e := openTestEngine(t, dir, nil)
	kv := e.Partition("q/f/1/0")
	big := bytes.Repeat([]byte{'x'}, 4096)
	for i := range overlayFlushBytes/4096 + 8 {
		kv.Set(fmt.Appendf(nil, "b%05d", i), big)
	}
	if err := kv.Commit(); err != nil {
		t.Fatal(err)
	}
	if n := kv.ovBytes.Load(); n != 0 {
		t.Fatalf("%d bytes left in the overlay after a commit past the flush size", n)
	}
	kv.Set([]byte("small"), []byte("1"))
	if err := kv.Commit(); err != nil {
		t.Fatal(err)
	}
	kv.Set([]byte("uncommitted"), []byte("2"))
	waitFor(t, "the flusher", func() bool {
		_, c, err := e.db.Get(append(bytes.Clone(kv.prefix), "small"...))
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
	closeEngine(t, e)
	e = openTestEngine(t, dir, nil)
	defer func() { closeEngine(t, e) }()
	kv = e.Partition("q/f/1/0")
	if _, ok := kv.Get([]byte("small")); !ok {
		t.Fatal("a committed write was lost at close")
	}
	if _, ok := kv.Get([]byte("uncommitted")); ok {
		t.Fatal("a write never committed reached the store")
	}
}
