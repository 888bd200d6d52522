package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/internal/jaeger"
	"github.com/sagapipe/sagapipe/internal/telemetry"
	"github.com/sagapipe/sagapipe/saga"
)

func runSaga(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "trace":
			return sagaTrace(ctx, args[1:], stdout, stderr)
		case "show":
			return sagaShow(ctx, args[1:], stdout, stderr)
		case "list":
			return sagaList(ctx, args[1:], stdout, stderr)
		case "cancel":
			return sagaCancel(ctx, args[1:], stdout, stderr)
		case "resume":
			return sagaResume(ctx, args[1:], stdout, stderr)
		}
	}
	fmt.Fprintln(stderr, `usage:
  orchestrator saga show  [flags] <saga> <id>   its state and journal
  orchestrator saga list  [flags] <saga>        every saga in the state topic (live, or closed within the retention) with its state (--state to filter)
  orchestrator saga trace [flags] <saga> <id>   its journal with trace/span IDs, and its spans from Jaeger (--jaeger)
  orchestrator saga cancel [flags] <saga> <id>  cancel it: a saga waiting on a step is compensated, that step first
  orchestrator saga resume [flags] <saga> <id>  resume a CompensationFailed saga: the compensation it gave up is sent again`)
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		return 0
	}
	return 2
}

// sagaShow prints a saga's state and journal.
func sagaShow(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("saga show", flag.ContinueOnError)
	var jf journalFlags
	jf.register(fs)
	scan := fs.Bool("scan-journal", false, "read the whole journal (for a saga closed over its retention ago, whose snapshot is gone)")
	pos, code := parseInterspersed(fs, args, 2, stderr)
	if code >= 0 {
		return code
	}
	brokers, serde, done, err := jf.open()
	if err != nil {
		fmt.Fprintf(stderr, "orchestrator saga show: %v\n", err)
		return 1
	}
	defer done()
	history := saga.History
	if *scan {
		history = saga.HistoryScan
	}
	entries, err := history(ctx, brokers, serde, pos[0], pos[1])
	if err != nil {
		fmt.Fprintf(stderr, "orchestrator saga show: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "state: %s\n", lastState(entries))
	writeTimeline(stdout, pos[0], pos[1], entries)
	return 0
}

func lastState(entries []saga.JournalEntry) string {
	state := string(saga.StateNew)
	for _, e := range entries {
		if e.Outcome == saga.OutcomeApplied {
			state = e.ToState
		}
	}
	return state
}

// sagaList prints every saga of the state topic with its state.
func sagaList(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("saga list", flag.ContinueOnError)
	var jf journalFlags
	jf.register(fs)
	only := fs.String("state", "", "only sagas in this state (e.g. CompensationFailed, payment.Pending)")
	pos, code := parseInterspersed(fs, args, 1, stderr)
	if code >= 0 {
		return code
	}
	brokers, serde, done, err := jf.open()
	if err != nil {
		fmt.Fprintf(stderr, "orchestrator saga list: %v\n", err)
		return 1
	}
	defer done()
	sagas, err := saga.States(ctx, brokers, serde, pos[0])
	if err != nil {
		fmt.Fprintf(stderr, "orchestrator saga list: %v\n", err)
		return 1
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATE\tSINCE")
	n := 0
	for _, s := range sagas {
		if *only != "" && s.State != *only {
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", s.ID, s.State, s.Since.UTC().Format(time.RFC3339))
		n++
	}
	tw.Flush()
	fmt.Fprintf(stdout, "%d saga(s)\n", n)
	return 0
}

// sagaTrace prints a saga's timeline from its journal, with the trace and
// span IDs of the span that applied each entry, and, with --jaeger, the
// saga's spans as Jaeger holds them, as a tree.
func sagaTrace(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("saga trace", flag.ContinueOnError)
	var jf journalFlags
	jf.register(fs)
	jaegerURL := fs.String("jaeger", "", "Jaeger query URL (e.g. http://127.0.0.1:16686): also print the saga's spans from Jaeger")
	htmlOut := fs.String("html", "", "with --jaeger: also write the saga's trace to this file as a page laid out like Jaeger's trace view")
	pos, code := parseInterspersed(fs, args, 2, stderr)
	if code >= 0 {
		return code
	}
	name, id := pos[0], pos[1]
	brokers, serde, done, err := jf.open()
	if err != nil {
		fmt.Fprintf(stderr, "orchestrator saga trace: %v\n", err)
		return 1
	}
	defer done()
	entries, err := saga.History(ctx, brokers, serde, name, id)
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
		fmt.Fprintf(stdout, "\nspans of trace %s in Jaeger (%d), in its UI at %s/trace/%s:\n", traceID, len(t.Spans), strings.TrimSuffix(*jaegerURL, "/"), traceID)
		t.WriteTree(stdout)
		if *htmlOut != "" {
			if err := writeTraceHTML(*htmlOut, t, name+" "+id); err != nil {
				fmt.Fprintf(stderr, "orchestrator saga trace: --html: %v\n", err)
				return 1
			}
			fmt.Fprintf(stdout, "the trace's page: %s\n", *htmlOut)
		}
	}
	return 0
}

// writeTraceHTML writes t's page (jaeger.Trace.WriteHTML) to path.
func writeTraceHTML(path string, t jaeger.Trace, title string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := t.WriteHTML(f, title); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
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

// sagaCancel produces a cancel for a saga to its inbox.
func sagaCancel(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return sagaOperatorEvent(ctx, "cancel", saga.CancelRecord, args, stdout, stderr)
}

// sagaResume produces a resume for a CompensationFailed saga to its inbox.
func sagaResume(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return sagaOperatorEvent(ctx, "resume", saga.ResumeRecord, args, stdout, stderr)
}

// sagaOperatorEvent produces an operator's event (what: cancel or resume)
// for a saga to its inbox; --by names who asked (default: the user).
func sagaOperatorEvent(ctx context.Context, what string, record func(name, id, source string) *kgo.Record, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("saga "+what, flag.ContinueOnError)
	var cf clusterFlags
	cf.register(fs)
	by := fs.String("by", os.Getenv("USER"), "who asks: journaled with the event as its ce_source sagapipe/cli/<by>")
	pos, code := parseInterspersed(fs, args, 2, stderr)
	if code >= 0 {
		return code
	}
	cl, err := kgo.NewClient(cf.opts...)
	if err != nil {
		fmt.Fprintf(stderr, "orchestrator saga %s: %v\n", what, err)
		return 1
	}
	defer cl.Close()
	source := "sagapipe/cli"
	if *by != "" {
		source += "/" + url.PathEscape(*by)
	}
	rec := record(pos[0], pos[1], source)
	if err := cl.ProduceSync(ctx, rec).FirstErr(); err != nil {
		fmt.Fprintf(stderr, "orchestrator saga %s: producing to %s: %v\n", what, rec.Topic, err)
		return 1
	}
	fmt.Fprintf(stdout, "%s of %s %q (by %s) sent to %s/%d; 'orchestrator saga show %s %s' shows what it did\n",
		what, pos[0], pos[1], source, rec.Topic, rec.Partition, pos[0], pos[1])
	return 0
}
