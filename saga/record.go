package saga

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"iter"
	"reflect"
	"slices"
	"sort"
	"strings"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/sagapipe/sagapipe/internal/telemetry"
	"github.com/sagapipe/sagapipe/schema"
	"github.com/sagapipe/sagapipe/statemachine"
)

// sagaRecord is what the runtime holds of one live saga: the fold of its
// journal, as its snapshot carries it.
type sagaRecord[D any] struct {
	id          string
	correlation string
	state       statemachine.State
	inst        Instance[D]
	// seenIDs are the ce_ids the saga journaled, each after its length (a
	// uvarint), in one string: a live saga's few IDs then take one small
	// allocation, where a map took its groups and a string per ID.
	seenIDs string
	// seenDigests are the digests of the ce_ids a closed marker's saga
	// journaled (its snapshot keeps no ce_ids, to stay small): a copy of
	// one is dropped. A false match could only drop an event the closed
	// saga would ignore anyway. Sorted, 8 bytes each (big-endian) in one
	// string: 16 bytes of every saga in memory, where a slice took 24.
	seenDigests string
	timer       *pendingTimer
	// span is the span that last changed the saga: the parent of its
	// timers' spans, so that a timeout stays in the saga's trace, when
	// there are no saga spans. Nil without one: a pointer takes 8 bytes of
	// every saga in memory, a span context 64.
	span *trace.SpanContext
	// spans are the saga's span and its open step spans (spans.go); nil
	// without saga spans.
	spans *sagaSpans
	// started is when the saga began, in Unix nanoseconds (8 bytes of
	// every saga in memory, where a time.Time takes 24).
	started int64
	// since is when the saga entered its state.
	since time.Time
	// journal is where its journal entries are.
	journal journalPosition
	// version is the version of the definition it runs on.
	version int
}

// pendingTimer is a saga's timer. Its attempt is an int32 beside
// compensation: 48 bytes, where an int took a 64-byte allocation.
type pendingTimer struct {
	step         string
	attempt      int32
	compensation bool
	deadline     time.Time
}

// journalPosition is a journal partition and an offset at or before a
// saga's first entry in it.
type journalPosition struct {
	partition int32
	offset    int64
}

// closed tells whether the saga is done: completed or compensated, with
// nothing left to wait for. Its snapshot becomes a closed marker and it
// leaves memory. A saga in CompensationFailed stays open: it waits for an
// operator.
func (r *sagaRecord[D]) closed() bool {
	return (r.state == StateCompleted || r.state == StateCompensated) && r.timer == nil
}

func (r *sagaRecord[D]) clone() *sagaRecord[D] {
	c := *r
	if r.spans != nil {
		c.spans = &sagaSpans{root: r.spans.root, open: slices.Clone(r.spans.open)}
	}
	return &c
}

// saw tells whether the saga journaled the event with ce_id id.
func (r *sagaRecord[D]) saw(id string) bool {
	if seenIn(r.seenIDs, id) {
		return true
	}
	if len(r.seenDigests) == 0 {
		return false
	}
	var digest [8]byte
	binary.BigEndian.PutUint64(digest[:], seenDigest(id))
	n := len(r.seenDigests) / 8
	i := sort.Search(n, func(i int) bool { return r.seenDigests[i*8:i*8+8] >= string(digest[:]) })
	return i < n && r.seenDigests[i*8:i*8+8] == string(digest[:])
}

// packDigests returns digests sorted, in seenDigests' form.
func packDigests(digests []uint64) string {
	slices.Sort(digests)
	b := make([]byte, 0, 8*len(digests))
	for _, d := range digests {
		b = binary.BigEndian.AppendUint64(b, d)
	}
	return string(b)
}

// see records that the saga journaled the event with ce_id id.
func (r *sagaRecord[D]) see(id string) {
	if !seenIn(r.seenIDs, id) {
		r.seenIDs = appendSeen(r.seenIDs, id)
	}
}

// appendSeen returns the IDs of seen, then ids, in seenIDs' form.
func appendSeen(seen string, ids ...string) string {
	n := len(seen)
	var size [binary.MaxVarintLen64]byte
	for _, id := range ids {
		// Exactly: the string keeps the builder's whole capacity.
		n += len(binary.AppendUvarint(size[:0], uint64(len(id)))) + len(id)
	}
	var b strings.Builder
	b.Grow(n)
	b.WriteString(seen)
	for _, id := range ids {
		b.Write(binary.AppendUvarint(size[:0], uint64(len(id))))
		b.WriteString(id)
	}
	return b.String()
}

// seenIn tells whether ids, in seenIDs' form, holds id.
func seenIn(ids, id string) bool {
	for next := range seenIDs(ids) {
		if next == id {
			return true
		}
	}
	return false
}

// seenIDs yields the IDs of ids, in seenIDs' form.
func seenIDs(ids string) iter.Seq[string] {
	return func(yield func(string) bool) {
		for len(ids) > 0 {
			var n uint64
			size := 0
			for shift := 0; ; shift += 7 {
				if size == len(ids) || shift > 63 {
					return // only appendSeen writes it: cannot happen
				}
				c := ids[size]
				size++
				n |= uint64(c&0x7f) << shift
				if c < 0x80 {
					break
				}
			}
			if uint64(len(ids)-size) < n {
				return
			}
			if !yield(ids[size : size+int(n)]) {
				return
			}
			ids = ids[size+int(n):]
		}
	}
}

// allSeen returns the sorted ce_ids the saga journaled (not those of a
// closed marker, which kept only their digests).
func (r *sagaRecord[D]) allSeen() []string {
	n := 0
	for range seenIDs(r.seenIDs) {
		n++
	}
	ids := make([]string, 0, n)
	ids = slices.AppendSeq(ids, seenIDs(r.seenIDs))
	slices.Sort(ids)
	return slices.Compact(ids)
}

// allSeenDigests returns the sorted digests of every ce_id the saga
// journaled: a closed marker's Seen.
func (r *sagaRecord[D]) allSeenDigests() []uint64 {
	d := make([]uint64, 0, len(r.seenDigests)/8+4)
	for i := 0; i+8 <= len(r.seenDigests); i += 8 {
		d = append(d, binary.BigEndian.Uint64([]byte(r.seenDigests[i:i+8])))
	}
	for _, id := range r.allSeen() {
		d = append(d, seenDigest(id))
	}
	slices.Sort(d)
	return slices.Compact(d)
}

// startedAt is when the saga began.
func (r *sagaRecord[D]) startedAt() time.Time { return time.Unix(0, r.started).UTC() }

// lastSpan is the span that last changed the saga (invalid without one).
func (r *sagaRecord[D]) lastSpan() trace.SpanContext {
	if r.span == nil {
		return trace.SpanContext{}
	}
	return *r.span
}

// seenDigest is the 64-bit FNV-1a hash of a ce_id.
func seenDigest(id string) uint64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(id))
	return h.Sum64()
}

// newSagaRecord starts the record of a saga: its start event arrived, or
// its journal is being read.
func newSagaRecord[D any](id, correlation string, t time.Time, at journalPosition, version int) *sagaRecord[D] {
	if correlation == "" || correlation == id {
		correlation = id // one string in memory, not two
	}
	return &sagaRecord[D]{id: id, correlation: correlation, state: StateNew, started: t.UnixNano(), since: t, journal: at, version: max(version, 1)}
}

// apply folds a journal entry into s: the saga's one transition function,
// used live (the entry is then being written), when rebuilding from the
// journal, and by Replay. payload is the entry's decoded event (a
// TimerFired for a timer). It fills in the entry's outcome and states and
// returns the effects the transition asks for; an entry no transition
// accepts is ignored and changes nothing but the events seen.
func (sg *Saga[D]) apply(s *sagaRecord[D], entry *JournalEntry, payload any) ([]Effect, error) {
	ev := statemachine.Event{Type: statemachine.EventType(entry.EventType), ID: entry.CEID, Time: entry.Time, Payload: payload}
	if _, ok := payload.(TimerFired); ok {
		s.timer = nil // fired, whatever it leads to
	}
	s.see(entry.CEID)
	entry.FromState = string(s.state)
	res, err := sg.machine.Apply(s.state, s.inst, ev)
	if errors.Is(err, statemachine.ErrNoTransition) {
		entry.ToState, entry.Outcome = string(s.state), OutcomeIgnored
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	entry.ToState, entry.Outcome = string(res.To), OutcomeApplied
	s.state, s.inst, s.since = res.To, res.Data, entry.Time
	if sc := telemetry.ParseTraceParent(entry.TraceParent); sc.IsValid() {
		s.span = &sc // a new one: the batch's copy of the saga shares the old
	}
	for _, e := range res.Effects {
		switch e.Kind {
		case SetTimer:
			s.timer = &pendingTimer{step: e.Step, attempt: int32(e.Attempt), compensation: e.Compensation, deadline: entry.Time.Add(e.After)}
		case Finish:
			s.timer = nil
		}
	}
	return res.Effects, nil
}

// codecs are a saga's codecs over one registry: its events', its
// commands' and its journal's.
type codecs struct {
	decoders map[statemachine.EventType]codec
	ceTypes  map[statemachine.EventType]string // event type → the ce_type it arrives as
	encoders map[string]codec                  // command ce_type → codec
	journal  *schema.Codec[JournalEntry]
}

func (sg *Saga[D]) newCodecs(registry *schema.Serde) (*codecs, error) {
	c := &codecs{decoders: map[statemachine.EventType]codec{}, ceTypes: map[statemachine.EventType]string{},
		encoders: map[string]codec{}}
	var errs []error
	add := func(on statemachine.EventType, e eventSpec) {
		d, err := e.newCodec(registry)
		errs = append(errs, err)
		c.decoders[on], c.ceTypes[on] = d, e.eventType
	}
	addCmd := func(e eventSpec) {
		d, err := e.newCodec(registry)
		errs = append(errs, err)
		c.encoders[e.eventType] = d
	}
	add(sg.StartEventType(), sg.start.event)
	if sg.outcome != nil {
		addCmd(sg.outcome.completed.event)
		addCmd(sg.outcome.failed.event)
	}
	for _, st := range sg.steps {
		addCmd(st.command.event)
		add(ReplyEventType(st.name, st.success.event.eventType), st.success.event)
		if st.failure != nil {
			add(ReplyEventType(st.name, st.failure.event.eventType), st.failure.event)
		}
		if st.compensate != nil {
			addCmd(st.compensate.event)
			add(ReplyEventType(st.name, st.compAck.eventType), *st.compAck)
		}
	}
	j, err := schema.NewCodec[JournalEntry](registry, JournalEntrySchema)
	c.journal = j
	return c, errors.Join(append(errs, err)...)
}

// events returns every event and command type the definition declares,
// with its Go type.
func (sg *Saga[D]) events() map[string]reflect.Type {
	out := map[string]reflect.Type{sg.start.event.eventType: sg.start.event.goType}
	add := func(e eventSpec) { out[e.eventType] = e.goType }
	if sg.outcome != nil {
		add(sg.outcome.completed.event)
		add(sg.outcome.failed.event)
	}
	for _, st := range sg.steps {
		add(st.command.event)
		add(st.success.event)
		if st.failure != nil {
			add(st.failure.event)
		}
		if st.compensate != nil {
			add(st.compensate.event)
			add(*st.compAck)
		}
	}
	return out
}

// merge adds o's codecs that c lacks.
func (c *codecs) merge(o *codecs) {
	for on, d := range o.decoders {
		if _, ok := c.decoders[on]; !ok {
			c.decoders[on], c.ceTypes[on] = d, o.ceTypes[on]
		}
	}
	for t, e := range o.encoders {
		if _, ok := c.encoders[t]; !ok {
			c.encoders[t] = e
		}
	}
}

// payload decodes the event a journal entry recorded.
func (c *codecs) payload(ctx context.Context, sagaName string, entry JournalEntry) (any, error) {
	if entry.TimerStep != "" {
		return TimerFired{Step: entry.TimerStep, Attempt: int(entry.TimerAttempt)}, nil
	}
	if entry.EventType == string(CancelEventType) || entry.EventType == string(ResumeEventType) {
		return nil, nil
	}
	d, ok := c.decoders[statemachine.EventType(entry.EventType)]
	if !ok {
		return nil, fmt.Errorf("event type %q is not part of saga %s (was the definition changed?)", entry.EventType, sagaName)
	}
	return d.decode(ctx, entry.Payload)
}

// ErrReplay: a journal could not be replayed.
var ErrReplay = errors.New("saga: replay")

// Replay folds one saga's journal records (their values as the journal topic
// holds them, in order) through the definition with the fold the runtime
// uses live and in recovery, and returns the state they lead to. registry
// must know the schemas the records were written with. It is what replay
// tests of a changed definition run against recorded journals.
func (sg *Saga[D]) Replay(ctx context.Context, registry *schema.Serde, values [][]byte) (Status[D], error) {
	c, err := sg.newCodecs(registry)
	if err != nil {
		return Status[D]{}, err
	}
	entries := make([]JournalEntry, len(values))
	for i, v := range values {
		if entries[i], err = c.journal.Decode(ctx, v); err != nil {
			return Status[D]{}, fmt.Errorf("%w: record %d: %w", ErrReplay, i, err)
		}
	}
	return sg.fold(ctx, c, entries)
}

// Fold is Replay over entries already decoded (as History returns them):
// the state, data included, of a saga whatever its age or owner.
func (sg *Saga[D]) Fold(ctx context.Context, registry *schema.Serde, entries []JournalEntry) (Status[D], error) {
	c, err := sg.newCodecs(registry)
	if err != nil {
		return Status[D]{}, err
	}
	return sg.fold(ctx, c, entries)
}

func (sg *Saga[D]) fold(ctx context.Context, c *codecs, entries []JournalEntry) (Status[D], error) {
	var s *sagaRecord[D]
	for i, entry := range entries {
		if s == nil {
			s = newSagaRecord[D](entry.SagaID, "", entry.Time, journalPosition{}, int(entry.Version))
		}
		if err := sg.refold(ctx, c, s, entry); err != nil {
			return Status[D]{}, fmt.Errorf("%w: entry %d: %w", ErrReplay, i, err)
		}
	}
	if s == nil {
		return Status[D]{}, fmt.Errorf("%w: no entries", ErrReplay)
	}
	return Status[D]{State: s.state, Instance: s.inst, Closed: s.closed()}, nil
}

// refold applies a journaled entry again, as recovery and replay do, and
// checks that it has the outcome it was journaled with.
func (sg *Saga[D]) refold(ctx context.Context, c *codecs, s *sagaRecord[D], entry JournalEntry) error {
	payload, err := c.payload(ctx, sg.name, entry)
	if err != nil {
		return err
	}
	want := entry.Outcome
	if _, err := sg.apply(s, &entry, payload); err != nil {
		return err
	}
	if entry.Outcome != want {
		return fmt.Errorf("%s %s of saga %s was %s when journaled but is %s now: the definition no longer folds this journal the same way",
			entry.EventType, entry.CEID, s.id, want, entry.Outcome)
	}
	return nil
}
