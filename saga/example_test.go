package saga_test

import (
	"fmt"

	"github.com/sagapipe/sagapipe/saga"
)

// A two-step saga compiles to a state machine that can draw itself.
func Example() {
	b := saga.New[orderData]("checkout", orderDataSchema).
		StartOn(saga.Reply(orderPlaced, func(d *orderData, e msg) { d.OrderID = e.OrderID }))
	pay := b.Step("payment").
		Command("payment.commands", saga.Cmd(chargePayment, command(msg{}))).
		OnSuccess(saga.Reply[orderData](paymentCharged, nil)).
		OnFailure(saga.Reply[orderData](paymentDeclined, nil)).
		Retries(-1)
	saga.Compensate(pay, saga.Cmd(refundPayment, command(msg{})), paymentRefunded).CompensationRetries(-1)
	b.Step("shipping").
		Command("shipping.commands", saga.Cmd(scheduleShipment, command(msg{}))).
		OnSuccess(saga.Reply[orderData](shipmentScheduled, nil)).
		Retries(-1)
	checkout, err := b.Build()
	if err != nil {
		panic(err)
	}
	fmt.Println(checkout.InboxTopic(), checkout.JournalTopic())
	fmt.Print(checkout.Machine().Mermaid())
	// Output:
	// checkout.inbox checkout.journal
	// stateDiagram-v2
	//     [*] --> New
	//     New --> payment_Pending : start/test.OrderPlaced
	//     payment_Pending --> shipping_Pending : payment/test.PaymentCharged
	//     payment_Pending --> Compensated : payment/test.PaymentDeclined
	//     payment_Pending --> payment_Compensating : payment/timeout [current send]
	//     payment_Pending --> payment_Compensating : cancel
	//     payment_Compensating --> Compensated : payment/test.PaymentRefunded
	//     payment_Compensating --> CompensationFailed : payment/compensation-timeout [current send]
	//     CompensationFailed --> payment_Compensating : resume [compensation of payment given up]
	//     shipping_Pending --> Completed : shipping/test.ShipmentScheduled
	//     shipping_Pending --> shipping_Pending : shipping/timeout [current send (never given up)]
	//     Completed --> [*]
	//     Compensated --> [*]
}
