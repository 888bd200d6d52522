package saga_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/saga"
	"github.com/sagapipe/sagapipe/schema"
)

// A finished saga shrinks to its terminal state after FinishedRetention;
// what comes for it later (a duplicate start, a late reply) is journaled
// as ignored, not dead-lettered and not run again, and a restarted runtime
// shrinks it while rebuilding.
func TestFinishedSagasShrinkButStillIgnoreLateEvents(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, 1)
	inventory := e.participant("inventory.commands", map[string]func(string) *saga.EventDef[msg]{reserveInventory.Type: always(inventoryReserved)})
	e.participant("payment.commands", map[string]func(string) *saga.EventDef[msg]{chargePayment.Type: always(paymentCharged)})
	e.participant("shipping.commands", map[string]func(string) *saga.EventDef[msg]{scheduleShipment.Type: always(shipmentScheduled)})
	done := newFinished()
	dead := make(chan struct{}, 10)
	rt, stop := e.startRuntime(saga.Config{Hooks: []any{done, deadHook(func() { dead <- struct{}{} })}, FinishedRetention: time.Nanosecond})
	e.start("o-1")
	done.wait(t, 1)

	shrunk := func(rt *saga.Runtime[orderData]) bool {
		st, ok := rt.Status("o-1")
		return ok && st.State == saga.StateCompleted && st.Instance.Data.OrderID == ""
	}
	deadline := time.Now().Add(20 * time.Second)
	e.start("nudge") // a poll loop turn after the first sweep's second has passed
	for !shrunk(rt) {
		if time.Now().After(deadline) {
			st, _ := rt.Status("o-1")
			t.Fatalf("o-1 was not shrunk: %+v", st)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got := rt.List(saga.StateCompleted); !slices.Contains(got, "o-1") {
		t.Fatalf("List(Completed) = %v, want o-1 among them", got)
	}

	before := len(e.journal())
	replyCodec := e.codec(paymentCharged)
	value, err := replyCodec.Encode(ctx, e.saga.InboxTopic(), &msg{OrderID: "o-1"})
	if err != nil {
		t.Fatal(err)
	}
	late := schema.Envelope{ID: "late-1", Type: paymentCharged.Type, SagaName: "orders", SagaID: "o-1", SagaStep: "payment"}
	if err := e.client().ProduceSync(ctx, &kgo.Record{Topic: e.saga.InboxTopic(), Key: []byte("o-1"), Value: value, Headers: late.Apply(nil)}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	e.start("o-1") // a second start event, with a new ce_id
	deadline = time.Now().Add(20 * time.Second)
	var added []saga.JournalEntry
	for {
		added = nil
		for _, je := range e.journal()[before:] {
			if je.SagaID == "o-1" {
				added = append(added, je)
			}
		}
		if len(added) >= 2 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(added) != 2 || added[0].Outcome != saga.OutcomeIgnored || added[1].Outcome != saga.OutcomeIgnored {
		t.Fatalf("journal of o-1 grew by %+v, want the late reply and the second start, both ignored", added)
	}
	select {
	case <-dead:
		t.Fatal("an event for a shrunk saga was dead-lettered")
	default:
	}
	if n := inventory.count(reserveInventory.Type + " o-1"); n != 1 {
		t.Fatalf("inventory reserved o-1 %d times: the second start ran the saga again", n)
	}

	if err := stop(); err != nil {
		t.Fatal(err)
	}
	rt2, _ := e.startRuntime(saga.Config{FinishedRetention: time.Nanosecond})
	deadline = time.Now().Add(20 * time.Second)
	for !rt2.Ready() || !shrunk(rt2) {
		if time.Now().After(deadline) {
			st, ok := rt2.Status("o-1")
			t.Fatalf("after a restart o-1 is %+v (%v), want shrunk to Completed", st, ok)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
