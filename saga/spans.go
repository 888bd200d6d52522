package saga

import (
	"context"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"slices"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagapipe/sagapipe/internal/telemetry"
	"github.com/sagapipe/sagapipe/schema"
	"github.com/sagapipe/sagapipe/statemachine"
)

// A saga's trace has the saga's shape: one span for the saga ("orders
// order-000043", from its start to its end), under it one span per step
// attempt and per compensation ("orders: payment", "orders: compensate
// inventory"), and under each of those its command's publish, the
// participant's processing and the reply's processing. The messaging spans
// link to their causal parent (the record's traceparent) where it is not
// their structural one, so the trace stays five levels deep however many
// steps the saga takes.
//
// The saga's and the steps' spans outlive batches, restarts and takeovers:
// their IDs are chosen when they begin and kept in the saga's snapshot, and
// whichever instance owns the saga when one ends emits it, after the
// transaction that ended it commits (see telemetry.EmitSpan). That needs a
// TracerProvider with telemetry.IDGenerator (observability.Setup installs
// it); with another one, spans keep their causal parents: one chain.

// Attributes of the saga's and the steps' spans, beyond telemetry's saga.*.
const (
	attrStepAttempt = attribute.Key("saga.step.attempt")
	attrStepOutcome = attribute.Key("saga.step.outcome")
)

// Step span outcomes.
const (
	stepReplied   = "replied"
	stepFailed    = "failed"
	stepTimedOut  = "timed out"
	stepResent    = "resent"
	stepSagaEnded = "saga ended"
	stepAbandoned = "abandoned" // the saga moved on without it: cancelled, or a sibling branch failed
)

// sagaSpan is a saga's span: chosen when the saga starts, emitted when it
// first ends.
type sagaSpan struct {
	sc     trace.SpanContext
	parent trace.SpanID // invalid: the trace's root
	start  time.Time
	ended  bool
}

// sagaSpans are a saga's span and its open step spans.
type sagaSpans struct {
	root sagaSpan
	open []stepSpan
}

// stepSpan is an open step attempt's or compensation's span.
type stepSpan struct {
	step         string
	compensation bool
	attempt      int
	id           trace.SpanID
	start        time.Time
}

// spanEmission is a span that ended in a batch, emitted if it commits.
type spanEmission struct {
	sc     trace.SpanContext
	parent trace.SpanID
	name   string
	start  time.Time
	attrs  []attribute.KeyValue
	failed string // the error status's description; "" when it did not fail
}

// beginSagaSpan chooses the span of saga s, which rec starts: the one its
// starter chose (HeaderSagaSpan), or else a new one, child of rec's trace
// context.
func (r *Runtime[D]) beginSagaSpan(s *sagaRecord[D], env schema.Envelope, rec *kgo.Record) {
	if !r.sagaSpans {
		return
	}
	start := env.Time
	if start.IsZero() {
		start = time.Now()
	}
	if v, ok := schema.Header(rec.Headers, schema.HeaderSagaSpan); ok {
		if sc := telemetry.ParseTraceParent(v); sc.IsValid() {
			s.spans = &sagaSpans{root: sagaSpan{sc: sc.WithRemote(false), start: start}}
			if p, ok := schema.Header(rec.Headers, schema.HeaderSagaSpanParent); ok {
				s.spans.root.parent, _ = trace.SpanIDFromHex(p)
			}
			return
		}
	}
	causal := telemetry.ParseTraceParent(telemetry.Headers{Record: rec}.Get(schema.HeaderTraceParent))
	if sc := telemetry.ChooseSpan(context.Background(), r.tracer, r.saga.name+" "+s.id, causal); sc.IsValid() {
		s.spans = &sagaSpans{root: sagaSpan{sc: sc, parent: causal.SpanID(), start: start}}
	}
}

// structuralParent is the span a record's or a timer's processing for s
// belongs under: the open span of step (its compensation's when
// compensation), or else the saga's span (invalid without one).
func (s *sagaRecord[D]) structuralParent(step string, compensation bool) trace.SpanContext {
	sp := s.spans
	if sp == nil {
		return trace.SpanContext{}
	}
	for _, st := range strings.Split(step, "+") { // a parallel group's timer: its first open branch
		if i := sp.openSpan(st, compensation); i >= 0 {
			return sp.stepSpanContext(sp.open[i])
		}
	}
	return sp.root.sc
}

// rootSpan is the saga's span (invalid without one).
func (s *sagaRecord[D]) rootSpan() trace.SpanContext {
	if s.spans == nil {
		return trace.SpanContext{}
	}
	return s.spans.root.sc
}

func (sp *sagaSpans) openSpan(step string, compensation bool) int {
	return slices.IndexFunc(sp.open, func(o stepSpan) bool { return o.step == step && o.compensation == compensation })
}

func (sp *sagaSpans) stepSpanContext(o stepSpan) trace.SpanContext {
	return trace.NewSpanContext(trace.SpanContextConfig{TraceID: sp.root.sc.TraceID(), SpanID: o.id,
		TraceFlags: sp.root.sc.TraceFlags(), TraceState: sp.root.sc.TraceState()})
}

// answers returns the step attempt an inbox event on answers: a reply's
// step (its compensation's when on is its compensation's reply), or none.
func (r *Runtime[D]) answers(on statemachine.EventType, env schema.Envelope) stepRef {
	if env.SagaStep == "" || env.SagaStep == OutcomeStep {
		return stepRef{}
	}
	return stepRef{step: env.SagaStep, compensation: r.compensationAcks[on], ok: true}
}

// advanceSpans moves s's step spans along with an applied event: the
// attempt it answers ends (unless the event sends it again), each command
// it sends gets a span of its own (ending the attempt it supersedes), and
// when the saga ends every open span ends, then the saga's. It returns the
// parent of each Send effect's command, by index in effects.
func (r *Runtime[D]) advanceSpans(b *batch[D], s *sagaRecord[D], on statemachine.EventType, related stepRef,
	effects []Effect) map[int]trace.SpanContext {
	sp := s.spans
	if sp == nil {
		return nil
	}
	if !r.sagaSpans {
		s.spans = nil // this instance cannot emit them: they would end stale elsewhere
		return nil
	}
	now := time.Now()
	end := func(i int, outcome string, failed string) {
		o := sp.open[i]
		b.emissions = append(b.emissions, spanEmission{sc: sp.stepSpanContext(o), parent: sp.root.sc.SpanID(),
			name: r.stepSpanName(o.step, o.compensation), start: o.start, failed: failed,
			attrs: []attribute.KeyValue{telemetry.SagaName.String(r.saga.name), telemetry.SagaID.String(s.id),
				telemetry.SagaStep.String(o.step), telemetry.SagaState.String(string(s.state)),
				telemetry.SagaCompensation.Bool(o.compensation), attrStepAttempt.Int(o.attempt), attrStepOutcome.String(outcome)}})
		sp.open = slices.Delete(sp.open, i, i+1)
	}
	outcome, failed := stepReplied, ""
	switch {
	case r.failureReplies[on]:
		outcome, failed = stepFailed, "the step's failure reply"
	case related.timer:
		outcome, failed = stepTimedOut, "no reply before the step's timeout"
	}
	var parents map[int]trace.SpanContext
	for i, e := range effects {
		if e.Kind != Send {
			continue
		}
		if parents == nil {
			parents = map[int]trace.SpanContext{}
		}
		if e.Step == OutcomeStep || e.Step == "" {
			parents[i] = sp.root.sc
			continue
		}
		if j := sp.openSpan(e.Step, e.Compensation); j >= 0 {
			if related.answers(e.Step, e.Compensation) {
				end(j, outcome, failed)
			} else {
				end(j, stepResent, "")
			}
		}
		o := stepSpan{step: e.Step, compensation: e.Compensation, attempt: e.Attempt, start: now,
			id: stepSpanID(sp.root.sc.SpanID(), e)}
		sp.open = append(sp.open, o)
		parents[i] = sp.stepSpanContext(o)
	}
	if related.ok {
		// What the event answers ends, unless it sent it again; a parallel
		// group's timer answers each branch still open.
		for _, st := range strings.Split(related.step, "+") {
			if j := sp.openSpan(st, related.compensation); j >= 0 && !slices.ContainsFunc(effects, func(e Effect) bool {
				return e.Kind == Send && e.Step == st && e.Compensation == related.compensation
			}) {
				end(j, outcome, failed)
			}
		}
	}
	if !slices.ContainsFunc(effects, func(e Effect) bool { return e.Kind == Finish }) {
		// What the saga no longer waits for ends now, not when the saga
		// does: a pending step when the saga is cancelled, a branch's
		// sibling when the branch fails.
		awaited := strings.Split(waitingFor(s.state), "+")
		compensating := strings.HasSuffix(string(s.state), ".Compensating")
		for i := len(sp.open) - 1; i >= 0; i-- {
			if o := sp.open[i]; o.compensation != compensating || !slices.Contains(awaited, o.step) {
				end(i, stepAbandoned, "")
			}
		}
	}
	for _, e := range effects {
		if e.Kind != Finish {
			continue
		}
		for len(sp.open) > 0 {
			end(len(sp.open)-1, stepSagaEnded, "")
		}
		if !sp.root.ended {
			sp.root.ended = true
			em := spanEmission{sc: sp.root.sc, parent: sp.root.parent, name: r.saga.name + " " + s.id, start: sp.root.start,
				attrs: []attribute.KeyValue{telemetry.SagaName.String(r.saga.name), telemetry.SagaID.String(s.id),
					telemetry.SagaState.String(string(s.state)), telemetry.SagaOutcome.String(string(e.Outcome)),
					telemetry.SagaCompensation.Bool(e.Outcome != StateCompleted)}}
			if e.Outcome != StateCompleted {
				em.failed = "the saga ended " + string(e.Outcome)
			}
			b.emissions = append(b.emissions, em)
		}
	}
	return parents
}

// stepRef names the step attempt an event answers.
type stepRef struct {
	step         string // a step, or a parallel group's steps joined by "+"
	compensation bool
	timer        bool // the event is the attempt's timeout
	ok           bool
}

// answers tells whether the event ends step's attempt (compensation's, if
// set).
func (ref stepRef) answers(step string, compensation bool) bool {
	return ref.ok && ref.compensation == compensation && slices.Contains(strings.Split(ref.step, "+"), step)
}

// stepSpanID is the span ID of the attempt e sends: derived from the saga's
// span and the attempt, so that a batch that aborts and comes again gives
// the attempt the ID its first try gave the spans it exported.
func stepSpanID(root trace.SpanID, e Effect) trace.SpanID {
	h := fnv.New64a()
	_, _ = h.Write(root[:])
	_, _ = fmt.Fprintf(h, "\x00%s\x00%t\x00%d\x00%d", e.Step, e.Compensation, e.Attempt, e.Resume)
	var id trace.SpanID
	binary.BigEndian.PutUint64(id[:], h.Sum64())
	if !id.IsValid() {
		id[7] = 1
	}
	return id
}

func (r *Runtime[D]) stepSpanName(step string, compensation bool) string {
	if compensation {
		return r.saga.name + ": compensate " + step
	}
	return r.saga.name + ": " + step
}

// emit records the spans that ended in a committed batch. They end now,
// once the batch's own spans have: their children (the processing and
// commands of the batch) fit within them.
func (r *Runtime[D]) emit(ctx context.Context, emissions []spanEmission) {
	end := time.Now()
	for _, em := range emissions {
		span := telemetry.EmitSpan(ctx, r.tracer, em.sc, em.parent, em.name, trace.WithTimestamp(em.start),
			trace.WithSpanKind(trace.SpanKindInternal), trace.WithAttributes(em.attrs...))
		if em.failed != "" {
			span.SetStatus(codes.Error, em.failed)
		} else {
			span.SetStatus(codes.Ok, "")
		}
		span.End(trace.WithTimestamp(end))
	}
}

// classifyReplies adds sg's failure replies and compensation replies.
func (sg *Saga[D]) classifyReplies(failures, acks map[statemachine.EventType]bool) {
	for _, st := range sg.steps {
		if st.failure != nil {
			failures[ReplyEventType(st.name, st.failure.event.eventType)] = true
		}
		if st.compAck != nil {
			acks[ReplyEventType(st.name, st.compAck.eventType)] = true
		}
	}
}
