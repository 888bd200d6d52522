package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/devstack"
	"github.com/sagapipe/sagapipe/examples/orders"
	"github.com/sagapipe/sagapipe/kread"
	"github.com/sagapipe/sagapipe/saga"
	"github.com/sagapipe/sagapipe/schema"
)

// BenchResult is what `orchestrator bench` measures, also written as JSON.
type BenchResult struct {
	Sagas       int     `json:"sagas"`
	Concurrency int     `json:"concurrency"`
	Partitions  int     `json:"partitions"`
	GoMaxProcs  int     `json:"gomaxprocs"`
	Throughput  Run     `json:"throughput"`
	HalfRate    Run     `json:"half_rate"`
	Ceiling     Ceiling `json:"ceiling"`
	// Ratio is the saga run's records/s over the ceiling's.
	Ratio float64 `json:"ratio_to_ceiling"`
	// InFlightBytesPerSaga is the orchestrator's heap growth per saga
	// held in flight, the broker and participants in other processes.
	InFlightBytesPerSaga float64 `json:"in_flight_bytes_per_saga"`
	InFlightSagas        int     `json:"in_flight_sagas"`
	// SlowParticipants is the orders saga with 5 ms of handling per
	// command in every participant: what concurrency within a partition
	// buys (issue 13).
	SlowParticipants *Run `json:"slow_participants,omitempty"`
	// Recovery and RecoveryBaseline are the recovery scenario with a long
	// history of closed sagas and with a short one.
	Recovery         *Recovery `json:"recovery,omitempty"`
	RecoveryBaseline *Recovery `json:"recovery_baseline,omitempty"`
	// RecoveryHeapRatio is the long history's heap after takeover over the
	// short one's.
	RecoveryHeapRatio float64 `json:"recovery_heap_ratio,omitempty"`
	Targets           Targets `json:"targets"`
}

// Run is one pass of the orders saga end to end.
type Run struct {
	SagasPerSecond   float64 `json:"sagas_per_second"`
	P50Millis        float64 `json:"p50_ms"`
	P99Millis        float64 `json:"p99_ms"`
	Records          int64   `json:"records"`
	RecordsPerSecond float64 `json:"records_per_second"`
	AllocsPerSaga    float64 `json:"allocs_per_saga"`
	BytesPerSaga     float64 `json:"alloc_bytes_per_saga"`
	PeakRSSBytes     int64   `json:"peak_rss_bytes"`
	ElapsedSeconds   float64 `json:"elapsed_seconds"`
	RateLimit        float64 `json:"rate_limit,omitempty"`
}

// Ceiling is the plain kgo transactional read-process-write loop.
type Ceiling struct {
	Records          int64   `json:"records"`
	RecordsPerSecond float64 `json:"records_per_second"`
	ElapsedSeconds   float64 `json:"elapsed_seconds"`
}

// Targets are issue 7's, and whether this run met them.
type Targets struct {
	SagasPerSecond bool `json:"sagas_per_second_at_least_5000"`
	Ratio          bool `json:"ratio_at_least_0_3"`
	HalfRateP99    bool `json:"p99_at_half_rate_at_most_250ms"`
	InFlightBytes  bool `json:"in_flight_at_most_2KiB"`
	// SlowParticipants: at least 1,500 sagas/s with 5 ms of handling per
	// command and 500 in flight.
	SlowParticipants bool `json:"slow_participants_at_least_1500"`
	// The recovery scenario's (issue 11): heap after takeover within 1.5×
	// of the short history's, a restart ready within 1 s, a fresh takeover
	// within 1 s per 100,000 in-flight sagas plus 1 s per 1,000,000 closed
	// markers, and no partition restored from the journal.
	RecoveryHeap      bool   `json:"recovery_heap_within_1_5x"`
	RecoveryRestart   bool   `json:"recovery_restart_at_most_1s"`
	RecoveryFresh     bool   `json:"recovery_fresh_takeover_in_budget"`
	RecoveryNoJournal bool   `json:"recovery_reads_no_journal"`
	AllMet            bool   `json:"all_met"`
	FailedExplanation string `json:"failed,omitempty"`
}

func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	n := fs.Int("sagas", 20000, "sagas per throughput run")
	concurrency := fs.Int("concurrency", 2000, "sagas in flight at most")
	partitions := fs.Int("partitions", 3, "partitions of every topic")
	inFlight := fs.Int("in-flight", 10000, "sagas held in flight for the memory measurement")
	out := fs.String("out", "bench-results.json", "where to write the results as JSON (empty: nowhere)")
	skipMemory := fs.Bool("skip-memory", false, "skip the in-flight memory measurement (it starts the broker and participants as processes)")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the throughput run to this file (go tool pprof); with --only recovery, of the fresh takeover")
	recoveryHistory := fs.Int("recovery-history", 1_000_000, "closed sagas in the recovery scenario's history")
	recoveryBaseline := fs.Int("recovery-baseline", 10_000, "closed sagas in the recovery scenario's short-history baseline")
	recoveryInFlight := fs.Int("recovery-in-flight", 10_000, "sagas in flight in the recovery scenario")
	only := fs.String("only", "", `run one scenario only: "recovery" or "slow" (participants taking 5 ms per command)`)
	slowSagas := fs.Int("slow-sagas", 5000, "sagas in the slow-participants scenario (500 in flight, 5 ms per command)")
	skipRecovery := fs.Bool("skip-recovery", false, "skip the recovery scenario (it starts the broker and participants as processes)")
	if code := parseFlags(fs, args, stderr); code >= 0 {
		return code
	}
	if problems := atLeastOne(nil, map[string]int{"--sagas": *n, "--concurrency": *concurrency, "--partitions": *partitions, "--in-flight": *inFlight,
		"--recovery-history": *recoveryHistory, "--recovery-baseline": *recoveryBaseline, "--recovery-in-flight": *recoveryInFlight, "--slow-sagas": *slowSagas}); len(problems) > 0 || (*only != "" && *only != "recovery" && *only != "slow") {
		if *only != "" && *only != "recovery" && *only != "slow" {
			problems = append(problems, fmt.Errorf("--only %q: want \"recovery\" or \"slow\"", *only))
		}
		fmt.Fprintf(stderr, "orchestrator bench: %v\n", errors.Join(problems...))
		return 2
	}
	res := BenchResult{Sagas: *n, Concurrency: *concurrency, Partitions: *partitions, GoMaxProcs: runtime.GOMAXPROCS(0)}
	fail := func(err error) int {
		fmt.Fprintf(stderr, "orchestrator bench: %v\n", err)
		return 1
	}

	if *only == "" {
		if code := benchSagas(ctx, &res, *n, *concurrency, int32(*partitions), *inFlight, *skipMemory, *cpuProfile, stdout, stderr); code != 0 {
			return code
		}
	}

	if *only == "" || *only == "slow" {
		fmt.Fprintf(stdout, "slow participants: %d sagas, 500 in flight, every participant taking 5 ms per command\n", *slowSagas)
		slow, err := benchRun(ctx, *slowSagas, 500, int32(*partitions), 0, 5*time.Millisecond)
		if err != nil {
			return fail(err)
		}
		printRun(stdout, slow)
		res.SlowParticipants = &slow
	}

	var rec Recovery
	recoveryProfile := ""
	if *only == "recovery" {
		recoveryProfile = *cpuProfile
	}
	if (!*skipRecovery && *only == "") || *only == "recovery" {
		if code := benchRecoveries(ctx, &res, &rec, *recoveryHistory, *recoveryBaseline, *recoveryInFlight, int32(*partitions), recoveryProfile, stdout, stderr); code != 0 {
			return code
		}
	}

	t := &res.Targets
	t.SagasPerSecond = res.Throughput.SagasPerSecond >= 5000
	t.Ratio = res.Ratio >= 0.3
	t.HalfRateP99 = res.HalfRate.P99Millis <= 250
	t.InFlightBytes = !*skipMemory && res.InFlightBytesPerSaga <= 2048
	t.SlowParticipants = res.SlowParticipants != nil && res.SlowParticipants.SagasPerSecond >= 1500
	if res.Recovery != nil {
		t.RecoveryHeap = res.RecoveryHeapRatio <= 1.5
		t.RecoveryRestart = rec.RestartSeconds <= 1
		t.RecoveryFresh = rec.FreshTakeoverSeconds <= float64(rec.InFlight)/100_000+float64(rec.History)/1_000_000
		t.RecoveryNoJournal = len(rec.RestoredFrom) > 0 && !slices.Contains(rec.RestoredFrom, saga.RestoredFromJournal)
	}
	type target struct {
		name string
		met  bool
	}
	var targets []target
	if *only != "slow" {
		targets = append(targets, target{"recovery heap ≤ 1.5× the short history's", t.RecoveryHeap}, target{"restart ready ≤ 1 s", t.RecoveryRestart},
			target{"fresh takeover ≤ 1 s per 100k in flight + 1 s per 1M closed", t.RecoveryFresh}, target{"no journal read in recovery", t.RecoveryNoJournal})
	}
	if *only == "" || *only == "slow" {
		targets = append(targets, target{"≥ 1,500 sagas/s with participants taking 5 ms", t.SlowParticipants})
	}
	if *only == "" {
		targets = append(targets, []target{{"≥ 5,000 sagas/s", t.SagasPerSecond}, {"ratio ≥ 0.3", t.Ratio},
			{"p99 ≤ 250 ms at half rate", t.HalfRateP99}, {"≤ 2 KiB per in-flight saga", t.InFlightBytes}}...)
	}
	var missed []string
	for _, target := range targets {
		if !target.met {
			missed = append(missed, target.name)
		}
	}
	t.AllMet = len(missed) == 0
	t.FailedExplanation = strings.Join(missed, "; ")
	if t.AllMet {
		fmt.Fprintf(stdout, "targets: all %d met\n", len(targets))
	} else {
		fmt.Fprintf(stdout, "targets missed: %s\n", t.FailedExplanation)
	}
	if *out != "" {
		data, _ := json.MarshalIndent(res, "", "  ")
		if err := os.WriteFile(*out, append(data, '\n'), 0o644); err != nil {
			return fail(err)
		}
		fmt.Fprintf(stdout, "results written to %s\n", *out)
	}
	return 0
}

// benchSagas runs the throughput, ceiling, half-rate and in-flight memory
// scenarios into res.
func benchSagas(ctx context.Context, res *BenchResult, n, concurrency int, partitions int32, inFlight int, skipMemory bool,
	cpuProfile string, stdout, stderr io.Writer) int {
	fail := func(err error) int {
		fmt.Fprintf(stderr, "orchestrator bench: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "throughput: %d sagas, %d in flight, participants in process, embedded stack\n", n, concurrency)
	if cpuProfile != "" {
		f, err := os.Create(cpuProfile)
		if err != nil {
			return fail(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return fail(err)
		}
	}
	var err error
	res.Throughput, err = benchRun(ctx, n, concurrency, partitions, 0, 0)
	if cpuProfile != "" {
		pprof.StopCPUProfile()
	}
	if err != nil {
		return fail(err)
	}
	printRun(stdout, res.Throughput)

	fmt.Fprintf(stdout, "ceiling: a plain kgo transactional read-process-write loop moving %d records\n", res.Throughput.Records)
	if res.Ceiling, err = benchCeiling(ctx, res.Throughput.Records, partitions); err != nil {
		return fail(err)
	}
	res.Ratio = res.Throughput.RecordsPerSecond / res.Ceiling.RecordsPerSecond
	fmt.Fprintf(stdout, "  %.0f records/s; the saga run moved %.0f records/s: ratio %.2f\n",
		res.Ceiling.RecordsPerSecond, res.Throughput.RecordsPerSecond, res.Ratio)

	half := res.Throughput.SagasPerSecond / 2
	fmt.Fprintf(stdout, "half rate: %d sagas placed at %.0f sagas/s\n", n/2, half)
	if res.HalfRate, err = benchRun(ctx, n/2, concurrency, partitions, half, 0); err != nil {
		return fail(err)
	}
	printRun(stdout, res.HalfRate)

	if !skipMemory {
		fmt.Fprintf(stdout, "in-flight memory: %d sagas held at shipping; broker and participants in their own processes\n", inFlight)
		if res.InFlightBytesPerSaga, err = benchInFlight(ctx, inFlight, partitions, stderr); err != nil {
			return fail(err)
		}
		res.InFlightSagas = inFlight
		fmt.Fprintf(stdout, "  %.0f B of orchestrator heap per in-flight saga\n", res.InFlightBytesPerSaga)
	}
	return 0
}

// benchRecoveries runs the recovery scenario with a long history and with
// a short one into res (and the long one's into out).
func benchRecoveries(ctx context.Context, res *BenchResult, out *Recovery, history, baseline, inFlight int, partitions int32, cpuProfile string, stdout, stderr io.Writer) int {
	fail := func(err error) int {
		fmt.Fprintf(stderr, "orchestrator bench: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "recovery: takeover of %d partitions with %d sagas in flight and %d closed within the retention; broker and participants in their own processes\n",
		partitions, inFlight, history)
	rec, err := benchRecovery(ctx, history, inFlight, partitions, cpuProfile, stderr)
	if err != nil {
		return fail(err)
	}
	printRecovery(stdout, rec)
	fmt.Fprintf(stdout, "recovery baseline: the same with %d closed\n", baseline)
	base, err := benchRecovery(ctx, baseline, inFlight, partitions, "", stderr)
	if err != nil {
		return fail(err)
	}
	printRecovery(stdout, base)
	*out = rec
	res.Recovery, res.RecoveryBaseline = &rec, &base
	res.RecoveryHeapRatio = float64(rec.HeapAfterTakeoverBytes) / float64(max(base.HeapAfterTakeoverBytes, 1))
	fmt.Fprintf(stdout, "  heap after takeover: %.2f× the baseline's\n", res.RecoveryHeapRatio)
	return 0
}

func printRecovery(w io.Writer, r Recovery) {
	fmt.Fprintf(w, "  fresh takeover ready in %.2f s (restored from %v), %.1f MiB of heap after it; restart with the local store ready in %.2f s\n",
		r.FreshTakeoverSeconds, r.RestoredFrom, float64(r.HeapAfterTakeoverBytes)/(1<<20), r.RestartSeconds)
}

func printRun(w io.Writer, r Run) {
	fmt.Fprintf(w, "  %.0f sagas/s, p50 %.0f ms, p99 %.0f ms, %.0f records/s, %.0f allocs and %.0f KB allocated per saga, peak RSS %d MiB\n",
		r.SagasPerSecond, r.P50Millis, r.P99Millis, r.RecordsPerSecond, r.AllocsPerSaga, r.BytesPerSaga/1000, r.PeakRSSBytes>>20)
}

// benchRun runs n orders end to end on a fresh embedded stack, every
// participant taking latency per command (the first time: a resend is
// answered at once).
func benchRun(ctx context.Context, n, concurrency int, partitions int32, rate float64, latency time.Duration) (Run, error) {
	stack, err := devstack.Start(devstack.Config{})
	if err != nil {
		return Run{}, err
	}
	defer stack.Close()
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	sum, err := orders.RunDemo(ctx, orders.DemoConfig{Brokers: stack.KafkaAddrs(), RegistryURL: stack.RegistryURL(),
		Orders: n, Concurrency: concurrency, Partitions: partitions, StepTimeout: 30 * time.Second, Rate: rate,
		Faults: orders.Faults{Latency: latency}})
	runtime.ReadMemStats(&after)
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
	return Run{
		SagasPerSecond: sum.SagasPerSecond, P50Millis: ms(sum.P50), P99Millis: ms(sum.P99),
		Records: records, RecordsPerSecond: float64(records) / sum.Elapsed.Seconds(),
		AllocsPerSaga: float64(after.Mallocs-before.Mallocs) / float64(n),
		BytesPerSaga:  float64(after.TotalAlloc-before.TotalAlloc) / float64(n),
		PeakRSSBytes:  peakRSS(), ElapsedSeconds: sum.Elapsed.Seconds(), RateLimit: rate,
	}, nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// countRecords counts the data records (not transaction markers) of every
// topic the orders saga and its participants wrote.
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
// client allow without sagapipe.
func benchCeiling(ctx context.Context, n int64, partitions int32) (Ceiling, error) {
	stack, err := devstack.Start(devstack.Config{})
	if err != nil {
		return Ceiling{}, err
	}
	defer stack.Close()
	seed := []kgo.Opt{kgo.SeedBrokers(stack.KafkaAddrs()...)}
	cl, err := kgo.NewClient(seed...)
	if err != nil {
		return Ceiling{}, err
	}
	defer cl.Close()
	if _, err := kadm.NewClient(cl).CreateTopics(ctx, partitions, 1, nil, "ceiling.in", "ceiling.out"); err != nil {
		return Ceiling{}, err
	}
	// Records shaped like the saga's: a key, ~200 bytes, a dozen headers.
	value := make([]byte, 200)
	env := schema.NewEnvelope("bench.Event", "bench", time.Now())
	env.SagaName, env.SagaID, env.CorrelationID = "orders", "order-000000", "order-000000"
	headers := env.Apply(nil)
	for i := int64(0); i < n; i++ {
		cl.Produce(ctx, &kgo.Record{Topic: "ceiling.in", Key: []byte(fmt.Sprintf("order-%06d", i%50000)), Value: value, Headers: headers}, nil)
	}
	if err := cl.Flush(ctx); err != nil {
		return Ceiling{}, err
	}
	sess, err := kgo.NewGroupTransactSession(append(seed, kgo.ConsumerGroup("ceiling"), kgo.ConsumeTopics("ceiling.in"),
		kgo.TransactionalID("ceiling"), kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.ProducerLinger(0),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.RequireStableFetchOffsets())...)
	if err != nil {
		return Ceiling{}, err
	}
	defer sess.Close()
	began := time.Now()
	var moved int64
	for moved < n {
		fetches := sess.PollFetches(ctx)
		if err := fetches.Err0(); err != nil {
			return Ceiling{}, err
		}
		if err := sess.Begin(); err != nil {
			return Ceiling{}, err
		}
		fetches.EachRecord(func(r *kgo.Record) {
			sess.Produce(ctx, &kgo.Record{Topic: "ceiling.out", Key: r.Key, Value: r.Value, Headers: r.Headers}, nil)
			moved++
		})
		if _, err := sess.End(ctx, kgo.TryCommit); err != nil {
			return Ceiling{}, err
		}
	}
	elapsed := time.Since(began)
	return Ceiling{Records: moved, RecordsPerSecond: float64(moved) / elapsed.Seconds(), ElapsedSeconds: elapsed.Seconds()}, nil
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
	if err := s.EnsureTopics(ctx, adm, partitions, 1); err != nil {
		return 0, err
	}
	for _, t := range []string{orders.InventoryTopic, orders.PaymentTopic, orders.ShippingTopic} {
		if err := saga.EnsureTopic(ctx, adm, t, partitions, 1, nil); err != nil {
			return 0, err
		}
	}
	participants := exec.CommandContext(ctx, self, "participants", "--brokers", brokers, "--registry", registryURL, "--shipping-silent")
	participants.Stdout, participants.Stderr = io.Discard, stderr
	if err := participants.Start(); err != nil {
		return 0, err
	}
	defer func() { _ = participants.Process.Signal(os.Interrupt); _ = participants.Wait() }()

	serde, err := schema.NewSerde(registryURL, schema.WithSubjectNameStrategy(schema.RecordNameStrategy))
	if err != nil {
		return 0, err
	}
	rt, err := saga.NewRuntime(s, saga.Config{Brokers: []string{brokers}, Registry: serde})
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
	before := liveHeap()
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
