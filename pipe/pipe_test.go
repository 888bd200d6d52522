package pipe_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagapipe/sagapipe/internal/testkit"
	"github.com/sagapipe/sagapipe/pipe"
	"github.com/sagapipe/sagapipe/schema"
)

// seed produces perPartition records to each partition of topic, valued
// "<partition>-<n>", keyed when keyed is set.
func seed(t *testing.T, cl *kgo.Client, topic string, partitions int32, perPartition int, keyed bool) {
	t.Helper()
	var recs []*kgo.Record
	for n := range perPartition {
		for p := range partitions {
			r := &kgo.Record{Topic: topic, Partition: p, Value: fmt.Appendf(nil, "%d-%d", p, n)}
			if keyed {
				r.Key = fmt.Appendf(nil, "key-%d-%d", p, n%5)
			}
			recs = append(recs, r)
		}
	}
	if err := cl.ProduceSync(context.Background(), recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
}

func TestOrdering(t *testing.T) {
	const (
		sourcePartitions = 6
		perPartition     = 40
		total            = sourcePartitions * perPartition
	)
	for _, targetPartitions := range []int32{2, 10} {
		for _, keyed := range []bool{false, true} {
			name := fmt.Sprintf("target %d partitions, keyed %v", targetPartitions, keyed)
			t.Run(name, func(t *testing.T) {
				s := testkit.StartStack(t)
				testkit.CreateTopics(t, s.KafkaAddrs(), sourcePartitions, "src")
				testkit.CreateTopics(t, s.KafkaAddrs(), targetPartitions, "dst")
				seed(t, testkit.Client(t, s.KafkaAddrs(), kgo.RecordPartitioner(kgo.ManualPartitioner())), "src", sourcePartitions, perPartition, keyed)
				source := consume(t, s, "src", total)

				// Kafka's own default partitioner (KIP-794) spreads keyless
				// records over partitions and hashes keys: with it, only the
				// derived key keeps a source partition together.
				spreading := kgo.RecordPartitioner(kgo.UniformBytesPartitioner(64, false, true, nil))
				p, err := pipe.New(testkit.Client(t, s.KafkaAddrs(), spreading))
				if err != nil {
					t.Fatal(err)
				}
				results := make(chan pipe.Result, total)
				p.PipeManyAsync(context.Background(), "dst", messages(source), pipe.ResultsTo(results))
				for range total {
					if r := <-results; r.Err != nil {
						t.Fatal(r.Err)
					}
				}
				if err := p.Close(context.Background()); err != nil {
					t.Fatal(err)
				}

				// Group by what must stay together: the source partition
				// without keys, the key with them.
				type place struct {
					partition int32
					offset    int64
				}
				last := map[string]place{}
				for _, r := range consume(t, s, "dst", total) {
					group := header(r, pipe.HeaderOriginalPartition)
					if keyed {
						group = string(r.Key)
					}
					off, _ := strconv.ParseInt(header(r, pipe.HeaderOriginalOffset), 10, 64)
					prev, seen := last[group]
					if seen && prev.partition != r.Partition {
						t.Fatalf("group %s spread over target partitions %d and %d", group, prev.partition, r.Partition)
					}
					if seen && off <= prev.offset {
						t.Fatalf("group %s out of order: source offset %d after %d", group, off, prev.offset)
					}
					last[group] = place{r.Partition, off}
				}
				if !keyed && len(last) != sourcePartitions {
					t.Fatalf("%d source partitions seen in the target, want %d", len(last), sourcePartitions)
				}
			})
		}
	}
}

func messages(recs []*kgo.Record) []pipe.Message {
	ms := make([]pipe.Message, len(recs))
	for i, r := range recs {
		ms[i] = pipe.Message{Source: r, PassThrough: i}
	}
	return ms
}

func TestHeadersAcrossTwoHops(t *testing.T) {
	ctx := context.Background()
	s := testkit.StartStack(t)
	testkit.CreateTopics(t, s.KafkaAddrs(), 3, "a", "b", "c")
	env := schema.NewEnvelope("shop.OrderPlaced", "test", time.Now())
	env.CorrelationID, env.SagaName, env.SagaID, env.SagaStep = "corr-1", "orders", "saga-1", "inventory"
	headers := append(env.Apply(nil), kgo.RecordHeader{Key: "custom", Value: []byte("kept")})
	if err := testkit.Client(t, s.KafkaAddrs()).ProduceSync(ctx, &kgo.Record{Topic: "a", Key: []byte("saga-1"), Value: []byte("v"), Headers: headers}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	hop0 := consume(t, s, "a", 1)[0]

	// The processing span of hop 1 must become the piped record's parent.
	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{1, 2, 3}, SpanID: trace.SpanID{4, 5, 6}, TraceFlags: trace.FlagsSampled,
	})
	spanCtx := trace.ContextWithSpanContext(ctx, sc)

	p1, err := pipe.New(testkit.Client(t, s.KafkaAddrs()), pipe.WithConsumerGroup("group-1"), pipe.WithSource("hop-1"))
	if err != nil {
		t.Fatal(err)
	}
	defer p1.Close(ctx)
	if r := p1.PipeSync(spanCtx, "b", pipe.Message{Source: hop0}); r.Err != nil {
		t.Fatal(r.Err)
	}
	hop1 := consume(t, s, "b", 1)[0]

	p2, err := pipe.New(testkit.Client(t, s.KafkaAddrs()), pipe.WithConsumerGroup("group-2"))
	if err != nil {
		t.Fatal(err)
	}
	defer p2.Close(ctx)
	if r := p2.PipeSync(ctx, "c", pipe.Message{Source: hop1, Value: []byte("new value"), Type: "shop.Next"}); r.Err != nil {
		t.Fatal(r.Err)
	}
	hop2 := consume(t, s, "c", 1)[0]

	want := []struct {
		rec                              *kgo.Record
		topic, partition, offset, group  string
		id, causation, typ, source, body string
	}{
		{hop1, "a", strconv.Itoa(int(hop0.Partition)), strconv.FormatInt(hop0.Offset, 10), "group-1",
			header(hop1, schema.HeaderID), env.ID, "shop.OrderPlaced", "hop-1", "v"},
		{hop2, "b", strconv.Itoa(int(hop1.Partition)), strconv.FormatInt(hop1.Offset, 10), "group-2",
			header(hop2, schema.HeaderID), header(hop1, schema.HeaderID), "shop.Next", "hop-1", "new value"},
	}
	for i, w := range want {
		r := w.rec
		for _, h := range []string{pipe.HeaderOriginalTopic, pipe.HeaderOriginalPartition, pipe.HeaderOriginalOffset,
			pipe.HeaderOriginalConsumerGroup, schema.HeaderID, schema.HeaderCausationID, schema.HeaderType} {
			if n := countHeader(r, h); n != 1 {
				t.Fatalf("hop %d: %d %s headers, want exactly 1", i+1, n, h)
			}
		}
		got := []string{header(r, pipe.HeaderOriginalTopic), header(r, pipe.HeaderOriginalPartition),
			header(r, pipe.HeaderOriginalOffset), header(r, pipe.HeaderOriginalConsumerGroup),
			header(r, schema.HeaderCausationID), header(r, schema.HeaderType), header(r, schema.HeaderSource), string(r.Value)}
		exp := []string{w.topic, w.partition, w.offset, w.group, w.causation, w.typ, w.source, w.body}
		for j := range got {
			if got[j] != exp[j] {
				t.Errorf("hop %d: field %d = %q, want %q", i+1, j, got[j], exp[j])
			}
		}
		if w.id == env.ID || w.id == "" {
			t.Errorf("hop %d: ce_id %q was not renewed", i+1, w.id)
		}
		for h, v := range map[string]string{schema.HeaderCorrelationID: "corr-1", schema.HeaderSagaName: "orders",
			schema.HeaderSagaID: "saga-1", schema.HeaderSagaStep: "inventory", "custom": "kept"} {
			if got := header(r, h); got != v {
				t.Errorf("hop %d: %s = %q, want %q carried over", i+1, h, got, v)
			}
		}
		if string(r.Key) != "saga-1" {
			t.Errorf("hop %d: key %q, want the source's", i+1, r.Key)
		}
	}
	wantParent := "00-01020300000000000000000000000000-0405060000000000-01"
	if got := header(hop1, schema.HeaderTraceParent); got != wantParent {
		t.Errorf("hop 1 traceparent %q, want the processing span %q", got, wantParent)
	}
	// Hop 2 had no span of its own: the trace context travels on.
	if got := header(hop2, schema.HeaderTraceParent); got != wantParent {
		t.Errorf("hop 2 traceparent %q, want %q carried over", got, wantParent)
	}
}

func TestEveryRecordHasOneResultWhenTheBrokerStops(t *testing.T) {
	const n = 3000
	s := testkit.StartStack(t)
	testkit.CreateTopics(t, s.KafkaAddrs(), 3, "dst")
	cl := testkit.Client(t, s.KafkaAddrs())
	p, err := pipe.New(cl, pipe.WithMaxInFlight(256))
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu       sync.Mutex
		seen     = make(map[int]int, n)
		okCount  int
		failed   int
		results  int
		aThird   = make(chan struct{})
		allFound = make(chan struct{})
	)
	record := func(r pipe.Result) {
		mu.Lock()
		defer mu.Unlock()
		seen[r.PassThrough.(int)]++
		if r.Err == nil {
			okCount++
		} else {
			failed++
		}
		results++
		switch results {
		case n / 3:
			close(aThird)
		case n:
			close(allFound)
		}
	}
	// The pipeline pipes from its own goroutine, as a consumer loop would;
	// when the broker dies it blocks on the in-flight bound.
	piped := make(chan struct{})
	go func() {
		defer close(piped)
		for i := range n {
			src := &kgo.Record{Topic: "src", Partition: int32(i % 3), Offset: int64(i), Value: []byte("v")}
			p.PipeAsync(context.Background(), "dst", pipe.Message{Source: src, PassThrough: i}, record)
		}
	}()

	<-aThird
	s.Kafka().Close() // the broker goes away mid-stream

	// Shutting down: Close unblocks the pipeline (its remaining records fail
	// with ErrClosed) and cancels what kgo has not sent; closing the client
	// fails what it sent but never had answered.
	closeCtx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = p.Close(closeCtx)
	<-piped
	cl.Close()
	select {
	case <-allFound:
	case <-time.After(30 * time.Second):
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("%d of %d results delivered", results, n)
	}
	mu.Lock()
	defer mu.Unlock()
	for i := range n {
		if seen[i] != 1 {
			t.Fatalf("pass-through %d came back %d times, want once", i, seen[i])
		}
	}
	if okCount < n/3 || failed == 0 {
		t.Fatalf("%d succeeded and %d failed; the broker stopped after a third succeeded, so want both", okCount, failed)
	}
	t.Logf("%d succeeded, %d failed", okCount, failed)
}

func TestBackpressureAndCancellation(t *testing.T) {
	s := testkit.StartStack(t)
	testkit.CreateTopics(t, s.KafkaAddrs(), 1, "dst")
	cl := testkit.Client(t, s.KafkaAddrs())
	s.Kafka().Close() // nothing will be acknowledged
	p, err := pipe.New(cl, pipe.WithMaxInFlight(1))
	if err != nil {
		t.Fatal(err)
	}
	src := &kgo.Record{Topic: "src", Value: []byte("v")}
	first := make(chan pipe.Result, 1)
	p.PipeAsync(context.Background(), "dst", pipe.Message{Source: src, PassThrough: "first"}, pipe.ResultsTo(first))

	// The bound is reached: the next call blocks until its ctx ends, and
	// that ending is its result.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	second := make(chan pipe.Result, 1)
	p.PipeAsync(ctx, "dst", pipe.Message{Source: src, PassThrough: "second"}, pipe.ResultsTo(second))
	r := <-second
	if !errors.Is(r.Err, context.DeadlineExceeded) || r.PassThrough != "second" {
		t.Fatalf("second: %+v, want a deadline failure with its pass-through", r)
	}

	// Close gives up on the unacknowledged first record, which kgo then fails.
	closeCtx, cancelClose := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancelClose()
	if err := p.Close(closeCtx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Close: %v, want a deadline error", err)
	}
	select {
	case r := <-first:
		if r.Err == nil || r.PassThrough != "first" {
			t.Fatalf("first: %+v, want a failure with its pass-through", r)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the first record's result never came after Close cancelled it")
	}

	// After Close every pipe fails at once with ErrClosed.
	if r := p.PipeSync(context.Background(), "dst", pipe.Message{Source: src, PassThrough: 3}); !errors.Is(r.Err, pipe.ErrClosed) || r.PassThrough != 3 {
		t.Fatalf("after Close: %+v, want ErrClosed", r)
	}
}

func TestEnhanceAndBadInput(t *testing.T) {
	s := testkit.StartStack(t)
	testkit.CreateTopics(t, s.KafkaAddrs(), 1, "dst")
	p, err := pipe.New(testkit.Client(t, s.KafkaAddrs()), pipe.WithEnhance(func(_ context.Context, rec *kgo.Record, m pipe.Message) error {
		if m.PassThrough == "refuse" {
			return errors.New("not this one")
		}
		rec.Headers = append(rec.Headers, kgo.RecordHeader{Key: "enhanced", Value: []byte("yes")})
		rec.Key = []byte("new-key")
		return nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.Background())
	ctx := context.Background()
	src := &kgo.Record{Topic: "src", Value: []byte("v")}
	results := p.PipeManySync(ctx, "dst",
		pipe.Message{Source: src, PassThrough: "ok"},
		pipe.Message{Source: src, PassThrough: "refuse"},
		pipe.Message{PassThrough: "no source"},
	)
	if results[0].Err != nil || results[0].PassThrough != "ok" {
		t.Fatalf("ok: %+v", results[0])
	}
	if results[1].Err == nil || results[1].PassThrough != "refuse" {
		t.Fatalf("refused: %+v, want the hook's error", results[1])
	}
	if !errors.Is(results[2].Err, pipe.ErrNoSource) {
		t.Fatalf("no source: %+v, want ErrNoSource", results[2])
	}
	if r := p.PipeSync(ctx, "", pipe.Message{Source: src}); !errors.Is(r.Err, pipe.ErrNoTopic) {
		t.Fatalf("no topic: %+v, want ErrNoTopic", r)
	}
	got := consume(t, s, "dst", 1)[0]
	if header(got, "enhanced") != "yes" || string(got.Key) != "new-key" {
		t.Fatalf("enhance hook's changes missing: key %q headers %v", got.Key, got.Headers)
	}
}

func TestMessageIDAndHeaders(t *testing.T) {
	s := testkit.StartStack(t)
	testkit.CreateTopics(t, s.KafkaAddrs(), 1, "dst")
	p, err := pipe.New(testkit.Client(t, s.KafkaAddrs()))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.Background())
	env := schema.Envelope{ID: "src-id", Type: "t", SagaStep: "inventory", ReplyTo: "x"}
	src := &kgo.Record{Topic: "src", Value: []byte("v"), Headers: env.Apply(nil)}
	r := p.PipeSync(context.Background(), "dst", pipe.Message{Source: src, ID: "saga-1/payment/do",
		Headers: []kgo.RecordHeader{{Key: schema.HeaderSagaStep, Value: []byte("payment")}, {Key: schema.HeaderReplyTo, Value: []byte("orders.inbox")}}})
	if r.Err != nil {
		t.Fatal(r.Err)
	}
	got := consume(t, s, "dst", 1)[0]
	for k, v := range map[string]string{schema.HeaderID: "saga-1/payment/do", schema.HeaderCausationID: "src-id",
		schema.HeaderSagaStep: "payment", schema.HeaderReplyTo: "orders.inbox"} {
		if header(got, k) != v { // header panics on duplicates
			t.Errorf("%s = %q, want %q", k, header(got, k), v)
		}
	}
}

func TestNewValidates(t *testing.T) {
	_, err := pipe.New(nil, pipe.WithMaxInFlight(0), pipe.WithPropagator(nil))
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"client is nil", "WithMaxInFlight(0)", "WithPropagator"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}
