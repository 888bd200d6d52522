package saga_test

import (
	"context"
	"strings"
	"testing"

	"github.com/sagapipe/sagapipe/saga"
	"github.com/sagapipe/sagapipe/schema"
)

// TestStarter checks the start record a Starter builds and what it
// refuses: a start of another Go type, an ID that cannot name a saga.
func TestStarter(t *testing.T) {
	e := newEnv(t, 3)
	ctx := context.Background()
	starter, err := e.saga.NewStarter(e.client(), e.serde, saga.StartSource("shop"))
	if err != nil {
		t.Fatal(err)
	}
	rec, err := starter.Record(ctx, "o-1", &msg{OrderID: "o-1"})
	if err != nil {
		t.Fatal(err)
	}
	env, err := schema.ReadEnvelope(rec.Headers)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Topic != e.saga.InboxTopic() || string(rec.Key) != "o-1" || env.Type != orderPlaced.Type || env.Source != "shop" ||
		env.SagaName != e.saga.Name() || env.SagaID != "o-1" || env.CorrelationID != "o-1" || env.ID == "" {
		t.Fatalf("start record: topic %s key %s envelope %+v", rec.Topic, rec.Key, env)
	}
	decoded, err := e.codec(orderPlaced).Decode(ctx, rec.Value)
	if err != nil || decoded.OrderID != "o-1" {
		t.Fatalf("start value decodes to %+v, %v", decoded, err)
	}

	for _, bad := range []struct {
		id    string
		event any
		want  string
	}{
		{"o-2", "not an order", "not a string"},
		{"", msg{OrderID: "x"}, "empty"},
		{"a/b", msg{OrderID: "x"}, "slash"},
		{"a b", msg{OrderID: "x"}, "space"},
	} {
		if _, err := starter.Start(ctx, bad.id, bad.event); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("Start(%q, %T): %v, want an error saying %q", bad.id, bad.event, err, bad.want)
		}
	}
	if _, err := e.saga.NewStarter(nil, nil); err == nil || !strings.Contains(err.Error(), "client is nil") || !strings.Contains(err.Error(), "registry is nil") {
		t.Errorf("NewStarter(nil, nil): %v", err)
	}

	// A started saga runs: the runtime consumes the start.
	f := newFinished()
	stop := e.runtime(f)
	defer stop()
	started, err := starter.Start(ctx, "o-3", msg{OrderID: "o-3"})
	if err != nil || started.ID != "o-3" || started.EventID == "" || started.Offset < 0 {
		t.Fatalf("Start: %+v, %v", started, err)
	}
	e.participant("inventory.commands", map[string]func(string) *saga.EventDef[msg]{
		reserveInventory.Type: always(inventoryReserved), releaseInventory.Type: always(inventoryReleased)})
	e.participant("payment.commands", map[string]func(string) *saga.EventDef[msg]{
		chargePayment.Type: always(paymentCharged), refundPayment.Type: always(paymentRefunded)})
	e.participant("shipping.commands", map[string]func(string) *saga.EventDef[msg]{
		scheduleShipment.Type: always(shipmentScheduled)})
	if got := f.wait(t, 1); got["o-3"] != saga.StateCompleted {
		t.Fatalf("outcomes %v", got)
	}
}
