package telemetry

import (
	"context"
	"encoding/binary"
	"math/rand/v2"

	"go.opentelemetry.io/otel/trace"
)

// A span that lasts as long as a saga (or one of its steps) outlives the
// process that began it: a restart, a takeover by another instance. Its ID
// is therefore chosen when it begins, kept in the saga's snapshot, given to
// its children as their parent, and the span itself is emitted when it
// ends, by whichever instance then owns the saga, with that ID. The OTel API
// has no way to name a span's ID; the SDK asks its IDGenerator, with the
// span's context. IDGenerator reads the ID from there.

type presetKey struct{}

type presetIDs struct {
	trace trace.TraceID
	span  trace.SpanID
}

// WithPresetIDs returns ctx asking IDGenerator to give the next span started
// with it span's ID and, if it is a root, traceID.
func WithPresetIDs(ctx context.Context, traceID trace.TraceID, span trace.SpanID) context.Context {
	return context.WithValue(ctx, presetKey{}, presetIDs{traceID, span})
}

// IDGenerator makes random trace and span IDs, or those WithPresetIDs put
// in the span's context. It implements the OTel SDK's IDGenerator; a
// TracerProvider needs it for the saga and step spans to be emitted
// (observability.Setup installs it).
type IDGenerator struct{}

// NewIDs returns the preset IDs of ctx, or random ones.
func (IDGenerator) NewIDs(ctx context.Context) (trace.TraceID, trace.SpanID) {
	if p, ok := ctx.Value(presetKey{}).(presetIDs); ok && p.trace.IsValid() && p.span.IsValid() {
		return p.trace, p.span
	}
	return NewTraceID(), NewSpanID()
}

// NewSpanID returns the preset span ID of ctx, or a random one.
func (IDGenerator) NewSpanID(ctx context.Context, _ trace.TraceID) trace.SpanID {
	if p, ok := ctx.Value(presetKey{}).(presetIDs); ok && p.span.IsValid() {
		return p.span
	}
	return NewSpanID()
}

// NewTraceID returns a random, valid trace ID.
func NewTraceID() trace.TraceID {
	var id trace.TraceID
	for !id.IsValid() {
		binary.BigEndian.PutUint64(id[:8], rand.Uint64())
		binary.BigEndian.PutUint64(id[8:], rand.Uint64())
	}
	return id
}

// NewSpanID returns a random, valid span ID.
func NewSpanID() trace.SpanID {
	var id trace.SpanID
	for !id.IsValid() {
		binary.BigEndian.PutUint64(id[:], rand.Uint64())
	}
	return id
}

// HonoursPresetIDs tells whether tracer's provider gives a span the ID
// WithPresetIDs asks for.
func HonoursPresetIDs(tracer trace.Tracer) bool {
	want := trace.SpanID{0x73, 0x61, 0x67, 0x61, 2}
	return probe(tracer, want) == want
}

// probeParent is a remote parent that is not sampled: a parent-based
// sampler (the SDK's default) neither records nor exports its children.
var probeParent = trace.NewSpanContext(trace.SpanContextConfig{
	TraceID: trace.TraceID{0x73, 0x61, 0x67, 0x61, 0x70, 0x69, 0x70, 0x65, 1},
	SpanID:  trace.SpanID{0x73, 0x61, 0x67, 0x61, 1}, Remote: true})

// probe starts and ends a span under probeParent, asking for the ID preset,
// and returns the span's ID.
func probe(tracer trace.Tracer, preset trace.SpanID) trace.SpanID {
	ctx := WithPresetIDs(trace.ContextWithRemoteSpanContext(context.Background(), probeParent), probeParent.TraceID(), preset)
	_, span := tracer.Start(ctx, "sagapipe ID probe")
	span.End()
	return span.SpanContext().SpanID()
}

// ChooseSpan chooses the IDs of a span that will be emitted later, maybe by
// another process, with EmitSpan: a child of parent, or a new trace's root
// when parent is invalid. It starts the span for its IDs and the sampler's
// decision and never ends it, so it is never exported: the sampler decides
// a root by its trace ID (the standard ones do), and EmitSpan's decision on
// the same IDs is then the same one, with the same sampler. The span
// context is invalid when tracer records nothing (the no-op API).
func ChooseSpan(ctx context.Context, tracer trace.Tracer, name string, parent trace.SpanContext) trace.SpanContext {
	opts := []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindInternal)}
	if parent.IsValid() {
		ctx = trace.ContextWithRemoteSpanContext(ctx, parent)
	} else {
		ctx = trace.ContextWithSpanContext(ctx, trace.SpanContext{})
		opts = append(opts, trace.WithNewRoot())
	}
	_, span := tracer.Start(ctx, name, opts...)
	sc := span.SpanContext()
	if !sc.IsValid() || sc.SpanID() == parent.SpanID() {
		return trace.SpanContext{}
	}
	return sc.WithRemote(false)
}

// EmitSpan records a span that began earlier, perhaps in another process,
// under the ID chosen then: its parent (invalid: a root of trace sc's
// trace), its name, and what opts add (timestamps, kind, attributes, links).
// It returns the span to end.
func EmitSpan(ctx context.Context, tracer trace.Tracer, sc trace.SpanContext, parent trace.SpanID,
	name string, opts ...trace.SpanStartOption) trace.Span {
	ctx = WithPresetIDs(ctx, sc.TraceID(), sc.SpanID())
	if parent.IsValid() {
		ctx = trace.ContextWithRemoteSpanContext(ctx, trace.NewSpanContext(trace.SpanContextConfig{
			TraceID: sc.TraceID(), SpanID: parent, TraceFlags: sc.TraceFlags(), TraceState: sc.TraceState(), Remote: true}))
	} else {
		ctx = trace.ContextWithSpanContext(ctx, trace.SpanContext{})
		opts = append(opts, trace.WithNewRoot())
	}
	_, span := tracer.Start(ctx, name, opts...)
	return span
}
