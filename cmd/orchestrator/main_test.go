package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/goleak"

	"github.com/sagapipe/sagapipe/devstack"
	"github.com/sagapipe/sagapipe/internal/testkit"
	"github.com/sagapipe/sagapipe/kread"
	"github.com/sagapipe/sagapipe/schema"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(reporting{m},
		// toxiproxy (the chaos scenarios' network proxy) leaves a link's
		// first stage blocked sending to a link torn down by removing a
		// toxic while the connection closes; it holds no connection or
		// process, only the goroutine, and it is the library's.
		goleak.IgnoreTopFunction("github.com/Shopify/toxiproxy/v2/toxics.(*NoopToxic).Pipe"))
}

// reporting runs the tests, then prints the chaos scenarios' table.
type reporting struct{ m *testing.M }

func (r reporting) Run() int {
	code := r.m.Run()
	chaosReport()
	if binDir != "" { // the children are gone: every test's cleanup killed its own
		_ = os.RemoveAll(binDir)
	}
	return code
}

// syncBuffer is written by a command or logger and read by the test at once.
type syncBuffer = testkit.SyncBuffer

func TestDevPrintsAddressesAndStops(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var stdout, stderr syncBuffer
	done := make(chan int)
	go func() {
		done <- run(ctx, []string{"dev", "--kafka-port", "0", "--registry-port", "0"}, &stdout, &stderr)
	}()

	kafkaLine := regexp.MustCompile(`kafka:\s+(127\.0\.0\.1:\d+)`)
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(stdout.String(), "ready") {
		if time.Now().After(deadline) {
			t.Fatalf("dev did not become ready; stdout %q stderr %q", stdout.String(), stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	m := kafkaLine.FindStringSubmatch(stdout.String())
	if m == nil || !strings.Contains(stdout.String(), "registry: http://127.0.0.1:") {
		t.Fatalf("addresses not printed: %q", stdout.String())
	}
	// The printed address is all an outside client needs.
	cl, err := kgo.NewClient(kgo.SeedBrokers(m[1]))
	if err != nil {
		t.Fatal(err)
	}
	pingCtx, pingCancel := context.WithTimeout(ctx, 10*time.Second)
	err = cl.Ping(pingCtx)
	pingCancel()
	cl.Close()
	if err != nil {
		t.Fatalf("ping %s: %v", m[1], err)
	}

	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("exit %d; stderr %q", code, stderr.String())
	}
}

func TestDevBusyPortNamesTheFlag(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)

	tests := []struct {
		name string
		args []string
		want string
	}{
		{"kafka", []string{"dev", "--kafka-port", port, "--registry-port", "0"}, "--kafka-port"},
		{"registry", []string{"dev", "--kafka-port", "0", "--registry-port", port}, "--registry-port"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr syncBuffer
			code := run(context.Background(), tt.args, &stdout, &stderr)
			if code == 0 {
				t.Fatal("exit 0 on a busy port")
			}
			if !strings.Contains(stderr.String(), port) || !strings.Contains(stderr.String(), tt.want) {
				t.Fatalf("error %q does not name port %s and flag %s", stderr.String(), port, tt.want)
			}
		})
	}
}

func TestSmoke(t *testing.T) {
	var stdout, stderr syncBuffer
	if code := run(context.Background(), []string{"smoke", "--count", "200"}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d; stderr %q", code, stderr.String())
	}
	if !strings.Contains(stdout.String(), "round-tripped 200") || !strings.Contains(stdout.String(), "smoke OK") {
		t.Fatalf("stdout %q", stdout.String())
	}
}

func TestUsageErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"unknown command", []string{"nope"}, `unknown command "nope"`},
		{"bad flag values", []string{"smoke", "--count", "0", "--partitions", "0"}, "--partitions"},
		{"stray argument", []string{"dev", "extra"}, "unexpected arguments"},
		{"cancel without an ID", []string{"saga", "cancel", "orders"}, "want 2 argument(s)"},
		{"negative compaction interval", []string{"dev", "--compaction-interval", "-1s"}, "--compaction-interval"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr syncBuffer
			if code := run(context.Background(), tt.args, &stdout, &stderr); code != 2 {
				t.Fatalf("exit %d, want 2", code)
			}
			if !strings.Contains(stderr.String(), tt.want) {
				t.Fatalf("stderr %q does not contain %q", stderr.String(), tt.want)
			}
		})
	}
}

// saga cancel and saga resume produce the operator's event to the saga's
// inbox, keyed by the ID, naming who asked in ce_source.
func TestSagaCancelAndResumeCommands(t *testing.T) {
	s, err := devstack.Start(devstack.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	brokers := s.KafkaAddrs()[0]
	var stdout, stderr syncBuffer
	if code := run(context.Background(), []string{"topics", "ensure", "--brokers", brokers}, &stdout, &stderr); code != 0 {
		t.Fatalf("topics ensure: exit %d: %s", code, stderr.String())
	}
	for _, what := range []string{"cancel", "resume"} {
		if code := run(context.Background(), []string{"saga", what, "--brokers", brokers, "--by", "alice", "orders", "o-1"}, &stdout, &stderr); code != 0 {
			t.Fatalf("saga %s: exit %d: %s", what, code, stderr.String())
		}
	}
	var got []string
	err = kread.ToEnd(context.Background(), []kgo.Opt{kgo.SeedBrokers(brokers)}, "orders.inbox", nil, func(r *kgo.Record) error {
		env, err := schema.ReadEnvelope(r.Headers)
		got = append(got, fmt.Sprintf("%s %s %s %s", r.Key, env.Type, env.SagaID, env.Source))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := "[o-1 sagapipe.Cancel o-1 sagapipe/cli/alice o-1 sagapipe.Resume o-1 sagapipe/cli/alice]"; fmt.Sprint(got) != want {
		t.Fatalf("inbox %v, want %s", got, want)
	}
}

// TestTopicsEnsure creates the topics of every saga `run` serves, with the
// service's configuration (here the environment), and refuses a journal
// that is not co-partitioned with its inbox.
func TestTopicsEnsure(t *testing.T) {
	s, err := devstack.Start(devstack.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	t.Setenv("SAGAPIPE_BROKERS", s.KafkaAddrs()[0])
	for range 2 { // the second run finds everything in place
		var stdout, stderr syncBuffer
		if code := run(context.Background(), []string{"topics", "ensure", "--partitions", "4"}, &stdout, &stderr); code != 0 {
			t.Fatalf("exit %d: %s", code, stderr.String())
		}
		for _, topic := range []string{"orders.inbox", "orders.journal", "orders.state", "orders.inbox.dlq", "orders.outcomes", "shipping.commands",
			"trips.inbox", "trips.journal", "trips.state", "trips.outcomes", "flight.commands", "hotel.commands", "billing.commands"} {
			if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(topic) + ` +4 partitions$`).MatchString(stdout.String()) {
				t.Errorf("stdout lacks %s with 4 partitions:\n%s", topic, stdout.String())
			}
		}
	}

	// A saga whose journal has another partition count than its inbox.
	t.Setenv("SAGAPIPE_BROKERS", "")
	s2, err := devstack.Start(devstack.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	cl, err := kgo.NewClient(kgo.SeedBrokers(s2.KafkaAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if _, err := kadm.NewClient(cl).CreateTopic(context.Background(), 2, 1, nil, "trips.journal"); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr syncBuffer
	code := run(context.Background(), []string{"topics", "ensure", "--brokers", s2.KafkaAddrs()[0]}, &stdout, &stderr)
	if want := "saga trips: trips.journal has 2 partitions but its inbox trips.inbox has 3"; code != 1 || !strings.Contains(stderr.String(), want) {
		t.Fatalf("exit %d, stderr %s; want 1 and %q", code, stderr.String(), want)
	}
}

// TestOperatorCommandsTakeTheServiceConfiguration: the operator commands
// read the service's YAML file and SAGAPIPE_* settings, and report a bad
// one by name before reaching anything.
func TestOperatorCommandsTakeTheServiceConfiguration(t *testing.T) {
	s, err := devstack.Start(devstack.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	file := filepath.Join(t.TempDir(), "sagapipe.yaml")
	yaml := fmt.Sprintf("brokers: [%q]\nregistry:\n  url: %s\nhttp_addr: \":9999\"\n", s.KafkaAddrs()[0], s.RegistryURL())
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr syncBuffer
	if code := run(context.Background(), []string{"topics", "ensure", "--config", file}, &stdout, &stderr); code != 0 {
		t.Fatalf("topics ensure --config: exit %d: %s", code, stderr.String())
	}
	if code := run(context.Background(), []string{"dlq", "list", "--config", file, "orders.inbox.dlq"}, &stdout, &stderr); code != 0 {
		t.Fatalf("dlq list --config: exit %d: %s", code, stderr.String())
	}
	if code := run(context.Background(), []string{"saga", "list", "--config", file, "orders"}, &stdout, &stderr); code != 0 {
		t.Fatalf("saga list --config: exit %d: %s", code, stderr.String())
	}
	t.Setenv("SAGAPIPE_SASL_MECHANISM", "SCRAM-SHA-512")
	stderr = syncBuffer{}
	if code := run(context.Background(), []string{"dlq", "list", "--config", file, "orders.inbox.dlq"}, &stdout, &stderr); code != 2 ||
		!strings.Contains(stderr.String(), "sasl.username/password: both are required with SCRAM-SHA-512") {
		t.Fatalf("dlq list with SASL and no credentials: exit %d: %s", code, stderr.String())
	}
}

func TestDemoCommand(t *testing.T) {
	var stdout, stderr syncBuffer
	code := run(context.Background(), []string{"demo", "--orders", "60", "--concurrency", "20", "--step-timeout", "1s"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d; stdout %s stderr %s", code, stdout.String(), stderr.String())
	}
	for _, want := range []string{"completed", "compensated", "p50", "invariants hold"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("stdout lacks %q:\n%s", want, stdout.String())
		}
	}
}

// Participants slower than the step timeout (resends pile up, steps are
// given up as uncertain and compensated, replies come late) and many
// sagas at once on slightly slow ones: both runs drain the participants
// and end with the invariants holding, lost replies included.
func TestDemoWithSlowParticipants(t *testing.T) {
	for _, args := range [][]string{
		{"--orders", "100", "--latency", "1200ms", "--step-timeout", "400ms"},
		{"--orders", "300", "--concurrency", "100", "--latency", "50ms", "--step-timeout", "1s"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			var stdout, stderr syncBuffer
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			code := run(ctx, append([]string{"demo", "--lost-reply-rate", "0.05"}, args...), &stdout, &stderr)
			if code != 0 || !strings.Contains(stdout.String(), "invariants hold") {
				t.Fatalf("exit %d; stdout %s stderr %s", code, stdout.String(), stderr.String())
			}
		})
	}
}

// The harness runs end to end and writes its JSON; the figures themselves
// are for `make bench`, not for a test on a shared machine.
func TestBenchWritesResults(t *testing.T) {
	out := filepath.Join(t.TempDir(), "bench.json")
	var stdout, stderr syncBuffer
	code := run(context.Background(), []string{"bench", "--sagas", "300", "--concurrency", "50", "--skip-memory", "--skip-recovery", "--runs", "1", "--out", out}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d\n%s\n%s", code, stdout.String(), stderr.String())
	}
	raw, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var res BenchResult
	if err := json.Unmarshal(raw, &res); err != nil {
		t.Fatal(err)
	}
	if res.Sagas != 300 || res.Throughput.SagasPerSecond <= 0 || res.Throughput.Records < 300*12 ||
		res.Ceiling.Records != res.Throughput.Records || res.Ratio <= 0 || res.HalfRate.P99Millis <= 0 {
		t.Fatalf("results %+v", res)
	}
	// Counted, not assumed: an orders saga is 16 produces and 7 consumes.
	if res.OpsPerSaga < 20 || res.OpsPerSaga > 26 || res.NormalizedRatio <= 0 || res.Runs != 1 || res.Machine.Cores <= 0 {
		t.Fatalf("broker ops per saga %.2f, normalized ratio %v, runs %d, machine %+v", res.OpsPerSaga, res.NormalizedRatio, res.Runs, res.Machine)
	}
	// The floor moves the same broker operations per saga as the saga run:
	// counted, 16 produces and 7 consumes.
	if len(res.FloorRuns) != 1 || math.Abs(res.FloorRuns[0].OpsPerSaga-res.OpsPerSaga) > 0.05 || res.FloorRuns[0].SagasPerSecond <= 0 || res.FloorRatio <= 0 {
		t.Fatalf("floor runs %+v, floor ratio %v: want one run of %.2f broker ops per saga", res.FloorRuns, res.FloorRatio, res.OpsPerSaga)
	}
	// The half-rate runs measure a running service: ready, then warmed up.
	if res.HalfRate.ReadyMillis <= 0 || res.HalfRate.WarmUpSagas < 200 || res.HalfRate.WarmUpP99Millis <= 0 {
		t.Fatalf("half rate: ready after %v ms, %d warm-up sagas (p99 %v ms): want a ready wait and a warm-up", res.HalfRate.ReadyMillis, res.HalfRate.WarmUpSagas, res.HalfRate.WarmUpP99Millis)
	}
	// Beside each half-rate run, the floor placed the same sagas at the
	// same rate after the same warm-up: 23 broker operations per saga,
	// the warm-up's counted with their sagas.
	if len(res.HalfRateFloorRuns) != 1 {
		t.Fatalf("half-rate floor runs %+v: want one", res.HalfRateFloorRuns)
	}
	if hf := res.HalfRateFloorRuns[0]; hf.RateLimit != res.HalfRate.RateLimit || hf.WarmUpSagas != res.HalfRate.WarmUpSagas || hf.P99Millis <= 0 ||
		math.Abs(hf.OpsPerSaga-res.OpsPerSaga) > 0.05 {
		t.Fatalf("half-rate floor %+v: want %v sagas/s placed after %d warm-up sagas, %.2f broker ops per saga", hf, res.HalfRate.RateLimit, res.HalfRate.WarmUpSagas, res.OpsPerSaga)
	}
	// The traced run counts what the receiver got; beside it, the span
	// floor exported a saga's spans per trace with each attribute set, every
	// span and attribute received (measureSpanFloor checks the counts), and
	// bounds the traced ratio with this run's untraced CPU per saga.
	if res.Traced == nil || res.Traced.AttributesPerSpan < 5 {
		t.Fatalf("traced run %+v: want the attributes per span received", res.Traced)
	}
	if len(res.SpanFloorRuns) != 1 || res.SpanFloor == nil {
		t.Fatalf("span floor runs %+v: want one", res.SpanFloorRuns)
	}
	f := res.SpanFloorRuns[0]
	spans := int64(300 * math.Round(res.SpansPerSagaCalibrated))
	for _, c := range []struct {
		sf    SpanFloor
		attrs int
	}{{f.Bare, 0}, {f.Required, 5}, {f.Sagapipe, 12}} {
		if c.sf.Attributes != c.attrs || c.sf.Spans != spans || c.sf.CPUMicrosPerSpan <= 0 || c.sf.TracedRatioBound <= 0 || c.sf.TracedRatioBound >= 1 {
			t.Errorf("span floor with %d attributes: %+v, want %d spans and a bound in (0, 1)", c.attrs, c.sf, spans)
		}
	}
	if f.UntracedCPUMicrosPerSaga != res.ThroughputRuns[0].CPUMicrosPerSaga {
		t.Errorf("span floor bounded with %v µs per saga, the untraced run took %v", f.UntracedCPUMicrosPerSaga, res.ThroughputRuns[0].CPUMicrosPerSaga)
	}
	if res.Targets.InFlightBytes || res.Targets.AllMet {
		t.Fatal("a skipped measurement cannot meet its target")
	}
}

// The bound a span floor puts on the traced ratio: the untraced CPU per
// saga over itself plus a saga's spans at the floor's CPU per span.
func TestSpanFloorBound(t *testing.T) {
	f := SpanFloors{SpansPerSaga: 19, Bare: SpanFloor{CPUMicrosPerSpan: 4}, Required: SpanFloor{CPUMicrosPerSpan: 10}, Sagapipe: SpanFloor{CPUMicrosPerSpan: 20}}
	f.bound(200)
	for _, c := range []struct {
		got, want float64
	}{{f.Bare.TracedRatioBound, 200.0 / 276}, {f.Required.TracedRatioBound, 200.0 / 390}, {f.Sagapipe.TracedRatioBound, 200.0 / 580}} {
		if math.Abs(c.got-c.want) > 1e-9 {
			t.Errorf("bound %v, want %v", c.got, c.want)
		}
	}
	if f.UntracedCPUMicrosPerSaga != 200 {
		t.Errorf("untraced CPU per saga %v, want 200", f.UntracedCPUMicrosPerSaga)
	}
}

// Every wrong bench flag is named at once, before anything runs.
func TestBenchNamesWrongFlags(t *testing.T) {
	var stdout, stderr syncBuffer
	code := run(context.Background(), []string{"bench", "--only", "half", "--rate", "0"}, &stdout, &stderr)
	if code != 2 {
		t.Fatalf("exit %d, want 2\n%s", code, stderr.String())
	}
	for _, want := range []string{`--only "half": want "recovery", "slow", "profile", "half-rate", "floor", "span-floor" or "in-flight"`, "--rate 0: must be a number above 0", "--rate: only with --only half-rate"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr %q does not name %q", stderr.String(), want)
		}
	}
}

// A run waits until the broker of the run before it is reclaimed: closed,
// it stays reachable for a few seconds with every record it held.
func TestClosedStacksAreReclaimed(t *testing.T) {
	stack, err := devstack.Start(devstack.Config{})
	if err != nil {
		t.Fatal(err)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(stack.KafkaAddrs()...), kgo.ConsumeTopics("t"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kadm.NewClient(cl).CreateTopic(context.Background(), 1, 1, nil, "t"); err != nil {
		t.Fatal(err)
	}
	if err := cl.ProduceSync(context.Background(), &kgo.Record{Topic: "t", Value: make([]byte, 1<<19)}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	cl.PollFetches(context.Background()) // the record
	polled := make(chan struct{})
	go func() { defer close(polled); cl.PollFetches(context.Background()) }()
	time.Sleep(100 * time.Millisecond) // a fetch waits at the broker, as after any run
	cl.Close()
	<-polled
	closeStack(stack)
	if !awaitClosedStacks(30 * time.Second) {
		t.Fatal("the closed broker was not reclaimed in 30 s")
	}
}

// The span floor's pacing waits for the receiver, and stops waiting when
// the run is cancelled: an exporter that dropped a batch never catches up.
func TestAwaitExportedStops(t *testing.T) {
	var sink otlpSink
	sink.spans.Store(5)
	if err := awaitExported(context.Background(), &sink, 3); err != nil {
		t.Fatalf("5 spans received, 3 wanted: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := awaitExported(ctx, &sink, 6); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled with 5 of 6 spans: got %v, want context.Canceled", err)
	}
}
