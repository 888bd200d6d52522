package orders_test

import (
	"context"
	"fmt"
	"time"

	"github.com/sagapipe/sagapipe/devstack"
	"github.com/sagapipe/sagapipe/examples/orders"
)

// RunDemo places orders through the orders saga and its participants on
// the embedded stack, then checks the invariants: payments declined for
// some orders compensate their inventory, the rest complete.
func ExampleRunDemo() {
	stack, err := devstack.Start(devstack.Config{})
	if err != nil {
		panic(err)
	}
	defer stack.Close()
	sum, err := orders.RunDemo(context.Background(), orders.DemoConfig{
		Brokers: stack.KafkaAddrs(), RegistryURL: stack.RegistryURL(),
		Orders: 20, Concurrency: 20, Partitions: 1, StepTimeout: 2 * time.Second,
		Faults: orders.Faults{DeclineRate: 0.2},
	})
	if err != nil {
		panic(err)
	}
	fmt.Println("completed", sum.Completed, "compensated", sum.Compensated, "stuck", sum.Stuck)
	fmt.Println("invariants broken:", len(sum.Violations))
	// Output:
	// completed 17 compensated 3 stuck 0
	// invariants broken: 0
}
