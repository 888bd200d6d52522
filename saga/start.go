package saga

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagapipe/sagapipe/internal/telemetry"
	"github.com/sagapipe/sagapipe/schema"
)

// Starter starts sagas of one definition: it encodes the start event with
// the saga's declaration of it, wraps it in its envelope (ce_type, a new
// ce_id, the saga's name and ID, the ID as the correlation ID), keys it by
// the saga ID and produces it to the saga's inbox in a publish span, whose
// trace context the saga's trace continues. Build one per process with
// Saga.NewStarter; it is safe for concurrent use.
type Starter struct {
	client *kgo.Client
	codec  codec
	goType reflect.Type
	ceType string
	saga   string
	inbox  string
	source string
	tracer trace.Tracer
	prop   propagation.TextMapPropagator
}

// StarterOpt configures a Starter.
type StarterOpt func(*starterConfig)

type starterConfig struct {
	source string
	tp     trace.TracerProvider
}

// StartSource sets the start events' ce_source: who starts the sagas
// (default "sagapipe/<saga name>").
func StartSource(source string) StarterOpt { return func(c *starterConfig) { c.source = source } }

// StartTracerProvider sets where the publish spans go (default otel's
// global provider).
func StartTracerProvider(tp trace.TracerProvider) StarterOpt {
	return func(c *starterConfig) { c.tp = tp }
}

// Started tells where a start event went.
type Started struct {
	ID        string // the saga's ID
	EventID   string // the start event's ce_id
	Partition int32
	Offset    int64
	// SpanContext is the publish span's: the saga's trace continues it
	// (log with trace.ContextWithSpanContext to correlate).
	SpanContext trace.SpanContext
}

// NewStarter returns a Starter producing with client (any producing
// client: the saga's key decides its partition under kgo's default
// partitioner, which is the one the runtime expects) and encoding with
// registry. The start event's schema is registered here, so a schema the
// registry refuses fails now, before any saga is started.
func (s *Saga[D]) NewStarter(client *kgo.Client, registry *schema.Serde, opts ...StarterOpt) (*Starter, error) {
	var cfg starterConfig
	for _, o := range opts {
		o(&cfg)
	}
	var errs []error
	if client == nil {
		errs = append(errs, errors.New("saga: NewStarter: client is nil"))
	}
	if registry == nil {
		errs = append(errs, errors.New("saga: NewStarter: registry is nil"))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	c, err := s.start.event.newCodec(registry)
	if err != nil {
		return nil, fmt.Errorf("saga %s: NewStarter: start event %s: %w", s.name, s.start.event.eventType, err)
	}
	tracer := telemetry.Tracer(cfg.tp)
	return &Starter{client: client, codec: c, goType: s.start.event.goType, ceType: s.start.event.eventType,
		saga: s.name, inbox: s.InboxTopic(), source: cmp.Or(cfg.source, "sagapipe/"+s.name),
		tracer: tracer, prop: telemetry.Propagator()}, nil
}

// withSagaSpan chooses the span of the saga rec starts, when the starter
// traces: a child of ctx's span, if any, else a new trace's root. The
// orchestrator emits it when the saga ends; it is written to rec's headers
// (HeaderSagaSpan) and is the publish span's parent (returned as ctx's).
func (st *Starter) withSagaSpan(ctx context.Context, rec *kgo.Record) context.Context {
	if _, ok := schema.Header(rec.Headers, schema.HeaderSagaSpan); ok {
		return ctx // published before (a retry): the same span
	}
	parent := trace.SpanContextFromContext(ctx)
	sc := telemetry.ChooseSpan(ctx, st.tracer, st.saga+" "+string(rec.Key), parent)
	if !sc.IsValid() {
		return ctx
	}
	h := telemetry.Headers{Record: rec}
	h.Set(schema.HeaderSagaSpan, telemetry.TraceParent(trace.ContextWithSpanContext(ctx, sc)))
	if parent.IsValid() {
		h.Set(schema.HeaderSagaSpanParent, parent.SpanID().String())
	}
	return trace.ContextWithSpanContext(ctx, sc)
}

// CheckID reports whether id can name a saga: not empty, no slashes or
// spaces (a saga's ID is part of its command IDs and idempotency keys).
func CheckID(id string) error {
	if id == "" {
		return errors.New("saga: the saga ID is empty")
	}
	if strings.ContainsAny(id, "/ \t\n") {
		return fmt.Errorf("saga: the saga ID %q holds a slash or a space", id)
	}
	return nil
}

// Record returns the record that starts saga id with event, which must be
// of the start event's Go type (or a pointer to it).
func (st *Starter) Record(ctx context.Context, id string, event any) (*kgo.Record, error) {
	if err := CheckID(id); err != nil {
		return nil, err
	}
	if v := reflect.ValueOf(event); v.Kind() == reflect.Pointer && v.Type().Elem() == st.goType && !v.IsNil() {
		event = v.Elem().Interface()
	}
	if reflect.TypeOf(event) != st.goType {
		return nil, fmt.Errorf("saga %s: the start event is a %v (%s), not a %T", st.saga, st.goType, st.ceType, event)
	}
	value, err := st.codec.encode(ctx, st.inbox, event)
	if err != nil {
		return nil, fmt.Errorf("saga %s: encoding the start event: %w", st.saga, err)
	}
	return st.RecordOf(id, value), nil
}

// RecordOf returns the record that starts saga id with value, the start
// event already encoded in the registry's wire format (the HTTP API
// converts JSON to it). The ID is not checked; see CheckID.
func (st *Starter) RecordOf(id string, value []byte) *kgo.Record {
	env := schema.NewEnvelope(st.ceType, st.source, time.Now())
	env.SagaName, env.SagaID, env.CorrelationID = st.saga, id, id
	return &kgo.Record{Topic: st.inbox, Key: []byte(id), Value: value, Headers: env.Apply(nil)}
}

// Start produces the record that starts saga id with event and waits for
// the broker's acknowledgement. The saga starts when its runtime consumes
// it. The publish span's parent is ctx's span, if any: a saga started
// while handling a request belongs to the request's trace.
func (st *Starter) Start(ctx context.Context, id string, event any) (Started, error) {
	rec, err := st.Record(ctx, id, event)
	if err != nil {
		return Started{ID: id}, err
	}
	return st.Publish(ctx, rec)
}

// Publish produces rec (from Record or RecordOf) in a publish span and
// waits for the broker's acknowledgement, or for ctx to end.
func (st *Starter) Publish(ctx context.Context, rec *kgo.Record) (Started, error) {
	done := make(chan error, 1)
	sc := st.publish(ctx, rec, func(_ *kgo.Record, err error) { done <- err })
	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		// kgo may still deliver a record it has sent: the start may yet
		// happen. Starting the same ID again is harmless (a saga starts
		// once per ID).
		err = fmt.Errorf("%w (the start may still be delivered; starting the same ID again is safe)", ctx.Err())
		return Started{ID: string(rec.Key), SpanContext: sc}, fmt.Errorf("saga %s: producing the start of %s: %w", st.saga, rec.Key, err)
	}
	started := Started{ID: string(rec.Key), Partition: rec.Partition, Offset: rec.Offset, SpanContext: sc}
	started.EventID, _ = schema.Header(rec.Headers, schema.HeaderID)
	if err != nil {
		return started, fmt.Errorf("saga %s: producing the start of %s: %w", st.saga, rec.Key, err)
	}
	return started, nil
}

// PublishAsync produces rec in a publish span without waiting; done, if
// not nil, is called with the result once the broker has answered (from
// the client's producer goroutine: keep it short).
func (st *Starter) PublishAsync(ctx context.Context, rec *kgo.Record, done func(*kgo.Record, error)) {
	st.publish(ctx, rec, done)
}

func (st *Starter) publish(ctx context.Context, rec *kgo.Record, done func(*kgo.Record, error)) trace.SpanContext {
	pctx, span := telemetry.StartPublish(st.withSagaSpan(ctx, rec), st.tracer, st.prop, rec)
	if span.IsRecording() {
		span.SetAttributes(telemetry.SagaState.String(string(StateNew)), telemetry.SagaCompensation.Bool(false))
	}
	st.client.Produce(pctx, rec, func(r *kgo.Record, err error) {
		telemetry.EndPublish(span, r, err)
		if done != nil {
			done(r, err)
		}
	})
	return span.SpanContext()
}
