package saga

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/internal/kafkaerr"
	"github.com/sagapipe/sagapipe/kread"
	"github.com/sagapipe/sagapipe/schema"
	"github.com/sagapipe/sagapipe/statemachine"
)

// Recovery. A newly assigned inbox partition is paused while its state is
// restored in the background, so the other partitions go on being
// processed: the store is brought up to the state topic's end (from its
// checkpoint, or from the start on a fresh machine), and the open sagas'
// snapshots are loaded into memory. Closed markers stay on disk. The
// journal is read only when the state topic has nothing for the partition
// (a deployment that predates it) or WithRebuildState asks for it.

func (r *Runtime[D]) assigned(ctx context.Context, cl *kgo.Client, assigned map[string][]int32) {
	parts := assigned[r.saga.InboxTopic()]
	if len(parts) == 0 {
		return
	}
	cl.PauseFetchPartitions(map[string][]int32{r.saga.InboxTopic(): parts})
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range parts {
		rctx, cancel := context.WithCancel(r.backgroundCtx)
		ps := &partitionState[D]{ready: make(chan struct{}), cancel: cancel, sagas: map[string]*sagaRecord[D]{},
			unsaved: map[string]*sagaRecord[D]{}}
		if r.stores[p] == nil {
			r.stores[p] = &partitionStore{}
		}
		ps.store = r.stores[p]
		r.parts[p] = ps
		r.background.Add(1)
		go func() {
			defer r.background.Done()
			began := time.Now()
			got, err := r.restoreRetrying(rctx, p, ps.store)
			if live, ok := r.finishRestore(cl, p, ps, got, err); ok {
				for _, h := range r.cfg.Hooks {
					if h, ok := h.(HookRestored); ok {
						h.OnRestored(p, got.from, live, time.Since(began))
					}
				}
			}
		}()
	}
}

func (r *Runtime[D]) revoked(_ context.Context, _ *kgo.Client, gone map[string][]int32) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range gone[r.saga.InboxTopic()] {
		if ps := r.parts[p]; ps != nil {
			ps.cancel()
		}
		delete(r.parts, p)
		delete(r.lag, p)
	}
}

// restored is what a restore rebuilt of a partition.
type restored[D any] struct {
	from        RestoredFrom
	sagas       map[string]*sagaRecord[D] // the live ones
	unsaved     map[string]*sagaRecord[D] // rebuilt from the journal, snapshots to write
	journalNext int64
}

// finishRestore installs what restore rebuilt, if the partition is still
// ours, and resumes fetching it. It reports whether it did, and how many
// sagas are live in the partition.
func (r *Runtime[D]) finishRestore(cl *kgo.Client, p int32, ps *partitionState[D], got *restored[D], err error) (int, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	defer close(ps.ready)
	if r.parts[p] != ps {
		return 0, false // revoked meanwhile
	}
	if err != nil {
		if r.backgroundCtx.Err() == nil {
			r.failed = errors.Join(r.failed, fmt.Errorf("saga %s: restoring partition %d: %w", r.saga.name, p, err))
		}
		r.wakePoll()
		return 0, false
	}
	ps.ok = true
	ps.sagas, ps.unsaved, ps.journalNext = got.sagas, got.unsaved, got.journalNext
	for id, s := range ps.sagas {
		if s.timer != nil {
			r.timers.add(s.timer.deadline, p, id)
		}
	}
	cl.ResumeFetchPartitions(map[string][]int32{r.saga.InboxTopic(): {p}})
	r.wakePoll()
	return len(ps.sagas), true
}

// restoreFailure is the error of a failed restore, if any.
func (r *Runtime[D]) restoreFailure() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.failed
}

// awaitRestore waits until partition p's restore ended; it is for records
// fetched before the partition was paused.
func (r *Runtime[D]) awaitRestore(ctx context.Context, p int32) error {
	r.mu.Lock()
	ps := r.parts[p]
	r.mu.Unlock()
	if ps == nil {
		return nil
	}
	select {
	case <-ps.ready:
	case <-ctx.Done():
		return ctx.Err()
	}
	return r.restoreFailure()
}

// restoreRetrying restores partition p, again and again while it fails on
// what passes (a broker away, a previous owner's transaction still open),
// with a backoff from a second up to half a minute.
func (r *Runtime[D]) restoreRetrying(ctx context.Context, p int32, pst *partitionStore) (*restored[D], error) {
	for wait := time.Second; ; wait = min(2*wait, 30*time.Second) {
		got := &restored[D]{sagas: map[string]*sagaRecord[D]{}, unsaved: map[string]*sagaRecord[D]{}}
		err := r.restore(ctx, p, pst, got)
		if err == nil || ctx.Err() != nil || !(kafkaerr.Transient(err) || errors.Is(err, context.DeadlineExceeded)) {
			return got, err
		}
		r.cfg.Logger.Warn("saga: restoring a partition failed; retrying", "saga_name", r.saga.name, "partition", p,
			"retry_in", wait, "error", err)
		select {
		case <-ctx.Done():
			return got, ctx.Err()
		case <-time.After(wait):
		}
	}
}

// restore brings partition p's store up to the state topic and loads the
// open sagas into got.
func (r *Runtime[D]) restore(ctx context.Context, p int32, pst *partitionStore, got *restored[D]) error {
	// A batch in flight may hold work of p from before it was lost: let
	// it end (commit or abort) before reading what it may have written.
	r.batchMu.Lock()
	//lint:ignore SA2001 a barrier: nothing to guard, only a batch to wait for
	r.batchMu.Unlock()
	pst.mu.Lock()
	defer pst.mu.Unlock()
	if pst.st == nil {
		st, err := openStore(r.storeDir(p), r.cfg.Logger)
		if err != nil {
			return err
		}
		pst.st = st
	}
	st := pst.st
	// The previous owner's last transaction may still be completing: wait
	// for it, or the restore would miss what it wrote while its offsets,
	// committed with it, skip the events that led there. The broker aborts
	// a transaction open longer than the transaction timeout
	// (it checks every 10 s by default): wait that long, then again.
	wctx, cancel := context.WithTimeout(ctx, r.cfg.TransactionTimeout+15*time.Second)
	defer cancel()
	for _, topic := range []string{r.saga.StateTopic(), r.saga.JournalTopic()} {
		if err := kread.WaitStable(wctx, r.connOpts, topic, []int32{p}); err != nil {
			return fmt.Errorf("%w (a previous owner's transaction stays open past transaction_timeout %v: is an instance with another transaction timeout still running?)", err, r.cfg.TransactionTimeout)
		}
	}
	stateEnd, journalEnd, stateStart, deleteRetention, err := r.partitionBounds(ctx, p)
	if err != nil {
		return err
	}
	got.journalNext = journalEnd
	if r.cfg.RebuildState || (stateEnd == 0 && journalEnd > 0) {
		if err := st.wipe(); err != nil {
			return err
		}
		got.from = RestoredFromJournal
		return r.rebuildFromJournal(ctx, p, got)
	}
	from, written, err := st.checkpoint()
	if err != nil {
		return err
	}
	if from > stateEnd || from < stateStart || (!written.IsZero() && time.Since(written) > deleteRetention) {
		// The topic was recreated, or records the store never saw were
		// deleted, or the store is older than the broker keeps tombstones
		// (a saga removed meanwhile would come back): start over from the
		// topic.
		if err := st.wipe(); err != nil {
			return err
		}
		from = 0
	}
	if err := r.restoreStore(ctx, st, p, from); err != nil {
		return err
	}
	got.from = RestoredFromState
	unknown := map[int]int{}
	err = st.eachOpen(func(id string, value []byte) error {
		s, err := r.snapshots.decode(ctx, value)
		if err != nil {
			return r.snapshotError(p, id, err)
		}
		if r.versions[s.version] == nil {
			unknown[s.version]++
		}
		got.sagas[id] = s
		return nil
	})
	if err != nil || len(unknown) == 0 {
		return err
	}
	return r.versionError(p, unknown)
}

// versionError is the error of partition p holding sagas in flight on
// versions not registered: unknown counts them by version.
func (r *Runtime[D]) versionError(p int32, unknown map[int]int) error {
	var counts []string
	for _, v := range slices.Sorted(maps.Keys(unknown)) {
		counts = append(counts, fmt.Sprintf("%d on version %d", unknown[v], v))
	}
	return fmt.Errorf("%w: partition %d of %s has sagas in flight on versions this runtime does not run (%s; registered: %v): pass those definitions to NewRuntime as older versions until their sagas have finished",
		ErrVersion, p, r.saga.name, strings.Join(counts, ", "), r.versionList())
}

// versionList returns the registered versions, in order.
func (r *Runtime[D]) versionList() []int { return slices.Sorted(maps.Keys(r.versions)) }

// def returns the definition saga s runs on.
func (r *Runtime[D]) def(s *sagaRecord[D]) *Saga[D] {
	if d := r.versions[s.version]; d != nil {
		return d
	}
	return r.saga // not reached: a restore refuses unregistered versions
}

// snapshotError is the error of a snapshot that cannot be used: it names
// the saga and the fix.
func (r *Runtime[D]) snapshotError(p int32, id string, err error) error {
	return fmt.Errorf("%w: saga %s %q in %s/%d: %w; the journal is the truth: restart once with saga.WithRebuildState(true) (service: --rebuild-state or state_rebuild: true), which rebuilds the snapshots of %s from %s (all of it must still be there), then turn it off again",
		ErrSnapshot, r.saga.name, id, r.saga.StateTopic(), p, err, r.saga.StateTopic(), r.saga.JournalTopic())
}

// partitionBounds returns the last stable offsets of state and journal
// partition p, the state partition's log start, and how long the broker
// keeps the state topic's tombstones (delete.retention.ms).
func (r *Runtime[D]) partitionBounds(ctx context.Context, p int32) (stateEnd, journalEnd, stateStart int64, deleteRetention time.Duration, err error) {
	cl, err := kgo.NewClient(r.connOpts...)
	if err != nil {
		return 0, 0, 0, 0, err
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	ends, err := adm.ListCommittedOffsets(ctx, r.saga.StateTopic(), r.saga.JournalTopic())
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		return 0, 0, 0, 0, fmt.Errorf("listing the ends of %s and %s: %w", r.saga.StateTopic(), r.saga.JournalTopic(), err)
	}
	starts, err := adm.ListStartOffsets(ctx, r.saga.StateTopic())
	if err == nil {
		err = starts.Error()
	}
	if err != nil {
		return 0, 0, 0, 0, fmt.Errorf("listing the start of %s: %w", r.saga.StateTopic(), err)
	}
	deleteRetention = 24 * time.Hour // the broker's default
	configs, err := adm.DescribeTopicConfigs(ctx, r.saga.StateTopic())
	if err != nil {
		return 0, 0, 0, 0, fmt.Errorf("describing %s: %w", r.saga.StateTopic(), err)
	}
	if c, err := configs.On(r.saga.StateTopic(), nil); err == nil && c.Err == nil {
		for _, kv := range c.Configs {
			if kv.Key == "delete.retention.ms" && kv.Value != nil {
				if ms, err := strconv.ParseInt(*kv.Value, 10, 64); err == nil {
					deleteRetention = time.Duration(ms) * time.Millisecond
				}
			}
		}
	}
	s, _ := ends.Lookup(r.saga.StateTopic(), p)
	j, _ := ends.Lookup(r.saga.JournalTopic(), p)
	st, _ := starts.Lookup(r.saga.StateTopic(), p)
	return s.Offset, j.Offset, st.Offset, deleteRetention, nil
}

// Restores write the store this many state records at a time (each write
// moves the checkpoint): in batches when catching up from a checkpoint,
// as ingested tables when restoring from the start into an empty store.
const (
	restoreBatch  = 8192
	restoreIngest = 32768
)

// restoreStore applies state partition p from offset from to its end. One
// goroutine writes the store while the records that follow are fetched.
func (r *Runtime[D]) restoreStore(ctx context.Context, st *store, p int32, from int64) error {
	write, size := st.write, restoreBatch
	if from == 0 {
		write, size = st.ingest, restoreIngest
	}
	type chunk struct {
		changes []change
		recs    []*kgo.Record // the records changes point into, recycled once written
		next    int64
	}
	chunks := make(chan chunk, 4)
	free := make(chan chunk, 5) // written chunks' slices, for the next ones
	written := make(chan error, 1)
	go func() {
		var err error
		for c := range chunks {
			switch {
			case err != nil:
			case len(c.changes) == 0:
				err = st.write(nil, c.next) // the checkpoint alone
			default:
				err = write(c.changes, c.next)
			}
			clear(c.changes)
			for i, rec := range c.recs {
				rec.Recycle()
				c.recs[i] = nil
			}
			select {
			case free <- chunk{changes: c.changes[:0], recs: c.recs[:0]}:
			default:
			}
		}
		written <- err
	}()
	var changes []change
	var recs []*kgo.Record
	next := from
	ends, err := kread.From(ctx, append(r.connOpts[:len(r.connOpts):len(r.connOpts)], kgo.WithPools(restorePools)), r.saga.StateTopic(), []int32{p}, map[int32]int64{p: from}, func(rec *kgo.Record) error {
		c, err := stateChange(rec)
		if err != nil {
			return fmt.Errorf("%s/%d@%d: %w", rec.Topic, rec.Partition, rec.Offset, err)
		}
		changes, recs = append(changes, c), append(recs, rec)
		next = rec.Offset + 1
		if len(changes) == size {
			chunks <- chunk{changes, recs, next}
			select {
			case f := <-free:
				changes, recs = f.changes, f.recs
			default:
				changes, recs = make([]change, 0, size), make([]*kgo.Record, 0, size)
			}
		}
		return nil
	})
	if err == nil {
		chunks <- chunk{changes, recs, max(next, ends[p])}
	}
	close(chunks)
	werr := <-written
	st.endRestore()
	if err != nil {
		return fmt.Errorf("restoring from %s: %w", r.saga.StateTopic(), err)
	}
	return werr
}

// stateChange reads what a state record does to the store from its key
// and headers; the snapshot itself is decoded when it is needed. It
// allocates nothing: a fresh machine's restore reads millions of records.
// The change's ID and value share the fetched record's memory, which the
// restore recycles once the change is written: whatever keeps either
// longer copies it.
func stateChange(rec *kgo.Record) (change, error) {
	c := change{id: unsafe.String(unsafe.SliceData(rec.Key), len(rec.Key)), value: rec.Value}
	if c.id == "" {
		return c, errors.New("a state record without a key (was something else written to the state topic?)")
	}
	if rec.Value == nil {
		return c, nil // tombstone
	}
	for _, h := range rec.Headers {
		switch h.Key {
		case HeaderSnapshotKind:
			switch string(h.Value) {
			case snapshotOpen:
				c.kind = snapshotOpen
			case snapshotClosed:
				c.kind = snapshotClosed
			default:
				return c, fmt.Errorf("snapshot of %q: header %s is %q, not %q or %q", c.id, HeaderSnapshotKind, h.Value, snapshotOpen, snapshotClosed)
			}
		case HeaderClosedAt:
			ms, ok := unixMillis(h.Value)
			if !ok {
				return c, fmt.Errorf("snapshot of %q: header %s=%q is not Unix milliseconds", c.id, HeaderClosedAt, h.Value)
			}
			c.closedAt = time.UnixMilli(ms)
		}
	}
	if c.kind == "" {
		return c, fmt.Errorf("snapshot of %q: no header %s (was something else written to the state topic?)", c.id, HeaderSnapshotKind)
	}
	return c, nil
}

// unixMillis parses a header's decimal Unix milliseconds.
func unixMillis(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	var ms int64
	for _, d := range b {
		if d < '0' || d > '9' {
			return 0, false
		}
		ms = ms*10 + int64(d-'0')
	}
	return ms, true
}

// rebuildFromJournal folds journal partition p into its sagas, for a
// partition whose state topic has nothing yet (or WithRebuildState): the open
// ones go live, and every snapshot (closed markers within the retention)
// is written by the next transaction.
func (r *Runtime[D]) rebuildFromJournal(ctx context.Context, p int32, got *restored[D]) error {
	sagas := map[string]*sagaRecord[D]{}
	unregistered := map[string]*sagaRecord[D]{} // on versions not registered
	err := kread.ToEnd(ctx, r.connOpts, r.saga.JournalTopic(), []int32{p}, func(rec *kgo.Record) error {
		entry, err := r.journal.Decode(ctx, rec.Value)
		if err != nil {
			return fmt.Errorf("journal %s/%d@%d: %w", rec.Topic, rec.Partition, rec.Offset, err)
		}
		s := sagas[entry.SagaID]
		if s == nil {
			env, _ := schema.ReadEnvelope(rec.Headers)
			s = newSagaRecord[D](entry.SagaID, env.CorrelationID, entry.Time, journalPosition{partition: p, offset: rec.Offset}, int(entry.Version))
			sagas[entry.SagaID] = s
		}
		def := r.versions[s.version]
		if def == nil {
			// A definition no longer registered: what its journal says is
			// enough for a saga it closed (a marker); one it left open
			// refuses the rebuild below.
			s.state, s.since = statemachine.State(entry.ToState), entry.Time
			s.see(entry.CEID)
			unregistered[s.id] = s
			return nil
		}
		if err := def.refold(ctx, r.codecs, s, entry); err != nil {
			return fmt.Errorf("journal %s/%d@%d: %w", rec.Topic, rec.Partition, rec.Offset, err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("rebuilding from %s: %w", r.saga.JournalTopic(), err)
	}
	unknown := map[int]int{}
	for _, s := range unregistered {
		if !s.closed() {
			unknown[s.version]++
		}
	}
	if len(unknown) > 0 {
		return r.versionError(p, unknown)
	}
	cutoff := r.retentionCutoff()
	for id, s := range sagas {
		if !s.closed() {
			got.sagas[id] = s
		} else if !cutoff.IsZero() && s.since.Before(cutoff) {
			continue // its retention is over: nothing to keep
		}
		got.unsaved[id] = s
	}
	r.cfg.Logger.Info("rebuilt a partition's snapshots from the journal", "saga_name", r.saga.name, "partition", p,
		"sagas", len(sagas), "open", len(got.sagas), "snapshots_to_write", len(got.unsaved))
	return nil
}

// retentionCutoff is when a closed marker must have closed after to be
// kept (zero when markers are kept forever).
func (r *Runtime[D]) retentionCutoff() time.Time {
	if r.cfg.ClosedRetention < 0 {
		return time.Time{}
	}
	return r.cfg.Clock.Now().Add(-r.cfg.ClosedRetention)
}

// maxExpiredPerBatch bounds the tombstones one transaction writes.
const maxExpiredPerBatch = 10_000

// sweepEvery is how often closed markers are checked for expiry: a
// hundredth of the retention, between a second and an hour. A check scans
// the partition's closed markers on disk (about 0.3 s per million).
func (r *Runtime[D]) sweepEvery() time.Duration {
	return min(max(r.cfg.ClosedRetention/100, time.Second), time.Hour)
}

// nextSweep returns how long until the next expiry check, or -1 when
// markers are kept forever.
func (r *Runtime[D]) nextSweep() time.Duration {
	if r.cfg.ClosedRetention < 0 {
		return -1
	}
	return max(r.sweepEvery()-r.cfg.Clock.Now().Sub(r.lastSweep), 0)
}

// sweepExpired collects, when due, the closed markers past their retention
// in every restored partition, for the next transaction to tombstone. A
// partition with more than a transaction's worth is swept again as soon
// as that transaction committed.
func (r *Runtime[D]) sweepExpired() error {
	if r.nextSweep() != 0 {
		return nil
	}
	r.lastSweep = r.cfg.Clock.Now()
	cutoff := r.retentionCutoff()
	r.mu.Lock()
	due := map[int32]*partitionState[D]{}
	for p, ps := range r.parts {
		if ps.restored() && len(ps.expired) == 0 {
			due[p] = ps
		}
	}
	r.mu.Unlock()
	for p, ps := range due {
		ps.store.mu.Lock()
		expired, err := ps.store.st.expired(cutoff, maxExpiredPerBatch)
		ps.store.mu.Unlock()
		if err != nil {
			return fmt.Errorf("saga %s: partition %d: %w", r.saga.name, p, err)
		}
		if len(expired) == maxExpiredPerBatch {
			r.lastSweep = time.Time{}
		}
		r.mu.Lock()
		if r.parts[p] == ps {
			ps.expired = expired
		}
		r.mu.Unlock()
	}
	return nil
}

// pendingWrites tells whether a transaction is due without any record:
// snapshots rebuilt from the journal, or tombstones. Callers hold mu.
func (r *Runtime[D]) pendingWrites() bool {
	for _, ps := range r.parts {
		if ps.restored() && (len(ps.unsaved) > 0 || len(ps.expired) > 0) {
			return true
		}
	}
	return false
}

// restorePools lends the restores' readers the memory they decode fetched
// records into, recycled once a chunk is written: a fresh machine's
// restore reads millions of records, and allocating them costs it more
// than decoding them.
var restorePools = &recordPool{}

type recordPool struct{ recs, bytes sync.Pool }

func (p *recordPool) GetRecords(n int) []kgo.Record {
	if v, ok := p.recs.Get().(*[]kgo.Record); ok && cap(*v) >= n {
		return (*v)[:0]
	}
	return make([]kgo.Record, 0, n)
}

func (p *recordPool) PutRecords(recs []kgo.Record) { p.recs.Put(&recs) }

func (p *recordPool) GetDecompressBytes([]byte, kgo.CompressionCodecType) []byte {
	if v, ok := p.bytes.Get().(*[]byte); ok {
		return (*v)[:0]
	}
	return nil
}

func (p *recordPool) PutDecompressBytes(b []byte) { p.bytes.Put(&b) }
