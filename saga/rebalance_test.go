package saga_test

import (
	"fmt"
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
	for _, o := range orders {
		if outcomes[o] != saga.StateCompleted {
			t.Fatalf("saga %s ended %q, want Completed", o, outcomes[o])
		}
		for _, c := range []struct {
			p   *participant
			key string
		}{{inventory, "test.ReserveInventory " + o}, {payment, "test.ChargePayment " + o}, {shipping, "test.ScheduleShipment " + o}} {
			// Give the participants a moment to drain what is in flight.
			for deadline := time.Now().Add(5 * time.Second); c.p.count(c.key) == 0 && time.Now().Before(deadline); {
				time.Sleep(5 * time.Millisecond)
			}
			if n := c.p.count(c.key); n != 1 {
				t.Fatalf("%s applied %d times, want once", c.key, n)
			}
		}
	}
	checkJournal(t, e.journal())
}
