package saga

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagapipe/sagapipe/dlq"
	"github.com/sagapipe/sagapipe/internal/kread"
	"github.com/sagapipe/sagapipe/internal/telemetry"
	"github.com/sagapipe/sagapipe/pipe"
	"github.com/sagapipe/sagapipe/schema"
	"github.com/sagapipe/sagapipe/statemachine"
)

// Errors the runtime dead-letters inbox records with. All are poison.
var (
	ErrUnknownSaga  = errors.New("saga: reply for a saga this orchestrator does not know")
	ErrUnknownEvent = errors.New("saga: event is not part of this saga")
	ErrNoSagaID     = errors.New("saga: record has neither a saga_id header nor a key")
)

// Config configures a Runtime. Registry is required; the rest defaults.
type Config struct {
	// Brokers and ClientOptions (TLS, SASL) reach the cluster.
	Brokers       []string
	ClientOptions []kgo.Opt
	// Registry encodes and decodes every event and the journal.
	Registry *schema.Serde
	// Group is the consumer group of the inbox (default "sagapipe.<saga>").
	Group string
	// TransactionalID must be unique per running instance (default
	// "<group>.<hostname>.<pid>.<n>").
	TransactionalID string
	// Source is ce_source of the commands (default "sagapipe/<saga>").
	Source string
	// DeadLetterTopic receives unprocessable inbox records (default "<saga>.inbox.dlq").
	DeadLetterTopic string
	// Clock tells time for timers (default the real clock).
	Clock dlq.Clock
	// Hooks are told what happens (HookFinished, dlq.HookDeadLettered).
	Hooks []any
	// Logger receives what an operator must know: sagas that end in
	// CompensationFailed (error) and dead-lettered records (warning), and
	// at debug level every event applied. Lines about a saga carry saga_name,
	// saga_id and correlation_id, and are logged with the context of the
	// saga's span (observability.NewLogHandler adds trace_id and span_id).
	// Default slog.Default().
	Logger *slog.Logger
	// TracerProvider receives a "<inbox> process" span per inbox record, a
	// span per timer, and the publish spans of the commands (default otel's
	// global provider).
	TracerProvider trace.TracerProvider
	// MeterProvider receives the sagapipe.saga.* metrics (default otel's
	// global provider).
	MeterProvider metric.MeterProvider
	// Propagator reads and writes the trace context in headers (default W3C
	// TraceContext and Baggage).
	Propagator propagation.TextMapPropagator
	// FinishedRetention is how long a finished saga's full record (its
	// data, the event IDs it saw) stays in memory before it shrinks to its
	// terminal state alone. Events that arrive for it later are journaled
	// as ignored all the same. Default DefaultFinishedRetention; negative
	// keeps every record.
	FinishedRetention time.Duration
}

// DefaultFinishedRetention is Config.FinishedRetention's default.
const DefaultFinishedRetention = 15 * time.Minute

// HookFinished is told of every saga that reached a terminal state, after
// the transaction that got it there committed. A dlq.HookDeadLettered hook
// is likewise told of inbox records dead-lettered, after commit.
type HookFinished interface {
	OnFinished(sagaID string, outcome statemachine.State)
}

// Runtime drives one saga definition: it consumes the saga's inbox in a
// consumer group and, per polled batch, in one Kafka transaction, appends
// what happened to the journal, pipes the commands that follow and commits
// the consumed offsets.
type Runtime[D any] struct {
	saga     *Saga[D]
	cfg      Config
	sess     *kgo.GroupTransactSession
	piper    *pipe.Piper
	connOpts []kgo.Opt
	decoders map[statemachine.EventType]codec
	ceTypes  map[statemachine.EventType]string // event type → the ce_type it arrives as
	encoders map[string]codec                  // command ce_type → codec
	journal  *schema.Codec[JournalEntry]
	tracer   trace.Tracer
	metrics  *runtimeMetrics

	mu    sync.Mutex // guards parts and wake against the rebalance callbacks
	parts map[int32]*partitionState[D]
	// wake ends the poll in progress, so that a newly assigned partition is
	// rebuilt (and its timers armed) without waiting for a record.
	wake context.CancelFunc
	lag  map[int32]int64 // per owned inbox partition, as of its last fetch
	// lastSweep is when finished sagas were last shrunk (Run's goroutine only).
	lastSweep time.Time
	// timers holds the owned sagas' deadlines, earliest first (guarded by mu).
	timers timerHeap
}

type partitionState[D any] struct {
	rebuilt bool
	sagas   map[string]*sagaRecord[D]
	// finished holds the sagas that ended over FinishedRetention ago by
	// their terminal state only: enough to ignore what comes for them.
	finished map[string]statemachine.State
}

func newPartitionState[D any]() *partitionState[D] {
	return &partitionState[D]{sagas: map[string]*sagaRecord[D]{}, finished: map[string]statemachine.State{}}
}

// sagaRecord is what the runtime holds of one saga.
type sagaRecord[D any] struct {
	id          string
	correlation string
	state       statemachine.State
	inst        Instance[D]
	seen        map[string]bool // ce_ids already journaled
	timer       *pendingTimer
	// span is the span that last changed the saga: the parent of its
	// timers' spans, so that a timeout stays in the saga's trace.
	span trace.SpanContext
	// started is when the saga began, since when it entered its state.
	started, since time.Time
}

type pendingTimer struct {
	step         string
	attempt      int
	compensation bool
	deadline     time.Time
}

func (r *sagaRecord[D]) clone() *sagaRecord[D] {
	c := *r
	c.seen = maps.Clone(r.seen)
	return &c
}

// NewRuntime validates cfg and prepares a runtime for s; Run starts it.
func NewRuntime[D any](s *Saga[D], cfg Config) (*Runtime[D], error) {
	var errs []error
	if s == nil {
		return nil, errors.New("saga: NewRuntime: saga is nil")
	}
	if cfg.Registry == nil {
		errs = append(errs, errors.New("saga: Config.Registry is required"))
	}
	if len(cfg.Brokers) == 0 {
		errs = append(errs, errors.New("saga: Config.Brokers is empty"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	cfg.Group = cmp.Or(cfg.Group, "sagapipe."+s.name)
	if cfg.TransactionalID == "" {
		// Unique per instance, even several in one process (each would fence
		// the others); KIP-447 fences zombies by group generation instead.
		host, _ := os.Hostname()
		cfg.TransactionalID = fmt.Sprintf("%s.%s.%d.%d", cfg.Group, cmp.Or(host, "host"), os.Getpid(), instances.Add(1))
	}
	cfg.Source = cmp.Or(cfg.Source, "sagapipe/"+s.name)
	cfg.DeadLetterTopic = cmp.Or(cfg.DeadLetterTopic, s.InboxTopic()+dlq.DefaultTopicSuffix)
	if cfg.Clock == nil {
		cfg.Clock = dlq.SystemClock{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Propagator == nil {
		cfg.Propagator = telemetry.Propagator()
	}
	if cfg.FinishedRetention == 0 {
		cfg.FinishedRetention = DefaultFinishedRetention
	}

	r := &Runtime[D]{saga: s, cfg: cfg, parts: map[int32]*partitionState[D]{},
		decoders: map[statemachine.EventType]codec{}, ceTypes: map[statemachine.EventType]string{},
		encoders: map[string]codec{}, lag: map[int32]int64{}, tracer: telemetry.Tracer(cfg.TracerProvider)}
	r.connOpts = append([]kgo.Opt{kgo.SeedBrokers(cfg.Brokers...)}, cfg.ClientOptions...)
	if err := r.buildCodecs(); err != nil {
		return nil, err
	}
	if err := r.checkSubjects(); err != nil {
		return nil, err
	}
	metrics, err := newRuntimeMetrics(r, cfg.MeterProvider)
	if err != nil {
		return nil, fmt.Errorf("saga %s: metrics: %w", s.name, err)
	}
	r.metrics = metrics
	// No linger: a batch's records are all produced before the transaction
	// ends, and End flushes; lingering would only add its 10ms to every
	// hop of every saga. ClientOptions may still set one.
	opts := append(append([]kgo.Opt{kgo.SeedBrokers(cfg.Brokers...), kgo.ProducerLinger(0)}, cfg.ClientOptions...),
		kgo.ConsumerGroup(cfg.Group),
		kgo.ConsumeTopics(s.InboxTopic()),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.TransactionalID(cfg.TransactionalID),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.RequireStableFetchOffsets(),
		kgo.BlockRebalanceOnPoll(),
		kgo.RecordPartitioner(pipe.NewPartitioner(nil)),
		kgo.OnPartitionsAssigned(r.assigned),
		kgo.OnPartitionsRevoked(r.revoked),
		kgo.OnPartitionsLost(r.revoked),
	)
	sess, err := kgo.NewGroupTransactSession(opts...)
	if err != nil {
		_ = metrics.registration.Unregister()
		return nil, fmt.Errorf("saga %s: %w", s.name, err)
	}
	piper, err := pipe.New(sess.Client(), pipe.WithConsumerGroup(cfg.Group), pipe.WithSource(cfg.Source),
		pipe.WithTracerProvider(cfg.TracerProvider), pipe.WithMeterProvider(cfg.MeterProvider), pipe.WithPropagator(cfg.Propagator))
	if err != nil {
		_ = metrics.registration.Unregister()
		sess.Close()
		return nil, err
	}
	r.sess, r.piper = sess, piper
	return r, nil
}

// instances numbers the runtimes of this process.
var instances atomic.Int64

func (r *Runtime[D]) buildCodecs() error {
	s := r.saga
	var errs []error
	add := func(on statemachine.EventType, e eventSpec) {
		c, err := e.newCodec(r.cfg.Registry)
		errs = append(errs, err)
		r.decoders[on], r.ceTypes[on] = c, e.eventType
	}
	addCmd := func(e eventSpec) {
		c, err := e.newCodec(r.cfg.Registry)
		errs = append(errs, err)
		r.encoders[e.eventType] = c
	}
	add(s.StartEventType(), s.start.event)
	if s.outcome != nil {
		addCmd(s.outcome.completed.event)
		addCmd(s.outcome.failed.event)
	}
	for _, st := range s.steps {
		addCmd(st.command.event)
		add(ReplyEventType(st.name, st.success.event.eventType), st.success.event)
		if st.failure != nil {
			add(ReplyEventType(st.name, st.failure.event.eventType), st.failure.event)
		}
		if st.compensate != nil {
			addCmd(st.compensate.event)
			add(ReplyEventType(st.name, st.compAck.eventType), *st.compAck)
		}
	}
	j, err := schema.NewCodec[JournalEntry](r.cfg.Registry, JournalEntrySchema)
	r.journal = j
	return errors.Join(append(errs, err)...)
}

// checkSubjects refuses a subject naming that puts the inbox's several event
// types under one subject: their schemas are unrelated, so the registry would
// refuse all but the first.
func (r *Runtime[D]) checkSubjects() error {
	start, err := schema.Parse(r.saga.start.event.schema)
	if err != nil {
		return err
	}
	reply, err := schema.Parse(r.saga.steps[0].success.event.schema)
	if err != nil {
		return err
	}
	a, errA := r.cfg.Registry.Subject(r.saga.InboxTopic(), start)
	b, errB := r.cfg.Registry.Subject(r.saga.InboxTopic(), reply)
	if errA == nil && errB == nil && a == b {
		return fmt.Errorf("saga %s: the registry's subject naming puts every event of %s under %q, but the inbox carries several event types: build the Serde with schema.WithSubjectNameStrategy(schema.RecordNameStrategy)",
			r.saga.name, r.saga.InboxTopic(), a)
	}
	return errors.Join(errA, errB)
}

// Close leaves the group and closes the client. Call it after Run returned.
func (r *Runtime[D]) Close() {
	_ = r.piper.Close(context.Background())
	r.sess.CloseAllowingRebalance()
	_ = r.metrics.registration.Unregister()
}

func (r *Runtime[D]) assigned(_ context.Context, _ *kgo.Client, assigned map[string][]int32) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range assigned[r.saga.InboxTopic()] {
		r.parts[p] = newPartitionState[D]()
	}
	if r.wake != nil {
		r.wake()
	}
}

func (r *Runtime[D]) revoked(_ context.Context, _ *kgo.Client, gone map[string][]int32) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range gone[r.saga.InboxTopic()] {
		delete(r.parts, p)
		delete(r.lag, p)
	}
}

// CheckTopics verifies that the inbox, journal and dead-letter topics exist
// and that the inbox and journal have the same partition count.
func (r *Runtime[D]) CheckTopics(ctx context.Context) error {
	inbox, journal := r.saga.InboxTopic(), r.saga.JournalTopic()
	want := []string{inbox, journal, r.cfg.DeadLetterTopic}
	if t := r.saga.OutcomeTopic(); t != "" {
		want = append(want, t)
	}
	details, err := kadm.NewClient(r.sess.Client()).ListTopics(ctx, want...)
	if err != nil {
		return fmt.Errorf("saga %s: listing topics: %w", r.saga.name, err)
	}
	var missing []string
	for _, t := range want {
		if d, ok := details[t]; !ok || d.Err != nil {
			missing = append(missing, t)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("saga %s: topics missing: %v (create them with 'orchestrator topics ensure'; they are not auto-created)", r.saga.name, missing)
	}
	if a, b := len(details[inbox].Partitions), len(details[journal].Partitions); a != b {
		return fmt.Errorf("saga %s: %s has %d partitions but %s has %d: the journal must be co-partitioned with the inbox", r.saga.name, inbox, a, journal, b)
	}
	return nil
}

// Ready reports whether the runtime owns inbox partitions and has rebuilt
// the state of every one it owns: what a readiness probe asks.
func (r *Runtime[D]) Ready() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.parts) == 0 {
		return false
	}
	for _, ps := range r.parts {
		if !ps.rebuilt {
			return false
		}
	}
	return true
}

// Run checks the topics and drives the saga until ctx is cancelled (then it
// returns nil) or the transactional session fails for good.
//
// Cancelling ctx stops polling; the batch in progress still finishes its
// transaction (commit, or abort if it fails), so a shutdown loses nothing
// and redoes nothing. Close then leaves the group.
func (r *Runtime[D]) Run(ctx context.Context) error {
	err := r.run(ctx)
	if ctx.Err() != nil {
		return nil // stopped: whatever was cut short is redone by the next owner
	}
	return err
}

func (r *Runtime[D]) run(ctx context.Context) error {
	work := context.WithoutCancel(ctx)
	if err := r.CheckTopics(ctx); err != nil {
		return err
	}
	if _, err := r.journal.Register(ctx, r.saga.JournalTopic()); err != nil {
		return fmt.Errorf("saga %s: journal schema: %w", r.saga.name, err)
	}
	for {
		// Partitions assigned before the poll began (kgo may join the group
		// as soon as the session exists) are rebuilt here, not after a
		// record arrives: their timers must be armed.
		if err := r.rebuildAssigned(ctx); err != nil {
			return err
		}
		nextSweep, sweeps := r.sweepFinished()
		r.sess.AllowRebalance()
		pollCtx, cancel := context.WithCancel(ctx)
		stop := func() bool { return false }
		wait, timer := r.nextTimer()
		if sweeps && (!timer || nextSweep < wait) {
			wait, timer = nextSweep, true
		}
		if timer {
			stop = r.cfg.Clock.AfterFunc(wait, cancel)
		}
		r.mu.Lock()
		r.wake = cancel
		r.mu.Unlock()
		fetches := r.sess.PollFetches(pollCtx)
		r.mu.Lock()
		r.wake = nil
		r.mu.Unlock()
		stop()
		cancel()
		if ctx.Err() != nil {
			return nil
		}
		if fetches.IsClientClosed() {
			return fmt.Errorf("saga %s: the client was closed while Run was running", r.saga.name)
		}
		var fetchErr error
		fetches.EachError(func(t string, p int32, err error) {
			if !errors.Is(err, context.Canceled) {
				fetchErr = errors.Join(fetchErr, fmt.Errorf("saga %s: fetching %s/%d: %w", r.saga.name, t, p, err))
			}
		})
		if fetchErr != nil {
			return fetchErr
		}
		if err := r.processBatch(ctx, work, fetches); err != nil {
			return err
		}
	}
}

// batch is one transaction's work: changed sagas are copies until commit.
type batch[D any] struct {
	changed map[int32]map[string]*sagaRecord[D]
	batchStats
	// spans of the records and timers handled, ended with the transaction.
	spans []trace.Span
	// What the transaction produces, sent together at its end: one round
	// trip per batch instead of one per event.
	journal  []*kgo.Record
	outbox   []*kgo.Record // dead letters
	commands map[string][]pipe.Message
}

// flush sends what the batch produced, all at once (in order per
// partition), and waits for the broker's answers.
func (r *Runtime[D]) flush(ctx context.Context, tx *pipe.Tx, b *batch[D]) error {
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	fail := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		if firstErr == nil {
			firstErr = err
		}
	}
	records := append(b.journal, b.outbox...)
	wg.Add(len(records))
	for _, rec := range records {
		r.sess.Produce(ctx, rec, func(rec *kgo.Record, err error) {
			if err != nil {
				fail(fmt.Errorf("saga %s: append to %s: %w", r.saga.name, rec.Topic, err))
			}
			wg.Done()
		})
	}
	for _, topic := range slices.Sorted(maps.Keys(b.commands)) {
		ms := b.commands[topic]
		wg.Add(len(ms))
		tx.PipeManyAsync(ctx, topic, ms, func(res pipe.Result) {
			if res.Err != nil {
				fail(res.Err)
			}
			wg.Done()
		})
	}
	wg.Wait()
	return firstErr
}

type deadLetter struct {
	rec                 *kgo.Record
	f                   dlq.Failure
	sagaID, correlation string          // as far as the record told
	ctx                 context.Context // the dead-letter span's, for logs
}

// processBatch rebuilds newly assigned partitions, then handles the batch's
// records and the due timers in one transaction. The transaction runs on
// work, which a shutdown does not cancel: it ends by commit or abort.
func (r *Runtime[D]) processBatch(ctx, work context.Context, fetches kgo.Fetches) error {
	r.mu.Lock()
	fetches.EachPartition(func(fp kgo.FetchTopicPartition) {
		if fp.Topic == r.saga.InboxTopic() && r.parts[fp.Partition] == nil {
			r.parts[fp.Partition] = newPartitionState[D]()
		}
	})
	r.mu.Unlock()
	if err := r.rebuildAssigned(ctx); err != nil {
		return err
	}
	r.observeLag(fetches)
	due := r.dueTimers()
	if fetches.NumRecords() == 0 && len(due) == 0 {
		return nil
	}

	b := &batch[D]{changed: map[int32]map[string]*sagaRecord[D]{}, commands: map[string][]pipe.Message{}}
	ctx = work
	committed, err := r.piper.Transact(ctx, r.sess, func(ctx context.Context, tx *pipe.Tx) error {
		var err error
		fetches.EachRecord(func(rec *kgo.Record) {
			if err == nil {
				err = r.handleRecord(ctx, b, rec)
			}
		})
		for _, d := range due {
			if err == nil {
				err = r.handleTimer(ctx, b, d)
			}
		}
		if err != nil {
			return err
		}
		return r.flush(ctx, tx, b)
	})
	if !committed {
		r.mu.Lock()
		for _, d := range due {
			r.timers.add(d.deadline, d.partition, d.id) // they come again
		}
		r.mu.Unlock()
	}
	for _, span := range b.spans {
		if !committed {
			telemetry.Fail(span, fmt.Errorf("transaction not committed, the batch comes again: %w", cmp.Or(err, ctx.Err())))
		}
		span.End()
	}
	if !committed {
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, pipe.ErrAborted) {
			return nil // rewound: the batch comes again
		}
		return fmt.Errorf("saga %s: %w", r.saga.name, err)
	}
	r.metrics.record(ctx, &b.batchStats)
	r.mu.Lock()
	for p, sagas := range b.changed {
		if ps := r.parts[p]; ps != nil {
			for id, s := range sagas {
				if old := ps.sagas[id]; s.timer != nil && (old == nil || old.timer != s.timer) {
					r.timers.add(s.timer.deadline, p, id)
				}
				ps.sagas[id] = s
				delete(ps.finished, id) // back in full until the next sweep
			}
		}
	}
	r.mu.Unlock()
	// Logs and hooks hear of what committed, only.
	for _, f := range b.finished {
		if f.outcome == StateCompensationFailed {
			r.cfg.Logger.ErrorContext(f.ctx, "saga compensation failed: its compensations were retried and never confirmed; it needs an operator",
				"saga_name", r.saga.name, "saga_id", f.id, "correlation_id", f.correlation, "state", f.outcome)
		}
	}
	for _, d := range b.dead {
		r.cfg.Logger.WarnContext(d.ctx, "inbox record dead-lettered", "saga_name", r.saga.name, "saga_id", d.sagaID,
			"correlation_id", d.correlation, "topic", d.rec.Topic, "partition", d.rec.Partition, "offset", d.rec.Offset,
			"dead_letter_topic", r.cfg.DeadLetterTopic, "error", d.f.Err)
	}
	for _, h := range r.cfg.Hooks {
		if h, ok := h.(HookFinished); ok {
			for _, f := range b.finished {
				h.OnFinished(f.id, f.outcome)
			}
		}
		if h, ok := h.(dlq.HookDeadLettered); ok {
			for _, d := range b.dead {
				h.OnDeadLettered(d.rec, d.f)
			}
		}
	}
	return nil
}

// lookup returns the batch's copy of a saga, making one on first touch.
func (r *Runtime[D]) lookup(b *batch[D], p int32, id string) *sagaRecord[D] {
	if s, ok := b.changed[p][id]; ok {
		return s
	}
	r.mu.Lock()
	ps := r.parts[p]
	var s *sagaRecord[D]
	var finished statemachine.State
	if ps != nil {
		s = ps.sagas[id]
		finished = ps.finished[id]
	}
	r.mu.Unlock()
	if s == nil && finished != "" {
		// Long finished: a record that ignores whatever comes.
		s = &sagaRecord[D]{id: id, correlation: id, state: finished, seen: map[string]bool{}}
	}
	if s == nil {
		return nil
	}
	c := s.clone()
	r.keep(b, p, c)
	return c
}

// sweepFinished shrinks the sagas that finished over FinishedRetention ago
// to their terminal state. It scans every owned saga, so it runs at most
// every quarter of the retention (between a second and a minute); it
// returns how long until the next sweep is due, and whether sweeps run.
func (r *Runtime[D]) sweepFinished() (time.Duration, bool) {
	retention := r.cfg.FinishedRetention
	if retention < 0 {
		return 0, false
	}
	every := min(max(retention/4, time.Second), time.Minute)
	now := r.cfg.Clock.Now()
	if since := now.Sub(r.lastSweep); since < every {
		return every - since, true
	}
	r.lastSweep = now
	cutoff := now.Add(-retention)
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, ps := range r.parts {
		r.shrinkFinished(ps.sagas, ps.finished, cutoff)
	}
	return every, true
}

func (r *Runtime[D]) shrinkFinished(sagas map[string]*sagaRecord[D], finished map[string]statemachine.State, cutoff time.Time) {
	for id, s := range sagas {
		if s.timer == nil && r.saga.machine.IsTerminal(s.state) && s.since.Before(cutoff) {
			finished[id] = s.state
			delete(sagas, id)
		}
	}
}

func (r *Runtime[D]) keep(b *batch[D], p int32, s *sagaRecord[D]) {
	if b.changed[p] == nil {
		b.changed[p] = map[string]*sagaRecord[D]{}
	}
	b.changed[p][s.id] = s
}

// handleRecord turns an inbox record into a state-machine event and applies
// it. What cannot be processed is dead-lettered, inside the transaction.
func (r *Runtime[D]) handleRecord(ctx context.Context, b *batch[D], rec *kgo.Record) error {
	ctx, span := telemetry.StartProcess(ctx, r.tracer, r.cfg.Propagator, rec, r.cfg.Group)
	recording := span.IsRecording()
	b.spans = append(b.spans, span)
	env, err := schema.ReadEnvelope(rec.Headers)
	if err != nil {
		return r.deadLetter(ctx, b, rec, env, err)
	}
	id := cmp.Or(env.SagaID, string(rec.Key))
	if id == "" {
		return r.deadLetter(ctx, b, rec, env, ErrNoSagaID)
	}
	if recording {
		span.SetAttributes(telemetry.SagaName.String(r.saga.name), telemetry.SagaID.String(id), telemetry.SagaStep.String(env.SagaStep))
	}
	on := ReplyEventType(env.SagaStep, env.Type)
	if env.SagaStep == "" {
		on = statemachine.EventType("start/" + env.Type)
	}
	c, known := r.decoders[on]
	if !known {
		return r.deadLetter(ctx, b, rec, env, fmt.Errorf("%w: %s %q (step %q)", ErrUnknownEvent, r.saga.name, env.Type, env.SagaStep))
	}
	payload, err := c.decode(ctx, rec.Value)
	if err != nil {
		return r.deadLetter(ctx, b, rec, env, err)
	}
	// The orchestrator's own clock, journaled: deadlines then do not depend
	// on the sender's clock, and a replay sees the same time.
	t := r.cfg.Clock.Now().UTC()
	s := r.lookup(b, rec.Partition, id)
	if s == nil {
		if on != r.saga.StartEventType() {
			return r.deadLetter(ctx, b, rec, env, fmt.Errorf("%w: %s %q", ErrUnknownSaga, r.saga.name, id))
		}
		s = &sagaRecord[D]{id: id, correlation: cmp.Or(env.CorrelationID, id), state: StateNew, seen: map[string]bool{},
			started: t, since: t}
		r.keep(b, rec.Partition, s)
	}
	if s.seen[env.ID] {
		if recording {
			span.SetAttributes(attribute.Bool("sagapipe.duplicate", true))
		}
		return nil // a duplicate changes nothing
	}
	ev := statemachine.Event{Type: on, ID: env.ID, Time: t, Payload: payload}
	entry := JournalEntry{SagaID: id, EventType: string(on), CEID: env.ID, CEType: env.Type, Time: t,
		Payload: rec.Value}
	return r.apply(ctx, b, rec.Partition, s, ev, entry, rec)
}

func (r *Runtime[D]) handleTimer(ctx context.Context, b *batch[D], d dueTimer) error {
	s := r.lookup(b, d.partition, d.id)
	if s == nil || s.timer == nil {
		return nil
	}
	tm := *s.timer
	s.timer = nil
	kind := "timeout"
	if tm.compensation {
		kind = "compensation-timeout"
	}
	// Handled now, not at the deadline: after a delay (a restart, a long
	// batch) the next wait starts from now instead of being due at once.
	now := r.cfg.Clock.Now().UTC()
	ev := statemachine.Event{Type: TimeoutEventType(tm.step, tm.compensation),
		ID:      fmt.Sprintf("%s/%s/%s/%d", s.id, tm.step, kind, tm.attempt),
		Time:    now,
		Payload: TimerFired{Step: tm.step, Attempt: tm.attempt}}
	// A timer is no Kafka message: its span continues the span that last
	// changed the saga, and its commands continue it.
	ctx, span := r.tracer.Start(trace.ContextWithRemoteSpanContext(ctx, s.span), r.saga.name+" "+kind,
		trace.WithSpanKind(trace.SpanKindInternal),
		trace.WithAttributes(telemetry.SagaName.String(r.saga.name), telemetry.SagaID.String(s.id),
			telemetry.SagaStep.String(tm.step), attribute.Int("saga.timer.attempt", tm.attempt)))
	b.spans = append(b.spans, span)
	env := schema.Envelope{ID: ev.ID, Type: "sagapipe.Timeout", Source: r.cfg.Source, Time: now,
		CorrelationID: s.correlation, SagaName: r.saga.name, SagaID: s.id, SagaStep: tm.step}
	src := &kgo.Record{Topic: r.saga.InboxTopic(), Partition: d.partition, Offset: -1, Key: []byte(s.id), Headers: env.Apply(nil)}
	entry := JournalEntry{SagaID: s.id, EventType: string(ev.Type), CEID: ev.ID, CEType: env.Type, Time: now,
		TimerStep: tm.step, TimerAttempt: int32(tm.attempt)}
	return r.apply(ctx, b, d.partition, s, ev, entry, src)
}

// apply applies ev to s, journals it (applied, or ignored when no
// transition accepts it) and carries out the effects.
func (r *Runtime[D]) apply(ctx context.Context, b *batch[D], p int32, s *sagaRecord[D],
	ev statemachine.Event, entry JournalEntry, src *kgo.Record) error {
	res, err := r.saga.machine.Apply(s.state, s.inst, ev)
	entry.FromState, entry.ToState, entry.Outcome = string(s.state), string(res.To), OutcomeApplied
	if errors.Is(err, statemachine.ErrNoTransition) {
		entry.Outcome = OutcomeIgnored
	} else if err != nil {
		return err
	}
	span := trace.SpanFromContext(ctx)
	if entry.Outcome == OutcomeApplied {
		entry.TraceParent = telemetry.TraceParent(ctx)
	}
	if err := r.appendJournal(ctx, b, p, entry, src); err != nil {
		return err
	}
	s.seen[ev.ID] = true
	if entry.Outcome == OutcomeIgnored {
		if span.IsRecording() {
			span.SetAttributes(telemetry.SagaState.String(string(s.state)), attribute.Bool("saga.event.ignored", true))
		}
		return nil
	}
	if s.state == StateNew {
		b.started++
	}
	if step := waitingFor(s.state); step != "" {
		b.steps = append(b.steps, stepTook{step, ev.Time.Sub(s.since)})
	}
	s.state, s.inst, s.since = res.To, res.Data, ev.Time
	if sc := span.SpanContext(); sc.IsValid() {
		s.span = sc
	}
	compensation := isCompensation(res.To)
	for _, e := range res.Effects {
		switch e.Kind {
		case Send:
			m, err := r.command(ctx, s, e, src)
			if err != nil {
				return err
			}
			b.commands[e.Topic] = append(b.commands[e.Topic], m)
			compensation = compensation || e.Compensation
			if e.Attempt > 1 {
				b.resent = append(b.resent, e.Step)
			}
		case SetTimer:
			s.timer = &pendingTimer{step: e.Step, attempt: e.Attempt, compensation: e.Compensation, deadline: ev.Time.Add(e.After)}
		case Finish:
			s.timer = nil
			b.finished = append(b.finished, finishedSaga{id: s.id, correlation: s.correlation, outcome: e.Outcome,
				took: ev.Time.Sub(s.started), ctx: trace.ContextWithSpanContext(context.Background(), s.span)})
		}
	}
	if span.IsRecording() {
		span.SetAttributes(telemetry.SagaState.String(string(s.state)), telemetry.SagaCompensation.Bool(compensation))
	}
	if r.cfg.Logger.Enabled(ctx, slog.LevelDebug) {
		r.cfg.Logger.DebugContext(ctx, "saga event applied", "saga_name", r.saga.name, "saga_id", s.id,
			"correlation_id", s.correlation, "event", ev.Type, "from", entry.FromState, "to", s.state)
	}
	return nil
}

// waitingFor returns the step a saga in state waits on ("" when none).
func waitingFor(state statemachine.State) string {
	name := string(state)
	if step, ok := strings.CutSuffix(name, ".Pending"); ok {
		return step
	}
	step, _ := strings.CutSuffix(name, ".Compensating")
	if step == name {
		return ""
	}
	return step
}

// isCompensation tells whether a saga in state is undoing its steps.
func isCompensation(state statemachine.State) bool {
	return state == StateCompensated || state == StateCompensationFailed || strings.HasSuffix(string(state), ".Compensating")
}

// command builds the message that pipes a Send effect's command.
func (r *Runtime[D]) command(ctx context.Context, s *sagaRecord[D], e Effect, src *kgo.Record) (pipe.Message, error) {
	c := r.encoders[e.EventType]
	value, err := c.encode(ctx, e.Topic, e.Command)
	if err != nil {
		return pipe.Message{}, fmt.Errorf("saga %s: encode %s for %s: %w", r.saga.name, e.EventType, s.id, err)
	}
	kind := "do"
	if e.Compensation {
		kind = "undo"
	}
	h := func(k, v string) kgo.RecordHeader { return kgo.RecordHeader{Key: k, Value: []byte(v)} }
	return pipe.Message{Source: src, Value: value, Type: e.EventType, Context: ctx,
		ID: fmt.Sprintf("%s/%s/%s/%d", s.id, e.Step, kind, e.Attempt),
		Headers: []kgo.RecordHeader{
			h(schema.HeaderSagaName, r.saga.name), h(schema.HeaderSagaID, s.id), h(schema.HeaderSagaStep, e.Step),
			h(schema.HeaderReplyTo, r.saga.InboxTopic()), h(schema.HeaderCorrelationID, s.correlation),
			h(schema.HeaderContentType, schema.ContentTypeAvro),
		}}, nil
}

// appendJournal adds entry, for the journal partition of the inbox
// partition p, to what the batch's transaction produces.
func (r *Runtime[D]) appendJournal(ctx context.Context, b *batch[D], p int32, entry JournalEntry, src *kgo.Record) error {
	value, err := r.journal.Encode(ctx, r.saga.JournalTopic(), &entry)
	if err != nil {
		return fmt.Errorf("saga %s: encode journal entry: %w", r.saga.name, err)
	}
	rec := &kgo.Record{Topic: r.saga.JournalTopic(), Key: []byte(entry.SagaID), Value: value, Headers: src.Headers}
	pipe.ToPartition(rec, p)
	b.journal = append(b.journal, rec)
	return nil
}

// deadLetter sends an inbox record that cannot be processed to the
// dead-letter topic, in the batch's transaction.
func (r *Runtime[D]) deadLetter(ctx context.Context, b *batch[D], rec *kgo.Record, env schema.Envelope, cause error) error {
	now := r.cfg.Clock.Now()
	f := dlq.Failure{Err: cause, Class: dlq.ClassPoison, Attempts: 1, FirstFailedAt: now, LastFailedAt: now}
	telemetry.Fail(trace.SpanFromContext(ctx), cause)
	ctx, span := telemetry.StartDeadLetter(ctx, r.tracer, rec, r.cfg.DeadLetterTopic, string(f.Class), cause)
	b.spans = append(b.spans, span)
	b.outbox = append(b.outbox, dlq.NewRecord(ctx, rec, f, r.cfg.DeadLetterTopic, r.cfg.Group, r.cfg.Propagator))
	b.dead = append(b.dead, deadLetter{rec: rec, f: f, sagaID: cmp.Or(env.SagaID, string(rec.Key)),
		correlation: env.CorrelationID, ctx: ctx})
	return nil
}

// rebuildAssigned rebuilds every owned partition not rebuilt yet.
func (r *Runtime[D]) rebuildAssigned(ctx context.Context) error {
	r.mu.Lock()
	var pending []int32
	for p, ps := range r.parts {
		if !ps.rebuilt {
			pending = append(pending, p)
		}
	}
	r.mu.Unlock()
	for _, p := range pending {
		if err := r.rebuild(ctx, p); err != nil {
			return err
		}
	}
	return nil
}

// rebuild folds journal partition p into the sagas of inbox partition p.
func (r *Runtime[D]) rebuild(ctx context.Context, p int32) error {
	// The previous owner's last transaction may still be completing: wait
	// for it (at most kgo's default transaction timeout), or the rebuild
	// would miss what it journaled while its offsets, committed with it,
	// skip the events that led there.
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	err := kread.WaitStable(wctx, r.connOpts, r.saga.JournalTopic(), []int32{p})
	cancel()
	if err != nil {
		return fmt.Errorf("saga %s: rebuilding partition %d: %w", r.saga.name, p, err)
	}
	sagas := map[string]*sagaRecord[D]{}
	err = kread.ToEnd(ctx, r.connOpts, r.saga.JournalTopic(), []int32{p}, func(rec *kgo.Record) error {
		entry, err := r.journal.Decode(ctx, rec.Value)
		if err != nil {
			return fmt.Errorf("journal %s/%d@%d: %w", rec.Topic, rec.Partition, rec.Offset, err)
		}
		s := sagas[entry.SagaID]
		if s == nil {
			env, _ := schema.ReadEnvelope(rec.Headers)
			s = &sagaRecord[D]{id: entry.SagaID, correlation: cmp.Or(env.CorrelationID, entry.SagaID), state: StateNew, seen: map[string]bool{},
				started: entry.Time}
			sagas[entry.SagaID] = s
		}
		s.seen[entry.CEID] = true
		if entry.Outcome != OutcomeApplied {
			return nil
		}
		ev := statemachine.Event{Type: statemachine.EventType(entry.EventType), ID: entry.CEID, Time: entry.Time}
		if entry.TimerStep != "" {
			ev.Payload = TimerFired{Step: entry.TimerStep, Attempt: int(entry.TimerAttempt)}
			s.timer = nil
		} else {
			c, ok := r.decoders[ev.Type]
			if !ok {
				return fmt.Errorf("journal %s/%d@%d: event type %q is not part of saga %s (was the definition changed?)",
					rec.Topic, rec.Partition, rec.Offset, entry.EventType, r.saga.name)
			}
			if ev.Payload, err = c.decode(ctx, entry.Payload); err != nil {
				return fmt.Errorf("journal %s/%d@%d: %w", rec.Topic, rec.Partition, rec.Offset, err)
			}
		}
		res, err := r.saga.machine.Apply(s.state, s.inst, ev)
		if err != nil {
			return fmt.Errorf("journal %s/%d@%d of saga %s: %w", rec.Topic, rec.Partition, rec.Offset, s.id, err)
		}
		s.state, s.inst, s.since = res.To, res.Data, entry.Time
		if sc := telemetry.ParseTraceParent(entry.TraceParent); sc.IsValid() {
			s.span = sc
		}
		for _, e := range res.Effects {
			switch e.Kind {
			case SetTimer:
				s.timer = &pendingTimer{step: e.Step, attempt: e.Attempt, compensation: e.Compensation, deadline: ev.Time.Add(e.After)}
			case Finish:
				s.timer = nil
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("saga %s: rebuilding partition %d from %s: %w", r.saga.name, p, r.saga.JournalTopic(), err)
	}
	finished := map[string]statemachine.State{}
	if r.cfg.FinishedRetention >= 0 {
		r.shrinkFinished(sagas, finished, r.cfg.Clock.Now().Add(-r.cfg.FinishedRetention))
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if ps := r.parts[p]; ps != nil {
		ps.sagas, ps.finished, ps.rebuilt = sagas, finished, true
		for id, s := range sagas {
			if s.timer != nil {
				r.timers.add(s.timer.deadline, p, id)
			}
		}
	}
	return nil
}

// List returns the IDs of the sagas this runtime owns that are in state, sorted.
func (r *Runtime[D]) List(state statemachine.State) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var ids []string
	for _, ps := range r.parts {
		for id, s := range ps.sagas {
			if s.state == state {
				ids = append(ids, id)
			}
		}
		for id, st := range ps.finished {
			if st == state {
				ids = append(ids, id)
			}
		}
	}
	slices.Sort(ids)
	return ids
}

// Status is a saga's state as this runtime holds it.
type Status[D any] struct {
	State    statemachine.State
	Instance Instance[D]
}

// Status returns the committed state of saga id, if this runtime owns it.
// A saga finished over FinishedRetention ago has its state only (a zero
// Instance); its journal has the rest.
func (r *Runtime[D]) Status(id string) (Status[D], bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, ps := range r.parts {
		if s, ok := ps.sagas[id]; ok {
			return Status[D]{State: s.state, Instance: s.inst}, true
		}
		if st, ok := ps.finished[id]; ok {
			return Status[D]{State: st}, true
		}
	}
	return Status[D]{}, false
}

// EnsureTopics creates the saga's inbox and journal with partitions
// partitions, and the inbox's dead-letter topic, where they are missing.
// The journal keeps everything: it is the source of truth.
func (s *Saga[D]) EnsureTopics(ctx context.Context, adm *kadm.Client, partitions int32, replication int16) error {
	forever := "-1"
	keep := map[string]*string{"retention.ms": &forever, "retention.bytes": &forever}
	err := errors.Join(
		EnsureTopic(ctx, adm, s.InboxTopic(), partitions, replication, nil),
		EnsureTopic(ctx, adm, s.JournalTopic(), partitions, replication, keep),
		EnsureTopic(ctx, adm, s.InboxTopic()+dlq.DefaultTopicSuffix, partitions, replication, keep),
	)
	if t := s.OutcomeTopic(); t != "" {
		err = errors.Join(err, EnsureTopic(ctx, adm, t, partitions, replication, nil))
	}
	return err
}

// EnsureTopic creates topic unless it exists.
func EnsureTopic(ctx context.Context, adm *kadm.Client, topic string, partitions int32, replication int16, configs map[string]*string) error {
	resp, err := adm.CreateTopic(ctx, partitions, replication, configs, topic)
	if err == nil {
		err = resp.Err
	}
	if err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
		return fmt.Errorf("create topic %s: %w", topic, err)
	}
	return nil
}
