package orders

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagapipe/sagapipe/pipe"
	"github.com/sagapipe/sagapipe/saga"
	"github.com/sagapipe/sagapipe/schema"
	"github.com/sagapipe/sagapipe/statemachine"
)

// Faults injects failures into the participants. Which orders are hit is
// decided by a hash of the order ID, so a run is reproducible.
type Faults struct {
	DeclineRate         float64       // payments declined
	ShippingFailureRate float64       // shipments that cannot be made
	PoisonRate          float64       // first replies sent as bytes that do not decode
	Latency             time.Duration // added to the first command of each type for an order (a resend is answered at once)
	// LostReplyRate is the share of orders whose first command to each
	// participant is applied and then not answered (a crash between the
	// effect and the reply): the resend must not apply it again.
	LostReplyRate  float64
	ShippingSilent bool // shipping never answers: sagas wait at shipping
}

func hit(orderID, salt string, rate float64) bool {
	if rate <= 0 {
		return false
	}
	h := fnv.New32a()
	h.Write([]byte(salt + orderID))
	return float64(h.Sum32()%10_000) < rate*10_000
}

// Declines tells whether the demo's card issuer declines order's payment
// at rate, as Faults.DeclineRate decides: the same orders are declined
// whichever payment service runs (examples/pgpayment's Config.Decline).
func Declines(orderID string, rate float64) bool { return hit(orderID, "decline", rate) }

// Ledger records what the participants did, per order. Each participant
// is idempotent by order ID, its business key (a resend carries a new
// command ID): a command whose effect is in the ledger already is answered
// from it and not applied again.
//
// It keeps the participant contract of an orchestrator that compensates
// uncertain steps: compensating an effect that was never applied is a
// no-op, and bars the effect, so that its command, should it still
// arrive, is refused instead of applied.
//
// Applications and ByCommand count every application the participants
// make, apart from the state that makes them idempotent: they are what the
// demo's invariants check, and a participant that applies an effect twice
// shows there.
type Ledger struct {
	mu       sync.Mutex
	Reserved map[string]int32 // stock reserved
	Released map[string]int32 // stock released again
	Shipped  map[string]int32 // stock shipped
	Charged  map[string]int64 // money charged
	Refunded map[string]int64 // money refunded
	// Barred holds the "<effect> <order>" compensated before they were
	// applied: they are never applied.
	Barred map[string]bool
	// Applications counts applications per "<effect> <order>"; more than
	// one is a bug.
	Applications map[string]int
	// ByCommand counts applications per command ID (ce_id); more than one
	// is a redelivered command applied again.
	ByCommand map[string]int
}

// Snapshot returns a copy of the ledger, safe to read while the
// participants run.
func (l *Ledger) Snapshot() *Ledger {
	l.mu.Lock()
	defer l.mu.Unlock()
	return &Ledger{Reserved: maps.Clone(l.Reserved), Released: maps.Clone(l.Released), Shipped: maps.Clone(l.Shipped),
		Charged: maps.Clone(l.Charged), Refunded: maps.Clone(l.Refunded), Barred: maps.Clone(l.Barred),
		Applications: maps.Clone(l.Applications), ByCommand: maps.Clone(l.ByCommand)}
}

// newLedger returns an empty ledger.
func newLedger() *Ledger {
	return &Ledger{Reserved: map[string]int32{}, Released: map[string]int32{}, Shipped: map[string]int32{},
		Charged: map[string]int64{}, Refunded: map[string]int64{}, Barred: map[string]bool{},
		Applications: map[string]int{}, ByCommand: map[string]int{}}
}

// Check returns every invariant the ledger breaks for orders, given how
// each saga ended (outcomes; a missing one counts as not completed): stock
// reserved = released + shipped, shipped only when completed; money
// charged = refunded + captured, captured only when completed; no effect
// applied twice for an order, no command applied twice.
func (l *Ledger) Check(orders []string, outcomes map[string]statemachine.State) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var violations []string
	violate := func(format string, a ...any) { violations = append(violations, fmt.Sprintf(format, a...)) }
	for _, o := range orders {
		outcome := outcomes[o]
		shipped, captured := int32(0), int64(0)
		if outcome == saga.StateCompleted {
			shipped, captured = l.Reserved[o], l.Charged[o]
		}
		if l.Reserved[o] != l.Released[o]+l.Shipped[o] || l.Shipped[o] != shipped {
			violate("%s (%s): stock reserved %d != released %d + shipped %d", o, outcome, l.Reserved[o], l.Released[o], l.Shipped[o])
		}
		if l.Charged[o] != l.Refunded[o]+captured {
			violate("%s (%s): money charged %d != refunded %d + captured %d", o, outcome, l.Charged[o], l.Refunded[o], captured)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(l.Applications)) {
		if n := l.Applications[k]; n > 1 {
			violate("%s applied %d times", k, n)
		}
	}
	for _, id := range slices.Sorted(maps.Keys(l.ByCommand)) {
		if n := l.ByCommand[id]; n > 1 {
			violate("command %s applied %d times", id, n)
		}
	}
	return violations
}

// applied counts one application of effect for order by command id.
func (l *Ledger) applied(effect, order, id string) {
	l.Applications[effect+" "+order]++
	l.ByCommand[id]++
}

// do applies effect for order (by command id) unless done says it was
// applied before, or it is barred; it reports whether the effect stands.
// The caller holds mu.
func (l *Ledger) do(effect, order, id string, done bool, apply func()) bool {
	if l.Barred[effect+" "+order] {
		return false
	}
	if !done {
		apply()
		l.applied(effect, order, id)
	}
	return true
}

// undo applies compensation for order (by command id) unless undone says
// it was applied before; when effect was never applied (applied false), it
// bars effect and applies nothing: the contract's no-op. The caller holds
// mu.
func (l *Ledger) undo(effect, compensation, order, id string, applied, undone bool, apply func()) {
	if !applied {
		l.Barred[effect+" "+order] = true
		return
	}
	if !undone {
		apply()
		l.applied(compensation, order, id)
	}
}

// command is what the participants need of any of their commands.
type command struct {
	OrderID     string
	Quantity    int32
	SKU         string
	AmountCents int64
}

// routes are a service's commands, each decoded into its own type by the
// saga's declaration of it.
func (p *Participants) routes(topic string) (*pipe.Mux, error) {
	m := pipe.NewMux()
	var errs []error
	route := func(err error) { errs = append(errs, err) }
	switch topic {
	case InventoryTopic:
		route(saga.Route(m, p.serde, EvReserveInventory, func(ctx context.Context, c ReserveInventory, env schema.Envelope) (pipe.Reply, error) {
			return p.handle(ctx, command{OrderID: c.OrderID, SKU: c.SKU, Quantity: c.Quantity}, env)
		}))
		route(saga.Route(m, p.serde, EvReleaseInventory, func(ctx context.Context, c ReleaseInventory, env schema.Envelope) (pipe.Reply, error) {
			return p.handle(ctx, command{OrderID: c.OrderID, SKU: c.SKU, Quantity: c.Quantity}, env)
		}))
	case PaymentTopic:
		route(saga.Route(m, p.serde, EvChargePayment, func(ctx context.Context, c ChargePayment, env schema.Envelope) (pipe.Reply, error) {
			return p.handle(ctx, command{OrderID: c.OrderID, AmountCents: c.AmountCents}, env)
		}))
		route(saga.Route(m, p.serde, EvRefundPayment, func(ctx context.Context, c RefundPayment, env schema.Envelope) (pipe.Reply, error) {
			return p.handle(ctx, command{OrderID: c.OrderID, AmountCents: c.AmountCents}, env)
		}))
	case ShippingTopic:
		route(saga.Route(m, p.serde, EvScheduleShipment, func(ctx context.Context, c ScheduleShipment, env schema.Envelope) (pipe.Reply, error) {
			return p.handle(ctx, command{OrderID: c.OrderID, SKU: c.SKU, Quantity: c.Quantity}, env)
		}))
	}
	return m, errors.Join(errs...)
}

// Participants are the inventory, payment and shipping services.
type Participants struct {
	Ledger *Ledger
	// Services, when set, lists the services Run runs (of
	// ServiceInventory, ServicePayment, ServiceShipping): a service run
	// elsewhere (examples/pgpayment's payment on PostgreSQL) is left out.
	// Empty runs all three.
	Services []string
	// Tracing, when set, gives each service (ServiceInventory,
	// ServicePayment, ServiceShipping) its tracer provider; otherwise
	// otel's global one is used.
	Tracing func(service string) trace.TracerProvider
	serde   *schema.Serde
	faults  Faults
	// poisoned remembers orders whose first reply was sent as poison, so
	// that the resend is answered properly.
	poisoned sync.Map
	// lost remembers the orders whose first reply was lost.
	lost sync.Map
	// worked remembers the commands (type and order) worked on once.
	worked sync.Map
	// codecs holds one reply codec per event type, built on first use:
	// building one parses the schema and compiles its encoders.
	codecs sync.Map // event type → *schema.Codec[T]
}

// NewParticipants returns the three services sharing one ledger.
func NewParticipants(serde *schema.Serde, faults Faults) *Participants {
	return &Participants{Ledger: newLedger(), serde: serde, faults: faults}
}

func reply[T any](p *Participants, def saga.EventDef[T], v T) (pipe.Reply, error) {
	c, ok := p.codecs.Load(def.Type)
	if !ok {
		built, err := schema.NewCodec[T](p.serde, def.Schema)
		if err != nil {
			return pipe.Reply{}, err
		}
		c, _ = p.codecs.LoadOrStore(def.Type, built)
	}
	return pipe.NewReply(c.(*schema.Codec[T]), def.Type, v), nil
}

// loseReply tells whether the reply to order's first command at step is
// lost after its effect was applied.
func (p *Participants) loseReply(order, step string) bool {
	if !hit(order, "lost-"+step, p.faults.LostReplyRate) {
		return false
	}
	_, again := p.lost.LoadOrStore(step+" "+order, true)
	return !again
}

// poison answers an order's first reply with bytes that do not decode.
func (p *Participants) poison(order, step, replyType string) (pipe.Reply, bool) {
	if !hit(order, "poison-"+step, p.faults.PoisonRate) {
		return pipe.Reply{}, false
	}
	if _, again := p.poisoned.LoadOrStore(step+" "+order, true); again {
		return pipe.Reply{}, false
	}
	return pipe.RawReply(replyType, []byte("this is not avro")), true
}

func (p *Participants) handle(ctx context.Context, cmd command, env schema.Envelope) (pipe.Reply, error) {
	// The latency is the work of applying a command the first time (a
	// call to a payment provider, say); a resend of one already worked on
	// is answered from the ledger at once.
	if _, again := p.worked.LoadOrStore(env.Type+" "+cmd.OrderID, true); p.faults.Latency > 0 && !again {
		select {
		case <-time.After(p.faults.Latency):
		case <-ctx.Done():
			return pipe.Reply{}, ctx.Err()
		}
	}
	l, o, id := p.Ledger, cmd.OrderID, env.ID
	l.mu.Lock()
	defer l.mu.Unlock()
	has := func(m map[string]int32) bool { _, ok := m[o]; return ok }
	hasMoney := func(m map[string]int64) bool { _, ok := m[o]; return ok }
	switch env.Type {
	case EvReserveInventory.Type:
		if r, ok := p.poison(o, "inventory", EvInventoryReserved.Type); ok {
			return r, nil
		}
		if !l.do("reserve", o, id, has(l.Reserved), func() { l.Reserved[o] = cmd.Quantity }) {
			return reply(p, EvInventoryRejected, InventoryRejected{OrderID: o, Reason: "released before it was reserved"})
		}
		if p.loseReply(o, "inventory") {
			return pipe.NoReply, nil
		}
		return reply(p, EvInventoryReserved, InventoryReserved{OrderID: o, SKU: cmd.SKU, Quantity: cmd.Quantity})
	case EvReleaseInventory.Type:
		l.undo("reserve", "release", o, id, has(l.Reserved), has(l.Released), func() { l.Released[o] = l.Reserved[o] })
		return reply(p, EvInventoryReleased, InventoryReleased{OrderID: o})
	case EvChargePayment.Type:
		if hit(o, "decline", p.faults.DeclineRate) {
			return reply(p, EvPaymentDeclined, PaymentDeclined{OrderID: o, Reason: "card declined"})
		}
		if r, ok := p.poison(o, "payment", EvPaymentCharged.Type); ok {
			return r, nil
		}
		if !l.do("charge", o, id, hasMoney(l.Charged), func() { l.Charged[o] = cmd.AmountCents }) {
			return reply(p, EvPaymentDeclined, PaymentDeclined{OrderID: o, Reason: "refunded before it was charged"})
		}
		if p.loseReply(o, "payment") {
			return pipe.NoReply, nil
		}
		return reply(p, EvPaymentCharged, PaymentCharged{OrderID: o, PaymentID: "pay-" + o, AmountCents: cmd.AmountCents})
	case EvRefundPayment.Type:
		l.undo("charge", "refund", o, id, hasMoney(l.Charged), hasMoney(l.Refunded), func() { l.Refunded[o] = l.Charged[o] })
		return reply(p, EvPaymentRefunded, PaymentRefunded{OrderID: o, AmountCents: cmd.AmountCents})
	case EvScheduleShipment.Type:
		if p.faults.ShippingSilent {
			return pipe.NoReply, nil
		}
		if hit(o, "ship", p.faults.ShippingFailureRate) {
			return reply(p, EvShipmentFailed, ShipmentFailed{OrderID: o, Reason: "no courier"})
		}
		l.do("ship", o, id, has(l.Shipped), func() { l.Shipped[o] = cmd.Quantity })
		if p.loseReply(o, "shipping") {
			return pipe.NoReply, nil
		}
		return reply(p, EvShipmentScheduled, ShipmentScheduled{OrderID: o, TrackingID: "track-" + o})
	}
	return pipe.Reply{}, fmt.Errorf("orders: unexpected command %s", env.Type)
}

// Concurrency is how many commands each participant handles at once (one
// saga's commands one at a time): a service calling something slow, like
// a payment provider, answers commands side by side.
const Concurrency = 64

// Run runs the three services, each a stage worker in its own consumer
// group, until ctx ends; it returns the first worker's error.
func (p *Participants) Run(ctx context.Context, brokers []string, clientOpts ...kgo.Opt) error {
	services := []struct{ service, topic string }{
		{ServiceInventory, InventoryTopic}, {ServicePayment, PaymentTopic}, {ServiceShipping, ShippingTopic},
	}
	if len(p.Services) > 0 {
		services = slices.DeleteFunc(services, func(s struct{ service, topic string }) bool { return !slices.Contains(p.Services, s.service) })
	}
	// One service failing stops the others: Run then returns its error.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, len(services))
	var wg sync.WaitGroup
	for _, s := range services {
		mux, err := p.routes(s.topic)
		if err != nil {
			return err
		}
		cl, err := kgo.NewClient(append(append([]kgo.Opt{kgo.SeedBrokers(brokers...)}, clientOpts...),
			kgo.ConsumerGroup(s.topic+".service"), kgo.ConsumeTopics(s.topic), kgo.DisableAutoCommit(), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
			kgo.ProducerLinger(0), // a reply is awaited by a saga: send it now
			kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))...)
		if err != nil {
			return err
		}
		var tp trace.TracerProvider
		if p.Tracing != nil {
			tp = p.Tracing(s.service)
		}
		w, err := pipe.NewMuxWorker(cl, mux, pipe.WithConcurrency(Concurrency),
			pipe.WithPiperOptions(pipe.WithSource(s.topic+".service"), pipe.WithTracerProvider(tp)))
		if err != nil {
			cl.Close()
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer cl.Close()
			if err := w.Run(ctx); err != nil {
				errs <- fmt.Errorf("%s service: %w", s.topic, err)
				cancel()
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}
