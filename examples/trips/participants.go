package trips

import (
	"context"
	"strings"
	"sync"

	"github.com/sagapipe/sagapipe/participant"
	"github.com/sagapipe/sagapipe/pipe"
	"github.com/sagapipe/sagapipe/schema"
)

// The example's business rules: a hotel that is full and a credit limit.
const (
	FullHotel   = "hotel-full"
	CreditLimit = 500_000 // cents
)

// Desk is one service's bookings by idempotency key ("<trip>/<step>/do"):
// a resend is answered with the booking made, and the cancellation of a
// booking never made books nothing and bars it.
type Desk struct {
	mu    sync.Mutex
	state map[string]string // the booking, or cancelled
	// Applied counts the bookings and cancellations applied, by
	// idempotency key: more than one is a bug.
	Applied map[string]int
}

const cancelled = "cancelled"

// book books key with make unless it was booked or cancelled before; it
// returns the booking, or false when it was cancelled first.
func (d *Desk) book(key string, make func() string) (string, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.state[key]; !ok {
		d.state[key] = make()
		d.Applied[key]++
	}
	return d.state[key], d.state[key] != cancelled
}

// cancel cancels the booking that the compensation undoKey undoes.
func (d *Desk) cancel(undoKey string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	key := strings.TrimSuffix(undoKey, "/undo") + "/do"
	if s, ok := d.state[key]; s != cancelled {
		if ok {
			d.Applied[undoKey]++
		}
		d.state[key] = cancelled
	}
}

// Desks are the three services' bookings.
type Desks struct{ Flight, Hotel, Billing *Desk }

// NewDesks returns empty desks.
func NewDesks() *Desks {
	d := func() *Desk { return &Desk{state: map[string]string{}, Applied: map[string]int{}} }
	return &Desks{d(), d(), d()}
}

// Services are the flight, hotel and billing participants.
func (ds *Desks) Services() []*participant.Service {
	flight := participant.New("trips-flight", FlightTopic).Replies(EvFlightBooked, EvFlightUnavailable, EvFlightCancelled)
	participant.Handle(flight, EvBookFlight, func(ctx context.Context, c Trip, env schema.Envelope) (pipe.Reply, error) {
		if ticket, ok := ds.Flight.book(env.IdempotencyKey, func() string { return "TKT-" + c.TripID }); ok {
			return participant.Reply(ctx, EvFlightBooked, Booked{TripID: c.TripID, Ticket: ticket})
		}
		return participant.Reply(ctx, EvFlightUnavailable, Refused{TripID: c.TripID, Reason: "cancelled before it was booked"})
	})
	participant.Handle(flight, EvCancelFlight, func(ctx context.Context, c Trip, env schema.Envelope) (pipe.Reply, error) {
		ds.Flight.cancel(env.IdempotencyKey)
		return participant.Reply(ctx, EvFlightCancelled, Done{TripID: c.TripID})
	})

	hotel := participant.New("trips-hotel", HotelTopic).Replies(EvHotelBooked, EvHotelUnavailable, EvHotelCancelled)
	participant.Handle(hotel, EvBookHotel, func(ctx context.Context, c Trip, env schema.Envelope) (pipe.Reply, error) {
		if c.HotelID == FullHotel {
			return participant.Reply(ctx, EvHotelUnavailable, Refused{TripID: c.TripID, Reason: "no rooms left"})
		}
		if res, ok := ds.Hotel.book(env.IdempotencyKey, func() string { return "RES-" + c.TripID }); ok {
			return participant.Reply(ctx, EvHotelBooked, Booked{TripID: c.TripID, Reservation: res})
		}
		return participant.Reply(ctx, EvHotelUnavailable, Refused{TripID: c.TripID, Reason: "cancelled before it was booked"})
	})
	participant.Handle(hotel, EvCancelHotel, func(ctx context.Context, c Trip, env schema.Envelope) (pipe.Reply, error) {
		ds.Hotel.cancel(env.IdempotencyKey)
		return participant.Reply(ctx, EvHotelCancelled, Done{TripID: c.TripID})
	})

	billing := participant.New("trips-billing", BillingTopic).Replies(EvTripCharged, EvChargeDeclined)
	participant.Handle(billing, EvChargeTrip, func(ctx context.Context, c Trip, env schema.Envelope) (pipe.Reply, error) {
		if c.AmountCents > CreditLimit {
			return participant.Reply(ctx, EvChargeDeclined, Refused{TripID: c.TripID, Reason: "over the credit limit"})
		}
		invoice, _ := ds.Billing.book(env.IdempotencyKey, func() string { return "INV-" + c.TripID })
		return participant.Reply(ctx, EvTripCharged, Booked{TripID: c.TripID, Invoice: invoice})
	})
	return []*participant.Service{flight, hotel, billing}
}
