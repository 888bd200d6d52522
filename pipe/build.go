package pipe

import (
	"context"
	"errors"
	"fmt"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/internal/telemetry"
)

// ErrNoReply: Encode was called on NoReply, which has no event.
var ErrNoReply = errors.New("pipe: NoReply has no event to encode")

// IsNoReply reports whether r is NoReply: the command is answered with
// nothing.
func (r Reply) IsNoReply() bool { return r.encode == nil }

// Encode encodes r's event for topic, as a stage worker does before it
// pipes the reply there (the schema registry subject may follow the
// topic). NoReply fails with ErrNoReply.
func (r Reply) Encode(ctx context.Context, topic string) ([]byte, error) {
	if r.encode == nil {
		return nil, ErrNoReply
	}
	value, err := r.encode(ctx, topic)
	if err != nil {
		return nil, fmt.Errorf("pipe: encode reply %s: %w", r.Type, err)
	}
	return value, nil
}

// Builder builds the records a Piper pipes without sending them: for a
// transactional outbox, which stores a record in a database transaction
// and sends it later. A built record is the one a Piper with the same
// options would send, trace context included.
type Builder struct{ p *Piper }

// NewBuilder returns a Builder configured as New configures a Piper: by
// WithSource, WithConsumerGroup (there is no client to take the group
// from), WithClock, WithIDGenerator, WithPropagator and WithEnhance. The
// options about sending (WithMaxInFlight, WithTracerProvider,
// WithMeterProvider) have nothing to act on. Every problem is reported.
func NewBuilder(opts ...Opt) (*Builder, error) {
	cfg := defaultConfig()
	for _, o := range opts {
		o.apply(&cfg)
	}
	if errs := cfg.validate(); len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return &Builder{p: &Piper{cfg: cfg, traceFields: cfg.propagator.Fields()}}, nil
}

// Build returns the record a Piper would pipe for m to topic. Its trace
// headers carry the context a Piper's publish span would continue (m's
// Context, else ctx's span, else the source record's trace): whoever sends
// the record later starts its publish span as their child.
func (b *Builder) Build(ctx context.Context, topic string, m Message) (*kgo.Record, error) {
	rec, err := b.p.build(ctx, topic, m)
	if err != nil {
		return nil, err
	}
	b.p.cfg.propagator.Inject(b.p.parent(ctx, m), telemetry.Headers{Record: rec})
	return rec, nil
}
