package saga

import (
	"log/slog"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagapipe/sagapipe/schema"
)

// Opt configures a Runtime (NewRuntime). WithClientOptions and
// WithRegistry are required; the rest default.
type Opt interface{ apply(*config) }

type optFunc func(*config)

func (f optFunc) apply(c *config) { f(c) }

// Hook is told what happens: it implements one or more of HookFinished,
// HookRestored and dlq.HookDeadLettered (NewRuntime refuses one that
// implements none, as franz-go refuses a hook of no hook interface).
type Hook any

// config is what the options set.
type config struct {
	// ClientOptions reach the cluster: kgo.SeedBrokers, and TLS, SASL and
	// the like. Set is whether WithClientOptions was given.
	ClientOptions    []kgo.Opt
	clientOptionsSet bool
	Registry         *schema.Serde
	Group            string
	TransactionalID  string
	// TransactionTimeout also bounds how long a new owner of a partition
	// waits for the previous owner's last transaction before it restores
	// the partition.
	TransactionTimeout time.Duration
	Source             string
	DeadLetterTopic    string
	StateDir           string
	ClosedRetention    time.Duration
	RebuildState       bool
	Clock              Clock
	Hooks              []Hook
	Logger             *slog.Logger
	TracerProvider     trace.TracerProvider
	MeterProvider      metric.MeterProvider
	Propagator         propagation.TextMapPropagator
	// older are WithOlderVersions' sagas, checked against the runtime's
	// data type by NewRuntime.
	older []any
}

// WithClientOptions is how the runtime reaches the cluster: kgo.SeedBrokers
// (required; franz-go's default is 127.0.0.1:9092), and TLS, SASL, dialer
// and the like. The runtime adds what it needs itself (its consumer group,
// transactional ID, read-committed isolation, partitioner); options that
// name a group or topics to consume are overridden. Repeated, the options
// add up.
func WithClientOptions(opts ...kgo.Opt) Opt {
	return optFunc(func(c *config) {
		c.ClientOptions = append(c.ClientOptions, opts...)
		c.clientOptionsSet = true
	})
}

// WithRegistry encodes and decodes every event, the journal and the
// snapshots (required).
func WithRegistry(serde *schema.Serde) Opt {
	return optFunc(func(c *config) { c.Registry = serde })
}

// WithGroup is the consumer group of the inbox (default "sagapipe.<saga>").
func WithGroup(group string) Opt { return optFunc(func(c *config) { c.Group = group }) }

// WithTransactionalID must be unique per running instance (default
// "<group>.<hostname>.<pid>.<n>").
func WithTransactionalID(id string) Opt {
	return optFunc(func(c *config) { c.TransactionalID = id })
}

// WithTransactionTimeout is how long the broker lets a transaction stay
// open before it aborts it (default DefaultTransactionTimeout). It also
// bounds how long a new owner of a partition waits for the previous owner's
// last transaction before it restores the partition.
func WithTransactionTimeout(d time.Duration) Opt {
	return optFunc(func(c *config) { c.TransactionTimeout = d })
}

// WithSource is ce_source of the commands (default "sagapipe/<saga>").
func WithSource(source string) Opt { return optFunc(func(c *config) { c.Source = source }) }

// WithDeadLetterTopic receives unprocessable inbox records (default
// "<saga>.inbox.dlq").
func WithDeadLetterTopic(topic string) Opt {
	return optFunc(func(c *config) { c.DeadLetterTopic = topic })
}

// WithStateDir holds the local state stores, one per owned inbox partition
// under "<dir>/<saga>/<partition>". With it kept across restarts, a restart
// reads only the snapshots written since. Each running instance needs its
// own. Default: a temporary directory removed by Close, so every start
// restores from the state topic.
func WithStateDir(dir string) Opt { return optFunc(func(c *config) { c.StateDir = dir }) }

// WithClosedRetention is how long a finished saga's closed marker is kept:
// within it, a late reply or a duplicate start for its ID is journaled as
// ignored; after it, a tombstone removes the marker, and the ID may start a
// new saga. Default DefaultClosedRetention; negative keeps markers forever.
func WithClosedRetention(d time.Duration) Opt {
	return optFunc(func(c *config) { c.ClosedRetention = d })
}

// WithRebuildState makes the runtime rebuild the snapshots of the
// partitions it is assigned from the journal (the source of truth) instead
// of reading the state topic: the fix for snapshots that cannot be decoded.
// Partitions whose state topic is empty are rebuilt from the journal in any
// case, once (a deployment that predates the state topic).
func WithRebuildState(rebuild bool) Opt {
	return optFunc(func(c *config) { c.RebuildState = rebuild })
}

// WithClock tells time for timers (default the real clock).
func WithClock(clock Clock) Opt { return optFunc(func(c *config) { c.Clock = clock }) }

// WithHooks adds hooks told what happens; see Hook. Repeated, they add up.
func WithHooks(hooks ...Hook) Opt {
	return optFunc(func(c *config) { c.Hooks = append(c.Hooks, hooks...) })
}

// WithLogger receives what an operator must know: sagas that end in
// CompensationFailed (error) and dead-lettered records (warning), and at
// debug level every event applied. Lines about a saga carry saga_name,
// saga_id and correlation_id, and are logged with the context of the saga's
// span (observability.NewLogHandler adds trace_id and span_id). Default
// slog.Default().
func WithLogger(l *slog.Logger) Opt { return optFunc(func(c *config) { c.Logger = l }) }

// WithTracerProvider receives a "<inbox> process" span per inbox record, a
// span per timer, the saga's and its steps' spans, and the publish spans of
// the commands (default otel's global provider).
func WithTracerProvider(tp trace.TracerProvider) Opt {
	return optFunc(func(c *config) { c.TracerProvider = tp })
}

// WithMeterProvider receives the sagapipe.saga.* metrics (default otel's
// global provider).
func WithMeterProvider(mp metric.MeterProvider) Opt {
	return optFunc(func(c *config) { c.MeterProvider = mp })
}

// WithPropagator reads and writes the trace context in headers (default
// W3C TraceContext and Baggage).
func WithPropagator(p propagation.TextMapPropagator) Opt {
	return optFunc(func(c *config) { c.Propagator = p })
}

// WithOlderVersions registers earlier versions of the runtime's saga
// (Builder.Version) whose sagas are still in flight: each saga finishes on
// the version it started on, new ones start on the runtime's. Run refuses
// to start when a partition holds sagas on a version that is not
// registered, and lists them.
func WithOlderVersions[D any](older ...*Saga[D]) Opt {
	return optFunc(func(c *config) {
		for _, o := range older {
			c.older = append(c.older, o)
		}
	})
}
