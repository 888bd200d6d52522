// Package participant runs the services that take part in sagas: each
// consumes one command topic in a consumer group of its own, hands every
// command to the handler declared for its ce_type, and sends the reply to
// the saga's inbox. It does the plumbing a participant otherwise writes by
// hand: the client options a stage worker needs, one reply codec per event
// type, reply schemas registered by record name before the first command,
// signals, and one failing service stopping the process rather than the
// others carrying on silently.
//
//	flight := participant.New("flight", "flight.commands").Replies(FlightReserved, FlightCancelled)
//	participant.Handle(flight, ReserveFlight, func(ctx context.Context, c ReserveFlightCmd, env schema.Envelope) (pipe.Reply, error) {
//		// ... book it, idempotently by env.IdempotencyKey ...
//		return participant.Reply(ctx, FlightReserved, FlightReservedEvt{TripID: c.TripID})
//	})
//	participant.Main(flight)
//
// The contract a handler keeps (any participant, in any language): make
// the effect idempotent by env.IdempotencyKey ("<saga id>/<step>/do", the
// same on every resend of one command; "/undo" for its compensation),
// answer a command applied before with the same reply, and answer the
// compensation of a command never applied with its reply, applying
// nothing (and refusing the command, should it still arrive).
package participant
