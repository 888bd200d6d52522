package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/sagapipe/sagapipe/devstack"
	"github.com/sagapipe/sagapipe/examples/orders"
	"github.com/sagapipe/sagapipe/internal/jaeger"
)

// TestTracesMetricsAndLogsEndToEnd runs the orders demo against a live
// Jaeger (built once from the module proxy and cached; `make test` builds it
// before the tests) and checks what an operator would look at: one trace per
// saga with an unbroken parent chain through every service, compensation
// and dead-letter spans, /metrics that match the run, and logs that carry
// the trace.
func TestTracesMetricsAndLogsEndToEnd(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	bin, err := jaeger.EnsureBinary(ctx, testWriter{t})
	if err != nil {
		t.Fatal(err)
	}
	jaegerLog := &syncBuffer{}
	jp, err := jaeger.Start(ctx, bin, jaegerLog)
	if err != nil {
		t.Fatalf("%v\n%s", err, jaegerLog.String())
	}
	defer jp.Stop()
	stack, err := devstack.Start(devstack.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer stack.Close()

	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://"+jp.OTLPHTTP)
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
	logs := &syncBuffer{}
	tel, err := setupDemoTelemetry(ctx, logs, slog.LevelDebug)
	if err != nil {
		t.Fatal(err)
	}
	if got := tel.orchestrator().Tracing(); !strings.Contains(got, jp.OTLPHTTP) {
		t.Fatalf("tracing %q, want export to %s", got, jp.OTLPHTTP)
	}
	// Fault rates picked by order ID, deterministically: these give 20
	// orders with declines (compensated sagas) and poisoned replies.
	sum, err := orders.RunDemo(ctx, orders.DemoConfig{
		Brokers: stack.KafkaAddrs(), RegistryURL: stack.RegistryURL(),
		Orders: 20, Concurrency: 20, Partitions: 3, StepTimeout: time.Second,
		Faults:    orders.Faults{DeclineRate: 0.25, PoisonRate: 0.15},
		Telemetry: tel.forService,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(sum.Violations) > 0 || sum.Completed+sum.Compensated != 20 {
		t.Fatalf("demo: %+v", sum)
	}
	if sum.Compensated == 0 || sum.DeadLettered == 0 {
		t.Fatalf("the run must hold a compensated saga and a poison event: %+v", sum)
	}

	checkMetrics(t, tel.orchestrator().MetricsHandler(), sum)
	if err := tel.shutdown(ctx); err != nil {
		t.Fatal(err)
	}

	client := jaeger.Client{URL: jp.QueryURL}
	traces := waitForTraces(ctx, t, client, 20)
	sagaTrace := checkTraces(t, traces, sum)
	checkLogs(t, logs.String(), sagaTrace)

	// The CLI shows the same: a compensated saga's timeline and its tree.
	var compensated string
	for id, tr := range sagaTrace {
		if hasSpan(tr, func(s jaeger.Span) bool { v, _ := s.Tag("saga.compensation"); return v == "true" }) {
			compensated = id
			break
		}
	}
	var stdout, stderr syncBuffer
	page := filepath.Join(t.TempDir(), "trace.html")
	code := run(ctx, []string{"saga", "trace", "orders", compensated, "--brokers", strings.Join(stack.KafkaAddrs(), ","),
		"--registry", stack.RegistryURL(), "--jaeger", jp.QueryURL, "--html", page}, &stdout, &stderr)
	out := stdout.String()
	if code != 0 || !strings.Contains(out, sagaTrace[compensated].TraceID) || !strings.Contains(out, "compensation") ||
		!strings.Contains(out, "Compensated") || !strings.Contains(out, "[inventory-service]") {
		t.Fatalf("saga trace %s: exit %d\n%s\nstderr: %s", compensated, code, out, stderr.String())
	}
	if link := strings.TrimSuffix(jp.QueryURL, "/") + "/trace/" + sagaTrace[compensated].TraceID; !strings.Contains(out, link) {
		t.Errorf("saga trace prints no link to the trace's page in Jaeger's UI (%s):\n%s", link, out)
	}
	if html, err := os.ReadFile(page); err != nil {
		t.Error(err)
	} else {
		rows := strings.Count(string(html), "<tr><td")
		if rows != len(sagaTrace[compensated].Spans) || !strings.Contains(string(html), "orders "+compensated) ||
			!strings.Contains(string(html), "orders: compensate inventory") || strings.Contains(string(html), "ZgotmplZ") {
			t.Errorf("saga trace --html: %d rows for %d spans, or no root or compensation, or a value the template refused:\n%s",
				rows, len(sagaTrace[compensated].Spans), html)
		}
	}
	if dir := os.Getenv("SAGAPIPE_TRACE_PAGE_DIR"); dir != "" { // for the docs' screenshot
		if html, err := os.ReadFile(page); err == nil {
			_ = os.WriteFile(filepath.Join(dir, "trace.html"), html, 0o644)
		}
	}

	cluster := []string{"--brokers", strings.Join(stack.KafkaAddrs(), ","), "--registry", stack.RegistryURL()}
	var listOut, showOut syncBuffer
	if code := run(ctx, append([]string{"saga", "list", "orders", "--state", "Compensated"}, cluster...), &listOut, &stderr); code != 0 ||
		!strings.Contains(listOut.String(), fmt.Sprintf("%d saga(s)", sum.Compensated)) || !strings.Contains(listOut.String(), compensated) {
		t.Fatalf("saga list: exit %d\n%s\n%s", code, listOut.String(), stderr.String())
	}
	if code := run(ctx, append([]string{"saga", "show", "orders", compensated}, cluster...), &showOut, &stderr); code != 0 ||
		!strings.HasPrefix(showOut.String(), "state: Compensated\n") {
		t.Fatalf("saga show: exit %d\n%s\n%s", code, showOut.String(), stderr.String())
	}
	if code := run(ctx, append([]string{"saga", "show", "orders", "no-such-order"}, cluster...), &showOut, &stderr); code != 1 ||
		!strings.Contains(stderr.String(), "no journal entries") {
		t.Fatalf("saga show of an unknown saga: exit %d, stderr %s", code, stderr.String())
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func checkMetrics(t *testing.T, h http.Handler, sum orders.Summary) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusOK || !strings.HasPrefix(rec.Header().Get("Content-Type"), "text/plain") {
		t.Fatalf("/metrics: %d %q", rec.Code, rec.Header().Get("Content-Type"))
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(rec.Body.String()))
	if err != nil {
		t.Fatalf("/metrics is not valid Prometheus text: %v\n%s", err, rec.Body.String())
	}
	value := func(name string, labels map[string]string) float64 {
		f := families[name]
		if f == nil {
			t.Fatalf("/metrics has no %s; it has %v", name, slices.Sorted(func(yield func(string) bool) {
				for k := range families {
					if !yield(k) {
						return
					}
				}
			}))
		}
		total := 0.0
	metrics:
		for _, m := range f.Metric {
			for k, v := range labels {
				if !slices.ContainsFunc(m.Label, func(l *dto.LabelPair) bool { return l.GetName() == k && l.GetValue() == v }) {
					continue metrics
				}
			}
			switch {
			case m.Counter != nil:
				total += m.Counter.GetValue()
			case m.Gauge != nil:
				total += m.Gauge.GetValue()
			case m.Histogram != nil:
				total += float64(m.Histogram.GetSampleCount())
			}
		}
		return total
	}
	orders := map[string]string{"saga_name": "orders"}
	want := []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"sagapipe_saga_started_total", orders, 20},
		{"sagapipe_saga_finished_total", map[string]string{"saga_name": "orders", "saga_outcome": "Completed"}, float64(sum.Completed)},
		{"sagapipe_saga_finished_total", map[string]string{"saga_name": "orders", "saga_outcome": "Compensated"}, float64(sum.Compensated)},
		{"sagapipe_saga_finished_total", map[string]string{"saga_name": "orders", "saga_outcome": "CompensationFailed"}, float64(sum.CompensationFailed)},
		{"sagapipe_saga_duration_seconds", orders, 20},
		{"sagapipe_dlq_records_total", map[string]string{"dlq_source_topic": "orders.inbox", "error_class": "poison"}, float64(sum.DeadLettered)},
		// Each poisoned reply is resent once its step times out.
		{"sagapipe_saga_step_retries_total", orders, float64(sum.DeadLettered)},
	}
	for _, w := range want {
		if got := value(w.name, w.labels); got != w.want {
			t.Errorf("%s%v = %v, want %v (summary %+v)", w.name, w.labels, got, w.want, sum)
		}
	}
	if got := value("sagapipe_saga_step_duration_seconds", orders); got < 20 {
		t.Errorf("sagapipe_saga_step_duration_seconds has %v samples, want one per step of 20 sagas", got)
	}
	if got := value("sagapipe_transaction_duration_seconds", map[string]string{"outcome": "commit"}); got < 1 {
		t.Errorf("no committed transaction measured")
	}
}

// waitForTraces polls Jaeger until it holds n orchestrator traces and their
// span count has stopped growing (spans arrive in batches).
func waitForTraces(ctx context.Context, t *testing.T, c jaeger.Client, n int) []jaeger.Trace {
	t.Helper()
	last, stable := -1, 0
	deadline := time.Now().Add(time.Minute)
	for {
		traces, err := c.Traces(ctx, orders.ServiceOrchestrator, 1000)
		if err != nil {
			t.Fatal(err)
		}
		spans := 0
		for _, tr := range traces {
			spans += len(tr.Spans)
		}
		if len(traces) >= n && spans == last {
			if stable++; stable >= 3 {
				return traces
			}
		} else {
			stable = 0
		}
		last = spans
		if time.Now().After(deadline) {
			t.Fatalf("Jaeger holds %d traces with %d spans, want %d traces", len(traces), spans, n)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

func hasSpan(tr jaeger.Trace, pred func(jaeger.Span) bool) bool {
	return slices.ContainsFunc(tr.Spans, pred)
}

// checkTraces asserts one trace per saga with the saga's shape
// (checkSagaShape), every service in it, compensation spans in compensated
// sagas and a failed dead-letter span per poison event. It returns each
// saga's trace.
func checkTraces(t *testing.T, traces []jaeger.Trace, sum orders.Summary) map[string]jaeger.Trace {
	t.Helper()
	bySaga := map[string]jaeger.Trace{}
	deadLetterSpans := 0
	for _, tr := range traces {
		var ids []string
		services := map[string]bool{}
		for _, s := range tr.Spans {
			services[tr.Service(s)] = true
			if id, ok := s.Tag("saga.id"); ok && !slices.Contains(ids, id) {
				ids = append(ids, id)
			}
			if step, ok := s.Tag("saga.step"); ok && step == "" {
				t.Errorf("trace %s: span %q has an empty saga.step", tr.TraceID, s.OperationName)
			}
			if strings.HasSuffix(s.OperationName, " publish") && tr.Service(s) == orders.ServiceOrchestrator {
				if _, ok := s.Tag("saga.id"); !ok {
					t.Errorf("trace %s: the orchestrator's %q span has no saga.id", tr.TraceID, s.OperationName)
				}
			}
		}
		// Every process names its host and instance: Jaeger adjusts
		// clock skew per host, and warns on every span without one.
		for pid, p := range tr.Processes {
			for _, key := range []string{"host.name", "service.instance.id", "service.version"} {
				if !slices.ContainsFunc(p.Tags, func(tag jaeger.Tag) bool { return tag.Key == key }) {
					t.Errorf("trace %s: process %s (%s) has no %s", tr.TraceID, pid, p.ServiceName, key)
				}
			}
		}
		if len(ids) != 1 {
			t.Errorf("trace %s holds sagas %v, want exactly one", tr.TraceID, ids)
			continue
		}
		id := ids[0]
		if prev, dup := bySaga[id]; dup {
			t.Errorf("saga %s is in two traces: %s and %s", id, prev.TraceID, tr.TraceID)
		}
		bySaga[id] = tr

		checkSagaShape(t, id, tr)
		root := tr.Roots()[0]
		state, _ := root.Tag("saga.outcome")
		want := []string{orders.ServiceStorefront, orders.ServiceOrchestrator, orders.ServiceInventory, orders.ServicePayment}
		if state == "Completed" {
			want = append(want, orders.ServiceShipping)
		}
		for _, svc := range want {
			if !services[svc] {
				t.Errorf("saga %s (%s): no %s span in its trace", id, state, svc)
			}
		}
		compensating := hasSpan(tr, func(s jaeger.Span) bool { v, _ := s.Tag("saga.compensation"); return v == "true" })
		if (state == "Compensated") != compensating {
			t.Errorf("saga %s ended %s; compensation spans: %v", id, state, compensating)
		}
		for _, s := range tr.Spans {
			if strings.HasSuffix(s.OperationName, " dead-letter") {
				deadLetterSpans++
				hasException := slices.ContainsFunc(s.Logs, func(l jaeger.Log) bool {
					return slices.ContainsFunc(l.Fields, func(f jaeger.Tag) bool { return f.Key == "event" && f.Value == "exception" })
				})
				if !s.Failed() || !hasException {
					t.Errorf("saga %s: dead-letter span %s has no error status or no exception event: %+v", id, s.SpanID, s)
				}
			}
		}
	}
	if len(bySaga) != sum.Orders {
		t.Errorf("%d sagas have a trace, want %d", len(bySaga), sum.Orders)
	}
	if deadLetterSpans != sum.DeadLettered {
		t.Errorf("%d dead-letter spans, want one per dead-lettered record (%d)", deadLetterSpans, sum.DeadLettered)
	}
	return bySaga
}

// checkSagaShape asserts that a saga's trace reads as the saga: one root,
// the saga's span ("orders <id>", its outcome as status); under it a span
// per step attempt and compensation, each the parent of its command's
// publish and its reply's processing; no span deeper than 5 levels; every
// span says which saga and in what state; Jaeger warns of nothing (a clock
// skew adjustment, a missing parent).
func checkSagaShape(t *testing.T, id string, tr jaeger.Trace) {
	t.Helper()
	var b strings.Builder
	tr.WriteTree(&b)
	roots := tr.Roots()
	if len(roots) != 1 || roots[0].OperationName != "orders "+id || tr.Service(roots[0]) != orders.ServiceOrchestrator {
		t.Errorf("saga %s: want one root, the orchestrator's span %q; got %d roots:\n%s", id, "orders "+id, len(roots), b.String())
		return
	}
	root := roots[0]
	outcome, _ := root.Tag("saga.outcome")
	if root.Failed() != (outcome != "Completed") {
		t.Errorf("saga %s: the root's status (failed %v) does not say its outcome %q", id, root.Failed(), outcome)
	}
	spans := map[string]jaeger.Span{}
	for _, s := range tr.Spans {
		spans[s.SpanID] = s
	}
	stepSpans := 0
	for _, s := range tr.Spans {
		depth := 1
		for p := s; p.Parent() != ""; p = spans[p.Parent()] {
			depth++
		}
		if depth > 5 {
			t.Errorf("saga %s: %s [%s] is %d levels deep, want at most 5:\n%s", id, s.OperationName, tr.Service(s), depth, b.String())
		}
		for _, w := range s.Warnings {
			t.Errorf("saga %s: Jaeger warns of %s [%s]: %s", id, s.OperationName, tr.Service(s), w)
		}
		for _, k := range []string{"saga.name", "saga.id", "saga.state", "saga.compensation"} {
			if _, ok := s.Tag(k); !ok {
				t.Errorf("saga %s: %s [%s] has no %s", id, s.OperationName, tr.Service(s), k)
			}
		}
		parent := spans[s.Parent()]
		step, _ := s.Tag("saga.step")
		if strings.HasPrefix(s.OperationName, "orders: ") {
			stepSpans++
			if parent.SpanID != root.SpanID {
				t.Errorf("saga %s: step span %q is under %q, not the saga's span", id, s.OperationName, parent.OperationName)
			}
		}
		if tr.Service(s) != orders.ServiceOrchestrator || step == "" || step == "outcome" {
			continue
		}
		// A command's publish is under its attempt; a reply's processing
		// too, or under the saga's span when it came after its attempt
		// ended (a late reply).
		underStep := parent.OperationName == "orders: "+step || parent.OperationName == "orders: compensate "+step
		switch {
		case strings.HasSuffix(s.OperationName, ".commands publish") && !underStep,
			s.OperationName == "orders.inbox process" && !underStep && parent.SpanID != root.SpanID:
			t.Errorf("saga %s: %s (step %s) is under %q, want its step's span:\n%s", id, s.OperationName, step, parent.OperationName, b.String())
		}
	}
	if stepSpans < 2 {
		t.Errorf("saga %s: %d step spans, want one per step attempt:\n%s", id, stepSpans, b.String())
	}
}

// checkLogs asserts that the lines about a saga carry its IDs and its trace.
func checkLogs(t *testing.T, logs string, bySaga map[string]jaeger.Trace) {
	t.Helper()
	lines := 0
	sc := bufio.NewScanner(strings.NewReader(logs))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var line map[string]any
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Fatalf("log line is not JSON: %q", sc.Text())
		}
		id, ok := line["saga_id"].(string)
		if !ok {
			continue
		}
		lines++
		for _, k := range []string{"trace_id", "span_id", "correlation_id", "saga_name"} {
			if s, _ := line[k].(string); s == "" {
				t.Errorf("log line about saga %s has no %s: %s", id, k, sc.Text())
			}
		}
		if tr, ok := bySaga[id]; ok && line["trace_id"] != tr.TraceID {
			t.Errorf("log line about saga %s has trace_id %v, want %s", id, line["trace_id"], tr.TraceID)
		}
	}
	if lines < 20 {
		t.Errorf("only %d log lines about sagas at debug level; logs:\n%s", lines, logs)
	}
}
