package pipe

import (
	"errors"
	"fmt"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagapipe/sagapipe/internal/telemetry"
	"github.com/sagapipe/sagapipe/schema"
)

// DefaultMaxInFlight is how many piped records may await their result at
// once unless WithMaxInFlight says otherwise.
const DefaultMaxInFlight = 4096

// Opt configures a Piper.
type Opt interface{ apply(*config) }

type optFunc func(*config)

func (f optFunc) apply(c *config) { f(c) }

type config struct {
	group       string
	source      string
	maxInFlight int
	enhance     EnhanceFunc
	propagator  propagation.TextMapPropagator
	tracer      trace.TracerProvider
	meter       metric.MeterProvider
	now         func() time.Time
	newID       func() string
}

func defaultConfig() config {
	return config{
		maxInFlight: DefaultMaxInFlight,
		// Set explicitly: otel's global propagator writes nothing until an
		// application installs one.
		propagator: telemetry.Propagator(),
		now:        time.Now,
		newID:      schema.NewID,
	}
}

func (c *config) validate() []error {
	var errs []error
	if c.maxInFlight < 1 {
		errs = append(errs, fmt.Errorf("pipe: WithMaxInFlight(%d): must be at least 1", c.maxInFlight))
	}
	if c.propagator == nil {
		errs = append(errs, errors.New("pipe: WithPropagator: propagator is nil"))
	}
	if c.now == nil {
		errs = append(errs, errors.New("pipe: WithClock: clock is nil"))
	}
	if c.newID == nil {
		errs = append(errs, errors.New("pipe: WithIDGenerator: generator is nil"))
	}
	return errs
}

// WithConsumerGroup names the consumer group written to
// original_consumer_group. By default it is the client's kgo.ConsumerGroup,
// or empty when the client has none.
func WithConsumerGroup(group string) Opt { return optFunc(func(c *config) { c.group = group }) }

// WithSource sets ce_source of piped records. By default the source's is kept.
func WithSource(source string) Opt { return optFunc(func(c *config) { c.source = source }) }

// WithMaxInFlight bounds how many piped records may await their result at
// once (default DefaultMaxInFlight). At the bound the Pipe* calls block: the
// backpressure.
func WithMaxInFlight(n int) Opt { return optFunc(func(c *config) { c.maxInFlight = n }) }

// WithEnhance sets a hook that may change every record before it is sent.
func WithEnhance(fn EnhanceFunc) Opt { return optFunc(func(c *config) { c.enhance = fn }) }

// WithPropagator sets how the trace context of the call's ctx is written into
// the piped record's headers (default W3C TraceContext and Baggage).
func WithPropagator(p propagation.TextMapPropagator) Opt {
	return optFunc(func(c *config) { c.propagator = p })
}

// WithTracerProvider sets where the "<topic> publish" span of every piped
// record goes (default otel's global provider, which discards spans until an
// application installs an SDK, e.g. with observability.Setup).
func WithTracerProvider(tp trace.TracerProvider) Opt {
	return optFunc(func(c *config) { c.tracer = tp })
}

// WithMeterProvider sets where the piper's metrics go (default otel's
// global provider): the duration of the transactions it ends.
func WithMeterProvider(mp metric.MeterProvider) Opt {
	return optFunc(func(c *config) { c.meter = mp })
}

// WithClock sets the clock that stamps ce_time (default time.Now).
func WithClock(now func() time.Time) Opt { return optFunc(func(c *config) { c.now = now }) }

// WithIDGenerator sets how ce_id of piped records is made (default
// schema.NewID, a UUIDv7).
func WithIDGenerator(newID func() string) Opt { return optFunc(func(c *config) { c.newID = newID }) }
