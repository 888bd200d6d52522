package pipe_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/internal/testkit"
	"github.com/sagapipe/sagapipe/pipe"
	"github.com/sagapipe/sagapipe/schema"
)

// BenchmarkPipeAsyncVsKgo pipes b.N records asynchronously and, in the same
// run and through the same broker, produces the same records with plain kgo
// (the ceiling). The two alternate in rounds so that drift hits both; it
// reports both rates and pipe/kgo. Target: ratio ≥ 0.8.
func BenchmarkPipeAsyncVsKgo(b *testing.B) {
	const round = 2000
	ctx := context.Background()
	s := testkit.StartStack(b)
	testkit.CreateTopics(b, s.KafkaAddrs(), 3, "dst")
	plain := testkit.Client(b, s.KafkaAddrs())
	piper, err := pipe.New(testkit.Client(b, s.KafkaAddrs()))
	if err != nil {
		b.Fatal(err)
	}
	defer piper.Close(ctx)

	env := schema.NewEnvelope("bench.Event", "bench", time.Now())
	env.CorrelationID, env.SagaID = "corr", "saga"
	sources := make([]*kgo.Record, round)
	for i := range sources {
		sources[i] = &kgo.Record{Topic: "src", Partition: int32(i % 3), Offset: int64(i),
			Key: fmt.Appendf(nil, "saga-%d", i%100), Value: make([]byte, 100), Headers: env.Apply(nil)}
	}
	messages := make([]pipe.Message, round)
	for i, r := range sources {
		messages[i] = pipe.Message{Source: r, PassThrough: i}
	}

	var plainTime, pipeTime time.Duration
	b.ReportAllocs()
	b.ResetTimer()
	for done := 0; done < b.N; done += round {
		n := min(round, b.N-done)

		start := time.Now()
		var wg sync.WaitGroup
		wg.Add(n)
		for _, r := range sources[:n] {
			rec := &kgo.Record{Topic: "dst", Key: r.Key, Value: r.Value, Headers: r.Headers}
			plain.Produce(ctx, rec, func(_ *kgo.Record, err error) {
				if err != nil {
					b.Error(err)
				}
				wg.Done()
			})
		}
		wg.Wait()
		plainTime += time.Since(start)

		start = time.Now()
		wg.Add(n)
		piper.PipeManyAsync(ctx, "dst", messages[:n], func(r pipe.Result) {
			if r.Err != nil {
				b.Error(r.Err)
			}
			wg.Done()
		})
		wg.Wait()
		pipeTime += time.Since(start)
	}
	b.StopTimer()
	plainRate := float64(b.N) / plainTime.Seconds()
	pipeRate := float64(b.N) / pipeTime.Seconds()
	b.ReportMetric(plainRate, "kgo-rec/s")
	b.ReportMetric(pipeRate, "pipe-rec/s")
	b.ReportMetric(pipeRate/plainRate, "pipe/kgo")
}
