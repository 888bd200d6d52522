package consume_test

import (
	"context"
	"fmt"
	"strings"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/devstack"
	"github.com/sagapipe/sagapipe/internal/consume"
)

// A poll-process-transact loop: each polled batch is piped on and its
// offsets committed in one transaction, ended even while the loop is
// being stopped.
func Example() {
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
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
	if _, err := kadm.NewClient(cl).CreateTopics(ctx, 1, 1, nil, "words", "shouted"); err != nil {
		panic(err)
	}
	if err := cl.ProduceSync(ctx, &kgo.Record{Topic: "words", Value: []byte("hello")}, &kgo.Record{Topic: "words", Value: []byte("saga")}).FirstErr(); err != nil {
		panic(err)
	}

	sess, err := kgo.NewGroupTransactSession(kgo.SeedBrokers(stack.KafkaAddrs()...), kgo.TransactionalID("shouter-1"),
		kgo.ConsumerGroup("shouter"), kgo.ConsumeTopics("words"), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	if err != nil {
		panic(err)
	}
	defer sess.Close()
	poller := consume.NewPoller(consume.Config{Name: "shouter", Poll: sess.PollFetches})
	for shouted := 0; shouted < 2; {
		fetches, stopped, err := poller.Poll(ctx, consume.NoWake)
		if stopped || err != nil {
			panic(fmt.Sprint(stopped, err))
		}
		committed, workErr, endErr := consume.Transact(ctx, sess, consume.DefaultGrace, func(ctx context.Context) (bool, error) {
			var out []*kgo.Record
			fetches.EachRecord(func(r *kgo.Record) {
				out = append(out, &kgo.Record{Topic: "shouted", Value: []byte(strings.ToUpper(string(r.Value)))})
			})
			return true, sess.ProduceSync(ctx, out...).FirstErr()
		})
		if workErr != nil || endErr != nil {
			panic(fmt.Sprint(workErr, endErr))
		}
		if committed {
			shouted += fetches.NumRecords()
		}
	}

	reader, err := kgo.NewClient(kgo.SeedBrokers(stack.KafkaAddrs()...), kgo.ConsumeTopics("shouted"),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	if err != nil {
		panic(err)
	}
	defer reader.Close()
	for read := 0; read < 2; {
		for _, r := range reader.PollFetches(ctx).Records() {
			fmt.Println(string(r.Value))
			read++
		}
	}
	// Output:
	// HELLO
	// SAGA
}
