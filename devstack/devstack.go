package devstack

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/sagapipe/sagapipe/internal/registry"
)

// Config says where the stack listens and keeps its data. The zero value is
// a stack on random ports that keeps nothing: what tests want.
type Config struct {
	// KafkaPort is the broker's TCP port on 127.0.0.1; 0 picks a free one.
	KafkaPort int
	// RegistryPort is the registry's TCP port on 127.0.0.1; 0 picks a free one.
	RegistryPort int
	// KafkaAdvertisedPort, when set, is the port the broker tells clients
	// to connect to (in its metadata) instead of its own: the port of a
	// proxy or a port-forward in front of it. Clients that bootstrap from
	// the broker's own port are sent to it after the first request.
	KafkaAdvertisedPort int
	// DataDir, when set, keeps the broker's and the registry's data so that
	// they survive a restart. Empty keeps everything in memory.
	DataDir string
	// CompactionInterval is how often the broker compacts compacted topics
	// (the sagas' state topics); default DefaultCompactionInterval.
	CompactionInterval time.Duration
	// KafkaOptions are passed to kfake after the stack's own (tests use this
	// for SASL, TLS or fault injection).
	KafkaOptions []kfake.Opt
}

// DefaultCompactionInterval is Config.CompactionInterval's default.
const DefaultCompactionInterval = 15 * time.Second

// Stack is a running broker and registry. Close stops both.
type Stack struct {
	kafka    *kfake.Cluster
	registry *registry.Registry
	server   *http.Server
	served   chan struct{}
	regAddr  string
	dataDir  string
	closed   bool
}

// PortInUseError reports that a port the stack was told to use is taken.
type PortInUseError struct {
	Service string // "kafka" or "registry"
	Port    int
	Err     error
}

func (e *PortInUseError) Error() string {
	return fmt.Sprintf("%s port %d on 127.0.0.1 is already in use (stop whatever holds it or choose another port): %v",
		e.Service, e.Port, e.Err)
}

func (e *PortInUseError) Unwrap() error { return e.Err }

// Start starts the broker and the registry.
func Start(cfg Config) (*Stack, error) {
	if cfg.KafkaPort < 0 || cfg.KafkaPort > 65535 {
		return nil, fmt.Errorf("devstack: kafka port %d is out of range 0-65535", cfg.KafkaPort)
	}
	if cfg.KafkaAdvertisedPort < 0 || cfg.KafkaAdvertisedPort > 65535 {
		return nil, fmt.Errorf("devstack: kafka advertised port %d is out of range 0-65535", cfg.KafkaAdvertisedPort)
	}
	if cfg.RegistryPort < 0 || cfg.RegistryPort > 65535 {
		return nil, fmt.Errorf("devstack: registry port %d is out of range 0-65535", cfg.RegistryPort)
	}

	// Bind the registry first: it is cheap to undo, the broker is not.
	regAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(cfg.RegistryPort))
	ln, err := net.Listen("tcp", regAddr)
	if err != nil {
		return nil, listenError("registry", cfg.RegistryPort, err)
	}

	var regOpts []registry.Option
	kOpts := []kfake.Opt{
		kfake.NumBrokers(1),
		kfake.DefaultNumPartitions(1),
		// Sessions as short as tests and the dev loop want, as long as
		// production clients use.
		kfake.GroupMinSessionTimeout(100 * time.Millisecond),
		// Compacted topics (the sagas' state topics) are compacted far more
		// often than kfake's hourly default, so that what a restore reads
		// follows the live keys, as on a real cluster.
		kfake.BrokerConfigs(map[string]string{"log.cleaner.backoff.ms": strconv.FormatInt(cmp.Or(cfg.CompactionInterval, DefaultCompactionInterval).Milliseconds(), 10)}),
	}
	if cfg.DataDir != "" {
		// A broker killed with transactions open left them without abort
		// markers; write them before any client can reach the data.
		if _, err := sealIfCrashed(cfg.DataDir, kOpts); err != nil {
			ln.Close()
			return nil, err
		}
		kOpts = append(kOpts, kfake.DataDir(filepath.Join(cfg.DataDir, "kafka")))
		regOpts = append(regOpts, registry.WithDataDir(filepath.Join(cfg.DataDir, "registry")))
	}
	if cfg.KafkaPort != 0 {
		kOpts = append(kOpts, kfake.Ports(cfg.KafkaPort))
	}
	if cfg.KafkaAdvertisedPort != 0 {
		advertised := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: cfg.KafkaAdvertisedPort}
		kOpts = append(kOpts, kfake.ListenFn(func(network, address string) (net.Listener, error) {
			l, err := net.Listen(network, address)
			return advertisedListener{l, advertised}, err
		}))
	}
	kOpts = append(kOpts, cfg.KafkaOptions...)

	reg, err := registry.New(regOpts...)
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("devstack: %w", err)
	}
	cluster, err := kfake.NewCluster(kOpts...)
	if err != nil {
		ln.Close()
		reg.Close()
		return nil, listenError("kafka", cfg.KafkaPort, err)
	}

	s := &Stack{
		kafka:    cluster,
		registry: reg,
		server:   &http.Server{Handler: reg, ReadHeaderTimeout: 10 * time.Second},
		served:   make(chan struct{}),
		regAddr:  ln.Addr().String(),
		dataDir:  cfg.DataDir,
	}
	go func() {
		defer close(s.served)
		_ = s.server.Serve(ln) // returns http.ErrServerClosed on Close
	}()
	return s, nil
}

func listenError(service string, port int, err error) error {
	if errors.Is(err, syscall.EADDRINUSE) {
		return &PortInUseError{Service: service, Port: port, Err: err}
	}
	return fmt.Errorf("devstack: start %s: %w", service, err)
}

// advertisedListener is a listener that names another address as its own:
// the broker advertises what Addr returns.
type advertisedListener struct {
	net.Listener
	addr net.Addr
}

func (l advertisedListener) Addr() net.Addr { return l.addr }

// KafkaAddrs returns the broker addresses ("127.0.0.1:port") to bootstrap
// from: the advertised ones when Config.KafkaAdvertisedPort is set.
func (s *Stack) KafkaAddrs() []string { return s.kafka.ListenAddrs() }

// RegistryURL returns the registry's base URL.
func (s *Stack) RegistryURL() string { return "http://" + s.regAddr }

// Kafka returns the in-process cluster, for tests that inject faults.
func (s *Stack) Kafka() *kfake.Cluster { return s.kafka }

// Close stops the registry and the broker, flushing their data when they keep
// any. It is safe to call more than once.
func (s *Stack) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := s.server.Shutdown(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		err = s.server.Close()
	}
	<-s.served
	err = errors.Join(err, s.registry.Close())
	s.kafka.Close()
	if s.dataDir != "" && !s.closed {
		// The next Start need not look for transactions left open.
		err = errors.Join(err, markClean(s.dataDir))
	}
	s.closed = true
	return err
}
