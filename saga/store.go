package saga

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	"github.com/cockroachdb/pebble/v2/sstable"
	"github.com/cockroachdb/pebble/v2/vfs"
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
//	m/checkpoint        the state topic offset to read from next and when it was written (8 + 8 bytes)
//	o/<saga ID>         an open saga's snapshot
//	c/<saga ID>         a closed marker: its ClosedAt (8 bytes, Unix ms) and snapshot
//
// There is no index by ClosedAt: a restore writes every closed marker of
// the partition, and an index would double that; the expiry sweep scans
// the closed markers instead, rarely.
type store struct {
	db   *pebble.DB
	opts *pebble.Options
	dir  string
	// ingested numbers the tables ingest wrote; opened holds the sagas an
	// ingest set open, for which a later one must delete the open entry;
	// arena and ops are ingest's buffers, kept from one call to the next
	// of a restore (endRestore drops them).
	ingested int
	opened   map[string]bool
	arena    []byte
	ops      []op
	// behind holds what writeBehind was given and pebble has not been
	// written yet: the latest change of each saga, to checkpoint
	// behindNext, since behindSince. Reads look here first.
	behind      map[string]change
	behindBytes int // of the values behind
	behindNext  int64
	behindSince time.Time
	now         func() time.Time // the wall clock; tests move it
}

// Write-behind: a running partition's changes reach pebble together, at
// most behindFor after the first of them, or once behindMax sagas have
// changed or behindMaxBytes of snapshots wait (a burst of new sagas holds
// no more than that in memory). A saga that changes several times meanwhile (every hop writes
// its snapshot, and most sagas close within a few hundred milliseconds) is
// written once, in one batch: about a third of the entries pebble took
// when each transaction wrote its own (measured in the orders saga), and
// none of its write stalls in the batch loop in between.
const (
	behindFor      = 200 * time.Millisecond
	behindMax      = 8192
	behindMaxBytes = 256 << 10
	// flushBatchBytes bounds one pebble batch of a flush: its write-ahead
	// log keeps as many 32 KiB blocks as the largest batch queued, for as
	// long as the log file lives (measured: 1 MiB batches held about 1 MiB
	// per store).
	flushBatchBytes = 64 << 10
)

// op is one key of a table ingest writes.
type op struct {
	key, value []byte
	// closedAt, for a closed marker, is written before its value.
	closedAt int64
	seq      int // the order of ops on one key, for the sort
	closed   bool
	del      bool
}

// endRestore drops what ingest kept between its calls.
func (s *store) endRestore() { s.opened, s.arena, s.ops = nil, nil, nil }

var (
	keyCheckpoint = []byte("m/checkpoint")
	prefixOpen    = []byte("o/")
	prefixClosed  = []byte("c/")
)

// openStore opens (creating it if need be) the store in dir.
func openStore(dir string, log *slog.Logger) (*store, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("state store %s: %w", dir, err)
	}
	// Snapshots are small Avro records that compress little: a restore on
	// a fresh machine, which writes every closed marker of the partition,
	// is faster without.
	opts := &pebble.Options{Logger: pebbleLogger{log}}
	for i := range opts.Levels {
		// Most lookups are of new sagas, which no level holds.
		opts.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
		opts.Levels[i].Compression = func() *sstable.CompressionProfile { return sstable.NoCompression }
	}
	db, err := pebble.Open(dir, opts)
	if err != nil {
		return nil, fmt.Errorf("state store %s: %w (each running instance needs a state directory of its own)", dir, err)
	}
	return &store{db: db, opts: opts, dir: dir, now: time.Now}, nil
}

// close writes what is behind, then closes the store.
func (s *store) close() error { return errors.Join(s.flush(), s.db.Close()) }

// checkpoint returns the state topic offset the store has applied up to
// (0 for a new store) and when that was written.
//
// A store at 0 is empty: a restore from the changelog's start ingests
// into it, which assumes so. One that holds sagas without a checkpoint
// past 0 is wiped: a crash after a flush's first batches, before the
// checkpoint's, leaves it so (or one between an ingest and its
// checkpoint), and what it holds may be sagas the changelog has since
// closed or removed.
func (s *store) checkpoint() (int64, time.Time, error) {
	if err := s.flush(); err != nil {
		return 0, time.Time{}, err
	}
	from, written, err := s.readCheckpoint()
	if err != nil || from > 0 {
		return from, written, err
	}
	empty, err := s.empty()
	if err == nil && !empty {
		err = s.wipe()
	}
	return 0, time.Time{}, err
}

func (s *store) readCheckpoint() (int64, time.Time, error) {
	v, closer, err := s.db.Get(keyCheckpoint)
	if errors.Is(err, pebble.ErrNotFound) {
		return 0, time.Time{}, nil
	}
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("state store %s: %w", s.dir, err)
	}
	defer closer.Close()
	if len(v) != 16 {
		return 0, time.Time{}, fmt.Errorf("state store %s: checkpoint is %d bytes, not 16: delete the directory to restore it from the state topic", s.dir, len(v))
	}
	return int64(binary.BigEndian.Uint64(v)), time.UnixMilli(int64(binary.BigEndian.Uint64(v[8:]))), nil
}

// empty reports whether the store holds no saga, open or closed.
func (s *store) empty() (bool, error) {
	for _, prefix := range [][]byte{prefixOpen, prefixClosed} {
		it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: prefixEnd(prefix)})
		if err != nil {
			return false, fmt.Errorf("state store %s: %w", s.dir, err)
		}
		found := it.First()
		if err := it.Close(); err != nil {
			return false, fmt.Errorf("state store %s: %w", s.dir, err)
		}
		if found {
			return false, nil
		}
	}
	return true, nil
}

// wipe empties the store, for a restore from the changelog's start.
func (s *store) wipe() error {
	s.behind, s.behindBytes = nil, 0
	if err := s.db.DeleteRange([]byte{0}, []byte{0xff}, pebble.NoSync); err != nil {
		return fmt.Errorf("state store %s: %w", s.dir, err)
	}
	return nil
}

// closedMarker returns the closed marker of saga id, if the store has one.
// A marker still behind comes back as it is, not copied: nothing writes
// into a snapshot's encoding once made.
func (s *store) closedMarker(id string) (snapshot []byte, closedAt time.Time, ok bool, err error) {
	if c, behind := s.behind[id]; behind {
		if c.kind != snapshotClosed {
			return nil, time.Time{}, false, nil // open, or tombstoned
		}
		return c.value, c.closedAt, true, nil
	}
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
	if err := s.flush(); err != nil {
		return err
	}
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

// expired returns up to limit closed markers that closed before cutoff.
func (s *store) expired(cutoff time.Time, limit int) ([]expiredMarker, error) {
	var out []expiredMarker
	stop := errors.New("enough")
	err := s.each(prefixClosed, func(k, v []byte) error {
		if len(v) < 8 {
			return fmt.Errorf("state store %s: closed marker %q is truncated: delete the directory to restore it from the state topic", s.dir, k)
		}
		if at := time.UnixMilli(int64(binary.BigEndian.Uint64(v))); at.Before(cutoff) {
			out = append(out, expiredMarker{id: string(k[len(prefixClosed):]), closedAt: at})
		}
		if len(out) == limit {
			return stop
		}
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

// writeBehind applies changes in order and moves the checkpoint to next,
// as write does, but in memory first: see behindFor. The changes' IDs and
// values must stay as they are (a batch's, not a fetched record's memory).
// Every read of the store sees them.
func (s *store) writeBehind(changes []change, next int64) error {
	if s.behind == nil {
		s.behind = make(map[string]change, len(changes))
	}
	if len(s.behind) == 0 {
		s.behindSince = s.now()
	}
	for _, c := range changes {
		if old, ok := s.behind[c.id]; ok {
			s.behindBytes -= len(old.value)
		}
		s.behind[c.id] = c
		s.behindBytes += len(c.value)
	}
	s.behindNext = next
	if len(s.behind) >= behindMax || s.behindBytes >= behindMaxBytes {
		return s.flush()
	}
	return nil
}

// flushDue reports when what is behind is due to be written: never
// (ok false) when nothing is.
func (s *store) flushDue() (at time.Time, ok bool) {
	if len(s.behind) == 0 {
		return time.Time{}, false
	}
	return s.behindSince.Add(behindFor), true
}

// flush writes what is behind, in batches of up to flushBatchBytes, the
// last with the checkpoint. A batch written before it may leave the store
// ahead of its checkpoint after a crash, which is harmless: a restore
// applies the state topic from the checkpoint on, in order, and the last
// change of each saga wins.
func (s *store) flush() error {
	if len(s.behind) == 0 {
		return nil
	}
	b := s.db.NewBatch()
	for _, c := range s.behind {
		if err := stage(b, c); err != nil {
			b.Close()
			return fmt.Errorf("state store %s: %w", s.dir, err)
		}
		if b.Len() >= flushBatchBytes {
			err := b.Commit(pebble.NoSync)
			b.Close()
			if err != nil {
				return fmt.Errorf("state store %s: %w", s.dir, err)
			}
			b = s.db.NewBatch()
		}
	}
	err := s.commit(b, s.behindNext)
	b.Close()
	if err != nil {
		return err
	}
	if len(s.behind) > 1024 {
		s.behind = nil // a map keeps the room it grew to: let a burst's go
	} else {
		clear(s.behind)
	}
	s.behindBytes = 0
	return nil
}

// write applies changes in order and moves the checkpoint to next, in one
// atomic batch. It does not sync: the changelog is the truth, and after a
// crash the store is restored from the checkpoint it kept. It only writes:
// a restore moves millions of records through it.
func (s *store) write(changes []change, next int64) error {
	if err := s.flush(); err != nil {
		return err
	}
	b := s.db.NewBatch()
	defer b.Close()
	for _, c := range changes {
		if err := stage(b, c); err != nil {
			return fmt.Errorf("state store %s: %w", s.dir, err)
		}
	}
	return s.commit(b, next)
}

// commit adds the checkpoint next to b and commits it.
func (s *store) commit(b *pebble.Batch, next int64) error {
	var cp [16]byte
	binary.BigEndian.PutUint64(cp[:], uint64(next))
	binary.BigEndian.PutUint64(cp[8:], uint64(time.Now().UnixMilli()))
	if err := b.Set(keyCheckpoint, cp[:], nil); err != nil {
		return err
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		return fmt.Errorf("state store %s: %w", s.dir, err)
	}
	return nil
}

// ingest is write for a store restored from the changelog's start: the
// changes become a sorted table that is added to the LSM as it is, with no
// write-ahead log, memtable or flush on the way (several times faster for
// the millions of closed markers of a fresh machine's restore). Later
// ingests shadow earlier ones, as later writes do. The store must have
// been empty when the first ingest began.
func (s *store) ingest(changes []change, next int64) error {
	if s.opened == nil {
		s.opened = map[string]bool{}
	}
	ops := s.ops[:0]
	// Keys and values are carved from one buffer per call: a restore
	// stages millions of them, and small allocations cost it more than
	// the table it writes.
	size := 0
	for _, c := range changes {
		size += 2 * (len(prefixOpen) + len(c.id))
	}
	if cap(s.arena) < size {
		s.arena = make([]byte, 0, size)
	}
	arena := s.arena[:0]
	keyOf := func(prefix []byte, id string) []byte {
		start := len(arena)
		arena = append(append(arena, prefix...), id...)
		return arena[start:len(arena):len(arena)]
	}
	for _, c := range changes {
		switch c.kind {
		case snapshotOpen:
			ops = append(ops, op{key: keyOf(prefixOpen, c.id), value: c.value}, op{key: keyOf(prefixClosed, c.id), del: true})
			s.opened[strings.Clone(c.id)] = true // c.id is the fetched record's memory, recycled once written
		case snapshotClosed:
			// Most markers are of sagas that closed before the log's
			// start (compaction kept their last record only): there is no
			// open entry to delete.
			if s.opened[c.id] {
				ops = append(ops, op{key: keyOf(prefixOpen, c.id), del: true})
				delete(s.opened, c.id)
			}
			ops = append(ops, op{key: keyOf(prefixClosed, c.id), value: c.value, closedAt: c.closedAt.UnixMilli(), closed: true})
		default:
			ops = append(ops, op{key: keyOf(prefixOpen, c.id), del: true}, op{key: keyOf(prefixClosed, c.id), del: true})
		}
	}
	// Sorted by key, the last change of a key winning.
	for i := range ops {
		ops[i].seq = i
	}
	slices.SortFunc(ops, func(a, b op) int {
		if c := bytes.Compare(a.key, b.key); c != 0 {
			return c
		}
		return a.seq - b.seq
	})
	s.ops, s.arena = ops[:0], arena[:0]
	path := filepath.Join(s.dir, fmt.Sprintf("restore-%06d.sst", s.ingested))
	s.ingested++
	f, err := vfs.Default.Create(path, vfs.WriteCategoryUnspecified)
	if err != nil {
		return fmt.Errorf("state store %s: %w", s.dir, err)
	}
	w := sstable.NewWriter(newTableFile(f), s.opts.MakeWriterOptions(0, s.db.TableFormat()))
	var marker []byte // a closed marker's value, written through: the writer copies it
	for i, o := range ops {
		if i+1 < len(ops) && bytes.Equal(o.key, ops[i+1].key) {
			continue // shadowed
		}
		switch {
		case o.del:
			err = w.Delete(o.key)
		case o.closed:
			marker = append(binary.BigEndian.AppendUint64(marker[:0], uint64(o.closedAt)), o.value...)
			err = w.Set(o.key, marker)
		default:
			err = w.Set(o.key, o.value)
		}
		if err != nil {
			_ = w.Close()
			return fmt.Errorf("state store %s: %w", s.dir, err)
		}
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("state store %s: %w", s.dir, err)
	}
	if err := s.db.Ingest(context.Background(), []string{path}); err != nil {
		return fmt.Errorf("state store %s: %w", s.dir, err)
	}
	_ = os.Remove(path) // ingest links it into the store
	return s.write(nil, next)
}

// tableFile is where ingest writes a table: pebble's own file writer
// buffers 4 KiB (a system call per block); a restore writes tens of MiB.
type tableFile struct {
	f  vfs.File
	bw *bufio.Writer
}

func newTableFile(f vfs.File) *tableFile { return &tableFile{f: f, bw: bufio.NewWriterSize(f, 1<<20)} }

func (t *tableFile) Write(p []byte) error {
	_, err := t.bw.Write(p)
	return err
}

func (t *tableFile) Finish() error {
	err := t.bw.Flush()
	if err == nil {
		err = t.f.Sync()
	}
	return errors.Join(err, t.f.Close())
}

func (t *tableFile) Abort() { _ = t.f.Close() }

func closedValue(c change) []byte {
	v := make([]byte, 8+len(c.value))
	binary.BigEndian.PutUint64(v, uint64(c.closedAt.UnixMilli()))
	copy(v[8:], c.value)
	return v
}

func stage(b *pebble.Batch, c change) error {
	open, closed := key(prefixOpen, c.id), key(prefixClosed, c.id)
	switch c.kind {
	case snapshotOpen:
		return errors.Join(b.Delete(closed, nil), b.Set(open, c.value, nil))
	case snapshotClosed:
		return errors.Join(b.Delete(open, nil), b.Set(closed, closedValue(c), nil))
	default:
		return errors.Join(b.Delete(open, nil), b.Delete(closed, nil))
	}
}

func key(prefix []byte, id string) []byte {
	return append(append(make([]byte, 0, len(prefix)+len(id)), prefix...), id...)
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
