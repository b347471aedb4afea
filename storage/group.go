package storage

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// maxQueueNameBytes keeps a queue's directory name within NAME_MAX (255)
// on every file system we run on.
const maxQueueNameBytes = 255

type groupKind uint8

const (
	kindController groupKind = iota + 1
	kindPartition
)

// GroupName names one Raft group hosted on a node: the controller, or one
// partition of one incarnation of a queue. It is comparable and can be a
// map key. The zero GroupName is invalid.
type GroupName struct {
	kind      groupKind
	queue     string
	queueID   uint64
	partition uint32
}

// ControllerGroup returns the name of the controller group, stored in
// <dir>/controller/.
func ControllerGroup() GroupName { return GroupName{kind: kindController} }

// PartitionGroup returns the name of partition partition of the queue named
// queue whose catalogue id is queueID, stored in
// <dir>/partitions/<queue>/<partition>/. The id is not part of the path: it
// is kept in the group's marker file so that a queue deleted and re-created
// under the same name (new id) never opens the old incarnation's log.
//
// PartitionGroup does not validate queue; OpenGroup and RemoveGroup do
// (ErrInvalidGroup), as does Validate.
func PartitionGroup(queue string, queueID uint64, partition uint32) GroupName {
	return GroupName{kind: kindPartition, queue: queue, queueID: queueID, partition: partition}
}

// IsController reports whether g is the controller group.
func (g GroupName) IsController() bool { return g.kind == kindController }

// Queue returns a partition group's queue name ("" for the controller).
func (g GroupName) Queue() string { return g.queue }

// QueueID returns a partition group's queue id (0 for the controller).
func (g GroupName) QueueID() uint64 { return g.queueID }

// Partition returns a partition group's partition number (0 for the
// controller).
func (g GroupName) Partition() uint32 { return g.partition }

// String returns the group's stable id, used as the Raft group id on the
// wire: "controller" or "q/<queue>/<queueID>/<partition>". ParseGroupName
// reverses it. It includes the queue id, so traffic for an old incarnation
// of a queue never reaches the new one.
func (g GroupName) String() string {
	switch g.kind {
	case kindController:
		return "controller"
	case kindPartition:
		return "q/" + g.queue + "/" + strconv.FormatUint(g.queueID, 10) + "/" + strconv.FormatUint(uint64(g.partition), 10)
	default:
		return "invalid"
	}
}

// Path returns the group's directory relative to the data directory, in
// the OS's separator, or "" if g is invalid (so a bad name can never be
// joined into a path that escapes the data directory).
func (g GroupName) Path() string {
	if g.Validate() != nil {
		return ""
	}
	if g.kind == kindController {
		return controllerDir
	}
	return filepath.Join(partitionsDir, g.queue, strconv.FormatUint(uint64(g.partition), 10))
}

// Validate returns an error wrapping ErrInvalidGroup unless g is the
// controller or a partition whose queue name is a single, ordinary path
// element: not empty, ".", or "..", no '/', '\\' or NUL, at most 255 bytes.
// The caller validates queue names against its own rules too; this check
// only guarantees that no name escapes the data directory.
func (g GroupName) Validate() error {
	switch g.kind {
	case kindController:
		return nil
	case kindPartition:
		q := g.queue
		switch {
		case q == "", q == ".", q == "..":
			return fmt.Errorf("%w: queue name %q", ErrInvalidGroup, q)
		case len(q) > maxQueueNameBytes:
			return fmt.Errorf("%w: queue name longer than %d bytes", ErrInvalidGroup, maxQueueNameBytes)
		case strings.ContainsAny(q, "/\\\x00"):
			return fmt.Errorf("%w: queue name %q contains a path separator or NUL", ErrInvalidGroup, q)
		}
		return nil
	default:
		return fmt.Errorf("%w: zero GroupName", ErrInvalidGroup)
	}
}

// ParseGroupName parses the output of GroupName.String, for example a Raft
// group id received from a peer. The result is valid.
func ParseGroupName(s string) (GroupName, error) {
	if s == "controller" {
		return ControllerGroup(), nil
	}
	parts := strings.Split(s, "/")
	if len(parts) != 4 || parts[0] != "q" {
		return GroupName{}, fmt.Errorf("%w: %q", ErrInvalidGroup, s)
	}
	id, err1 := parseCanonicalUint(parts[2], 64)
	p, err2 := parseCanonicalUint(parts[3], 32)
	if err1 != nil || err2 != nil {
		return GroupName{}, fmt.Errorf("%w: %q", ErrInvalidGroup, s)
	}
	g := PartitionGroup(parts[1], id, uint32(p))
	if err := g.Validate(); err != nil {
		return GroupName{}, err
	}
	return g, nil
}

// parseCanonicalUint accepts only the form strconv.FormatUint produces
// (no sign, no leading zeros), so one group has one spelling.
func parseCanonicalUint(s string, bits int) (uint64, error) {
	n, err := strconv.ParseUint(s, 10, bits)
	if err != nil {
		return 0, err
	}
	if strconv.FormatUint(n, 10) != s {
		return 0, fmt.Errorf("not canonical: %q", s)
	}
	return n, nil
}

// markerFile is written in every group directory before any Raft state, so
// a directory without one holds no state.
const markerFile = "group.json"

// marker is the content of group.json.
type marker struct {
	Version   int    `json:"version"`
	Group     string `json:"group"`
	Queue     string `json:"queue,omitempty"`
	QueueID   uint64 `json:"queue_id,omitempty"`
	Partition uint32 `json:"partition,omitempty"`
}

const markerVersion = 1

func markerFor(g GroupName) marker {
	return marker{Version: markerVersion, Group: g.String(), Queue: g.queue, QueueID: g.queueID, Partition: g.partition}
}

// readMarker reads the marker in groupDir. It returns os.ErrNotExist (wrapped)
// when there is none.
func readMarker(groupDir string) (GroupName, error) {
	p := filepath.Join(groupDir, markerFile)
	b, err := os.ReadFile(p)
	if err != nil {
		return GroupName{}, err
	}
	var m marker
	if err := json.Unmarshal(b, &m); err != nil {
		return GroupName{}, fmt.Errorf("storage: %s is corrupt: %w", p, err)
	}
	if m.Version != markerVersion {
		return GroupName{}, fmt.Errorf("storage: %s has unknown version %d", p, m.Version)
	}
	g, err := ParseGroupName(m.Group)
	if err != nil {
		return GroupName{}, fmt.Errorf("storage: %s: %w", p, err)
	}
	if markerFor(g) != m {
		return GroupName{}, fmt.Errorf("storage: %s is inconsistent", p)
	}
	return g, nil
}

// checkMarker makes groupDir's marker say g, writing it if the directory
// holds no state yet. It returns an error wrapping ErrGroupMismatch if the
// directory holds another group (e.g. an older incarnation of the queue).
func checkMarker(groupDir string, g GroupName) error {
	have, err := readMarker(groupDir)
	switch {
	case err == nil:
		if have != g {
			return fmt.Errorf("%w: %s holds %s, want %s", ErrGroupMismatch, groupDir, have, g)
		}
		return nil
	case errors.Is(err, os.ErrNotExist):
		// No marker: either a fresh directory, or a crash between mkdir and
		// writing the marker. Raft state without a marker cannot come from
		// us (the marker is written first), so refuse to adopt it.
		for _, f := range []string{boltFile, snapshotsDir} {
			if _, err := os.Lstat(filepath.Join(groupDir, f)); err == nil {
				return fmt.Errorf("%w: %s has Raft state but no %s", ErrGroupMismatch, groupDir, markerFile)
			}
		}
		b, err := json.Marshal(markerFor(g))
		if err != nil {
			return err
		}
		return writeFileAtomic(filepath.Join(groupDir, markerFile), append(b, '\n'))
	default:
		return err
	}
}
