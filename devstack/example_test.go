package devstack_test

import (
	"context"
	"fmt"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/devstack"
)

// The embedded stack is a Kafka and a Schema Registry on free localhost
// ports: any client reaches them, and topics are created explicitly.
func Example() {
	ctx := context.Background()
	stack, err := devstack.Start(devstack.Config{}) // port 0: free ports
	if err != nil {
		panic(err)
	}
	defer stack.Close()

	cl, err := kgo.NewClient(kgo.SeedBrokers(stack.KafkaAddrs()...),
		kgo.ConsumeTopics("greetings"), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		panic(err)
	}
	defer cl.Close()
	if _, err := kadm.NewClient(cl).CreateTopic(ctx, 1, 1, nil, "greetings"); err != nil {
		panic(err)
	}
	if err := cl.ProduceSync(ctx, &kgo.Record{Topic: "greetings", Value: []byte("hello")}).FirstErr(); err != nil {
		panic(err)
	}
	for _, rec := range cl.PollFetches(ctx).Records() {
		fmt.Println(rec.Topic, string(rec.Value))
	}
	// Output: greetings hello
}
