package storage

import (
	"bytes"
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/btree"
)

// A partition's recent writes are kept in memory, in its overlay, and
// reach pebble in one batch holding their net effect (flush): a message
// enqueued and acked between two flushes never reaches pebble at all —
// only a tombstone per key, in case an older version is there — and a
// backlog reaches it in large batches. Reads see the overlay over pebble.
//
// A flush writes the overlay's state after some Commit (never a part of a
// commit's writes), as one pebble batch, so what pebble holds, and what a
// crash leaves, is always the partition's state after some Commit: a
// prefix of its commits, whole. The Raft log holds every entry after the
// index recorded with that state (the adapter syncs before Raft may
// truncate: Sync flushes first), so a restart replays what the crash
// took.
//
// Memory: a partition flushes at its Commit once its overlay holds
// overlayFlushBytes; the engine's flusher flushes every overlay with no
// writes pending that is older than overlayMaxAge, and the largest ones
// at once while all overlays together exceed overlayBudgetBytes.
const (
	overlayFlushBytes  = 1 << 20
	overlayMaxAge      = time.Second
	overlayBudgetBytes = 32 << 20
	overlayEntryBytes  = 64 // what an overlay entry costs besides its key and value
)

// ovEntry is one key of an overlay: its value, or a tombstone.
type ovEntry struct {
	k, v []byte
	del  bool
}

func ovLess(a, b ovEntry) bool { return bytes.Compare(a.k, b.k) < 0 }

// rangeDel is a range deletion [lo, hi) not yet flushed (partition keys,
// without the prefix); hi nil is the end of the group.
type rangeDel struct{ lo, hi []byte }

func (r rangeDel) covers(k []byte) bool {
	return bytes.Compare(k, r.lo) >= 0 && (r.hi == nil || bytes.Compare(k, r.hi) < 0)
}

// overlay is a PartitionKV's unflushed writes, in two layers: pend, the
// writes since the last Commit, and t, those committed but not flushed.
// Reads look in pend, then t, then pebble. Commit folds pend into t; a
// flush writes t (never pend) to pebble. Guarded by PartitionKV.mu.
type overlay struct {
	t, pend *btree.BTreeG[ovEntry]
	// dels are range deletions committed but not flushed, pendDels those
	// since the last Commit; an entry of a layer is newer than the
	// deletions of its layer and of the layers below.
	dels, pendDels []rangeDel
	bytes          int64 // both layers
	// since is when the first write after the last flush was made.
	since time.Time
}

func newOverlay() overlay {
	return overlay{t: btree.NewG(16, ovLess), pend: btree.NewG(16, ovLess)}
}

// committedEmpty: nothing committed waits for a flush.
func (o *overlay) committedEmpty() bool { return o.t.Len() == 0 && len(o.dels) == 0 }

func covered(dels []rangeDel, k []byte) bool {
	for _, d := range dels {
		if d.covers(k) {
			return true
		}
	}
	return false
}

// engineOverlays tracks the engine's partitions for the flusher and Close.
type engineOverlays struct {
	mu    sync.Mutex
	parts map[string]*PartitionKV // by group
	bytes atomic.Int64            // in all overlays
	kick  chan struct{}
	stop  context.CancelFunc
	done  chan struct{}
}

func (e *Engine) startFlusher() {
	e.ovs.parts = map[string]*PartitionKV{}
	e.ovs.kick = make(chan struct{}, 1)
	e.ovs.done = make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	e.ovs.stop = cancel
	go func() {
		defer close(e.ovs.done)
		t := time.NewTicker(overlayMaxAge / 4)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			case <-e.ovs.kick:
			}
			e.flushIdle(false)
		}
	}()
}

// stopFlusher stops the flusher and flushes every overlay without pending
// writes (Close: what was committed survives a clean close).
func (e *Engine) stopFlusher() {
	if e.ovs.stop == nil {
		return
	}
	e.ovs.stop()
	<-e.ovs.done
	e.flushIdle(true)
}

// flushIdle flushes the overlays with no writes pending that are old
// enough, or (over budget, or all) every one, largest first.
func (e *Engine) flushIdle(all bool) {
	e.ovs.mu.Lock()
	parts := make([]*PartitionKV, 0, len(e.ovs.parts))
	for _, p := range e.ovs.parts {
		parts = append(parts, p)
	}
	e.ovs.mu.Unlock()
	over := e.ovs.bytes.Load() > overlayBudgetBytes
	if over {
		slices.SortFunc(parts, func(a, b *PartitionKV) int {
			return int(b.ovBytes.Load() - a.ovBytes.Load())
		})
	}
	now := time.Now()
	for _, p := range parts {
		over = over && e.ovs.bytes.Load() > overlayBudgetBytes
		p.mu.Lock()
		if !p.ov.committedEmpty() && (all || over || now.Sub(p.ov.since) >= overlayMaxAge) {
			if err := p.flushLocked(); err != nil {
				e.log.Error("flushing partition state", "group", p.group, "err", err)
			}
		}
		p.mu.Unlock()
	}
}

// register makes p the group's PartitionKV. One that the group had before
// (a replica stopped and started again) gives its committed writes to
// pebble first: the new one must read them, and a later flush of the old
// one must not overwrite the new one's.
func (e *Engine) register(p *PartitionKV) {
	e.ovs.mu.Lock()
	old := e.ovs.parts[p.group]
	e.ovs.parts[p.group] = p
	e.ovs.mu.Unlock()
	if old != nil {
		old.mu.Lock()
		if !old.ov.committedEmpty() {
			if err := old.flushLocked(); err != nil {
				e.log.Error("flushing partition state", "group", old.group, "err", err)
			}
		}
		old.dropOverlayLocked()
		old.mu.Unlock()
	}
}

// forget drops group's overlay unflushed (DropGroup: its keys are going).
func (e *Engine) forget(group string) {
	e.ovs.mu.Lock()
	p := e.ovs.parts[group]
	delete(e.ovs.parts, group)
	e.ovs.mu.Unlock()
	if p != nil {
		p.mu.Lock()
		p.dropOverlayLocked()
		p.mu.Unlock()
	}
}

// Release gives p's committed writes to pebble and stops tracking it; call
// it when the partition stops (its writes not committed are discarded).
func (p *PartitionKV) Release() error {
	p.mu.Lock()
	var err error
	if !p.ov.committedEmpty() {
		err = p.flushLocked()
	}
	p.dropOverlayLocked()
	p.mu.Unlock()
	p.e.ovs.mu.Lock()
	if p.e.ovs.parts[p.group] == p {
		delete(p.e.ovs.parts, p.group)
	}
	p.e.ovs.mu.Unlock()
	return err
}

func (p *PartitionKV) dropOverlayLocked() {
	p.e.ovs.bytes.Add(-p.ov.bytes)
	p.ovBytes.Store(0)
	p.ov = newOverlay()
}

// note accounts for n bytes more (or fewer) in the overlay.
func (p *PartitionKV) note(n int64) {
	if p.ov.committedEmpty() && p.ov.pend.Len() == 0 && len(p.ov.pendDels) == 0 {
		p.ov.since = time.Now()
	}
	p.ov.bytes += n
	p.ovBytes.Add(n)
	if p.e.ovs.bytes.Add(n) > overlayBudgetBytes {
		select {
		case p.e.ovs.kick <- struct{}{}:
		default:
		}
	}
}

func entryBytes(e ovEntry) int64 { return int64(len(e.k) + len(e.v) + overlayEntryBytes) }

// put records k (a value, or a tombstone) in the pending layer.
func (p *PartitionKV) put(k, v []byte, del bool) {
	e := ovEntry{k: bytes.Clone(k), del: del}
	if !del {
		e.v = bytes.Clone(v)
	}
	n := entryBytes(e)
	if old, ok := p.ov.pend.ReplaceOrInsert(e); ok {
		n -= entryBytes(old)
	}
	p.note(n)
}

// deleteRange records a range deletion in the pending layer.
func (p *PartitionKV) deleteRange(lo, hi []byte) {
	var gone []ovEntry
	p.ov.pend.AscendGreaterOrEqual(ovEntry{k: lo}, func(e ovEntry) bool {
		if hi != nil && bytes.Compare(e.k, hi) >= 0 {
			return false
		}
		gone = append(gone, e)
		return true
	})
	var n int64
	for _, e := range gone {
		p.ov.pend.Delete(e)
		n -= entryBytes(e)
	}
	d := rangeDel{lo: bytes.Clone(lo), hi: bytes.Clone(hi)}
	p.ov.pendDels = append(p.ov.pendDels, d)
	p.note(n + int64(len(d.lo)+len(d.hi)+overlayEntryBytes))
}

// commitPending folds the pending layer into the committed one.
func (p *PartitionKV) commitPending() {
	o := &p.ov
	var n int64
	for _, d := range o.pendDels {
		var gone []ovEntry
		o.t.AscendGreaterOrEqual(ovEntry{k: d.lo}, func(e ovEntry) bool {
			if d.hi != nil && bytes.Compare(e.k, d.hi) >= 0 {
				return false
			}
			gone = append(gone, e)
			return true
		})
		for _, e := range gone {
			o.t.Delete(e)
			n -= entryBytes(e)
		}
		o.dels = append(o.dels, d)
	}
	o.pendDels = nil
	o.pend.Ascend(func(e ovEntry) bool {
		if old, ok := o.t.ReplaceOrInsert(e); ok {
			n -= entryBytes(old)
		}
		return true
	})
	o.pend.Clear(false)
	p.note(n)
}

// flushLocked writes the committed layer's net effect to pebble as one
// batch, then empties it (the pending layer stays). The caller holds p.mu.
func (p *PartitionKV) flushLocked() error {
	b := p.e.db.NewBatch()
	defer b.Close()
	var key, buf []byte
	for _, d := range p.ov.dels {
		key = append(append(key[:0], p.prefix...), d.lo...)
		hi := p.end // never appended to: it is the PartitionKV's
		if d.hi != nil {
			buf = append(append(buf[:0], p.prefix...), d.hi...)
			hi = buf
		}
		if err := b.DeleteRange(key, hi, nil); err != nil {
			return err
		}
	}
	var err error
	p.ov.t.Ascend(func(e ovEntry) bool {
		key = append(append(key[:0], p.prefix...), e.k...)
		if e.del {
			err = b.Delete(key, nil)
		} else {
			err = b.Set(key, e.v, nil)
		}
		return err == nil
	})
	if err != nil {
		return err
	}
	if err := p.commitBatch(b); err != nil {
		return err
	}
	var n int64
	p.ov.t.Ascend(func(e ovEntry) bool { n += entryBytes(e); return true })
	for _, d := range p.ov.dels {
		n += int64(len(d.lo) + len(d.hi) + overlayEntryBytes)
	}
	p.ov.t.Clear(false)
	p.ov.dels = nil
	p.ov.since = time.Now()
	p.note(-n)
	return nil
}
