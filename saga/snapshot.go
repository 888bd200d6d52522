package saga

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/sagapipe/sagapipe/internal/telemetry"
	"github.com/sagapipe/sagapipe/schema"
	"github.com/sagapipe/sagapipe/statemachine"
)

// SnapshotVersion is the version of the snapshot format this release writes.
// A release reads every version up to its own; a snapshot of a later version
// is refused with an error that names it, never misread.
const SnapshotVersion = 1

// ErrSnapshot: a snapshot in the state topic cannot be used (undecodable, or
// written by a later release). The error names the saga, the record and the
// fix; the partition is not skipped.
var ErrSnapshot = errors.New("saga: unusable snapshot")

// Snapshot is a saga's latest state, as written to "<saga>.state" (a
// compacted topic keyed by saga ID) in the transaction that changed it:
// everything recovery needs, so that a new owner reads the snapshots of the
// live sagas instead of their journals.
//
// A finished saga's snapshot is a closed marker: Closed is set and Data,
// Completed, Timer and Seen are empty; SeenDigests holds 64-bit digests of
// the ce_ids it journaled, so that a copy of one is still dropped while a
// marker costs the restore of a fresh machine about 150 bytes (a false
// match could only drop an event a closed saga ignores). It stays until
// ClosedRetention after Since (when the saga closed), when a tombstone
// removes it.
type Snapshot struct {
	Version       int32  `avro:"version"`
	SagaID        string `avro:"saga_id"`
	CorrelationID string `avro:"correlation_id"`
	State         string `avro:"state"`
	Closed        bool   `avro:"closed"`
	// Data is the saga's data, Avro in the Confluent wire format under the
	// saga's data schema (so it evolves like any other schema).
	Data      []byte         `avro:"data"`
	Completed []string       `avro:"completed"`
	Attempt   int32          `avro:"attempt"`
	Timer     *SnapshotTimer `avro:"timer"`
	// Seen holds the ce_ids the saga has journaled: duplicates are dropped
	// by them.
	Seen    []string  `avro:"seen"`
	Started time.Time `avro:"started"`
	// Since is when the saga entered State; for a closed marker, when it
	// closed.
	Since time.Time `avro:"since"`
	// TraceParent is the span that last changed the saga: its timers' spans
	// continue it.
	TraceParent string `avro:"traceparent"`
	// JournalPartition and JournalOffset say where the saga's journal
	// entries are: that partition, at or after that offset.
	JournalPartition int32 `avro:"journal_partition"`
	JournalOffset    int64 `avro:"journal_offset"`
	// SeenDigests are a closed marker's digests of Seen (64-bit FNV-1a of
	// each ce_id, sorted).
	SeenDigests []int64 `avro:"seen_digests"`
	// DeadlineMicros is the saga's deadline in Unix microseconds (0:
	// none); Stuck and Resumes are Instance's.
	DeadlineMicros int64  `avro:"deadline_micros"`
	Stuck          string `avro:"stuck"`
	Resumes        int32  `avro:"resumes"`
	// DefinitionVersion is the version of the definition the saga runs
	// on (0: 1).
	DefinitionVersion int32 `avro:"definition_version"`
	// SagaSpan is the saga's span (a W3C traceparent), SagaSpanParent its
	// parent's span ID ("": the trace's root), SagaSpanStartMicros when it
	// began (Unix microseconds) and SagaSpanEnded whether it was emitted;
	// StepSpans are the open step spans. See spans.go.
	SagaSpan            string             `avro:"saga_span"`
	SagaSpanParent      string             `avro:"saga_span_parent"`
	SagaSpanStartMicros int64              `avro:"saga_span_start_micros"`
	SagaSpanEnded       bool               `avro:"saga_span_ended"`
	StepSpans           []SnapshotStepSpan `avro:"step_spans"`
}

// SnapshotStepSpan is an open step attempt's or compensation's span.
type SnapshotStepSpan struct {
	Step         string `avro:"step"`
	Compensation bool   `avro:"compensation"`
	Attempt      int32  `avro:"attempt"`
	SpanID       string `avro:"span_id"`
	StartMicros  int64  `avro:"start_micros"`
}

// SnapshotTimer is a saga's pending deadline.
type SnapshotTimer struct {
	Step         string    `avro:"step"`
	Attempt      int32     `avro:"attempt"`
	Compensation bool      `avro:"compensation"`
	Deadline     time.Time `avro:"deadline"`
}

// SnapshotSchema is the Avro schema of Snapshot.
const SnapshotSchema = `{"type":"record","name":"SagaSnapshot","namespace":"sagapipe.state","fields":[
 {"name":"version","type":"int"},
 {"name":"saga_id","type":"string"},
 {"name":"correlation_id","type":"string"},
 {"name":"state","type":"string"},
 {"name":"closed","type":"boolean"},
 {"name":"data","type":"bytes"},
 {"name":"completed","type":{"type":"array","items":"string"}},
 {"name":"attempt","type":"int"},
 {"name":"timer","type":["null",{"type":"record","name":"SnapshotTimer","fields":[
   {"name":"step","type":"string"},
   {"name":"attempt","type":"int"},
   {"name":"compensation","type":"boolean"},
   {"name":"deadline","type":{"type":"long","logicalType":"timestamp-micros"}}
 ]}],"default":null},
 {"name":"seen","type":{"type":"array","items":"string"}},
 {"name":"started","type":{"type":"long","logicalType":"timestamp-micros"}},
 {"name":"since","type":{"type":"long","logicalType":"timestamp-micros"}},
 {"name":"traceparent","type":"string","default":""},
 {"name":"journal_partition","type":"int"},
 {"name":"journal_offset","type":"long"},
 {"name":"seen_digests","type":{"type":"array","items":"long"},"default":[]},
 {"name":"deadline_micros","type":"long","default":0},
 {"name":"stuck","type":"string","default":""},
 {"name":"resumes","type":"int","default":0},
 {"name":"definition_version","type":"int","default":0},
 {"name":"saga_span","type":"string","default":""},
 {"name":"saga_span_parent","type":"string","default":""},
 {"name":"saga_span_start_micros","type":"long","default":0},
 {"name":"saga_span_ended","type":"boolean","default":false},
 {"name":"step_spans","type":{"type":"array","items":{"type":"record","name":"SnapshotStepSpan","fields":[
   {"name":"step","type":"string"},
   {"name":"compensation","type":"boolean"},
   {"name":"attempt","type":"int"},
   {"name":"span_id","type":"string"},
   {"name":"start_micros","type":"long"}
 ]}},"default":[]}
]}`

// Headers of a state record: what a restore needs to index a snapshot
// without decoding it.
const (
	// HeaderSnapshotKind is "open" or "closed".
	HeaderSnapshotKind = "sagapipe_snapshot"
	// HeaderClosedAt is when a closed marker's saga closed, in Unix
	// milliseconds.
	HeaderClosedAt = "sagapipe_closed_at"
)

// Snapshot kinds.
const (
	snapshotOpen   = "open"
	snapshotClosed = "closed"
)

// snapshots encodes and decodes a saga's snapshots: the envelope and, inside
// it, the data under the saga's data schema.
type snapshots[D any] struct {
	topic string
	env   *schema.Codec[Snapshot]
	data  *schema.Codec[D]
}

func newSnapshots[D any](s *Saga[D], registry *schema.Serde) (*snapshots[D], error) {
	env, err := schema.NewCodec[Snapshot](registry, SnapshotSchema)
	if err != nil {
		return nil, fmt.Errorf("saga %s: snapshot schema: %w", s.name, err)
	}
	data, err := schema.NewCodec[D](registry, s.dataSchema)
	if err != nil {
		return nil, fmt.Errorf("saga %s: data schema: %w", s.name, err)
	}
	return &snapshots[D]{topic: s.StateTopic(), env: env, data: data}, nil
}

// register registers both schemas, so that the first transaction does not.
func (c *snapshots[D]) register(ctx context.Context) error {
	if _, err := c.env.Register(ctx, c.topic); err != nil {
		return fmt.Errorf("snapshot schema: %w", err)
	}
	if _, err := c.data.Register(ctx, c.topic); err != nil {
		return fmt.Errorf("data schema (saga.New's dataSchema): %w", err)
	}
	return nil
}

// encode returns s's snapshot: a closed marker once it is terminal.
func (c *snapshots[D]) encode(ctx context.Context, s *sagaRecord[D], closed bool) ([]byte, error) {
	buf := snapshotPool.Get().(*snapshotBuffer)
	defer func() {
		*buf = snapshotBuffer{}
		snapshotPool.Put(buf)
	}()
	snap := &buf.snap
	*snap = Snapshot{Version: SnapshotVersion, SagaID: s.id, CorrelationID: s.correlation, State: string(s.state),
		Closed: closed, Started: s.startedAt(), Since: s.since, JournalPartition: s.journal.partition, DefinitionVersion: int32(s.version),
		JournalOffset: s.journal.offset, Completed: []string{}, Seen: []string{}, SeenDigests: []int64{}, StepSpans: []SnapshotStepSpan{}}
	if sp := s.spans; sp != nil {
		snap.SagaSpan = telemetry.TraceParent(trace.ContextWithSpanContext(ctx, sp.root.sc))
		if sp.root.parent.IsValid() {
			snap.SagaSpanParent = sp.root.parent.String()
		}
		snap.SagaSpanStartMicros, snap.SagaSpanEnded = sp.root.start.UnixMicro(), sp.root.ended
		for _, o := range sp.open {
			snap.StepSpans = append(snap.StepSpans, SnapshotStepSpan{Step: o.step, Compensation: o.compensation,
				Attempt: int32(o.attempt), SpanID: o.id.String(), StartMicros: o.start.UnixMicro()})
		}
	}
	if closed {
		for _, d := range s.allSeenDigests() {
			snap.SeenDigests = append(snap.SeenDigests, int64(d))
		}
	} else {
		snap.Seen = s.allSeen()
		data, err := c.data.Encode(ctx, c.topic, &s.inst.Data)
		if err != nil {
			return nil, fmt.Errorf("encode the data of saga %s: %w", s.id, err)
		}
		snap.Data, snap.Attempt = data, int32(s.inst.Attempt)
		snap.Stuck, snap.Resumes = s.inst.Stuck, int32(s.inst.Resumes)
		if !s.inst.Deadline.IsZero() {
			snap.DeadlineMicros = s.inst.Deadline.UnixMicro()
		}
		snap.Completed = append(snap.Completed, s.inst.Completed...)
		if t := s.timer; t != nil {
			buf.timer = SnapshotTimer{Step: t.step, Attempt: t.attempt, Compensation: t.compensation, Deadline: t.deadline}
			snap.Timer = &buf.timer
		}
		if sc := s.lastSpan(); sc.IsValid() {
			snap.TraceParent = telemetry.TraceParent(trace.ContextWithSpanContext(ctx, sc))
		}
	}
	return c.env.Encode(ctx, c.topic, snap)
}

// snapshotPool holds what encode fills: a Snapshot (and its timer) escapes
// to the heap per snapshot written otherwise (hundreds of bytes, four
// times a saga), and the encoded bytes are all that is kept.
var snapshotPool = sync.Pool{New: func() any { return new(snapshotBuffer) }}

type snapshotBuffer struct {
	snap  Snapshot
	timer SnapshotTimer
}

// decodeEnvelope decodes a snapshot without its data.
func (c *snapshots[D]) decodeEnvelope(ctx context.Context, value []byte) (Snapshot, error) {
	snap, err := c.env.Decode(ctx, value)
	if err != nil {
		return Snapshot{}, err
	}
	if snap.Version > SnapshotVersion {
		return Snapshot{}, fmt.Errorf("snapshot version %d is newer than this release reads (%d): run the release that wrote it, or a later one",
			snap.Version, SnapshotVersion)
	}
	return snap, nil
}

// decode turns an open snapshot back into the runtime's record of a saga.
func (c *snapshots[D]) decode(ctx context.Context, value []byte) (*sagaRecord[D], error) {
	snap, err := c.decodeEnvelope(ctx, value)
	if err != nil {
		return nil, err
	}
	s := &sagaRecord[D]{id: snap.SagaID, correlation: snap.CorrelationID, state: statemachine.State(snap.State),
		started: snap.Started.UnixNano(), since: snap.Since, seenIDs: appendSeen("", snap.Seen...),
		journal: journalPosition{partition: snap.JournalPartition, offset: snap.JournalOffset}, version: max(int(snap.DefinitionVersion), 1)}
	if sc := telemetry.ParseTraceParent(snap.TraceParent); sc.IsValid() {
		s.span = &sc
	}
	if sc := telemetry.ParseTraceParent(snap.SagaSpan); sc.IsValid() {
		s.spans = &sagaSpans{root: sagaSpan{sc: sc.WithRemote(false), start: time.UnixMicro(snap.SagaSpanStartMicros), ended: snap.SagaSpanEnded}}
		s.spans.root.parent, _ = trace.SpanIDFromHex(snap.SagaSpanParent)
		for _, o := range snap.StepSpans {
			id, err := trace.SpanIDFromHex(o.SpanID)
			if err != nil {
				continue // a span lost, not the saga
			}
			s.spans.open = append(s.spans.open, stepSpan{step: o.Step, compensation: o.Compensation, attempt: int(o.Attempt),
				id: id, start: time.UnixMicro(o.StartMicros)})
		}
	}
	if len(snap.SeenDigests) > 0 {
		digests := make([]uint64, len(snap.SeenDigests))
		for i, d := range snap.SeenDigests {
			digests[i] = uint64(d)
		}
		s.seenDigests = packDigests(digests) // sorted when written; a reader relies on nothing
	}
	if snap.Closed {
		return s, nil
	}
	if s.inst.Data, err = c.data.Decode(ctx, snap.Data); err != nil {
		return nil, fmt.Errorf("the saga's data: %w", err)
	}
	s.inst.Attempt = int(snap.Attempt)
	s.inst.Stuck, s.inst.Resumes = snap.Stuck, int(snap.Resumes)
	if snap.DeadlineMicros != 0 {
		s.inst.Deadline = time.UnixMicro(snap.DeadlineMicros).UTC()
	}
	if len(snap.Completed) > 0 {
		s.inst.Completed = snap.Completed
	}
	if t := snap.Timer; t != nil {
		s.timer = &pendingTimer{step: t.Step, attempt: t.Attempt, compensation: t.Compensation, deadline: t.Deadline}
	}
	return s, nil
}
