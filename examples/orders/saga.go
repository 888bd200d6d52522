package orders

import (
	"time"

	"github.com/sagapipe/sagapipe/saga"
)

// The participants' command topics.
const (
	InventoryTopic = "inventory.commands"
	PaymentTopic   = "payment.commands"
	ShippingTopic  = "shipping.commands"
	// OutcomesTopic is where every order's OrderConfirmed or OrderRejected goes.
	OutcomesTopic = "orders.outcomes"
)

// Saga defines the orders saga: reserve inventory, charge the payment,
// schedule the shipment; a failure compensates the finished steps in
// reverse. stepTimeout is how long each step waits before it resends.
func Saga(stepTimeout time.Duration) (*saga.Saga[OrderData], error) {
	b := saga.New[OrderData]("orders", OrderDataSchema).
		StartOn(saga.Reply(EvOrderPlaced, func(d *OrderData, e OrderPlaced) {
			d.OrderID, d.CustomerID, d.SKU, d.Quantity = e.OrderID, e.CustomerID, e.SKU, e.Quantity
			d.AmountCents, d.Express = e.TotalCents, e.Express
		})).
		Outcome(OutcomesTopic,
			saga.Cmd(EvOrderConfirmed, func(d OrderData) OrderConfirmed {
				return OrderConfirmed{OrderID: d.OrderID, PaymentID: d.PaymentID, TrackingID: d.TrackingID}
			}),
			saga.Cmd(EvOrderRejected, func(d OrderData) OrderRejected {
				return OrderRejected{OrderID: d.OrderID, Reason: d.Failure}
			}))

	inventory := b.Step("inventory").
		Command(InventoryTopic, saga.Cmd(EvReserveInventory, func(d OrderData) ReserveInventory {
			return ReserveInventory{OrderID: d.OrderID, SKU: d.SKU, Quantity: d.Quantity}
		})).
		OnSuccess(saga.Reply[OrderData](EvInventoryReserved, nil)).
		OnFailure(saga.Reply(EvInventoryRejected, func(d *OrderData, r InventoryRejected) { d.Failure = "inventory: " + r.Reason })).
		Timeout(stepTimeout)
	saga.Compensate(inventory, saga.Cmd(EvReleaseInventory, func(d OrderData) ReleaseInventory {
		return ReleaseInventory{OrderID: d.OrderID, SKU: d.SKU, Quantity: d.Quantity}
	}), EvInventoryReleased).Timeout(stepTimeout)

	payment := b.Step("payment").
		Command(PaymentTopic, saga.Cmd(EvChargePayment, func(d OrderData) ChargePayment {
			return ChargePayment{OrderID: d.OrderID, CustomerID: d.CustomerID, AmountCents: d.AmountCents}
		})).
		OnSuccess(saga.Reply(EvPaymentCharged, func(d *OrderData, r PaymentCharged) { d.PaymentID = r.PaymentID })).
		OnFailure(saga.Reply(EvPaymentDeclined, func(d *OrderData, r PaymentDeclined) { d.Failure = "payment: " + r.Reason })).
		Timeout(stepTimeout)
	saga.Compensate(payment, saga.Cmd(EvRefundPayment, func(d OrderData) RefundPayment {
		return RefundPayment{OrderID: d.OrderID, PaymentID: d.PaymentID, AmountCents: d.AmountCents}
	}), EvPaymentRefunded).Timeout(stepTimeout)

	b.Step("shipping").
		Command(ShippingTopic, saga.Cmd(EvScheduleShipment, func(d OrderData) ScheduleShipment {
			return ScheduleShipment{OrderID: d.OrderID, SKU: d.SKU, Quantity: d.Quantity, Express: d.Express}
		})).
		OnSuccess(saga.Reply(EvShipmentScheduled, func(d *OrderData, r ShipmentScheduled) { d.TrackingID = r.TrackingID })).
		OnFailure(saga.Reply(EvShipmentFailed, func(d *OrderData, r ShipmentFailed) { d.Failure = "shipping: " + r.Reason })).
		Timeout(stepTimeout)
	return b.Build()
}
