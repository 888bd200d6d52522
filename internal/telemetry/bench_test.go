package telemetry_test

import (
	"context"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel"
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

// Without a provider, a record's baggage still reaches the records its
// processing publishes, as its trace context does.
func TestBaggagePassesThroughWithoutProvider(t *testing.T) {
	tracer, prop := telemetry.Tracer(nil), telemetry.Propagator()
	in := benchRecord()
	in.Headers = schema.SetHeader(in.Headers, "baggage", "tenant=acme")
	ctx, _ := telemetry.StartProcess(context.Background(), tracer, prop, in, "orders")
	out := &kgo.Record{Topic: "payment.commands"}
	telemetry.StartPublish(ctx, tracer, prop, out)
	if got, _ := schema.Header(out.Headers, "baggage"); got != "tenant=acme" {
		t.Fatalf("published baggage %q, want tenant=acme carried on", got)
	}
}

// A tracer taken from otel's global provider before the application
// installs its SDK records once it is installed: the fast path for "no
// provider" must not outlive the provider's arrival. It installs a global
// provider, so it runs in a process of its own.
func TestGlobalTracerRecordsOnceAProviderIsInstalled(t *testing.T) {
	if os.Getenv("SAGAPIPE_LATE_SDK") != "1" {
		cmd := exec.Command(os.Args[0], "-test.run=^TestGlobalTracerRecordsOnceAProviderIsInstalled$", "-test.count=1")
		cmd.Env = append(os.Environ(), "SAGAPIPE_LATE_SDK=1")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		return
	}
	tracer, prop := telemetry.Tracer(nil), telemetry.Propagator() // taken before the SDK exists
	sdk := sdktrace.NewTracerProvider()
	defer func() { _ = sdk.Shutdown(context.Background()) }()
	otel.SetTracerProvider(sdk)
	_, span := telemetry.StartProcess(context.Background(), tracer, prop, benchRecord(), "orders")
	defer span.End()
	out := &kgo.Record{Topic: "payment.commands"}
	_, publish := telemetry.StartPublish(context.Background(), tracer, prop, out)
	defer publish.End()
	if !span.IsRecording() || !publish.IsRecording() {
		t.Fatalf("process span recording %v, publish span recording %v; want both, the SDK being installed", span.IsRecording(), publish.IsRecording())
	}
}
