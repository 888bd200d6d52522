package dlq

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagapipe/sagapipe/internal/consume"
	"github.com/sagapipe/sagapipe/internal/telemetry"
	"github.com/sagapipe/sagapipe/pipe"
	"github.com/sagapipe/sagapipe/schema"
)

// Handler processes one record. A nil error means done; otherwise the
// policy's classifier decides between retrying and dead-lettering.
type Handler func(ctx context.Context, rec *kgo.Record) error

// Clock is the time the consumer backs off by; tests inject their own.
type Clock interface {
	Now() time.Time
	// AfterFunc calls f once d has passed; stop prevents a call not yet made.
	AfterFunc(d time.Duration, f func()) (stop func() bool)
}

// SystemClock is the real clock, the default of every Clock option.
type SystemClock struct{}

// Now implements Clock.
func (SystemClock) Now() time.Time { return time.Now() }

// AfterFunc implements Clock.
func (SystemClock) AfterFunc(d time.Duration, f func()) func() bool {
	return time.AfterFunc(d, f).Stop
}

// Hook is any of the HookX interfaces below; a hook implements the ones it
// cares about.
type Hook any

// HookDeadLettered is told of every record that failed for good, after it
// was dispatched (or skipped, with Policy.NoDispatch).
type HookDeadLettered interface {
	OnDeadLettered(rec *kgo.Record, f Failure)
}

// HookRetry is told of every retry about to be waited for.
type HookRetry interface {
	OnRetry(rec *kgo.Record, retry int, backoff time.Duration, err error)
}

// Opt configures a Consumer.
type Opt interface{ apply(*consumerConfig) }

type optFunc func(*consumerConfig)

func (f optFunc) apply(c *consumerConfig) { f(c) }

type consumerConfig struct {
	clientOpts []kgo.Opt
	txnID      string
	clock      Clock
	randN      func(int64) int64
	hooks      []Hook
	propagator propagation.TextMapPropagator
	tracer     trace.TracerProvider
	meter      metric.MeterProvider
}

func defaultConsumerConfig() consumerConfig {
	return consumerConfig{clock: SystemClock{}, randN: rand.Int64N, propagator: telemetry.Propagator()}
}

// WithClientOptions are the kgo options that reach the cluster: seed brokers
// at least, TLS and SASL when needed, and consumer settings such as
// kgo.ConsumeResetOffset. The consumer adds its group and topics and what it
// relies on: DisableAutoCommit, BlockRebalanceOnPoll, rebalance callbacks and
// pipe's explicit partitioner. Sequenced mode reads dead-letter topics with a
// second client built from these options.
func WithClientOptions(opts ...kgo.Opt) Opt {
	return optFunc(func(c *consumerConfig) { c.clientOpts = append(c.clientOpts, opts...) })
}

// WithTransactionalID makes the consumer transactional: each polled batch is
// one Kafka transaction holding the dead-letter records, whatever the
// handler produces through Client(), and the batch's offsets, so a crash
// never loses a failed record or dead-letters it twice. A retry aborts the
// batch (kgo rewinds every partition to its committed offset), pauses the
// failing partition for its backoff and lets the others go on at once: their
// work is redone in the next transaction, so handlers must have no effects
// outside Kafka in this mode. The ID must be unique per consumer instance.
func WithTransactionalID(id string) Opt { return optFunc(func(c *consumerConfig) { c.txnID = id }) }

// WithClock sets the clock of backoffs (default the real one).
func WithClock(clock Clock) Opt { return optFunc(func(c *consumerConfig) { c.clock = clock }) }

// WithRand sets the jitter source: randN returns a number in [0, n)
// (default math/rand/v2's Int64N).
func WithRand(randN func(n int64) int64) Opt {
	return optFunc(func(c *consumerConfig) { c.randN = randN })
}

// WithHooks adds hooks (HookDeadLettered, HookRetry) for metrics and logs;
// one that implements neither is refused when the consumer is built.
func WithHooks(hooks ...Hook) Opt {
	return optFunc(func(c *consumerConfig) { c.hooks = append(c.hooks, hooks...) })
}

// WithPropagator sets how the trace context is read from records and
// written into dead-letter records (default W3C TraceContext and Baggage).
func WithPropagator(p propagation.TextMapPropagator) Opt {
	return optFunc(func(c *consumerConfig) { c.propagator = p })
}

// WithTracerProvider sets where spans go (default otel's global provider): a
// "<topic> process" span around each handler call, and a span with error
// status per dead-lettered record.
func WithTracerProvider(tp trace.TracerProvider) Opt {
	return optFunc(func(c *consumerConfig) { c.tracer = tp })
}

// WithMeterProvider sets where metrics go (default otel's global provider):
// sagapipe.dlq.records by source topic and error class, sagapipe.dlq.retries.
func WithMeterProvider(mp metric.MeterProvider) Opt {
	return optFunc(func(c *consumerConfig) { c.meter = mp })
}

// Consumer consumes topics in a group, calls a Handler for every record, and
// applies a Policy to failures: retries with backoff hold back only the
// failing record's partition (which is paused in kgo, so the consumer stays
// in its group), and records that fail for good go to the dead-letter topic,
// every origin partition's records to one DLQ partition, in order. Offsets
// are committed only for records handled or dispatched, so a crash loses
// nothing; without transactions a crash between dispatch and commit may
// dead-letter a record twice.
type Consumer struct {
	client  *kgo.Client
	sess    *kgo.GroupTransactSession // nil unless transactional
	handler Handler
	policy  Policy
	cfg     consumerConfig
	group   string

	mu    sync.Mutex // guards parts against the rebalance callbacks
	parts map[topicPartition]*partition

	budget    retryBudget
	in        *instruments
	closeOnce sync.Once
}

type topicPartition struct {
	topic     string
	partition int32
}

// partition is what the consumer holds of one assigned partition.
type partition struct {
	queue []*kgo.Record // polled, not yet handled or dispatched
	// The record that is failing, by offset: its count survives a
	// transaction's rewind, which hands the record back as a new one.
	failedOffset  int64
	failures      int
	firstFailedAt time.Time
	lastFailedAt  time.Time
	retryAt       time.Time // zero unless backing off
	paused        bool
	// Sequenced mode: keys parked behind a dead-lettered record, loaded
	// from the dead-letter topic when the partition was assigned.
	parked map[string]bool
	loaded bool
}

// NewConsumer returns a Consumer of topics in group; it owns its kgo client
// (Close closes it). Every problem with the arguments is reported at once.
func NewConsumer(group string, topics []string, handler Handler, policy Policy, opts ...Opt) (*Consumer, error) {
	cfg := defaultConsumerConfig()
	for _, o := range opts {
		o.apply(&cfg)
	}
	errs := []error{policy.Validate()}
	if handler == nil {
		errs = append(errs, errors.New("dlq: NewConsumer: handler is nil"))
	}
	if group == "" {
		errs = append(errs, errors.New("dlq: NewConsumer: the consumer group is empty"))
	}
	if len(topics) == 0 {
		errs = append(errs, errors.New("dlq: NewConsumer: no topics to consume"))
	}
	if cfg.clock == nil || cfg.randN == nil || cfg.propagator == nil {
		errs = append(errs, errors.New("dlq: WithClock, WithRand and WithPropagator take non-nil values"))
	}
	errs = append(errs, checkHooks("NewConsumer", cfg.hooks, true, true))
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	in, err := newInstruments(cfg.tracer, cfg.meter, cfg.propagator)
	if err != nil {
		return nil, fmt.Errorf("dlq: NewConsumer: metrics: %w", err)
	}
	c := &Consumer{handler: handler, policy: policy.withDefaults(), cfg: cfg, group: group, parts: map[topicPartition]*partition{}, in: in}
	clientOpts := append(append([]kgo.Opt(nil), cfg.clientOpts...),
		kgo.ConsumerGroup(group),
		kgo.ConsumeTopics(topics...),
		kgo.DisableAutoCommit(),
		kgo.BlockRebalanceOnPoll(),
		kgo.OnPartitionsRevoked(c.forget),
		kgo.OnPartitionsLost(c.forget),
		kgo.RecordPartitioner(pipe.NewPartitioner(nil)),
	)
	if cfg.txnID == "" {
		client, err := kgo.NewClient(clientOpts...)
		if err != nil {
			return nil, fmt.Errorf("dlq: NewConsumer: %w", err)
		}
		c.client = client
		return c, nil
	}
	clientOpts = append(clientOpts, kgo.TransactionalID(cfg.txnID),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	sess, err := kgo.NewGroupTransactSession(clientOpts...)
	if err != nil {
		return nil, fmt.Errorf("dlq: NewConsumer: %w", err)
	}
	c.sess, c.client = sess, sess.Client()
	return c, nil
}

// Client returns the consumer's kgo client (for admin calls in tests and tools).
func (c *Consumer) Client() *kgo.Client { return c.client }

// Close leaves the group and closes the client. Call it after Run returned;
// a second call does nothing.
func (c *Consumer) Close() {
	c.closeOnce.Do(func() {
		// Leaving the group is a rebalance, which BlockRebalanceOnPoll
		// holds back since the last poll.
		if c.sess != nil {
			c.sess.CloseAllowingRebalance()
			return
		}
		c.client.AllowRebalance()
		c.client.Close()
	})
}

// forget drops what the consumer held of partitions it no longer owns: their
// records were not committed, so their next owner gets them again.
func (c *Consumer) forget(_ context.Context, cl *kgo.Client, gone map[string][]int32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for topic, ps := range gone {
		for _, p := range ps {
			delete(c.parts, topicPartition{topic, p})
		}
	}
	cl.ResumeFetchPartitions(gone) // a partition paused now would stay paused if it came back
}

// Run consumes until ctx is cancelled (then it returns nil) or a record can
// neither be handled nor dead-lettered (then it returns why; the record was
// not committed and comes again).
func (c *Consumer) Run(ctx context.Context) error {
	cfg := consume.Config{Name: "dlq: consumer", Poll: c.client.PollFetches, AllowRebalance: c.client.AllowRebalance,
		AfterFunc: c.cfg.clock.AfterFunc}
	if c.sess != nil {
		cfg.Poll, cfg.AllowRebalance = c.sess.PollFetches, c.sess.AllowRebalance
	}
	poller := consume.NewPoller(cfg)
	for {
		wake := consume.NoWake
		if wait, ok := c.nextRetry(); ok {
			wake = wait
		}
		fetches, stopped, err := poller.Poll(ctx, wake)
		if stopped {
			return nil
		}
		if err != nil {
			return err
		}
		c.mu.Lock()
		fetches.EachPartition(func(p kgo.FetchTopicPartition) {
			if len(p.Records) == 0 {
				return
			}
			tp := topicPartition{p.Topic, p.Partition}
			st := c.parts[tp]
			if st == nil {
				st = &partition{}
				c.parts[tp] = st
			}
			st.queue = append(st.queue, p.Records...)
		})
		c.mu.Unlock()
		if err := c.process(ctx); err != nil {
			return err
		}
	}
}

// nextRetry returns how long until the earliest retry is due.
func (c *Consumer) nextRetry() (time.Duration, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var earliest time.Time
	for _, st := range c.parts {
		if !st.retryAt.IsZero() && (earliest.IsZero() || st.retryAt.Before(earliest)) {
			earliest = st.retryAt
		}
	}
	if earliest.IsZero() {
		return 0, false
	}
	return max(earliest.Sub(c.cfg.clock.Now()), 0), true
}

// process works through every partition that is not backing off, then
// commits what was handled or dispatched.
func (c *Consumer) process(ctx context.Context) error {
	if c.sess != nil {
		return c.processTransaction(ctx)
	}
	done, stopErr := c.processAll(ctx)
	if len(done) > 0 {
		// Commit even when ctx was just cancelled: it saves handling the
		// same records again.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if err := c.client.CommitRecords(cctx, done...); err != nil {
			return errors.Join(stopErr, fmt.Errorf("dlq: consumer: commit offsets: %w", err))
		}
	}
	if ctx.Err() != nil {
		return nil
	}
	return stopErr
}

// processTransaction processes the batch in one transaction and commits it,
// unless a record must be retried, ctx ended or a record could be neither
// handled nor dead-lettered: then it aborts, and kgo rewinds every partition
// to its committed offset.
func (c *Consumer) processTransaction(ctx context.Context) error {
	committed, stopErr, err := consume.Transact(ctx, c.sess, consume.DefaultGrace, func(ctx context.Context) (bool, error) {
		_, stopErr := c.processAll(ctx)
		held := false
		c.mu.Lock()
		for _, st := range c.parts {
			held = held || len(st.queue) > 0
		}
		c.mu.Unlock()
		return !held && ctx.Err() == nil, stopErr
	})
	if !committed {
		// Rewound: what is held comes again from the committed offsets.
		c.mu.Lock()
		for _, st := range c.parts {
			clear(st.queue)
			st.queue = st.queue[:0]
			st.loaded = false // keys parked in the aborted batch were not
		}
		c.mu.Unlock()
	}
	if err != nil {
		return errors.Join(stopErr, fmt.Errorf("dlq: consumer: %w", err))
	}
	if ctx.Err() != nil {
		return nil
	}
	return stopErr
}

// processAll runs processPartition over every partition, in a fixed order.
func (c *Consumer) processAll(ctx context.Context) ([]*kgo.Record, error) {
	c.mu.Lock()
	tps := make([]topicPartition, 0, len(c.parts))
	for tp := range c.parts {
		tps = append(tps, tp)
	}
	c.mu.Unlock()
	slices.SortFunc(tps, func(a, b topicPartition) int {
		return cmp.Or(cmp.Compare(a.topic, b.topic), cmp.Compare(a.partition, b.partition))
	})

	var done []*kgo.Record
	var stopErr error
	for _, tp := range tps {
		c.mu.Lock()
		st := c.parts[tp]
		c.mu.Unlock()
		if st == nil {
			continue
		}
		finished, err := c.processPartition(ctx, tp, st)
		done = append(done, finished...)
		if err != nil {
			stopErr = err
			break
		}
	}
	return done, stopErr
}

// processPartition handles st's queue in order until it is empty, a retry is
// due later, or ctx ends. It returns the records that are finished.
func (c *Consumer) processPartition(ctx context.Context, tp topicPartition, st *partition) ([]*kgo.Record, error) {
	if !st.retryAt.IsZero() {
		if c.cfg.clock.Now().Before(st.retryAt) {
			return nil, nil
		}
		st.retryAt = time.Time{}
	}
	var done []*kgo.Record
	pop := func(rec *kgo.Record) {
		done = append(done, rec)
		st.queue[0] = nil
		st.queue = st.queue[1:]
		if rec.Offset == st.failedOffset {
			st.failures = 0
		}
	}
	for len(st.queue) > 0 && ctx.Err() == nil {
		rec := st.queue[0]
		skip, err := c.sequence(ctx, tp, st, rec)
		if err != nil {
			return done, err
		}
		if skip {
			pop(rec)
			continue
		}
		hctx, span := telemetry.StartProcess(ctx, c.in.tracer, c.in.propagator, rec, c.group)
		err = c.handler(hctx, rec)
		if err != nil {
			telemetry.Fail(span, err)
		}
		span.End()
		if err != nil && ctx.Err() != nil {
			// Shutting down: the error may be the handler giving up, so the
			// record is not finished and comes again. A nil error finished it,
			// and it is committed like any other.
			break
		}
		if err != nil {
			now := c.cfg.clock.Now()
			if rec.Offset != st.failedOffset || st.failures == 0 {
				st.failedOffset, st.failures, st.firstFailedAt = rec.Offset, 0, now
			}
			st.failures++
			st.lastFailedAt = now
			decision := c.policy.Classify(err)
			retry := st.failures // the retry this would be
			// A registry that cannot be reached is no fault of the
			// record's: it is retried until the registry is back, never
			// exhausted, whatever the classifier, retries or budget say.
			outage := errors.Is(err, schema.ErrRegistryUnavailable)
			if outage || decision == Retry && retry <= c.policy.MaxRetries && c.budget.take(c.policy.RetryBudgetPerMinute, now) {
				backoff := c.policy.Backoff(retry, c.cfg.randN)
				st.retryAt = now.Add(backoff)
				c.pause(tp, st)
				c.in.retried(ctx, rec)
				for _, h := range c.cfg.hooks {
					if h, ok := h.(HookRetry); ok {
						h.OnRetry(rec, retry, backoff, err)
					}
				}
				return done, nil
			}
			class := ClassExhausted
			if decision == DeadLetter {
				class = ClassPoison
			}
			f := Failure{Err: err, Class: class, Attempts: st.failures, FirstFailedAt: st.firstFailedAt, LastFailedAt: now}
			if err := c.deadLetter(trace.ContextWithSpan(ctx, span), rec, f); err != nil {
				return done, err
			}
			c.park(st, rec)
		}
		pop(rec)
	}
	if len(st.queue) == 0 && st.paused {
		c.client.ResumeFetchPartitions(map[string][]int32{tp.topic: {tp.partition}})
		st.paused = false
	}
	return done, nil
}

// sequence applies sequenced mode and release markers to rec before it is
// handled. It reports whether rec is finished without the handler.
func (c *Consumer) sequence(ctx context.Context, tp topicPartition, st *partition, rec *kgo.Record) (skip bool, err error) {
	if IsReleaseMarker(rec) {
		if c.policy.Sequenced {
			if err := c.loadParked(ctx, tp, st); err != nil {
				return false, err
			}
			return true, c.unpark(ctx, st, rec)
		}
		return true, nil
	}
	if !c.policy.Sequenced || rec.Key == nil {
		return false, nil
	}
	if err := c.loadParked(ctx, tp, st); err != nil {
		return false, err
	}
	if !st.parked[string(rec.Key)] {
		return false, nil
	}
	if _, replayed := schema.Header(rec.Headers, HeaderReplayedFrom); replayed {
		// The dead-lettered records of the key are coming back, in order.
		return false, c.unpark(ctx, st, rec)
	}
	now := c.cfg.clock.Now()
	f := Failure{Class: ClassPredecessorDeadLettered, FirstFailedAt: now, LastFailedAt: now,
		Err: fmt.Errorf("an earlier record with key %q from %s/%d is dead-lettered; replay or release the key", rec.Key, rec.Topic, rec.Partition)}
	return true, c.deadLetter(ctx, rec, f)
}

func (c *Consumer) park(st *partition, rec *kgo.Record) {
	if c.policy.Sequenced && rec.Key != nil {
		st.parked[string(rec.Key)] = true
	}
}

// unpark releases rec's key and records that in the dead-letter topic, so a
// restart does not park it again.
func (c *Consumer) unpark(ctx context.Context, st *partition, rec *kgo.Record) error {
	if !st.parked[string(rec.Key)] {
		return nil
	}
	now := c.cfg.clock.Now()
	marker := &kgo.Record{Topic: rec.Topic, Partition: rec.Partition, Offset: rec.Offset, Key: rec.Key}
	f := Failure{Class: ClassReleased, FirstFailedAt: now, LastFailedAt: now}
	if err := dispatch(ctx, c.client, c.in, marker, f, c.policy.TopicFor(rec.Topic), c.group); err != nil {
		return err
	}
	delete(st.parked, string(rec.Key))
	return nil
}

// loadParked rebuilds the partition's parked keys from its dead-letter
// topic: every record of the origin partition there parks its key, and a
// released marker unparks it.
func (c *Consumer) loadParked(ctx context.Context, tp topicPartition, st *partition) error {
	if st.loaded {
		return nil
	}
	parked := map[string]bool{}
	topic := c.policy.TopicFor(tp.topic)
	err := List(ctx, ListConfig{ClientOptions: c.cfg.clientOpts, Topic: topic, Filter: Filter{OriginTopic: tp.topic}},
		func(e Entry, err error) error {
			if err != nil || e.OriginPartition != tp.partition || e.Record.Key == nil {
				return nil // not a dead-letter record of this partition
			}
			if e.Class == ClassReleased {
				delete(parked, string(e.Record.Key))
			} else {
				parked[string(e.Record.Key)] = true
			}
			return nil
		})
	if err != nil {
		return fmt.Errorf("dlq: sequenced mode: rebuilding parked keys of %s/%d from %s: %w", tp.topic, tp.partition, topic, err)
	}
	st.parked, st.loaded = parked, true
	return nil
}

func (c *Consumer) pause(tp topicPartition, st *partition) {
	if !st.paused {
		c.client.PauseFetchPartitions(map[string][]int32{tp.topic: {tp.partition}})
		st.paused = true
	}
}

// deadLetter dispatches rec (unless the policy skips dispatch) and tells the
// hooks. It returns only once the dead-letter record is acknowledged.
func (c *Consumer) deadLetter(ctx context.Context, rec *kgo.Record, f Failure) error {
	if !c.policy.NoDispatch {
		if err := dispatch(ctx, c.client, c.in, rec, f, c.policy.TopicFor(rec.Topic), c.group); err != nil {
			return err
		}
	}
	for _, h := range c.cfg.hooks {
		if h, ok := h.(HookDeadLettered); ok {
			h.OnDeadLettered(rec, f)
		}
	}
	return nil
}

// checkHooks refuses a hook that implements no hook interface by can call:
// it would never be called (a typo in a method name), as franz-go refuses
// one. by is what calls them; dead and retry tell which it calls.
func checkHooks(by string, hooks []Hook, dead, retry bool) error {
	var errs []error
	for i, h := range hooks {
		_, isDead := h.(HookDeadLettered)
		_, isRetry := h.(HookRetry)
		switch {
		case (dead && isDead) || (retry && isRetry):
		case dead && retry:
			errs = append(errs, fmt.Errorf("dlq: %s: hook %d (%T) implements neither HookDeadLettered nor HookRetry", by, i, h))
		case retry:
			errs = append(errs, fmt.Errorf("dlq: %s: hook %d (%T) does not implement HookRetry, the only hook %s calls", by, i, h, by))
		default:
			errs = append(errs, fmt.Errorf("dlq: %s: hook %d (%T) does not implement HookDeadLettered, the only hook %s calls", by, i, h, by))
		}
	}
	return errors.Join(errs...)
}
