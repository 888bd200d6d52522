package dlq

import (
	"context"
	"errors"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagapipe/sagapipe/internal/telemetry"
)

// instruments are what a consumer or failure policy reports through OTel.
type instruments struct {
	tracer     trace.Tracer
	propagator propagation.TextMapPropagator
	records    metric.Int64Counter
	retries    metric.Int64Counter
}

func newInstruments(tp trace.TracerProvider, mp metric.MeterProvider, prop propagation.TextMapPropagator) (*instruments, error) {
	m := telemetry.Meter(mp)
	records, err1 := telemetry.DeadLetterRecords(m)
	retries, err2 := m.Int64Counter("sagapipe.dlq.retries", metric.WithUnit("{retry}"),
		metric.WithDescription("Retries of failed records waited for, by source topic."))
	if err := errors.Join(err1, err2); err != nil {
		return nil, err
	}
	return &instruments{tracer: telemetry.Tracer(tp), propagator: prop, records: records, retries: retries}, nil
}

func sourceTopic(rec *kgo.Record) attribute.KeyValue {
	return telemetry.SourceTopic.String(rec.Topic)
}

func (in *instruments) deadLettered(ctx context.Context, rec *kgo.Record, f Failure) {
	in.records.Add(ctx, 1, metric.WithAttributes(sourceTopic(rec), telemetry.ErrorClass.String(string(f.Class))))
}

func (in *instruments) retried(ctx context.Context, rec *kgo.Record) {
	in.retries.Add(ctx, 1, metric.WithAttributes(sourceTopic(rec)))
}
