package saga_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/sagapipe/sagapipe/saga"
)

// gauge returns the value of an int64 gauge with the attribute, if reported.
func gauge(t *testing.T, reader *sdkmetric.ManualReader, name string, kv attribute.KeyValue) (int64, bool) {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if g, ok := m.Data.(metricdata.Gauge[int64]); ok && m.Name == name {
				for _, dp := range g.DataPoints {
					if v, ok := dp.Attributes.Value(kv.Key); ok && v == kv.Value {
						return dp.Value, true
					}
				}
			}
		}
	}
	return 0, false
}

// Sagas waiting on a step are in flight; the inbox's lag is reported per
// partition; their history is readable from the journal.
func TestRuntimeGaugesAndHistory(t *testing.T) {
	e := newEnv(t, 1)
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer func() { _ = mp.Shutdown(context.Background()) }() // in-memory
	_, stop := e.startRuntime(saga.WithMeterProvider(mp))
	e.start("held-1", "held-2", "held-3") // nobody answers inventory: they wait

	deadline := time.Now().Add(20 * time.Second)
	for {
		n, _ := gauge(t, reader, "sagapipe.saga.in_flight", attribute.String("saga.name", "orders"))
		lag, lagged := gauge(t, reader, "sagapipe.consumer.lag", attribute.String("messaging.destination.partition.id", "0"))
		if n == 3 && lagged && lag == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("in flight %d, lag %d (reported %v); want 3 and 0", n, lag, lagged)
		}
		time.Sleep(20 * time.Millisecond)
	}

	ctx := context.Background()
	opts := []kgo.Opt{kgo.SeedBrokers(e.stack.KafkaAddrs()...)}
	h, err := saga.History(ctx, opts, e.serde, "orders", "held-2")
	if err != nil {
		t.Fatal(err)
	}
	if len(h) != 1 || h[0].SagaID != "held-2" || h[0].ToState != string(saga.PendingState("inventory")) {
		t.Fatalf("history %+v, want the start entry of held-2", h)
	}
	if _, err := saga.History(ctx, opts, e.serde, "orders", "nobody"); !errors.Is(err, saga.ErrNoHistory) {
		t.Fatalf("unknown saga: %v, want ErrNoHistory", err)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if _, ok := gauge(t, reader, "sagapipe.saga.in_flight", attribute.String("saga.name", "orders")); ok {
		t.Fatal("a closed runtime still reports sagas in flight")
	}
}
