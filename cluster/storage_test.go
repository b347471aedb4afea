package cluster

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/quorumq/quorumq/fsm"
	qv1 "github.com/quorumq/quorumq/proto/quorumq/v1"
	"github.com/quorumq/quorumq/storage"
)

// TestFollowerCatchesUpFromStreamedState: a follower cut off while the
// leader's log is compacted past it gets the partition's state streamed
// from the leader's store (an InstallSnapshot of the state as it is, not a
// file copy), then leads and delivers every message.
func TestFollowerCatchesUpFromStreamedState(t *testing.T) {
	c := startClusterWith(t, 3, func(cfg *Config) {
		cfg.trailingLogs = 16
		cfg.snapshotThreshold = 32
	})
	q0, _ := c.client(0)
	ctx := ctxT(t, 120*time.Second)
	if _, err := q0.CreateQueue(ctx, &qv1.CreateQueueRequest{Name: "s", Partitions: 1, Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	leader := -1
	c.waitFor("a partition leader", 30*time.Second, func() bool {
		for i, n := range c.nodes {
			if r, ok := n.replicas.get("s", 0); ok && r.isLeader() {
				leader = i
				return true
			}
		}
		return false
	})
	lag := (leader + 1) % 3
	others := []int{leader, (leader + 2) % 3}
	c.cut([]int{lag}, others)

	const total = 3000
	payload := func(i int) []byte { return append([]byte(strconv.Itoa(i)+":"), bytes.Repeat([]byte{'x'}, 1000)...) }
	qc, _ := c.client(leader)
	for i := 0; i < total; i += 10 {
		var msgs []*qv1.Message
		for j := i; j < i+10; j++ {
			msgs = append(msgs, &qv1.Message{Payload: payload(j)})
		}
		if _, err := qc.Enqueue(ctx, &qv1.EnqueueRequest{Queue: "s", Messages: msgs}); err != nil {
			t.Fatalf("enqueue %d: %v", i, err)
		}
	}
	fr, _ := c.nodes[lag].replicas.get("s", 0)
	// Both members that went on compact their logs past the one cut off,
	// so whichever leads when the link is back must send it state.
	for _, i := range others {
		r, _ := c.nodes[i].replicas.get("s", 0)
		if err := r.g.raft.Snapshot().Error(); err != nil {
			t.Fatalf("n%d snapshot: %v", i+1, err)
		}
		first, err := r.g.store.Log.FirstIndex()
		if err != nil || first <= fr.g.raft.LastIndex() {
			t.Fatalf("n%d's log starts at %d (%v); the follower has up to %d: no snapshot needed", i+1, first, err, fr.g.raft.LastIndex())
		}
	}
	lr, _ := c.nodes[leader].replicas.get("s", 0)
	c.net.Heal()
	// Raft records the installed snapshot just after the FSM restored it.
	c.waitFor("the follower caught up from a snapshot", 60*time.Second, func() bool {
		return fr.fsm.AppliedIndex() >= lr.fsm.AppliedIndex() && fr.g.raft.Stats()["last_snapshot_index"] != "0"
	})
	_, want, _ := lr.fsm.StateChecksum()
	c.waitFor("equal state checksums", 10*time.Second, func() bool {
		_, sf, _ := fr.fsm.StateChecksum()
		_, sl, _ := lr.fsm.StateChecksum()
		want = sl
		return sf == sl
	})

	// The follower leads, and every message comes out of its state.
	c.waitFor("the caught-up follower leads", 30*time.Second, func() bool {
		if fr.isLeader() {
			return true
		}
		for _, i := range others {
			r, _ := c.nodes[i].replicas.get("s", 0)
			if !r.isLeader() {
				continue
			}
			cfg := r.g.raft.GetConfiguration()
			if cfg.Error() != nil {
				return false
			}
			for _, s := range cfg.Configuration().Servers {
				if s.ID == fr.g.id {
					_ = r.g.raft.LeadershipTransferToServer(s.ID, s.Address).Error()
				}
			}
		}
		return fr.isLeader()
	})
	seen := make(map[string]bool, total)
	qf, _ := c.client(lag)
	for len(seen) < total {
		got, err := qf.Receive(ctx, &qv1.ReceiveRequest{Queue: "s", Max: 500, Wait: durationpb.New(2 * time.Second)})
		if err != nil {
			t.Fatal(err)
		}
		if len(got.GetMessages()) == 0 {
			t.Fatalf("nothing more after %d of %d messages", len(seen), total)
		}
		var receipts []string
		for _, m := range got.GetMessages() {
			id, _, _ := bytes.Cut(m.GetPayload(), []byte(":"))
			i, _ := strconv.Atoi(string(id))
			if !bytes.Equal(m.GetPayload(), payload(i)) || seen[string(id)] {
				t.Fatalf("message %s: bad payload or delivered twice", id)
			}
			seen[string(id)] = true
			receipts = append(receipts, m.GetReceipt())
		}
		if _, err := qf.Ack(ctx, &qv1.AckRequest{Queue: "s", Receipts: receipts}); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d messages delivered by the member that caught up from streamed state (checksum %x)", len(seen), want)
}

// TestDiskLowRefusesEnqueues: a node below its free-space watermark makes
// every partition it holds a replica of refuse enqueues with
// RESOURCE_EXHAUSTED before they reach Raft; consumers drain and ack
// meanwhile; /readyz stays ready and says why, the metric too; enqueues
// resume once space is back.
func TestDiskLowRefusesEnqueues(t *testing.T) {
	c := startCluster(t, 3)
	q0, _ := c.client(0)
	ctx := ctxT(t, 60*time.Second)
	if _, err := q0.CreateQueue(ctx, &qv1.CreateQueueRequest{Name: "d", Partitions: 2, Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	var msgs []*qv1.Message
	for i := range 10 {
		msgs = append(msgs, &qv1.Message{Payload: []byte(strconv.Itoa(i))})
	}
	if _, err := q0.Enqueue(ctx, &qv1.EnqueueRequest{Queue: "d", Messages: msgs}); err != nil {
		t.Fatal(err)
	}
	low := c.nodes[2]
	low.minFree.Store(1 << 62)
	low.checkDisk()
	c.waitFor("n1 sees n3 low on disk", 10*time.Second, func() bool {
		for _, m := range c.nodes[0].gossip.members() {
			if m.ID == "n3" {
				return m.DiskLow
			}
		}
		return false
	})
	before := c.nodes[0].replicas.all()[0].fsm.AppliedIndex()
	_, err := q0.Enqueue(ctx, &qv1.EnqueueRequest{Queue: "d", Messages: msgs[:1]})
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "n3 is low on disk space") {
		t.Fatalf("enqueue with n3 low on disk: %v", err)
	}
	// Consumers drain.
	got := 0
	for got < 10 {
		r, err := q0.Receive(ctx, &qv1.ReceiveRequest{Queue: "d", Max: 10, Wait: durationpb.New(time.Second)})
		if err != nil {
			t.Fatalf("receive while disk low: %v", err)
		}
		var receipts []string
		for _, m := range r.GetMessages() {
			receipts = append(receipts, m.GetReceipt())
		}
		if len(receipts) == 0 {
			t.Fatalf("nothing to receive after %d", got)
		}
		if _, err := q0.Ack(ctx, &qv1.AckRequest{Queue: "d", Receipts: receipts}); err != nil {
			t.Fatalf("ack while disk low: %v", err)
		}
		got += len(receipts)
	}
	if after := c.nodes[0].replicas.all()[0].fsm.AppliedIndex(); after < before {
		t.Fatalf("applied index went back: %d -> %d", before, after)
	}
	code, body := httpGet(t, "http://"+low.HTTPAddr()+"/readyz")
	if code != 200 || !strings.Contains(body, "disk low") {
		t.Fatalf("/readyz of the node low on disk: %d %q", code, body)
	}
	_, metrics := httpGet(t, "http://"+low.HTTPAddr()+"/metrics")
	if !strings.Contains(metrics, "\nquorumq_disk_low 1\n") || !strings.Contains(metrics, "quorumq_state_disk_bytes ") {
		t.Fatal("metrics do not say the disk is low")
	}

	low.minFree.Store(0)
	low.checkDisk()
	c.waitFor("enqueues accepted again", 10*time.Second, func() bool {
		_, err := q0.Enqueue(ctx, &qv1.EnqueueRequest{Queue: "d", Messages: msgs[:1]})
		return err == nil
	})
}

// TestUpgradeFromStateInSnapshots: a data directory written before
// partition state was stored (no state engine; the Raft logs in
// partitions.db; the state in the group's Raft snapshots, QQA1-framed
// QQPSNAP1 streams, and the log) is migrated on the first start: the logs
// move into the engine, and each replica restores its newest snapshot into
// the engine and replays the log after it.
func TestUpgradeFromStateInSnapshots(t *testing.T) {
	c := startClusterWith(t, 3, func(cfg *Config) { cfg.trailingLogs, cfg.snapshotThreshold = 16, 1<<20 })
	q0, _ := c.client(0)
	ctx := ctxT(t, 120*time.Second)
	if _, err := q0.CreateQueue(ctx, &qv1.CreateQueueRequest{Name: "u", Partitions: 1, Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	enqueue := func(from, n int) {
		for i := from; i < from+n; i += 10 {
			var msgs []*qv1.Message
			for j := i; j < i+10; j++ {
				msgs = append(msgs, &qv1.Message{Payload: []byte(strconv.Itoa(j))})
			}
			if _, err := q0.Enqueue(ctx, &qv1.EnqueueRequest{Queue: "u", Messages: msgs}); err != nil {
				t.Fatal(err)
			}
		}
	}
	enqueue(0, 500)
	const old = 1 // the node whose directory is made an old release's
	r, _ := c.nodes[old].replicas.get("u", 0)
	c.waitFor("n2 applied everything", 10*time.Second, func() bool {
		lr, _ := c.nodes[0].replicas.get("u", 0)
		return r.fsm.AppliedIndex() >= lr.fsm.AppliedIndex()
	})
	// What the old release wrote as its snapshot: the state as a stream,
	// under the index and configuration Raft records.
	if err := r.g.raft.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	metas, err := r.g.store.Snapshots.List()
	if err != nil || len(metas) == 0 {
		t.Fatalf("snapshots: %v %v", metas, err)
	}
	mark := metas[0]
	size, stream, err := r.fsm.Stream()
	if err != nil {
		t.Fatal(err)
	}
	legacy := new(bytes.Buffer)
	if _, err := legacy.ReadFrom(stream); err != nil || int64(legacy.Len()) != size {
		t.Fatalf("stream: %d bytes of %d, %v", legacy.Len(), size, err)
	}
	stream.Close()
	gdir := filepath.Join(c.cfgs[old].DataDir, r.g.name.Path())
	c.kill(old)
	enqueue(500, 200) // the log goes on past the snapshot while the node is down
	store, err := raft.NewFileSnapshotStoreWithLogger(gdir, 2, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	_, trans := raft.NewInmemTransport("")
	sink, err := store.Create(mark.Version, mark.Index, mark.Term, mark.Configuration, mark.ConfigurationIndex, trans)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sink.Write(legacy.Bytes()); err != nil {
		t.Fatal(err)
	}
	if err := sink.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(gdir, "snapshots", mark.ID)); err != nil {
		t.Fatal(err)
	}
	moveLogsToSharedLog(t, c.cfgs[old].DataDir)

	c.restart(old)
	if _, err := os.Stat(filepath.Join(c.cfgs[old].DataDir, storage.SharedLogFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s after the upgrade: %v", storage.SharedLogFile, err)
	}
	var nr *replica
	c.waitFor("the upgraded replica caught up", 30*time.Second, func() bool {
		var ok bool
		if nr, ok = c.nodes[old].replicas.get("u", 0); !ok {
			return false
		}
		lr, _ := c.nodes[0].replicas.get("u", 0)
		_, a, _ := nr.fsm.StateChecksum()
		_, b, _ := lr.fsm.StateChecksum()
		return nr.fsm.AppliedIndex() >= lr.fsm.AppliedIndex() && a == b
	})
	var s fsm.Stats
	nr.fsm.Read(func(p *fsm.Partition) { s = p.Stats() })
	if s.Ready != 700 {
		t.Fatalf("the upgraded replica holds %d ready messages, want 700", s.Ready)
	}
}

// moveLogsToSharedLog makes a stopped node's directory what the release
// before the engine wrote: every log group of the engine (the partition
// groups' logs and the node's records) copied into partitions.db, and the
// engine deleted.
func moveLogsToSharedLog(t *testing.T, dataDir string) {
	t.Helper()
	stateDir := filepath.Join(dataDir, storage.StateDir)
	e, err := storage.OpenEngine(stateDir, storage.EngineOptions{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	s, err := storage.OpenSharedLog(filepath.Join(dataDir, storage.SharedLogFile), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	groups, err := e.LogGroups()
	if err != nil || len(groups) < 2 {
		t.Fatalf("log groups %q, %v", groups, err)
	}
	for _, id := range groups {
		src, err := e.LogGroup(id)
		if err != nil {
			t.Fatal(err)
		}
		dst, err := s.Group(id)
		if err != nil {
			t.Fatal(err)
		}
		first, _ := src.FirstIndex()
		last, _ := src.LastIndex()
		for i := first; first > 0 && i <= last; i++ {
			l := new(raft.Log)
			if err := src.GetLog(i, l); err != nil {
				t.Fatal(err)
			}
			if err := dst.StoreLog(l); err != nil {
				t.Fatal(err)
			}
		}
		err = src.ForEachStable(func(k, v []byte) error {
			return dst.Set(bytes.Clone(k), bytes.Clone(v))
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := errors.Join(s.Close(), e.Close(), os.RemoveAll(stateDir)); err != nil {
		t.Fatal(err)
	}
}
