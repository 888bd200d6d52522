// Package pgpayment is the orders saga's payment service (examples/orders)
// with its money in PostgreSQL: a participant built on package outbox.
//
// The demo's payment service keeps its ledger in memory and forgets it on
// restart. This one charges and refunds in the table payment_ledger, one
// row per application of an effect, inside the transaction in which
// package outbox records the command's idempotency key and enqueues the
// reply; the outbox's relay sends the reply to the saga. So a charge is
// applied once however often its command comes (a resend after a step
// timeout, a redelivery after a crash), and its reply reaches the saga
// however the service dies, a kill -9 between the commit and the publish
// included.
//
// It keeps the demo Ledger's contract with an orchestrator that
// compensates uncertain steps:
//
//   - ChargePayment charges the order once, and answers PaymentCharged; a
//     charge already in the ledger is answered again without a second
//     row. A declined card (Config.Decline) answers PaymentDeclined.
//   - RefundPayment refunds the charge once, and answers PaymentRefunded.
//     A refund that finds no charge (the saga gave the charge up before
//     it arrived) applies nothing and writes a "bar" row: the charge, should
//     its command still come, is declined ("refunded before it was
//     charged") instead of applied.
//
// Each order's commands take turns on a transaction-scoped advisory lock,
// so a charge and its refund, which carry idempotency keys of their own,
// never interleave.
//
// Run it beside the demo's other services, which leave payment to it:
//
//	participants := orders.NewParticipants(serde, faults)
//	participants.Services = []string{orders.ServiceInventory, orders.ServiceShipping}
//	payment, err := pgpayment.New(ctx, pool, serde, pgpayment.Config{})
//	...
//	go participants.Run(ctx, brokers)
//	go payment.Run(ctx, brokers)
//
// Check then tells whether the money adds up in the database: charged =
// refunded + captured for every order, nothing applied twice.
package pgpayment
