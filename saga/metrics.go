package saga

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/sagapipe/sagapipe/internal/telemetry"
	"github.com/sagapipe/sagapipe/statemachine"
)

// runtimeMetrics are a runtime's instruments, named sagapipe.saga.*; every
// series carries saga.name.
type runtimeMetrics struct {
	name         attribute.KeyValue
	started      metric.Int64Counter
	finished     metric.Int64Counter
	duration     metric.Float64Histogram
	stepDuration metric.Float64Histogram
	resends      metric.Int64Counter
	longRetries  metric.Int64Counter
	forwarded    metric.Int64Counter
	deadLetters  metric.Int64Counter
	registration metric.Registration
	// byName and the sets in byOutcome and byStep are the attribute sets
	// of the series, made once: a set and the options holding it are
	// allocations per measurement otherwise.
	byName    seriesOptions
	mu        sync.Mutex
	byOutcome map[string]seriesOptions
	byStep    map[string]seriesOptions
}

// seriesOptions carry one attribute set, as what Add and Record take.
type seriesOptions struct {
	add    []metric.AddOption
	record []metric.RecordOption
}

func newSeriesOptions(attrs ...attribute.KeyValue) seriesOptions {
	o := metric.WithAttributeSet(attribute.NewSet(attrs...))
	return seriesOptions{add: []metric.AddOption{o}, record: []metric.RecordOption{o}}
}

// series returns the options of the set {saga.name, key=value}, made on
// first use.
func (rm *runtimeMetrics) series(cache *map[string]seriesOptions, key attribute.Key, value string) seriesOptions {
	rm.mu.Lock()
	defer rm.mu.Unlock()
	o, ok := (*cache)[value]
	if !ok {
		if *cache == nil {
			*cache = map[string]seriesOptions{}
		}
		o = newSeriesOptions(rm.name, key.String(value))
		(*cache)[value] = o
	}
	return o
}

func newRuntimeMetrics[D any](r *Runtime[D], mp metric.MeterProvider) (*runtimeMetrics, error) {
	m := telemetry.Meter(mp)
	rm := &runtimeMetrics{name: telemetry.SagaName.String(r.saga.name)}
	rm.byName = newSeriesOptions(rm.name)
	var errs [11]error
	rm.started, errs[0] = m.Int64Counter("sagapipe.saga.started", metric.WithUnit("{saga}"),
		metric.WithDescription("Sagas started (their start event committed)."))
	rm.finished, errs[1] = m.Int64Counter("sagapipe.saga.finished", metric.WithUnit("{saga}"),
		metric.WithDescription("Sagas that reached a terminal state, by saga.outcome: Completed, Compensated or CompensationFailed."))
	rm.duration, errs[2] = m.Float64Histogram("sagapipe.saga.duration", metric.WithUnit("s"),
		metric.WithDescription("From a saga's start event to its terminal state, by saga.outcome."),
		metric.WithExplicitBucketBoundaries(telemetry.LatencyBuckets...))
	rm.stepDuration, errs[3] = m.Float64Histogram("sagapipe.saga.step.duration", metric.WithUnit("s"),
		metric.WithDescription("From a step's command (or compensation) to the reply or timeout that ended the wait, by saga.step."),
		metric.WithExplicitBucketBoundaries(telemetry.LatencyBuckets...))
	rm.resends, errs[4] = m.Int64Counter("sagapipe.saga.step.retries", metric.WithUnit("{command}"),
		metric.WithDescription("Commands resent after a step timed out, by saga.step."))
	rm.longRetries, errs[9] = m.Int64Counter("sagapipe.saga.step.long_retries", metric.WithUnit("{command}"),
		metric.WithDescription("Commands of steps that cannot be given up (no compensation, or after the pivot) resent past their retries, by saga.step: a participant that does not answer."))
	rm.forwarded, errs[10] = m.Int64Counter("sagapipe.saga.forwarded", metric.WithUnit("{record}"),
		metric.WithDescription("Inbox records that arrived on a partition other than their saga's and were forwarded to it (a producer with another partitioner than murmur2)."))
	rm.deadLetters, errs[5] = telemetry.DeadLetterRecords(m)
	inFlight, err := m.Int64ObservableGauge("sagapipe.saga.in_flight", metric.WithUnit("{saga}"),
		metric.WithDescription("Sagas this instance owns that have not reached a terminal state."))
	errs[6] = err
	lag, err := m.Int64ObservableGauge("sagapipe.consumer.lag", metric.WithUnit("{record}"),
		metric.WithDescription("Committed records of an owned partition not yet consumed, as of the last fetch."))
	errs[7] = err
	if err := errors.Join(errs[:]...); err != nil {
		return nil, err
	}
	group := attribute.String("messaging.consumer.group.name", r.cfg.Group)
	topic := attribute.String("messaging.destination.name", r.saga.InboxTopic())
	rm.registration, errs[8] = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		r.mu.Lock()
		defer r.mu.Unlock()
		n := int64(0)
		for _, ps := range r.parts {
			for _, s := range ps.sagas {
				if !r.saga.machine.IsTerminal(s.state) {
					n++
				}
			}
		}
		o.ObserveInt64(inFlight, n, metric.WithAttributes(rm.name))
		for p, l := range r.lag {
			o.ObserveInt64(lag, l, metric.WithAttributes(group, topic,
				attribute.String("messaging.destination.partition.id", strconv.Itoa(int(p)))))
		}
		return nil
	}, inFlight, lag)
	return rm, errs[8]
}

// observeLag records how far each fetched partition is behind its last
// stable offset (read_committed reads no further).
func (r *Runtime[D]) observeLag(fetches kgo.Fetches) {
	r.mu.Lock()
	defer r.mu.Unlock()
	fetches.EachPartition(func(fp kgo.FetchTopicPartition) {
		if fp.Topic != r.saga.InboxTopic() || len(fp.Records) == 0 || r.parts[fp.Partition] == nil {
			return
		}
		next := fp.Records[len(fp.Records)-1].Offset + 1
		r.lag[fp.Partition] = max(fp.LastStableOffset-next, 0)
	})
}

// record reports what a committed batch did.
func (rm *runtimeMetrics) record(ctx context.Context, b *batchStats) {
	if b.started > 0 {
		rm.started.Add(ctx, int64(b.started), rm.byName.add...)
	}
	for _, f := range b.finished {
		o := rm.series(&rm.byOutcome, telemetry.SagaOutcome, string(f.outcome))
		rm.finished.Add(ctx, 1, o.add...)
		rm.duration.Record(ctx, f.took.Seconds(), o.record...)
	}
	for _, s := range b.steps {
		rm.stepDuration.Record(ctx, s.took.Seconds(), rm.series(&rm.byStep, telemetry.SagaStep, s.step).record...)
	}
	for _, step := range b.resent {
		rm.resends.Add(ctx, 1, rm.series(&rm.byStep, telemetry.SagaStep, step).add...)
	}
	if b.forwarded > 0 {
		rm.forwarded.Add(ctx, int64(b.forwarded), rm.byName.add...)
	}
	for _, step := range b.longRetries {
		rm.longRetries.Add(ctx, 1, rm.series(&rm.byStep, telemetry.SagaStep, step).add...)
	}
	for _, d := range b.dead {
		rm.deadLetters.Add(ctx, 1, metric.WithAttributes(telemetry.SourceTopic.String(d.rec.Topic),
			telemetry.ErrorClass.String(string(d.f.Class))))
	}
}

// batchStats is what a batch did, reported once it commits.
type batchStats struct {
	started  int
	finished []finishedSaga
	steps    []stepTook
	resent   []string // the step of each resent command
	// longRetries holds the step of each long retry (see Effect.LongRetry).
	longRetries []string
	// forwarded counts the inbox records forwarded to their saga's home
	// partition.
	forwarded int
	dead      []deadLetter
}

type stepTook struct {
	step string
	took time.Duration
}

type finishedSaga struct {
	id, correlation string
	outcome         statemachine.State
	took            time.Duration
	ctx             context.Context // the span that finished it, for logs
}
