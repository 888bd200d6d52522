package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"go.temporal.io/sdk/client"
	sdklog "go.temporal.io/sdk/log"
	"go.temporal.io/sdk/worker"
)

const taskQueue = "orders"

// Run is one pass: Orders sagas placed, at most Concurrency in flight.
type Run struct {
	Orders         int     `json:"orders"`
	Concurrency    int     `json:"concurrency"`
	SagasPerSecond float64 `json:"sagas_per_second"`
	P50Millis      float64 `json:"p50_ms"`
	P99Millis      float64 `json:"p99_ms"`
	ElapsedSeconds float64 `json:"elapsed_seconds"`
	Confirmed      int     `json:"confirmed"`
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("temporal-orders", flag.ContinueOnError)
	fs.SetOutput(stderr)
	temporalBin := fs.String("temporal", "temporal", "the temporal CLI to start the dev server with (go install github.com/temporalio/cli/cmd/temporal@v1.5.1)")
	address := fs.String("address", "", "a running Temporal frontend (host:port) instead of starting a dev server")
	orders := fs.Int("orders", 20000, "sagas per run")
	concurrency := fs.Int("concurrency", 2000, "sagas in flight at most")
	runs := fs.Int("runs", 3, "runs (min / median / max are printed)")
	pollers := fs.Int("pollers", 8, "workflow and activity task pollers each")
	out := fs.String("out", "", "write the runs as JSON here")
	serverLogs := fs.Bool("server-logs", false, "pass the dev server's error logs through to stderr (an overloaded dev server logs failed updates it retries)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *orders < 1 || *concurrency < 1 || *runs < 1 || *pollers < 1 {
		fmt.Fprintln(stderr, "temporal-orders: --orders, --concurrency, --runs and --pollers must be at least 1")
		return 2
	}
	fail := func(err error) int {
		fmt.Fprintf(stderr, "temporal-orders: %v\n", err)
		return 1
	}
	if *address == "" {
		logs := io.Discard
		if *serverLogs {
			logs = stderr
		}
		addr, stopServer, err := startDevServer(ctx, *temporalBin, logs)
		if err != nil {
			return fail(err)
		}
		defer stopServer()
		*address = addr
	}
	c, err := dial(ctx, *address)
	if err != nil {
		return fail(err)
	}
	defer c.Close()
	w := worker.New(c, taskQueue, worker.Options{MaxConcurrentWorkflowTaskPollers: *pollers, MaxConcurrentActivityTaskPollers: *pollers})
	w.RegisterWorkflow(OrderSaga)
	w.RegisterActivity(&Participants{})
	if err := w.Start(); err != nil {
		return fail(err)
	}
	defer w.Stop()

	fmt.Fprintf(stdout, "temporal: the orders saga as a workflow on %s, %d orders, %d in flight, %d runs (after a warm-up of %d)\n",
		*address, *orders, *concurrency, *runs, min(*orders, 2000))
	if _, err := place(ctx, c, "warm", min(*orders, 2000), *concurrency); err != nil {
		return fail(err)
	}
	var all []Run
	for i := range *runs {
		r, err := place(ctx, c, fmt.Sprintf("run%d", i+1), *orders, *concurrency)
		if err != nil {
			return fail(err)
		}
		fmt.Fprintf(stdout, "  run %d: %.0f sagas/s, p50 %.0f ms, p99 %.0f ms, %d of %d confirmed\n", i+1, r.SagasPerSecond, r.P50Millis, r.P99Millis, r.Confirmed, r.Orders)
		all = append(all, r)
	}
	spread := func(of func(Run) float64) string {
		v := make([]float64, len(all))
		for i, r := range all {
			v[i] = of(r)
		}
		slices.Sort(v)
		return fmt.Sprintf("%.0f / %.0f / %.0f", v[0], v[len(v)/2], v[len(v)-1])
	}
	fmt.Fprintf(stdout, "  over the runs (min / median / max): %s sagas/s, p50 %s ms, p99 %s ms\n",
		spread(func(r Run) float64 { return r.SagasPerSecond }), spread(func(r Run) float64 { return r.P50Millis }), spread(func(r Run) float64 { return r.P99Millis }))
	if *out != "" {
		data, _ := json.MarshalIndent(all, "", "  ")
		if err := os.WriteFile(*out, append(data, '\n'), 0o644); err != nil {
			return fail(err)
		}
	}
	return 0
}

// place runs n sagas, at most concurrency in flight, each from starting its
// workflow to its result.
func place(ctx context.Context, c client.Client, prefix string, n, concurrency int) (Run, error) {
	r := Run{Orders: n, Concurrency: concurrency}
	var (
		mu        sync.Mutex
		latencies []time.Duration
		firstErr  error
		wg        sync.WaitGroup
	)
	slots := make(chan struct{}, concurrency)
	began := time.Now()
	for i := range n {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return r, ctx.Err()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			o := DemoOrder(i)
			start := time.Now()
			run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: prefix + "-" + o.OrderID, TaskQueue: taskQueue}, OrderSaga, o)
			var outcome string
			if err == nil {
				err = run.Get(ctx, &outcome)
			}
			took := time.Since(start)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				firstErr = errors.Join(firstErr, err)
				return
			}
			latencies = append(latencies, took)
			if outcome == OutcomeConfirmed {
				r.Confirmed++
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(began)
	if firstErr != nil {
		return r, firstErr
	}
	slices.Sort(latencies)
	r.ElapsedSeconds = elapsed.Seconds()
	r.SagasPerSecond = float64(n) / elapsed.Seconds()
	r.P50Millis = float64(latencies[len(latencies)/2].Microseconds()) / 1000
	r.P99Millis = float64(latencies[min(len(latencies)-1, len(latencies)*99/100)].Microseconds()) / 1000
	return r, nil
}

// startDevServer starts `temporal server start-dev` on free ports, in
// memory, and returns its frontend address.
func startDevServer(ctx context.Context, bin string, logs io.Writer) (string, func(), error) {
	port, err := freePort()
	if err != nil {
		return "", nil, err
	}
	httpPort, err := freePort()
	if err != nil {
		return "", nil, err
	}
	metricsPort, err := freePort()
	if err != nil {
		return "", nil, err
	}
	cmd := exec.CommandContext(ctx, bin, "server", "start-dev", "--headless", "--ip", "127.0.0.1",
		"--port", strconv.Itoa(port), "--http-port", strconv.Itoa(httpPort), "--metrics-port", strconv.Itoa(metricsPort), "--log-level", "error")
	cmd.Stdout, cmd.Stderr = io.Discard, logs
	if err := cmd.Start(); err != nil {
		return "", nil, fmt.Errorf("starting the dev server (--temporal %s): %w", bin, err)
	}
	stop := func() { _ = cmd.Process.Signal(os.Interrupt); _ = cmd.Wait() }
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), stop, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// dial connects to the frontend, waiting up to a minute for it to serve.
func dial(ctx context.Context, address string) (client.Client, error) {
	deadline := time.Now().Add(time.Minute)
	for {
		c, err := client.DialContext(ctx, client.Options{HostPort: address, Logger: sdklog.NewStructuredLogger(quietLogger())})
		if err == nil {
			if _, err = c.CheckHealth(ctx, &client.CheckHealthRequest{}); err == nil {
				return c, nil
			}
			c.Close()
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("the Temporal frontend at %s does not answer: %w", address, err)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}
