package orders_test

import (
	"context"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/sagapipe/sagapipe/devstack"
	"github.com/sagapipe/sagapipe/examples/orders"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The demo end to end with every fault on: declines, shipping failures,
// poison replies (dead-lettered, then resent after the step timeout), lost
// replies (applied, then resent: not applied twice).
func TestDemoKeepsItsInvariants(t *testing.T) {
	stack, err := devstack.Start(devstack.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer stack.Close()
	sum, err := orders.RunDemo(context.Background(), orders.DemoConfig{
		Brokers: stack.KafkaAddrs(), RegistryURL: stack.RegistryURL(),
		Orders: 200, Concurrency: 50, Partitions: 3, StepTimeout: time.Second,
		Faults: orders.Faults{DeclineRate: 0.1, ShippingFailureRate: 0.1, PoisonRate: 0.05, LostReplyRate: 0.05},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", sum)
	if len(sum.Violations) > 0 {
		t.Fatalf("invariants broken: %v", sum.Violations)
	}
	if sum.Completed == 0 || sum.Compensated == 0 || sum.DeadLettered == 0 {
		t.Fatalf("completed %d, compensated %d, dead-lettered %d: want all three with these fault rates",
			sum.Completed, sum.Compensated, sum.DeadLettered)
	}
	if sum.Completed+sum.Compensated+sum.CompensationFailed != 200 {
		t.Fatalf("%d sagas ended, want 200", sum.Completed+sum.Compensated+sum.CompensationFailed)
	}
}
