package pgpayment

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/sync/errgroup"

	"github.com/sagapipe/sagapipe/examples/orders"
	"github.com/sagapipe/sagapipe/outbox"
	"github.com/sagapipe/sagapipe/pipe"
	"github.com/sagapipe/sagapipe/saga"
	"github.com/sagapipe/sagapipe/schema"
	"github.com/sagapipe/sagapipe/statemachine"
)

// TablePrefix starts the names of the service's tables: payment_ledger,
// and the outbox's payment_processed and payment_outbox.
const TablePrefix = "payment_"

// DefaultConcurrency is Config.Concurrency's default.
const DefaultConcurrency = 8

// Config configures the payment service.
type Config struct {
	// Decline, when set, tells which charges the card issuer declines
	// (the demo's DeclineRate); nil declines none.
	Decline func(orders.ChargePayment) bool
	// Concurrency is how many commands are handled at once (default
	// DefaultConcurrency), each holding a connection of the pool while it
	// is handled: keep the pool at least this big.
	Concurrency int
}

// Payment is the orders saga's payment service on PostgreSQL: it charges
// and refunds in the table payment_ledger, in the transaction that
// records the command and its reply (package outbox).
type Payment struct {
	pool     *pgxpool.Pool
	store    *outbox.Store
	serde    *schema.Serde
	cfg      Config
	charged  *schema.Codec[orders.PaymentCharged]
	declined *schema.Codec[orders.PaymentDeclined]
	refunded *schema.Codec[orders.PaymentRefunded]
}

// New returns the payment service on pool, creating its tables when they
// are missing. serde is the saga's (orders uses RecordNameStrategy).
func New(ctx context.Context, pool *pgxpool.Pool, serde *schema.Serde, cfg Config) (*Payment, error) {
	if cfg.Concurrency == 0 {
		cfg.Concurrency = DefaultConcurrency
	}
	store, err := outbox.New(ctx, pool, outbox.WithTablePrefix(TablePrefix),
		outbox.WithPiperOptions(pipe.WithSource(orders.PaymentTopic+".service")))
	if err != nil {
		return nil, err
	}
	// One row per application of an effect, nothing folded: a charge
	// applied twice shows as two rows.
	if _, err := pool.Exec(ctx, `
CREATE TABLE IF NOT EXISTS payment_ledger (
	id              bigserial PRIMARY KEY,
	order_id        text NOT NULL,
	entry           text NOT NULL CHECK (entry IN ('charge', 'refund', 'bar')),
	amount_cents    bigint NOT NULL,
	command_id      text NOT NULL,
	idempotency_key text NOT NULL,
	recorded_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS payment_ledger_order ON payment_ledger (order_id);`); err != nil {
		return nil, fmt.Errorf("pgpayment: create payment_ledger: %w", err)
	}
	p := &Payment{pool: pool, store: store, serde: serde, cfg: cfg}
	var errs [3]error
	p.charged, errs[0] = schema.NewCodec[orders.PaymentCharged](serde, orders.EvPaymentCharged.Schema)
	p.declined, errs[1] = schema.NewCodec[orders.PaymentDeclined](serde, orders.EvPaymentDeclined.Schema)
	p.refunded, errs[2] = schema.NewCodec[orders.PaymentRefunded](serde, orders.EvPaymentRefunded.Schema)
	if err := errors.Join(errs[:]...); err != nil {
		return nil, err
	}
	return p, nil
}

// account is what the ledger holds of an order.
type account struct {
	charged, refunded, barred bool
	chargedCents              int64
}

// lockAccount takes the order's lock for the transaction and reads its
// entries: a charge and its refund (or a compensation that overtook its
// charge) come with idempotency keys of their own, and must not
// interleave.
func lockAccount(ctx context.Context, tx pgx.Tx, order string) (account, error) {
	var a account
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtext('payment ' || $1))", order); err != nil {
		return a, err
	}
	rows, err := tx.Query(ctx, "SELECT entry, amount_cents FROM payment_ledger WHERE order_id = $1", order)
	if err != nil {
		return a, err
	}
	defer rows.Close()
	for rows.Next() {
		var entry string
		var cents int64
		if err := rows.Scan(&entry, &cents); err != nil {
			return a, err
		}
		switch entry {
		case "charge":
			a.charged, a.chargedCents = true, cents
		case "refund":
			a.refunded = true
		case "bar":
			a.barred = true
		}
	}
	return a, rows.Err()
}

func record(ctx context.Context, tx pgx.Tx, order, entry string, cents int64, env schema.Envelope) error {
	_, err := tx.Exec(ctx, `INSERT INTO payment_ledger (order_id, entry, amount_cents, command_id, idempotency_key)
VALUES ($1, $2, $3, $4, $5)`, order, entry, cents, env.ID, env.IdempotencyKey)
	return err
}

// charge charges the order unless its refund came first and barred it.
func (p *Payment) charge(ctx context.Context, tx pgx.Tx, c orders.ChargePayment, env schema.Envelope) (pipe.Reply, error) {
	if p.cfg.Decline != nil && p.cfg.Decline(c) {
		return pipe.NewReply(p.declined, orders.EvPaymentDeclined.Type, orders.PaymentDeclined{OrderID: c.OrderID, Reason: "card declined"}), nil
	}
	a, err := lockAccount(ctx, tx, c.OrderID)
	if err != nil {
		return pipe.Reply{}, err
	}
	if a.barred {
		return pipe.NewReply(p.declined, orders.EvPaymentDeclined.Type, orders.PaymentDeclined{OrderID: c.OrderID, Reason: "refunded before it was charged"}), nil
	}
	if !a.charged {
		if err := record(ctx, tx, c.OrderID, "charge", c.AmountCents, env); err != nil {
			return pipe.Reply{}, err
		}
	}
	return pipe.NewReply(p.charged, orders.EvPaymentCharged.Type,
		orders.PaymentCharged{OrderID: c.OrderID, PaymentID: "pay-" + c.OrderID, AmountCents: c.AmountCents}), nil
}

// refund refunds the order's charge; a refund of a charge never applied
// (the saga gave the step up) applies nothing, and bars the charge, should
// its command still come.
func (p *Payment) refund(ctx context.Context, tx pgx.Tx, c orders.RefundPayment, env schema.Envelope) (pipe.Reply, error) {
	a, err := lockAccount(ctx, tx, c.OrderID)
	if err != nil {
		return pipe.Reply{}, err
	}
	switch {
	case !a.charged && !a.barred:
		err = record(ctx, tx, c.OrderID, "bar", 0, env)
	case a.charged && !a.refunded:
		err = record(ctx, tx, c.OrderID, "refund", a.chargedCents, env)
	}
	if err != nil {
		return pipe.Reply{}, err
	}
	return pipe.NewReply(p.refunded, orders.EvPaymentRefunded.Type, orders.PaymentRefunded{OrderID: c.OrderID, AmountCents: c.AmountCents}), nil
}

// Run runs the service until ctx ends: a stage worker on
// orders.PaymentTopic, in the demo's payment group, and the relay of its
// outbox. clientOpts reach the cluster (TLS, SASL).
func (p *Payment) Run(ctx context.Context, brokers []string, clientOpts ...kgo.Opt) error {
	mux := pipe.NewMux()
	if err := errors.Join(
		saga.Route(mux, p.serde, orders.EvChargePayment, outbox.Handler(p.store, p.charge)),
		saga.Route(mux, p.serde, orders.EvRefundPayment, outbox.Handler(p.store, p.refund)),
	); err != nil {
		return err
	}
	cl, err := kgo.NewClient(append(append([]kgo.Opt{kgo.SeedBrokers(brokers...)}, clientOpts...),
		kgo.ConsumerGroup(orders.PaymentTopic+".service"), kgo.ConsumeTopics(orders.PaymentTopic),
		kgo.DisableAutoCommit(), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ProducerLinger(0), // the relay's replies are awaited by sagas
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))...)
	if err != nil {
		return err
	}
	defer cl.Close()
	worker, err := pipe.NewMuxWorker(cl, mux, pipe.WithConcurrency(p.cfg.Concurrency))
	if err != nil {
		return err
	}
	relay, err := outbox.NewRelay(p.store, cl)
	if err != nil {
		return err
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return worker.Run(gctx) })
	g.Go(func() error { return relay.Run(gctx) })
	if err := g.Wait(); err != nil {
		return fmt.Errorf("payment service: %w", err)
	}
	return nil
}

// Check returns every invariant the ledger breaks for orders, given how
// each saga ended (a missing outcome counts as not completed): money
// charged = refunded + captured, captured only when completed; no order
// charged or refunded twice, no command applied twice, no charge after a
// refund barred it. It counts the ledger's rows as they are.
func (p *Payment) Check(ctx context.Context, ids []string, outcomes map[string]statemachine.State) ([]string, error) {
	type sums struct{ charges, refunds, bars, charged, refunded int64 }
	byOrder := map[string]*sums{}
	rows, err := p.pool.Query(ctx, "SELECT order_id, entry, count(*), sum(amount_cents) FROM payment_ledger GROUP BY order_id, entry")
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var order, entry string
		var n, cents int64
		if err := rows.Scan(&order, &entry, &n, &cents); err != nil {
			rows.Close()
			return nil, err
		}
		s := byOrder[order]
		if s == nil {
			s = &sums{}
			byOrder[order] = s
		}
		switch entry {
		case "charge":
			s.charges, s.charged = n, cents
		case "refund":
			s.refunds, s.refunded = n, cents
		case "bar":
			s.bars = n
		}
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	var violations []string
	violate := func(format string, a ...any) { violations = append(violations, fmt.Sprintf(format, a...)) }
	for _, o := range ids {
		s := byOrder[o]
		if s == nil {
			s = &sums{}
		}
		captured := int64(0)
		if outcomes[o] == saga.StateCompleted {
			captured = s.charged
		}
		if s.charged != s.refunded+captured {
			violate("%s (%s): money charged %d != refunded %d + captured %d", o, outcomes[o], s.charged, s.refunded, captured)
		}
		if s.charges > 1 || s.refunds > 1 {
			violate("%s: charged %d times, refunded %d times", o, s.charges, s.refunds)
		}
		if s.bars > 0 && s.charges > 0 {
			violate("%s: charged after a refund barred the charge", o)
		}
	}
	twice, err := p.pool.Query(ctx, "SELECT command_id, count(*) FROM payment_ledger GROUP BY command_id HAVING count(*) > 1")
	if err != nil {
		return nil, err
	}
	applied := map[string]int{}
	for twice.Next() {
		var id string
		var n int
		if err := twice.Scan(&id, &n); err != nil {
			twice.Close()
			return nil, err
		}
		applied[id] = n
	}
	if err := twice.Err(); err != nil {
		return nil, err
	}
	for _, id := range slices.Sorted(maps.Keys(applied)) {
		violate("command %s applied %d times", id, applied[id])
	}
	return violations, nil
}
