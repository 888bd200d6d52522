package main

// The flags the commands share: how a command parses its flags, reaches a
// cluster (clusterFlags), starts an embedded stack (stackFlags) and reads
// a saga's journal (journalFlags).

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/devstack"
	"github.com/sagapipe/sagapipe/schema"
	"github.com/sagapipe/sagapipe/service"
)

// parseFlags parses args into fs, printing fs's errors to stderr. It returns
// the exit code to end with, or -1 to go on.
func parseFlags(fs *flag.FlagSet, args []string, stderr io.Writer) int {
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "orchestrator %s: unexpected arguments %q\n", fs.Name(), fs.Args())
		return 2
	}
	return resolveCluster(fs, stderr)
}

// stackFlags are the flags of every command that starts the embedded stack.
type stackFlags struct {
	kafkaPort, registryPort int
	kafkaAdvertisedPort     int
	dataDir                 string
	compactionInterval      time.Duration
	kafkaLogLevel           string
	stderr                  io.Writer
}

func (f *stackFlags) register(fs *flag.FlagSet, kafkaPort, registryPort int) {
	fs.IntVar(&f.kafkaPort, "kafka-port", kafkaPort, "TCP port of the embedded Kafka on 127.0.0.1 (0 picks a free one)")
	fs.IntVar(&f.kafkaAdvertisedPort, "kafka-advertised-port", 0, "port the embedded Kafka tells clients to use, for a proxy or port-forward in front of it (default its own)")
	fs.IntVar(&f.registryPort, "registry-port", registryPort, "TCP port of the embedded Schema Registry on 127.0.0.1 (0 picks a free one)")
	fs.StringVar(&f.dataDir, "data-dir", "", "directory that keeps Kafka's and the registry's data across restarts (empty: in memory)")
	fs.DurationVar(&f.compactionInterval, "compaction-interval", devstack.DefaultCompactionInterval, "how often the embedded Kafka compacts the state topics")
	fs.StringVar(&f.kafkaLogLevel, "kafka-log-level", "none", "the embedded Kafka's own log on stderr: none, error, warn, info or debug")
	f.stderr = fs.Output()
}

// parsed checks the flags' values once fs has parsed them: 2 (usage) when
// one is refused, -1 when all are fine.
func (f *stackFlags) parsed(name string, stderr io.Writer) int {
	if f.compactionInterval < 0 {
		fmt.Fprintf(stderr, "orchestrator %s: --compaction-interval %v: want a positive duration\n", name, f.compactionInterval)
		return 2
	}
	if _, ok := kafkaLogLevels[f.kafkaLogLevel]; !ok {
		fmt.Fprintf(stderr, "orchestrator %s: --kafka-log-level %q: want none, error, warn, info or debug\n", name, f.kafkaLogLevel)
		return 2
	}
	f.stderr = stderr
	return -1
}

// start starts the stack; a busy port's error names the flag that moves it.
func (f *stackFlags) start() (*devstack.Stack, error) {
	cfg := devstack.Config{KafkaPort: f.kafkaPort, KafkaAdvertisedPort: f.kafkaAdvertisedPort, RegistryPort: f.registryPort, DataDir: f.dataDir,
		CompactionInterval: f.compactionInterval}
	if level := kafkaLogLevels[f.kafkaLogLevel]; level != kfake.LogLevelNone && f.stderr != nil {
		cfg.KafkaOptions = append(cfg.KafkaOptions, kfake.WithLogger(kfake.BasicLogger(f.stderr, level)))
	}
	s, err := devstack.Start(cfg)
	var busy *devstack.PortInUseError
	if errors.As(err, &busy) {
		return nil, fmt.Errorf("%w; choose another with --%s-port (0 picks a free one)", err, busy.Service)
	}
	return s, err
}

// startAnnounced starts the stack for command name and prints where it
// listens; on failure it prints why and returns nil.
func (f *stackFlags) startAnnounced(name string, stdout, stderr io.Writer) *devstack.Stack {
	s, err := f.start()
	if err != nil {
		fmt.Fprintf(stderr, "orchestrator %s: %v\n", name, err)
		return nil
	}
	fmt.Fprintf(stdout, "embedded kafka %s, registry %s\n", strings.Join(s.KafkaAddrs(), ","), s.RegistryURL())
	return s
}

// clusterFlags reach a running cluster and registry with the service's
// connection settings (--config, SAGAPIPE_*, --brokers, --registry-url,
// registry auth, TLS, SASL), defaulting to the dev stack's addresses. They
// are resolved when the flags are parsed (parseFlags, parseInterspersed).
type clusterFlags struct {
	resolve  func() (service.Config, error)
	registry string // --registry, the older name of --registry-url
	cfg      service.Config
	opts     []kgo.Opt // seed brokers, TLS, SASL
}

// clusterOf holds each flag set's clusterFlags, to be resolved once parsed.
var clusterOf sync.Map // *flag.FlagSet → *clusterFlags

func (f *clusterFlags) register(fs *flag.FlagSet) {
	f.resolve = service.ClusterFlags(fs, os.LookupEnv, service.Config{
		Brokers: []string{"127.0.0.1:9092"}, Registry: service.RegistryConfig{URL: "http://127.0.0.1:8081"}})
	fs.StringVar(&f.registry, "registry", "", "Schema Registry URL (the same as --registry-url)")
	clusterOf.Store(fs, f)
}

// resolveCluster resolves fs's clusterFlags, if it has any: -1 means go on.
func resolveCluster(fs *flag.FlagSet, stderr io.Writer) int {
	v, ok := clusterOf.LoadAndDelete(fs)
	if !ok {
		return -1
	}
	f := v.(*clusterFlags)
	cfg, err := f.resolve()
	if err == nil && f.registry != "" {
		cfg.Registry.URL = f.registry
	}
	if err == nil {
		f.opts, err = cfg.ClientOptions()
	}
	if err != nil {
		fmt.Fprintf(stderr, "orchestrator %s: invalid configuration:\n  %s\n", fs.Name(), strings.ReplaceAll(err.Error(), "\n", "\n  "))
		return 2
	}
	f.cfg = cfg
	return -1
}

func (f *clusterFlags) brokerList() []string { return f.cfg.Brokers }

// parseInterspersed parses flags that may come before, between or after the
// positional arguments, and returns the positional ones; -1 means go on.
func parseInterspersed(fs *flag.FlagSet, args []string, wantPositional int, stderr io.Writer) ([]string, int) {
	fs.SetOutput(stderr)
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, 0
			}
			return nil, 2
		}
		if fs.NArg() == 0 {
			break
		}
		positional = append(positional, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if code := resolveCluster(fs, stderr); code >= 0 {
		return nil, code
	}
	if len(positional) != wantPositional {
		fmt.Fprintf(stderr, "orchestrator %s: want %d argument(s), got %d: %q\n", fs.Name(), wantPositional, len(positional), positional)
		fs.Usage()
		return nil, 2
	}
	return positional, -1
}

// journalFlags reach a saga's journal: a cluster, or a demo's data dir.
type journalFlags struct {
	clusterFlags
	dataDir string
}

func (f *journalFlags) register(fs *flag.FlagSet) {
	f.clusterFlags.register(fs)
	fs.StringVar(&f.dataDir, "data-dir", "", "read the journal from an embedded stack over this data directory (as left by 'orchestrator demo --data-dir') instead of --brokers")
}

// open returns the client options and the serde to read journals with,
// and what to close afterwards.
func (f *journalFlags) open() ([]kgo.Opt, *schema.Serde, func(), error) {
	cfg, opts, closeFn := f.cfg, f.opts, func() {}
	if f.dataDir != "" {
		sf := stackFlags{dataDir: f.dataDir}
		stack, err := sf.start()
		if err != nil {
			return nil, nil, nil, err
		}
		cfg = service.Config{Registry: service.RegistryConfig{URL: stack.RegistryURL()}}
		opts, closeFn = []kgo.Opt{kgo.SeedBrokers(stack.KafkaAddrs()...)}, func() { stack.Close() }
	}
	serde, err := cfg.Serde()
	if err != nil {
		closeFn()
		return nil, nil, nil, err
	}
	return opts, serde, closeFn, nil
}
