package pipe_test

import (
	"context"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/devstack"
	"github.com/sagapipe/sagapipe/pipe"
	"github.com/sagapipe/sagapipe/schema"
)

// Shipment is both the command a shipping stage handles and its reply.
type Shipment struct {
	OrderID  string `avro:"order_id"`
	Tracking string `avro:"tracking"`
}

func shipmentSchema(name string) string {
	return `{"type":"record","name":"` + name + `","namespace":"shop","fields":[
		{"name":"order_id","type":"string"},{"name":"tracking","type":"string","default":""}]}`
}

// A stage worker consumes a command topic, calls the typed handler, and
// pipes the reply to the topic the command's reply_to header names.
func ExampleNewStageWorker() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stack, err := devstack.Start(devstack.Config{})
	if err != nil {
		panic(err)
	}
	defer stack.Close()
	serde, err := schema.NewSerde(stack.RegistryURL(), schema.WithSubjectNameStrategy(schema.RecordNameStrategy))
	if err != nil {
		panic(err)
	}
	commands, err := schema.NewCodec[Shipment](serde, shipmentSchema("ScheduleShipment"))
	if err != nil {
		panic(err)
	}
	replies, err := schema.NewCodec[Shipment](serde, shipmentSchema("ShipmentScheduled"))
	if err != nil {
		panic(err)
	}

	// The orchestrator's side: a command with the envelope and a reply_to.
	cl, err := kgo.NewClient(kgo.SeedBrokers(stack.KafkaAddrs()...),
		kgo.ConsumeTopics("orders.inbox"), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		panic(err)
	}
	defer cl.Close()
	if _, err := kadm.NewClient(cl).CreateTopics(ctx, 1, 1, nil, "shipping.commands", "orders.inbox"); err != nil {
		panic(err)
	}
	value, err := commands.Encode(ctx, "shipping.commands", &Shipment{OrderID: "order-1"})
	if err != nil {
		panic(err)
	}
	env := schema.NewEnvelope("shop.ScheduleShipment", "orchestrator", time.Now())
	env.SagaName, env.SagaID, env.SagaStep, env.ReplyTo = "orders", "order-1", "shipping", "orders.inbox"
	command := &kgo.Record{Topic: "shipping.commands", Key: []byte("order-1"), Value: value, Headers: env.Apply(nil)}
	if err := cl.ProduceSync(ctx, command).FirstErr(); err != nil {
		panic(err)
	}

	// The participant's side.
	workerClient, err := kgo.NewClient(kgo.SeedBrokers(stack.KafkaAddrs()...), kgo.ConsumerGroup("shipping-service"),
		kgo.ConsumeTopics("shipping.commands"), kgo.DisableAutoCommit(), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.ProducerLinger(0))
	if err != nil {
		panic(err)
	}
	defer workerClient.Close()
	worker, err := pipe.NewStageWorker(workerClient, commands, func(_ context.Context, s Shipment, _ schema.Envelope) (pipe.Reply, error) {
		return pipe.NewReply(replies, "shop.ShipmentScheduled", Shipment{OrderID: s.OrderID, Tracking: "T-" + s.OrderID}), nil
	})
	if err != nil {
		panic(err)
	}
	ran := make(chan error, 1)
	go func() { ran <- worker.Run(ctx) }()

	reply := cl.PollFetches(ctx).Records()[0]
	got, err := replies.Decode(ctx, reply.Value)
	if err != nil {
		panic(err)
	}
	replyEnv, err := schema.ReadEnvelope(reply.Headers)
	if err != nil {
		panic(err)
	}
	fmt.Println(reply.Topic, replyEnv.Type, replyEnv.SagaID, replyEnv.SagaStep, got.Tracking)
	fmt.Println("caused by the command:", replyEnv.CausationID == env.ID)
	cancel()
	if err := <-ran; err != nil {
		panic(err)
	}
	// Output:
	// orders.inbox shop.ShipmentScheduled order-1 shipping T-order-1
	// caused by the command: true
}
