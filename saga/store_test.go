package saga

import (
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"strconv"
	"testing"
	"time"
	"unsafe"

	"github.com/twmb/franz-go/pkg/kgo"
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
// stores keep copies of what they need.
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
			for from := 0; from < len(changes); {
				to := min(from+1+rng.IntN(300), len(changes))
				if err := written.write(changes[from:to], int64(to)); err != nil {
					t.Fatal(err)
				}
				if err := ingested.ingest(changes[from:to], int64(to)); err != nil {
					t.Fatal(err)
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
