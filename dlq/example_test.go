package dlq_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/devstack"
	"github.com/sagapipe/sagapipe/dlq"
)

// printer reports dead-lettered records; its OnDeadLettered makes it a hook.
type printer struct{ done chan struct{} }

func (p printer) OnDeadLettered(rec *kgo.Record, f dlq.Failure) {
	fmt.Printf("%s dead-lettered: %s after %d attempt(s): %v\n", rec.Value, f.Class, f.Attempts, f.Err)
	close(p.done)
}

// A poison record goes to orders.dlq at once; the rest are handled.
func Example() {
	ctx := context.Background()
	stack, err := devstack.Start(devstack.Config{})
	if err != nil {
		panic(err)
	}
	defer stack.Close()
	cl, err := kgo.NewClient(kgo.SeedBrokers(stack.KafkaAddrs()...))
	if err != nil {
		panic(err)
	}
	defer cl.Close()
	if _, err := kadm.NewClient(cl).CreateTopics(ctx, 1, 1, nil, "orders", "orders.dlq"); err != nil {
		panic(err)
	}
	for _, v := range []string{"order-1", "garbage", "order-2"} {
		if err := cl.ProduceSync(ctx, &kgo.Record{Topic: "orders", Value: []byte(v)}).FirstErr(); err != nil {
			panic(err)
		}
	}

	hook := printer{done: make(chan struct{})}
	handler := func(_ context.Context, rec *kgo.Record) error {
		if string(rec.Value) == "garbage" {
			return dlq.Poison(errors.New("not an order"))
		}
		return nil
	}
	consumer, err := dlq.NewConsumer("orders-service", []string{"orders"}, handler, dlq.Policy{}, dlq.WithHooks(hook),
		dlq.WithClientOptions(kgo.SeedBrokers(stack.KafkaAddrs()...), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart())))
	if err != nil {
		panic(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	ran := make(chan error)
	go func() { ran <- consumer.Run(runCtx) }()
	<-hook.done
	stop()
	<-ran
	consumer.Close()
	// Output: garbage dead-lettered: poison after 1 attempt(s): not an order
}
