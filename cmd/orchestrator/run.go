package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/sagapipe/sagapipe/examples/orders"
	"github.com/sagapipe/sagapipe/examples/trips"
	"github.com/sagapipe/sagapipe/service"
)

// OrdersStepTimeoutEnv sets the orders saga's step timeout in `run`.
const OrdersStepTimeoutEnv = "SAGAPIPE_ORDERS_STEP_TIMEOUT"

// runService is `orchestrator run`: the service with the orders and the
// trips sagas registered. A team's own main does the same with its sagas.
func runService(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	timeout := 5 * time.Second
	if v, ok := os.LookupEnv(OrdersStepTimeoutEnv); ok {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			fmt.Fprintf(stderr, "orchestrator run: %s=%q: want a positive duration such as 5s\n", OrdersStepTimeoutEnv, v)
			return 2
		}
		timeout = d
	}
	sagas, err := servedSagas(timeout)
	if err != nil {
		fmt.Fprintf(stderr, "orchestrator run: %v\n", err)
		return 1
	}
	return service.Command(ctx, "orchestrator run", args, stdout, stderr, sagas...)
}

// servedSagas are the sagas `run` serves: the orders and the trips
// examples, each step waiting stepTimeout for its reply.
func servedSagas(stepTimeout time.Duration) ([]service.Saga, error) {
	o, err := orders.Saga(stepTimeout)
	if err != nil {
		return nil, err
	}
	t, err := trips.Saga(stepTimeout)
	if err != nil {
		return nil, err
	}
	return []service.Saga{service.Register(o), service.Register(t)}, nil
}
