package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/internal/jaeger"
	"github.com/sagapipe/sagapipe/internal/telemetry"
	"github.com/sagapipe/sagapipe/saga"
	"github.com/sagapipe/sagapipe/schema"
)

func runSaga(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "trace" {
		return sagaTrace(ctx, args[1:], stdout, stderr)
	}
	fmt.Fprintln(stderr, "usage: orchestrator saga trace [flags] <saga> <id>")
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		return 0
	}
	return 2
}

// sagaTrace prints a saga's timeline from its journal, with the trace and
// span IDs of the span that applied each entry, and, with --jaeger, the
// saga's spans as Jaeger holds them, as a tree.
func sagaTrace(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("saga trace", flag.ContinueOnError)
	var cf clusterFlags
	cf.register(fs)
	dataDir := fs.String("data-dir", "", "read the journal from an embedded stack over this data directory (as left by 'orchestrator demo --data-dir') instead of --brokers")
	jaegerURL := fs.String("jaeger", "", "Jaeger query URL (e.g. http://127.0.0.1:16686): also print the saga's spans from Jaeger")
	pos, code := parseInterspersed(fs, args, 2, stderr)
	if code >= 0 {
		return code
	}
	name, id := pos[0], pos[1]
	brokers, registryURL := cf.brokerList(), cf.registry
	if *dataDir != "" {
		sf := stackFlags{dataDir: *dataDir}
		stack, err := sf.start()
		if err != nil {
			fmt.Fprintf(stderr, "orchestrator saga trace: %v\n", err)
			return 1
		}
		defer stack.Close()
		brokers, registryURL = stack.KafkaAddrs(), stack.RegistryURL()
	}
	serde, err := schema.NewSerde(registryURL, schema.WithSubjectNameStrategy(schema.RecordNameStrategy))
	if err != nil {
		fmt.Fprintf(stderr, "orchestrator saga trace: %v\n", err)
		return 2
	}
	entries, err := saga.History(ctx, []kgo.Opt{kgo.SeedBrokers(brokers...)}, serde, name, id)
	if err != nil {
		fmt.Fprintf(stderr, "orchestrator saga trace: %v\n", err)
		return 1
	}
	traces := writeTimeline(stdout, name, id, entries)
	if *jaegerURL == "" {
		return 0
	}
	client := jaeger.Client{URL: *jaegerURL}
	for _, traceID := range traces {
		t, err := client.Trace(ctx, traceID)
		if err != nil {
			fmt.Fprintf(stderr, "orchestrator saga trace: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "\nspans of trace %s in Jaeger (%d):\n", traceID, len(t.Spans))
		t.WriteTree(stdout)
	}
	return 0
}

// writeTimeline prints the entries and returns the trace IDs they name, in
// order of first appearance.
func writeTimeline(w io.Writer, name, id string, entries []saga.JournalEntry) []string {
	var traces []string
	fmt.Fprintf(w, "saga %s %s: %d journal entries\n", name, id, len(entries))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tEVENT\tTRANSITION\tOUTCOME\tTRACE ID\tSPAN ID")
	for _, e := range entries {
		traceID, spanID := "-", "-"
		if sc := telemetry.ParseTraceParent(e.TraceParent); sc.IsValid() {
			traceID, spanID = sc.TraceID().String(), sc.SpanID().String()
			if !slices.Contains(traces, traceID) {
				traces = append(traces, traceID)
			}
		}
		transition := e.FromState + " → " + e.ToState
		if e.Outcome == saga.OutcomeIgnored {
			transition = e.FromState + " (unchanged)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", e.Time.UTC().Format(time.RFC3339Nano), e.EventType, transition, e.Outcome, traceID, spanID)
	}
	tw.Flush()
	return traces
}
