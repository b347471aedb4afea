package storage

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	"github.com/cockroachdb/pebble/v2/vfs"
	dto "github.com/prometheus/client_model/go"
)

// StateDir is the state engine's directory inside the data directory.
const StateDir = "state"

// Defaults of EngineOptions. With them the engine holds at most about
// 64 MiB of block cache plus 4 × 16 MiB of memtables: 128 MiB, an eighth of
// a node with a 1 GiB memory limit.
const (
	// DefaultEngineCacheBytes is the block cache (uncompressed sstable
	// blocks, index and bloom filter blocks included).
	DefaultEngineCacheBytes int64 = 64 << 20
	// DefaultEngineMemTableBytes is the size of one memtable.
	DefaultEngineMemTableBytes int64 = 16 << 20
	// EngineMemTables bounds the memtables held at once (the one being
	// written and those queued for flushing): writes stall when the queued
	// memtables reach EngineMemTables × MemTableBytes.
	EngineMemTables = 4
	// EngineL0StopWrites is how many L0 sublevels stop writes (OpenEngine).
	EngineL0StopWrites = 200
)

// pebble v2 surprises met here (storage/DESIGN.md, "pebble v2 notes"):
//   - an empty batch applied with pebble.Sync returns at once and syncs
//     nothing; Sync appends an empty LogData record instead;
//   - DB.Get and Snapshot.Get return a closer that must be closed (an open
//     one pins memtables and sstables and makes DB.Close fail);
//   - a committed batch may not be reused (a large one's data can be kept
//     as a flushable); Close it;
//   - FormatMajorVersion left zero is FormatMinSupported, an old format;
//   - disk-health checks (DiskSlow) need Options.WithFSDefaults;
//   - DB.Close with snapshots open closes anyway and reports "leaked
//     snapshots"; reading such a snapshot later panics;
//   - Iterator.Value is deprecated for ValueAndErr.

// engineFormat is the layout version of the state engine, stored under
// keyEngineFormat. A store with another version is refused, but for
// engineFormatNoLogs, which is upgraded at open.
//
// Version 2 may hold Raft logs (the l and s ranges, engine_log.go). A
// store of version 1 holds none (the logs were in partitions.db), so it is
// a version 2 store as it is; the upgrade writes the new number, so that a
// build of version 1, which would ignore the logs and take the node for
// one whose partition state is lost, refuses the store instead.
const (
	engineFormat       = 2
	engineFormatNoLogs = 1
)

// Key space of the state engine:
//
//	m<name>                 the engine's own records (mformat: engineFormat, 8 bytes BE)
//	p<group id>\x00<key>    a partition replica's key, as chosen by package fsm
//
// A group id never contains NUL, so one group's prefix is never a prefix of
// another's, even when the ids are (q/a/1/1 and q/a/1/10), and the keys of
// a group are exactly [p<group>\x00, p<group>\x01).
var (
	keyEngineFormat = []byte("mformat")
	groupsLower     = []byte("p")
	groupsUpper     = []byte("q")
)

// ErrEngineClosed means the Engine has been closed.
var ErrEngineClosed = errors.New("storage: state engine is closed")

// EngineOptions configures OpenEngine; the zero value is the defaults.
type EngineOptions struct {
	// CacheBytes is the block cache (default DefaultEngineCacheBytes).
	CacheBytes int64
	// MemTableBytes is one memtable (default DefaultEngineMemTableBytes);
	// up to EngineMemTables of them exist at once. A Commit larger than
	// about half of it is not copied into a memtable but queued whole and
	// flushed to its own sstable.
	MemTableBytes int64
	// Logger receives pebble's messages and the engine's events (write
	// stalls, slow disk); nil means slog.Default().
	Logger *slog.Logger

	// fs replaces the operating system's file system (tests: a crashable
	// in-memory file system).
	fs vfs.FS
}

// Engine is one Pebble database per node, <data-dir>/state, that holds the
// state machine state of every partition replica on the node, each under
// its own key prefix (Partition). One WAL for all of them, so one fsync
// makes the commits of every partition durable.
//
// An Engine is safe for concurrent use; each PartitionKV is used by one
// goroutine.
type Engine struct {
	db  *pebble.DB
	dir string
	log *slog.Logger

	views  atomic.Int64   // open PartitionViews
	ovs    engineOverlays // partitions' unflushed writes (engine_overlay.go)
	stalls atomic.Int64   // write stalls since open
	// stallSince is when the current write stall began (unix ns);
	// stallNanos the time spent in ended stalls.
	stallSince, stallNanos atomic.Int64
	logs                   engineLogs // Raft logs kept in the engine (engine_log.go)

	mu       sync.Mutex // serialises Close
	closed   atomic.Bool
	closeErr error
}

// OpenEngine opens the state engine in dir, normally <data-dir>/state
// (StateDir), creating it (mode 0700) if needed. The WAL is on; an
// existing store of another layout version is refused. Close it after
// every PartitionKV user has stopped and every view is closed.
func OpenEngine(dir string, opts EngineOptions) (*Engine, error) {
	if opts.CacheBytes <= 0 {
		opts.CacheBytes = DefaultEngineCacheBytes
	}
	if opts.MemTableBytes <= 0 {
		opts.MemTableBytes = DefaultEngineMemTableBytes
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	fs := opts.fs
	if fs == nil {
		fs = vfs.Default
	}
	e := &Engine{dir: dir, log: opts.Logger.With("state_engine", dir)}

	if err := makeEngineDir(fs, dir); err != nil {
		return nil, fmt.Errorf("storage: open state engine %s: %w", dir, err)
	}
	po := &pebble.Options{
		FS:                          fs,
		CacheSize:                   opts.CacheBytes,
		MemTableSize:                uint64(opts.MemTableBytes),
		MemTableStopWritesThreshold: EngineMemTables,
		// Pinned, not FormatNewest: a later pebble would otherwise ratchet
		// the store on open to a format this build's pebble cannot read,
		// and a rollback of the binary would fail to open it.
		FormatMajorVersion: pebble.FormatTableFormatV6,
		Logger:             pebbleLogger{e.log},
		// A compaction at a time normally, two when L0 piles up: the node
		// also runs Raft and the state machines.
		CompactionConcurrencyRange: func() (int, int) { return 1, 2 },
		// Compactions start at 4 L0 sublevels (pebble's default), but
		// writes stop only at EngineL0StopWrites: the Raft logs share this
		// engine, and a write stop is every partition's appends frozen at
		// once. At pebble's default of 12, 1 KiB messages enqueued without
		// pause on two cores stalled every 3-8 s and once long enough for
		// clients' 10 s deadlines to pass (issue 14's 4M run). More L0
		// sublevels cost reads a bloom filter check each, which slows the
		// state machines gradually instead (CockroachDB runs with 1,000).
		L0CompactionThreshold: 4,
		L0StopWritesThreshold: EngineL0StopWrites,
		EventListener:         e.eventListener(),
	}
	// The partition reads single keys (a message, a dedup entry) that are
	// often absent: a bloom filter answers most misses without a data block.
	// The later levels inherit level 0's policy.
	po.Levels[0].FilterPolicy = bloom.FilterPolicy(10)
	po.Levels[0].FilterType = pebble.TableFilter
	// Disk health checks: a write or sync stuck for 5 s is reported
	// (DiskSlow).
	po.WithFSDefaults()

	db, err := pebble.Open(dir, po)
	if err != nil {
		return nil, fmt.Errorf("storage: open state engine %s: %w", dir, err)
	}
	e.db = db
	if err := e.checkFormat(); err != nil {
		return nil, errors.Join(fmt.Errorf("storage: open state engine %s: %w", dir, err), db.Close())
	}
	e.startFlusher()
	return e, nil
}

// makeEngineDir creates dir (0700) if missing and makes its entry in the
// parent durable; pebble syncs the directory's own contents.
func makeEngineDir(fs vfs.FS, dir string) error {
	if _, err := fs.Stat(dir); err == nil {
		return nil
	}
	if err := fs.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	d, err := fs.OpenDir(filepath.Dir(dir))
	if err != nil {
		return err
	}
	return errors.Join(d.Sync(), d.Close())
}

// checkFormat reads the layout marker; a new (empty) store gets one,
// synced.
func (e *Engine) checkFormat() error {
	v, closer, err := e.db.Get(keyEngineFormat)
	switch {
	case err == nil:
		ok := len(v) == 8 && binary.BigEndian.Uint64(v) == engineFormat
		upgrade := len(v) == 8 && binary.BigEndian.Uint64(v) == engineFormatNoLogs
		msg := fmt.Sprintf("state layout version %x is not one this build reads (%d, %d): "+
			"it was written by another version of quorumq", v, engineFormatNoLogs, engineFormat)
		if err := closer.Close(); err != nil {
			return err
		}
		switch {
		case ok:
			return nil
		case upgrade:
			var b [8]byte
			binary.BigEndian.PutUint64(b[:], engineFormat)
			return e.db.Set(keyEngineFormat, b[:], pebble.Sync)
		}
		return errors.New(msg)
	case !errors.Is(err, pebble.ErrNotFound):
		return err
	}
	it, err := e.db.NewIter(nil)
	if err != nil {
		return err
	}
	hasKeys := it.First()
	if err := errors.Join(it.Error(), it.Close()); err != nil {
		return err
	}
	if hasKeys {
		return errors.New("the store holds data but no layout marker: not a quorumq state engine")
	}
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], engineFormat)
	return e.db.Set(keyEngineFormat, b[:], pebble.Sync)
}

// Dir returns the engine's directory.
func (e *Engine) Dir() string { return e.dir }

// Close closes the database; the WAL is synced, so everything committed
// survives even without a Sync. It refuses (and leaves the engine open)
// while views are open: pebble would close all the same, report "leaked
// snapshots", and a later read of a view would panic in its reader's
// goroutine. Every PartitionKV must be idle and is
// unusable afterwards; writes it had not committed are discarded. Calling
// Close again returns the first result.
func (e *Engine) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed.Load() {
		return e.closeErr
	}
	if n := e.views.Load(); n > 0 {
		return fmt.Errorf("storage: close state engine %s: %d views still open", e.dir, n)
	}
	// What partitions committed survives a clean close.
	e.stopFlusher()
	// Wait for EngineLog calls in flight (pebble panics on use after
	// close); later ones see closed and return ErrEngineClosed.
	e.logs.ops.Lock()
	e.closed.Store(true)
	e.logs.ops.Unlock()
	if err := e.db.Close(); err != nil {
		e.closeErr = fmt.Errorf("storage: close state engine %s: %w", e.dir, err)
	}
	return e.closeErr
}

// groupPrefix returns p<group>\x00, the prefix of every key of group.
func groupPrefix(group string) []byte {
	b := make([]byte, 0, len(group)+2)
	b = append(b, 'p')
	b = append(b, group...)
	return append(b, 0)
}

// prefixEnd returns the first key after every key starting with prefix,
// whose last byte is NUL.
func prefixEnd(prefix []byte) []byte {
	end := bytes.Clone(prefix)
	end[len(end)-1] = 1
	return end
}

func validGroup(group string) error {
	if group == "" || bytes.IndexByte([]byte(group), 0) >= 0 {
		return fmt.Errorf("%w: state group %q", ErrInvalidGroup, group)
	}
	return nil
}

// DropGroup deletes every key of group, durably (one range deletion,
// synced). Stop using the group's PartitionKV first: its uncommitted
// writes would re-create keys when committed. Views taken before keep
// their state. Dropping a group without keys does nothing harmful.
func (e *Engine) DropGroup(group string) error {
	if err := validGroup(group); err != nil {
		return err
	}
	if e.closed.Load() {
		return ErrEngineClosed
	}
	e.forget(group)
	p := groupPrefix(group)
	if err := e.db.DeleteRange(p, prefixEnd(p), pebble.Sync); err != nil {
		return fmt.Errorf("storage: drop state of %s: %w", group, err)
	}
	return nil
}

// Groups returns the groups that have at least one key, in byte order. It
// reads one key per group: after a group's first key it seeks past the
// group's whole range.
func (e *Engine) Groups() ([]string, error) {
	if e.closed.Load() {
		return nil, ErrEngineClosed
	}
	// Committed writes still in overlays count: flush them first.
	e.flushIdle(true)
	groups, err := e.prefixGroups(groupsLower, groupsUpper)
	if err != nil {
		return nil, fmt.Errorf("storage: list state groups: %w", err)
	}
	return groups, nil
}

// EngineStats is what the cluster exports as metrics about the engine.
type EngineStats struct {
	DiskBytes        uint64 // everything on disk: sstables, WAL, manifest, obsolete files not yet deleted
	LiveBytes        uint64 // live sstables
	CacheBytes       int64  // block cache in use
	CacheHits        int64  // block cache hits since open
	CacheMisses      int64  // block cache misses since open
	MemTableBytes    uint64 // memtables and queued large batches
	MemTables        int64  // memtables and queued large batches
	Flushes          int64  // memtable flushes since open
	Compactions      int64  // compactions since open
	CompactionDebt   uint64 // bytes compactions have to rewrite to reach a healthy shape
	ReadAmp          int    // sstables (L0 sublevels plus lower levels) a read may visit
	WALBytesWritten  uint64 // bytes written to the WAL since open
	WALBytes         uint64 // the live WAL files' size on disk
	WriteStalls      int64  // times writes stalled (memtables or L0 full) since open
	WriteStallNanos  int64  // time writes spent stalled (ended stalls) since open
	OpenViews        int64  // PartitionViews not yet closed
	OpenSnapshots    int    // pebble snapshots open (views and anything else)
	TableIters       int64  // open sstable iterators
	KeysPinnedBytes  uint64 // bytes compactions could not drop because of open snapshots
	ObsoleteBytesNow uint64 // sstables and WAL files waiting to be deleted
	// WALFsyncs and WALFsyncSeconds count the WAL's fsyncs and the time
	// they took: each makes durable every batch queued while the previous
	// one ran (the Raft appends of many groups, group commit).
	WALFsyncs       uint64
	WALFsyncSeconds float64
}

// Stats returns the engine's statistics; zero after Close. It takes
// pebble's internal locks briefly: call it at a scrape's pace, not per
// operation.
func (e *Engine) Stats() EngineStats {
	if e.closed.Load() {
		return EngineStats{}
	}
	m := e.db.Metrics()
	var fsyncs dto.Metric
	if h := m.LogWriter.FsyncLatency; h != nil {
		_ = h.Write(&fsyncs)
	}
	return EngineStats{
		WALFsyncs:        fsyncs.GetHistogram().GetSampleCount(),
		WALFsyncSeconds:  fsyncs.GetHistogram().GetSampleSum(),
		DiskBytes:        m.DiskSpaceUsage(),
		LiveBytes:        m.Table.Local.LiveSize,
		CacheBytes:       m.BlockCache.Size,
		CacheHits:        m.BlockCache.Hits,
		CacheMisses:      m.BlockCache.Misses,
		MemTableBytes:    m.MemTable.Size,
		MemTables:        m.MemTable.Count,
		Flushes:          m.Flush.Count,
		Compactions:      m.Compact.Count,
		CompactionDebt:   m.Compact.EstimatedDebt,
		ReadAmp:          m.ReadAmp(),
		WALBytesWritten:  m.WAL.BytesWritten,
		WALBytes:         m.WAL.PhysicalSize,
		WriteStalls:      e.stalls.Load(),
		WriteStallNanos:  e.stallNanos.Load(),
		OpenViews:        e.views.Load(),
		OpenSnapshots:    m.Snapshots.Count,
		TableIters:       m.TableIters,
		KeysPinnedBytes:  m.Snapshots.PinnedSize,
		ObsoleteBytesNow: m.Table.Local.ObsoleteSize + m.WAL.ObsoletePhysicalSize,
	}
}

// eventListener logs the events an operator acts on; the others keep
// pebble's defaults (nothing, or the Logger).
func (e *Engine) eventListener() *pebble.EventListener {
	return &pebble.EventListener{
		BackgroundError: func(err error) {
			e.log.Error("state engine background error", "err", err)
		},
		WriteStallBegin: func(info pebble.WriteStallBeginInfo) {
			e.stalls.Add(1)
			e.stallSince.Store(time.Now().UnixNano())
			e.log.Warn("state engine writes stalled", "reason", info.Reason)
		},
		WriteStallEnd: func() {
			d := time.Duration(time.Now().UnixNano() - e.stallSince.Load())
			e.stallNanos.Add(int64(d))
			e.log.Warn("state engine writes resumed", "stalled_for", d.Round(time.Millisecond))
		},
		DiskSlow: func(info pebble.DiskSlowInfo) {
			e.log.Warn("state engine disk slow", "path", info.Path, "op", info.OpType.String(),
				"duration", info.Duration)
		},
		LowDiskSpace: func(info pebble.LowDiskSpaceInfo) {
			e.log.Warn("state engine disk space low", "available_bytes", info.AvailBytes,
				"total_bytes", info.TotalBytes, "below_percent", info.PercentThreshold)
		},
	}
}

// pebbleLogger bridges pebble's printf logger to slog. Without a logging
// event listener pebble's Infof is rare and worth seeing (WAL recovery at
// open, format upgrades), so it is Info. Fatalf must not return: pebble
// calls it when it cannot go on (a failed commit leaves its commit
// pipeline wedged, a corrupt block was read), so it logs and panics.
type pebbleLogger struct{ l *slog.Logger }

var _ pebble.Logger = pebbleLogger{}

func (p pebbleLogger) Infof(format string, args ...any) {
	p.l.Info(fmt.Sprintf(format, args...), "logger", "pebble")
}

func (p pebbleLogger) Errorf(format string, args ...any) {
	p.l.Error(fmt.Sprintf(format, args...), "logger", "pebble")
}

func (p pebbleLogger) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	p.l.Error(msg, "logger", "pebble", "fatal", true)
	panic("storage: state engine: " + msg)
}
