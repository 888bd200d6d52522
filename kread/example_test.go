package kread_test

import (
	"context"
	"fmt"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/devstack"
	"github.com/sagapipe/sagapipe/kread"
)

// ToEnd reads a topic up to where it ended when the read began, then
// returns: what a restore or a history view needs.
func ExampleToEnd() {
	ctx := context.Background()
	stack, err := devstack.Start(devstack.Config{})
	if err != nil {
		panic(err)
	}
	defer stack.Close()
	opts := []kgo.Opt{kgo.SeedBrokers(stack.KafkaAddrs()...)}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		panic(err)
	}
	defer cl.Close()
	if _, err := kadm.NewClient(cl).CreateTopic(ctx, 1, 1, nil, "orders.journal"); err != nil {
		panic(err)
	}
	for _, v := range []string{"placed", "charged", "shipped"} {
		if err := cl.ProduceSync(ctx, &kgo.Record{Topic: "orders.journal", Value: []byte(v)}).FirstErr(); err != nil {
			panic(err)
		}
	}

	err = kread.ToEnd(ctx, opts, "orders.journal", nil, func(rec *kgo.Record) error {
		fmt.Println(rec.Offset, string(rec.Value))
		return nil
	})
	fmt.Println("read to the end:", err)
	// Output:
	// 0 placed
	// 1 charged
	// 2 shipped
	// read to the end: <nil>
}
