package cluster

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"

	"github.com/hashicorp/raft"

	"github.com/quorumq/quorumq/storage"
)

// Identity. A Raft member that lost its log must never answer as the
// member it was: an empty log grants any candidate its vote and accepts
// any leader's entries, and counted as the old member that vote or
// acknowledgement can elect a leader that lacks committed entries (Raft
// dissertation §4.2.1). So every identity this node answers as is bound
// to the state created under it (DESIGN.md, "Identity"):
//
//   - a member's server id is recorded in its group's stable store before
//     Raft first runs on it (serverIDKey, openGroup), and a connection is
//     delivered only to the member whose id it names (transport);
//   - a partition replica's id is "<node>/<epoch>" with an epoch the
//     catalogue never hands out twice, and this node records, per group,
//     the highest epoch it ever created (replica tombstones below), so it
//     never creates an id a second time whatever its catalogue says;
//   - the controller member's id is "<node>/<random>", drawn when its
//     store is created: a lost store means a new id;
//   - the partition state (the state engine, which holds the partition
//     groups' logs) records the data directory's instance: state found
//     missing or foreign makes the node take a new instance, and the
//     controller then replaces every replica it held.

// nodeRecords is the engine's log group holding node-level records. It is
// not a partition group name, so PruneEngineLogs leaves it alone.
const nodeRecords = "node"

var (
	// keyInstance: the data directory's instance, recorded with the
	// partition state it belongs to.
	keyInstance = []byte("instance")
	// keyStartedPrefix + group id: the highest replica epoch this node
	// ever created for the group (8 bytes).
	keyStartedPrefix = "started/"
)

// identities keeps the node-level records of the state engine.
type identities struct {
	rec *storage.EngineLog
	log *slog.Logger
}

// bindInstance returns the data directory's instance after checking it
// against the one recorded with the partition state, and the node's
// identity records. When the partition state is gone although the
// directory is not new (the engine's directory deleted or replaced by an
// empty one), or was written under another instance, the node takes a new
// instance: the cluster then treats it as a node that lost its data.
func bindInstance(dir *storage.Dir, engine *storage.Engine, log *slog.Logger) (string, *identities, error) {
	inst, created, err := dir.Instance()
	if err != nil {
		return "", nil, err
	}
	rec, err := engine.LogGroup(nodeRecords)
	if err != nil {
		return "", nil, err
	}
	ids := &identities{rec: rec, log: log}
	stored, err := rec.Get(keyInstance)
	switch {
	case err != nil && !errors.Is(err, storage.ErrKeyNotFound):
		return "", nil, fmt.Errorf("read the instance of the partition state: %w", err)
	case err == nil && string(stored) == inst:
		return inst, ids, nil
	case err == nil:
		log.Warn("the partition state was written under another instance of this data directory: taking a new instance; the cluster replaces this node's replicas",
			"instance", inst, "state_instance", string(stored))
		if inst, err = dir.RotateInstance(); err != nil {
			return "", nil, err
		}
	case !created:
		// No instance recorded with the partition state. Partition state
		// written before instances were recorded there (an upgrade) is
		// adopted; an empty one, in a directory that was not new, is state
		// that was lost.
		groups, err := engine.LogGroups()
		if err != nil {
			return "", nil, err
		}
		partitions := 0
		for _, g := range groups {
			if name, err := storage.ParseGroupName(g); err == nil && !name.IsController() {
				partitions++
			}
		}
		dirs, err := dir.Groups()
		if err != nil {
			return "", nil, err
		}
		if partitions == 0 {
			if len(dirs) > 0 {
				log.Warn("the partition state is gone but partition directories remain: taking a new instance; the cluster replaces this node's replicas",
					"directories", len(dirs))
			} else {
				log.Info("no partition state recorded yet: taking a new instance")
			}
			if inst, err = dir.RotateInstance(); err != nil {
				return "", nil, err
			}
		}
	}
	if err := rec.Set(keyInstance, []byte(inst)); err != nil {
		return "", nil, fmt.Errorf("record the instance with the partition state: %w", err)
	}
	return inst, ids, nil
}

// setInstance records inst as the instance the partition state belongs to.
func (ids *identities) setInstance(inst string) error {
	if err := ids.rec.Set(keyInstance, []byte(inst)); err != nil {
		return fmt.Errorf("record the instance with the partition state: %w", err)
	}
	return nil
}

// createdEpoch returns the highest replica epoch this node ever created
// for group (0: none).
func (ids *identities) createdEpoch(group storage.GroupName) (uint64, error) {
	v, err := ids.rec.GetUint64([]byte(keyStartedPrefix + group.String()))
	if errors.Is(err, storage.ErrKeyNotFound) {
		return 0, nil
	}
	return v, err
}

// recordCreated durably records that this node creates replica epoch
// epoch of group, before the replica's store records its id.
func (ids *identities) recordCreated(group storage.GroupName, epoch uint64) error {
	have, err := ids.createdEpoch(group)
	if err != nil || have >= epoch {
		return err
	}
	return ids.rec.SetUint64([]byte(keyStartedPrefix+group.String()), epoch)
}

// replicaServerID is the Raft server id of a replica: "<node>/<epoch>", so
// a replica placed again on a node never reuses an old identity.
func replicaServerID(node string, epoch uint64) raft.ServerID {
	return raft.ServerID(node + "/" + strconv.FormatUint(epoch, 10))
}

// epochOfServer is the epoch part of a replica server id, 0 if it has none.
func epochOfServer(id raft.ServerID) uint64 {
	s := string(id)
	i := strings.LastIndexByte(s, '/')
	if i < 0 {
		return 0
	}
	e, err := strconv.ParseUint(s[i+1:], 10, 64)
	if err != nil {
		return 0
	}
	return e
}

// nodeOfServer is the node id part of a server id ("<node>/<suffix>"),
// or the whole id when it has no suffix (a controller member created
// before controller ids had one).
func nodeOfServer(id raft.ServerID) string {
	s := string(id)
	if i := strings.LastIndexByte(s, '/'); i >= 0 {
		return s[:i]
	}
	return s
}

// newControllerServerID draws the server id of a new controller member of
// node: "<node>/<16 random hex digits>".
func newControllerServerID(node string) raft.ServerID {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return raft.ServerID(node + "/" + hex.EncodeToString(b[:]))
}
