package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagapipe/sagapipe/examples/orders"
	"github.com/sagapipe/sagapipe/internal/telemetry"
	"github.com/sagapipe/sagapipe/observability"
)

// The span floor is to the traced ratio what the floor is to throughput:
// what the OpenTelemetry SDK, its OTLP exporter and the in-process receiver
// cost per span with nothing of sagapipe in them. Spans are started and
// ended in a loop, a saga's worth per trace, through the traced run's setup
// (observability.Setup from the same OTEL_* environment, the same
// receiver, one service's SDK where a traced run has one per service),
// paced so that the batch span processor never holds more than a few
// thousand (a large queue's garbage collection is not the SDK's floor). A traced saga costs at least its spans times this, so the traced
// ratio can reach at most
//
//	untraced CPU per saga / (untraced CPU per saga + spans per saga × CPU per span)
//
// with the machine's CPU the bound, as it is in the throughput runs.

// SpanFloor is one attribute set's span floor.
type SpanFloor struct {
	Attributes       int     `json:"attributes_per_span"`
	Spans            int64   `json:"spans"`
	CPUMicrosPerSpan float64 `json:"cpu_us_per_span"`
	// ReceiverCPUMicrosPerSpan is the in-process receiver's share of
	// CPUMicrosPerSpan (reading and decoding the requests).
	ReceiverCPUMicrosPerSpan float64 `json:"receiver_cpu_us_per_span"`
	AllocsPerSpan            float64 `json:"allocs_per_span"`
	SpansPerSecond           float64 `json:"spans_per_second"`
	// TracedRatioBound is the best traced ratio these spans allow beside
	// the untraced run of the same harness run (0 when measured alone).
	TracedRatioBound float64 `json:"traced_ratio_bound,omitempty"`
}

// SpanFloors is one run of the span floor with each attribute set.
type SpanFloors struct {
	// Bare spans carry no attribute; Required the five OTel's messaging
	// conventions require of a Kafka consumer's process span; Sagapipe the
	// twelve of sagapipe's process spans (messaging and saga.*), with
	// values of their sizes.
	Bare     SpanFloor `json:"bare"`
	Required SpanFloor `json:"semconv_required"`
	Sagapipe SpanFloor `json:"sagapipe_attributes"`
	// SpansPerSaga and UntracedCPUMicrosPerSaga are what the bounds are
	// computed with.
	SpansPerSaga             float64 `json:"spans_per_saga"`
	UntracedCPUMicrosPerSaga float64 `json:"untraced_cpu_us_per_saga,omitempty"`
}

// spanFloorSets are the attribute sets measured, i-th span's values; key
// names a set's spreads (as its JSON field).
var spanFloorSets = []struct {
	name, key string
	attrs     func(i int) []attribute.KeyValue
	into      func(*SpanFloors) *SpanFloor
}{
	{"no attributes", "bare", func(int) []attribute.KeyValue { return nil }, func(f *SpanFloors) *SpanFloor { return &f.Bare }},
	{"the 5 OTel's messaging conventions require", "semconv_required", requiredSpanAttrs, func(f *SpanFloors) *SpanFloor { return &f.Required }},
	{"sagapipe's 12", "sagapipe_attributes", sagapipeSpanAttrs, func(f *SpanFloors) *SpanFloor { return &f.Sagapipe }},
}

// requiredSpanAttrs are the attributes OTel's messaging conventions
// require of a Kafka consumer's process span.
func requiredSpanAttrs(int) []attribute.KeyValue {
	return []attribute.KeyValue{
		semconv.MessagingSystemKafka,
		semconv.MessagingOperationTypeProcess,
		semconv.MessagingOperationName("process"),
		semconv.MessagingDestinationName("orders.inbox"),
		semconv.MessagingConsumerGroupName("orders-orchestrator"),
	}
}

// sagapipeSpanAttrs are the attributes of a reply's process span as
// internal/telemetry writes them, with values of their sizes.
func sagapipeSpanAttrs(i int) []attribute.KeyValue {
	id := strconv.Itoa(1_000_000_000 + i)
	return append(requiredSpanAttrs(i),
		semconv.MessagingDestinationPartitionID(strconv.Itoa(i%3)),
		semconv.MessagingKafkaOffset(i),
		semconv.MessagingMessageID("0193a5c2-7d1e-7c3b-9f4e-"+id+"ab"),
		semconv.MessagingKafkaMessageKey("order-"+id),
		telemetry.SagaName.String("orders"),
		telemetry.SagaID.String("0193a5c2-7d1e-7c3b-9f4e-"+id+"cd"),
		telemetry.SagaStep.String("payment"),
	)
}

// measureSpanFloors runs the span floor with each attribute set, sagas
// traces of spansPerSaga spans each.
func measureSpanFloors(ctx context.Context, protocol string, queue, sagas int, spansPerSaga float64) (SpanFloors, error) {
	floors := SpanFloors{SpansPerSaga: spansPerSaga}
	perTrace := max(1, int(spansPerSaga+0.5))
	// A warm-up not in the figures: the first exporter of a process pays
	// for its first connection and for growing the heap.
	if _, err := measureSpanFloor(ctx, protocol, queue, min(sagas, 1000), perTrace, sagapipeSpanAttrs); err != nil {
		return SpanFloors{}, fmt.Errorf("span floor warm-up: %w", err)
	}
	for _, set := range spanFloorSets {
		f, err := measureSpanFloor(ctx, protocol, queue, sagas, perTrace, set.attrs)
		if err != nil {
			return SpanFloors{}, fmt.Errorf("span floor, %s: %w", set.name, err)
		}
		*set.into(&floors) = f
	}
	return floors, nil
}

// bound fills in the traced ratios the floors allow beside an untraced run
// that took untracedCPU µs per saga.
func (f *SpanFloors) bound(untracedCPU float64) {
	f.UntracedCPUMicrosPerSaga = untracedCPU
	for _, set := range spanFloorSets {
		sf := set.into(f)
		sf.TracedRatioBound = untracedCPU / (untracedCPU + f.SpansPerSaga*sf.CPUMicrosPerSpan)
	}
}

// measureSpanFloor exports sagas traces of spansPerSaga spans each, every
// span with attrs(saga), and returns what that cost this process.
func measureSpanFloor(ctx context.Context, protocol string, queue, sagas, spansPerSaga int, attrs func(int) []attribute.KeyValue) (SpanFloor, error) {
	sink, err := startOTLPSink(protocol)
	if err != nil {
		return SpanFloor{}, err
	}
	defer sink.close()
	env := map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint,
		"OTEL_EXPORTER_OTLP_PROTOCOL": sink.protocol, "OTEL_TRACES_SAMPLER": "always_on"}
	const sdkDefaultQueue = 2048
	maxQueued := int64(sdkDefaultQueue / 2)
	if queue > 0 {
		env["OTEL_BSP_MAX_QUEUE_SIZE"] = strconv.Itoa(queue)
		maxQueued = int64(min(queue/2, 10_000))
	}
	tel, err := withOTelEnv(env, func() (*observability.Telemetry, error) {
		return observability.Setup(ctx, observability.WithServiceName(orders.ServiceOrchestrator))
	})
	if err != nil {
		return SpanFloor{}, err
	}
	shutdown := func() error {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Minute)
		defer cancel()
		return tel.Shutdown(sctx) // exports what the batch span processor holds
	}
	shut := false
	defer func() {
		if !shut {
			_ = shutdown()
		}
	}()
	tracer := tel.TracerProvider().Tracer("github.com/sagapipe/sagapipe/cmd/orchestrator/bench")

	settledHeap()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	began, cpuBefore := time.Now(), processCPU()
	for i := range sagas {
		var opts []trace.SpanStartOption
		if a := attrs(i); len(a) > 0 {
			opts = append(opts, trace.WithAttributes(a...))
		}
		sctx, root := tracer.Start(ctx, "saga orders", opts...)
		child := append(opts, trace.WithSpanKind(trace.SpanKindConsumer))
		for range spansPerSaga - 1 {
			_, s := tracer.Start(sctx, "orders.inbox process", child...)
			s.End()
		}
		root.End()
		if err := awaitExported(ctx, sink, int64((i+1)*spansPerSaga)-maxQueued); err != nil {
			return SpanFloor{}, err
		}
	}
	shut = true
	err = shutdown()
	cpu, elapsed := processCPU()-cpuBefore, time.Since(began)
	runtime.ReadMemStats(&after)
	if err != nil {
		return SpanFloor{}, err
	}
	spans := int64(sagas * spansPerSaga)
	if got := sink.spans.Load(); got != spans {
		return SpanFloor{}, fmt.Errorf("the receiver got %d spans of %d", got, spans)
	}
	if got, want := sink.attributes.Load(), spans*int64(len(attrs(0))); got != want {
		return SpanFloor{}, fmt.Errorf("the receiver got %d attributes, want %d (%d per span)", got, want, len(attrs(0)))
	}
	return SpanFloor{
		Attributes: len(attrs(0)), Spans: spans,
		CPUMicrosPerSpan:         float64(cpu.Nanoseconds()) / 1e3 / float64(spans),
		ReceiverCPUMicrosPerSpan: float64(sink.cpu.Load()) / 1e3 / float64(spans),
		AllocsPerSpan:            float64(after.Mallocs-before.Mallocs) / float64(spans),
		SpansPerSecond:           float64(spans) / elapsed.Seconds(),
	}, nil
}

// awaitExported waits until sink has received at least want spans. It
// gives up when none arrived for 30 s: the exporter dropped a batch it
// could not send.
func awaitExported(ctx context.Context, sink *otlpSink, want int64) error {
	last, since := sink.spans.Load(), time.Now()
	for got := last; got < want; got = sink.spans.Load() {
		if got > last {
			last, since = got, time.Now()
		}
		if time.Since(since) > 30*time.Second {
			return fmt.Errorf("the receiver got no span for 30 s, %d of the %d wanted by now", got, want)
		}
		select {
		case <-time.After(time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// printSpanFloors prints one run's span floors.
func printSpanFloors(w io.Writer, i int, f SpanFloors) {
	fmt.Fprintf(w, "  span floor   run %d (the OTel SDK, its OTLP exporter and the receiver, no sagapipe code; %.0f spans per trace):", i+1, f.SpansPerSaga)
	for j, set := range spanFloorSets {
		sf := set.into(&f)
		sep := ";"
		if j == 0 {
			sep = ""
		}
		fmt.Fprintf(w, "%s %s %.1f µs CPU per span (%.1f in the receiver), %.0f allocs", sep, set.name, sf.CPUMicrosPerSpan, sf.ReceiverCPUMicrosPerSpan, sf.AllocsPerSpan)
		if sf.TracedRatioBound > 0 {
			fmt.Fprintf(w, ", traced ratio at most %.2f", sf.TracedRatioBound)
		}
	}
	fmt.Fprintln(w)
}

// benchSpanFloors is `bench --only span-floor`: a small traced run of the
// orders saga for its spans per saga, then the span floors, run after run.
func benchSpanFloors(ctx context.Context, res *BenchResult, cfg benchConfig, stdout io.Writer) (err error) {
	c, err := benchRun(ctx, runSpec{sagas: 200, concurrency: 20, partitions: cfg.partitions, otlpProtocol: cfg.otlpProtocol,
		tracedQueue: cfg.tracedQueue, telemetry: telemetryTraced})
	if err != nil {
		return fmt.Errorf("traced calibration run: %w", err)
	}
	res.SpansPerSagaCalibrated, res.TracedQueue = c.SpansPerSaga, cfg.tracedQueue
	fmt.Fprintf(stdout, "span floor: %d traces of %.2f spans (an orders saga's, counted on a 200-saga traced run, %.1f attributes per span) per run, over OTLP %s to a receiver in this process\n",
		cfg.sagas, c.SpansPerSaga, c.AttributesPerSpan, cfg.otlpProtocol)
	// --cpuprofile: the span floors, not the calibration run.
	stop, err := startCPUProfile(cfg.cpuProfile)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, stop()) }()
	for i := range cfg.runs {
		floors, err := measureSpanFloors(ctx, cfg.otlpProtocol, cfg.tracedQueue, cfg.sagas, c.SpansPerSaga)
		if err != nil {
			return err
		}
		printSpanFloors(stdout, i, floors)
		res.SpanFloorRuns = append(res.SpanFloorRuns, floors)
	}
	summarizeSpanFloors(res, stdout)
	return nil
}

// summarizeSpanFloors keeps the span floors' spreads and median run in
// res and prints them.
func summarizeSpanFloors(res *BenchResult, stdout io.Writer) {
	if len(res.SpanFloorRuns) == 0 {
		return
	}
	bounded := res.SpanFloorRuns[0].UntracedCPUMicrosPerSaga > 0
	var line []string
	for _, set := range spanFloorSets {
		key := "span_floor." + set.key
		res.Spreads[key+".cpu_us_per_span"] = spreadOf(mapRuns(res.SpanFloorRuns, func(f SpanFloors) float64 { return set.into(&f).CPUMicrosPerSpan }))
		s := fmt.Sprintf("%s %s µs CPU per span", set.name, res.Spreads[key+".cpu_us_per_span"].format("%.1f"))
		if bounded {
			res.Spreads[key+".traced_ratio_bound"] = spreadOf(mapRuns(res.SpanFloorRuns, func(f SpanFloors) float64 { return set.into(&f).TracedRatioBound }))
			s += fmt.Sprintf(", traced ratio at most %s", res.Spreads[key+".traced_ratio_bound"].format("%.2f"))
		}
		line = append(line, s)
	}
	mid := medianIndex(res.SpanFloorRuns, func(f SpanFloors) float64 { return f.Sagapipe.CPUMicrosPerSpan })
	res.SpanFloor = ptr(res.SpanFloorRuns[mid])
	fmt.Fprintf(stdout, "    span floor (the OTel SDK, its OTLP exporter and the receiver; no sagapipe code): %s\n", strings.Join(line, "; "))
}
