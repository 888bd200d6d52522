package pipe_test

import (
	"context"
	"fmt"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/devstack"
	"github.com/sagapipe/sagapipe/pipe"
)

// Records consumed from one topic are piped to the next, each with a result.
func Example() {
	ctx := context.Background()
	stack, err := devstack.Start(devstack.Config{})
	if err != nil {
		panic(err)
	}
	defer stack.Close()
	cl, err := kgo.NewClient(kgo.SeedBrokers(stack.KafkaAddrs()...),
		kgo.ConsumeTopics("payments"), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		panic(err)
	}
	defer cl.Close()
	if _, err := kadm.NewClient(cl).CreateTopics(ctx, 1, 1, nil, "payments", "shipping"); err != nil {
		panic(err)
	}
	if err := cl.ProduceSync(ctx, &kgo.Record{Topic: "payments", Value: []byte("order-1 paid")}).FirstErr(); err != nil {
		panic(err)
	}

	piper, err := pipe.New(cl, pipe.WithConsumerGroup("payments-service"))
	if err != nil {
		panic(err)
	}
	defer piper.Close(ctx)
	for _, rec := range cl.PollFetches(ctx).Records() {
		res := piper.PipeSync(ctx, "shipping", pipe.Message{Source: rec, PassThrough: "mine"})
		fmt.Println(res.Err, res.PassThrough, string(res.Record.Value), res.Record.Topic)
		for _, h := range res.Record.Headers[:4] {
			fmt.Printf("%s=%s\n", h.Key, h.Value)
		}
	}
	// Output:
	// <nil> mine order-1 paid shipping
	// original_topic=payments
	// original_partition=0
	// original_offset=0
	// original_consumer_group=payments-service
}
