package saga

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagapipe/sagapipe/dlq"
	"github.com/sagapipe/sagapipe/internal/consume"
	"github.com/sagapipe/sagapipe/internal/kafkaerr"
	"github.com/sagapipe/sagapipe/internal/telemetry"
	"github.com/sagapipe/sagapipe/pipe"
	"github.com/sagapipe/sagapipe/schema"
	"github.com/sagapipe/sagapipe/statemachine"
)

// Errors the runtime dead-letters inbox records with. All are poison.
var (
	ErrUnknownSaga  = errors.New("saga: reply for a saga this orchestrator does not know")
	ErrUnknownEvent = errors.New("saga: event is not part of this saga")
	// ErrVersion: sagas in flight run on a definition version that is not
	// registered (see NewRuntime's older).
	ErrVersion  = errors.New("saga: definition version not registered")
	ErrNoSagaID = errors.New("saga: record has neither a saga_id header nor a key")
)

// Defaults of the options.
const (
	DefaultClosedRetention    = 7 * 24 * time.Hour
	DefaultTransactionTimeout = 40 * time.Second
)

// HookFinished is told of every saga that reached a terminal state, after
// the transaction that got it there committed. A dlq.HookDeadLettered hook
// is likewise told of inbox records dead-lettered, after commit.
type HookFinished interface {
	OnFinished(sagaID string, outcome statemachine.State)
}

// HookRestored is told of every partition restored, after it is ready:
// where its state came from, how many sagas are live in it, and how long
// the restore took.
type HookRestored interface {
	OnRestored(partition int32, from RestoredFrom, live int, took time.Duration)
}

// RestoredFrom says where a partition's state was restored from.
type RestoredFrom string

// Where state is restored from.
const (
	// RestoredFromState: the local store and the state topic.
	RestoredFromState RestoredFrom = "state"
	// RestoredFromJournal: the journal (the state topic had nothing of the
	// partition, or WithRebuildState).
	RestoredFromJournal RestoredFrom = "journal"
)

// Clock tells the runtime's time: the journal's timestamps and the timers'
// deadlines. Tests inject one to move time; dlq.SystemClock is the real one.
type Clock interface {
	Now() time.Time
	// AfterFunc calls f once d has passed; stop prevents a call not yet made.
	AfterFunc(d time.Duration, f func()) (stop func() bool)
}

// Runtime drives one saga definition: it consumes the saga's inbox in a
// consumer group and, per polled batch, in one Kafka transaction, appends
// what happened to the journal, writes the changed sagas' snapshots to the
// state topic, pipes the commands that follow and commits the consumed
// offsets.
type Runtime[D any] struct {
	saga *Saga[D]
	// versions holds every registered definition by version, saga's
	// included.
	versions map[int]*Saga[D]
	// inboxPartitions is the inbox's partition count, from CheckTopics;
	// homes places saga IDs on it (keys only: Run's goroutine may use it
	// alone).
	inboxPartitions atomic.Int32
	homes           kgo.TopicPartitioner
	cfg             config
	*codecs
	snapshots *snapshots[D]
	// sagaSpans tells whether the tracer emits the saga's and steps'
	// spans (its provider honours preset IDs; see spans.go).
	sagaSpans bool
	// failureReplies and compensationAcks classify reply events, for the
	// step spans: a step's failure reply, a compensation's reply.
	failureReplies, compensationAcks map[statemachine.EventType]bool
	sess                             *kgo.GroupTransactSession
	piper                            *pipe.Piper
	connOpts                         []kgo.Opt
	tracer                           trace.Tracer
	metrics                          *runtimeMetrics
	// tempStateDir is StateDir when Close must remove it.
	tempStateDir bool

	// background owns the restores; stopBackground cancels them.
	background     sync.WaitGroup
	backgroundCtx  context.Context
	stopBackground context.CancelFunc
	closeOnce      sync.Once

	// batchMu is held by a batch from taking its timers until what it
	// committed is installed: a restore starts only after the batch in
	// flight has ended, so that it reads what that batch wrote.
	batchMu sync.Mutex

	mu    sync.Mutex // guards what follows against the rebalance callbacks and restores
	parts map[int32]*partitionState[D]
	// stores stay open once opened, owned or not: a partition assigned
	// again continues from its checkpoint.
	stores map[int32]*partitionStore
	// storeList is openStores' slice, the run loop's alone.
	storeList []*partitionStore
	// failed is a restore's error, which ends Run.
	failed error
	// wake ends the poll in progress, so that a partition restored is
	// processed (and its timers armed) without waiting for a record.
	wake context.CancelFunc
	lag  map[int32]int64 // per owned inbox partition, as of its last fetch
	// timers holds the owned sagas' deadlines, earliest first.
	timers timerHeap
	// lastSweep is when closed markers were last checked for expiry (Run's
	// goroutine only).
	lastSweep time.Time
	// conn follows whether the client reaches the cluster.
	conn connectivity
	// started is set once Run has checked the topics and registered the
	// schemas: a runtime is not ready before.
	started atomic.Bool
	// registryWait is the backoff after batches aborted because the
	// schema registry was unavailable (Run's goroutine only).
	registryWait time.Duration
}

// partitionState is what the runtime holds of an owned inbox partition.
type partitionState[D any] struct {
	// ready is closed when the restore finished; ok tells whether it
	// succeeded.
	ready  chan struct{}
	ok     bool
	cancel context.CancelFunc
	store  *partitionStore
	sagas  map[string]*sagaRecord[D] // the live ones
	// unsaved holds sagas rebuilt from the journal whose snapshots the next
	// transaction writes.
	unsaved map[string]*sagaRecord[D]
	// expired holds closed markers past their retention, tombstoned by the
	// next transaction.
	expired []expiredMarker
	// journalNext is at or before the offset of the next journal entry.
	journalNext int64
}

func (ps *partitionState[D]) restored() bool {
	select {
	case <-ps.ready:
		return ps.ok
	default:
		return false
	}
}

// partitionStore is a partition's store; mu keeps one restore or write at
// a time.
type partitionStore struct {
	mu sync.Mutex
	st *store
}

// NewRuntime validates opts and prepares a runtime for s; Run starts it.
// WithClientOptions and WithRegistry are required; WithOlderVersions
// registers the earlier versions of s still in flight.
func NewRuntime[D any](s *Saga[D], opts ...Opt) (*Runtime[D], error) {
	var errs []error
	if s == nil {
		return nil, errors.New("saga: NewRuntime: saga is nil")
	}
	var cfg config
	for _, o := range opts {
		if o == nil {
			errs = append(errs, errors.New("saga: NewRuntime: an option is nil"))
			continue
		}
		o.apply(&cfg)
	}
	var older []*Saga[D]
	for _, a := range cfg.older {
		if o, ok := a.(*Saga[D]); ok {
			older = append(older, o)
		} else {
			errs = append(errs, fmt.Errorf("saga: NewRuntime: WithOlderVersions got a %T, not a *Saga of %s's data type %T", a, s.name, *new(D)))
		}
	}
	versions := map[int]*Saga[D]{s.version: s}
	for _, o := range older {
		switch {
		case o == nil:
			errs = append(errs, errors.New("saga: NewRuntime: an older version is nil"))
		case o.name != s.name:
			errs = append(errs, fmt.Errorf("saga: NewRuntime: older version %d is of saga %q, not %q", o.version, o.name, s.name))
		case o.version >= s.version:
			errs = append(errs, fmt.Errorf("saga: NewRuntime: older version %d of %s is not older than %d: the first definition is the newest", o.version, s.name, s.version))
		case versions[o.version] != nil:
			errs = append(errs, fmt.Errorf("saga: NewRuntime: version %d of %s is registered twice", o.version, s.name))
		default:
			versions[o.version] = o
			// The versions share decoders and encoders by ce_type: one
			// type must mean one Go type in all of them.
			newest := s.events()
			for typ, t := range o.events() {
				if n, ok := newest[typ]; ok && n != t {
					errs = append(errs, fmt.Errorf("saga: NewRuntime: %s is %v in version %d of %s but %v in version %d: an event whose type changes needs a new ce_type",
						typ, t, o.version, s.name, n, s.version))
				}
			}
		}
	}
	if cfg.Registry == nil {
		errs = append(errs, errors.New("saga: NewRuntime: no schema registry: pass saga.WithRegistry(serde)"))
	}
	if !cfg.clientOptionsSet {
		errs = append(errs, errors.New("saga: NewRuntime: no cluster to reach: pass saga.WithClientOptions(kgo.SeedBrokers(...))"))
	}
	if cfg.TransactionTimeout < 0 {
		errs = append(errs, fmt.Errorf("saga: NewRuntime: WithTransactionTimeout(%v) is negative", cfg.TransactionTimeout))
	}
	for i, h := range cfg.Hooks {
		// A hook that implements none of them would never be called: say so
		// now rather than let a typo in a method name go unnoticed.
		_, finished := h.(HookFinished)
		_, restored := h.(HookRestored)
		_, dead := h.(dlq.HookDeadLettered)
		if !finished && !restored && !dead {
			errs = append(errs, fmt.Errorf("saga: NewRuntime: hook %d (%T) implements none of HookFinished, HookRestored, dlq.HookDeadLettered", i, h))
		}
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
	cfg.TransactionTimeout = cmp.Or(cfg.TransactionTimeout, DefaultTransactionTimeout)
	cfg.Source = cmp.Or(cfg.Source, "sagapipe/"+s.name)
	cfg.DeadLetterTopic = cmp.Or(cfg.DeadLetterTopic, s.InboxTopic()+dlq.DefaultTopicSuffix)
	cfg.ClosedRetention = cmp.Or(cfg.ClosedRetention, DefaultClosedRetention)
	if cfg.Clock == nil {
		cfg.Clock = dlq.SystemClock{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Propagator == nil {
		cfg.Propagator = telemetry.Propagator()
	}

	r := &Runtime[D]{saga: s, versions: versions, homes: kgo.StickyKeyPartitioner(nil).ForTopic(s.InboxTopic()), cfg: cfg, parts: map[int32]*partitionState[D]{}, stores: map[int32]*partitionStore{},
		lag: map[int32]int64{}, tracer: telemetry.Tracer(cfg.TracerProvider),
		failureReplies: map[statemachine.EventType]bool{}, compensationAcks: map[statemachine.EventType]bool{}}
	r.sagaSpans = telemetry.HonoursPresetIDs(r.tracer)
	for _, def := range versions {
		def.classifyReplies(r.failureReplies, r.compensationAcks)
	}
	r.connOpts = append([]kgo.Opt{kgo.SeedBrokers()}, cfg.ClientOptions...)
	var err error
	if r.codecs, err = s.newCodecs(cfg.Registry); err != nil {
		return nil, err
	}
	for _, o := range older { // their events and commands too; the newest's schemas win
		c, err := o.newCodecs(cfg.Registry)
		if err != nil {
			return nil, fmt.Errorf("saga %s version %d: %w", o.name, o.version, err)
		}
		r.codecs.merge(c)
	}
	if r.snapshots, err = newSnapshots(s, cfg.Registry); err != nil {
		return nil, err
	}
	if err := r.checkSubjects(); err != nil {
		return nil, err
	}
	if r.cfg.StateDir == "" {
		if r.cfg.StateDir, err = os.MkdirTemp("", "sagapipe-state-"); err != nil {
			return nil, fmt.Errorf("saga %s: a temporary state directory: %w (pass saga.WithStateDir)", s.name, err)
		}
		r.tempStateDir = true
	}
	metrics, err := newRuntimeMetrics(r, cfg.MeterProvider)
	if err != nil {
		r.removeTempStateDir()
		return nil, fmt.Errorf("saga %s: metrics: %w", s.name, err)
	}
	r.metrics = metrics
	r.backgroundCtx, r.stopBackground = context.WithCancel(context.Background())
	// No linger: a batch's records are all produced before the transaction
	// ends, and End flushes; lingering would only add its 10ms to every
	// hop of every saga. WithClientOptions may still set one.
	// No seed brokers unless WithClientOptions names them: franz-go would
	// otherwise dial 127.0.0.1:9092.
	clientOpts := append(append([]kgo.Opt{kgo.SeedBrokers(), kgo.ProducerLinger(0),
		kgo.TransactionTimeout(cfg.TransactionTimeout)}, cfg.ClientOptions...),
		kgo.ConsumerGroup(cfg.Group),
		kgo.ConsumeTopics(s.InboxTopic()),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.TransactionalID(cfg.TransactionalID),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.BlockRebalanceOnPoll(),
		kgo.RecordPartitioner(pipe.NewPartitioner(nil)),
		kgo.OnPartitionsAssigned(r.assigned),
		kgo.OnPartitionsRevoked(r.revoked),
		kgo.OnPartitionsLost(r.revoked),
		kgo.WithHooks(&r.conn),
	)
	r.conn.onChange = func(reachable bool, err error) {
		if reachable {
			r.cfg.Logger.Info("saga: the cluster is reachable again", "saga_name", s.name)
		} else {
			r.cfg.Logger.Warn("saga: the cluster is out of reach; the client retries, and the runtime is not ready meanwhile", "saga_name", s.name, "error", err)
		}
	}
	sess, err := kgo.NewGroupTransactSession(clientOpts...)
	if err != nil {
		_ = metrics.registration.Unregister()
		r.removeTempStateDir()
		if probe, perr := kgo.NewClient(cfg.ClientOptions...); perr == nil {
			// Valid but for the seed brokers left out.
			probe.Close()
			return nil, fmt.Errorf("saga %s: NewRuntime: no seed brokers: pass saga.WithClientOptions(kgo.SeedBrokers(...))", s.name)
		}
		return nil, fmt.Errorf("saga %s: %w", s.name, err)
	}
	piper, err := pipe.New(sess.Client(), pipe.WithConsumerGroup(cfg.Group), pipe.WithSource(cfg.Source),
		pipe.WithTracerProvider(cfg.TracerProvider), pipe.WithMeterProvider(cfg.MeterProvider), pipe.WithPropagator(cfg.Propagator))
	if err != nil {
		_ = metrics.registration.Unregister()
		sess.Close()
		r.stopBackground()
		r.background.Wait()
		r.closeStores()
		r.removeTempStateDir()
		return nil, err
	}
	r.sess, r.piper = sess, piper
	return r, nil
}

// instances numbers the runtimes of this process.
var instances atomic.Int64

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

// Close leaves the group, closes the client and the state stores, and
// waits for the restores in progress. Call it after Run returned; a second
// call does nothing.
func (r *Runtime[D]) Close() {
	r.closeOnce.Do(func() {
		_ = r.piper.Close(context.Background())
		r.stopBackground()
		r.sess.CloseAllowingRebalance()
		r.background.Wait()
		r.closeStores()
		r.removeTempStateDir()
		_ = r.metrics.registration.Unregister()
	})
}

func (r *Runtime[D]) closeStores() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for p, ps := range r.stores {
		ps.mu.Lock()
		if ps.st != nil {
			if err := ps.st.close(); err != nil {
				r.cfg.Logger.Error("closing a state store", "saga_name", r.saga.name, "partition", p, "error", err)
			}
			ps.st = nil
		}
		ps.mu.Unlock()
	}
}

func (r *Runtime[D]) removeTempStateDir() {
	if r.tempStateDir {
		_ = os.RemoveAll(r.cfg.StateDir)
	}
}

// storeDir is where partition p's state store lives.
func (r *Runtime[D]) storeDir(p int32) string {
	return filepath.Join(r.cfg.StateDir, r.saga.name, fmt.Sprint(p))
}

// start checks the topics and registers the journal's and the snapshots'
// schemas, waiting out (with backoff, logged) a broker or registry that
// cannot be reached yet: a service started before its cluster, or during
// an outage, comes up when they do. A missing topic or a refused schema
// fails at once: someone has to act.
func (r *Runtime[D]) start(ctx context.Context) error {
	check := func() error {
		if err := r.CheckTopics(ctx); err != nil {
			return err
		}
		if _, err := r.journal.Register(ctx, r.saga.JournalTopic()); err != nil {
			return fmt.Errorf("saga %s: journal schema: %w", r.saga.name, err)
		}
		if err := r.snapshots.register(ctx); err != nil {
			return fmt.Errorf("saga %s: %w", r.saga.name, err)
		}
		return nil
	}
	var wait time.Duration
	for {
		err := check()
		if err == nil {
			r.started.Store(true)
			return nil
		}
		if ctx.Err() != nil || !(errors.Is(err, schema.ErrRegistryUnavailable) || kafkaerr.Transient(err)) {
			return err
		}
		wait = min(max(2*wait, time.Second), 30*time.Second)
		r.cfg.Logger.Warn("saga: cannot start yet: the cluster or the registry cannot be reached; retrying", "saga_name", r.saga.name,
			"retry_in", wait, "error", err)
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
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
	if err := r.start(ctx); err != nil {
		return err
	}
	poller := consume.NewPoller(consume.Config{Name: "saga " + r.saga.name, Poll: r.sess.PollFetches,
		AllowRebalance: r.sess.AllowRebalance, AfterFunc: r.cfg.Clock.AfterFunc, Logger: r.cfg.Logger.With("saga_name", r.saga.name)})
	for {
		if err := r.restoreFailure(); err != nil {
			return err
		}
		if err := r.sweepExpired(); err != nil {
			return err
		}
		if err := r.flushStores(); err != nil {
			return err
		}
		fetches, stopped, err := poller.PollWith(ctx, r.armWakeUps)
		if stopped {
			return nil
		}
		if err != nil {
			return err
		}
		if err := r.processBatch(ctx, work, fetches); err != nil {
			return err
		}
	}
}

// armWakeUps makes the next poll end early: at the next timer or sweep, at
// once when snapshots or tombstones wait to be written, or when wakePoll
// is called (a partition restored).
func (r *Runtime[D]) armWakeUps(wake context.CancelFunc) (disarm func()) {
	stop := func() bool { return false }
	now := r.cfg.Clock.Now()
	wait, timer := r.nextTimer()
	if sweep := r.nextSweep(); sweep >= 0 && (!timer || sweep < wait) {
		wait, timer = sweep, true
	}
	if timer {
		at := now.Add(wait)
		stop = r.cfg.Clock.AfterFunc(wait, wake)
		if !r.cfg.Clock.Now().Before(at) {
			// The clock passed the deadline while the wait was worked
			// out (a test clock advanced, a clock jump): the waiter
			// counts from the later time, so do not wait at all.
			wake()
		}
	}
	r.mu.Lock()
	r.wake = wake
	pending := r.pendingWrites()
	r.mu.Unlock()
	if pending {
		wake() // snapshots or tombstones to write: no need to wait for records
	}
	// A store's write-behind is due on the wall clock, not the saga's:
	// it is the process's own business.
	stopFlush := func() bool { return false }
	if at, ok := r.storesDue(); ok {
		stopFlush = time.AfterFunc(time.Until(at), wake).Stop
	}
	return func() {
		r.mu.Lock()
		r.wake = nil
		r.mu.Unlock()
		stop()
		stopFlush()
	}
}

// storesDue returns when the first store's write-behind is due. A store
// busy elsewhere (a restore holds its mu throughout, and may wait long for
// a previous owner's transaction; Status holds it briefly) is looked at
// again behindFor from now: the loop does not wait on it.
func (r *Runtime[D]) storesDue() (first time.Time, ok bool) {
	for _, ps := range r.openStores() {
		if !ps.mu.TryLock() {
			if at := time.Now().Add(behindFor); !ok || at.Before(first) {
				first, ok = at, true
			}
			continue
		}
		if ps.st != nil {
			if at, due := ps.st.flushDue(); due && (!ok || at.Before(first)) {
				first, ok = at, true
			}
		}
		ps.mu.Unlock()
	}
	return first, ok
}

// flushStores writes the stores' write-behind that is due, passing over
// the stores being restored, as storesDue does.
func (r *Runtime[D]) flushStores() error {
	for _, ps := range r.openStores() {
		if !ps.mu.TryLock() {
			continue
		}
		var err error
		if ps.st != nil {
			if at, due := ps.st.flushDue(); due && !ps.st.now().Before(at) {
				err = ps.st.flush()
			}
		}
		ps.mu.Unlock()
		if err != nil {
			return fmt.Errorf("saga %s: %w", r.saga.name, err)
		}
	}
	return nil
}

// openStores returns the stores, in a slice the run loop reuses.
func (r *Runtime[D]) openStores() []*partitionStore {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.storeList = r.storeList[:0]
	for _, ps := range r.stores {
		r.storeList = append(r.storeList, ps)
	}
	return r.storeList
}

// wakePoll ends the poll in progress. Callers hold mu.
func (r *Runtime[D]) wakePoll() {
	if r.wake != nil {
		r.wake()
	}
}
