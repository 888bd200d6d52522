package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/devstack"
	"github.com/sagapipe/sagapipe/examples/orders"
	"github.com/sagapipe/sagapipe/kread"
	"github.com/sagapipe/sagapipe/saga"
	"github.com/sagapipe/sagapipe/schema"
)

// How a run's services report telemetry.
const (
	telemetryNone    = ""        // otel's globals: no-op, what the harness measured before issue 18
	telemetryMetrics = "metrics" // the demo's SDK per service, metrics kept, no span exported
	telemetryTraced  = "traced"  // the same, every span exported over OTLP to an in-process sink
)

// runSpec is one pass of the orders saga end to end.
type runSpec struct {
	sagas, concurrency int
	partitions         int32
	rate               float64       // sagas placed per second, 0: as fast as concurrency allows
	warmUp             int           // sagas placed and finished before the measured ones
	latency            time.Duration // per command in every participant
	telemetry          string
	otlpProtocol       string
	tracedQueue        int // OTEL_BSP_MAX_QUEUE_SIZE of a traced run, 0: the SDK's default
}

// benchRun runs the orders end to end on a fresh embedded stack, every
// participant taking latency per command (the first time: a resend is
// answered at once), and counts the broker operations they took.
func benchRun(ctx context.Context, spec runSpec) (Run, error) {
	stack, err := devstack.Start(devstack.Config{})
	if err != nil {
		return Run{}, err
	}
	defer closeStack(stack)
	counter := countOps(stack.Kafka())
	cfg := orders.DemoConfig{Brokers: stack.KafkaAddrs(), RegistryURL: stack.RegistryURL(),
		Orders: spec.sagas, Concurrency: spec.concurrency, Partitions: spec.partitions, StepTimeout: 30 * time.Second, Rate: spec.rate,
		Faults: orders.Faults{Latency: spec.latency}, WarmUp: spec.warmUp}
	var (
		tel  *demoTelemetry
		sink *otlpSink
	)
	switch spec.telemetry {
	case telemetryTraced:
		if sink, err = startOTLPSink(spec.otlpProtocol); err != nil {
			return Run{}, err
		}
		defer sink.close()
		env := map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint,
			"OTEL_EXPORTER_OTLP_PROTOCOL": sink.protocol, "OTEL_TRACES_SAMPLER": "always_on"}
		if spec.tracedQueue > 0 {
			env["OTEL_BSP_MAX_QUEUE_SIZE"] = strconv.Itoa(spec.tracedQueue)
		}
		tel, err = benchTelemetry(ctx, env)
	case telemetryMetrics:
		tel, err = benchTelemetry(ctx, map[string]string{"OTEL_TRACES_EXPORTER": "none"})
	}
	if err != nil {
		return Run{}, err
	}
	if tel != nil {
		cfg.Telemetry = tel.forService
	}

	// The moment the last saga finished, and how many spans the receiver
	// had by then: a traced run's clock stops there, with spans still
	// queued in the batch span processors.
	var (
		lastMu       sync.Mutex
		lastFinished time.Time
		spansAtLast  int64
	)
	cfg.Progress = func(finished, total int) {
		if finished < total {
			return
		}
		lastMu.Lock()
		defer lastMu.Unlock()
		if lastFinished.IsZero() {
			lastFinished = time.Now()
			if sink != nil {
				spansAtLast = sink.spans.Load()
			}
		}
	}

	settledHeap() // what the previous phase left is freed before this one is measured
	mem := startPhaseMemory()
	// CPU and allocations are the measured orders' window: from placing
	// the first to the last one finishing (no startup, warm-up, draining
	// or checking), as the floor measures its own.
	var (
		before, after runtime.MemStats
		cpu           time.Duration
	)
	cfg.Window = func() func() {
		runtime.ReadMemStats(&before)
		cpuBefore := processCPU()
		return func() {
			cpu = processCPU() - cpuBefore
			runtime.ReadMemStats(&after)
		}
	}
	sum, err := orders.RunDemo(ctx, cfg)
	if tel != nil {
		// Export what the batch processors still hold, inside the CPU
		// measurement.
		cpuBefore := processCPU()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Minute)
		err = errors.Join(err, tel.shutdown(sctx))
		cancel()
		cpu += processCPU() - cpuBefore
	}
	flushed := time.Now()
	rss, heap := mem.end()
	if err != nil {
		return Run{}, err
	}
	if len(sum.Violations) > 0 {
		return Run{}, fmt.Errorf("invariants broken: %v", sum.Violations[:min(5, len(sum.Violations))])
	}
	records, err := countRecords(ctx, stack.KafkaAddrs())
	if err != nil {
		return Run{}, err
	}
	ops, err := counter.result(ctx, stack.KafkaAddrs())
	if err != nil {
		return Run{}, err
	}
	// Records and broker operations are counted over the whole run, the
	// warm-up's sagas too: per saga they are divided by every saga, per
	// second they are per saga times the measured rate. CPU and
	// allocations are the measured window's.
	n, measured, secs := float64(spec.sagas+spec.warmUp), float64(spec.sagas), sum.Elapsed.Seconds()
	r := Run{
		SagasPerSecond: sum.SagasPerSecond, P50Millis: ms(sum.P50), P99Millis: ms(sum.P99),
		Records: records, RecordsPerSecond: float64(records) / n * sum.SagasPerSecond,
		AllocsPerSaga: float64(after.Mallocs-before.Mallocs) / measured,
		BytesPerSaga:  float64(after.TotalAlloc-before.TotalAlloc) / measured,
		PeakRSSBytes:  rss, PeakHeapBytes: heap, ElapsedSeconds: secs, RateLimit: spec.rate,
		Ops: &ops, OpsPerSaga: float64(ops.Total()) / n, OpsPerSecond: float64(ops.Total()) / n * sum.SagasPerSecond,
		ReadyMillis: ms(sum.ReadyAfter), WarmUpSagas: spec.warmUp, WarmUpP99Millis: ms(sum.WarmUpP99),
		CPUMicrosPerSaga: float64(cpu.Microseconds()) / measured, CPUMicrosPerOp: float64(cpu.Microseconds()) / measured / max(float64(ops.Total())/n, 1),
		Telemetry: spec.telemetry,
	}
	if sink != nil {
		r.SpansPerSaga = float64(sink.spans.Load()) / n
		if r.SpansPerSaga == 0 {
			return r, errNoSpans
		}
		r.AttributesPerSpan = float64(sink.attributes.Load()) / float64(sink.spans.Load())
		lastMu.Lock()
		began := lastFinished.Add(-sum.Elapsed)
		r.SpansQueuedAtEndPerSaga = float64(sink.spans.Load()-spansAtLast) / n
		lastMu.Unlock()
		r.SagasPerSecondAllExported = measured / flushed.Sub(began).Seconds()
		r.ReceiverCPUMicrosPerSaga = float64(time.Duration(sink.cpu.Load()).Microseconds()) / n
	}
	return r, nil
}

// benchTelemetry sets up the demo's telemetry (an SDK per service, as
// `orchestrator demo` does, from the OTEL_* environment) with env in place
// of the process's OTEL_* exporter and sampler variables, which it puts
// back after. The other OTEL_BSP_* (batching) variables are left as the
// caller set them.
func benchTelemetry(ctx context.Context, env map[string]string) (*demoTelemetry, error) {
	return withOTelEnv(env, func() (*demoTelemetry, error) { return setupDemoTelemetry(ctx, io.Discard, slog.LevelError) })
}

// withOTelEnv runs setup with env in place of the process's OTEL_*
// exporter and sampler variables, and puts them back after.
func withOTelEnv[T any](env map[string]string, setup func() (T, error)) (T, error) {
	replaced := []string{"OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG", "OTEL_BSP_MAX_QUEUE_SIZE",
		"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"}
	saved := map[string]string{}
	for _, k := range replaced {
		if v, ok := os.LookupEnv(k); ok {
			saved[k] = v
		}
		os.Unsetenv(k)
	}
	defer func() {
		for _, k := range replaced {
			os.Unsetenv(k)
			if v, ok := saved[k]; ok {
				os.Setenv(k, v)
			}
		}
	}()
	for k, v := range env {
		os.Setenv(k, v)
	}
	return setup()
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// countRecords counts the data records (not transaction markers) of every
// topic the orders saga and its participants wrote, the state topic's
// snapshots aside (the figure before issue 18; BrokerOps counts them).
func countRecords(ctx context.Context, brokers []string) (int64, error) {
	var n int64
	for _, topic := range []string{"orders.inbox", "orders.journal", orders.OutcomesTopic, orders.InventoryTopic, orders.PaymentTopic, orders.ShippingTopic} {
		err := kread.ToEnd(ctx, []kgo.Opt{kgo.SeedBrokers(brokers...)}, topic, nil, func(*kgo.Record) error { n++; return nil })
		if err != nil {
			return 0, fmt.Errorf("counting %s: %w", topic, err)
		}
	}
	return n, nil
}

// peakRSS is the process's resident set high-water mark (VmHWM), or 0
// where /proc does not tell.
func peakRSS() int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// benchCeiling moves n records through a plain kgo transactional
// read-process-write loop on a fresh embedded stack: what the broker and
// client allow without sagapipe. With inputInWindow the input is produced
// by a concurrent producer inside the measured window (as the storefront
// places orders while the saga runs); otherwise it is produced before the
// clock starts and only the loop is measured (the ceiling before issue 18).
func benchCeiling(ctx context.Context, n int64, partitions int32, inputInWindow bool) (CeilingWindow, error) {
	stack, err := devstack.Start(devstack.Config{})
	if err != nil {
		return CeilingWindow{}, err
	}
	defer closeStack(stack)
	seed := []kgo.Opt{kgo.SeedBrokers(stack.KafkaAddrs()...)}
	cl, err := kgo.NewClient(seed...)
	if err != nil {
		return CeilingWindow{}, err
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	if _, err := adm.CreateTopics(ctx, partitions, 1, nil, "ceiling.in", "ceiling.out"); err != nil {
		return CeilingWindow{}, err
	}
	// Records shaped like the saga's, as the floor's (floorRecord): a
	// key, 14 headers with fresh IDs, 200 bytes cut from order-like text.
	// (Before, every record was the same zero-filled one, which snappy
	// squeezed to almost nothing.)
	text := floorText()
	var (
		produceMu  sync.Mutex
		produceErr error
	)
	produceInput := func() {
		for i := int64(0); i < n; i++ {
			cl.Produce(ctx, floorRecord(text, "ceiling.in", []byte(fmt.Sprintf("order-%06d", i%50000)), nil, -1),
				func(_ *kgo.Record, err error) {
					if err != nil {
						produceMu.Lock()
						produceErr = errors.Join(produceErr, err)
						produceMu.Unlock()
					}
				})
		}
		if err := cl.Flush(ctx); err != nil {
			produceMu.Lock()
			produceErr = errors.Join(produceErr, err)
			produceMu.Unlock()
		}
	}
	sess, err := kgo.NewGroupTransactSession(append(seed, kgo.ConsumerGroup("ceiling"), kgo.ConsumeTopics("ceiling.in"),
		kgo.TransactionalID("ceiling"), kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.ProducerLinger(0),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))...)
	if err != nil {
		return CeilingWindow{}, err
	}
	defer sess.Close()

	if !inputInWindow {
		produceInput()
	}
	// The clock starts with the group joined, as a saga run's does.
	if err := waitGroupsAssigned(ctx, adm, map[string]string{"ceiling": "ceiling.in"}, partitions); err != nil {
		return CeilingWindow{}, err
	}
	counter := countOps(stack.Kafka())
	var produced sync.WaitGroup
	cpuBefore := processCPU()
	began := time.Now()
	if inputInWindow {
		produced.Add(1)
		go func() { defer produced.Done(); produceInput() }()
	}
	var moved int64
	for moved < n {
		fetches := sess.PollFetches(ctx)
		if err := fetches.Err0(); err != nil {
			produced.Wait()
			return CeilingWindow{}, err
		}
		if err := sess.Begin(); err != nil {
			produced.Wait()
			return CeilingWindow{}, err
		}
		fetches.EachRecord(func(r *kgo.Record) {
			sess.Produce(ctx, &kgo.Record{Topic: "ceiling.out", Key: r.Key, Value: r.Value, Headers: r.Headers}, nil)
			moved++
		})
		if _, err := sess.End(ctx, kgo.TryCommit); err != nil {
			produced.Wait()
			return CeilingWindow{}, err
		}
	}
	produced.Wait()
	elapsed := time.Since(began)
	cpu := processCPU() - cpuBefore
	if produceErr != nil {
		return CeilingWindow{}, fmt.Errorf("producing the ceiling's input: %w", produceErr)
	}
	ops, err := counter.result(ctx, stack.KafkaAddrs())
	if err != nil {
		return CeilingWindow{}, err
	}
	return CeilingWindow{Records: moved, RecordsPerSecond: float64(moved) / elapsed.Seconds(), ElapsedSeconds: elapsed.Seconds(),
		Ops: ops, OpsPerSecond: float64(ops.Total()) / elapsed.Seconds(), CPUMicrosPerOp: float64(cpu.Microseconds()) / float64(max(ops.Total(), 1))}, nil
}

// benchInFlight measures the orchestrator's heap per in-flight saga: the
// broker and the participants (shipping silent) run as processes of this
// binary, the saga runtime in this one; n sagas are started and held at
// shipping, and the live heap's growth is divided by n.
func benchInFlight(ctx context.Context, n int, partitions int32, stderr io.Writer) (float64, error) {
	self, err := os.Executable()
	if err != nil {
		return 0, err
	}
	brokers, registryURL, stopDev, err := startDevProcess(ctx, self, stderr)
	if err != nil {
		return 0, err
	}
	defer stopDev()

	s, err := orders.Saga(time.Hour)
	if err != nil {
		return 0, err
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers))
	if err != nil {
		return 0, err
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	if err := ensureOrdersTopics(ctx, adm, s, partitions); err != nil {
		return 0, err
	}
	stopParticipants, err := startParticipantsProcess(ctx, self, brokers, registryURL, stderr, "--shipping-silent")
	if err != nil {
		return 0, err
	}
	defer stopParticipants()

	serde, err := schema.NewSerde(registryURL, schema.WithSubjectNameStrategy(schema.RecordNameStrategy))
	if err != nil {
		return 0, err
	}
	rt, err := saga.NewRuntime(s, saga.WithClientOptions(kgo.SeedBrokers(brokers)), saga.WithRegistry(serde))
	if err != nil {
		return 0, err
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- rt.Run(rctx) }()
	defer func() { cancel(); <-done; rt.Close() }()

	starter, err := s.NewStarter(cl, serde, saga.StartSource("bench"))
	if err != nil {
		return 0, err
	}
	place := func(from, to int) error {
		for i := from; i < to; i++ {
			o := orders.DemoOrder(i)
			rec, err := starter.Record(ctx, o.OrderID, o)
			if err != nil {
				return err
			}
			cl.Produce(ctx, rec, nil)
		}
		return cl.Flush(ctx)
	}
	waitHeld := func(want int) error {
		deadline := time.Now().Add(5 * time.Minute)
		for len(rt.List(saga.PendingState("shipping"))) < want {
			if time.Now().After(deadline) {
				return fmt.Errorf("only %d of %d sagas reached shipping", len(rt.List(saga.PendingState("shipping"))), want)
			}
			select {
			case err := <-done:
				return fmt.Errorf("the runtime stopped: %v", err)
			case <-time.After(50 * time.Millisecond):
			}
		}
		return nil
	}
	const warm = 500 // clients, codecs, caches and maps warmed up before measuring
	if err := place(0, warm); err != nil {
		return 0, err
	}
	if err := waitHeld(warm); err != nil {
		return 0, err
	}
	before := settledHeap()
	if err := place(warm, warm+n); err != nil {
		return 0, err
	}
	if err := waitHeld(warm + n); err != nil {
		return 0, err
	}
	after := liveHeap()
	return float64(int64(after)-int64(before)) / float64(n), nil
}

// startDevProcess starts the embedded stack as a process of this binary
// (`orchestrator dev`), so that what is measured here excludes the broker.
func startDevProcess(ctx context.Context, self string, stderr io.Writer, extra ...string) (brokers, registryURL string, stop func(), err error) {
	dev := exec.CommandContext(ctx, self, append([]string{"dev", "--kafka-port", "0", "--registry-port", "0"}, extra...)...)
	devOut, err := dev.StdoutPipe()
	if err != nil {
		return "", "", nil, err
	}
	dev.Stderr = stderr
	if err := dev.Start(); err != nil {
		return "", "", nil, err
	}
	stop = func() { _ = dev.Process.Signal(os.Interrupt); _ = dev.Wait() }
	addrs := regexp.MustCompile(`kafka:\s+(\S+)\nregistry: (\S+)`)
	var printed strings.Builder
	sc := bufio.NewScanner(devOut)
	for sc.Scan() {
		printed.WriteString(sc.Text() + "\n")
		if m := addrs.FindStringSubmatch(printed.String()); m != nil {
			brokers, registryURL = m[1], m[2]
			break
		}
	}
	if brokers == "" {
		stop()
		return "", "", nil, fmt.Errorf("the dev stack did not start: %s", printed.String())
	}
	go func() { _, _ = io.Copy(io.Discard, devOut) }()
	return brokers, registryURL, stop, nil
}

// startParticipantsProcess runs the orders participants in a process of
// their own (this binary's participants command with extra flags), as the
// out-of-process scenarios need; stop interrupts it and waits.
func startParticipantsProcess(ctx context.Context, self, brokers, registryURL string, stderr io.Writer, extra ...string) (stop func(), err error) {
	p := exec.CommandContext(ctx, self, append([]string{"participants", "--brokers", brokers, "--registry", registryURL}, extra...)...)
	p.Stdout, p.Stderr = io.Discard, stderr
	if err := p.Start(); err != nil {
		return nil, err
	}
	return func() { _ = p.Process.Signal(os.Interrupt); _ = p.Wait() }, nil
}

// settledHeap is the live heap once it has stopped shrinking (by 1 MiB or
// more in a quarter of a second, for at most 5 s): what an earlier phase
// left behind, such as a closed broker whose goroutines are still ending,
// is freed before a measurement starts, not during it.
func settledHeap() uint64 {
	awaitClosedStacks(10 * time.Second)
	heap := liveHeap()
	for range 20 {
		time.Sleep(250 * time.Millisecond)
		next := liveHeap()
		if next+1<<20 > heap {
			return min(heap, next)
		}
		heap = next
	}
	return heap
}

// closedStacks are the embedded stacks a run closed whose broker the
// garbage collector has not yet reclaimed: a closed broker stays reachable
// for up to 5 s (kgo's fetch max wait) through the timers of the fetches
// it was holding, and with it every record of the run; a run started in
// that time pays for the previous run's heap (measured: 165 MiB still
// live after a ceiling run, 250 MiB after a floor run).
var closedStacks struct {
	mu      sync.Mutex
	pending []<-chan struct{}
}

// closeStack closes stack and notes when its broker is reclaimed.
func closeStack(stack *devstack.Stack) {
	reclaimed := make(chan struct{})
	runtime.AddCleanup(stack.Kafka(), func(c chan struct{}) { close(c) }, reclaimed)
	stack.Close()
	closedStacks.mu.Lock()
	closedStacks.pending = append(closedStacks.pending, reclaimed)
	closedStacks.mu.Unlock()
}

// awaitClosedStacks collects garbage until every closed stack's broker is
// reclaimed, or for at most limit; it reports whether they all were.
func awaitClosedStacks(limit time.Duration) bool {
	closedStacks.mu.Lock()
	defer closedStacks.mu.Unlock()
	deadline := time.Now().Add(limit)
	for len(closedStacks.pending) > 0 && time.Now().Before(deadline) {
		runtime.GC()
		select {
		case <-closedStacks.pending[0]:
			closedStacks.pending = closedStacks.pending[1:]
		case <-time.After(100 * time.Millisecond):
		}
	}
	all := len(closedStacks.pending) == 0
	closedStacks.pending = nil
	return all
}

// ensureOrdersTopics creates the orders saga's topics and its participants'
// command topics, partitions each, on the bench's single-broker stack.
func ensureOrdersTopics(ctx context.Context, adm *kadm.Client, s *saga.Saga[orders.OrderData], partitions int32) error {
	if err := s.EnsureTopics(ctx, adm, partitions, 1); err != nil {
		return err
	}
	for _, t := range []string{orders.InventoryTopic, orders.PaymentTopic, orders.ShippingTopic} {
		if err := saga.EnsureTopic(ctx, adm, t, partitions, 1, nil); err != nil {
			return err
		}
	}
	return nil
}
