package orders_test

import (
	"context"
	"runtime"
	"testing"
	"time"

	"github.com/sagapipe/sagapipe/examples/orders"
	"github.com/sagapipe/sagapipe/internal/devstack"
)

// BenchmarkOrdersSaga runs b.N orders end to end on the embedded stack with
// the three participants in the same process and no faults, and reports
// sagas/s, p50/p99 saga latency and allocations per saga (per op). Target
// for issue 5: ≥ 2,000 sagas/s on a 2-core machine.
func BenchmarkOrdersSaga(b *testing.B) {
	stack, err := devstack.Start(devstack.Config{})
	if err != nil {
		b.Fatal(err)
	}
	defer stack.Close()
	b.ReportAllocs()
	b.ResetTimer()
	sum, err := orders.RunDemo(context.Background(), orders.DemoConfig{
		Brokers: stack.KafkaAddrs(), RegistryURL: stack.RegistryURL(),
		Orders: b.N, Concurrency: 500, Partitions: 3, StepTimeout: 30 * time.Second,
	})
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	if len(sum.Violations) > 0 {
		b.Fatalf("invariants broken: %v", sum.Violations[:min(5, len(sum.Violations))])
	}
	b.ReportMetric(sum.SagasPerSecond, "sagas/s")
	b.ReportMetric(float64(sum.P50.Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(sum.P99.Microseconds())/1000, "p99-ms")
}

// BenchmarkInFlightSagaMemory measures the heap one in-flight saga costs
// the whole process (orchestrator, participants, clients): b.N sagas are
// started and held at shipping (nobody ships), and the live heap grows by
// the reported bytes per saga. Target for issue 5: ≤ 4 KiB.
func BenchmarkInFlightSagaMemory(b *testing.B) {
	stack, err := devstack.Start(devstack.Config{})
	if err != nil {
		b.Fatal(err)
	}
	defer stack.Close()
	n := max(b.N, 2000)
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	before, after, err := orders.HoldInFlight(context.Background(), stack.KafkaAddrs(), stack.RegistryURL(), n, heap)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(int64(after)-int64(before))/float64(n), "heap-B/saga")
}
