package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/twmb/franz-go/pkg/kfake"
)

// kafkaLogLevels are --kafka-log-level's values.
var kafkaLogLevels = map[string]kfake.LogLevel{"none": kfake.LogLevelNone, "error": kfake.LogLevelError,
	"warn": kfake.LogLevelWarn, "info": kfake.LogLevelInfo, "debug": kfake.LogLevelDebug}

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
