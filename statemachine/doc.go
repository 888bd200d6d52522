// Package statemachine holds deterministic, pure state machines: states,
// event types, and transitions with guards and actions that return effects.
//
// Applying an event has no I/O, reads no clock, draws no randomness and does
// not depend on map order, so replaying a saga's journal always rebuilds the
// same state. Time and IDs come in as inputs. Applying an event that no
// transition accepts is a typed error naming the state and the event.
//
// The saga engine compiles each saga definition to one of these machines.
package statemachine
