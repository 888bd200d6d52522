package telemetry_test

import (
	"context"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/sagapipe/sagapipe/internal/telemetry"
	"github.com/sagapipe/sagapipe/schema"
)

func benchRecord() *kgo.Record {
	env := schema.NewEnvelope("orders.PaymentCharged", "payment", time.Now())
	env.SagaName, env.SagaID, env.SagaStep = "orders", "order-0000042", "payment"
	return &kgo.Record{Topic: "orders.inbox", Partition: 1, Offset: 42, Key: []byte("order-0000042"), Headers: env.Apply(nil)}
}

// A hop's process and publish spans, as the saga runtime starts them per
// record: with the global tracer and no provider installed (what an
// application without tracing runs), the no-op API, and an SDK that
// records every span.
func BenchmarkHopSpans(b *testing.B) {
	sdk := sdktrace.NewTracerProvider()
	b.Cleanup(func() { _ = sdk.Shutdown(context.Background()) })
	for _, bc := range []struct {
		name   string
		tracer trace.Tracer
	}{
		{"global", telemetry.Tracer(nil)},
		{"noop", telemetry.Tracer(noop.NewTracerProvider())},
		{"sdk", telemetry.Tracer(sdk)},
	} {
		b.Run(bc.name, func(b *testing.B) {
			prop := telemetry.Propagator()
			in := benchRecord()
			b.ReportAllocs()
			for b.Loop() {
				ctx, span := telemetry.StartProcess(context.Background(), bc.tracer, prop, in, "orders")
				out := &kgo.Record{Topic: "payment.commands", Headers: in.Headers[:len(in.Headers):len(in.Headers)]}
				_, publish := telemetry.StartPublish(ctx, bc.tracer, prop, out)
				telemetry.EndPublish(publish, out, nil)
				span.End()
			}
		})
	}
}

// Without a provider, spans record nothing, but a record's trace context
// still reaches what is published from it, and a hop without one costs no
// allocation.
func TestHopSpansWithoutProvider(t *testing.T) {
	tracer, prop := telemetry.Tracer(nil), telemetry.Propagator()
	const traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	in := benchRecord()
	in.Headers = schema.SetHeader(in.Headers, schema.HeaderTraceParent, traceparent)
	ctx, span := telemetry.StartProcess(context.Background(), tracer, prop, in, "orders")
	out := &kgo.Record{Topic: "payment.commands"}
	_, publish := telemetry.StartPublish(ctx, tracer, prop, out)
	if got, _ := schema.Header(out.Headers, schema.HeaderTraceParent); got != traceparent || span.IsRecording() || publish.IsRecording() {
		t.Fatalf("published traceparent %q (recording %v, %v), want %q carried on, not recording", got, span.IsRecording(), publish.IsRecording(), traceparent)
	}

	in = benchRecord()
	out = &kgo.Record{Topic: "payment.commands"}
	allocs := testing.AllocsPerRun(100, func() {
		ctx, span := telemetry.StartProcess(context.Background(), tracer, prop, in, "orders")
		_, publish := telemetry.StartPublish(ctx, tracer, prop, out)
		telemetry.EndPublish(publish, out, nil)
		span.End()
	})
	if allocs != 0 || len(out.Headers) != 0 {
		t.Fatalf("a hop without trace context: %v allocations, headers %v; want none", allocs, out.Headers)
	}
}
