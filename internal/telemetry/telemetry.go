// Package telemetry is the tracing and metrics machinery that pipe/, dlq/ and
// saga/ share: spans for Kafka hops named and attributed after the OTel
// messaging conventions, and the header carrier the trace context rides in.
//
// It uses only the OTel API. Which SDK (if any) records what it makes is the
// application's choice, made in observability.Setup or its own code.
package telemetry

import (
	"context"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/sagapipe/sagapipe/schema"
)

// ScopeName is the instrumentation scope of every span and instrument.
const ScopeName = "github.com/sagapipe/sagapipe"

// LatencyBuckets are histogram bounds, in seconds, for durations from a
// millisecond (a commit) to minutes (a saga waiting out timeouts).
var LatencyBuckets = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300}

// Saga attribute keys.
const (
	SagaName         = attribute.Key("saga.name")
	SagaID           = attribute.Key("saga.id")
	SagaStep         = attribute.Key("saga.step")
	SagaState        = attribute.Key("saga.state")
	SagaCompensation = attribute.Key("saga.compensation")
	SagaOutcome      = attribute.Key("saga.outcome")
	ErrorClass       = attribute.Key("error.class")
	// SourceTopic, SourcePartition and SourceOffset say where a
	// dead-lettered record came from (not messaging.*: OTel's messaging
	// conventions have no source of a dead letter, and their 1.18
	// messaging.kafka.source.* names are gone).
	SourceTopic     = attribute.Key("dlq.source.topic")
	SourcePartition = attribute.Key("dlq.source.partition")
	SourceOffset    = attribute.Key("dlq.source.offset")
)

// Propagator is W3C TraceContext plus Baggage. It is set explicitly rather
// than taken from otel's global, which propagates nothing until an
// application installs one.
func Propagator() propagation.TextMapPropagator {
	return propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})
}

// Tracer returns the scope's tracer of tp, or of otel's global provider when
// tp is nil.
func Tracer(tp trace.TracerProvider) trace.Tracer {
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	return tp.Tracer(ScopeName)
}

// Meter returns the scope's meter of mp, or of otel's global provider when
// mp is nil.
func Meter(mp metric.MeterProvider) metric.Meter {
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	return mp.Meter(ScopeName)
}

// DeadLetterRecords is the counter of records sent to a dead-letter topic,
// by dlq.source.topic and error.class: one instrument for the dlq
// consumer's and the saga runtime's dead letters.
func DeadLetterRecords(m metric.Meter) (metric.Int64Counter, error) {
	return m.Int64Counter("sagapipe.dlq.records", metric.WithUnit("{record}"),
		metric.WithDescription("Records sent to a dead-letter topic, by source topic and error class."))
}

// Headers adapts a record's headers to a TextMapCarrier. Set writes in
// place: use it only on records whose header slice the caller built.
type Headers struct{ Record *kgo.Record }

// Get returns the last value of key.
func (h Headers) Get(key string) string {
	v, _ := schema.Header(h.Record.Headers, key)
	return v
}

// Set replaces key's value, or adds the header.
func (h Headers) Set(key, value string) {
	for i := range h.Record.Headers {
		if h.Record.Headers[i].Key == key {
			h.Record.Headers[i].Value = []byte(value)
			return
		}
	}
	h.Record.Headers = append(h.Record.Headers, kgo.RecordHeader{Key: key, Value: []byte(value)})
}

// Keys lists the header names.
func (h Headers) Keys() []string {
	keys := make([]string, len(h.Record.Headers))
	for i, hd := range h.Record.Headers {
		keys[i] = hd.Key
	}
	return keys
}

// StartProcess starts the "<topic> process" span of a consumed record. Its
// parent is the trace context in the record's headers; a record without one,
// or with a malformed traceparent, starts a new trace rather than failing.
// Only the record decides the parent; ctx gives cancellation and values.
//
// Attributes are set once the span is known to record, so a process that
// exports nothing does not pay for them (samplers do not see them). When
// tracer cannot record (the no-op API, or otel's global tracer while no
// provider is installed) and there is no trace context to carry on, no
// span is started: ctx comes back as it is, with a no-op span.
func StartProcess(ctx context.Context, tracer trace.Tracer, prop propagation.TextMapPropagator, rec *kgo.Record, group string, attrs ...attribute.KeyValue) (context.Context, trace.Span) {
	return StartProcessUnder(ctx, tracer, prop, rec, group, trace.SpanContext{}, attrs...)
}

// StartProcessUnder is StartProcess with a structural parent: when parent
// is valid (a saga's or a step's span), the span is its child and links to
// the record's trace context, its causal parent, as OTel's messaging
// conventions allow. Then a saga's trace stays a few levels deep however
// many hops it takes.
func StartProcessUnder(ctx context.Context, tracer trace.Tracer, prop propagation.TextMapPropagator, rec *kgo.Record, group string, parent trace.SpanContext, attrs ...attribute.KeyValue) (context.Context, trace.Span) {
	return startProcess(ctx, tracer, prop, rec, group, parent, nil, attrs)
}

// StartProcessAt is StartProcessUnder for a span that began at start.
func StartProcessAt(ctx context.Context, tracer trace.Tracer, prop propagation.TextMapPropagator, rec *kgo.Record, group string, parent trace.SpanContext, start time.Time, attrs ...attribute.KeyValue) (context.Context, trace.Span) {
	return startProcess(ctx, tracer, prop, rec, group, parent, []trace.SpanStartOption{trace.WithTimestamp(start)}, attrs)
}

func startProcess(ctx context.Context, tracer trace.Tracer, prop propagation.TextMapPropagator, rec *kgo.Record, group string,
	parent trace.SpanContext, opts []trace.SpanStartOption, attrs []attribute.KeyValue) (context.Context, trace.Span) {
	if !parent.IsValid() && recordsNothing(tracer) && !trace.SpanContextFromContext(ctx).IsValid() &&
		prop.Extract(context.Background(), Headers{rec}) == context.Background() {
		// The span would carry no trace context on and record nothing.
		return ctx, noopSpan
	}
	ctx = prop.Extract(trace.ContextWithSpanContext(ctx, trace.SpanContext{}), Headers{rec})
	if parent.IsValid() {
		if causal := trace.SpanContextFromContext(ctx); causal.IsValid() && causal.SpanID() != parent.SpanID() {
			opts = append(opts, trace.WithLinks(trace.Link{SpanContext: causal}))
		}
		ctx = trace.ContextWithRemoteSpanContext(ctx, parent)
	}
	if opts == nil {
		opts = consumerKind
	} else {
		opts = append(opts, consumerKind...)
	}
	ctx, span := tracer.Start(ctx, rec.Topic+" process", opts...)
	if !span.IsRecording() {
		return ctx, span
	}
	h := readSpanHeaders(rec)
	base := make([]attribute.KeyValue, 0, 9+len(sagaHeaders)+1+len(attrs))
	base = append(base,
		semconv.MessagingSystemKafka,
		semconv.MessagingOperationTypeProcess,
		semconv.MessagingOperationName("process"),
		semconv.MessagingDestinationName(rec.Topic),
		semconv.MessagingDestinationPartitionID(strconv.Itoa(int(rec.Partition))),
		semconv.MessagingKafkaOffset(int(rec.Offset)),
	)
	if group != "" {
		base = append(base, semconv.MessagingConsumerGroupName(group))
	}
	if h.ok[headerID] {
		base = append(base, semconv.MessagingMessageID(h.v[headerID]))
	}
	if len(rec.Key) > 0 {
		base = append(base, semconv.MessagingKafkaMessageKey(h.key))
	}
	span.SetAttributes(append(h.sagaAttrs(base), attrs...)...)
	return ctx, span
}

// The span kinds of a hop's spans, made once: an option is an allocation.
var (
	consumerKind = []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindConsumer)}
	producerKind = []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindProducer)}
)

// StartPublish starts the "<topic> publish" span of a record about to be
// produced, as a child of ctx's span, and writes its trace context into the
// record's headers. End it with EndPublish once the broker has answered.
// As StartProcess, it starts no span when tracer cannot record and ctx
// holds no span context: only ctx's baggage is written.
func StartPublish(ctx context.Context, tracer trace.Tracer, prop propagation.TextMapPropagator, rec *kgo.Record) (context.Context, trace.Span) {
	if recordsNothing(tracer) && !trace.SpanContextFromContext(ctx).IsValid() {
		prop.Inject(ctx, Headers{rec}) // no traceparent to write, but ctx's baggage
		return ctx, noopSpan
	}
	ctx, span := tracer.Start(ctx, rec.Topic+" publish", producerKind...)
	prop.Inject(ctx, Headers{rec})
	if !span.IsRecording() {
		return ctx, span
	}
	h := readSpanHeaders(rec)
	attrs := make([]attribute.KeyValue, 0, 7+len(sagaHeaders)+1)
	attrs = append(attrs,
		semconv.MessagingSystemKafka,
		semconv.MessagingOperationTypeSend,
		semconv.MessagingOperationName("publish"),
		semconv.MessagingDestinationName(rec.Topic),
	)
	if h.ok[headerID] {
		attrs = append(attrs, semconv.MessagingMessageID(h.v[headerID]))
	}
	if len(rec.Key) > 0 {
		attrs = append(attrs, semconv.MessagingKafkaMessageKey(h.key))
	}
	// What is sent, for whom: a command and its compensation go to the
	// same topic, and only the type tells them apart.
	if h.ok[headerType] {
		attrs = append(attrs, semconv.CloudEventsEventType(h.v[headerType]))
	}
	span.SetAttributes(h.sagaAttrs(attrs)...)
	return ctx, span
}

// noopSpan is the span of a hop that records nothing and carries no trace
// context on: starting one from a tracer that records nothing would only
// allocate it and a context holding it.
var noopSpan = trace.SpanFromContext(context.Background())

// globalProvider and globalTracer are the types of otel's delegating global
// provider and its tracers: until an application installs a provider
// (otel.SetTracerProvider), those tracers record nothing, and their spans
// only carry their parent's context on. Nil when a provider was installed
// before this package's initialisation.
var globalProvider, globalTracer = func() (reflect.Type, reflect.Type) {
	tp := otel.GetTracerProvider()
	t := reflect.TypeOf(tp)
	if t.Kind() != reflect.Pointer || t.Elem().PkgPath() != "go.opentelemetry.io/otel/internal/global" {
		return nil, nil
	}
	return t, reflect.TypeOf(tp.Tracer(ScopeName))
}()

// recordsNothing tells whether every span tracer starts is a non-recording
// one that carries its parent's context: the no-op API's tracers, and the
// global ones while no provider is installed (otel's eBPF
// auto-instrumentation, which can make those record, is not detected).
func recordsNothing(tracer trace.Tracer) bool {
	if _, ok := tracer.(noop.Tracer); ok {
		return true
	}
	return globalTracer != nil && reflect.TypeOf(tracer) == globalTracer && reflect.TypeOf(otel.GetTracerProvider()) == globalProvider
}

// sagaHeaders are the saga headers a span's saga.* attributes come from,
// at their index in spanHeaders.
var sagaHeaders = []struct {
	index int
	key   attribute.Key
}{{headerSagaName, SagaName}, {headerSagaID, SagaID}, {headerSagaStep, SagaStep}, {headerSagaState, SagaState}}

// spanHeaders are the headers a hop's span attributes are read from.
var spanHeaders = [...]string{schema.HeaderID, schema.HeaderType, schema.HeaderSagaName, schema.HeaderSagaID,
	schema.HeaderSagaStep, schema.HeaderSagaState, schema.HeaderSagaCompensation}

const (
	headerID = iota
	headerType
	headerSagaName
	headerSagaID
	headerSagaStep
	headerSagaState
	headerSagaCompensation
)

// spanHeaderValues are a record's spanHeaders (the last of each name) and
// key, as strings.
type spanHeaderValues struct {
	v   [len(spanHeaders)]string
	ok  [len(spanHeaders)]bool
	key string
}

// readSpanHeaders reads rec's spanHeaders and key into one string, cut into
// the values: the span keeps them all until it is exported, and one
// allocation costs less than one per value.
func readSpanHeaders(rec *kgo.Record) spanHeaderValues {
	var (
		h  spanHeaderValues
		at [len(spanHeaders)]int
	)
	n := len(rec.Key)
	for i, name := range spanHeaders {
		at[i] = -1
		for j := len(rec.Headers) - 1; j >= 0; j-- {
			if rec.Headers[j].Key == name {
				at[i] = j
				n += len(rec.Headers[j].Value)
				break
			}
		}
	}
	var b strings.Builder
	b.Grow(n)
	b.Write(rec.Key)
	for _, j := range at {
		if j >= 0 {
			b.Write(rec.Headers[j].Value)
		}
	}
	s := b.String()
	h.key, s = s[:len(rec.Key)], s[len(rec.Key):]
	for i, j := range at {
		if j >= 0 {
			l := len(rec.Headers[j].Value)
			h.v[i], h.ok[i], s = s[:l], true, s[l:]
		}
	}
	return h
}

// sagaAttrs appends to attrs the saga.* attributes of the saga headers
// (those present and not empty).
func (h *spanHeaderValues) sagaAttrs(attrs []attribute.KeyValue) []attribute.KeyValue {
	for _, sh := range sagaHeaders {
		if v := h.v[sh.index]; v != "" {
			attrs = append(attrs, sh.key.String(v))
		}
	}
	if v := h.v[headerSagaCompensation]; v != "" {
		attrs = append(attrs, SagaCompensation.Bool(v == "true"))
	}
	return attrs
}

// SagaHeaders appends to attrs the saga.* attributes of a record's saga
// headers (those it has, not empty): whoever produces or processes a saga's
// record, its span says which saga, step and state.
func SagaHeaders(attrs []attribute.KeyValue, headers []kgo.RecordHeader) []attribute.KeyValue {
	h := readSpanHeaders(&kgo.Record{Headers: headers})
	return h.sagaAttrs(attrs)
}

// EndPublish ends a publish span with where the record landed, or its error.
func EndPublish(span trace.Span, rec *kgo.Record, err error) {
	if !span.IsRecording() {
		return
	}
	if err != nil {
		Fail(span, err)
	} else {
		span.SetAttributes(
			semconv.MessagingDestinationPartitionID(strconv.Itoa(int(rec.Partition))),
			semconv.MessagingKafkaOffset(int(rec.Offset)))
	}
	span.End()
}

// StartDeadLetter starts the span of a record's dispatch to a dead-letter
// topic: error status, the cause as an exception event. The dead letter's
// headers should carry its context, so the DLQ record stays in the trace.
func StartDeadLetter(ctx context.Context, tracer trace.Tracer, rec *kgo.Record, dlqTopic, class string, cause error) (context.Context, trace.Span) {
	ctx, span := tracer.Start(ctx, dlqTopic+" dead-letter",
		trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(SagaHeaders([]attribute.KeyValue{
			semconv.MessagingSystemKafka,
			semconv.MessagingOperationTypeSend,
			semconv.MessagingOperationName("dead-letter"),
			semconv.MessagingDestinationName(dlqTopic),
			SourceTopic.String(rec.Topic),
			SourcePartition.Int(int(rec.Partition)),
			SourceOffset.Int64(rec.Offset),
			ErrorClass.String(class),
		}, rec.Headers)...))
	Fail(span, cause)
	return ctx, span
}

// Fail marks span failed by err: error status and an exception event.
func Fail(span trace.Span, err error) {
	span.RecordError(err)
	span.SetStatus(codes.Error, err.Error())
}

// TraceParent formats ctx's span context as a W3C traceparent ("" when ctx
// holds none).
func TraceParent(ctx context.Context) string {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return "" // the common case without tracing: no carrier to allocate
	}
	var c propagation.MapCarrier = map[string]string{}
	propagation.TraceContext{}.Inject(ctx, c)
	return c["traceparent"]
}

// ParseTraceParent is TraceParent's inverse: the span context of a W3C
// traceparent, invalid when s is empty or malformed.
func ParseTraceParent(s string) trace.SpanContext {
	if s == "" {
		return trace.SpanContext{}
	}
	ctx := propagation.TraceContext{}.Extract(context.Background(), propagation.MapCarrier{"traceparent": s})
	return trace.SpanContextFromContext(ctx)
}
