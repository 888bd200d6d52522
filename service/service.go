package service

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/sagapipe/sagapipe/console"
	"github.com/sagapipe/sagapipe/internal/kafkaerr"
	"github.com/sagapipe/sagapipe/observability"
	"github.com/sagapipe/sagapipe/saga"
	"github.com/sagapipe/sagapipe/schema"
	"github.com/sagapipe/sagapipe/statemachine"
)

// Saga is a saga definition registered with the service (see Register).
type Saga interface {
	// Name is the saga's name.
	Name() string
	newRuntime(cfg runtimeConfig) (runtime, error)
	startEvent() (ceType, avroSchema, inbox string)
	newStarter(client *kgo.Client, registry *schema.Serde, opts ...saga.StarterOpt) (*saga.Starter, error)
	// ensureTopics creates the saga's topics that are missing and returns
	// them all, the inbox, journal and state topic first.
	ensureTopics(ctx context.Context, adm *kadm.Client, partitions int32, replication int16) ([]string, error)
}

// runtime is a saga.Runtime with its data type erased.
type runtime interface {
	Run(ctx context.Context) error
	Close()
	Ready() bool
	Connected() bool
	// status is the saga's state, data and journal position, if this
	// instance owns the saga.
	status(ctx context.Context, id string) (sagaStatus, bool, error)
	// fold is the data a saga's journal entries lead to.
	fold(ctx context.Context, entries []saga.JournalEntry) (any, error)
	isTerminal(state string) bool
}

// Register makes a saga definition servable; older are its earlier
// versions still in flight (see saga.NewRuntime).
func Register[D any](s *saga.Saga[D], older ...*saga.Saga[D]) Saga { return registered[D]{s, older} }

type registered[D any] struct {
	s     *saga.Saga[D]
	older []*saga.Saga[D]
}

func (r registered[D]) Name() string { return r.s.Name() }

func (r registered[D]) startEvent() (string, string, string) {
	t, sch := r.s.StartEvent()
	return t, sch, r.s.InboxTopic()
}

func (r registered[D]) newStarter(client *kgo.Client, registry *schema.Serde, opts ...saga.StarterOpt) (*saga.Starter, error) {
	return r.s.NewStarter(client, registry, opts...)
}

func (r registered[D]) ensureTopics(ctx context.Context, adm *kadm.Client, partitions int32, replication int16) ([]string, error) {
	return r.s.Topics(), r.s.EnsureTopics(ctx, adm, partitions, replication)
}

// runtimeConfig is what a saga's runtime is started with, kept to start
// it anew.
type runtimeConfig struct {
	opts            []saga.Opt
	registry        *schema.Serde
	transactionalID string
}

func (r registered[D]) newRuntime(cfg runtimeConfig) (runtime, error) {
	rt, err := saga.NewRuntime(r.s, append(cfg.opts, saga.WithOlderVersions(r.older...))...)
	if err != nil {
		return nil, err
	}
	return runtimeOf[D]{rt, r.s, cfg.registry}, nil
}

type runtimeOf[D any] struct {
	*saga.Runtime[D]
	s     *saga.Saga[D]
	serde *schema.Serde
}

// sagaStatus is what an owning runtime knows of a saga.
type sagaStatus struct {
	state            string
	data             any // nil once closed
	journalPartition int32
	journalOffset    int64
}

func (r runtimeOf[D]) status(ctx context.Context, id string) (sagaStatus, bool, error) {
	st, ok, err := r.Status(ctx, id)
	if !ok || err != nil {
		return sagaStatus{}, ok, err
	}
	out := sagaStatus{state: string(st.State), journalPartition: st.JournalPartition, journalOffset: st.JournalOffset}
	if !st.Closed {
		out.data = st.Instance.Data
	}
	return out, true, nil
}

func (r runtimeOf[D]) fold(ctx context.Context, entries []saga.JournalEntry) (any, error) {
	st, err := r.s.Fold(ctx, r.serde, entries)
	return st.Instance.Data, err
}

func (r runtimeOf[D]) isTerminal(state string) bool {
	return r.s.Machine().IsTerminal(statemachine.State(state))
}

// Service runs registered sagas; see New.
type Service struct {
	cfg        Config
	sagas      map[string]Saga
	runtimes   map[string]runtime // replaced by supervise; read with runtime()
	rtMu       sync.RWMutex
	rtConfigs  map[string]runtimeConfig // each saga's, to start it anew
	restarts   metric.Int64Counter
	tel        *observability.Telemetry
	log        *slog.Logger
	clientOpts []kgo.Opt
	producer   *kgo.Client // starts sagas for the API
	serde      *schema.Serde
	starts     map[string]*schema.Codec[map[string]any] // per saga, its start event's
	starters   map[string]*saga.Starter                 // per saga, producing with producer
	handler    http.Handler
	console    *console.Console // the web console at /ui
}

// New validates cfg and prepares a runtime per saga; Run starts them. The
// service owns tel (Run's end shuts it down) and logs to log.
func New(cfg Config, tel *observability.Telemetry, log *slog.Logger, sagas ...Saga) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	if len(sagas) == 0 {
		return nil, errors.New("service: no sagas registered (pass them to service.Main or service.New)")
	}
	clientOpts, err := cfg.ClientOptions()
	if err != nil {
		return nil, err
	}
	runtimeOpts := slices.Clone(clientOpts)
	if cfg.SessionTimeout > 0 {
		runtimeOpts = append(runtimeOpts, kgo.SessionTimeout(cfg.SessionTimeout))
	}
	if cfg.InstanceID != "" {
		// One client per group in this process, so one ID serves them all.
		runtimeOpts = append(runtimeOpts, kgo.InstanceID(cfg.InstanceID))
	}
	serde, err := cfg.Serde()
	if err != nil {
		return nil, err
	}
	restarts, err := tel.MeterProvider().Meter("github.com/sagapipe/sagapipe/service").Int64Counter("sagapipe.service.runtime.restarts",
		metric.WithDescription("saga runtimes started anew after losing the cluster or the registry past their clients' retries"))
	if err != nil {
		return nil, err
	}
	s := &Service{cfg: cfg, sagas: map[string]Saga{}, runtimes: map[string]runtime{}, rtConfigs: map[string]runtimeConfig{}, restarts: restarts, tel: tel, log: log,
		clientOpts: clientOpts, serde: serde, starts: map[string]*schema.Codec[map[string]any]{}, starters: map[string]*saga.Starter{}}
	host, _ := os.Hostname()
	for _, sg := range sagas {
		if _, dup := s.sagas[sg.Name()]; dup {
			s.closeRuntimes()
			return nil, fmt.Errorf("service: saga %q registered twice", sg.Name())
		}
		group := cfg.GroupPrefix + "." + sg.Name()
		txnID := fmt.Sprintf("%s.%s.%s.%d", cfg.TransactionalIDPrefix, sg.Name(), cmp.Or(host, "host"), os.Getpid())
		rtCfg := runtimeConfig{registry: serde, transactionalID: txnID, opts: []saga.Opt{
			saga.WithClientOptions(runtimeOpts...), saga.WithRegistry(serde), saga.WithGroup(group), saga.WithTransactionalID(txnID),
			saga.WithTracerProvider(tel.TracerProvider()), saga.WithMeterProvider(tel.MeterProvider()), saga.WithPropagator(tel.Propagator()),
			saga.WithLogger(log), saga.WithTransactionTimeout(cfg.TransactionTimeout), saga.WithStateDir(cfg.StateDir),
			saga.WithClosedRetention(cfg.ClosedRetention), saga.WithRebuildState(cfg.StateRebuild),
		}}
		rt, err := sg.newRuntime(rtCfg)
		if err != nil {
			s.closeRuntimes()
			return nil, err
		}
		s.sagas[sg.Name()], s.runtimes[sg.Name()], s.rtConfigs[sg.Name()] = sg, rt, rtCfg
		_, avroSchema, _ := sg.startEvent()
		if s.starts[sg.Name()], err = schema.NewCodec[map[string]any](serde, avroSchema); err != nil {
			s.closeRuntimes()
			return nil, err
		}
	}
	// Keyed by saga ID with kgo's default partitioner (murmur2, as every
	// Kafka client), so a saga's start lands where its replies will.
	s.producer, err = kgo.NewClient(append(slices.Clone(clientOpts),
		// A request waits this long at most; past it the record fails
		// rather than stay buffered through an outage.
		kgo.RecordDeliveryTimeout(publishTimeout))...)
	if err != nil {
		s.closeRuntimes()
		return nil, err
	}
	for name, sg := range s.sagas {
		if s.starters[name], err = sg.newStarter(s.producer, serde, saga.StartSource("sagapipe/api"), saga.StartTracerProvider(tel.TracerProvider())); err != nil {
			s.producer.Close()
			s.closeRuntimes()
			return nil, err
		}
	}
	if s.console, err = s.newConsole(clientOpts); err != nil {
		s.producer.Close()
		s.closeRuntimes()
		return nil, err
	}
	s.handler = s.routes()
	return s, nil
}

func (s *Service) closeRuntimes() {
	s.rtMu.RLock()
	defer s.rtMu.RUnlock()
	for _, rt := range s.runtimes {
		rt.Close()
	}
}

// runtime returns the saga's runtime as it runs now.
func (s *Service) runtime(name string) (runtime, bool) {
	s.rtMu.RLock()
	defer s.rtMu.RUnlock()
	rt, ok := s.runtimes[name]
	return rt, ok
}

// recoverable tells the failures of a runtime that a new one rides
// through: the brokers or the registry out of reach for longer than the
// client's retries (a connection cut at its first read included: the
// brokers answered these settings at start), or its producer fenced (a broker that aborted its
// transaction while it was away bumps the epoch; a new runtime takes the
// transactional ID back). Anything else (missing topics, refused
// credentials) needs someone to act.
func recoverable(err error) bool {
	return kafkaerr.Reconnectable(err) || errors.Is(err, schema.ErrRegistryUnavailable) || fenced(err)
}

func fenced(err error) bool {
	return errors.Is(err, kerr.ProducerFenced) || errors.Is(err, kerr.InvalidProducerEpoch)
}

// maxFencedInARow is how often in a row a fresh runtime may be fenced
// within a minute of starting before the service gives up: another
// process then uses the same transactional ID.
const maxFencedInARow = 5

// supervise runs the saga's runtime until ctx ends (nil) or it fails for
// good (the error). A runtime that stops on a recoverable error is closed
// and started anew after a backoff (1 s doubling to 30 s), as often as it
// takes: its sagas are restored from the state topic, the transaction it
// had open is aborted by its successor's (same transactional ID), and
// nothing is lost or done twice.
func (s *Service) supervise(ctx context.Context, name string) error {
	var wait time.Duration
	fencedInARow := 0
	for {
		rt, _ := s.runtime(name)
		began := time.Now()
		err := rt.Run(ctx)
		if err == nil || ctx.Err() != nil {
			return nil
		}
		if !recoverable(err) {
			return err
		}
		if fenced(err) && time.Since(began) < time.Minute {
			if fencedInARow++; fencedInARow >= maxFencedInARow {
				return fmt.Errorf("%w (fenced %d times in a row within a minute of starting: another process uses the transactional ID %q; give each instance its own host name or transactional_id_prefix)",
					err, fencedInARow, s.rtConfigs[name].transactionalID)
			}
		} else {
			fencedInARow = 0
		}
		if time.Since(began) > 2*time.Minute {
			wait = 0 // it ran a while: a new outage
		}
		wait = min(max(2*wait, time.Second), 30*time.Second)
		s.log.Warn("saga runtime lost the cluster or the registry; starting it anew", "saga_name", name, "retry_in", wait, "error", err)
		s.restarts.Add(ctx, 1, metric.WithAttributes(attribute.String("saga_name", name)))
		rt.Close()
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return nil
		}
		fresh, err := s.sagas[name].newRuntime(s.rtConfigs[name])
		if err != nil {
			return err
		}
		s.rtMu.Lock()
		s.runtimes[name] = fresh
		s.rtMu.Unlock()
	}
}

// Handler is the service's HTTP API: /healthz, /readyz, /metrics, /api/sagas,
// and the web console at /ui.
func (s *Service) Handler() http.Handler { return s.handler }

// Ready reports whether every saga's runtime owns partitions and has
// restored them.
func (s *Service) Ready() bool {
	s.rtMu.RLock()
	defer s.rtMu.RUnlock()
	for _, rt := range s.runtimes {
		if !rt.Ready() {
			return false
		}
	}
	return true
}

// ErrShutdownTimedOut: the graceful shutdown took longer than
// Config.ShutdownGrace; what was in progress is redone by the next owner.
var ErrShutdownTimedOut = errors.New("service: graceful shutdown exceeded its grace period")

// Run serves until ctx is cancelled, then shuts down gracefully: it stops
// polling, lets each runtime finish (commit or abort) its transaction in
// progress, leaves the groups, stops the HTTP server and flushes telemetry,
// all within Config.ShutdownGrace. It returns the first runtime or server
// failure, or ErrShutdownTimedOut.
func (s *Service) Run(ctx context.Context) error {
	l, err := net.Listen("tcp", s.cfg.HTTPAddr)
	if err != nil {
		s.closeRuntimes()
		s.producer.Close()
		_ = s.tel.Shutdown(context.WithoutCancel(ctx))
		return fmt.Errorf("http_addr: %w", err)
	}
	srv := &http.Server{Handler: s.handler, ReadHeaderTimeout: 10 * time.Second}
	failed := make(chan error, len(s.sagas)+2)
	served := make(chan struct{})
	go func() {
		defer close(served)
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			failed <- fmt.Errorf("http: %w", err)
		}
	}()
	// /healthz answers and /readyz says 503 while the brokers are waited for.
	if err := s.awaitBrokers(ctx); err != nil || ctx.Err() != nil {
		_ = srv.Shutdown(context.WithoutCancel(ctx))
		<-served
		s.closeRuntimes()
		s.producer.Close()
		_ = s.tel.Shutdown(context.WithoutCancel(ctx))
		return err
	}
	s.log.Info("sagapipe service started", "config", s.cfg, "http_addr", l.Addr().String(), "tracing", s.tel.Tracing())

	runCtx, stopRuntimes := context.WithCancel(ctx)
	defer stopRuntimes()
	var wg sync.WaitGroup
	for name := range s.sagas {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.supervise(runCtx, name); err != nil {
				failed <- err // it names its saga
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.console.Run(runCtx) // samples the metrics for its live view
	}()
	var runErr error
	select {
	case <-ctx.Done():
		s.log.Info("shutting down: finishing the transactions in progress", "grace", s.cfg.ShutdownGrace)
	case runErr = <-failed:
		s.log.Error("stopping: a component failed", "error", runErr)
	}
	began := time.Now()
	deadline, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.ShutdownGrace)
	defer cancel()
	stopRuntimes()
	stopped := make(chan struct{})
	go func() {
		wg.Wait()
		s.closeRuntimes() // leaves the groups
		s.producer.Close()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-deadline.Done():
		runErr = errors.Join(runErr, ErrShutdownTimedOut)
	}
	_ = srv.Shutdown(deadline)
	<-served
	if err := s.tel.Shutdown(deadline); err != nil {
		s.log.Warn("flushing telemetry", "error", err)
	}
	s.log.Info("stopped", "took", time.Since(began).Round(time.Millisecond))
	return runErr
}

// checkBrokers fails fast, with the settings to check, when the brokers
// cannot be reached or refuse the credentials.
// awaitBrokers waits until the brokers answer, logging once that it waits
// and retrying with backoff (1 s doubling to 30 s) while they are out of
// reach; an error that is no outage (refused credentials, say) is returned
// at once, naming what to check.
func (s *Service) awaitBrokers(ctx context.Context) error {
	var wait time.Duration
	for {
		err := s.checkBrokers(ctx)
		if err == nil || ctx.Err() != nil || !kafkaerr.Transient(err) {
			if err == nil && wait > 0 {
				s.log.Info("the brokers answer: starting", "brokers", s.cfg.Brokers)
			}
			return err
		}
		if wait == 0 {
			s.log.Warn("waiting for the brokers: they cannot be reached yet; retrying until they can (SIGTERM to stop)", "brokers", s.cfg.Brokers, "error", err)
		}
		wait = min(max(2*wait, time.Second), 30*time.Second)
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return nil
		}
	}
}

func (s *Service) checkBrokers(ctx context.Context) error {
	pctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	err := s.producer.Ping(pctx)
	if err == nil || ctx.Err() != nil {
		return nil
	}
	hint := "check brokers"
	if s.cfg.TLS.Enabled {
		hint += " and the tls settings"
	}
	if s.cfg.SASL.Mechanism != "" {
		// Some brokers refuse credentials by closing the connection.
		hint += fmt.Sprintf("; a connection closed during setup is how some brokers refuse SASL credentials: check sasl.mechanism (%s), sasl.username (%q) and sasl.password",
			s.cfg.SASL.Mechanism, s.cfg.SASL.Username)
	}
	return fmt.Errorf("cannot reach the brokers %v: %w (%s)", s.cfg.Brokers, err, hint)
}

func indent(err error) string {
	return "  " + strings.ReplaceAll(err.Error(), "\n", "\n  ")
}

// Main is the whole service for a team's main: configuration from os.Args,
// the environment and the YAML file, then Run until SIGTERM or SIGINT. A
// second signal exits at once. It does not return.
func Main(sagas ...Saga) {
	MainWithFlags(nil, sagas...)
}

// MainWithFlags is Main for a main with flags of its own: flags registers
// them on the flag set Main parses, beside the service's (-h lists them
// all), and they are set before the service starts. A flag named like one
// of the service's is refused (exit 2, naming it). The "topics ensure"
// command accepts them as well, so one set of arguments serves both.
//
//	var region string
//	service.MainWithFlags(func(fs *flag.FlagSet) {
//		fs.StringVar(&region, "region", "eu-west-1", "the region this instance serves")
//	}, service.Register(orders))
func MainWithFlags(flags func(fs *flag.FlagSet), sagas ...Saga) {
	os.Exit(CommandWithFlags(context.Background(), os.Args[0], os.Args[1:], os.Stdout, os.Stderr, flags, sagas...))
}

// Command runs the service as a command with args and returns its exit
// code: 0 after a graceful shutdown, 1 when it failed or the shutdown
// timed out, 2 for invalid configuration (every problem is printed).
//
// "topics ensure" as the first arguments creates the topics of every saga
// registered instead (see TopicsCommand).
func Command(ctx context.Context, name string, args []string, stdout, stderr io.Writer, sagas ...Saga) int {
	return CommandWithFlags(ctx, name, args, stdout, stderr, nil, sagas...)
}

// CommandWithFlags is Command with a main's own flags, registered by flags
// (nil: none) as MainWithFlags does.
func CommandWithFlags(ctx context.Context, name string, args []string, stdout, stderr io.Writer, flags func(fs *flag.FlagSet), sagas ...Saga) int {
	if len(args) > 0 && args[0] == "topics" {
		return topicsCommand(ctx, name, args[1:], stdout, stderr, flags, sagas...)
	}
	cfg, rest, err := loadConfig(name, args, os.LookupEnv, stderr, flags, true)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err == nil && len(rest) > 0 {
		err = fmt.Errorf("unexpected arguments %q", rest)
	}
	if err != nil {
		fmt.Fprintf(stderr, "%s: invalid configuration:\n%v\n", name, indent(err))
		return 2
	}
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.LogLevel)) // validated
	log := observability.NewJSONLogger(stderr, level)
	tel, err := observability.Setup(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 2
	}
	svc, err := New(cfg, tel, log, sagas...)
	if err != nil {
		_ = tel.Shutdown(ctx)
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 1
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	signals := make(chan os.Signal, 2)
	signal.Notify(signals, syscall.SIGTERM, os.Interrupt)
	defer signal.Stop(signals)
	returned := make(chan struct{})
	defer close(returned)
	go func() {
		select {
		case sig := <-signals:
			log.Info("signal received: shutting down; a second one exits at once", "signal", sig.String())
			cancel()
		case <-returned:
			return
		}
		select {
		case sig := <-signals:
			log.Warn("second signal: exiting without finishing", "signal", sig.String())
			os.Exit(1)
		case <-returned:
		}
	}()
	if err := svc.Run(ctx); err != nil {
		log.Error("service stopped", "error", err)
		return 1
	}
	return 0
}

// TopicsCommand is "<name> topics ensure": it creates the missing topics of
// every saga registered (inbox, journal, state, dead letters, outcomes and
// the participants' command topics), reaching the cluster with the
// service's configuration (--config, SAGAPIPE_*, TLS, SASL), and prints
// them with their partition counts. It fails when a saga's journal or
// state topic exists with another partition count than its inbox.
func TopicsCommand(ctx context.Context, name string, args []string, stdout, stderr io.Writer, sagas ...Saga) int {
	return topicsCommand(ctx, name, args, stdout, stderr, nil, sagas...)
}

// topicsCommand is TopicsCommand accepting a main's own flags too.
func topicsCommand(ctx context.Context, name string, args []string, stdout, stderr io.Writer, flags func(fs *flag.FlagSet), sagas ...Saga) int {
	usage := fmt.Sprintf("usage: %s topics ensure [--partitions N] [--replication R] [the service's connection flags; -h lists them]", name)
	if len(args) == 0 || args[0] != "ensure" {
		fmt.Fprintln(stderr, usage)
		return 2
	}
	var partitions, replication int
	cfg, rest, err := loadConfig(name+" topics ensure", args[1:], os.LookupEnv, stderr, func(fs *flag.FlagSet) {
		fs.IntVar(&partitions, "partitions", 3, "partitions of each topic (a saga's inbox, journal and state topic must match)")
		fs.IntVar(&replication, "replication", 1, "replication factor (3 in production)")
		if flags != nil {
			flags(fs)
		}
	}, false)
	switch {
	case errors.Is(err, flag.ErrHelp):
		return 0
	case err != nil:
		fmt.Fprintf(stderr, "%s topics ensure: invalid configuration:\n%v\n", name, indent(err))
		return 2
	case len(rest) > 0:
		fmt.Fprintf(stderr, "%s topics ensure: unexpected arguments %q\n%s\n", name, rest, usage)
		return 2
	case partitions < 1 || replication < 1:
		fmt.Fprintf(stderr, "%s topics ensure: --partitions %d and --replication %d must be at least 1\n", name, partitions, replication)
		return 2
	case len(sagas) == 0:
		fmt.Fprintf(stderr, "%s topics ensure: no sagas registered\n", name)
		return 2
	}
	opts, err := cfg.ClientOptions()
	if err != nil {
		fmt.Fprintf(stderr, "%s topics ensure: %v\n", name, err)
		return 2
	}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		fmt.Fprintf(stderr, "%s topics ensure: %v\n", name, err)
		return 1
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	var errs []error
	var all []string
	bySaga := map[string][]string{}
	for _, sg := range sagas {
		topics, err := sg.ensureTopics(ctx, adm, int32(partitions), int16(replication))
		errs = append(errs, err)
		bySaga[sg.Name()] = topics
		for _, t := range topics {
			if !slices.Contains(all, t) {
				all = append(all, t)
			}
		}
	}
	details, err := adm.ListTopics(ctx, all...)
	errs = append(errs, err)
	if err == nil {
		for _, d := range details.Sorted() {
			fmt.Fprintf(stdout, "%-28s %d partitions\n", d.Topic, len(d.Partitions))
		}
		for _, sg := range sagas {
			t := bySaga[sg.Name()]
			inbox := len(details[t[0]].Partitions)
			for _, other := range t[1:3] {
				if n := len(details[other].Partitions); n != inbox {
					errs = append(errs, fmt.Errorf("saga %s: %s has %d partitions but its inbox %s has %d; the runtime will refuse them (recreate %s with %d partitions)",
						sg.Name(), other, n, t[0], inbox, other, inbox))
				}
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		fmt.Fprintf(stderr, "%s topics ensure: %v\n", name, err)
		return 1
	}
	return 0
}
