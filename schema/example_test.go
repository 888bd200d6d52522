package schema_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/devstack"
	"github.com/sagapipe/sagapipe/schema"
)

// An event travels through Kafka as a Confluent-framed Avro value with the
// envelope in its headers.
func Example() {
	ctx := context.Background()
	stack, err := devstack.Start(devstack.Config{}) // embedded Kafka + registry
	if err != nil {
		panic(err)
	}
	defer stack.Close()

	serde, err := schema.NewSerde(stack.RegistryURL())
	if err != nil {
		panic(err)
	}
	orders, err := schema.NewCodec[Order](serde, orderSchema)
	if err != nil {
		panic(err)
	}

	cl, err := kgo.NewClient(kgo.SeedBrokers(stack.KafkaAddrs()...),
		kgo.ConsumeTopics("orders"), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		panic(err)
	}
	defer cl.Close()
	if _, err := kadm.NewClient(cl).CreateTopic(ctx, 1, 1, nil, "orders"); err != nil {
		panic(err)
	}

	order := sampleOrder()
	value, err := orders.Encode(ctx, "orders", &order)
	if err != nil {
		panic(err)
	}
	env := schema.NewEnvelope("shop.OrderPlaced", "example", time.Now())
	env.CorrelationID = order.OrderID
	rec := &kgo.Record{Topic: "orders", Key: []byte(order.OrderID), Value: value, Headers: env.Apply(nil)}
	if err := cl.ProduceSync(ctx, rec).FirstErr(); err != nil {
		panic(err)
	}

	got := cl.PollFetches(ctx).Records()[0]
	read, err := schema.ReadEnvelope(got.Headers)
	if err != nil {
		panic(err)
	}
	decoded, err := orders.Decode(ctx, got.Value)
	if err != nil {
		panic(err)
	}
	fmt.Println(read.Type, read.CorrelationID, decoded.SKU, decoded.Quantity)
	// Output: shop.OrderPlaced o-1 sku-42 3
}

// A record produced through schema/ is read by a plain kgo consumer that
// parses the frame by hand and calls hamba directly.
func TestInteropPlainConsumer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	stack, err := devstack.Start(devstack.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer stack.Close()
	serde, err := schema.NewSerde(stack.RegistryURL())
	if err != nil {
		t.Fatal(err)
	}
	order := sampleOrder()
	value, err := newCodec[Order](t, serde, orderSchema).Encode(ctx, "interop", &order)
	if err != nil {
		t.Fatal(err)
	}
	producer, err := kgo.NewClient(kgo.SeedBrokers(stack.KafkaAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer producer.Close()
	if _, err := kadm.NewClient(producer).CreateTopic(ctx, 1, 1, nil, "interop"); err != nil {
		t.Fatal(err)
	}
	env := schema.NewEnvelope("shop.OrderPlaced", "test", time.Now())
	if err := producer.ProduceSync(ctx, &kgo.Record{Topic: "interop", Value: value, Headers: env.Apply(nil)}).FirstErr(); err != nil {
		t.Fatal(err)
	}

	consumer, err := kgo.NewClient(kgo.SeedBrokers(stack.KafkaAddrs()...), kgo.ConsumeTopics("interop"),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer consumer.Close()
	fs := consumer.PollFetches(ctx)
	if err := fs.Err0(); err != nil {
		t.Fatal(err)
	}
	recs := fs.Records()
	if len(recs) != 1 {
		t.Fatalf("%d records, want 1", len(recs))
	}
	decodeByHand(t, stack.RegistryURL(), recs[0].Value, order)
	if id, _ := schema.Header(recs[0].Headers, schema.HeaderID); id != env.ID {
		t.Fatalf("ce_id %q, want %q", id, env.ID)
	}
}
