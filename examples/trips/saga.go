package trips

import (
	"time"

	"github.com/sagapipe/sagapipe/saga"
)

// The participants' command topics and the saga's outcomes.
const (
	FlightTopic   = "flight.commands"
	HotelTopic    = "hotel.commands"
	BillingTopic  = "billing.commands"
	OutcomesTopic = "trips.outcomes"
)

// Saga books a trip: the flight and the hotel at once, then the bill. An
// unavailable hotel or a declined charge cancels what was booked.
func Saga(stepTimeout time.Duration) (*saga.Saga[TripData], error) {
	b := saga.New[TripData]("trips", avsc("trip_data")).
		StartOn(saga.Reply(EvTripRequested, func(d *TripData, e Trip) { d.Trip = e })).
		Outcome(OutcomesTopic,
			saga.Cmd(EvTripBooked, func(d TripData) Booked {
				return Booked{TripID: d.TripID, Ticket: d.Ticket, Reservation: d.Reservation, Invoice: d.Invoice}
			}),
			saga.Cmd(EvTripRejected, func(d TripData) Refused { return Refused{TripID: d.TripID, Reason: d.Failure} }))
	failed := func(step string) func(*TripData, Refused) {
		return func(d *TripData, r Refused) { d.Failure = step + ": " + r.Reason }
	}
	trip := func(d TripData) Trip { return d.Trip }

	saga.Compensate(b.Step("flight").Timeout(stepTimeout).
		Command(FlightTopic, saga.Cmd(EvBookFlight, trip)).
		OnSuccess(saga.Reply(EvFlightBooked, func(d *TripData, r Booked) { d.Ticket = r.Ticket })).
		OnFailure(saga.Reply(EvFlightUnavailable, failed("flight"))),
		saga.Cmd(EvCancelFlight, trip), EvFlightCancelled)
	saga.Compensate(b.Step("hotel").Parallel().Timeout(stepTimeout).
		Command(HotelTopic, saga.Cmd(EvBookHotel, trip)).
		OnSuccess(saga.Reply(EvHotelBooked, func(d *TripData, r Booked) { d.Reservation = r.Reservation })).
		OnFailure(saga.Reply(EvHotelUnavailable, failed("hotel"))),
		saga.Cmd(EvCancelHotel, trip), EvHotelCancelled)
	b.Step("billing").Timeout(stepTimeout).
		Command(BillingTopic, saga.Cmd(EvChargeTrip, trip)).
		OnSuccess(saga.Reply(EvTripCharged, func(d *TripData, r Booked) { d.Invoice = r.Invoice })).
		OnFailure(saga.Reply(EvChargeDeclined, failed("billing")))
	return b.Build()
}
