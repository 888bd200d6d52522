package participant

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagapipe/sagapipe/pipe"
	"github.com/sagapipe/sagapipe/saga"
	"github.com/sagapipe/sagapipe/schema"
)

// DefaultConcurrency is how many commands of different sagas a service
// handles at once unless told otherwise (one saga's commands are handled
// one at a time, in order).
const DefaultConcurrency = 16

// Declared is an event declaration of any Go type: saga.EventDef.
type Declared interface {
	Declared() (ceType, avroSchema string)
}

// Service is one participant service: a consumer group on one command
// topic with a handler per command type. Build it with New and Handle
// before Run; it is not safe to change while it runs.
type Service struct {
	name, topic string
	routes      []func(m *pipe.Mux, registry *schema.Serde) error
	types       []string
	replies     []Declared
	concurrency int
	onFailure   pipe.FailurePolicy
	store       pipe.IdempotencyStore
	errs        []error
}

// New returns a service named name (its consumer group and its replies'
// ce_source) consuming topic.
func New(name, topic string) *Service {
	s := &Service{name: name, topic: topic, concurrency: DefaultConcurrency}
	if name == "" {
		s.errs = append(s.errs, errors.New("participant.New: the service has no name"))
	}
	if topic == "" {
		s.errs = append(s.errs, fmt.Errorf("participant.New(%q): the service has no topic", name))
	}
	return s
}

// Name returns the service's name.
func (s *Service) Name() string { return s.name }

// Topic returns the command topic the service consumes.
func (s *Service) Topic() string { return s.topic }

// Replies declares the events the service replies with: their schemas are
// registered (by record name) when it starts, so a schema the registry
// refuses stops it before any command is handled. Reply works for an
// undeclared event too, registering it on first use.
func (s *Service) Replies(defs ...Declared) *Service {
	s.replies = append(s.replies, defs...)
	return s
}

// Concurrency sets how many commands of different sagas are handled at
// once (default DefaultConcurrency); the handler must be safe for
// concurrent use. Offsets are committed only once every command before
// them is answered.
func (s *Service) Concurrency(n int) *Service {
	if n < 1 {
		s.errs = append(s.errs, fmt.Errorf("participant %s: Concurrency(%d): want 1 or more", s.name, n))
	}
	s.concurrency = n
	return s
}

// OnFailure sets what becomes of a command that cannot be handled (default
// pipe.StopOnFailure: the service, and with it the process, stops, and the
// command comes again on restart). A dlq.Policy sets it aside instead.
func (s *Service) OnFailure(p pipe.FailurePolicy) *Service { s.onFailure = p; return s }

// IdempotencyStore sets the store of answered command IDs (default an
// in-memory one; see the outbox package for a durable one).
func (s *Service) IdempotencyStore(st pipe.IdempotencyStore) *Service { s.store = st; return s }

// Handle routes the commands declared by def to h, decoded into def's Go
// type with def's schema. A topic carrying a command and its compensation
// gets a Handle for each.
func Handle[C any](s *Service, def saga.EventDef[C], h pipe.Handler[C]) *Service {
	if h == nil {
		s.errs = append(s.errs, fmt.Errorf("participant %s: Handle(%s): handler is nil", s.name, def.Type))
	}
	s.types = append(s.types, def.Type)
	s.routes = append(s.routes, func(m *pipe.Mux, registry *schema.Serde) error {
		return saga.Route(m, registry, def, h)
	})
	return s
}

// codecsKey carries a running service's reply codecs in the handler's
// context.
type codecsKey struct{}

// codecs are a process's reply codecs, one per event type, built once.
type codecs struct {
	registry *schema.Serde
	mu       sync.Mutex
	byType   map[string]any // ce_type → *schema.Codec[T]
}

// Reply returns the reply event v of def, for a handler to return. Its
// codec is built once per process; the registry is the one the service
// runs with (the handler's ctx carries it).
func Reply[T any](ctx context.Context, def saga.EventDef[T], v T) (pipe.Reply, error) {
	cs, _ := ctx.Value(codecsKey{}).(*codecs)
	if cs == nil {
		return pipe.Reply{}, fmt.Errorf("participant.Reply(%s): ctx is not a handler's of a running participant service", def.Type)
	}
	cs.mu.Lock()
	c, ok := cs.byType[def.Type].(*schema.Codec[T])
	if !ok {
		built, err := schema.NewCodec[T](cs.registry, def.Schema)
		if err != nil {
			cs.mu.Unlock()
			return pipe.Reply{}, fmt.Errorf("participant.Reply(%s): %w", def.Type, err)
		}
		c, cs.byType[def.Type] = built, built
	}
	cs.mu.Unlock()
	return pipe.NewReply(c, def.Type, v), nil
}

// Config is how services reach the cluster.
type Config struct {
	Brokers []string
	// RegistryURL is the Schema Registry's; or set Registry.
	RegistryURL string
	// Registry, when set, is used instead of one built from RegistryURL;
	// it must name subjects by record name (schema.RecordNameStrategy):
	// a saga's inbox carries many event types.
	Registry *schema.Serde
	// ClientOptions are added to every service's client (TLS, SASL, ...).
	ClientOptions []kgo.Opt
	// InstanceID, when set, makes this process a static member of each
	// service's consumer group (group.instance.id): restarted under the
	// same ID (a StatefulSet's pod name), it takes its partitions back at
	// once instead of the group waiting out its killed predecessor. One
	// per running process, stable across its restarts.
	InstanceID     string
	TracerProvider trace.TracerProvider
	Logger         *slog.Logger
}

// Run runs services until ctx ends (it then returns nil, each service
// having finished the commands it had begun) or one of them fails: the
// others are stopped and Run returns the failure. Every problem with the
// services' declarations is reported before anything starts, and every
// reply schema is registered before the first command is handled.
func Run(ctx context.Context, cfg Config, services ...*Service) error {
	var errs []error
	if len(services) == 0 {
		errs = append(errs, errors.New("participant.Run: no services"))
	}
	if len(cfg.Brokers) == 0 {
		errs = append(errs, errors.New("participant.Run: no brokers (Config.Brokers, --brokers or SAGAPIPE_BROKERS)"))
	}
	if cfg.Registry == nil && cfg.RegistryURL == "" {
		errs = append(errs, errors.New("participant.Run: no Schema Registry (Config.RegistryURL, --registry or SAGAPIPE_REGISTRY_URL)"))
	}
	names := map[string]bool{}
	for _, s := range services {
		errs = append(errs, s.errs...)
		if names[s.name] {
			errs = append(errs, fmt.Errorf("participant.Run: two services are named %q", s.name))
		}
		names[s.name] = true
		if len(s.routes) == 0 {
			errs = append(errs, fmt.Errorf("participant %s: no handlers (add them with participant.Handle)", s.name))
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	registry := cfg.Registry
	if registry == nil {
		var err error
		if registry, err = schema.NewSerde(cfg.RegistryURL, schema.WithSubjectNameStrategy(schema.RecordNameStrategy)); err != nil {
			return fmt.Errorf("participant.Run: registry: %w", err)
		}
	}
	logger := cmp.Or(cfg.Logger, slog.Default())
	// The replies' schemas first: a refused one stops everything before
	// any effect is applied.
	for _, s := range services {
		for _, d := range s.replies {
			typ, text := d.Declared()
			sch, err := schema.Parse(text)
			if err != nil {
				return fmt.Errorf("participant %s: reply %s: %w", s.name, typ, err)
			}
			subject, err := registry.Subject("", sch)
			if err != nil {
				return fmt.Errorf("participant %s: reply %s: %w", s.name, typ, err)
			}
			if _, err := registry.Register(ctx, subject, text); err != nil {
				return fmt.Errorf("participant %s: registering reply %s under %q: %w", s.name, typ, subject, err)
			}
		}
	}

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	ctx = context.WithValue(ctx, codecsKey{}, &codecs{registry: registry, byType: map[string]any{}})
	workers := make([]func() error, 0, len(services))
	var clients []*kgo.Client
	defer func() {
		for _, cl := range clients {
			cl.Close()
		}
	}()
	for _, s := range services {
		mux := pipe.NewMux()
		for _, route := range s.routes {
			if err := route(mux, registry); err != nil {
				errs = append(errs, fmt.Errorf("participant %s: %w", s.name, err))
			}
		}
		clientOpts := append(append([]kgo.Opt{kgo.SeedBrokers(cfg.Brokers...)}, cfg.ClientOptions...),
			kgo.ConsumerGroup(s.name), kgo.ConsumeTopics(s.topic), kgo.DisableAutoCommit(),
			kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
			kgo.ProducerLinger(0)) // a saga waits for each reply: send it now
		if cfg.InstanceID != "" {
			// One client per service's group here, so one ID serves them all.
			clientOpts = append(clientOpts, kgo.InstanceID(cfg.InstanceID))
		}
		cl, err := kgo.NewClient(clientOpts...)
		if err != nil {
			errs = append(errs, fmt.Errorf("participant %s: %w", s.name, err))
			continue
		}
		clients = append(clients, cl)
		opts := []pipe.StageOpt{pipe.WithConcurrency(s.concurrency), pipe.WithLogger(logger.With("participant", s.name)),
			pipe.WithPiperOptions(pipe.WithSource(s.name), pipe.WithConsumerGroup(s.name), pipe.WithTracerProvider(cfg.TracerProvider))}
		if s.onFailure != nil {
			opts = append(opts, pipe.WithFailurePolicy(s.onFailure))
		}
		if s.store != nil {
			opts = append(opts, pipe.WithIdempotencyStore(s.store))
		}
		w, err := pipe.NewMuxWorker(cl, mux, opts...)
		if err != nil {
			errs = append(errs, fmt.Errorf("participant %s: %w", s.name, err))
			continue
		}
		workers = append(workers, func() error {
			if err := w.Run(ctx); err != nil {
				return fmt.Errorf("participant %s: %w", s.name, err)
			}
			return nil
		})
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	for _, s := range services {
		logger.Info("participant running", "participant", s.name, "topic", s.topic, "commands", s.types, "concurrency", s.concurrency)
	}
	var wg sync.WaitGroup
	failures := make(chan error, len(workers))
	for _, run := range workers {
		wg.Go(func() {
			if err := run(); err != nil {
				failures <- err
				cancel(err) // one service failing stops the others
			}
		})
	}
	wg.Wait()
	close(failures)
	var failed error
	for err := range failures {
		failed = errors.Join(failed, err)
	}
	return failed
}

// Main runs services as a process: the configuration comes from flags
// (--brokers, --registry, --instance-id, --log-level) or the environment
// (SAGAPIPE_BROKERS, SAGAPIPE_REGISTRY_URL, SAGAPIPE_INSTANCE_ID), SIGINT
// and SIGTERM stop it
// gracefully, and it exits 1 when a service cannot start or fails (2 on
// bad flags). Use Run to embed services in a process of your own.
func Main(services ...*Service) {
	os.Exit(main(os.Args[1:], os.Stderr, services...))
}

func main(args []string, stderr io.Writer, services ...*Service) int {
	fs := flag.NewFlagSet(cmp.Or(os.Args[0], "participant"), flag.ContinueOnError)
	fs.SetOutput(stderr)
	brokers := fs.String("brokers", cmp.Or(os.Getenv("SAGAPIPE_BROKERS"), "127.0.0.1:9092"), "Kafka bootstrap brokers, comma-separated (env SAGAPIPE_BROKERS)")
	registry := fs.String("registry", cmp.Or(os.Getenv("SAGAPIPE_REGISTRY_URL"), "http://127.0.0.1:8081"), "Schema Registry URL (env SAGAPIPE_REGISTRY_URL)")
	instance := fs.String("instance-id", os.Getenv("SAGAPIPE_INSTANCE_ID"), "static group membership: this process's ID, stable across its restarts, e.g. the pod name (env SAGAPIPE_INSTANCE_ID; default dynamic membership)")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*level)); err != nil {
		fmt.Fprintf(stderr, "--log-level %q: want debug, info, warn or error\n", *level)
		return 2
	}
	logger := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: lvl}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := Run(ctx, Config{Brokers: strings.Split(*brokers, ","), RegistryURL: *registry, InstanceID: *instance, Logger: logger}, services...)
	if err != nil {
		logger.Error("participants stopped", "error", err)
		return 1
	}
	logger.Info("participants stopped")
	return 0
}
