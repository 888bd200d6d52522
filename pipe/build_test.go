package pipe_test

import (
	"context"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/pipe"
	"github.com/sagapipe/sagapipe/schema"
)

// A saga's span belongs to its start event: a record piped from the start
// (a command, a reply, another saga's start) must not carry it on, or a
// saga started from it would take the first saga's span as its own.
func TestBuildDropsTheSagaSpanOfItsSource(t *testing.T) {
	b, err := pipe.NewBuilder(pipe.WithSource("test"))
	if err != nil {
		t.Fatal(err)
	}
	src := &kgo.Record{Topic: "orders.inbox", Key: []byte("o-1"), Headers: []kgo.RecordHeader{
		{Key: schema.HeaderSagaID, Value: []byte("o-1")},
		{Key: schema.HeaderSagaSpan, Value: []byte("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")},
		{Key: schema.HeaderSagaSpanParent, Value: []byte("53995c3f42cd8ad8")},
	}}
	rec, err := b.Build(context.Background(), "payment.commands", pipe.Message{Source: src, Value: []byte("v")})
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{schema.HeaderSagaSpan, schema.HeaderSagaSpanParent} {
		if v, ok := schema.Header(rec.Headers, h); ok {
			t.Errorf("the piped record carries %s=%q from its source", h, v)
		}
	}
	if v, _ := schema.Header(rec.Headers, schema.HeaderSagaID); v != "o-1" {
		t.Errorf("saga_id %q, want the source's o-1", v)
	}
}

// The record a saga's command is piped as: a source with its envelope, the
// command's own ID, type and headers, under the context of its span.
func BenchmarkBuild(b *testing.B) {
	bld, err := pipe.NewBuilder(pipe.WithSource("orders"), pipe.WithConsumerGroup("orders-orchestrator"))
	if err != nil {
		b.Fatal(err)
	}
	env := schema.NewEnvelope("orders.OrderPlaced", "storefront", time.Now())
	env.CorrelationID = "order-0000042"
	src := &kgo.Record{Topic: "orders.inbox", Partition: 1, Offset: 4242, Key: []byte("order-0000042"), Headers: env.Apply(nil)}
	m := pipe.Message{Source: src, Value: []byte("v"), Type: "payment.ChargePayment", Context: context.Background(),
		ID: "order-0000042/payment/do/1", Headers: []kgo.RecordHeader{
			{Key: schema.HeaderSagaName, Value: []byte("orders")}, {Key: schema.HeaderSagaID, Value: []byte("order-0000042")},
			{Key: schema.HeaderSagaStep, Value: []byte("payment")},
		}}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := bld.Build(context.Background(), "payment.commands", m); err != nil {
			b.Fatal(err)
		}
	}
}
