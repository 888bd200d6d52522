package trips

import (
	"embed"

	"github.com/sagapipe/sagapipe/saga"
)

//go:embed schemas/*.avsc
var schemas embed.FS

// avsc is a schema of schemas/ (a missing one fails the saga's Build).
func avsc(name string) string {
	b, _ := schemas.ReadFile("schemas/" + name + ".avsc")
	return string(b)
}

// Trip is a trip as requested: the start event TripRequested and every
// command, whose schemas each carry the fields their participant needs.
type Trip struct {
	TripID      string `avro:"trip_id"`
	CustomerID  string `avro:"customer_id"`
	FlightNo    string `avro:"flight_no"`
	HotelID     string `avro:"hotel_id"`
	Nights      int32  `avro:"nights"`
	AmountCents int64  `avro:"amount_cents"`
}

// TripData is the saga's state.
type TripData struct {
	Trip
	Ticket      string `avro:"ticket"`
	Reservation string `avro:"reservation"`
	Invoice     string `avro:"invoice"`
	Failure     string `avro:"failure"`
}

// Done is an event naming only its trip: FlightCancelled, HotelCancelled.
type Done struct {
	TripID string `avro:"trip_id"`
}

// Refused is a step that failed, or the trip: FlightUnavailable,
// HotelUnavailable, ChargeDeclined, TripRejected.
type Refused struct {
	TripID string `avro:"trip_id"`
	Reason string `avro:"reason"`
}

// Booked is FlightBooked, HotelBooked, TripCharged, TripBooked: what was
// booked (the flight's ticket, the hotel's reservation, the invoice).
type Booked struct {
	TripID      string `avro:"trip_id"`
	Ticket      string `avro:"ticket"`
	Reservation string `avro:"reservation"`
	Invoice     string `avro:"invoice"`
}

const ns = "trips."

// The trip's events, each with its ce_type and schema.
var (
	EvTripRequested     = saga.Event[Trip](ns+"TripRequested", avsc("trip_requested"))
	EvBookFlight        = saga.Event[Trip](ns+"BookFlight", avsc("book_flight"))
	EvFlightBooked      = saga.Event[Booked](ns+"FlightBooked", avsc("flight_booked"))
	EvFlightUnavailable = saga.Event[Refused](ns+"FlightUnavailable", avsc("flight_unavailable"))
	EvCancelFlight      = saga.Event[Trip](ns+"CancelFlight", avsc("cancel_flight"))
	EvFlightCancelled   = saga.Event[Done](ns+"FlightCancelled", avsc("flight_cancelled"))
	EvBookHotel         = saga.Event[Trip](ns+"BookHotel", avsc("book_hotel"))
	EvHotelBooked       = saga.Event[Booked](ns+"HotelBooked", avsc("hotel_booked"))
	EvHotelUnavailable  = saga.Event[Refused](ns+"HotelUnavailable", avsc("hotel_unavailable"))
	EvCancelHotel       = saga.Event[Trip](ns+"CancelHotel", avsc("cancel_hotel"))
	EvHotelCancelled    = saga.Event[Done](ns+"HotelCancelled", avsc("hotel_cancelled"))
	EvChargeTrip        = saga.Event[Trip](ns+"ChargeTrip", avsc("charge_trip"))
	EvTripCharged       = saga.Event[Booked](ns+"TripCharged", avsc("trip_charged"))
	EvChargeDeclined    = saga.Event[Refused](ns+"ChargeDeclined", avsc("charge_declined"))
	EvTripBooked        = saga.Event[Booked](ns+"TripBooked", avsc("trip_booked"))
	EvTripRejected      = saga.Event[Refused](ns+"TripRejected", avsc("trip_rejected"))
)
