package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"math"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sagapipe/sagapipe/saga"
)

// BenchResult is what `orchestrator bench` measures, also written as JSON.
// Every scenario runs Runs times. The single-run fields (throughput,
// half_rate, ceiling, slow_participants, recovery, ...) hold the median
// run, as before issue 18; the *_runs fields hold every run and spreads
// the least, median and greatest of each figure.
type BenchResult struct {
	Sagas       int     `json:"sagas"`
	Concurrency int     `json:"concurrency"`
	Partitions  int     `json:"partitions"`
	GoMaxProcs  int     `json:"gomaxprocs"`
	Runs        int     `json:"runs"`
	Machine     Machine `json:"machine"`
	Throughput  Run     `json:"throughput"`
	HalfRate    Run     `json:"half_rate"`
	Ceiling     Ceiling `json:"ceiling"`
	// Ratio is the saga run's records/s over the ceiling's (its input
	// produced before the clock): the figure before issue 18, which
	// compares unlike units. NormalizedRatio replaces it.
	Ratio float64 `json:"ratio_to_ceiling"`
	// NormalizedRatio is the saga run's broker operations per second over
	// the ceiling's with its input produced inside the window, run by run,
	// median; NormalizedRatioTransformOnly the same against the ceiling
	// with its input produced before the clock.
	NormalizedRatio              float64 `json:"normalized_ratio"`
	NormalizedRatioTransformOnly float64 `json:"normalized_ratio_transform_only"`
	// NormalizedRatioCPU is the same comparison in CPU time: the ceiling's
	// (input in the window) CPU per broker operation over the saga run's,
	// run by run, median. On a quiet machine it is close to
	// NormalizedRatio; on a shared one it varies less. TracedCPURatio is
	// likewise the untraced run's CPU per saga over the traced run's.
	NormalizedRatioCPU float64 `json:"normalized_ratio_cpu"`
	// OpsPerSaga is the broker operations (produces and consumes) one saga
	// took, counted, median over the throughput runs.
	OpsPerSaga float64 `json:"broker_ops_per_saga"`
	// Traced is the throughput scenario with every span exported over
	// OTLP to a receiver in this process that decodes and drops them;
	// MetricsOnly with the same telemetry set up and no span exported.
	// TracedRatio is the traced run's sagas/s, counted until its last
	// span arrived, over the untraced run's beside it, median;
	// TracedRatioLastSaga counts it until its last saga finished only
	// (spans still queued then are exported after that clock stops).
	// TracedCPURatio is the untraced run's CPU per saga over the traced
	// run's (its flush included). MetricsOnlyRatio is the metrics-only
	// run's sagas/s over the untraced run's.
	Traced              *Run    `json:"traced,omitempty"`
	MetricsOnly         *Run    `json:"metrics_only,omitempty"`
	TracedRatio         float64 `json:"traced_ratio,omitempty"`
	TracedRatioLastSaga float64 `json:"traced_ratio_last_saga,omitempty"`
	TracedCPURatio      float64 `json:"traced_cpu_ratio,omitempty"`
	// TracedCPURatioSenderOnly leaves the in-process receiver's CPU out
	// of the traced run's.
	TracedCPURatioSenderOnly float64 `json:"traced_cpu_ratio_sender_only,omitempty"`
	// SpansPerSagaCalibrated is what a small traced run (200 sagas, 20 in
	// flight) exports per saga; TracedQueue the batch span processor's
	// queue in the traced runs (OTEL_BSP_MAX_QUEUE_SIZE, 0: the SDK's).
	SpansPerSagaCalibrated float64 `json:"spans_per_saga_calibrated,omitempty"`
	TracedQueue            int     `json:"traced_queue,omitempty"`
	MetricsOnlyRatio       float64 `json:"metrics_only_ratio,omitempty"`
	// SpanFloor is the span floor's median run (by CPU per span with
	// sagapipe's attributes), measured after the throughput runs: what the
	// OTel SDK, its OTLP exporter and the receiver cost per span with no
	// sagapipe code, and the traced ratio that allows beside the untraced
	// run of the same index (bench_spanfloor.go). The bound is on CPU per
	// saga (TracedCPURatio); sagas/s follow it when both runs are
	// CPU-bound, within their ±10% noise.
	SpanFloor *SpanFloors `json:"span_floor,omitempty"`
	// InFlightBytesPerSaga is the orchestrator's heap growth per saga
	// held in flight, the broker and participants in other processes.
	InFlightBytesPerSaga float64 `json:"in_flight_bytes_per_saga"`
	InFlightSagas        int     `json:"in_flight_sagas"`
	// OrchestratorAlone is the orders saga with the broker and the
	// participants in their own processes: this process's allocations per
	// saga are the orchestrator's (and the storefront's).
	OrchestratorAlone *OrchestratorAlone `json:"orchestrator_alone,omitempty"`
	// SlowParticipants is the orders saga with 5 ms of handling per
	// command in every participant: what concurrency within a partition
	// buys (issue 13).
	SlowParticipants *Run `json:"slow_participants,omitempty"`
	// Recovery and RecoveryBaseline are the recovery scenario with a long
	// history of closed sagas and with a short one.
	Recovery         *Recovery `json:"recovery,omitempty"`
	RecoveryBaseline *Recovery `json:"recovery_baseline,omitempty"`
	// RecoveryHeapRatio is the long history's heap after takeover over the
	// short one's (medians).
	RecoveryHeapRatio float64 `json:"recovery_heap_ratio,omitempty"`
	// FloorRatio is the throughput runs' sagas/s over the floor's (the
	// same message flow with no saga logic, see Floor), run by run,
	// median: the share of the transport's best that sagapipe keeps.
	FloorRatio float64 `json:"floor_ratio,omitempty"`

	ThroughputRuns           []Run               `json:"throughput_runs,omitempty"`
	TracedRuns               []Run               `json:"traced_runs,omitempty"`
	MetricsOnlyRuns          []Run               `json:"metrics_only_runs,omitempty"`
	CeilingRuns              []Ceiling           `json:"ceiling_runs,omitempty"`
	HalfRateRuns             []Run               `json:"half_rate_runs,omitempty"`
	InFlightBytesPerSagaRuns []float64           `json:"in_flight_bytes_per_saga_runs,omitempty"`
	SlowParticipantsRuns     []Run               `json:"slow_participants_runs,omitempty"`
	OrchestratorAloneRuns    []OrchestratorAlone `json:"orchestrator_alone_runs,omitempty"`
	RecoveryRuns             []Recovery          `json:"recovery_runs,omitempty"`
	RecoveryBaselineRuns     []Recovery          `json:"recovery_baseline_runs,omitempty"`
	FloorRuns                []Floor             `json:"floor_runs,omitempty"`
	SpanFloorRuns            []SpanFloors        `json:"span_floor_runs,omitempty"`
	// HalfRateFloorRuns are the floor placing the half-rate runs' sagas at
	// their rate, one beside each: the latency the flow allows there.
	HalfRateFloorRuns []Floor           `json:"half_rate_floor_runs,omitempty"`
	Spreads           map[string]Spread `json:"spreads,omitempty"`
	Targets           Targets           `json:"targets"`
	Goals             Goals             `json:"goals_issue_18"`
}

// Run is one pass of the orders saga end to end.
type Run struct {
	SagasPerSecond   float64 `json:"sagas_per_second"`
	P50Millis        float64 `json:"p50_ms"`
	P99Millis        float64 `json:"p99_ms"`
	Records          int64   `json:"records"`
	RecordsPerSecond float64 `json:"records_per_second"`
	// AllocsPerSaga and BytesPerSaga are the whole process's (broker,
	// registry, participants and telemetry included), in the window
	// CPUMicrosPerSaga says.
	AllocsPerSaga float64 `json:"allocs_per_saga"`
	BytesPerSaga  float64 `json:"alloc_bytes_per_saga"`
	// PeakRSSBytes is the resident set's high-water mark during this run
	// (reset before it, see Machine.PeakRSSResets); PeakHeapBytes the
	// heap's, sampled every 10 ms.
	PeakRSSBytes   int64      `json:"peak_rss_bytes"`
	PeakHeapBytes  uint64     `json:"peak_heap_bytes"`
	ElapsedSeconds float64    `json:"elapsed_seconds"`
	RateLimit      float64    `json:"rate_limit,omitempty"`
	Ops            *BrokerOps `json:"broker_ops,omitempty"`
	OpsPerSaga     float64    `json:"broker_ops_per_saga,omitempty"`
	OpsPerSecond   float64    `json:"broker_ops_per_second,omitempty"`
	// CPUMicrosPerSaga and CPUMicrosPerOp are this process's CPU time
	// (user and system, everything in it) from placing the first measured
	// order to the last one finishing (a traced run's final flush added),
	// per saga and per broker operation: steadier than sagas/s on a shared
	// machine. AllocsPerSaga and BytesPerSaga are of the same window.
	CPUMicrosPerSaga float64 `json:"cpu_us_per_saga,omitempty"`
	CPUMicrosPerOp   float64 `json:"cpu_us_per_broker_op,omitempty"`
	// Telemetry is "" (otel's no-op globals), "metrics" or "traced".
	Telemetry string `json:"telemetry,omitempty"`
	// SpansPerSaga is what the OTLP receiver got, per saga, in a traced
	// run: fewer than a small run's means the exporter dropped spans.
	SpansPerSaga float64 `json:"spans_per_saga,omitempty"`
	// SpansDroppedPerSaga is how many fewer than the calibration run's
	// (a small traced run that drops none) the receiver got per saga: the
	// batch span processor drops spans when its queue is full.
	SpansDroppedPerSaga float64 `json:"spans_dropped_per_saga,omitempty"`
	// SpansQueuedAtEndPerSaga is the spans, per saga, the receiver got
	// after the last saga finished (queued in the batch span processors);
	// SagasPerSecondAllExported counts the run until they all arrived.
	SpansQueuedAtEndPerSaga   float64 `json:"spans_queued_at_end_per_saga,omitempty"`
	SagasPerSecondAllExported float64 `json:"sagas_per_second_all_spans_exported,omitempty"`
	// AttributesPerSpan is what the receiver got per span, on average.
	AttributesPerSpan float64 `json:"attributes_per_span,omitempty"`
	// ReceiverCPUMicrosPerSaga is the in-process OTLP receiver's share of
	// CPUMicrosPerSaga (OTLP/HTTP only): decoding that a collector would
	// do on another machine.
	ReceiverCPUMicrosPerSaga float64 `json:"otlp_receiver_cpu_us_per_saga,omitempty"`
	// ReadyMillis is how long the services took to be ready after they
	// were started (the orders are placed after). WarmUpSagas were placed
	// and finished before the measured ones, WarmUpP99Millis their p99:
	// the half-rate runs' latency is a running service's, not a fresh
	// process's. The per-saga figures (CPU, allocations, broker
	// operations) count the warm-up's sagas too.
	ReadyMillis     float64 `json:"ready_ms"`
	WarmUpSagas     int     `json:"warm_up_sagas,omitempty"`
	WarmUpP99Millis float64 `json:"warm_up_p99_ms,omitempty"`
}

// Ceiling is the plain kgo transactional read-process-write loop. Its
// top-level fields are the run with its input produced before the clock
// (transform only, the ceiling before issue 18); InputInWindow is the same
// with the input produced by a concurrent producer inside the window.
type Ceiling struct {
	CeilingWindow
	InputInWindow CeilingWindow `json:"input_in_window"`
}

// CeilingWindow is one measured ceiling run.
type CeilingWindow struct {
	Records          int64     `json:"records"`
	RecordsPerSecond float64   `json:"records_per_second"`
	ElapsedSeconds   float64   `json:"elapsed_seconds"`
	Ops              BrokerOps `json:"broker_ops"`
	OpsPerSecond     float64   `json:"broker_ops_per_second"`
	// CPUMicrosPerOp is this process's CPU time per broker operation.
	CPUMicrosPerOp float64 `json:"cpu_us_per_broker_op"`
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

// Goals are issue 18's, on the medians; a figure not measured in this run
// does not meet its goal.
type Goals struct {
	SagasPerSecond  bool `json:"untraced_at_least_20000_sagas_per_second"`
	NormalizedRatio bool `json:"normalized_ratio_at_least_0_5"`
	Traced          bool `json:"traced_at_least_0_7_of_untraced"`
	HalfRateP99     bool `json:"p99_at_half_rate_at_most_50ms"`
	// OwnAllocs is judged on the orchestrator alone's process, which
	// counts the libraries it calls (kgo, avro, otel) as its own.
	OwnAllocs     bool   `json:"orchestrator_at_most_300_allocs_per_saga"`
	InFlightBytes bool   `json:"in_flight_at_most_1KiB"`
	AllMet        bool   `json:"all_met"`
	Missed        string `json:"missed,omitempty"`
}

// benchConfig is runBench's flags.
type benchConfig struct {
	sagas, concurrency, inFlight, runs, tracedQueue int
	partitions                                      int32
	skipMemory, skipRecovery, skipTraced            bool
	cpuProfile, only, otlpProtocol, profileDir      string
	recoveryHistory, recoveryBaseline, recoveryLive int
	slowSagas                                       int
	rate                                            float64
	rateSet                                         bool // --rate was given
}

func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	n := fs.Int("sagas", 20000, "sagas per throughput run")
	concurrency := fs.Int("concurrency", 2000, "sagas in flight at most")
	partitions := fs.Int("partitions", 3, "partitions of every topic")
	inFlight := fs.Int("in-flight", 10000, "sagas held in flight for the memory measurement")
	runs := fs.Int("runs", 3, "runs of every scenario (min / median / max are printed; the JSON's single-run fields are the median run)")
	out := fs.String("out", "bench-results.json", "where to write the results as JSON (empty: nowhere)")
	skipMemory := fs.Bool("skip-memory", false, "skip the in-flight memory and orchestrator-alone measurements (they start the broker and participants as processes)")
	skipTraced := fs.Bool("skip-traced", false, "skip the traced and metrics-only throughput runs")
	tracedQueue := fs.Int("traced-queue", 1<<20, "the batch span processor's queue in the traced runs (OTEL_BSP_MAX_QUEUE_SIZE): large, so that every span is exported; 0 keeps the SDK's default (2048), which drops spans when the exporter falls behind")
	otlpProtocol := fs.String("otlp-protocol", "http/protobuf", "how the traced run exports spans to the in-process receiver: http/protobuf or grpc")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of one extra throughput run (not in the figures) to this file (go tool pprof); with --only recovery, of the fresh takeover; with --only half-rate, floor or span-floor, of its runs")
	profileDir := fs.String("profile-dir", "bench-profile", `with --only profile: where the CPU and allocation profiles and their summaries go`)
	recoveryHistory := fs.Int("recovery-history", 1_000_000, "closed sagas in the recovery scenario's history")
	recoveryBaseline := fs.Int("recovery-baseline", 10_000, "closed sagas in the recovery scenario's short-history baseline")
	recoveryInFlight := fs.Int("recovery-in-flight", 10_000, "sagas in flight in the recovery scenario")
	only := fs.String("only", "", `run one scenario only: "recovery", "slow" (participants taking 5 ms per command), "profile" (the orchestrator alone and the throughput scenario with every allocation recorded, then under the CPU profiler, into --profile-dir), "half-rate" (--sagas/2 sagas placed at --rate after a warm-up), "floor" (the orders saga's message flow with no saga logic), "span-floor" (what the OTel SDK, its OTLP exporter and the receiver cost per span, no sagapipe code) or "in-flight" (the in-flight memory measurement once, in this process: what the harness runs in a fresh process per run)`)
	slowSagas := fs.Int("slow-sagas", 5000, "sagas in the slow-participants scenario (500 in flight, 5 ms per command)")
	rate := fs.Float64("rate", 4000, `with --only half-rate or floor: sagas placed per second (the full harness places the half-rate runs' and the floor's beside them at half its measured throughput)`)
	skipRecovery := fs.Bool("skip-recovery", false, "skip the recovery scenario (it starts the broker and participants as processes)")
	if code := parseFlags(fs, args, stderr); code >= 0 {
		return code
	}
	problems := atLeastOne(nil, map[string]int{"--sagas": *n, "--concurrency": *concurrency, "--partitions": *partitions, "--in-flight": *inFlight, "--runs": *runs,
		"--recovery-history": *recoveryHistory, "--recovery-baseline": *recoveryBaseline, "--recovery-in-flight": *recoveryInFlight, "--slow-sagas": *slowSagas})
	if !slices.Contains([]string{"", "recovery", "slow", "profile", "half-rate", "floor", "span-floor", "in-flight"}, *only) {
		problems = append(problems, fmt.Errorf("--only %q: want \"recovery\", \"slow\", \"profile\", \"half-rate\", \"floor\", \"span-floor\" or \"in-flight\"", *only))
	}
	if !(*rate > 0) || math.IsInf(*rate, 0) {
		problems = append(problems, fmt.Errorf("--rate %v: must be a number above 0", *rate))
	}
	rateSet := false
	fs.Visit(func(f *flag.Flag) {
		rateSet = rateSet || f.Name == "rate"
		if f.Name == "rate" && *only != "half-rate" && *only != "floor" {
			problems = append(problems, errors.New("--rate: only with --only half-rate or --only floor (the full harness places the half-rate orders at half its measured throughput)"))
		}
	})
	if *otlpProtocol != "http/protobuf" && *otlpProtocol != "grpc" {
		problems = append(problems, fmt.Errorf("--otlp-protocol %q: want http/protobuf or grpc", *otlpProtocol))
	}
	if *tracedQueue < 0 {
		problems = append(problems, fmt.Errorf("--traced-queue %d: must be 0 (the SDK's default) or more", *tracedQueue))
	}
	if len(problems) > 0 {
		fmt.Fprintf(stderr, "orchestrator bench: %v\n", errors.Join(problems...))
		return 2
	}
	cfg := benchConfig{tracedQueue: *tracedQueue, sagas: *n, concurrency: *concurrency, inFlight: *inFlight, runs: *runs, partitions: int32(*partitions),
		skipMemory: *skipMemory, skipRecovery: *skipRecovery, skipTraced: *skipTraced, cpuProfile: *cpuProfile, only: *only,
		otlpProtocol: *otlpProtocol, profileDir: *profileDir, recoveryHistory: *recoveryHistory, recoveryBaseline: *recoveryBaseline,
		recoveryLive: *recoveryInFlight, slowSagas: *slowSagas, rate: *rate, rateSet: rateSet}
	if cfg.only == "in-flight" {
		b, err := benchInFlight(ctx, cfg.inFlight, cfg.partitions, stderr)
		if err != nil {
			fmt.Fprintf(stderr, "orchestrator bench: in-flight memory: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "%s%.1f\n", inFlightLine, b)
		return 0
	}
	if cfg.only == "profile" {
		return benchProfile(ctx, cfg, stdout, stderr)
	}
	res := BenchResult{Sagas: cfg.sagas, Concurrency: cfg.concurrency, Partitions: *partitions, GoMaxProcs: runtime.GOMAXPROCS(0),
		Runs: cfg.runs, Machine: machine(), Spreads: map[string]Spread{}}
	res.Machine.PeakRSSResets = resetPeakRSS()
	printMachine(stdout, res.Machine)
	fail := func(err error) int {
		fmt.Fprintf(stderr, "orchestrator bench: %v\n", err)
		return 1
	}

	if cfg.only == "" {
		if err := benchSagas(ctx, &res, cfg, stdout, stderr); err != nil {
			return fail(err)
		}
	}
	if cfg.only == "floor" || cfg.only == "half-rate" {
		stop, err := startCPUProfile(cfg.cpuProfile)
		if err != nil {
			return fail(err)
		}
		if cfg.only == "floor" {
			err = benchFloors(ctx, &res, cfg, stdout)
		} else {
			err = benchHalfRate(ctx, &res, cfg, cfg.rate, "", stdout)
		}
		if err := errors.Join(err, stop()); err != nil {
			return fail(err)
		}
	}
	if cfg.only == "span-floor" {
		if err := benchSpanFloors(ctx, &res, cfg, stdout); err != nil {
			return fail(err)
		}
	}
	if cfg.only == "" || cfg.only == "slow" {
		fmt.Fprintf(stdout, "slow participants: %d sagas, 500 in flight, every participant taking 5 ms per command\n", cfg.slowSagas)
		for i := range cfg.runs {
			slow, err := benchRun(ctx, runSpec{sagas: cfg.slowSagas, concurrency: 500, partitions: cfg.partitions, latency: 5 * time.Millisecond})
			if err != nil {
				return fail(err)
			}
			printRun(stdout, i, slow)
			res.SlowParticipantsRuns = append(res.SlowParticipantsRuns, slow)
		}
		res.SlowParticipants = ptr(medianRun(res.SlowParticipantsRuns, func(r Run) float64 { return r.SagasPerSecond }))
		addRunSpreads(res.Spreads, "slow_participants", res.SlowParticipantsRuns)
		printSpread(stdout, res.Spreads, "slow_participants")
	}
	if (!cfg.skipRecovery && cfg.only == "") || cfg.only == "recovery" {
		recoveryProfile := ""
		if cfg.only == "recovery" {
			recoveryProfile = cfg.cpuProfile
		}
		if err := benchRecoveries(ctx, &res, cfg, recoveryProfile, stdout, stderr); err != nil {
			return fail(err)
		}
	}
	if cfg.cpuProfile != "" && cfg.only == "" {
		fmt.Fprintf(stdout, "cpu profile: one more throughput run, not in the figures, profiled into %s\n", cfg.cpuProfile)
		if err := profileCPU(ctx, runSpec{sagas: cfg.sagas, concurrency: cfg.concurrency, partitions: cfg.partitions}, cfg.cpuProfile); err != nil {
			return fail(err)
		}
	}

	res.Machine.LoadAfter = loadAverage()
	judge(&res, cfg, stdout)
	if *out != "" {
		data, _ := json.MarshalIndent(res, "", "  ")
		if err := os.WriteFile(*out, append(data, '\n'), 0o644); err != nil {
			return fail(err)
		}
		fmt.Fprintf(stdout, "results written to %s\n", *out)
	}
	return 0
}

// judge sets the targets and goals and prints which were missed.
func judge(res *BenchResult, cfg benchConfig, stdout io.Writer) {
	t := &res.Targets
	t.SagasPerSecond = res.Throughput.SagasPerSecond >= 5000
	t.Ratio = res.Ratio >= 0.3
	t.HalfRateP99 = res.HalfRate.P99Millis > 0 && res.HalfRate.P99Millis <= 250
	t.InFlightBytes = !cfg.skipMemory && res.InFlightSagas > 0 && res.InFlightBytesPerSaga <= 2048
	t.SlowParticipants = res.SlowParticipants != nil && res.SlowParticipants.SagasPerSecond >= 1500
	if rec := res.Recovery; rec != nil {
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
	if cfg.only == "" || cfg.only == "recovery" {
		targets = append(targets, target{"recovery heap ≤ 1.5× the short history's", t.RecoveryHeap}, target{"restart ready ≤ 1 s", t.RecoveryRestart},
			target{"fresh takeover ≤ 1 s per 100k in flight + 1 s per 1M closed", t.RecoveryFresh}, target{"no journal read in recovery", t.RecoveryNoJournal})
	}
	if cfg.only == "" || cfg.only == "slow" {
		targets = append(targets, target{"≥ 1,500 sagas/s with participants taking 5 ms", t.SlowParticipants})
	}
	if cfg.only == "" || cfg.only == "half-rate" {
		targets = append(targets, target{"p99 ≤ 250 ms at half rate", t.HalfRateP99})
	}
	if cfg.only == "" {
		targets = append(targets, []target{{"≥ 5,000 sagas/s", t.SagasPerSecond}, {"ratio ≥ 0.3 (records/s, the figure before issue 18)", t.Ratio},
			{"≤ 2 KiB per in-flight saga", t.InFlightBytes}}...)
	}
	var missed []string
	for _, target := range targets {
		if !target.met {
			missed = append(missed, target.name)
		}
	}
	t.AllMet = len(targets) > 0 && len(missed) == 0
	t.FailedExplanation = strings.Join(missed, "; ")
	switch {
	case len(targets) == 0: // a scenario no target is about
	case t.AllMet:
		fmt.Fprintf(stdout, "targets (issues 7 and 11): all %d met\n", len(targets))
	default:
		fmt.Fprintf(stdout, "targets (issues 7 and 11) missed: %s\n", t.FailedExplanation)
	}
	if cfg.only == "half-rate" {
		fmt.Fprintf(stdout, "goal (issue 18) p99 ≤ 50 ms at half rate: met %v\n", res.HalfRate.P99Millis > 0 && res.HalfRate.P99Millis <= 50)
	}
	if cfg.only != "" {
		return
	}

	g := &res.Goals
	g.SagasPerSecond = res.Throughput.SagasPerSecond >= 20000
	g.NormalizedRatio = res.NormalizedRatio >= 0.5
	g.Traced = res.Traced != nil && res.TracedRatio >= 0.7
	g.HalfRateP99 = res.HalfRate.P99Millis > 0 && res.HalfRate.P99Millis <= 50
	g.OwnAllocs = res.OrchestratorAlone != nil && res.OrchestratorAlone.AllocsPerSaga <= 300
	g.InFlightBytes = !cfg.skipMemory && res.InFlightSagas > 0 && res.InFlightBytesPerSaga <= 1024
	goals := []target{{"≥ 20,000 sagas/s untraced", g.SagasPerSecond}, {"normalized ratio ≥ 0.5", g.NormalizedRatio},
		{"traced ≥ 0.7 of untraced", g.Traced}, {"p99 ≤ 50 ms at half rate", g.HalfRateP99},
		{"≤ 300 allocs per saga in the orchestrator's process (libraries included)", g.OwnAllocs}, {"≤ 1 KiB per in-flight saga", g.InFlightBytes}}
	missed = missed[:0]
	for _, goal := range goals {
		if !goal.met {
			missed = append(missed, goal.name)
		}
	}
	g.AllMet = len(missed) == 0
	g.Missed = strings.Join(missed, "; ")
	if g.AllMet {
		fmt.Fprintf(stdout, "goals (issue 18): all %d met\n", len(goals))
	} else {
		fmt.Fprintf(stdout, "goals (issue 18) missed: %s\n", g.Missed)
	}
}

// benchSagas runs the throughput (untraced, metrics only, traced) and
// ceiling scenarios side by side, run after run, then the half-rate and
// in-flight memory scenarios, into res.
func benchSagas(ctx context.Context, res *BenchResult, cfg benchConfig, stdout, stderr io.Writer) error {
	base := runSpec{sagas: cfg.sagas, concurrency: cfg.concurrency, partitions: cfg.partitions, otlpProtocol: cfg.otlpProtocol, tracedQueue: cfg.tracedQueue}
	beside := "the ceiling"
	if !cfg.skipTraced {
		beside = fmt.Sprintf("a traced one (every span over OTLP %s to a receiver in this process), a metrics-only one and the ceiling", cfg.otlpProtocol)
	}
	fmt.Fprintf(stdout, "throughput: %d sagas, %d in flight, participants in process, embedded stack; each run beside %s and the floor (after a warm-up run not in the figures)\n",
		cfg.sagas, cfg.concurrency, beside)
	// The first run in a process pays for growing the heap and faulting
	// in pages; a short one first keeps that out of the figures.
	warm := base
	warm.sagas = min(cfg.sagas, 2000)
	if _, err := benchRun(ctx, warm); err != nil {
		return fmt.Errorf("warm-up run: %w", err)
	}
	if !cfg.skipTraced {
		calibrate := base
		calibrate.sagas, calibrate.concurrency, calibrate.telemetry = 200, 20, telemetryTraced
		c, err := benchRun(ctx, calibrate)
		if err != nil {
			return fmt.Errorf("traced calibration run: %w", err)
		}
		res.SpansPerSagaCalibrated, res.TracedQueue = c.SpansPerSaga, cfg.tracedQueue
		fmt.Fprintf(stdout, "  traced calibration (200 sagas, 20 in flight): %.2f spans per saga; traced runs' batch span queue: %d\n", c.SpansPerSaga, cfg.tracedQueue)
	}
	var ratios, ratiosTransform, ratiosCPU, traced, tracedLast, tracedCPU, tracedSender, metricsOnly, legacy []float64
	for i := range cfg.runs {
		r, err := benchRun(ctx, base)
		if err != nil {
			return err
		}
		fmt.Fprint(stdout, "  untraced     ")
		printRun(stdout, i, r)
		res.ThroughputRuns = append(res.ThroughputRuns, r)
		if !cfg.skipTraced {
			spec := base
			spec.telemetry = telemetryMetrics
			m, err := benchRun(ctx, spec)
			if err != nil {
				return fmt.Errorf("metrics-only run: %w", err)
			}
			fmt.Fprint(stdout, "  metrics only ")
			printRun(stdout, i, m)
			res.MetricsOnlyRuns = append(res.MetricsOnlyRuns, m)
			spec.telemetry = telemetryTraced
			tr, err := benchRun(ctx, spec)
			if err != nil {
				return fmt.Errorf("traced run: %w", err)
			}
			if dropped := res.SpansPerSagaCalibrated - tr.SpansPerSaga; dropped >= 0.05 {
				tr.SpansDroppedPerSaga = dropped
			}
			fmt.Fprint(stdout, "  traced       ")
			printRun(stdout, i, tr)
			res.TracedRuns = append(res.TracedRuns, tr)
			traced = append(traced, tr.SagasPerSecondAllExported/r.SagasPerSecond)
			tracedLast = append(tracedLast, tr.SagasPerSecond/r.SagasPerSecond)
			tracedCPU = append(tracedCPU, r.CPUMicrosPerSaga/tr.CPUMicrosPerSaga)
			tracedSender = append(tracedSender, r.CPUMicrosPerSaga/(tr.CPUMicrosPerSaga-tr.ReceiverCPUMicrosPerSaga))
			metricsOnly = append(metricsOnly, m.SagasPerSecond/r.SagasPerSecond)
		}
		var c Ceiling
		if c.CeilingWindow, err = benchCeiling(ctx, r.Records, cfg.partitions, false); err != nil {
			return fmt.Errorf("ceiling: %w", err)
		}
		if c.InputInWindow, err = benchCeiling(ctx, r.Records, cfg.partitions, true); err != nil {
			return fmt.Errorf("ceiling with its input in the window: %w", err)
		}
		res.CeilingRuns = append(res.CeilingRuns, c)
		fmt.Fprintf(stdout, "  ceiling      run %d: %d records; input produced before the clock: %.0f records/s, %.0f broker ops/s; input produced in the window: %.0f broker ops/s, %.2f µs CPU per op\n",
			i+1, c.Records, c.RecordsPerSecond, c.OpsPerSecond, c.InputInWindow.OpsPerSecond, c.InputInWindow.CPUMicrosPerOp)
		ratios = append(ratios, r.OpsPerSecond/c.InputInWindow.OpsPerSecond)
		ratiosTransform = append(ratiosTransform, r.OpsPerSecond/c.OpsPerSecond)
		legacy = append(legacy, r.RecordsPerSecond/c.RecordsPerSecond)
		ratiosCPU = append(ratiosCPU, c.InputInWindow.CPUMicrosPerOp/r.CPUMicrosPerOp)
		if err := floorRun(ctx, res, cfg, i, stdout); err != nil {
			return err
		}
	}
	if !cfg.skipTraced {
		// After every throughput run, so that no ceiling or floor runs
		// beside its garbage; each bound with its run's untraced CPU.
		for i, r := range res.ThroughputRuns {
			floors, err := measureSpanFloors(ctx, cfg.otlpProtocol, cfg.tracedQueue, cfg.sagas, res.SpansPerSagaCalibrated)
			if err != nil {
				return err
			}
			floors.bound(r.CPUMicrosPerSaga)
			printSpanFloors(stdout, i, floors)
			res.SpanFloorRuns = append(res.SpanFloorRuns, floors)
		}
	}
	sagasPerSecond := func(r Run) float64 { return r.SagasPerSecond }
	mid := medianIndex(res.ThroughputRuns, sagasPerSecond)
	res.Throughput, res.Ceiling = res.ThroughputRuns[mid], res.CeilingRuns[mid]
	addRunSpreads(res.Spreads, "throughput", res.ThroughputRuns)
	res.Spreads["ceiling.broker_ops_per_second"] = spreadOf(mapRuns(res.CeilingRuns, func(c Ceiling) float64 { return c.OpsPerSecond }))
	res.Spreads["ceiling.input_in_window.broker_ops_per_second"] = spreadOf(mapRuns(res.CeilingRuns, func(c Ceiling) float64 { return c.InputInWindow.OpsPerSecond }))
	res.Spreads["normalized_ratio"] = spreadOf(ratios)
	res.Spreads["normalized_ratio_transform_only"] = spreadOf(ratiosTransform)
	res.Spreads["ratio_to_ceiling"] = spreadOf(legacy)
	res.Spreads["normalized_ratio_cpu"] = spreadOf(ratiosCPU)
	res.Spreads["ceiling.input_in_window.cpu_us_per_broker_op"] = spreadOf(mapRuns(res.CeilingRuns, func(c Ceiling) float64 { return c.InputInWindow.CPUMicrosPerOp }))
	res.NormalizedRatioCPU = res.Spreads["normalized_ratio_cpu"].Median
	res.NormalizedRatio, res.NormalizedRatioTransformOnly, res.Ratio = res.Spreads["normalized_ratio"].Median, res.Spreads["normalized_ratio_transform_only"].Median, res.Spreads["ratio_to_ceiling"].Median
	res.OpsPerSaga = res.Spreads["throughput.broker_ops_per_saga"].Median
	fmt.Fprintln(stdout, "  over the runs (min / median / max):")
	printSpread(stdout, res.Spreads, "throughput")
	ops := res.Throughput.Ops
	fmt.Fprintf(stdout, "    broker operations per saga, counted: %.2f (%.2f produces, %.2f consumes); by topic: %s\n", res.Throughput.OpsPerSaga,
		float64(ops.Produced)/float64(cfg.sagas), float64(ops.Consumed)/float64(cfg.sagas), perSaga(ops, cfg.sagas))
	fmt.Fprintf(stdout, "    ceiling broker ops/s, input before the clock: %s; input in the window: %s\n",
		res.Spreads["ceiling.broker_ops_per_second"].format("%.0f"), res.Spreads["ceiling.input_in_window.broker_ops_per_second"].format("%.0f"))
	fmt.Fprintf(stdout, "    normalized ratio (broker ops/s over the ceiling's, input in the window): %s; against the ceiling with its input before the clock: %s; records/s as before issue 18: %s\n",
		res.Spreads["normalized_ratio"].format("%.3f"), res.Spreads["normalized_ratio_transform_only"].format("%.3f"), res.Spreads["ratio_to_ceiling"].format("%.3f"))
	fmt.Fprintf(stdout, "    CPU per broker operation: saga run %s µs, ceiling (input in the window) %s µs: normalized ratio by CPU %s\n",
		res.Spreads["throughput.cpu_us_per_broker_op"].format("%.2f"), res.Spreads["ceiling.input_in_window.cpu_us_per_broker_op"].format("%.2f"),
		res.Spreads["normalized_ratio_cpu"].format("%.3f"))
	summarizeFloors(res, stdout)
	if !cfg.skipTraced {
		res.Traced = ptr(res.TracedRuns[medianIndex(res.TracedRuns, sagasPerSecond)])
		res.MetricsOnly = ptr(res.MetricsOnlyRuns[medianIndex(res.MetricsOnlyRuns, sagasPerSecond)])
		addRunSpreads(res.Spreads, "traced", res.TracedRuns)
		addRunSpreads(res.Spreads, "metrics_only", res.MetricsOnlyRuns)
		res.Spreads["traced_ratio"], res.Spreads["metrics_only_ratio"] = spreadOf(traced), spreadOf(metricsOnly)
		res.Spreads["traced_cpu_ratio"] = spreadOf(tracedCPU)
		res.Spreads["traced_ratio_last_saga"] = spreadOf(tracedLast)
		res.Spreads["traced.sagas_per_second_all_spans_exported"] = spreadOf(mapRuns(res.TracedRuns, func(r Run) float64 { return r.SagasPerSecondAllExported }))
		res.Spreads["traced.spans_queued_at_end_per_saga"] = spreadOf(mapRuns(res.TracedRuns, func(r Run) float64 { return r.SpansQueuedAtEndPerSaga }))
		res.TracedRatioLastSaga = res.Spreads["traced_ratio_last_saga"].Median
		res.Spreads["traced_cpu_ratio_sender_only"] = spreadOf(tracedSender)
		res.Spreads["traced.otlp_receiver_cpu_us_per_saga"] = spreadOf(mapRuns(res.TracedRuns, func(r Run) float64 { return r.ReceiverCPUMicrosPerSaga }))
		res.TracedCPURatioSenderOnly = res.Spreads["traced_cpu_ratio_sender_only"].Median
		res.TracedCPURatio = res.Spreads["traced_cpu_ratio"].Median
		res.TracedRatio, res.MetricsOnlyRatio = res.Spreads["traced_ratio"].Median, res.Spreads["metrics_only_ratio"].Median
		fmt.Fprintf(stdout, "    traced: %s sagas/s until the last span arrived, %s of untraced (run by run); until the last saga finished %s sagas/s, %s of untraced, %s spans per saga still queued then; %s spans per saga exported; CPU per saga %s µs traced against %s µs untraced (ratio %s), of which %s µs in the in-process OTLP receiver (ratio without it %s); metrics only: %s of untraced, CPU per saga %s µs\n",
			res.Spreads["traced.sagas_per_second_all_spans_exported"].format("%.0f"), res.Spreads["traced_ratio"].format("%.3f"),
			res.Spreads["traced.sagas_per_second"].format("%.0f"), res.Spreads["traced_ratio_last_saga"].format("%.3f"),
			res.Spreads["traced.spans_queued_at_end_per_saga"].format("%.2f"),
			res.Spreads["traced.spans_per_saga"].format("%.2f"), res.Spreads["traced.cpu_us_per_saga"].format("%.0f"),
			res.Spreads["throughput.cpu_us_per_saga"].format("%.0f"), res.Spreads["traced_cpu_ratio"].format("%.3f"),
			res.Spreads["traced.otlp_receiver_cpu_us_per_saga"].format("%.0f"), res.Spreads["traced_cpu_ratio_sender_only"].format("%.3f"), res.Spreads["metrics_only_ratio"].format("%.3f"),
			res.Spreads["metrics_only.cpu_us_per_saga"].format("%.0f"))
		summarizeSpanFloors(res, stdout)
	}

	if err := benchHalfRate(ctx, res, cfg, res.Throughput.SagasPerSecond/2, " (half the median throughput)", stdout); err != nil {
		return err
	}

	if !cfg.skipMemory {
		fmt.Fprintf(stdout, "in-flight memory: %d sagas held at shipping; broker and participants in their own processes\n", cfg.inFlight)
		for range cfg.runs {
			b, err := inFlightInChild(ctx, cfg, stderr)
			if err != nil {
				return fmt.Errorf("in-flight memory: %w", err)
			}
			fmt.Fprintf(stdout, "  %.0f B of orchestrator heap per in-flight saga\n", b)
			res.InFlightBytesPerSagaRuns = append(res.InFlightBytesPerSagaRuns, b)
		}
		res.Spreads["in_flight_bytes_per_saga"] = spreadOf(res.InFlightBytesPerSagaRuns)
		res.InFlightBytesPerSaga, res.InFlightSagas = res.Spreads["in_flight_bytes_per_saga"].Median, cfg.inFlight
		fmt.Fprintf(stdout, "  over the runs: %s B per in-flight saga\n", res.Spreads["in_flight_bytes_per_saga"].format("%.0f"))

		fmt.Fprintf(stdout, "orchestrator alone: %d sagas, %d in flight; broker and participants in their own processes, the runtime and the storefront in this one\n", cfg.sagas, cfg.concurrency)
		for i := range cfg.runs {
			a, err := benchOrchestratorAlone(ctx, cfg.sagas, cfg.concurrency, cfg.partitions, stderr, nil)
			if err != nil {
				return fmt.Errorf("orchestrator alone: %w", err)
			}
			fmt.Fprintf(stdout, "run %d: %.0f sagas/s, %.0f allocs and %.1f KB allocated per saga in this process\n", i+1, a.SagasPerSecond, a.AllocsPerSaga, a.BytesPerSaga/1000)
			res.OrchestratorAloneRuns = append(res.OrchestratorAloneRuns, a)
		}
		allocs := func(a OrchestratorAlone) float64 { return a.AllocsPerSaga }
		res.OrchestratorAlone = ptr(res.OrchestratorAloneRuns[medianIndex(res.OrchestratorAloneRuns, allocs)])
		res.Spreads["orchestrator_alone.allocs_per_saga"] = spreadOf(mapRuns(res.OrchestratorAloneRuns, allocs))
		res.Spreads["orchestrator_alone.alloc_bytes_per_saga"] = spreadOf(mapRuns(res.OrchestratorAloneRuns, func(a OrchestratorAlone) float64 { return a.BytesPerSaga }))
		res.Spreads["orchestrator_alone.sagas_per_second"] = spreadOf(mapRuns(res.OrchestratorAloneRuns, func(a OrchestratorAlone) float64 { return a.SagasPerSecond }))
		fmt.Fprintf(stdout, "    over the runs: %s sagas/s, %s allocs and %s B allocated per saga in the orchestrator's process (where they come from: bench --only profile)\n",
			res.Spreads["orchestrator_alone.sagas_per_second"].format("%.0f"), res.Spreads["orchestrator_alone.allocs_per_saga"].format("%.0f"),
			res.Spreads["orchestrator_alone.alloc_bytes_per_saga"].format("%.0f"))
	}
	return nil
}

// benchFloors runs the floor (benchFloor) run after run into res, and
// compares the throughput runs with it when there are any.
func benchFloors(ctx context.Context, res *BenchResult, cfg benchConfig, stdout io.Writer) error {
	fmt.Fprintf(stdout, "floor: the orders saga's message flow with no saga logic (the same transactions and broker operations, plain kgo loops), %d sagas, %d in flight (after a warm-up run not in the figures)\n", cfg.sagas, cfg.concurrency)
	if cfg.rateSet {
		return benchFloorsAtRate(ctx, res, cfg, cfg.rate, stdout)
	}
	if _, err := benchFloor(ctx, min(cfg.sagas, 2000), cfg.concurrency, cfg.partitions, 0, 0); err != nil {
		return fmt.Errorf("floor warm-up run: %w", err)
	}
	for i := range cfg.runs {
		if err := floorRun(ctx, res, cfg, i, stdout); err != nil {
			return err
		}
	}
	summarizeFloors(res, stdout)
	return nil
}

// benchFloorsAtRate is `bench --only floor --rate N`: the floor placing
// cfg.sagas/2 sagas at rate after a warm-up, as the half-rate runs do,
// run after run.
func benchFloorsAtRate(ctx context.Context, res *BenchResult, cfg benchConfig, rate float64, stdout io.Writer) error {
	warmUp := halfRateWarmUp(rate)
	fmt.Fprintf(stdout, "floor at a rate: the orders saga's message flow with no saga logic, %d sagas placed at %.0f sagas/s after %d warm-up sagas placed at it\n", cfg.sagas/2, rate, warmUp)
	for i := range cfg.runs {
		f, err := benchFloor(ctx, cfg.sagas/2, cfg.concurrency, cfg.partitions, rate, warmUp)
		if err != nil {
			return fmt.Errorf("floor at %.0f sagas/s: %w", rate, err)
		}
		printFloorAtRate(stdout, i, f)
		res.HalfRateFloorRuns = append(res.HalfRateFloorRuns, f)
	}
	summarizeFloorsAtRate(res, stdout)
	return nil
}

// halfRateWarmUp is the sagas placed and finished at rate before a
// half-rate run's: half a second's, at least 200.
func halfRateWarmUp(rate float64) int { return max(200, int(rate/2)) }

func printFloorAtRate(w io.Writer, i int, f Floor) {
	fmt.Fprintf(w, "  floor at the same rate, run %d: %.0f sagas/s, p50 %.0f ms, p99 %.0f ms, %.0f µs CPU per saga (the same flow with no saga logic)\n",
		i+1, f.SagasPerSecond, f.P50Millis, f.P99Millis, f.CPUMicrosPerSaga)
}

// summarizeFloorsAtRate prints the spread of the floor's runs at a rate.
func summarizeFloorsAtRate(res *BenchResult, stdout io.Writer) {
	res.Spreads["half_rate_floor.p50_ms"] = spreadOf(mapRuns(res.HalfRateFloorRuns, func(f Floor) float64 { return f.P50Millis }))
	res.Spreads["half_rate_floor.p99_ms"] = spreadOf(mapRuns(res.HalfRateFloorRuns, func(f Floor) float64 { return f.P99Millis }))
	res.Spreads["half_rate_floor.cpu_us_per_saga"] = spreadOf(mapRuns(res.HalfRateFloorRuns, func(f Floor) float64 { return f.CPUMicrosPerSaga }))
	fmt.Fprintf(stdout, "    floor at the same rate (no saga logic): p50 %s ms, p99 %s ms, %s µs CPU per saga\n", res.Spreads["half_rate_floor.p50_ms"].format("%.0f"),
		res.Spreads["half_rate_floor.p99_ms"].format("%.0f"), res.Spreads["half_rate_floor.cpu_us_per_saga"].format("%.0f"))
}

// floorRun runs the floor once into res.
func floorRun(ctx context.Context, res *BenchResult, cfg benchConfig, i int, stdout io.Writer) error {
	f, err := benchFloor(ctx, cfg.sagas, cfg.concurrency, cfg.partitions, 0, 0)
	if err != nil {
		return fmt.Errorf("floor: %w", err)
	}
	fmt.Fprintf(stdout, "  floor        run %d: %.0f sagas/s, p50 %.0f ms, p99 %.0f ms, %.1f broker ops per saga, %.0f µs CPU per saga (the same flow with no saga logic)\n", i+1, f.SagasPerSecond, f.P50Millis, f.P99Millis, f.OpsPerSaga, f.CPUMicrosPerSaga)
	res.FloorRuns = append(res.FloorRuns, f)
	return nil
}

// summarizeFloors prints the floor runs' spread and, beside throughput
// runs, the saga runs' share of the floor, run by run.
func summarizeFloors(res *BenchResult, stdout io.Writer) {
	res.Spreads["floor.sagas_per_second"] = spreadOf(mapRuns(res.FloorRuns, func(f Floor) float64 { return f.SagasPerSecond }))
	res.Spreads["floor.cpu_us_per_saga"] = spreadOf(mapRuns(res.FloorRuns, func(f Floor) float64 { return f.CPUMicrosPerSaga }))
	fmt.Fprintf(stdout, "    floor (the same flow with no saga logic): %s sagas/s, %s µs CPU per saga", res.Spreads["floor.sagas_per_second"].format("%.0f"), res.Spreads["floor.cpu_us_per_saga"].format("%.0f"))
	if len(res.ThroughputRuns) == len(res.FloorRuns) {
		var ratios, cpu []float64
		for i, f := range res.FloorRuns {
			ratios = append(ratios, res.ThroughputRuns[i].SagasPerSecond/f.SagasPerSecond)
			cpu = append(cpu, f.CPUMicrosPerSaga/res.ThroughputRuns[i].CPUMicrosPerSaga)
		}
		res.Spreads["floor_ratio"], res.Spreads["floor_cpu_ratio"] = spreadOf(ratios), spreadOf(cpu)
		res.FloorRatio = res.Spreads["floor_ratio"].Median
		fmt.Fprintf(stdout, "; the saga runs over it: %s of its sagas/s, %s of its CPU per saga over theirs (run by run)", res.Spreads["floor_ratio"].format("%.3f"), res.Spreads["floor_cpu_ratio"].format("%.3f"))
	}
	fmt.Fprintln(stdout)
}

// benchHalfRate places cfg.sagas/2 sagas at rate, run after run, into
// res's half-rate figures.
func benchHalfRate(ctx context.Context, res *BenchResult, cfg benchConfig, rate float64, why string, stdout io.Writer) error {
	warmUp := halfRateWarmUp(rate)
	fmt.Fprintf(stdout, "half rate: %d sagas placed at %.0f sagas/s%s, once the services are ready and %d more placed at that rate have finished (half a second's, at least 200: a running service's latency, not a fresh process's)\n", cfg.sagas/2, rate, why, warmUp)
	for i := range cfg.runs {
		r, err := benchRun(ctx, runSpec{sagas: cfg.sagas / 2, concurrency: cfg.concurrency, partitions: cfg.partitions, rate: rate, warmUp: warmUp})
		if err != nil {
			return fmt.Errorf("half rate: %w", err)
		}
		printRun(stdout, i, r)
		res.HalfRateRuns = append(res.HalfRateRuns, r)
		f, err := benchFloor(ctx, cfg.sagas/2, cfg.concurrency, cfg.partitions, rate, warmUp)
		if err != nil {
			return fmt.Errorf("floor at the half rate: %w", err)
		}
		printFloorAtRate(stdout, i, f)
		res.HalfRateFloorRuns = append(res.HalfRateFloorRuns, f)
	}
	res.HalfRate = medianRun(res.HalfRateRuns, func(r Run) float64 { return r.P99Millis })
	addRunSpreads(res.Spreads, "half_rate", res.HalfRateRuns)
	printSpread(stdout, res.Spreads, "half_rate")
	summarizeFloorsAtRate(res, stdout)
	return nil
}

// benchRecoveries runs the recovery scenario with a long history and with
// a short one into res, run after run.
func benchRecoveries(ctx context.Context, res *BenchResult, cfg benchConfig, cpuProfile string, stdout, stderr io.Writer) error {
	fmt.Fprintf(stdout, "recovery: takeover of %d partitions with %d sagas in flight and %d closed within the retention, beside the same with %d closed; broker and participants in their own processes\n",
		cfg.partitions, cfg.recoveryLive, cfg.recoveryHistory, cfg.recoveryBaseline)
	for i := range cfg.runs {
		profile := ""
		if i == 0 {
			profile = cpuProfile
		}
		rec, err := benchRecovery(ctx, cfg.recoveryHistory, cfg.recoveryLive, cfg.partitions, profile, stderr)
		if err != nil {
			return fmt.Errorf("recovery: %w", err)
		}
		fmt.Fprintf(stdout, "  run %d, %d closed: ", i+1, cfg.recoveryHistory)
		printRecovery(stdout, rec)
		base, err := benchRecovery(ctx, cfg.recoveryBaseline, cfg.recoveryLive, cfg.partitions, "", stderr)
		if err != nil {
			return fmt.Errorf("recovery baseline: %w", err)
		}
		fmt.Fprintf(stdout, "  run %d, %d closed: ", i+1, cfg.recoveryBaseline)
		printRecovery(stdout, base)
		res.RecoveryRuns, res.RecoveryBaselineRuns = append(res.RecoveryRuns, rec), append(res.RecoveryBaselineRuns, base)
	}
	fresh := func(r Recovery) float64 { return r.FreshTakeoverSeconds }
	res.Recovery = ptr(res.RecoveryRuns[medianIndex(res.RecoveryRuns, fresh)])
	res.RecoveryBaseline = ptr(res.RecoveryBaselineRuns[medianIndex(res.RecoveryBaselineRuns, fresh)])
	for name, runs := range map[string][]Recovery{"recovery": res.RecoveryRuns, "recovery_baseline": res.RecoveryBaselineRuns} {
		res.Spreads[name+".fresh_takeover_seconds"] = spreadOf(mapRuns(runs, fresh))
		res.Spreads[name+".restart_seconds"] = spreadOf(mapRuns(runs, func(r Recovery) float64 { return r.RestartSeconds }))
		res.Spreads[name+".heap_after_takeover_bytes"] = spreadOf(mapRuns(runs, func(r Recovery) float64 { return float64(r.HeapAfterTakeoverBytes) }))
	}
	res.RecoveryHeapRatio = res.Spreads["recovery.heap_after_takeover_bytes"].Median / max(res.Spreads["recovery_baseline.heap_after_takeover_bytes"].Median, 1)
	fmt.Fprintf(stdout, "  over the runs, %d closed: fresh takeover %s s, restart %s s; %d closed: fresh takeover %s s; heap after takeover %.2f× the short history's (medians)\n",
		cfg.recoveryHistory, res.Spreads["recovery.fresh_takeover_seconds"].format("%.2f"), res.Spreads["recovery.restart_seconds"].format("%.2f"),
		cfg.recoveryBaseline, res.Spreads["recovery_baseline.fresh_takeover_seconds"].format("%.2f"), res.RecoveryHeapRatio)
	return nil
}

// startCPUProfile profiles this process into path until stop is called;
// with no path, it does nothing.
func startCPUProfile(path string) (stop func() error, err error) {
	if path == "" {
		return func() error { return nil }, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() error {
		pprof.StopCPUProfile()
		return f.Close()
	}, nil
}

// profileCPU profiles one extra run into path.
func profileCPU(ctx context.Context, spec runSpec, path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := pprof.StartCPUProfile(f); err != nil {
		return err
	}
	_, err = benchRun(ctx, spec)
	pprof.StopCPUProfile()
	return err
}

func printRecovery(w io.Writer, r Recovery) {
	fmt.Fprintf(w, "fresh takeover ready in %.2f s (restored from %v), %.1f MiB of heap after it; restart with the local store ready in %.2f s\n",
		r.FreshTakeoverSeconds, r.RestoredFrom, float64(r.HeapAfterTakeoverBytes)/(1<<20), r.RestartSeconds)
}

func printRun(w io.Writer, i int, r Run) {
	fmt.Fprintf(w, "run %d: %.0f sagas/s, p50 %.0f ms, p99 %.0f ms, %.1f broker ops per saga, %.0f broker ops/s, %.0f µs CPU, %.0f allocs and %.0f KB allocated per saga (whole process), peak RSS %d MiB, peak heap %d MiB",
		i+1, r.SagasPerSecond, r.P50Millis, r.P99Millis, r.OpsPerSaga, r.OpsPerSecond, r.CPUMicrosPerSaga, r.AllocsPerSaga, r.BytesPerSaga/1000, r.PeakRSSBytes>>20, r.PeakHeapBytes>>20)
	if r.SpansPerSaga > 0 {
		fmt.Fprintf(w, ", %.2f spans per saga exported", r.SpansPerSaga)
	}
	if r.SpansDroppedPerSaga > 0 {
		fmt.Fprintf(w, " (%.2f per saga dropped by the batch span processor)", r.SpansDroppedPerSaga)
	}
	if r.SagasPerSecondAllExported > 0 {
		fmt.Fprintf(w, ", %.2f per saga still queued when the last saga finished: %.0f sagas/s until the last span arrived", r.SpansQueuedAtEndPerSaga, r.SagasPerSecondAllExported)
	}
	if r.AttributesPerSpan > 0 {
		fmt.Fprintf(w, ", %.1f attributes per span", r.AttributesPerSpan)
	}
	if r.ReceiverCPUMicrosPerSaga > 0 {
		fmt.Fprintf(w, ", %.0f µs CPU per saga in the OTLP receiver", r.ReceiverCPUMicrosPerSaga)
	}
	if r.WarmUpSagas > 0 {
		fmt.Fprintf(w, "; ready after %.0f ms, then %d warm-up sagas not in the figures (their p99 %.0f ms)", r.ReadyMillis, r.WarmUpSagas, r.WarmUpP99Millis)
	}
	fmt.Fprintln(w)
}

// runFigures are the figures of a Run whose spread is kept.
var runFigures = []struct {
	name string
	of   func(Run) float64
}{
	{"sagas_per_second", func(r Run) float64 { return r.SagasPerSecond }},
	{"p50_ms", func(r Run) float64 { return r.P50Millis }},
	{"p99_ms", func(r Run) float64 { return r.P99Millis }},
	{"broker_ops_per_saga", func(r Run) float64 { return r.OpsPerSaga }},
	{"broker_ops_per_second", func(r Run) float64 { return r.OpsPerSecond }},
	{"allocs_per_saga", func(r Run) float64 { return r.AllocsPerSaga }},
	{"alloc_bytes_per_saga", func(r Run) float64 { return r.BytesPerSaga }},
	{"peak_rss_mib", func(r Run) float64 { return float64(r.PeakRSSBytes) / (1 << 20) }},
	{"peak_heap_mib", func(r Run) float64 { return float64(r.PeakHeapBytes) / (1 << 20) }},
	{"spans_per_saga", func(r Run) float64 { return r.SpansPerSaga }},
	{"cpu_us_per_saga", func(r Run) float64 { return r.CPUMicrosPerSaga }},
	{"cpu_us_per_broker_op", func(r Run) float64 { return r.CPUMicrosPerOp }},
}

func addRunSpreads(spreads map[string]Spread, scenario string, runs []Run) {
	for _, f := range runFigures {
		if s := spreadOf(mapRuns(runs, f.of)); s.Max > 0 {
			spreads[scenario+"."+f.name] = s
		}
	}
}

func printSpread(w io.Writer, spreads map[string]Spread, scenario string) {
	get := func(name, verb string) string { return spreads[scenario+"."+name].format(verb) }
	fmt.Fprintf(w, "    %s: %s sagas/s, p50 %s ms, p99 %s ms, %s broker ops/s, %s allocs per saga, peak RSS %s MiB, peak heap %s MiB\n", scenario,
		get("sagas_per_second", "%.0f"), get("p50_ms", "%.0f"), get("p99_ms", "%.0f"), get("broker_ops_per_second", "%.0f"),
		get("allocs_per_saga", "%.0f"), get("peak_rss_mib", "%.0f"), get("peak_heap_mib", "%.0f"))
}

// perSaga lists the broker operations per saga by topic.
func perSaga(ops *BrokerOps, sagas int) string {
	var parts []string
	for _, m := range []struct {
		what string
		by   map[string]int64
	}{{"produce", ops.ProducedByTopic}, {"consume", ops.ConsumedByTopic}} {
		for _, topic := range slices.Sorted(maps.Keys(m.by)) {
			if per := float64(m.by[topic]) / float64(sagas); per >= 0.01 {
				parts = append(parts, fmt.Sprintf("%s %s %.2f", m.what, topic, per))
			}
		}
	}
	return strings.Join(parts, ", ")
}

func mapRuns[T any](runs []T, of func(T) float64) []float64 {
	v := make([]float64, len(runs))
	for i, r := range runs {
		v[i] = of(r)
	}
	return v
}

// medianIndex is the index of the run whose figure is the median (the
// lower middle one for an even count).
func medianIndex[T any](runs []T, of func(T) float64) int {
	idx := make([]int, len(runs))
	for i := range idx {
		idx[i] = i
	}
	slices.SortStableFunc(idx, func(a, b int) int {
		switch fa, fb := of(runs[a]), of(runs[b]); {
		case fa < fb:
			return -1
		case fa > fb:
			return 1
		}
		return 0
	})
	return idx[(len(idx)-1)/2]
}

func medianRun(runs []Run, of func(Run) float64) Run { return runs[medianIndex(runs, of)] }

func ptr[T any](v T) *T { return &v }

// inFlightLine starts the line `bench --only in-flight` prints its figure on.
const inFlightLine = "in_flight_bytes_per_saga="

// inFlightInChild runs the in-flight memory measurement in a fresh process
// of this binary: a live-heap difference in this one would also see what
// earlier scenarios' goroutines free while it runs.
func inFlightInChild(ctx context.Context, cfg benchConfig, stderr io.Writer) (float64, error) {
	self, err := os.Executable()
	if err != nil {
		return 0, err
	}
	child := exec.CommandContext(ctx, self, "bench", "--only", "in-flight", "--out", "",
		"--in-flight", strconv.Itoa(cfg.inFlight), "--partitions", strconv.Itoa(int(cfg.partitions)))
	child.Stderr = stderr
	out, err := child.Output()
	if err != nil {
		return 0, fmt.Errorf("bench --only in-flight: %w", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if rest, ok := strings.CutPrefix(line, inFlightLine); ok {
			return strconv.ParseFloat(strings.TrimSpace(rest), 64)
		}
	}
	return 0, fmt.Errorf("bench --only in-flight printed no %s line: %s", inFlightLine, out)
}
