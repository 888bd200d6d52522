package dlq_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/devstack"
	"github.com/sagapipe/sagapipe/dlq"
	"github.com/sagapipe/sagapipe/pipe"
	"github.com/sagapipe/sagapipe/schema"
)

// Charge is both the command a payment stage handles and its reply.
type Charge struct {
	OrderID string `avro:"order_id"`
}

// A stage worker's handler retried with backoff: order-1's charge fails
// twice and is then answered; order-2's never succeeds and is
// dead-lettered with the attempts it was given.
func ExampleRetryMiddleware() {
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
	commands, err := schema.NewCodec[Charge](serde, `{"type":"record","name":"Charge","namespace":"shop","fields":[{"name":"order_id","type":"string"}]}`)
	if err != nil {
		panic(err)
	}
	replies, err := schema.NewCodec[Charge](serde, `{"type":"record","name":"Charged","namespace":"shop","fields":[{"name":"order_id","type":"string"}]}`)
	if err != nil {
		panic(err)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(stack.KafkaAddrs()...))
	if err != nil {
		panic(err)
	}
	defer cl.Close()
	if _, err := kadm.NewClient(cl).CreateTopics(ctx, 1, 1, nil, "payment.commands", "payment.commands.dlq", "orders.inbox"); err != nil {
		panic(err)
	}
	for _, order := range []string{"order-1", "order-2"} {
		value, err := commands.Encode(ctx, "payment.commands", &Charge{OrderID: order})
		if err != nil {
			panic(err)
		}
		env := schema.NewEnvelope("shop.Charge", "orchestrator", time.Now())
		env.ReplyTo = "orders.inbox"
		if err := cl.ProduceSync(ctx, &kgo.Record{Topic: "payment.commands", Key: []byte(order), Value: value, Headers: env.Apply(nil)}).FirstErr(); err != nil {
			panic(err)
		}
	}

	// The participant: the handler in the retry middleware, and what it
	// gives up on dead-lettered by the failure policy of the same Policy.
	workerClient, err := kgo.NewClient(kgo.SeedBrokers(stack.KafkaAddrs()...), kgo.ConsumerGroup("payment-service"),
		kgo.ConsumeTopics("payment.commands"), kgo.DisableAutoCommit(), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.ProducerLinger(0),
		kgo.RecordPartitioner(pipe.NewPartitioner(nil))) // keeps dead letters in their origin partition's order
	if err != nil {
		panic(err)
	}
	defer workerClient.Close()
	policy := dlq.Policy{MaxRetries: 2, InitialBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond}
	retry, err := dlq.RetryMiddleware[Charge](policy)
	if err != nil {
		panic(err)
	}
	deadLetters, err := dlq.FailurePolicy(workerClient, policy)
	if err != nil {
		panic(err)
	}
	var mu sync.Mutex
	attempts := map[string]int{}
	charge := func(_ context.Context, c Charge, _ schema.Envelope) (pipe.Reply, error) {
		mu.Lock()
		defer mu.Unlock()
		attempts[c.OrderID]++
		if c.OrderID == "order-2" || attempts[c.OrderID] <= 2 {
			return pipe.Reply{}, errors.New("payment provider unavailable")
		}
		return pipe.NewReply(replies, "shop.Charged", c), nil
	}
	worker, err := pipe.NewStageWorker(workerClient, commands, retry(charge), pipe.WithFailurePolicy(deadLetters))
	if err != nil {
		panic(err)
	}
	ran := make(chan error, 1)
	go func() { ran <- worker.Run(ctx) }()

	reader, err := kgo.NewClient(kgo.SeedBrokers(stack.KafkaAddrs()...), kgo.ConsumeTopics("orders.inbox", "payment.commands.dlq"),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		panic(err)
	}
	defer reader.Close()
	for seen := 0; seen < 2; {
		for _, r := range reader.PollFetches(ctx).Records() {
			seen++
			if r.Topic == "orders.inbox" {
				c, err := replies.Decode(ctx, r.Value)
				if err != nil {
					panic(err)
				}
				mu.Lock()
				fmt.Printf("%s answered after %d attempts\n", c.OrderID, attempts[c.OrderID])
				mu.Unlock()
				continue
			}
			e, err := dlq.ParseEntry(r)
			if err != nil {
				panic(err)
			}
			fmt.Printf("%s dead-lettered: %s after %d attempts\n", r.Key, e.Class, e.Attempts)
		}
	}
	cancel()
	if err := <-ran; err != nil {
		panic(err)
	}
	// Unordered output:
	// order-1 answered after 3 attempts
	// order-2 dead-lettered: exhausted after 3 attempts
}
