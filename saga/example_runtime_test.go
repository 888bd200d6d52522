package saga_test

import (
	"context"
	"fmt"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/devstack"
	"github.com/sagapipe/sagapipe/pipe"
	"github.com/sagapipe/sagapipe/saga"
	"github.com/sagapipe/sagapipe/schema"
	"github.com/sagapipe/sagapipe/statemachine"
)

// Checkout is the data a checkout saga carries from step to step.
type Checkout struct {
	OrderID string `avro:"order_id"`
	Receipt string `avro:"receipt"`
}

// Payment is every event of the checkout saga: the start, the command and
// the replies.
type Payment struct {
	OrderID string `avro:"order_id"`
	Receipt string `avro:"receipt"`
}

func paymentEvent(name string) saga.EventDef[Payment] {
	return saga.Event[Payment]("shop."+name, `{"type":"record","name":"`+name+`","namespace":"shop","fields":[
		{"name":"order_id","type":"string"},{"name":"receipt","type":"string","default":""}]}`)
}

var (
	checkoutStarted = paymentEvent("CheckoutStarted")
	chargeCard      = paymentEvent("ChargeCard")
	cardCharged     = paymentEvent("CardCharged")
	cardDeclined    = paymentEvent("CardDeclined")
)

// sagaEnded hears of each saga that ended; its OnFinished makes it a hook.
type sagaEnded chan string

func (f sagaEnded) OnFinished(id string, outcome statemachine.State) { f <- id + " " + string(outcome) }

// A saga runs on the embedded broker: the runtime sends the payment
// command, a participant answers it, and the saga completes.
func Example_runtime() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stack, err := devstack.Start(devstack.Config{})
	if err != nil {
		panic(err)
	}
	defer stack.Close()

	b := saga.New[Checkout]("checkout", `{"type":"record","name":"Checkout","namespace":"shop","fields":[
		{"name":"order_id","type":"string"},{"name":"receipt","type":"string","default":""}]}`).
		StartOn(saga.Reply(checkoutStarted, func(d *Checkout, e Payment) { d.OrderID = e.OrderID }))
	b.Step("payment").
		Command("card.commands", saga.Cmd(chargeCard, func(d Checkout) Payment { return Payment{OrderID: d.OrderID} })).
		OnSuccess(saga.Reply(cardCharged, func(d *Checkout, r Payment) { d.Receipt = r.Receipt })).
		OnFailure(saga.Reply[Checkout](cardDeclined, nil))
	checkout, err := b.Build()
	if err != nil {
		panic(err)
	}

	client, err := kgo.NewClient(kgo.SeedBrokers(stack.KafkaAddrs()...))
	if err != nil {
		panic(err)
	}
	defer client.Close()
	if err := checkout.EnsureTopics(ctx, kadm.NewClient(client), 1, 1); err != nil {
		panic(err)
	}
	serde, err := schema.NewSerde(stack.RegistryURL(), schema.WithSubjectNameStrategy(schema.RecordNameStrategy))
	if err != nil {
		panic(err)
	}

	// The participant: a stage worker that charges the card and answers
	// with the receipt.
	commands, err := schema.NewCodec[Payment](serde, chargeCard.Schema)
	if err != nil {
		panic(err)
	}
	replies, err := schema.NewCodec[Payment](serde, cardCharged.Schema)
	if err != nil {
		panic(err)
	}
	workerClient, err := kgo.NewClient(kgo.SeedBrokers(stack.KafkaAddrs()...), kgo.ConsumerGroup("card-service"),
		kgo.ConsumeTopics("card.commands"), kgo.DisableAutoCommit(), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.ProducerLinger(0))
	if err != nil {
		panic(err)
	}
	defer workerClient.Close()
	worker, err := pipe.NewStageWorker(workerClient, commands, func(_ context.Context, c Payment, _ schema.Envelope) (pipe.Reply, error) {
		return pipe.NewReply(replies, cardCharged.Type, Payment{OrderID: c.OrderID, Receipt: "r-" + c.OrderID}), nil
	})
	if err != nil {
		panic(err)
	}
	served := make(chan error, 1)
	go func() { served <- worker.Run(ctx) }()

	done := make(sagaEnded, 1)
	rt, err := saga.NewRuntime(checkout, saga.WithClientOptions(kgo.SeedBrokers(stack.KafkaAddrs()...)), saga.WithRegistry(serde), saga.WithHooks(done))
	if err != nil {
		panic(err)
	}
	ran := make(chan error, 1)
	go func() { ran <- rt.Run(ctx) }()

	starter, err := checkout.NewStarter(client, serde)
	if err != nil {
		panic(err)
	}
	if _, err := starter.Start(ctx, "order-1", Payment{OrderID: "order-1"}); err != nil {
		panic(err)
	}
	fmt.Println(<-done)
	cancel()
	if err := <-ran; err != nil {
		panic(err)
	}
	if err := <-served; err != nil {
		panic(err)
	}
	rt.Close()
	// Output: order-1 Completed
}
