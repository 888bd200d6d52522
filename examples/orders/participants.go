package orders

import (
	"context"
	"fmt"
	"hash/fnv"
	"maps"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagapipe/sagapipe/pipe"
	"github.com/sagapipe/sagapipe/saga"
	"github.com/sagapipe/sagapipe/schema"
)

// Faults injects failures into the participants. Which orders are hit is
// decided by a hash of the order ID, so a run is reproducible.
type Faults struct {
	DeclineRate         float64       // payments declined
	ShippingFailureRate float64       // shipments that cannot be made
	PoisonRate          float64       // first replies sent as bytes that do not decode
	Latency             time.Duration // added to every command
	ShippingSilent      bool          // shipping never answers: sagas wait at shipping
}

func hit(orderID, salt string, rate float64) bool {
	if rate <= 0 {
		return false
	}
	h := fnv.New32a()
	h.Write([]byte(salt + orderID))
	return float64(h.Sum32()%10_000) < rate*10_000
}

// Ledger records what the participants did, per order. Effects are
// idempotent by order ID: a command that comes again (a resend, a
// redelivery) is answered from the ledger and applied only once.
//
// It keeps the participant contract of an orchestrator that compensates
// uncertain steps: compensating an effect that was never applied is a
// no-op, and bars the effect, so that its command, should it still
// arrive, is refused instead of applied.
type Ledger struct {
	mu       sync.Mutex
	Reserved map[string]int32 // stock reserved
	Released map[string]int32 // stock released again
	Shipped  map[string]int32 // stock shipped
	Charged  map[string]int64 // money charged
	Refunded map[string]int64 // money refunded
	// Applied counts applications per "<effect> <order>"; more than one is a bug.
	Applied map[string]int
	// Barred holds the "<effect> <order>" compensated before they were
	// applied: they are never applied.
	Barred map[string]bool
}

// Snapshot returns a copy of the ledger, safe to read while the
// participants run.
func (l *Ledger) Snapshot() *Ledger {
	l.mu.Lock()
	defer l.mu.Unlock()
	return &Ledger{Reserved: maps.Clone(l.Reserved), Released: maps.Clone(l.Released), Shipped: maps.Clone(l.Shipped),
		Charged: maps.Clone(l.Charged), Refunded: maps.Clone(l.Refunded), Applied: maps.Clone(l.Applied), Barred: maps.Clone(l.Barred)}
}

// NewLedger returns an empty ledger.
func NewLedger() *Ledger {
	return &Ledger{Reserved: map[string]int32{}, Released: map[string]int32{}, Shipped: map[string]int32{},
		Charged: map[string]int64{}, Refunded: map[string]int64{}, Applied: map[string]int{}, Barred: map[string]bool{}}
}

// once applies effect for order unless it was applied before or is
// barred; it reports whether the effect stands (applied now or before).
func (l *Ledger) once(effect, order string, apply func()) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	key := effect + " " + order
	if l.Barred[key] {
		return false
	}
	if l.Applied[key] == 0 {
		l.Applied[key]++
		apply()
	}
	return true
}

// undo applies compensation, once, if effect was applied for order;
// otherwise it bars effect and applies nothing (the contract's no-op).
func (l *Ledger) undo(effect, compensation, order string, apply func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.Applied[effect+" "+order] == 0 {
		l.Barred[effect+" "+order] = true
		return
	}
	if key := compensation + " " + order; l.Applied[key] == 0 {
		l.Applied[key]++
		apply()
	}
}

// participantCommand is how a participant reads both of its commands: Avro
// aliases make one reader schema for the command and its compensation,
// whose fields it holds (defaults cover the fields one of them lacks).
type participantCommand struct {
	OrderID     string `avro:"order_id"`
	SKU         string `avro:"sku"`
	Quantity    int32  `avro:"quantity"`
	CustomerID  string `avro:"customer_id"`
	PaymentID   string `avro:"payment_id"`
	AmountCents int64  `avro:"amount_cents"`
	Express     bool   `avro:"express"`
}

func participantSchema(name string, commands ...string) string {
	aliases := make([]string, len(commands))
	for i, c := range commands {
		aliases[i] = fmt.Sprintf("%q", c)
	}
	return fmt.Sprintf(`{"type":"record","name":%q,"namespace":"sagapipe.examples.orders.participants","aliases":[%s],"fields":[
 {"name":"order_id","type":"string"},
 {"name":"sku","type":"string","default":""},
 {"name":"quantity","type":"int","default":0},
 {"name":"customer_id","type":"string","default":""},
 {"name":"payment_id","type":"string","default":""},
 {"name":"amount_cents","type":"long","default":0},
 {"name":"express","type":"boolean","default":false}]}`, name, strings.Join(aliases, ","))
}

// Participants are the inventory, payment and shipping services.
type Participants struct {
	Ledger *Ledger
	// Tracing, when set, gives each service (ServiceInventory,
	// ServicePayment, ServiceShipping) its tracer provider; otherwise
	// otel's global one is used.
	Tracing func(service string) trace.TracerProvider
	serde   *schema.Serde
	faults  Faults
	// poisoned remembers orders whose first reply was sent as poison, so
	// that the resend is answered properly.
	poisoned sync.Map
	// codecs holds one reply codec per event type, built on first use:
	// building one parses the schema and compiles its encoders.
	codecs sync.Map // event type → *schema.Codec[T]
}

// NewParticipants returns the three services sharing one ledger.
func NewParticipants(serde *schema.Serde, faults Faults) *Participants {
	return &Participants{Ledger: NewLedger(), serde: serde, faults: faults}
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

func (p *Participants) handle(ctx context.Context, cmd participantCommand, env schema.Envelope) (pipe.Reply, error) {
	if p.faults.Latency > 0 {
		select {
		case <-time.After(p.faults.Latency):
		case <-ctx.Done():
			return pipe.Reply{}, ctx.Err()
		}
	}
	l, o := p.Ledger, cmd.OrderID
	switch env.Type {
	case EvReserveInventory.Type:
		if r, ok := p.poison(o, "inventory", EvInventoryReserved.Type); ok {
			return r, nil
		}
		if !l.once("reserve", o, func() { l.Reserved[o] = cmd.Quantity }) {
			return reply(p, EvInventoryRejected, InventoryRejected{OrderID: o, Reason: "released before it was reserved"})
		}
		return reply(p, EvInventoryReserved, InventoryReserved{OrderID: o, SKU: cmd.SKU, Quantity: cmd.Quantity})
	case EvReleaseInventory.Type:
		l.undo("reserve", "release", o, func() { l.Released[o] = l.Reserved[o] })
		return reply(p, EvInventoryReleased, InventoryReleased{OrderID: o})
	case EvChargePayment.Type:
		if hit(o, "decline", p.faults.DeclineRate) {
			return reply(p, EvPaymentDeclined, PaymentDeclined{OrderID: o, Reason: "card declined"})
		}
		if r, ok := p.poison(o, "payment", EvPaymentCharged.Type); ok {
			return r, nil
		}
		if !l.once("charge", o, func() { l.Charged[o] = cmd.AmountCents }) {
			return reply(p, EvPaymentDeclined, PaymentDeclined{OrderID: o, Reason: "refunded before it was charged"})
		}
		return reply(p, EvPaymentCharged, PaymentCharged{OrderID: o, PaymentID: "pay-" + o, AmountCents: cmd.AmountCents})
	case EvRefundPayment.Type:
		l.undo("charge", "refund", o, func() { l.Refunded[o] = l.Charged[o] })
		return reply(p, EvPaymentRefunded, PaymentRefunded{OrderID: o, AmountCents: cmd.AmountCents})
	case EvScheduleShipment.Type:
		if p.faults.ShippingSilent {
			return pipe.NoReply, nil
		}
		if hit(o, "ship", p.faults.ShippingFailureRate) {
			return reply(p, EvShipmentFailed, ShipmentFailed{OrderID: o, Reason: "no courier"})
		}
		l.once("ship", o, func() { l.Shipped[o] = cmd.Quantity })
		return reply(p, EvShipmentScheduled, ShipmentScheduled{OrderID: o, TrackingID: "track-" + o})
	}
	return pipe.Reply{}, fmt.Errorf("orders: unexpected command %s", env.Type)
}

// Run runs the three services, each a stage worker in its own consumer
// group, until ctx ends; it returns the first worker's error.
func (p *Participants) Run(ctx context.Context, brokers []string, clientOpts ...kgo.Opt) error {
	services := []struct {
		service, topic, name string
		commands             []string
	}{
		{ServiceInventory, InventoryTopic, "InventoryCommand", []string{"sagapipe.examples.orders.ReserveInventory", "sagapipe.examples.orders.ReleaseInventory"}},
		{ServicePayment, PaymentTopic, "PaymentCommand", []string{"sagapipe.examples.orders.ChargePayment", "sagapipe.examples.orders.RefundPayment"}},
		{ServiceShipping, ShippingTopic, "ShippingCommand", []string{"sagapipe.examples.orders.ScheduleShipment"}},
	}
	errs := make(chan error, len(services))
	var wg sync.WaitGroup
	for _, s := range services {
		codec, err := schema.NewCodec[participantCommand](p.serde, participantSchema(s.name, s.commands...))
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
		w, err := pipe.NewStageWorker(cl, codec, p.handle,
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
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}
