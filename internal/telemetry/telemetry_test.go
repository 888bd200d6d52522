package telemetry_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/goleak"

	"github.com/sagapipe/sagapipe/internal/telemetry"
	"github.com/sagapipe/sagapipe/schema"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func recorder(t *testing.T) (trace.Tracer, *tracetest.SpanRecorder) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return telemetry.Tracer(tp), rec
}

func attr(s sdktrace.ReadOnlySpan, key string) attribute.Value {
	for _, kv := range s.Attributes() {
		if string(kv.Key) == key {
			return kv.Value
		}
	}
	return attribute.Value{}
}

// A record published under a span and processed on the other side: the
// process span is the publish span's child, baggage comes along, and the
// spans carry the messaging attributes.
func TestInjectExtractRoundTrip(t *testing.T) {
	tracer, spans := recorder(t)
	prop := telemetry.Propagator()
	member, _ := baggage.NewMember("tenant", "acme")
	bag, _ := baggage.New(member)
	ctx, parent := tracer.Start(baggage.ContextWithBaggage(context.Background(), bag), "decide")

	env := schema.NewEnvelope("test.Cmd", "test", time.Now())
	env.SagaName, env.SagaID, env.SagaStep = "orders", "order-1", "payment"
	rec := &kgo.Record{Topic: "payment.commands", Key: []byte("order-1"), Headers: env.Apply(nil)}
	pctx, publish := telemetry.StartPublish(ctx, tracer, prop, rec)
	rec.Partition, rec.Offset = 2, 41
	telemetry.EndPublish(publish, rec, nil)
	parent.End()
	header, _ := schema.Header(rec.Headers, schema.HeaderTraceParent)
	if got := telemetry.TraceParent(pctx); got == "" || header != got {
		t.Fatalf("traceparent header %q, want the publish span's %q", header, got)
	}

	cctx, process := telemetry.StartProcess(context.Background(), tracer, prop, rec, "payment-service")
	process.End()
	if got := baggage.FromContext(cctx).Member("tenant").Value(); got != "acme" {
		t.Errorf("baggage tenant = %q, want acme", got)
	}
	ended := spans.Ended()
	if len(ended) != 3 {
		t.Fatalf("%d spans, want decide, publish, process", len(ended))
	}
	pub, proc := ended[0], ended[2]
	if pub.Name() != "payment.commands publish" || pub.SpanKind() != trace.SpanKindProducer || pub.Parent().SpanID() != parent.SpanContext().SpanID() {
		t.Errorf("publish span %q kind %v parent %v", pub.Name(), pub.SpanKind(), pub.Parent().SpanID())
	}
	if proc.Name() != "payment.commands process" || proc.SpanKind() != trace.SpanKindConsumer ||
		proc.Parent().SpanID() != pub.SpanContext().SpanID() || proc.SpanContext().TraceID() != parent.SpanContext().TraceID() {
		t.Errorf("process span %q kind %v parent %v, want the publish span's child in its trace", proc.Name(), proc.SpanKind(), proc.Parent().SpanID())
	}
	for key, want := range map[string]string{
		"messaging.system": "kafka", "messaging.destination.name": "payment.commands", "messaging.operation.type": "process",
		"messaging.consumer.group.name": "payment-service", "messaging.message.id": env.ID, "messaging.kafka.message.key": "order-1",
	} {
		if got := attr(proc, key).String(); got != want {
			t.Errorf("process span %s = %q, want %q", key, got, want)
		}
	}
	if got := attr(pub, "messaging.destination.partition.id").String(); got != "2" {
		t.Errorf("publish span partition %q, want 2", got)
	}
	// The publish span says what it sends and for which saga.
	for key, want := range map[string]string{
		"cloudevents.event_type": "test.Cmd", "saga.name": "orders", "saga.id": "order-1", "saga.step": "payment",
	} {
		if got := attr(pub, key).String(); got != want {
			t.Errorf("publish span %s = %q, want %q", key, got, want)
		}
	}
}

// A malformed or missing traceparent starts a new trace: the record is
// processed, not failed.
func TestMalformedTraceParentStartsANewTrace(t *testing.T) {
	tracer, spans := recorder(t)
	for _, tc := range []struct{ name, traceparent string }{
		{"garbage", "not-a-traceparent"},
		{"bad hex", "00-zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz-00f067aa0ba902b7-01"},
		{"all-zero trace", "00-00000000000000000000000000000000-00f067aa0ba902b7-01"},
		{"missing", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := &kgo.Record{Topic: "orders.inbox"}
			if tc.traceparent != "" {
				rec.Headers = []kgo.RecordHeader{{Key: schema.HeaderTraceParent, Value: []byte(tc.traceparent)}}
			}
			// Whatever span ctx holds, only the record decides the parent.
			ctx, outer := tracer.Start(context.Background(), "outer")
			defer outer.End()
			_, span := telemetry.StartProcess(ctx, tracer, telemetry.Propagator(), rec, "g")
			span.End()
			got := spans.Ended()[len(spans.Ended())-1]
			if !got.SpanContext().IsValid() || got.Parent().IsValid() || got.SpanContext().TraceID() == outer.SpanContext().TraceID() {
				t.Fatalf("span %v parent %v, want a valid new root", got.SpanContext(), got.Parent())
			}
			if got.Status().Code == codes.Error {
				t.Fatalf("the span failed: %v", got.Status())
			}
		})
	}
}

func TestDeadLetterSpanFails(t *testing.T) {
	tracer, spans := recorder(t)
	cause := errors.New("not avro")
	_, span := telemetry.StartDeadLetter(context.Background(), tracer, &kgo.Record{Topic: "orders.inbox", Offset: 7}, "orders.inbox.dlq", "poison", cause)
	span.End()
	got := spans.Ended()[0]
	if got.Status().Code != codes.Error || got.Status().Description != "not avro" || len(got.Events()) != 1 || got.Events()[0].Name != "exception" {
		t.Fatalf("status %v events %v, want error status and an exception event", got.Status(), got.Events())
	}
	if attr(got, "error.class").String() != "poison" || got.Name() != "orders.inbox.dlq dead-letter" {
		t.Fatalf("span %q attrs %v", got.Name(), got.Attributes())
	}
	if attr(got, "dlq.source.topic").String() != "orders.inbox" || attr(got, "dlq.source.offset").String() != "7" || attr(got, "dlq.source.partition").String() != "0" {
		t.Errorf("the dead-letter span does not say where the record came from: %v", got.Attributes())
	}
	// One set of names: nothing in messaging.* but OTel's current ones.
	for _, a := range got.Attributes() {
		if k := string(a.Key); strings.HasPrefix(k, "messaging.kafka.source") || strings.HasPrefix(k, "messaging.source") {
			t.Errorf("the dead-letter span uses the retired attribute %s", k)
		}
	}
}

func TestTraceParentRoundTrip(t *testing.T) {
	tracer, _ := recorder(t)
	ctx, span := tracer.Start(context.Background(), "x")
	defer span.End()
	tp := telemetry.TraceParent(ctx)
	if got := telemetry.ParseTraceParent(tp); got.TraceID() != span.SpanContext().TraceID() || got.SpanID() != span.SpanContext().SpanID() {
		t.Fatalf("ParseTraceParent(%q) = %v, want %v", tp, got, span.SpanContext())
	}
	if telemetry.ParseTraceParent("garbage").IsValid() || telemetry.ParseTraceParent("").IsValid() || telemetry.TraceParent(context.Background()) != "" {
		t.Fatal("invalid input must give an invalid span context")
	}
}
