package saga_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/sagapipe/sagapipe/saga"
)

func TestTwoRuntimesWithRebalancesMidLoad(t *testing.T) {
	e := newEnv(t, 4)
	inventory := e.participant("inventory.commands", map[string]func(string) *saga.EventDef[msg]{reserveInventory.Type: always(inventoryReserved)})
	payment := e.participant("payment.commands", map[string]func(string) *saga.EventDef[msg]{chargePayment.Type: always(paymentCharged)})
	shipping := e.participant("shipping.commands", map[string]func(string) *saga.EventDef[msg]{scheduleShipment.Type: always(shipmentScheduled)})
	done := newFinished() // shared: a saga finishing twice, on either runtime, panics

	stopA := e.runtime(done)
	var orders []string
	for i := range 60 {
		orders = append(orders, fmt.Sprintf("r-%02d", i))
	}
	e.start(orders[:30]...)
	done.wait(t, 10)
	e.runtime(done) // B joins: the partitions are split mid-load
	e.start(orders[30:]...)
	done.wait(t, 35)
	if err := stopA(); err != nil { // A leaves: B takes everything over
		t.Fatal(err)
	}
	outcomes := done.wait(t, len(orders))
	journal := e.journal()
	checkJournal(t, journal)
	// A command is applied once, or once more per resend the saga
	// journaled after its step timed out: a rebalance slower than the step
	// timeout resends, which is the design (participants are idempotent by
	// business key). What must never happen is a command ID applied twice
	// (a redelivery past the idempotency store) or an unjournaled resend.
	timeouts := map[string]int{} // "<step> <order>" → applied timeouts
	for _, je := range journal {
		if je.TimerStep != "" && je.Outcome == saga.OutcomeApplied {
			timeouts[je.TimerStep+" "+je.SagaID]++
		}
	}
	for _, o := range orders {
		if outcomes[o] != saga.StateCompleted {
			t.Fatalf("saga %s ended %q, want Completed", o, outcomes[o])
		}
		for _, c := range []struct {
			p          *participant
			step, kind string
		}{{inventory, "inventory", "test.ReserveInventory"}, {payment, "payment", "test.ChargePayment"}, {shipping, "shipping", "test.ScheduleShipment"}} {
			key := c.kind + " " + o
			want := 1 + timeouts[c.step+" "+o]
			// Give the participants a moment to drain what is in flight.
			for deadline := time.Now().Add(5 * time.Second); c.p.count(key) < want && time.Now().Before(deadline); {
				time.Sleep(5 * time.Millisecond)
			}
			if n := c.p.count(key); n != want {
				var history []string
				for _, je := range journal {
					if je.SagaID == o {
						history = append(history, fmt.Sprintf("%s %s %s->%s %s", je.Time.Format("15:04:05.000"), je.EventType, je.FromState, je.ToState, je.Outcome))
					}
				}
				t.Fatalf("%s applied %d times, want %d (once plus one per journaled timeout); the saga's journal:\n%s",
					key, n, want, strings.Join(history, "\n"))
			}
		}
	}
	for _, p := range []*participant{inventory, payment, shipping} {
		if ids := p.repeatedIDs(); len(ids) > 0 {
			t.Fatalf("command IDs applied twice: %v", ids)
		}
	}
}
