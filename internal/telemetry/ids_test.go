package telemetry_test

import (
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/sagapipe/sagapipe/internal/telemetry"
)

func TestProbesTellWhatATracerCanDo(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tests := []struct {
		name             string
		tp               trace.TracerProvider
		chooses, honours bool
	}{
		{"no-op API", noop.NewTracerProvider(), false, false},
		{"SDK with its own IDs", sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec)), true, false},
		{"SDK with IDGenerator", sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec), sdktrace.WithIDGenerator(telemetry.IDGenerator{})), true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tracer := tt.tp.Tracer("test")
			if got := telemetry.ChooseSpan(t.Context(), tracer, "saga", trace.SpanContext{}).IsValid(); got != tt.chooses {
				t.Errorf("ChooseSpan gives a span: %v, want %v", got, tt.chooses)
			}
			if got := telemetry.HonoursPresetIDs(tracer); got != tt.honours {
				t.Errorf("HonoursPresetIDs = %v, want %v", got, tt.honours)
			}
		})
	}
	if n := len(rec.Ended()); n != 0 {
		t.Errorf("the probes and ChooseSpan ended %d spans, want none", n)
	}
}

func TestEmitSpanUsesTheChosenIDs(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tracer := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec), sdktrace.WithIDGenerator(telemetry.IDGenerator{})).Tracer("test")
	sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: telemetry.NewTraceID(), SpanID: telemetry.NewSpanID(), TraceFlags: trace.FlagsSampled})
	parent := telemetry.NewSpanID()
	telemetry.EmitSpan(t.Context(), tracer, sc, parent, "child").End()
	telemetry.EmitSpan(t.Context(), tracer, sc.WithSpanID(telemetry.NewSpanID()), trace.SpanID{}, "root").End()
	spans := rec.Ended()
	if len(spans) != 2 {
		t.Fatalf("%d spans, want 2", len(spans))
	}
	child, root := spans[0], spans[1]
	if child.SpanContext().TraceID() != sc.TraceID() || child.SpanContext().SpanID() != sc.SpanID() || child.Parent().SpanID() != parent {
		t.Errorf("child %v (parent %v), want %v under %v", child.SpanContext(), child.Parent().SpanID(), sc, parent)
	}
	if root.SpanContext().TraceID() != sc.TraceID() || root.Parent().IsValid() {
		t.Errorf("root %v with parent %v, want a root of trace %v", root.SpanContext(), root.Parent(), sc.TraceID())
	}
}

// A saga's span is chosen when it starts and emitted when it ends: with a
// sampler that samples by trace ID, both decisions are the same one, so a
// saga's children are never kept without their root, nor the other way.
func TestChooseSpanAndEmitSpanDecideAlike(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec), sdktrace.WithIDGenerator(telemetry.IDGenerator{}),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(0.5))))
	tracer := tp.Tracer("test")
	sampled := 0
	for range 200 {
		sc := telemetry.ChooseSpan(t.Context(), tracer, "saga", trace.SpanContext{})
		if sc.IsSampled() {
			sampled++
		}
		before := len(rec.Ended())
		telemetry.EmitSpan(t.Context(), tracer, sc, trace.SpanID{}, "saga").End()
		if emitted := len(rec.Ended()) > before; emitted != sc.IsSampled() {
			t.Fatalf("chosen sampled %v, emitted %v", sc.IsSampled(), emitted)
		}
	}
	if sampled == 0 || sampled == 200 {
		t.Fatalf("%d of 200 sampled: the sampler did not decide", sampled)
	}
}
