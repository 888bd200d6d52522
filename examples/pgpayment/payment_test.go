package pgpayment_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/goleak"

	"github.com/sagapipe/sagapipe/devstack"
	"github.com/sagapipe/sagapipe/examples/orders"
	"github.com/sagapipe/sagapipe/examples/pgpayment"
	"github.com/sagapipe/sagapipe/internal/testkit"
	"github.com/sagapipe/sagapipe/kread"
	"github.com/sagapipe/sagapipe/saga"
	"github.com/sagapipe/sagapipe/schema"
	"github.com/sagapipe/sagapipe/statemachine"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// env is the embedded Kafka and registry, PostgreSQL, and the payment
// service's topics.
type env struct {
	stack *devstack.Stack
	pool  *pgxpool.Pool
	serde *schema.Serde
	admin *kadm.Client
}

func newEnv(t *testing.T) *env {
	t.Helper()
	stack, err := devstack.Start(devstack.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stack.Close() })
	pg := testkit.StartPostgres(t)
	// The service's handlers hold a connection each (Concurrency), the
	// relay two, the test one.
	pool, err := pgxpool.New(context.Background(), pg.URL+"&pool_max_conns=16")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	serde, err := schema.NewSerde(stack.RegistryURL(), schema.WithSubjectNameStrategy(schema.RecordNameStrategy))
	if err != nil {
		t.Fatal(err)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(stack.KafkaAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	e := &env{stack: stack, pool: pool, serde: serde, admin: kadm.NewClient(cl)}
	for _, topic := range []string{orders.InventoryTopic, orders.PaymentTopic, orders.ShippingTopic} {
		if err := saga.EnsureTopic(context.Background(), e.admin, topic, 3, 1, nil); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

// run runs fn until the test ends, failing the test when it returns an
// error.
func run(t *testing.T, name string, fn func(ctx context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := fn(ctx); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
}

// outcomes records how each saga ended (saga.HookFinished).
type outcomes struct {
	mu sync.Mutex
	by map[string]statemachine.State
}

func (o *outcomes) OnFinished(id string, outcome statemachine.State) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.by[id] = outcome
}

func (o *outcomes) snapshot() map[string]statemachine.State {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := make(map[string]statemachine.State, len(o.by))
	for k, v := range o.by {
		out[k] = v
	}
	return out
}

// The orders saga with the demo's inventory and shipping services and
// this payment service: every saga ends, and in the database the money
// adds up for every order (charged = refunded + captured, captured only
// when the saga completed), nothing applied twice.
func TestOrdersSagaWithPaymentOnPostgres(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	s, err := orders.Saga(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.EnsureTopics(ctx, e.admin, 3, 1); err != nil {
		t.Fatal(err)
	}
	ended := &outcomes{by: map[string]statemachine.State{}}
	runtime, err := saga.NewRuntime(s, saga.WithClientOptions(kgo.SeedBrokers(e.stack.KafkaAddrs()...)), saga.WithRegistry(e.serde), saga.WithHooks(ended))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(runtime.Close) // after Run has returned: cleanups run last-in first-out
	run(t, "saga runtime", runtime.Run)
	// Shipping fails for some orders: their payment is refunded.
	others := orders.NewParticipants(e.serde, orders.Faults{ShippingFailureRate: 0.3})
	others.Services = []string{orders.ServiceInventory, orders.ServiceShipping}
	run(t, "inventory and shipping", func(ctx context.Context) error { return others.Run(ctx, e.stack.KafkaAddrs()) })
	payment, err := pgpayment.New(ctx, e.pool, e.serde, pgpayment.Config{
		Decline: func(c orders.ChargePayment) bool { return strings.HasSuffix(c.OrderID, "7") },
	})
	if err != nil {
		t.Fatal(err)
	}
	run(t, "payment", func(ctx context.Context) error { return payment.Run(ctx, e.stack.KafkaAddrs()) })

	const n = 60
	producer, err := kgo.NewClient(kgo.SeedBrokers(e.stack.KafkaAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer producer.Close()
	starter, err := s.NewStarter(producer, e.serde, saga.StartSource("pgpayment-test"))
	if err != nil {
		t.Fatal(err)
	}
	ids := make([]string, n)
	for i := range n {
		o := orders.DemoOrder(i)
		ids[i] = o.OrderID
		rec, err := starter.Record(ctx, o.OrderID, o)
		if err != nil {
			t.Fatal(err)
		}
		starter.PublishAsync(ctx, rec, func(_ *kgo.Record, err error) {
			if err != nil {
				t.Errorf("starting %s: %v", rec.Key, err)
			}
		})
	}
	if err := producer.Flush(ctx); err != nil {
		t.Fatal(err)
	}

	testkit.WaitUntil(t, 25*time.Second, func() error {
		if got := len(ended.snapshot()); got < n {
			return fmt.Errorf("%d of %d sagas ended", got, n)
		}
		return nil
	})
	// Nothing left for payment: every command answered, every reply out.
	testkit.WaitUntil(t, 10*time.Second, func() error { return drained(ctx, e) })
	// Then every payment command comes once more, as a saga's resend (a
	// new ce_id, the same idempotency key): all answered, none applied.
	var resent []*kgo.Record
	if err := kread.ToEnd(ctx, []kgo.Opt{kgo.SeedBrokers(e.stack.KafkaAddrs()...)}, orders.PaymentTopic, nil, func(r *kgo.Record) error {
		resent = append(resent, &kgo.Record{Topic: r.Topic, Key: r.Key, Value: r.Value,
			Headers: schema.SetHeader(r.Headers, schema.HeaderID, schema.NewID())})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := producer.ProduceSync(ctx, resent...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	testkit.WaitUntil(t, 10*time.Second, func() error { return drained(ctx, e) })
	var answers int
	if err := e.pool.QueryRow(ctx, "SELECT count(*) FROM payment_outbox").Scan(&answers); err != nil {
		t.Fatal(err)
	}
	if answers != 2*len(resent) {
		t.Errorf("%d replies to %d commands and their %d resends: want one each", answers, len(resent), len(resent))
	}

	got := ended.snapshot()
	byOutcome := map[statemachine.State]int{}
	for _, id := range ids {
		byOutcome[got[id]]++
	}
	violations, err := payment.Check(ctx, ids, got)
	if err != nil {
		t.Fatal(err)
	}
	violations = append(violations, others.Ledger.Check(ids, got)...)
	if len(violations) > 0 {
		t.Fatalf("invariants broken: %v", violations)
	}
	var charges, refunds, declined int
	if err := e.pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE entry = 'charge'), count(*) FILTER (WHERE entry = 'refund')
FROM payment_ledger`).Scan(&charges, &refunds); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if strings.HasSuffix(id, "7") {
			declined++
		}
	}
	t.Logf("outcomes %v; %d charges, %d refunds, %d declined", byOutcome, charges, refunds, declined)
	if byOutcome[saga.StateCompleted]+byOutcome[saga.StateCompensated] != n {
		t.Fatalf("outcomes %v: want all %d sagas completed or compensated", byOutcome, n)
	}
	if byOutcome[saga.StateCompleted] == 0 || byOutcome[saga.StateCompensated] == 0 || refunds == 0 {
		t.Fatalf("outcomes %v, %d refunds: want completed and compensated sagas, and refunds, at these fault rates", byOutcome, refunds)
	}
	if charges != n-declined {
		t.Errorf("%d charges, want one per order not declined: %d", charges, n-declined)
	}
}

// drained reports whether the payment service has answered every command
// (none after its group's committed offsets; a transaction's commit marker
// is no command) and published every reply.
func drained(ctx context.Context, e *env) error {
	committed, err := e.admin.FetchOffsets(ctx, orders.PaymentTopic+".service")
	if err == nil {
		err = committed.Error()
	}
	if err != nil {
		return err
	}
	from := map[int32]int64{}
	committed.Each(func(o kadm.OffsetResponse) {
		if o.Topic == orders.PaymentTopic {
			from[o.Partition] = o.At
		}
	})
	unanswered := 0
	if _, err := kread.From(ctx, []kgo.Opt{kgo.SeedBrokers(e.stack.KafkaAddrs()...)}, orders.PaymentTopic, nil, from,
		func(*kgo.Record) error { unanswered++; return nil }); err != nil {
		return err
	}
	if unanswered > 0 {
		return fmt.Errorf("%d payment commands unanswered", unanswered)
	}
	var unpublished int
	if err := e.pool.QueryRow(ctx, "SELECT count(*) FROM payment_outbox WHERE published_at IS NULL").Scan(&unpublished); err != nil {
		return err
	}
	if unpublished > 0 {
		return fmt.Errorf("%d replies unpublished", unpublished)
	}
	return nil
}

// A refund that overtakes its charge (the saga gave the charge up and
// compensated it) refunds nothing and bars the charge: the charge, when
// its command comes after all, is declined and not applied. A resend of
// the refund is answered again and writes nothing.
func TestRefundBeforeChargeBarsTheCharge(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	const inbox = "orders.inbox"
	if err := saga.EnsureTopic(ctx, e.admin, inbox, 1, 1, nil); err != nil {
		t.Fatal(err)
	}
	payment, err := pgpayment.New(ctx, e.pool, e.serde, pgpayment.Config{})
	if err != nil {
		t.Fatal(err)
	}
	run(t, "payment", func(ctx context.Context) error { return payment.Run(ctx, e.stack.KafkaAddrs()) })

	refundCodec, err := schema.NewCodec[orders.RefundPayment](e.serde, orders.EvRefundPayment.Schema)
	if err != nil {
		t.Fatal(err)
	}
	chargeCodec, err := schema.NewCodec[orders.ChargePayment](e.serde, orders.EvChargePayment.Schema)
	if err != nil {
		t.Fatal(err)
	}
	command := func(typ, kind string, value []byte) *kgo.Record {
		env := schema.NewEnvelope(typ, "sagapipe/orders", time.Now())
		env.SagaName, env.SagaID, env.SagaStep, env.CorrelationID = "orders", "order-1", "payment", "order-1"
		env.ReplyTo, env.IdempotencyKey = inbox, "order-1/payment/"+kind
		return &kgo.Record{Topic: orders.PaymentTopic, Key: []byte("order-1"), Value: value, Headers: env.Apply(nil)}
	}
	refund, err := refundCodec.Encode(ctx, orders.PaymentTopic, &orders.RefundPayment{OrderID: "order-1", AmountCents: 500})
	if err != nil {
		t.Fatal(err)
	}
	charge, err := chargeCodec.Encode(ctx, orders.PaymentTopic, &orders.ChargePayment{OrderID: "order-1", CustomerID: "c-1", AmountCents: 500})
	if err != nil {
		t.Fatal(err)
	}
	declinedCodec, err := schema.NewCodec[orders.PaymentDeclined](e.serde, orders.EvPaymentDeclined.Schema)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.stack.KafkaAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	// One partition key: they come in this order.
	if err := cl.ProduceSync(ctx,
		command(orders.EvRefundPayment.Type, "undo", refund),
		command(orders.EvChargePayment.Type, "do", charge),
		command(orders.EvRefundPayment.Type, "undo", refund), // the refund resent
	).FirstErr(); err != nil {
		t.Fatal(err)
	}

	var got []string
	testkit.WaitUntil(t, 20*time.Second, func() error {
		got = got[:0]
		err := kread.ToEnd(ctx, []kgo.Opt{kgo.SeedBrokers(e.stack.KafkaAddrs()...)}, inbox, nil, func(r *kgo.Record) error {
			typ, _ := schema.Header(r.Headers, schema.HeaderType)
			if typ == orders.EvPaymentDeclined.Type {
				d, err := declinedCodec.Decode(ctx, r.Value)
				if err != nil {
					return err
				}
				typ += ": " + d.Reason
			}
			got = append(got, typ)
			return nil
		})
		if err != nil {
			return err
		}
		if len(got) < 3 {
			return fmt.Errorf("%d of 3 replies: %q", len(got), got)
		}
		return nil
	})
	want := []string{orders.EvPaymentRefunded.Type, orders.EvPaymentDeclined.Type + ": refunded before it was charged", orders.EvPaymentRefunded.Type}
	if !slices.Equal(got, want) {
		t.Errorf("replies %q, want %q", got, want)
	}
	var entries []string
	rows, err := e.pool.Query(ctx, "SELECT entry FROM payment_ledger WHERE order_id = 'order-1' ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var entry string
		if err := rows.Scan(&entry); err != nil {
			t.Fatal(err)
		}
		entries = append(entries, entry)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(entries, []string{"bar"}) {
		t.Errorf("the ledger holds %q for the order, want only the bar", entries)
	}
}
