package saga

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagapipe/sagapipe/dlq"
	"github.com/sagapipe/sagapipe/internal/telemetry"
	"github.com/sagapipe/sagapipe/pipe"
	"github.com/sagapipe/sagapipe/schema"
	"github.com/sagapipe/sagapipe/statemachine"
)

// batch is one transaction's work: changed sagas are copies until commit.
type batch[D any] struct {
	changed map[int32]map[string]*sagaRecord[D]
	// journaled holds the changed sagas the transaction journals something
	// of: their snapshots are written.
	journaled map[*sagaRecord[D]]bool
	// pending are the partitions' rebuilt snapshots and expired markers
	// the transaction writes as well.
	pending map[int32]pendingWrites[D]
	batchStats
	// spans of the records and timers handled, ended with the transaction.
	spans []trace.Span
	// emissions are the saga and step spans that ended, emitted once the
	// transaction commits.
	emissions []spanEmission
	// What the transaction produces, sent together at its end: one round
	// trip per batch instead of one per event.
	journal  []*kgo.Record
	outbox   []*kgo.Record // dead letters, and records forwarded to their saga's partition
	state    []*kgo.Record // snapshots and tombstones
	changes  map[int32][]change
	commands map[string][]pipe.Message
}

// maxUnsavedPerBatch bounds the rebuilt snapshots one transaction writes,
// so that a large migration stays well within the transaction timeout.
const maxUnsavedPerBatch = 10_000

type pendingWrites[D any] struct {
	unsaved []*sagaRecord[D]
	expired []expiredMarker
}

type deadLetter struct {
	rec                 *kgo.Record
	f                   dlq.Failure
	sagaID, correlation string          // as far as the record told
	ctx                 context.Context // the dead-letter span's, for logs
}

// processBatch handles the batch's records and the due timers in one
// transaction, with the snapshots of the sagas they changed. The
// transaction runs on work, which a shutdown does not cancel: it ends by
// commit or abort.
func (r *Runtime[D]) processBatch(ctx, work context.Context, fetches kgo.Fetches) error {
	var err error
	fetches.EachPartition(func(fp kgo.FetchTopicPartition) {
		if err == nil && fp.Topic == r.saga.InboxTopic() && len(fp.Records) > 0 {
			err = r.awaitRestore(ctx, fp.Partition)
		}
	})
	if err != nil {
		return err
	}
	r.observeLag(fetches)
	r.batchMu.Lock()
	defer r.batchMu.Unlock()
	due := r.dueTimers()
	pending := r.takePending()
	if fetches.NumRecords() == 0 && len(due) == 0 && len(pending) == 0 {
		return nil
	}
	owned := r.owned()

	b := &batch[D]{changed: map[int32]map[string]*sagaRecord[D]{}, journaled: map[*sagaRecord[D]]bool{},
		pending: pending, changes: map[int32][]change{}, commands: map[string][]pipe.Message{}}
	shutdown := ctx
	// The batch finishes even when Run is being stopped (work is not
	// cancelled), but not forever: a client stuck ending its transaction
	// (a cluster that came back having aborted it) is given up after
	// batchDeadline; Run returns the error, and the runtime is started anew
	// (service.Main does that), whose transactional ID fences this one.
	ctx, cancelBatch := context.WithTimeout(work, batchDeadline)
	defer cancelBatch()
	committed, err := r.piper.Transact(ctx, r.sess, func(ctx context.Context, tx *pipe.Tx) error {
		var err error
		fetches.EachRecord(func(rec *kgo.Record) {
			if err == nil {
				err = r.handleRecord(ctx, b, rec)
			}
		})
		for _, d := range due {
			if err == nil {
				err = r.handleTimer(ctx, b, d)
			}
		}
		if err == nil {
			err = r.snapshot(ctx, b)
		}
		if err == nil {
			err = r.stillOwned(owned)
		}
		if err == nil && fetches.NumRecords() == 0 {
			err = r.stillMember(ctx, owned)
		}
		if err != nil {
			return err
		}
		return r.flush(ctx, tx, b)
	})
	if !committed {
		r.mu.Lock()
		for _, d := range due {
			r.timers.add(d.at(), d.partition, d.id) // they come again
		}
		r.mu.Unlock()
	}
	for _, span := range b.spans {
		if !committed {
			telemetry.Fail(span, fmt.Errorf("transaction not committed, the batch comes again: %w", cmp.Or(err, ctx.Err())))
		}
		span.End()
	}
	if !committed {
		if shutdown.Err() != nil {
			return nil
		}
		if errors.Is(err, errNotMember) {
			// The group is settling who owns what: let it, briefly,
			// rather than retry the timers at once.
			select {
			case <-shutdown.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
		if errors.Is(err, schema.ErrRegistryUnavailable) {
			// A registry outage: nothing is dead-lettered; the batch comes
			// again after a backoff (1 s doubling to 30 s).
			r.registryWait = min(max(2*r.registryWait, time.Second), 30*time.Second)
			r.cfg.Logger.Warn("saga: schema registry unavailable; the batch comes again", "saga_name", r.saga.name,
				"retry_in", r.registryWait, "error", err)
			select {
			case <-shutdown.Done():
			case <-time.After(r.registryWait):
			}
		}
		if errors.Is(err, pipe.ErrAborted) {
			return nil // rewound: the batch comes again
		}
		return fmt.Errorf("saga %s: %w", r.saga.name, err)
	}
	r.registryWait = 0
	r.emit(ctx, b.emissions)
	r.metrics.record(ctx, &b.batchStats)
	if err := r.committed(b); err != nil {
		return err
	}
	// Logs and hooks hear of what committed, only.
	for _, f := range b.finished {
		if f.outcome == StateCompensationFailed {
			r.cfg.Logger.ErrorContext(f.ctx, "saga compensation failed: its compensations were retried and never confirmed; it needs an operator",
				"saga_name", r.saga.name, "saga_id", f.id, "correlation_id", f.correlation, "state", f.outcome)
		}
	}
	for _, d := range b.dead {
		r.cfg.Logger.WarnContext(d.ctx, "inbox record dead-lettered", "saga_name", r.saga.name, "saga_id", d.sagaID,
			"correlation_id", d.correlation, "topic", d.rec.Topic, "partition", d.rec.Partition, "offset", d.rec.Offset,
			"dead_letter_topic", r.cfg.DeadLetterTopic, "error", d.f.Err)
	}
	for _, h := range r.cfg.Hooks {
		if h, ok := h.(HookFinished); ok {
			for _, f := range b.finished {
				h.OnFinished(f.id, f.outcome)
			}
		}
		if h, ok := h.(dlq.HookDeadLettered); ok {
			for _, d := range b.dead {
				h.OnDeadLettered(d.rec, d.f)
			}
		}
	}
	return nil
}

// batchDeadline bounds a batch's transaction, from its first record to
// its end: a healthy one takes milliseconds.
const batchDeadline = 30 * time.Second

// errPartitionMoved aborts a batch during which a partition it holds work
// of was lost (and perhaps assigned again, to be restored anew): the batch
// comes again once the partition is restored.
var errPartitionMoved = fmt.Errorf("%w: a partition was lost during the batch", pipe.ErrAborted)

// owned returns the partitions owned now, as the batch starts.
func (r *Runtime[D]) owned() map[int32]*partitionState[D] {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.parts)
}

// stillOwned reports errPartitionMoved if a partition owned when the
// batch started is no longer owned as it was.
func (r *Runtime[D]) stillOwned(owned map[int32]*partitionState[D]) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for p, ps := range owned {
		if r.parts[p] != ps {
			return errPartitionMoved
		}
	}
	return nil
}

// errNotMember aborts a batch of timers or snapshots alone when this
// instance may no longer own the partitions it writes.
var errNotMember = fmt.Errorf("%w: not (or no longer) a stable member owning the partitions", pipe.ErrAborted)

// stillMember checks with the group's coordinator that this instance is a
// member of the stable group and is assigned every partition it holds work
// of. A batch that consumed records needs no such check: committing their
// offsets in the transaction fences a member that lost its partitions
// (KIP-447). A batch of timers or snapshots alone commits no offsets, and
// kgo ends it unfenced, so a member that lost its partitions without
// knowing it yet would write over their new owner's restore.
func (r *Runtime[D]) stillMember(ctx context.Context, owned map[int32]*partitionState[D]) error {
	memberID, _ := r.sess.Client().GroupMetadata()
	groups, err := kadm.NewClient(r.sess.Client()).DescribeGroups(ctx, r.cfg.Group)
	if err != nil {
		return fmt.Errorf("%w (%w)", errNotMember, err)
	}
	g, ok := groups[r.cfg.Group]
	if !ok || g.Err != nil || g.State != "Stable" {
		return errNotMember
	}
	for _, m := range g.Members {
		if m.MemberID != memberID {
			continue
		}
		c, ok := m.Assigned.AsConsumer()
		if !ok {
			return errNotMember
		}
		assigned := map[int32]bool{}
		for _, t := range c.Topics {
			if t.Topic == r.saga.InboxTopic() {
				for _, p := range t.Partitions {
					assigned[p] = true
				}
			}
		}
		for p := range owned {
			if !assigned[p] {
				return errNotMember
			}
		}
		return nil
	}
	return errNotMember
}

// takePending returns the restored partitions' snapshots to write and
// markers to tombstone. They stay pending until a transaction commits them.
func (r *Runtime[D]) takePending() map[int32]pendingWrites[D] {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out map[int32]pendingWrites[D]
	for p, ps := range r.parts {
		if !ps.restored() || (len(ps.unsaved) == 0 && len(ps.expired) == 0) {
			continue
		}
		if out == nil {
			out = map[int32]pendingWrites[D]{}
		}
		ids := sortedKeys(ps.unsaved)
		w := pendingWrites[D]{expired: ps.expired}
		for _, id := range ids[:min(len(ids), maxUnsavedPerBatch)] {
			w.unsaved = append(w.unsaved, ps.unsaved[id])
		}
		out[p] = w
	}
	return out
}

// committed makes what the transaction committed the runtime's state: the
// changed sagas in memory (the closed ones leave it) and every snapshot
// and tombstone in the partitions' stores (written behind: flushStores).
func (r *Runtime[D]) committed(b *batch[D]) error {
	// The stores first: Status, from another goroutine, looks for a saga
	// in memory and then in the store, so a closed saga's marker is in the
	// store before the saga leaves memory.
	r.mu.Lock()
	stores := map[int32]*partitionState[D]{}
	for p := range b.changes {
		if ps := r.parts[p]; ps != nil {
			stores[p] = ps // lost meanwhile: the next owner restores what committed
		}
	}
	r.mu.Unlock()
	for p, ps := range stores {
		next := int64(-1)
		for _, rec := range b.state {
			if rec.Partition == p {
				next = max(next, rec.Offset+1)
			}
		}
		ps.store.mu.Lock()
		err := ps.store.st.writeBehind(b.changes[p], next)
		ps.store.mu.Unlock()
		if err != nil {
			return fmt.Errorf("saga %s: partition %d: %w", r.saga.name, p, err)
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for p, sagas := range b.changed {
		ps := r.parts[p]
		if ps == nil {
			continue
		}
		for id, s := range sagas {
			if s.closed() {
				delete(ps.sagas, id)
				continue
			}
			if old := ps.sagas[id]; s.timer != nil && (old == nil || old.timer != s.timer) {
				r.timers.add(s.timer.deadline, p, id)
			}
			ps.sagas[id] = s
		}
	}
	for p, w := range b.pending {
		if ps := r.parts[p]; ps != nil {
			for _, s := range w.unsaved {
				delete(ps.unsaved, s.id)
			}
			ps.expired = nil
		}
	}
	for _, rec := range b.journal {
		if ps := r.parts[rec.Partition]; ps != nil {
			ps.journalNext = max(ps.journalNext, rec.Offset+1)
		}
	}
	return nil
}

// flush sends what the batch produced, all at once (in order per
// partition), and waits for the broker's answers.
func (r *Runtime[D]) flush(ctx context.Context, tx *pipe.Tx, b *batch[D]) error {
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	fail := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		if firstErr == nil {
			firstErr = err
		}
	}
	records := slices.Concat(b.journal, b.state, b.outbox)
	wg.Add(len(records))
	produced := func(rec *kgo.Record, err error) {
		if err != nil {
			fail(fmt.Errorf("saga %s: append to %s: %w", r.saga.name, rec.Topic, err))
		}
		wg.Done()
	}
	for _, rec := range records {
		r.sess.Produce(ctx, rec, produced)
	}
	for _, topic := range sortedKeys(b.commands) {
		ms := b.commands[topic]
		wg.Add(len(ms))
		tx.PipeManyAsync(ctx, topic, ms, func(res pipe.Result) {
			if res.Err != nil {
				fail(res.Err)
			}
			wg.Done()
		})
	}
	wg.Wait()
	return firstErr
}

// sortedKeys returns m's keys in order, in one allocation (slices.Sorted
// grows its slice as it goes: an allocation per doubling, per batch).
func sortedKeys[K cmp.Ordered, V any](m map[K]V) []K {
	keys := make([]K, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// snapshot adds to the batch the snapshots of the sagas it changed, those
// rebuilt from the journal, and the tombstones of expired markers: one
// record per saga, in the transaction that changed it.
func (r *Runtime[D]) snapshot(ctx context.Context, b *batch[D]) error {
	for _, p := range sortedKeys(b.changed) {
		for _, id := range sortedKeys(b.changed[p]) {
			if s := b.changed[p][id]; b.journaled[s] {
				if err := r.addSnapshot(ctx, b, p, s); err != nil {
					return err
				}
			}
		}
	}
	for _, p := range sortedKeys(b.pending) {
		w := b.pending[p]
		for _, s := range w.unsaved {
			if c := b.changed[p][s.id]; c != nil && b.journaled[c] {
				continue // changed by this batch too: its newer snapshot is written
			}
			if err := r.addSnapshot(ctx, b, p, s); err != nil {
				return err
			}
		}
		for _, e := range w.expired {
			if s := b.changed[p][e.id]; s != nil && !s.closed() {
				continue // it is live again (cannot happen while IDs are not reused within the retention)
			}
			rec := &kgo.Record{Topic: r.saga.StateTopic(), Key: []byte(e.id)}
			pipe.ToPartition(rec, p)
			b.state = append(b.state, rec)
			b.changes[p] = append(b.changes[p], change{id: e.id})
		}
	}
	return nil
}

// openSnapshotHeaders are the headers of every open saga's snapshot, made
// once; nothing writes into a state record's headers.
var openSnapshotHeaders = []kgo.RecordHeader{{Key: HeaderSnapshotKind, Value: []byte(snapshotOpen)}}

func (r *Runtime[D]) addSnapshot(ctx context.Context, b *batch[D], p int32, s *sagaRecord[D]) error {
	closed := s.closed()
	value, err := r.snapshots.encode(ctx, s, closed)
	if err != nil {
		return fmt.Errorf("saga %s: snapshot: %w", r.saga.name, err)
	}
	c := change{id: s.id, kind: snapshotOpen, value: value}
	headers := openSnapshotHeaders
	if closed {
		c.kind, c.closedAt = snapshotClosed, s.since
		headers = []kgo.RecordHeader{{Key: HeaderSnapshotKind, Value: []byte(snapshotClosed)},
			{Key: HeaderClosedAt, Value: strconv.AppendInt(nil, s.since.UnixMilli(), 10)}}
	}
	rec := &kgo.Record{Topic: r.snapshots.topic, Key: []byte(s.id), Value: value, Headers: headers}
	pipe.ToPartition(rec, p)
	b.state = append(b.state, rec)
	b.changes[p] = append(b.changes[p], c)
	return nil
}

// lookup returns the batch's copy of a saga, making one on first touch: a
// live saga from memory, a closed one from its marker in the store.
func (r *Runtime[D]) lookup(ctx context.Context, b *batch[D], p int32, id string) (*sagaRecord[D], error) {
	if s, ok := b.changed[p][id]; ok {
		return s, nil
	}
	r.mu.Lock()
	ps := r.parts[p]
	var s *sagaRecord[D]
	if ps != nil {
		s = ps.sagas[id]
		if s == nil {
			s = ps.unsaved[id] // a closed one rebuilt from the journal, its marker not written yet
		}
	}
	r.mu.Unlock()
	if s == nil && ps != nil {
		var err error
		if s, err = r.closedMarker(ctx, p, ps, id); err != nil {
			return nil, err
		}
	}
	if s == nil {
		return nil, nil
	}
	c := s.clone()
	r.keep(b, p, c)
	return c, nil
}

// closedMarker returns the saga of a closed marker in ps's store, if it
// has one.
func (r *Runtime[D]) closedMarker(ctx context.Context, p int32, ps *partitionState[D], id string) (*sagaRecord[D], error) {
	ps.store.mu.Lock()
	var (
		value []byte
		ok    bool
		err   error
	)
	if st := ps.store.st; st != nil {
		value, _, ok, err = st.closedMarker(id)
	}
	ps.store.mu.Unlock()
	if err != nil || !ok {
		return nil, err
	}
	s, err := r.snapshots.decode(ctx, value)
	if err != nil {
		return nil, r.snapshotError(p, id, err)
	}
	return s, nil
}

func (r *Runtime[D]) keep(b *batch[D], p int32, s *sagaRecord[D]) {
	if b.changed[p] == nil {
		b.changed[p] = map[string]*sagaRecord[D]{}
	}
	b.changed[p][s.id] = s
}

// handleRecord turns an inbox record into a state-machine event and applies
// it. What cannot be processed is dead-lettered, inside the transaction.
func (r *Runtime[D]) handleRecord(ctx context.Context, b *batch[D], rec *kgo.Record) error {
	// The process span starts once its parent is known (the saga's or a
	// step's span, from the saga's record), timed from now.
	p := processing[D]{r: r, b: b, rec: rec, ctx: ctx}
	if r.sagaSpans {
		p.start = time.Now()
	}
	env, err := schema.ReadEnvelope(rec.Headers)
	if err != nil {
		return r.deadLetter(p.begin(nil, trace.SpanContext{}), b, rec, env, err)
	}
	id := env.SagaID
	if id == "" {
		id = string(rec.Key) // not before: cmp.Or would copy the key for every record
	}
	if id == "" {
		return r.deadLetter(p.begin(nil, trace.SpanContext{}), b, rec, env, ErrNoSagaID)
	}
	p.env, p.id = env, id
	on := ReplyEventType(env.SagaStep, env.Type)
	if env.SagaStep == "" {
		on = statemachine.EventType("start/" + env.Type)
	}
	switch env.Type {
	case CancelType:
		on = CancelEventType
	case ResumeType:
		on = ResumeEventType
	}
	c, known := r.decoders[on]
	if !known && on != CancelEventType && on != ResumeEventType {
		return r.deadLetter(p.begin(nil, trace.SpanContext{}), b, rec, env, fmt.Errorf("%w: %s %q (step %q)", ErrUnknownEvent, r.saga.name, env.Type, env.SagaStep))
	}
	s, err := r.lookup(ctx, b, rec.Partition, id)
	if err != nil {
		return err
	}
	answers := r.answers(on, env)
	var parent trace.SpanContext
	if s != nil && r.sagaSpans {
		parent = s.structuralParent(answers.step, answers.compensation)
	}
	var payload any
	if known {
		if payload, err = c.decode(ctx, rec.Value); err != nil {
			ctx := p.begin(s, parent)
			if errors.Is(err, schema.ErrRegistryUnavailable) {
				// Not poison: the batch aborts and comes again once the
				// registry answers.
				return fmt.Errorf("%s/%d@%d: %w", rec.Topic, rec.Partition, rec.Offset, err)
			}
			return r.deadLetter(ctx, b, rec, env, err)
		}
	}
	// The orchestrator's own clock, journaled: deadlines then do not depend
	// on the sender's clock, and a replay sees the same time.
	t := r.cfg.Clock.Now().UTC()
	if s == nil {
		if home, ok := r.home(id); ok && home != rec.Partition && !forwarded(rec) {
			return r.forward(p.begin(nil, trace.SpanContext{}), b, rec, id, home)
		}
		if on != r.saga.StartEventType() {
			return r.deadLetter(p.begin(nil, trace.SpanContext{}), b, rec, env, fmt.Errorf("%w: %s %q", ErrUnknownSaga, r.saga.name, id))
		}
		r.mu.Lock()
		at := journalPosition{partition: rec.Partition}
		if ps := r.parts[rec.Partition]; ps != nil {
			at.offset = ps.journalNext
		}
		r.mu.Unlock()
		s = newSagaRecord[D](id, env.CorrelationID, t, at, r.saga.version)
		r.beginSagaSpan(s, env, rec)
		parent = s.rootSpan()
		r.keep(b, rec.Partition, s)
	}
	ctx = p.begin(s, parent)
	if s.saw(env.ID) {
		if span := trace.SpanFromContext(ctx); span.IsRecording() {
			span.SetAttributes(attribute.Bool("sagapipe.duplicate", true))
		}
		return nil // a duplicate changes nothing
	}
	entry := JournalEntry{SagaID: id, EventType: string(on), CEID: env.ID, CEType: env.Type, Time: t,
		Payload: rec.Value}
	if on == CancelEventType || on == ResumeEventType {
		entry.RequestedBy = env.Source
	}
	return r.apply(ctx, b, rec.Partition, s, entry, payload, rec, on, answers)
}

// processing is an inbox record being handled, whose process span starts
// late.
type processing[D any] struct {
	r     *Runtime[D]
	b     *batch[D]
	rec   *kgo.Record
	ctx   context.Context
	start time.Time
	env   schema.Envelope
	id    string
}

// begin starts the record's process span under parent (when valid; else
// under the record's trace context) and returns its context.
func (p *processing[D]) begin(s *sagaRecord[D], parent trace.SpanContext) context.Context {
	// The saga's attributes go with the record's, in one call: the span
	// grows its attributes once, and they are only set if it records.
	var (
		saga  [5]attribute.KeyValue
		attrs []attribute.KeyValue
	)
	if p.id != "" {
		attrs = append(saga[:0], telemetry.SagaName.String(p.r.saga.name), telemetry.SagaID.String(p.id))
		if p.env.SagaStep != "" { // a start event belongs to no step
			attrs = append(attrs, telemetry.SagaStep.String(p.env.SagaStep))
		}
		if s != nil {
			attrs = append(attrs, telemetry.SagaState.String(string(s.state)), telemetry.SagaCompensation.Bool(isCompensation(s.state)))
		}
	}
	var (
		ctx  context.Context
		span trace.Span
	)
	if p.r.sagaSpans { // tracing: the span starts when the record's processing did
		ctx, span = telemetry.StartProcessAt(p.ctx, p.r.tracer, p.r.cfg.Propagator, p.rec, p.r.cfg.Group, parent, p.start, attrs...)
	} else {
		ctx, span = telemetry.StartProcessUnder(p.ctx, p.r.tracer, p.r.cfg.Propagator, p.rec, p.r.cfg.Group, parent, attrs...)
	}
	p.b.spans = append(p.b.spans, span)
	return ctx
}

func (r *Runtime[D]) handleTimer(ctx context.Context, b *batch[D], d dueTimer) error {
	s, err := r.lookup(ctx, b, d.partition, d.id)
	if err != nil || s == nil || s.timer == nil || s.timer.deadline.UnixNano() != d.deadline {
		// Gone, or replaced by a record of this batch (a reply that came
		// with its timer due): the timer that fires must be the one that
		// came due, not the one the reply set.
		return err
	}
	tm := *s.timer
	kind := "timeout"
	if tm.compensation {
		kind = "compensation-timeout"
	}
	// Handled now, not at the deadline: after a delay (a restart, a long
	// batch) the next wait starts from now instead of being due at once.
	now := r.cfg.Clock.Now().UTC()
	if tm.compensation && s.inst.Resumes > 0 {
		kind += fmt.Sprintf("-resume%d", s.inst.Resumes)
	}
	entry := JournalEntry{SagaID: s.id, EventType: string(TimeoutEventType(tm.step, tm.compensation)),
		CEID: fmt.Sprintf("%s/%s/%s/%d", s.id, tm.step, kind, tm.attempt), CEType: "sagapipe.Timeout", Time: now,
		TimerStep: tm.step, TimerAttempt: tm.attempt}
	// A timer is no Kafka message: its span belongs under the attempt it
	// times out or, without saga spans, continues the span that last
	// changed the saga; its commands continue it.
	var parent trace.SpanContext
	if r.sagaSpans {
		parent = s.structuralParent(tm.step, tm.compensation)
	}
	if !parent.IsValid() {
		parent = s.lastSpan()
	}
	ctx, span := r.tracer.Start(trace.ContextWithRemoteSpanContext(ctx, parent), r.saga.name+" "+kind,
		trace.WithSpanKind(trace.SpanKindInternal),
		trace.WithAttributes(telemetry.SagaName.String(r.saga.name), telemetry.SagaID.String(s.id),
			telemetry.SagaStep.String(tm.step), attribute.Int("saga.timer.attempt", int(tm.attempt))))
	b.spans = append(b.spans, span)
	env := schema.Envelope{ID: entry.CEID, Type: entry.CEType, Source: r.cfg.Source, Time: now,
		CorrelationID: s.correlation, SagaName: r.saga.name, SagaID: s.id, SagaStep: tm.step}
	src := &kgo.Record{Topic: r.saga.InboxTopic(), Partition: d.partition, Offset: -1, Key: []byte(s.id), Headers: env.Apply(nil)}
	return r.apply(ctx, b, d.partition, s, entry, TimerFired{Step: tm.step, Attempt: int(tm.attempt)}, src,
		TimeoutEventType(tm.step, tm.compensation), stepRef{step: tm.step, compensation: tm.compensation, timer: true, ok: true})
}

// apply folds entry into s, journals it (applied, or ignored when no
// transition accepts it) and carries out the effects.
func (r *Runtime[D]) apply(ctx context.Context, b *batch[D], p int32, s *sagaRecord[D],
	entry JournalEntry, payload any, src *kgo.Record, on statemachine.EventType, answers stepRef) error {
	span := trace.SpanFromContext(ctx)
	entry.TraceParent = telemetry.TraceParent(ctx)
	from, since := s.state, s.since
	entry.Version = int32(s.version)
	effects, err := r.def(s).apply(s, &entry, payload)
	if err != nil {
		return err
	}
	if err := r.appendJournal(ctx, b, p, entry, src); err != nil {
		return err
	}
	b.journaled[s] = true
	if entry.Outcome == OutcomeIgnored {
		if span.IsRecording() {
			span.SetAttributes(telemetry.SagaState.String(string(s.state)), telemetry.SagaCompensation.Bool(isCompensation(s.state)),
				attribute.Bool("saga.event.ignored", true))
		}
		return nil
	}
	if from == StateNew {
		b.started++
	}
	if step := waitingFor(from); step != "" {
		b.steps = append(b.steps, stepTook{step, entry.Time.Sub(since)})
	}
	compensation := isCompensation(s.state)
	parents := r.advanceSpans(b, s, on, answers, effects)
	for i, e := range effects {
		switch e.Kind {
		case Send:
			cctx := ctx
			if parent, ok := parents[i]; ok {
				cctx = trace.ContextWithSpanContext(ctx, parent)
			}
			m, err := r.command(cctx, s, e, src)
			if err != nil {
				return err
			}
			b.commands[e.Topic] = append(b.commands[e.Topic], m)
			compensation = compensation || e.Compensation
			if e.Attempt > 1 {
				b.resent = append(b.resent, e.Step)
			}
			if e.LongRetry {
				b.longRetries = append(b.longRetries, e.Step)
				r.cfg.Logger.WarnContext(ctx, "step still unanswered past its retries: it cannot be given up (no compensation, or after the pivot), so it is resent until its participant answers",
					"saga_name", r.saga.name, "saga_id", s.id, "correlation_id", s.correlation, "step", e.Step, "attempt", e.Attempt, "topic", e.Topic)
			}
		case Finish:
			b.finished = append(b.finished, finishedSaga{id: s.id, correlation: s.correlation, outcome: e.Outcome,
				took: entry.Time.Sub(s.startedAt()), ctx: trace.ContextWithSpanContext(context.Background(), s.lastSpan())})
		}
	}
	if span.IsRecording() {
		span.SetAttributes(telemetry.SagaState.String(string(s.state)), telemetry.SagaCompensation.Bool(compensation))
	}
	if r.cfg.Logger.Enabled(ctx, slog.LevelDebug) {
		r.cfg.Logger.DebugContext(ctx, "saga event applied", "saga_name", r.saga.name, "saga_id", s.id,
			"correlation_id", s.correlation, "event", entry.EventType, "from", entry.FromState, "to", s.state)
	}
	return nil
}

// waitingFor returns the step a saga in state waits on ("" when none).
func waitingFor(state statemachine.State) string {
	name := string(state)
	if step, ok := strings.CutSuffix(name, ".Pending"); ok {
		return step
	}
	step, _ := strings.CutSuffix(name, ".Compensating")
	if step == name {
		return ""
	}
	return step
}

// isCompensation tells whether a saga in state is undoing its steps.
func isCompensation(state statemachine.State) bool {
	return state == StateCompensated || state == StateCompensationFailed || strings.HasSuffix(string(state), ".Compensating")
}

// effectKind is "do" for a step's command, "undo" for its compensation.
func effectKind(e Effect) string {
	if e.Compensation {
		return "undo"
	}
	return "do"
}

// command builds the message that pipes a Send effect's command.
func (r *Runtime[D]) command(ctx context.Context, s *sagaRecord[D], e Effect, src *kgo.Record) (pipe.Message, error) {
	c := r.encoders[e.EventType]
	value, err := c.encode(ctx, e.Topic, e.Command)
	if err != nil {
		return pipe.Message{}, fmt.Errorf("saga %s: encode %s for %s: %w", r.saga.name, e.EventType, s.id, err)
	}
	kind := effectKind(e)
	if e.Resume > 0 {
		// A resumed compensation starts again at attempt 1: its IDs must
		// not be the ones its participant saw (and may drop) before.
		kind += fmt.Sprintf("-resume%d", e.Resume)
	}
	if slices.ContainsFunc(src.Headers, func(h kgo.RecordHeader) bool { return h.Key == HeaderForwardedFrom }) {
		// Where the event was forwarded from is the inbox's business: a
		// command (and the reply, or another saga's start, piped from it)
		// must not carry it on.
		copied := *src
		copied.Headers = slices.DeleteFunc(slices.Clone(src.Headers), func(h kgo.RecordHeader) bool { return h.Key == HeaderForwardedFrom })
		src = &copied
	}
	var id strings.Builder
	id.Grow(len(s.id) + len(e.Step) + len(kind) + 3 + 20)
	id.WriteString(s.id)
	id.WriteByte('/')
	id.WriteString(e.Step)
	id.WriteByte('/')
	id.WriteString(kind)
	id.WriteByte('/')
	id.WriteString(strconv.Itoa(e.Attempt))
	// The header values in one allocation, each cut with a full slice
	// expression so that appending to one cannot write into the next.
	compensation := strconv.FormatBool(e.Compensation)
	values := make([]byte, 0, len(r.saga.name)+len(r.saga.InboxTopic())+2*len(s.id)+2*len(e.Step)+len(s.correlation)+
		len("/undo")+2+len(s.state)+len(compensation)+len(schema.ContentTypeAvro))
	cut := func(start int) []byte { return values[start:len(values):len(values)] }
	h := func(k string, appendValue ...string) kgo.RecordHeader {
		start := len(values)
		for _, v := range appendValue {
			values = append(values, v...)
		}
		return kgo.RecordHeader{Key: k, Value: cut(start)}
	}
	return pipe.Message{Source: src, Value: value, Type: e.EventType, Context: ctx, ID: id.String(),
		Headers: []kgo.RecordHeader{
			h(schema.HeaderSagaName, r.saga.name), h(schema.HeaderSagaID, s.id), h(schema.HeaderSagaStep, e.Step),
			h(schema.HeaderReplyTo, r.saga.InboxTopic()), h(schema.HeaderCorrelationID, s.correlation),
			h(schema.HeaderIdempotencyKey, s.id, "/", e.Step, "/", effectKind(e)),
			h(schema.HeaderSagaState, string(s.state)), h(schema.HeaderSagaCompensation, compensation),
			h(schema.HeaderContentType, schema.ContentTypeAvro),
		}}, nil
}

// appendJournal adds entry, for the journal partition of the inbox
// partition p, to what the batch's transaction produces.
func (r *Runtime[D]) appendJournal(ctx context.Context, b *batch[D], p int32, entry JournalEntry, src *kgo.Record) error {
	topic := r.saga.JournalTopic()
	value, err := r.journal.Encode(ctx, topic, &entry)
	if err != nil {
		return fmt.Errorf("saga %s: encode journal entry: %w", r.saga.name, err)
	}
	rec := &kgo.Record{Topic: topic, Key: []byte(entry.SagaID), Value: value, Headers: src.Headers}
	pipe.ToPartition(rec, p)
	b.journal = append(b.journal, rec)
	return nil
}

// deadLetter sends an inbox record that cannot be processed to the
// dead-letter topic, in the batch's transaction.
func (r *Runtime[D]) deadLetter(ctx context.Context, b *batch[D], rec *kgo.Record, env schema.Envelope, cause error) error {
	now := r.cfg.Clock.Now()
	f := dlq.Failure{Err: cause, Class: dlq.ClassPoison, Attempts: 1, FirstFailedAt: now, LastFailedAt: now}
	telemetry.Fail(trace.SpanFromContext(ctx), cause)
	ctx, span := telemetry.StartDeadLetter(ctx, r.tracer, rec, r.cfg.DeadLetterTopic, string(f.Class), cause)
	b.spans = append(b.spans, span)
	b.outbox = append(b.outbox, dlq.NewRecord(ctx, rec, f, r.cfg.DeadLetterTopic, r.cfg.Group, r.cfg.Propagator))
	b.dead = append(b.dead, deadLetter{rec: rec, f: f, sagaID: cmp.Or(env.SagaID, string(rec.Key)),
		correlation: env.CorrelationID, ctx: ctx})
	return nil
}

// HeaderForwardedFrom marks an inbox record forwarded to its saga's home
// partition: "<partition>@<offset>-><home partition>".
const HeaderForwardedFrom = "sagapipe_forwarded_from"

// home is the inbox partition that owns saga id: the one the Java default
// partitioner (murmur2, as kgo's default) picks for the key id. Starts
// land there (or are forwarded there), so a saga lives on its home
// partition, whatever partitioner its participants use.
func (r *Runtime[D]) home(id string) (int32, bool) {
	n := r.inboxPartitions.Load()
	if n <= 0 {
		return 0, false
	}
	return int32(r.homes.Partition(&kgo.Record{Key: []byte(id)}, int(n))), true
}

// forwarded tells whether rec was forwarded to the partition it is on: it
// is not forwarded again (were two instances to disagree on the partition
// count). Commands and their replies carry the header on, so only its
// destination counts.
func forwarded(rec *kgo.Record) bool {
	to := "->" + strconv.Itoa(int(rec.Partition))
	for _, h := range rec.Headers {
		if h.Key == HeaderForwardedFrom && strings.HasSuffix(string(h.Value), to) {
			return true
		}
	}
	return false
}

// forward sends rec, an event for saga id that this partition does not
// hold, to the saga's home partition, inside the batch's transaction: it
// is consumed there exactly once, whatever partitioner its producer used
// (librdkafka's default hashes keys with CRC32, not murmur2).
func (r *Runtime[D]) forward(ctx context.Context, b *batch[D], rec *kgo.Record, id string, home int32) error {
	from := fmt.Sprintf("%d@%d->%d", rec.Partition, rec.Offset, home)
	headers := append(slices.Clip(rec.Headers), kgo.RecordHeader{Key: HeaderForwardedFrom, Value: []byte(from)})
	fwd := &kgo.Record{Topic: rec.Topic, Key: rec.Key, Value: rec.Value, Headers: headers, Timestamp: rec.Timestamp}
	pipe.ToPartition(fwd, home)
	b.outbox = append(b.outbox, fwd)
	b.forwarded++
	if span := trace.SpanFromContext(ctx); span.IsRecording() {
		span.SetAttributes(attribute.Int("sagapipe.forwarded_to_partition", int(home)))
	}
	if r.cfg.Logger.Enabled(ctx, slog.LevelDebug) {
		r.cfg.Logger.DebugContext(ctx, "inbox record forwarded to its saga's partition", "saga_name", r.saga.name, "saga_id", id,
			"partition", rec.Partition, "offset", rec.Offset, "home_partition", home)
	}
	return nil
}
