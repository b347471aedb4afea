package storage

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/hashicorp/raft"
)

// Moving the shared log into the engine. Releases before the Raft logs
// moved into the state engine kept them in <data-dir>/partitions.db (a
// SharedLog); a node of this release moves them into its engine once, at
// start-up, in two steps so that a crash at any point leaves a directory
// that starts again correctly:
//
//  1. MigrateSharedLog copies every group of partitions.db (the partition
//     groups' logs and stable stores, and the node's own records) into the
//     engine, each group dropped from the engine first and then written
//     with synced batches: a copy interrupted by a crash is redone whole.
//  2. The node checks what it must with the copied records (its instance,
//     with the engine's novelty, which MigrateSharedLog reports), then
//     FinishSharedLogMigration deletes partitions.db durably.
//
// Until step 2 the file is the source of truth, so repeating step 1 after
// a crash loses nothing. Whether the engine was new when the migration
// first began (its state lost, or a release before the engine) is kept in
// the engine under migrationGroup, because the engine's directory exists
// after the first attempt.
const (
	migrationGroup = "migration"
	keyEngineNew   = "engine-new"
	// migrateBatchEntries and migrateBatchBytes bound one copied batch.
	migrateBatchEntries = 1024
	migrateBatchBytes   = 8 << 20
)

// Migration says what MigrateSharedLog did.
type Migration struct {
	// Groups is how many groups were copied; 0 when there was no
	// partitions.db (nothing to do).
	Groups int
	// Pending: partitions.db was there and is copied; call
	// FinishSharedLogMigration after the checks that need to know.
	Pending bool
	// EngineWasNew: the engine was new (created by this start-up, or by the
	// start-up whose migration a crash interrupted) when the migration
	// began.
	EngineWasNew bool
}

// MigrateSharedLog copies the shared log partitions.db, if the directory
// has one, into e (step 1 above). engineNew says whether e was created by
// this start-up. Group ids the engine cannot hold (NUL bytes; never
// written by quorumq) are an error.
func (d *Dir) MigrateSharedLog(e *Engine, engineNew bool, log *slog.Logger) (Migration, error) {
	if log == nil {
		log = slog.Default()
	}
	path := filepath.Join(d.path, SharedLogFile)
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return Migration{}, nil
	} else if err != nil {
		return Migration{}, fmt.Errorf("storage: migrate %s: %w", SharedLogFile, err)
	}
	mark, err := e.LogGroup(migrationGroup)
	if err != nil {
		return Migration{}, err
	}
	m := Migration{Pending: true, EngineWasNew: engineNew}
	if engineNew {
		if err := mark.SetUint64([]byte(keyEngineNew), 1); err != nil {
			return Migration{}, fmt.Errorf("storage: migrate %s: %w", SharedLogFile, err)
		}
	} else if _, err := mark.GetUint64([]byte(keyEngineNew)); err == nil {
		m.EngineWasNew = true
	} else if !errors.Is(err, ErrKeyNotFound) {
		return Migration{}, err
	}
	s, err := d.OpenSharedLog(log)
	if err != nil {
		return Migration{}, err
	}
	ids, err := s.Groups()
	if err == nil {
		for _, id := range ids {
			if err = copyLogGroup(s, e, id); err != nil {
				break
			}
			m.Groups++
		}
	}
	if err = errors.Join(err, s.Close()); err != nil {
		return Migration{}, fmt.Errorf("storage: migrate %s: %w", SharedLogFile, err)
	}
	log.Info("copied the Raft logs of partitions.db into the state engine", "groups", m.Groups)
	return m, nil
}

// copyLogGroup replaces group id's log and stable store in e with those in
// s.
func copyLogGroup(s *SharedLog, e *Engine, id string) error {
	if id == migrationGroup {
		return fmt.Errorf("%w: %q is reserved", ErrInvalidGroup, id)
	}
	if err := e.DropLogGroup(id); err != nil {
		return err
	}
	src, err := s.Group(id)
	if err != nil {
		return err
	}
	dst, err := e.LogGroup(id)
	if err != nil {
		return err
	}
	first, _ := src.FirstIndex()
	last, _ := src.LastIndex()
	var batch []*raft.Log
	size := 0
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		err := dst.StoreLogs(batch)
		batch, size = batch[:0], 0
		return err
	}
	for i := first; first > 0 && i <= last; i++ {
		l := new(raft.Log)
		switch err := src.GetLog(i, l); {
		case errors.Is(err, raft.ErrLogNotFound):
			continue // a gap: the log allows them
		case err != nil:
			return fmt.Errorf("group %s entry %d: %w", id, i, err)
		}
		batch = append(batch, l)
		size += len(l.Data) + len(l.Extensions)
		if len(batch) >= migrateBatchEntries || size >= migrateBatchBytes {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := flush(); err != nil {
		return err
	}
	return src.ForEachStable(func(k, v []byte) error {
		return dst.Set(append([]byte(nil), k...), append([]byte(nil), v...))
	})
}

// FinishSharedLogMigration deletes partitions.db durably (step 2 above),
// then the engine's record of the migration.
func (d *Dir) FinishSharedLogMigration(e *Engine) error {
	path := filepath.Join(d.path, SharedLogFile)
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("storage: remove %s: %w", SharedLogFile, err)
	}
	if err := syncDir(d.path); err != nil {
		return fmt.Errorf("storage: remove %s: %w", SharedLogFile, err)
	}
	return e.DropLogGroup(migrationGroup)
}
