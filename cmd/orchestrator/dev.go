package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/sagapipe/sagapipe/devstack"
)

// stackFlags are the flags of every command that starts the embedded stack.
type stackFlags struct {
	kafkaPort, registryPort int
	kafkaAdvertisedPort     int
	dataDir                 string
	compactionInterval      time.Duration
	kafkaLogLevel           string
	stderr                  io.Writer
}

// kafkaLogLevels are --kafka-log-level's values.
var kafkaLogLevels = map[string]kfake.LogLevel{"none": kfake.LogLevelNone, "error": kfake.LogLevelError,
	"warn": kfake.LogLevelWarn, "info": kfake.LogLevelInfo, "debug": kfake.LogLevelDebug}

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

func runDev(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("dev", flag.ContinueOnError)
	var sf stackFlags
	sf.register(fs, 9092, 8081)
	if code := parseFlags(fs, args, stderr); code >= 0 {
		return code
	}
	if code := sf.parsed("dev", stderr); code >= 0 {
		return code
	}
	stack, err := sf.start()
	if err != nil {
		fmt.Fprintf(stderr, "orchestrator dev: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "kafka:    %s\nregistry: %s\n", strings.Join(stack.KafkaAddrs(), ","), stack.RegistryURL())
	if sf.dataDir != "" {
		fmt.Fprintf(stdout, "data:     %s\n", sf.dataDir)
	}
	fmt.Fprintln(stdout, "ready; Ctrl-C stops")
	<-ctx.Done()
	if err := stack.Close(); err != nil {
		fmt.Fprintf(stderr, "orchestrator dev: stopping: %v\n", err)
		return 1
	}
	fmt.Fprintln(stdout, "stopped")
	return 0
}
