// Package saga is the Go DSL for defining sagas and the runtime that drives
// them.
//
// A saga is a long-running business transaction over several services: a
// start event and ordered steps, each with a command topic, success and
// failure replies, a compensation, a timeout and a retry policy. The runtime
// consumes <saga>.inbox, keeps each saga's state as the fold of its events in
// <saga>.journal, and in one Kafka transaction per batch appends the journal,
// pipes the next commands and commits the consumed offsets. When a step fails
// it compensates the completed steps in reverse order.
package saga
