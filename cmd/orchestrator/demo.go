package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"slices"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/examples/orders"
	"github.com/sagapipe/sagapipe/internal/jaeger"
	"github.com/sagapipe/sagapipe/internal/telemetry"
	"github.com/sagapipe/sagapipe/observability"
	"github.com/sagapipe/sagapipe/saga"
	"github.com/sagapipe/sagapipe/schema"
	"github.com/sagapipe/sagapipe/service"
)

func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	var sf stackFlags
	sf.register(fs, 0, 0)
	n := fs.Int("orders", 1000, "orders to place")
	concurrency := fs.Int("concurrency", 200, "sagas in flight at most")
	partitions := fs.Int("partitions", 3, "partitions of every topic")
	stepTimeout := fs.Duration("step-timeout", 2*time.Second, "how long a step waits for its reply before the command is resent")
	decline := fs.Float64("decline-rate", 0.05, "share of payments declined (0..1)")
	shipFail := fs.Float64("shipping-failure-rate", 0.03, "share of shipments that fail (0..1)")
	poison := fs.Float64("poison-rate", 0.01, "share of first replies sent as undecodable bytes (0..1)")
	latency := fs.Duration("latency", 0, "added to every participant's command handling (it may exceed --step-timeout: the step is resent, or given up and compensated)")
	lost := fs.Float64("lost-reply-rate", 0.02, "share of orders whose first command to each participant is applied and its reply lost (0..1)")
	metricsAddr := fs.String("metrics-addr", "", "serve the orchestrator's Prometheus metrics at http://<addr>/metrics while the demo runs (e.g. 127.0.0.1:9464)")
	logLevel := fs.String("log-level", "error", "level of the JSON logs on stderr: debug, info, warn (adds a line per dead letter) or error")
	jaegerURL := fs.String("jaeger", "", "Jaeger query URL (e.g. http://127.0.0.1:16686): at the end, print example sagas' traces from it (export with OTEL_EXPORTER_OTLP_ENDPOINT)")
	ui := fs.String("ui", "", "after the run, serve the orchestrator with its web console at http://<addr>/ui (e.g. 127.0.0.1:8080) on the demo's stack until Ctrl-C")
	if code := parseFlags(fs, args, stderr); code >= 0 {
		return code
	}
	if code := sf.parsed("demo", stderr); code >= 0 {
		return code
	}
	problems := atLeastOne(nil, map[string]int{"--orders": *n, "--concurrency": *concurrency, "--partitions": *partitions})
	if *stepTimeout <= 0 {
		problems = append(problems, fmt.Errorf("--step-timeout %v: must be positive", *stepTimeout))
	}
	for name, r := range map[string]float64{"--decline-rate": *decline, "--shipping-failure-rate": *shipFail, "--poison-rate": *poison} {
		if r < 0 || r > 1 {
			problems = append(problems, fmt.Errorf("%s %v: must be between 0 and 1", name, r))
		}
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		problems = append(problems, fmt.Errorf("--log-level %q: want debug, info, warn or error", *logLevel))
	}
	if len(problems) > 0 {
		fmt.Fprintf(stderr, "orchestrator demo: %v\n", errors.Join(problems...))
		return 2
	}
	tel, err := setupDemoTelemetry(ctx, stderr, level)
	if err != nil {
		fmt.Fprintf(stderr, "orchestrator demo: %v\n", err)
		return 2
	}
	flushed := false
	flush := func() {
		if flushed {
			return
		}
		flushed = true
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if err := tel.shutdown(sctx); err != nil {
			fmt.Fprintf(stderr, "orchestrator demo: flushing telemetry: %v\n", err)
		}
	}
	defer flush()
	if *metricsAddr != "" {
		stopMetrics, err := serveMetrics(*metricsAddr, tel.orchestrator().MetricsHandler())
		if err != nil {
			fmt.Fprintf(stderr, "orchestrator demo: --metrics-addr: %v\n", err)
			return 2
		}
		defer stopMetrics()
		fmt.Fprintf(stdout, "metrics at http://%s/metrics\n", *metricsAddr)
	}

	stack := sf.startAnnounced("demo", stdout, stderr)
	if stack == nil {
		return 1
	}
	defer stack.Close()
	fmt.Fprintf(stdout, "placing %d orders (%d in flight at most; declines %.0f%%, shipping failures %.0f%%, poison replies %.0f%%, lost replies %.0f%%, participant latency %v, step timeout %v)\n",
		*n, *concurrency, *decline*100, *shipFail*100, *poison*100, *lost*100, *latency, *stepTimeout)

	last := time.Time{}
	sum, err := orders.RunDemo(ctx, orders.DemoConfig{
		Telemetry: tel.forService,
		Brokers:   stack.KafkaAddrs(), RegistryURL: stack.RegistryURL(),
		Orders: *n, Concurrency: *concurrency, Partitions: int32(*partitions), StepTimeout: *stepTimeout,
		Faults: orders.Faults{DeclineRate: *decline, ShippingFailureRate: *shipFail, PoisonRate: *poison, Latency: *latency, LostReplyRate: *lost},
		Progress: func(done, total int) {
			if time.Since(last) < 100*time.Millisecond && done < total {
				return
			}
			last = time.Now()
			fmt.Fprintf(stderr, "\rsagas %s %d/%d", bar(int64(done), int64(total), 30), done, total)
			if done >= total {
				fmt.Fprintln(stderr)
			}
		},
	})
	if err != nil {
		fmt.Fprintf(stderr, "\norchestrator demo: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "completed            %d\ncompensated          %d\ncompensation failed  %d\nnot finished         %d\ndead-lettered        %d\n",
		sum.Completed, sum.Compensated, sum.CompensationFailed, sum.Stuck, sum.DeadLettered)
	fmt.Fprintf(stdout, "throughput           %.0f sagas/s (%d in %v)\nsaga latency         p50 %v, p99 %v\n",
		sum.SagasPerSecond, sum.Orders, sum.Elapsed.Round(time.Millisecond), sum.P50.Round(time.Millisecond), sum.P99.Round(time.Millisecond))
	if len(sum.Violations) > 0 {
		fmt.Fprintf(stdout, "INVARIANTS BROKEN (%d):\n", len(sum.Violations))
		for i, v := range sum.Violations {
			if i == 20 {
				fmt.Fprintf(stdout, "  ... and %d more\n", len(sum.Violations)-20)
				break
			}
			fmt.Fprintf(stdout, "  %s\n", v)
		}
		return 1
	}
	fmt.Fprintln(stdout, "invariants hold: every saga terminal and announced once; stock reserved = released + shipped; money charged = refunded + captured; nothing applied twice")
	if tracing := tel.orchestrator().Tracing(); tracing != "none" {
		flush()
		showTraces(ctx, stdout, stack.KafkaAddrs(), stack.RegistryURL(), tracing, sf.dataDir, *jaegerURL, sum)
	}
	if *ui != "" {
		return serveConsole(ctx, *ui, *jaegerURL, *stepTimeout, level, stack.KafkaAddrs(), stack.RegistryURL(), stdout, stderr)
	}
	return 0
}

// serveConsole runs the orchestrator service, with its web console, on the
// demo's stack until ctx ends: it takes the demo's sagas over (the same
// consumer group), so the console shows them and their dead letters.
func serveConsole(ctx context.Context, addr, jaegerURL string, stepTimeout time.Duration, level slog.Level, brokers []string, registryURL string, stdout, stderr io.Writer) int {
	s, err := orders.Saga(stepTimeout)
	if err == nil {
		var tel *observability.Telemetry
		if tel, err = observability.Setup(ctx); err == nil {
			var svc *service.Service
			svc, err = service.New(service.Config{Brokers: brokers, Registry: service.RegistryConfig{URL: registryURL}, HTTPAddr: addr,
				JaegerUIURL: jaegerURL}, tel, observability.NewJSONLogger(stderr, level), service.Register(s))
			if err == nil {
				fmt.Fprintf(stdout, "\nweb console at http://%s/ui (open: no api_token); Ctrl-C stops\n", addr)
				err = svc.Run(ctx)
			} else {
				_ = tel.Shutdown(ctx)
			}
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "orchestrator demo: --ui: %v\n", err)
		return 1
	}
	return 0
}

// showTraces prints where to find the traces of a few sagas of the run and,
// given Jaeger's URL, the trace of a compensated one.
func showTraces(ctx context.Context, w io.Writer, brokers []string, registryURL, tracing, dataDir, jaegerURL string, sum orders.Summary) {
	examples := map[string]string{}
	for _, id := range slices.Sorted(maps.Keys(sum.Outcomes)) {
		if o := string(sum.Outcomes[id]); examples[o] == "" {
			examples[o] = id
		}
	}
	if len(sum.DeadLetteredSagas) > 0 {
		examples["with a dead-lettered reply"] = sum.DeadLetteredSagas[0]
	}
	serde, err := schema.NewSerde(registryURL, schema.WithSubjectNameStrategy(schema.RecordNameStrategy))
	if err != nil {
		return
	}
	query := cmp.Or(jaegerURL, "<jaeger query URL>")
	fmt.Fprintf(w, "\ntraces exported (%s), one per saga; for example:\n", tracing)
	for _, kind := range slices.Sorted(maps.Keys(examples)) {
		id := examples[kind]
		entries, err := saga.History(ctx, []kgo.Opt{kgo.SeedBrokers(brokers...)}, serde, "orders", id)
		if err != nil || len(entries) == 0 {
			continue
		}
		traceID := telemetry.ParseTraceParent(entries[0].TraceParent).TraceID()
		fmt.Fprintf(w, "  %-28s %s  %s/trace/%s\n", kind, id, query, traceID) // the UI's page; the API's is /api/traces/<id>
	}
	hint := " --data-dir " + dataDir
	if dataDir == "" {
		hint = "   (after a demo run with --data-dir DIR, add --data-dir DIR)"
	}
	fmt.Fprintf(w, "  timeline and span tree:     orchestrator saga trace orders <order> --jaeger %s%s\n", query, hint)
	id := cmp.Or(examples[string(saga.StateCompensated)], examples[string(saga.StateCompleted)])
	if jaegerURL == "" || id == "" {
		return
	}
	entries, err := saga.History(ctx, []kgo.Opt{kgo.SeedBrokers(brokers...)}, serde, "orders", id)
	if err != nil {
		return
	}
	traceID := telemetry.ParseTraceParent(entries[0].TraceParent).TraceID().String()
	t, err := waitForTrace(ctx, jaeger.Client{URL: jaegerURL}, traceID)
	if err != nil {
		fmt.Fprintf(w, "  (Jaeger: %v)\n", err)
		return
	}
	fmt.Fprintf(w, "\nsaga %s in Jaeger, trace %s:\n", id, traceID)
	t.WriteTree(w)
}

// waitForTrace fetches a trace once its span count stops growing: the
// collector batches what it receives.
func waitForTrace(ctx context.Context, c jaeger.Client, traceID string) (jaeger.Trace, error) {
	var last jaeger.Trace
	var err error
	for range 20 {
		var t jaeger.Trace
		t, err = c.Trace(ctx, traceID)
		if err == nil && len(t.Spans) > 0 && len(t.Spans) == len(last.Spans) {
			return t, nil
		}
		last = t
		time.Sleep(250 * time.Millisecond)
	}
	if err != nil {
		return jaeger.Trace{}, err
	}
	return last, nil
}

// serveMetrics serves h at http://addr/metrics until the returned func is called.
func serveMetrics(addr string, h http.Handler) (func(), error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", h)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(l) }()
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-done
	}, nil
}
