package pipe_test

import (
	"context"
	"testing"

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
