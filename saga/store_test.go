package saga

import (
	"bytes"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/cockroachdb/pebble/v2"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/dlq"
)

// storeContents returns every key and value but the checkpoint.
func storeContents(t *testing.T, s *store) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, prefix := range [][]byte{prefixOpen, prefixClosed} {
		err := s.each(prefix, func(k, v []byte) error {
			out[string(k)] = string(v)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// Ingesting a changelog in sorted tables leaves the store exactly as
// writing it change by change does, and as a model map says: the last
// change of a saga wins across chunks, opens become closed markers, and
// tombstones remove both. Each change's ID and value are scribbled over
// once its chunk is written, as a restore recycles fetched records: the
// stores keep copies of what they need. A store written behind, from a
// batch's changes and flushed now and then, ends the same.
func TestStoreIngestEqualsWrite(t *testing.T) {
	for seed := range uint64(20) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 1))
			var changes []change
			model := map[string]string{}
			for i := range 2000 {
				id := fmt.Sprintf("saga-%03d", rng.IntN(300))
				c := change{id: recycled(id)}
				switch rng.IntN(3) {
				case 0:
					c.kind, c.value = snapshotOpen, []byte(fmt.Sprintf("open %d", i))
					delete(model, "c/"+id)
					model["o/"+id] = string(c.value)
				case 1:
					c.kind, c.value, c.closedAt = snapshotClosed, []byte(fmt.Sprintf("closed %d", i)), time.UnixMilli(int64(i))
					delete(model, "o/"+id)
					model["c/"+id] = string(closedValue(c))
				default:
					delete(model, "o/"+id)
					delete(model, "c/"+id)
				}
				changes = append(changes, c)
			}
			log := slog.New(slog.DiscardHandler)
			written, err := openStore(t.TempDir(), log)
			if err != nil {
				t.Fatal(err)
			}
			defer written.close()
			ingested, err := openStore(t.TempDir(), log)
			if err != nil {
				t.Fatal(err)
			}
			defer ingested.close()
			behind, err := openStore(t.TempDir(), log)
			if err != nil {
				t.Fatal(err)
			}
			defer behind.close()
			for from := 0; from < len(changes); {
				to := min(from+1+rng.IntN(300), len(changes))
				if err := written.write(changes[from:to], int64(to)); err != nil {
					t.Fatal(err)
				}
				if err := ingested.ingest(changes[from:to], int64(to)); err != nil {
					t.Fatal(err)
				}
				// A batch's changes, not recycled: written behind,
				// sometimes flushed.
				kept := make([]change, 0, to-from)
				for _, c := range changes[from:to] {
					c.id, c.value = strings.Clone(c.id), bytes.Clone(c.value)
					kept = append(kept, c)
				}
				if err := behind.writeBehind(kept, int64(to)); err != nil {
					t.Fatal(err)
				}
				if rng.IntN(4) == 0 {
					if err := behind.flush(); err != nil {
						t.Fatal(err)
					}
				}
				for _, c := range changes[from:to] {
					scribble(unsafe.Slice(unsafe.StringData(c.id), len(c.id)))
					scribble(c.value)
				}
				from = to
			}
			a, b := storeContents(t, written), storeContents(t, ingested)
			if !maps.Equal(a, model) {
				t.Fatalf("written store has %d keys, the model %d", len(a), len(model))
			}
			if !maps.Equal(b, model) {
				t.Fatalf("ingested store has %d keys, the model %d", len(b), len(model))
			}
			if c := storeContents(t, behind); !maps.Equal(c, model) {
				t.Fatalf("store written behind has %d keys, the model %d", len(c), len(model))
			}
			if cp, _, err := behind.checkpoint(); err != nil || cp != int64(len(changes)) {
				t.Fatalf("written behind: checkpoint %d, %v; want %d", cp, err, len(changes))
			}
			if cp, _, err := ingested.checkpoint(); err != nil || cp != int64(len(changes)) {
				t.Fatalf("checkpoint %d, %v; want %d", cp, err, len(changes))
			}
		})
	}
}

// recycled is s in memory of its own, which scribble may overwrite.
func recycled(s string) string {
	b := []byte(s)
	return unsafe.String(unsafe.SliceData(b), len(b))
}

func scribble(b []byte) {
	for i := range b {
		b[i] = '#'
	}
}

// A state record from the topic (written by anyone) is read without a
// panic: a change with a known kind, a tombstone, or an error.
func FuzzStateChange(f *testing.F) {
	f.Add([]byte("o-1"), []byte{0, 0, 0, 0, 1}, "closed", "1764547200000")
	f.Add([]byte("o-1"), []byte(nil), "", "")
	f.Add([]byte(""), []byte("x"), "open", "")
	f.Add([]byte("o-2"), []byte("x"), "closed", "not a number")
	f.Fuzz(func(t *testing.T, key, value []byte, kind, closedAt string) {
		rec := &kgo.Record{Key: key, Value: value, Headers: []kgo.RecordHeader{
			{Key: HeaderSnapshotKind, Value: []byte(kind)}, {Key: HeaderClosedAt, Value: []byte(closedAt)}}}
		c, err := stateChange(rec)
		if err != nil {
			return
		}
		if c.id != string(key) || (value != nil && c.kind != snapshotOpen && c.kind != snapshotClosed) || (value == nil && c.kind != "") {
			t.Fatalf("stateChange(%q, %q, %q) = %+v", key, kind, closedAt, c)
		}
		if ms, perr := strconv.ParseInt(closedAt, 10, 64); c.kind == snapshotClosed && (perr != nil || c.closedAt.UnixMilli() != ms) {
			t.Fatalf("stateChange(%q, %q, %q) closed at %v, want %q", key, kind, closedAt, c.closedAt, closedAt)
		}
	})
}

// A running partition's changes are written behind: reads see them at
// once, pebble once they are due (or many), in one batch holding each
// saga's latest change and the latest checkpoint; closing writes them too.
func TestStoreWritesBehind(t *testing.T) {
	dir := t.TempDir()
	s, err := openStore(dir, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	closedAt := time.UnixMilli(1_764_547_200_000)
	before := time.Now()
	err = s.writeBehind([]change{{id: "a", kind: snapshotOpen, value: []byte("a open")},
		{id: "b", kind: snapshotOpen, value: []byte("b open")}}, 2)
	if err != nil {
		t.Fatal(err)
	}
	err = s.writeBehind([]change{{id: "a", kind: snapshotClosed, value: []byte("a closed"), closedAt: closedAt}}, 3)
	if err != nil {
		t.Fatal(err)
	}
	if v, at, ok, err := s.closedMarker("a"); err != nil || !ok || string(v) != "a closed" || !at.Equal(closedAt) {
		t.Fatalf("closedMarker(a) = %q, %v, %v, %v; want the marker written behind", v, at, ok, err)
	}
	if _, _, ok, err := s.closedMarker("b"); err != nil || ok {
		t.Fatalf("closedMarker(b) = %v, %v; b is open", ok, err)
	}
	for _, k := range []string{"o/a", "c/a", "o/b", string(keyCheckpoint)} {
		if _, closer, err := s.db.Get([]byte(k)); err == nil {
			closer.Close()
			t.Fatalf("%s is in pebble before the write-behind is due", k)
		}
	}
	due, ok := s.flushDue()
	if !ok || due.Before(before.Add(behindFor)) || due.After(time.Now().Add(behindFor)) {
		t.Fatalf("due at %v, %v; want %v after the first change", due, ok, behindFor)
	}
	if err := s.flush(); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.flushDue(); ok {
		t.Fatal("still due after a flush")
	}
	want := map[string]string{"c/a": string(closedValue(change{value: []byte("a closed"), closedAt: closedAt})), "o/b": "b open"}
	if got := storeContents(t, s); !maps.Equal(got, want) {
		t.Fatalf("store holds %q, want %q", got, want)
	}
	if cp, _, err := s.checkpoint(); err != nil || cp != 3 {
		t.Fatalf("checkpoint %d, %v; want 3", cp, err)
	}

	// Closing writes what is behind.
	if err := s.writeBehind([]change{{id: "b"}}, 4); err != nil {
		t.Fatal(err)
	}
	if err := s.close(); err != nil {
		t.Fatal(err)
	}
	if s, err = openStore(dir, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	defer s.close()
	delete(want, "o/b")
	if got := storeContents(t, s); !maps.Equal(got, want) {
		t.Fatalf("reopened store holds %q, want %q", got, want)
	}
	if cp, _, err := s.checkpoint(); err != nil || cp != 4 {
		t.Fatalf("reopened checkpoint %d, %v; want 4", cp, err)
	}

	// behindMax sagas changed are written at once.
	many := make([]change, behindMax)
	for i := range many {
		many[i] = change{id: fmt.Sprintf("s-%05d", i), kind: snapshotOpen, value: []byte("open")}
	}
	if err := s.writeBehind(many[:behindMax-1], 5); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.flushDue(); !ok {
		t.Fatal("nothing behind after writing behindMax-1 sagas")
	}
	if err := s.writeBehind(many[behindMax-1:], 6); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.flushDue(); ok {
		t.Fatalf("%d sagas behind: want them written", behindMax)
	}
	// Written in several batches (each up to flushBatchBytes), all of them.
	if got := storeContents(t, s); len(got) != 1+behindMax {
		t.Fatalf("store holds %d sagas, want %d", len(got), 1+behindMax)
	}
	if cp, _, err := s.checkpoint(); err != nil || cp != 6 {
		t.Fatalf("checkpoint %d, %v; want 6", cp, err)
	}

	// So are behindMaxBytes of snapshots, however few the sagas.
	big := make([]byte, behindMaxBytes/4)
	for i := range 3 {
		if err := s.writeBehind([]change{{id: fmt.Sprintf("big-%d", i), kind: snapshotOpen, value: big}}, int64(7+i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, ok := s.flushDue(); !ok {
		t.Fatal("nothing behind after three quarters of behindMaxBytes")
	}
	if err := s.writeBehind([]change{{id: "big-3", kind: snapshotOpen, value: big}}, 10); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.flushDue(); ok {
		t.Fatalf("%d bytes of snapshots behind: want them written", behindMaxBytes)
	}
}

// The run loop writes a store's write-behind once it is due, and not
// before; a store busy elsewhere (a restore holds its mu) does not hold the
// loop up and is looked at again; an idle poll is woken when one is due.
func TestRuntimeFlushesStoresWhenDue(t *testing.T) {
	s, err := openStore(t.TempDir(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	now := time.UnixMilli(1_764_547_200_000)
	s.now = func() time.Time { return now }
	r := &Runtime[benchData]{saga: &Saga[benchData]{name: "test"}, stores: map[int32]*partitionStore{0: {st: s}}}
	if _, ok := r.storesDue(); ok {
		t.Fatal("due with nothing behind")
	}
	if err := s.writeBehind([]change{{id: "a", kind: snapshotOpen, value: []byte("open")}}, 1); err != nil {
		t.Fatal(err)
	}
	if at, ok := r.storesDue(); !ok || !at.Equal(now.Add(behindFor)) {
		t.Fatalf("due at %v, %v; want %v", at, ok, now.Add(behindFor))
	}
	now = now.Add(behindFor - time.Millisecond)
	if err := r.flushStores(); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.flushDue(); !ok {
		t.Fatal("written before it was due")
	}
	now = now.Add(time.Millisecond)
	if err := r.flushStores(); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.flushDue(); ok {
		t.Fatal("not written once due")
	}
	if got := storeContents(t, s); got["o/a"] != "open" {
		t.Fatalf("store holds %q, want o/a", got)
	}

	busy := &partitionStore{}
	busy.mu.Lock() // a restore in progress
	defer busy.mu.Unlock()
	r.stores[1] = busy
	done := make(chan struct{})
	var (
		at     time.Time
		ok     bool
		before = time.Now()
	)
	go func() {
		defer close(done)
		at, ok = r.storesDue()
		err = r.flushStores()
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the loop waits on a store being restored")
	}
	if err != nil {
		t.Fatal(err)
	}
	if !ok || at.Before(before.Add(behindFor)) || at.After(time.Now().Add(behindFor)) {
		t.Fatalf("a busy store: due at %v from now, %v; want it looked at again %v from now", time.Until(at), ok, behindFor)
	}
	delete(r.stores, 1)

	// An idle poll is woken when a store is due.
	s.now = time.Now
	if err := s.writeBehind([]change{{id: "b", kind: snapshotOpen, value: []byte("open")}}, 2); err != nil {
		t.Fatal(err)
	}
	due, _ := s.flushDue()
	r.cfg.Clock, r.cfg.ClosedRetention = dlq.SystemClock{}, -1
	woken := make(chan time.Time, 1)
	disarm := r.armWakeUps(func() { woken <- time.Now() })
	defer disarm()
	select {
	case w := <-woken:
		if w.Before(due) {
			t.Fatalf("woken %v before the write-behind was due", due.Sub(w))
		}
	case <-time.After(5 * behindFor):
		t.Fatal("an idle poll was not woken for the write-behind")
	}
}

// A store that holds sagas without a checkpoint past 0 (a crash after a
// flush's first batches, before the checkpoint's) is wiped when its
// checkpoint is read: a restore from the changelog's start ingests into
// it, which assumes it empty, and a saga it holds open may have closed
// since (here the compacted changelog has only x's closed marker).
func TestStoreWithoutCheckpointStartsEmpty(t *testing.T) {
	s, err := openStore(t.TempDir(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	if err := s.db.Set(key(prefixOpen, "x"), []byte("x open"), pebble.NoSync); err != nil {
		t.Fatal(err)
	}
	if cp, _, err := s.checkpoint(); err != nil || cp != 0 {
		t.Fatalf("checkpoint %d, %v; want 0", cp, err)
	}
	if got := storeContents(t, s); len(got) != 0 {
		t.Fatalf("a store without a checkpoint still holds %q", got)
	}
	closed := change{id: "x", kind: snapshotClosed, value: []byte("x closed"), closedAt: time.UnixMilli(1_764_547_200_000)}
	if err := s.ingest([]change{closed}, 1); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"c/x": string(closedValue(closed))}
	if got := storeContents(t, s); !maps.Equal(got, want) {
		t.Fatalf("restored store holds %q, want %q", got, want)
	}
	// With its checkpoint, the store keeps what it holds.
	if cp, _, err := s.checkpoint(); err != nil || cp != 1 {
		t.Fatalf("checkpoint %d, %v; want 1", cp, err)
	}
	if got := storeContents(t, s); !maps.Equal(got, want) {
		t.Fatalf("store holds %q after reading its checkpoint, want %q", got, want)
	}
}
