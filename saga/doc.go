// Package saga is the Go DSL for defining sagas and the runtime that drives
// them.
//
// A saga is a long-running business transaction over several services: a
// start event and ordered steps. Each step names its command topic, how its
// command is built from the saga's data, the replies that complete or fail
// it and how they update the data, the compensation that undoes it, a
// timeout and how often a timed-out command is resent:
//
//	b := saga.New[OrderData]("orders", orderDataSchema).
//		StartOn(saga.Reply(orderPlaced, func(d *OrderData, e OrderPlaced) { d.OrderID = e.OrderID }))
//	inventory := b.Step("inventory").
//		Command("inventory.commands", saga.Cmd(reserveInventory, buildReserve)).
//		OnSuccess(saga.Reply(inventoryReserved, markReserved)).
//		OnFailure(saga.Reply(inventoryRejected, noteReason)).
//		Timeout(5 * time.Second)
//	saga.Compensate(inventory, saga.Cmd(releaseInventory, buildRelease), inventoryReleased)
//	orders, err := b.Build()
//
// Build reports every problem at once (duplicate step names, a step with
// side effects but no compensation unless it is the pivot or the last step,
// missing or unparsable schemas, a step whose success and failure replies
// are the same type). The definition compiles to a statemachine: states
// New, "<step>.Pending", "<step>.Compensating", and the terminal Completed,
// Compensated and CompensationFailed; effects ask to send commands, set
// timers and report the outcome. When a step fails (failure reply, or its
// retries time out), the completed steps are compensated in reverse order;
// a compensation whose retries time out ends the saga in
// CompensationFailed. A timer of an earlier send, and a reply to a step the
// saga has moved past, are accepted by no transition: the runtime journals
// them as ignored.
//
// The builder and reply functions must be pure: they run again whenever a
// saga is rebuilt from its journal or replayed.
//
// A Runtime drives a saga over Kafka. Per polled batch, one transaction
// appends what happened to "<saga>.journal" (the source of truth and the
// audit log), writes the snapshot of every saga it changed to
// "<saga>.state" (compacted, keyed by saga ID), pipes the commands and
// commits the consumed offsets. A new owner of an inbox partition restores
// it from the snapshots, through a local state store per partition
// (WithStateDir), never from the journal: takeover follows the live
// sagas, not history. A finished saga becomes a closed marker on disk and
// leaves memory; after WithClosedRetention a tombstone removes it.
// Live processing, the journal rebuild of a deployment without snapshots
// and Saga.Replay share one transition function.
package saga
