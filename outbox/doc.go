// Package outbox gives a saga participant with a PostgreSQL database
// what a participant needs and Kafka alone cannot give it: an effect
// applied once however often its command comes, and a reply that is sent
// however the participant dies.
//
// A participant's effect lives in its database and its reply goes to
// Kafka: two systems, and no transaction spans both. Commit first and
// crash before sending, and the saga waits for a reply that never comes;
// send first and crash before committing, and the saga goes on with an
// effect that never happened. The transactional outbox ends the choice:
// the reply is written to a table, in the transaction of the effect, and a
// relay publishes that table to Kafka afterwards. Commands come at least
// once (a saga resends what is not answered in time, and a participant
// that crashes gets its uncommitted commands again), so the same
// transaction also records the command's idempotency key: a command seen
// before is not applied again, only answered again.
//
// # The pieces
//
// New returns a Store on a pgxpool.Pool and creates its two tables when
// they are missing:
//
//   - <prefix>processed, keyed by saga name and idempotency key (the
//     command's idempotency_key header, "<saga id>/<step>/do" or "/undo",
//     the same on every resend of one command; its ce_id when it has
//     none), with the reply the command was answered with.
//   - <prefix>outbox, the records waiting to be published, in order
//     (id bigserial), with when they were published.
//
// Handler wraps a TxHandler, a handler that gets the transaction, into the
// pipe.Handler a stage worker (pipe.NewStageWorker, pipe.NewMuxWorker,
// saga.Route) runs:
//
//	store, err := outbox.New(ctx, pool, outbox.WithPiperOptions(pipe.WithSource("payment-service")))
//	...
//	saga.Route(mux, serde, orders.EvChargePayment, outbox.Handler(store,
//		func(ctx context.Context, tx pgx.Tx, c orders.ChargePayment, env schema.Envelope) (pipe.Reply, error) {
//			if _, err := tx.Exec(ctx, "INSERT INTO charges (order_id, cents) VALUES ($1, $2)", c.OrderID, c.AmountCents); err != nil {
//				return pipe.Reply{}, err
//			}
//			return pipe.NewReply(chargedCodec, orders.EvPaymentCharged.Type, orders.PaymentCharged{...}), nil
//		}))
//
// In one transaction the handler claims the command's key, applies the
// effect, records the reply with the key and enqueues the reply record;
// then it commits, and answers the stage worker pipe.NoReply: the relay
// sends the reply. An error from the TxHandler rolls all of it back. A
// command whose key was claimed before does not run the TxHandler; the
// recorded reply is enqueued again, answering this command. Two instances
// handling one command at once (a rebalance) take turns on the key.
//
// Relay publishes the outbox with an idempotent kgo producer, in id order,
// and marks the rows published. It wakes on the notification each
// committed row sends (LISTEN/NOTIFY) and polls besides; several relays
// share the rows (SELECT ... FOR UPDATE SKIP LOCKED) without publishing
// one twice. A row Kafka refuses stays, is retried with backoff and
// logged until it goes out or an operator deletes it; published rows are
// deleted after WithRetention.
//
// # What is guaranteed
//
// The effect of a command is applied once per idempotency key: the key
// and the effect commit together or not at all. Its reply is published at
// least once: after a crash between the commit and the publish, the relay
// publishes the row when it runs again, and the redelivered command is
// answered a second time from the recorded reply. Sagas take duplicate
// replies in their stride. A reply published twice by the relay itself (it
// died between the publish and the mark) carries the same ce_id both
// times.
//
// The reply record is built by pipe's own builder (pipe.Builder) from the
// command's envelope, as a stage worker builds the reply it pipes: the
// command's key and envelope headers without reply_to and
// idempotency_key, a new ce_id and ce_time, the reply's ce_type,
// causation_id the command's ce_id, ce_source from pipe.WithSource, and the
// trace context of the command's process span, which the relay's publish
// span continues. The difference: a handler sees its command's envelope,
// not its record, so the reply carries no original_* provenance headers
// and none of the command's headers outside the envelope; its key is the
// saga ID (a saga keys its commands by it), else the correlation ID.
//
// Processed rows are kept: forgetting a key reopens the door to applying
// its effect twice. Delete those older than the longest a saga can resend
// a command, if the table must stay small.
package outbox
