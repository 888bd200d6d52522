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
		name               string
		tp                 trace.TracerProvider
		generates, honours bool
	}{
		{"no-op API", noop.NewTracerProvider(), false, false},
		{"SDK with its own IDs", sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec)), true, false},
		{"SDK with IDGenerator", sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec), sdktrace.WithIDGenerator(telemetry.IDGenerator{})), true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tracer := tt.tp.Tracer("test")
			if got := telemetry.GeneratesIDs(tracer); got != tt.generates {
				t.Errorf("GeneratesIDs = %v, want %v", got, tt.generates)
			}
			if got := telemetry.HonoursPresetIDs(tracer); got != tt.honours {
				t.Errorf("HonoursPresetIDs = %v, want %v", got, tt.honours)
			}
		})
	}
	if n := len(rec.Ended()); n != 0 {
		t.Errorf("the probes recorded %d spans, want none (their parent is not sampled)", n)
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
