// Package statemachine holds deterministic, pure state machines: states,
// event types, and transitions with guards and actions that return effects.
//
// A Definition is written down and validated by Build, which reports every
// problem at once. The resulting Machine holds no instance state: Apply
// takes an instance's state and data and an Event, and returns the next
// state, the new data and the effects the transition asks for (commands to
// send, timers to set), or a *NoTransitionError naming the state and the
// event when no transition accepts it.
//
// Determinism is the contract that makes event sourcing work: replaying a
// journal through Replay must rebuild exactly the state that applying its
// events built. Apply evaluates transitions in definition order and calls
// only guards and actions, which must be pure: no clock (the event carries
// its Time), no randomness (it carries its ID), no I/O, no dependence on map
// iteration order.
//
// Mermaid describes a machine as a Mermaid state diagram. The saga engine
// compiles each saga definition to one of these machines.
package statemachine
