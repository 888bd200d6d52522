package outbox_test

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/devstack"
	"github.com/sagapipe/sagapipe/internal/testkit"
	"github.com/sagapipe/sagapipe/outbox"
	"github.com/sagapipe/sagapipe/pipe"
	"github.com/sagapipe/sagapipe/schema"
)

// Withdrawal is the command of the cash service in the example, and its
// reply.
type Withdrawal struct {
	Account string `avro:"account"`
	Cents   int64  `avro:"cents"`
}

func withdrawalSchema(name string) string {
	return `{"type":"record","name":"` + name + `","namespace":"bank","fields":[
		{"name":"account","type":"string"},{"name":"cents","type":"long"}]}`
}

// A participant takes cash out of accounts in PostgreSQL: the withdrawal
// and its reply commit together, the relay sends the reply, and a resend
// of the command is answered without a second withdrawal.
func Example() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stack, err := devstack.Start(devstack.Config{})
	if err != nil {
		panic(err)
	}
	defer stack.Close()
	pg, err := testkit.LaunchPostgres() // a PostgreSQL server of its own, on a free port
	if err != nil {
		panic(err)
	}
	defer pg.Stop()
	pool, err := pgxpool.New(ctx, pg.URL)
	if err != nil {
		panic(err)
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, "CREATE TABLE withdrawals (account text, cents bigint)"); err != nil {
		panic(err)
	}
	serde, err := schema.NewSerde(stack.RegistryURL(), schema.WithSubjectNameStrategy(schema.RecordNameStrategy))
	if err != nil {
		panic(err)
	}
	commands, err := schema.NewCodec[Withdrawal](serde, withdrawalSchema("Withdraw"))
	if err != nil {
		panic(err)
	}
	replies, err := schema.NewCodec[Withdrawal](serde, withdrawalSchema("Withdrawn"))
	if err != nil {
		panic(err)
	}

	store, err := outbox.New(ctx, pool, outbox.WithPiperOptions(pipe.WithSource("cash-service")))
	if err != nil {
		panic(err)
	}
	handler := outbox.Handler(store, func(ctx context.Context, tx pgx.Tx, w Withdrawal, env schema.Envelope) (pipe.Reply, error) {
		if _, err := tx.Exec(ctx, "INSERT INTO withdrawals VALUES ($1, $2)", w.Account, w.Cents); err != nil {
			return pipe.Reply{}, err
		}
		return pipe.NewReply(replies, "bank.Withdrawn", w), nil
	})

	cl, err := kgo.NewClient(kgo.SeedBrokers(stack.KafkaAddrs()...), kgo.ConsumerGroup("cash-service"),
		kgo.ConsumeTopics("cash.commands"), kgo.DisableAutoCommit(), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.ProducerLinger(0))
	if err != nil {
		panic(err)
	}
	defer cl.Close()
	if _, err := kadm.NewClient(cl).CreateTopics(ctx, 1, 1, nil, "cash.commands", "transfers.inbox"); err != nil {
		panic(err)
	}
	worker, err := pipe.NewStageWorker(cl, commands, handler)
	if err != nil {
		panic(err)
	}
	relay, err := outbox.NewRelay(store, cl)
	if err != nil {
		panic(err)
	}
	done := make(chan struct{}, 2)
	go func() { _ = worker.Run(ctx); done <- struct{}{} }()
	go func() { _ = relay.Run(ctx); done <- struct{}{} }()
	defer func() { cancel(); <-done; <-done }()

	// The saga sends the command, and resends it (a new ce_id, the same
	// idempotency key).
	value, err := commands.Encode(ctx, "cash.commands", &Withdrawal{Account: "alice", Cents: 250})
	if err != nil {
		panic(err)
	}
	env := schema.NewEnvelope("bank.Withdraw", "transfers-saga", time.Now())
	env.SagaName, env.SagaID, env.ReplyTo, env.IdempotencyKey = "transfers", "t-1", "transfers.inbox", "t-1/cash/do"
	first := &kgo.Record{Topic: "cash.commands", Key: []byte("t-1"), Value: value, Headers: env.Apply(nil)}
	env.ID = schema.NewID()
	again := &kgo.Record{Topic: "cash.commands", Key: []byte("t-1"), Value: value, Headers: env.Apply(nil)}
	if err := cl.ProduceSync(ctx, first, again).FirstErr(); err != nil {
		panic(err)
	}

	inbox, err := kgo.NewClient(kgo.SeedBrokers(stack.KafkaAddrs()...), kgo.ConsumeTopics("transfers.inbox"),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		panic(err)
	}
	defer inbox.Close()
	for answered := 0; answered < 2; {
		for _, r := range inbox.PollFetches(ctx).Records() {
			reply, err := replies.Decode(ctx, r.Value)
			if err != nil {
				panic(err)
			}
			typ, _ := schema.Header(r.Headers, schema.HeaderType)
			fmt.Println(typ, reply.Account, reply.Cents)
			answered++
		}
	}
	var withdrawals int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM withdrawals").Scan(&withdrawals); err != nil {
		panic(err)
	}
	fmt.Println("withdrawals:", withdrawals)
	// Output:
	// bank.Withdrawn alice 250
	// bank.Withdrawn alice 250
	// withdrawals: 1
}
