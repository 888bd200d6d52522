// Command orchestrator is sagapipe's deployable service and its operator CLI.
//
//	orchestrator run     the service: the orders and trips sagas against a real cluster, HTTP API, probes, metrics
//	orchestrator demo    the orders saga end to end on the embedded stack (make run)
//	orchestrator dev     run the embedded Kafka and Schema Registry
//	orchestrator smoke   start the embedded stack, round-trip Avro events through it, stop
//	orchestrator dlq     list, show and replay dead-letter records
//	orchestrator topics  create the saga's and the participants' topics
//	orchestrator bench   throughput, latency, ceiling ratio and memory, written as JSON (make bench)
//	orchestrator saga    trace a saga: its journal timeline with trace/span IDs, its spans from Jaeger
//
// Run "orchestrator <command> -h" for a command's flags.
package main

import (
	"context"
	"fmt"
	"io"
	"maps"
	"os"
	"os/signal"
	"slices"
	"syscall"
)

// command is one subcommand. run returns the process exit code.
type command struct {
	name, summary string
	run           func(ctx context.Context, args []string, stdout, stderr io.Writer) int
}

var commands = []command{
	{"run", "the service: the orders and trips sagas, HTTP API, probes, metrics (run -h for its configuration)", runService},
	{"demo", "the orders saga end to end on the embedded stack, with invariant checks", runDemo},
	{"dev", "run the embedded Kafka and Schema Registry until interrupted", runDev},
	{"smoke", "start the embedded stack, round-trip Avro events through Kafka, stop", runSmoke},
	{"dlq", "list, show and replay dead-letter records (dlq -h)", runDLQ},
	{"topics", "topics ensure: create the saga's and the participants' topics", runTopics},
	{"bench", "the benchmark harness: saga throughput and latency, the kgo ceiling, in-flight memory (JSON out)", runBench},
	{"participants", "the orders and trips examples' participants in their own process (for run)", runParticipants},
	{"saga", "saga trace: a saga's timeline from its journal, and its spans from Jaeger", runSaga},
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	for _, c := range commands {
		if c.name == args[0] {
			return c.run(ctx, args[1:], stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "orchestrator: unknown command %q\n\n", args[0])
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: orchestrator <command> [flags]\n\ncommands:")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nRun 'orchestrator <command> -h' for a command's flags.")
}

// atLeastOne appends a problem for every named flag whose value is below 1.
func atLeastOne(problems []error, flags map[string]int) []error {
	for _, name := range slices.Sorted(maps.Keys(flags)) {
		if v := flags[name]; v < 1 {
			problems = append(problems, fmt.Errorf("%s %d: must be at least 1", name, v))
		}
	}
	return problems
}
