package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"
)

// The outcomes of an order, as examples/orders announces them.
const (
	OutcomeConfirmed = "OrderConfirmed"
	OutcomeRejected  = "OrderRejected"
)

// Order is examples/orders' OrderPlaced.
type Order struct {
	OrderID        string
	CustomerID     string
	SKU            string
	Quantity       int32
	UnitPriceCents int64
	TotalCents     int64
	Currency       string
	PlacedAt       time.Time
	Express        bool
}

// DemoOrder is examples/orders.DemoOrder(i).
func DemoOrder(i int) Order {
	o := Order{OrderID: fmt.Sprintf("order-%06d", i), CustomerID: fmt.Sprintf("customer-%04d", i%997),
		SKU: fmt.Sprintf("sku-%03d", i%50), Quantity: int32(1 + i%4), UnitPriceCents: 1250 + int64(i%7)*100,
		Currency: "EUR", PlacedAt: time.Now().Truncate(time.Millisecond), Express: i%5 == 0}
	o.TotalCents = o.UnitPriceCents * int64(o.Quantity)
	return o
}

// OrderSaga is examples/orders' saga as a workflow: reserve the stock,
// charge the payment, ship; a failed step compensates the finished ones in
// reverse (release the stock, refund the payment), as sagapipe does.
func OrderSaga(ctx workflow.Context, o Order) (string, error) {
	ctx = workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		StartToCloseTimeout: 30 * time.Second, // examples/orders' step timeout in the bench
		RetryPolicy:         &temporal.RetryPolicy{MaximumAttempts: 3},
	})
	var p *Participants
	var compensations []any
	compensate := func() error {
		for i := len(compensations) - 1; i >= 0; i-- {
			if err := workflow.ExecuteActivity(ctx, compensations[i], o).Get(ctx, nil); err != nil {
				return err
			}
		}
		return nil
	}
	for _, step := range []struct{ do, undo any }{
		{p.ReserveInventory, p.ReleaseInventory},
		{p.ChargePayment, p.RefundPayment},
		{p.ShipOrder, nil},
	} {
		if err := workflow.ExecuteActivity(ctx, step.do, o).Get(ctx, nil); err != nil {
			if cerr := compensate(); cerr != nil {
				return "", cerr
			}
			return OutcomeRejected, nil
		}
		if step.undo != nil {
			compensations = append(compensations, step.undo)
		}
	}
	return OutcomeConfirmed, nil
}

// Participants are examples/orders' inventory, payment and shipping
// services with no faults: each keeps its effects per order, idempotently
// (an activity retried applies nothing twice), as the examples do.
type Participants struct {
	mu                         sync.Mutex
	reserved, charged, shipped map[string]int64
	released, refunded         map[string]int64
}

func (p *Participants) apply(into *map[string]int64, o Order, amount int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if *into == nil {
		*into = map[string]int64{}
	}
	if _, done := (*into)[o.OrderID]; !done {
		(*into)[o.OrderID] = amount
	}
}

func (p *Participants) ReserveInventory(_ context.Context, o Order) error {
	p.apply(&p.reserved, o, int64(o.Quantity))
	return nil
}

func (p *Participants) ReleaseInventory(_ context.Context, o Order) error {
	p.apply(&p.released, o, int64(o.Quantity))
	return nil
}

func (p *Participants) ChargePayment(_ context.Context, o Order) error {
	p.apply(&p.charged, o, o.TotalCents)
	return nil
}

func (p *Participants) RefundPayment(_ context.Context, o Order) error {
	p.apply(&p.refunded, o, o.TotalCents)
	return nil
}

func (p *Participants) ShipOrder(_ context.Context, o Order) error {
	p.apply(&p.shipped, o, int64(o.Quantity))
	return nil
}

// quietLogger drops the SDK's logs below errors.
func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
}
