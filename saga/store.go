package saga

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
)

// store is one inbox partition's local state store, after Kafka Streams'
// state stores: an LSM on disk (pebble) holding the latest snapshot of each
// saga of the partition, restored from the state topic (its changelog) and
// written after each transaction commits. Closed markers live only here, so
// they cost disk, not heap; the checkpoint, written atomically with the
// data, says where in the changelog the store is, so that a restart reads
// only what changed since.
//
// Keys:
//
//	m/checkpoint        the state topic offset to read from next (8 bytes)
//	o/<saga ID>         an open saga's snapshot
//	c/<saga ID>         a closed marker: its ClosedAt (8 bytes, Unix ms) and snapshot
//	t/<ClosedAt><ID>    the retention index: closed markers by when they closed
type store struct {
	db  *pebble.DB
	dir string
}

var (
	keyCheckpoint = []byte("m/checkpoint")
	prefixOpen    = []byte("o/")
	prefixClosed  = []byte("c/")
	prefixExpiry  = []byte("t/")
)

// openStore opens (creating it if need be) the store in dir.
func openStore(dir string, log *slog.Logger) (*store, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("state store %s: %w", dir, err)
	}
	opts := &pebble.Options{Logger: pebbleLogger{log}}
	for i := range opts.Levels {
		// Most lookups are of new sagas, which no level holds.
		opts.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
	}
	db, err := pebble.Open(dir, opts)
	if err != nil {
		return nil, fmt.Errorf("state store %s: %w (each running instance needs a state directory of its own)", dir, err)
	}
	return &store{db: db, dir: dir}, nil
}

func (s *store) close() error { return s.db.Close() }

// checkpoint returns the state topic offset the store has applied up to
// (0 for a new store).
func (s *store) checkpoint() (int64, error) {
	v, closer, err := s.db.Get(keyCheckpoint)
	if errors.Is(err, pebble.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("state store %s: %w", s.dir, err)
	}
	defer closer.Close()
	if len(v) != 8 {
		return 0, fmt.Errorf("state store %s: checkpoint is %d bytes, not 8: delete the directory to restore it from the state topic", s.dir, len(v))
	}
	return int64(binary.BigEndian.Uint64(v)), nil
}

// wipe empties the store, for a restore from the changelog's start.
func (s *store) wipe() error {
	if err := s.db.DeleteRange([]byte{0}, []byte{0xff}, pebble.NoSync); err != nil {
		return fmt.Errorf("state store %s: %w", s.dir, err)
	}
	return nil
}

// closedMarker returns the closed marker of saga id, if the store has one.
func (s *store) closedMarker(id string) (snapshot []byte, closedAt time.Time, ok bool, err error) {
	v, closer, err := s.db.Get(key(prefixClosed, id))
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, time.Time{}, false, nil
	}
	if err != nil {
		return nil, time.Time{}, false, fmt.Errorf("state store %s: %w", s.dir, err)
	}
	defer closer.Close()
	if len(v) < 8 {
		return nil, time.Time{}, false, fmt.Errorf("state store %s: closed marker of %q is truncated: delete the directory to restore it from the state topic", s.dir, id)
	}
	return append([]byte(nil), v[8:]...), time.UnixMilli(int64(binary.BigEndian.Uint64(v))), true, nil
}

// eachOpen calls fn with every open saga's snapshot.
func (s *store) eachOpen(fn func(id string, snapshot []byte) error) error {
	return s.each(prefixOpen, func(k, v []byte) error { return fn(string(k[len(prefixOpen):]), v) })
}

func (s *store) each(prefix []byte, fn func(k, v []byte) error) error {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: prefixEnd(prefix)})
	if err != nil {
		return fmt.Errorf("state store %s: %w", s.dir, err)
	}
	for it.First(); it.Valid(); it.Next() {
		if err := fn(it.Key(), it.Value()); err != nil {
			_ = it.Close()
			return err
		}
	}
	if err := it.Close(); err != nil {
		return fmt.Errorf("state store %s: %w", s.dir, err)
	}
	return nil
}

// expiredMarker is a closed marker whose retention has ended.
type expiredMarker struct {
	id       string
	closedAt time.Time
}

// expired returns up to limit closed markers that closed before cutoff,
// oldest first.
func (s *store) expired(cutoff time.Time, limit int) ([]expiredMarker, error) {
	var out []expiredMarker
	stop := errors.New("enough")
	err := s.each(prefixExpiry, func(k, _ []byte) error {
		at := time.UnixMilli(int64(binary.BigEndian.Uint64(k[len(prefixExpiry):])))
		if !at.Before(cutoff) || len(out) == limit {
			return stop
		}
		out = append(out, expiredMarker{id: string(k[len(prefixExpiry)+8:]), closedAt: at})
		return nil
	})
	if err != nil && !errors.Is(err, stop) {
		return nil, err
	}
	return out, nil
}

// change is what a state record does to the store.
type change struct {
	id       string
	kind     string // snapshotOpen, snapshotClosed, or "" for a tombstone
	value    []byte
	closedAt time.Time
}

// write applies changes in order and moves the checkpoint to next, in one
// atomic batch. It does not sync: the changelog is the truth, and after a
// crash the store is restored from the checkpoint it kept.
func (s *store) write(changes []change, next int64) error {
	b := s.db.NewIndexedBatch()
	defer b.Close()
	for _, c := range changes {
		if err := s.stage(b, c); err != nil {
			return err
		}
	}
	var cp [8]byte
	binary.BigEndian.PutUint64(cp[:], uint64(next))
	if err := b.Set(keyCheckpoint, cp[:], nil); err != nil {
		return err
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		return fmt.Errorf("state store %s: %w", s.dir, err)
	}
	return nil
}

func (s *store) stage(b *pebble.Batch, c change) error {
	open, closed := key(prefixOpen, c.id), key(prefixClosed, c.id)
	// A closed marker that is replaced or removed takes its index entry along.
	old, closer, err := b.Get(closed)
	switch {
	case err == nil:
		if len(old) >= 8 {
			at := int64(binary.BigEndian.Uint64(old))
			if err := b.Delete(expiryKey(time.UnixMilli(at), c.id), nil); err != nil {
				_ = closer.Close()
				return err
			}
		}
		_ = closer.Close()
	case !errors.Is(err, pebble.ErrNotFound):
		return fmt.Errorf("state store %s: %w", s.dir, err)
	}
	switch c.kind {
	case snapshotOpen:
		return errors.Join(b.Delete(closed, nil), b.Set(open, c.value, nil))
	case snapshotClosed:
		v := make([]byte, 8+len(c.value))
		binary.BigEndian.PutUint64(v, uint64(c.closedAt.UnixMilli()))
		copy(v[8:], c.value)
		return errors.Join(b.Delete(open, nil), b.Set(closed, v, nil), b.Set(expiryKey(c.closedAt, c.id), nil, nil))
	default:
		return errors.Join(b.Delete(open, nil), b.Delete(closed, nil))
	}
}

func key(prefix []byte, id string) []byte {
	return append(append(make([]byte, 0, len(prefix)+len(id)), prefix...), id...)
}

func expiryKey(at time.Time, id string) []byte {
	k := make([]byte, len(prefixExpiry)+8, len(prefixExpiry)+8+len(id))
	copy(k, prefixExpiry)
	binary.BigEndian.PutUint64(k[len(prefixExpiry):], uint64(at.UnixMilli()))
	return append(k, id...)
}

// prefixEnd is the first key after every key that starts with prefix.
func prefixEnd(prefix []byte) []byte {
	end := append([]byte(nil), prefix...)
	end[len(end)-1]++
	return end
}

// pebbleLogger sends pebble's errors to the runtime's logger and drops its
// informational lines.
type pebbleLogger struct{ log *slog.Logger }

func (l pebbleLogger) Infof(string, ...any) {}
func (l pebbleLogger) Errorf(format string, args ...any) {
	l.log.Error("state store: " + fmt.Sprintf(format, args...))
}
func (l pebbleLogger) Fatalf(format string, args ...any) {
	l.log.Error("state store: " + fmt.Sprintf(format, args...))
	os.Exit(1)
}
