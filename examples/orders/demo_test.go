package orders_test

import (
	"context"
	"math"
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

// A warm-up's sagas run first and count in the invariants, not in the
// figures: the measured orders come after them, with IDs of their own.
func TestDemoWarmUpIsNotMeasured(t *testing.T) {
	stack, err := devstack.Start(devstack.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer stack.Close()
	sum, err := orders.RunDemo(context.Background(), orders.DemoConfig{
		Brokers: stack.KafkaAddrs(), RegistryURL: stack.RegistryURL(),
		Orders: 100, WarmUp: 40, Concurrency: 20, Partitions: 3, StepTimeout: 5 * time.Second, Rate: 500,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(sum.Violations) > 0 {
		t.Fatalf("invariants broken: %v", sum.Violations)
	}
	if sum.Orders != 140 || len(sum.Outcomes) != 140 {
		t.Fatalf("%d orders, %d outcomes: want the 40 warm-up orders and the 100 measured ones", sum.Orders, len(sum.Outcomes))
	}
	for _, i := range []int{0, 39, 40, 139} {
		if id := orders.DemoOrder(i).OrderID; sum.Outcomes[id] == "" {
			t.Errorf("no outcome for %s", id)
		}
	}
	if measured := math.Round(sum.SagasPerSecond * sum.Elapsed.Seconds()); measured != 100 {
		t.Fatalf("sagas/s × elapsed = %v sagas: want the 100 measured ones", measured)
	}
	if sum.ReadyAfter <= 0 || sum.P99 <= 0 || sum.WarmUpP99 <= 0 {
		t.Fatalf("ready after %v, p99 %v, warm-up p99 %v: want all three", sum.ReadyAfter, sum.P99, sum.WarmUpP99)
	}
}
