package schema_test

import (
	"context"
	"testing"
	"time"

	"github.com/sagapipe/sagapipe/schema"
)

// BenchmarkRoundTrip encodes and decodes a ten-field order event on the
// cached path. Targets: ≤ 2 µs and ≤ 10 allocations per round trip, zero
// registry calls.
func BenchmarkRoundTrip(b *testing.B) {
	ctx := context.Background()
	s := newSerde(b)
	c := newCodec[Order](b, s, orderSchema)
	o := sampleOrder()
	data, err := c.Encode(ctx, "orders", &o) // warm the caches
	if err != nil {
		b.Fatal(err)
	}
	var got Order
	if err := c.DecodeInto(ctx, data, &got); err != nil {
		b.Fatal(err)
	}
	calls := s.RegistryCalls()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		data, err := c.Encode(ctx, "orders", &o)
		if err != nil {
			b.Fatal(err)
		}
		if err := c.DecodeInto(ctx, data, &got); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(s.RegistryCalls()-calls)/float64(b.N), "registry-calls/op")
}

// BenchmarkReadEnvelope reads the envelope of a saga's reply, as the
// orchestrator does for every record of its inbox.
func BenchmarkReadEnvelope(b *testing.B) {
	env := schema.NewEnvelope("payment.PaymentCharged", "payment-service", time.Now())
	env.CorrelationID, env.CausationID = "order-0000042", "order-0000042/payment/do/1"
	env.SagaName, env.SagaID, env.SagaStep = "orders", "order-0000042", "payment"
	headers := env.Apply(nil)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := schema.ReadEnvelope(headers); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkApply writes a start event's envelope, as a saga's starter does
// for every saga.
func BenchmarkApply(b *testing.B) {
	env := schema.NewEnvelope("orders.OrderPlaced", "storefront", time.Now())
	env.CorrelationID, env.SagaName, env.SagaID = "order-0000042", "orders", "order-0000042"
	b.ReportAllocs()
	for b.Loop() {
		env.Apply(nil)
	}
}
