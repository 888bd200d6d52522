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

// A participant debits accounts in PostgreSQL: the debit and its reply
// commit together, the relay sends the reply, and a resend of the command
// is answered without a second debit.
func Example() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stack, err := devstack.Start(devstack.Config{})
	if err != nil {
		panic(err)
	}
	defer stack.Close()
	pg, err := testkit.LaunchPostgres()
	if err != nil {
		panic(err)
	}
	defer pg.Stop()
	pool, err := pgxpool.New(ctx, pg.URL)
	if err != nil {
		panic(err)
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, "CREATE TABLE debits (account text, cents bigint)"); err != nil {
		panic(err)
	}
	c, err := newCodecs(stack.RegistryURL())
	if err != nil {
		panic(err)
	}

	store, err := outbox.New(ctx, pool, outbox.WithPiperOptions(pipe.WithSource("accounts-service")))
	if err != nil {
		panic(err)
	}
	handler := outbox.Handler(store, func(ctx context.Context, tx pgx.Tx, cmd Debit, env schema.Envelope) (pipe.Reply, error) {
		if _, err := tx.Exec(ctx, "INSERT INTO debits VALUES ($1, $2)", cmd.Account, cmd.Cents); err != nil {
			return pipe.Reply{}, err
		}
		return pipe.NewReply(c.debited, debitedType, Debited{Account: cmd.Account, Balance: 1000 - cmd.Cents}), nil
	})

	cl, err := kgo.NewClient(workerClientOpts(stack.KafkaAddrs(), "accounts")...)
	if err != nil {
		panic(err)
	}
	defer cl.Close()
	if _, err := kadm.NewClient(cl).CreateTopics(ctx, 1, 1, nil, commandsTopic, inboxTopic); err != nil {
		panic(err)
	}
	worker, err := pipe.NewStageWorker(cl, c.debit, handler)
	if err != nil {
		panic(err)
	}
	relay, err := outbox.NewRelay(store, cl)
	if err != nil {
		panic(err)
	}
	done := make(chan struct{}, 2)
	go func() { worker.Run(ctx); done <- struct{}{} }()
	go func() { relay.Run(ctx); done <- struct{}{} }()
	defer func() { cancel(); <-done; <-done }()

	// The saga sends the command, and resends it.
	value, _ := c.debit.Encode(ctx, commandsTopic, &Debit{Account: "alice", Cents: 250})
	env := schema.NewEnvelope(debitType, "transfers-saga", time.Now())
	env.SagaName, env.SagaID, env.ReplyTo, env.IdempotencyKey = "transfers", "t-1", inboxTopic, "t-1/debit/do"
	first := &kgo.Record{Topic: commandsTopic, Key: []byte("t-1"), Value: value, Headers: env.Apply(nil)}
	env.ID = schema.NewID()
	again := &kgo.Record{Topic: commandsTopic, Key: []byte("t-1"), Value: value, Headers: env.Apply(nil)}
	if err := cl.ProduceSync(ctx, first, again).FirstErr(); err != nil {
		panic(err)
	}

	replies, err := consumeN(stack.KafkaAddrs(), inboxTopic, 2, defaultWait, func(*kgo.Record) bool { return true })
	if err != nil {
		panic(err)
	}
	for _, r := range replies {
		reply, _ := c.debited.Decode(ctx, r.Value)
		typ, _ := schema.Header(r.Headers, schema.HeaderType)
		fmt.Println(typ, reply.Account, reply.Balance)
	}
	var debits int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM debits").Scan(&debits); err != nil {
		panic(err)
	}
	fmt.Println("debits:", debits)
	// Output:
	// sagapipe.test.accounts.Debited alice 750
	// sagapipe.test.accounts.Debited alice 750
	// debits: 1
}
