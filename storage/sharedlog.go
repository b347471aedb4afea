package storage

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/bbolt"
)

// SharedLogFile is the name of the shared log in the data directory.
const SharedLogFile = "partitions.db"

// Sentinel errors of the shared log.
var (
	// ErrLogClosed means the SharedLog has been closed.
	ErrLogClosed = errors.New("storage: shared log is closed")
	// ErrGroupDropped means the group was dropped (DropGroup) after this
	// SharedGroup was handed out; get a new one with SharedLog.Group.
	ErrGroupDropped = errors.New("storage: shared log group was dropped")
)

const (
	// maxBatchBytes bounds the encoded bytes of one shared-log commit. A
	// commit takes everything queued up to this bound (at least one request,
	// whatever its size); the rest waits for the next commit. 64 MiB is
	// about 50 groups each appending Raft's default 64 entries of 16 KiB,
	// and keeps one commit's write under a second on slow disks.
	maxBatchBytes = 64 << 20
	// sharedMmapSize is the initial mmap of partitions.db. Read
	// transactions do not block a write transaction until the file grows
	// past it (bolt must then remap, which waits for readers).
	sharedMmapSize = 64 << 20
	// maxGroupIDBytes bounds a group id (a bolt bucket name).
	maxGroupIDBytes = 1024
	// sharedFormat is the layout version stored in the meta bucket.
	sharedFormat = 1
)

// Bucket layout of partitions.db:
//
//	meta/format                 sharedFormat, 8 bytes big-endian
//	groups/<group id>/log/      <index, 8 bytes BE> -> logcodec value
//	groups/<group id>/stable/   Raft's stable store keys -> values
var (
	bucketMeta    = []byte("meta")
	bucketGroups  = []byte("groups")
	bucketLog     = []byte("log")
	bucketStable  = []byte("stable")
	keyFormat     = []byte("format")
	logFillFactor = 0.9 // appends are in index order; see bbolt Bucket.FillPercent
)

// SharedLog is one bbolt database, <data-dir>/partitions.db, holding the
// Raft log and stable store of many groups (each in its own bucket), so
// that one fsync makes the appends of many groups durable. A single
// committer goroutine applies every write: it takes all the requests
// queued by all groups (waiting only for the first, never on a timer),
// applies them in one read-write transaction and commits it (one durable
// commit: two fdatasyncs), then answers each request. While it commits,
// new requests queue up, so a commit carries more groups as the load grows
// and adds no latency when the node is idle.
//
// Reads (GetLog, Get) are bolt read transactions and run in parallel with
// the committer. A SharedLog is safe for concurrent use.
type SharedLog struct {
	db   *bbolt.DB
	path string
	log  *slog.Logger

	mu       sync.Mutex
	cond     *sync.Cond // signalled when queue grows or closed is set; uses mu
	queue    []*sharedReq
	closed   bool
	failed   error // sticky: the first commit error
	groups   map[string]*SharedGroup
	dropping map[string]chan struct{} // closed when the group's DropGroup ends

	isClosed atomic.Bool   // closed, readable without mu
	done     chan struct{} // closed when the committer has exited

	closeOnce sync.Once
	closeErr  error

	// Counters, for tests and benchmarks.
	commits     atomic.Uint64 // successful bolt commits by the committer
	requests    atomic.Uint64 // requests those commits carried
	commitNanos atomic.Uint64 // time those commits took

	// holdCommits, if set, is received from before each batch is taken: a
	// test sends one value per batch it lets through, or closes it.
	holdCommits chan struct{}
}

type reqKind uint8

const (
	reqAppend reqKind = iota + 1
	reqDelete
	reqSet
	reqDrop
)

// sharedReq is one write waiting for the committer.
type sharedReq struct {
	g        *SharedGroup
	kind     reqKind
	keys     [][]byte // reqAppend, reqSet: the keys; bolt needs them valid until the commit
	vals     [][]byte // reqAppend, reqSet: the values, same length as keys
	min, max uint64   // reqDelete: the inclusive range
	size     int      // encoded bytes, for maxBatchBytes
	done     chan error
}

// OpenSharedLog opens (creating if needed, mode 0600) the shared log at
// path, normally <data-dir>/partitions.db, and starts its committer. log
// receives commit failures (nil means slog.Default()). Close it after the
// Raft instances that use it have shut down.
func OpenSharedLog(path string, log *slog.Logger) (*SharedLog, error) {
	return openSharedLog(path, log, sharedTestHooks{})
}

// sharedTestHooks let tests reach into the committer and the file.
type sharedTestHooks struct {
	hold     chan struct{}                                    // see SharedLog.holdCommits
	openFile func(string, int, os.FileMode) (*os.File, error) // bbolt.Options.OpenFile
}

func openSharedLog(path string, log *slog.Logger, hooks sharedTestHooks) (*SharedLog, error) {
	if log == nil {
		log = slog.Default()
	}
	_, statErr := os.Stat(path)
	fresh := errors.Is(statErr, os.ErrNotExist)
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{
		Timeout:         boltLockTimeout,
		NoFreelistSync:  true,
		FreelistType:    bbolt.FreelistMapType,
		InitialMmapSize: sharedMmapSize,
		NoSync:          false, // never: acknowledged entries must be on disk
		OpenFile:        hooks.openFile,
	})
	if err != nil {
		return nil, fmt.Errorf("storage: open shared log %s: %w", path, err)
	}
	if err := initShared(db); err != nil {
		return nil, errors.Join(fmt.Errorf("storage: open shared log %s: %w", path, err), db.Close())
	}
	// The new file must survive a crash before Raft records a vote in it.
	if fresh {
		if err := syncDir(filepath.Dir(path)); err != nil {
			return nil, errors.Join(fmt.Errorf("storage: open shared log %s: %w", path, err), db.Close())
		}
	}
	s := &SharedLog{
		db:       db,
		path:     path,
		log:      log.With("shared_log", path),
		groups:   make(map[string]*SharedGroup),
		dropping: make(map[string]chan struct{}),
		done:     make(chan struct{}),

		holdCommits: hooks.hold,
	}
	s.cond = sync.NewCond(&s.mu)
	go s.run()
	return s, nil
}

// initShared creates the top-level buckets and checks the format version.
func initShared(db *bbolt.DB) error {
	return db.Update(func(tx *bbolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		if v := meta.Get(keyFormat); v != nil {
			if len(v) != 8 || keyIndex(v) != sharedFormat {
				return fmt.Errorf("unknown format %x (want %d)", v, sharedFormat)
			}
		} else if err := meta.Put(keyFormat, indexKey(sharedFormat)); err != nil {
			return err
		}
		_, err = tx.CreateBucketIfNotExists(bucketGroups)
		return err
	})
}

// Path returns the file's path.
func (s *SharedLog) Path() string { return s.path }

// Close stops accepting writes (they fail with ErrLogClosed), waits for the
// committer to commit what was already queued, and closes the file. Shut
// down the Raft instances using it first. Calling Close again returns the
// first result.
func (s *SharedLog) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.isClosed.Store(true)
		s.cond.Signal()
		s.mu.Unlock()
		<-s.done
		if err := s.db.Close(); err != nil {
			s.closeErr = fmt.Errorf("storage: close shared log %s: %w", s.path, err)
		}
	})
	return s.closeErr
}

// Group returns the stores of the group with the given id (its stable wire
// id, GroupName.String()). The group's buckets are created by its first
// write, so Group itself writes nothing. Calls with the same id return the
// same *SharedGroup until the group is dropped. One Raft instance at a time
// may use a group.
func (s *SharedLog) Group(id string) (*SharedGroup, error) {
	if err := checkGroupID(id); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// Let a drop of this id commit first, or the new handle would load the
	// dropped group's indexes.
	for ch := s.dropping[id]; ch != nil; ch = s.dropping[id] {
		s.mu.Unlock()
		<-ch
		s.mu.Lock()
	}
	if s.closed {
		return nil, ErrLogClosed
	}
	if g := s.groups[id]; g != nil {
		return g, nil
	}
	// Holding mu, no write for id can be queued (there is no handle to queue
	// it through), so the indexes read here stay true until the committer
	// changes them.
	g := newSharedGroup(s, id)
	err := s.db.View(func(tx *bbolt.Tx) error {
		if b := logBucket(tx, g.name); b != nil {
			ix := logIndexes(b)
			g.ix.Store(&ix)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("storage: shared log group %s: %w", id, err)
	}
	s.groups[id] = g
	return g, nil
}

func checkGroupID(id string) error {
	if id == "" || len(id) > maxGroupIDBytes {
		return fmt.Errorf("%w: shared log group id %q", ErrInvalidGroup, id)
	}
	return nil
}

// DropGroup durably deletes the group's log and stable store (the queue
// was deleted or the replica moved away). Shut down the group's Raft
// first: writes queued before DropGroup are applied before the drop, later
// writes through the old SharedGroup fail with ErrGroupDropped. Dropping a
// group that is not on disk returns nil.
func (s *SharedLog) DropGroup(id string) error {
	if err := checkGroupID(id); err != nil {
		return err
	}
	s.mu.Lock()
	for ch := s.dropping[id]; ch != nil; ch = s.dropping[id] {
		s.mu.Unlock()
		<-ch
		s.mu.Lock()
	}
	r := &sharedReq{g: newSharedGroup(s, id), kind: reqDrop, done: make(chan error, 1)}
	if err := s.enqueueLocked(r); err != nil {
		s.mu.Unlock()
		return err
	}
	// Under the same hold of mu as the enqueue: writes through the old
	// handle are either queued before the drop or refused.
	if g := s.groups[id]; g != nil {
		g.dropped = true
		delete(s.groups, id)
	}
	ch := make(chan struct{})
	s.dropping[id] = ch
	s.mu.Unlock()

	err := <-r.done

	s.mu.Lock()
	delete(s.dropping, id)
	close(ch)
	s.mu.Unlock()
	if err != nil {
		return fmt.Errorf("storage: drop shared log group %s: %w", id, err)
	}
	return nil
}

// Groups returns the ids of the groups that have state in the file (a group
// handed out by Group appears after its first write), in byte order.
func (s *SharedLog) Groups() ([]string, error) {
	if s.isClosed.Load() {
		return nil, ErrLogClosed
	}
	var ids []string
	err := s.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketGroups).ForEach(func(k, v []byte) error {
			if v == nil { // a nested bucket
				ids = append(ids, string(k))
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("storage: list shared log groups: %w", err)
	}
	return ids, nil
}

// submit queues r and waits for its commit.
func (s *SharedLog) submit(r *sharedReq) error {
	s.mu.Lock()
	err := s.enqueueLocked(r)
	s.mu.Unlock()
	if err != nil {
		return err
	}
	return <-r.done
}

// enqueueLocked queues r for the committer. s.mu must be held, so that the
// checks and the queue order agree with DropGroup.
func (s *SharedLog) enqueueLocked(r *sharedReq) error {
	switch {
	case s.closed:
		return ErrLogClosed
	case s.failed != nil:
		return s.failed
	case r.g.dropped:
		return fmt.Errorf("%w: %s", ErrGroupDropped, r.g.id)
	}
	s.queue = append(s.queue, r)
	s.cond.Signal()
	return nil
}

// run is the committer goroutine: take what is queued, commit it, answer,
// repeat; exit once closed and the queue is empty.
func (s *SharedLog) run() {
	defer close(s.done)
	var batch []*sharedReq
	for {
		if s.holdCommits != nil {
			<-s.holdCommits
		}
		s.mu.Lock()
		for len(s.queue) == 0 && !s.closed {
			s.cond.Wait()
		}
		if len(s.queue) == 0 {
			s.mu.Unlock()
			return
		}
		batch = s.takeLocked(batch[:0])
		failed := s.failed
		s.mu.Unlock()

		if failed != nil {
			answer(batch, failed)
		} else {
			s.commit(batch)
		}
		clear(batch) // drop the references to the requests' buffers
	}
}

// takeLocked moves the head of the queue, up to maxBatchBytes (at least one
// request), into batch.
func (s *SharedLog) takeLocked(batch []*sharedReq) []*sharedReq {
	n, size := 0, 0
	for n < len(s.queue) && (n == 0 || size+s.queue[n].size <= maxBatchBytes) {
		size += s.queue[n].size
		n++
	}
	batch = append(batch, s.queue[:n]...)
	rest := copy(s.queue, s.queue[n:])
	clear(s.queue[rest:])
	s.queue = s.queue[:rest]
	return batch
}

func answer(batch []*sharedReq, err error) {
	for _, r := range batch {
		r.done <- err
	}
}

// indexes are a group's first and last log index (0, 0 for an empty log)
// as of a commit.
type indexes struct{ first, last uint64 }

// commit applies batch in one transaction and answers every request.
//
// An error applying one request (which validation before queueing makes
// unexpected: bolt refuses only oversized keys and values, which are
// checked) fails that request alone: the transaction is rolled back and
// redone without it. An error committing is sticky: every later write
// fails with it until the node restarts, because after a failed fsync the
// kernel may have dropped dirty pages that a retry would report as
// written (the PostgreSQL "fsyncgate" lesson). Raft then stops acting on
// this node's groups, and the restart recovers from the last good commit.
func (s *SharedLog) commit(batch []*sharedReq) {
	for len(batch) > 0 {
		bad := -1
		var touched map[*SharedGroup]indexes
		start := time.Now()
		err := s.db.Update(func(tx *bbolt.Tx) error {
			var err error
			touched, bad, err = applyBatch(tx, batch)
			return err
		})
		if bad >= 0 {
			s.log.Error("shared log: write refused", "group", batch[bad].g.id, "error", err)
			batch[bad].done <- fmt.Errorf("storage: shared log group %s: %w", batch[bad].g.id, err)
			batch = append(batch[:bad], batch[bad+1:]...)
			continue
		}
		if err != nil {
			err = fmt.Errorf("storage: shared log %s: commit failed, refusing writes until restart: %w", s.path, err)
			s.log.Error("shared log: commit failed", "requests", len(batch), "duration", time.Since(start), "error", err)
			s.mu.Lock()
			s.failed = err
			s.mu.Unlock()
			answer(batch, err)
			return
		}
		s.commits.Add(1)
		s.requests.Add(uint64(len(batch)))
		s.commitNanos.Add(uint64(time.Since(start)))
		// Publish the new indexes before answering, so that a caller whose
		// StoreLogs returned sees its entries in LastIndex.
		for g, ix := range touched {
			g.ix.Store(&ix)
		}
		answer(batch, nil)
		return
	}
}

// applyBatch applies the requests in order and returns the first and last
// index of every group whose log they touched. On error it returns the
// position of the failing request.
func applyBatch(tx *bbolt.Tx, batch []*sharedReq) (map[*SharedGroup]indexes, int, error) {
	groups := tx.Bucket(bucketGroups)
	type buckets struct{ log, stable *bbolt.Bucket }
	open := make(map[string]buckets) // this transaction's buckets, by group id
	get := func(g *SharedGroup, create bool) (buckets, error) {
		if b, ok := open[g.id]; ok {
			return b, nil
		}
		var gb *bbolt.Bucket
		if create {
			var err error
			if gb, err = groups.CreateBucketIfNotExists(g.name); err != nil {
				return buckets{}, err
			}
		} else if gb = groups.Bucket(g.name); gb == nil {
			return buckets{}, nil
		}
		lb, err := gb.CreateBucketIfNotExists(bucketLog)
		if err != nil {
			return buckets{}, err
		}
		sb, err := gb.CreateBucketIfNotExists(bucketStable)
		if err != nil {
			return buckets{}, err
		}
		lb.FillPercent = logFillFactor
		b := buckets{log: lb, stable: sb}
		open[g.id] = b
		return b, nil
	}
	logTouched := make(map[*SharedGroup]*bbolt.Bucket)

	for i, r := range batch {
		var err error
		switch r.kind {
		case reqAppend:
			var b buckets
			if b, err = get(r.g, true); err == nil {
				err = putAll(b.log, r.keys, r.vals)
				logTouched[r.g] = b.log
			}
		case reqSet:
			var b buckets
			if b, err = get(r.g, true); err == nil {
				err = putAll(b.stable, r.keys, r.vals)
			}
		case reqDelete:
			var b buckets
			if b, err = get(r.g, false); err == nil && b.log != nil {
				err = deleteRange(b.log, r.min, r.max)
				logTouched[r.g] = b.log
			}
		case reqDrop:
			delete(open, r.g.id)
			for g := range logTouched {
				if g.id == r.g.id {
					delete(logTouched, g)
				}
			}
			if err = groups.DeleteBucket(r.g.name); errors.Is(err, bbolt.ErrBucketNotFound) {
				err = nil
			}
		}
		if err != nil {
			return nil, i, err
		}
	}

	touched := make(map[*SharedGroup]indexes, len(logTouched))
	for g, b := range logTouched {
		touched[g] = logIndexes(b)
	}
	return touched, -1, nil
}

// logIndexes returns the first and last index in a log bucket.
func logIndexes(b *bbolt.Bucket) indexes {
	var ix indexes
	c := b.Cursor()
	if k, _ := c.First(); k != nil {
		ix.first = keyIndex(k)
	}
	if k, _ := c.Last(); k != nil {
		ix.last = keyIndex(k)
	}
	return ix
}

func putAll(b *bbolt.Bucket, keys, vals [][]byte) error {
	for i, k := range keys {
		if err := b.Put(k, vals[i]); err != nil {
			return err
		}
	}
	return nil
}

// deleteRange deletes the keys in [min, max]. It seeks again after every
// delete instead of calling Next: in bbolt v1.3.x, Cursor.Delete followed
// by Next skips a key when the page was already modified in the same
// transaction (etcd-io/bbolt#146), which is exactly the case when a batch
// holds an append and a delete of one group.
func deleteRange(b *bbolt.Bucket, min, max uint64) error {
	c := b.Cursor()
	from := indexKey(min)
	for k, _ := c.Seek(from); k != nil && keyIndex(k) <= max; k, _ = c.Seek(from) {
		if err := c.Delete(); err != nil {
			return err
		}
	}
	return nil
}

// logBucket returns a group's log bucket, or nil.
func logBucket(tx *bbolt.Tx, group []byte) *bbolt.Bucket {
	if gb := tx.Bucket(bucketGroups).Bucket(group); gb != nil {
		return gb.Bucket(bucketLog)
	}
	return nil
}

// stableBucket returns a group's stable bucket, or nil.
func stableBucket(tx *bbolt.Tx, group []byte) *bbolt.Bucket {
	if gb := tx.Bucket(bucketGroups).Bucket(group); gb != nil {
		return gb.Bucket(bucketStable)
	}
	return nil
}

// SharedLogStats counts the committer's work since the log was opened.
type SharedLogStats struct {
	Commits  uint64        // durable commits
	Requests uint64        // StoreLogs/DeleteRange/Set calls they carried
	Busy     time.Duration // time spent committing
}

// Stats returns the committer's counters.
func (s *SharedLog) Stats() SharedLogStats {
	return SharedLogStats{Commits: s.commits.Load(), Requests: s.requests.Load(), Busy: time.Duration(s.commitNanos.Load())}
}
