package trips_test

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/devstack"
	"github.com/sagapipe/sagapipe/examples/trips"
	"github.com/sagapipe/sagapipe/participant"
	"github.com/sagapipe/sagapipe/saga"
	"github.com/sagapipe/sagapipe/schema"
	"github.com/sagapipe/sagapipe/statemachine"
)

// ended collects how each trip ended; its OnFinished makes it a hook.
type ended chan string

func (e ended) OnFinished(id string, outcome statemachine.State) { e <- id + " " + string(outcome) }

// Two trips on the embedded stack: one is booked; the other's hotel is
// full, so its flight, booked at the same time, is cancelled.
func ExampleSaga() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stack, err := devstack.Start(devstack.Config{})
	if err != nil {
		panic(err)
	}
	defer stack.Close()
	s, err := trips.Saga(2 * time.Second)
	if err != nil {
		panic(err)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(stack.KafkaAddrs()...))
	if err != nil {
		panic(err)
	}
	defer cl.Close()
	if err := s.EnsureTopics(ctx, kadm.NewClient(cl), 1, 1); err != nil {
		panic(err)
	}
	serde, err := schema.NewSerde(stack.RegistryURL(), schema.WithSubjectNameStrategy(schema.RecordNameStrategy))
	if err != nil {
		panic(err)
	}

	desks := trips.NewDesks()
	served := make(chan error, 1)
	go func() {
		served <- participant.Run(ctx, participant.Config{Brokers: stack.KafkaAddrs(), Registry: serde,
			Logger: slog.New(slog.DiscardHandler)}, desks.Services()...)
	}()
	done := make(ended, 2)
	rt, err := saga.NewRuntime(s, saga.WithClientOptions(kgo.SeedBrokers(stack.KafkaAddrs()...)), saga.WithRegistry(serde), saga.WithHooks(done))
	if err != nil {
		panic(err)
	}
	ran := make(chan error, 1)
	go func() { ran <- rt.Run(ctx) }()

	starter, err := s.NewStarter(cl, serde)
	if err != nil {
		panic(err)
	}
	for _, t := range []trips.Trip{
		{TripID: "trip-1", CustomerID: "c-1", FlightNo: "LH123", HotelID: "hotel-1", Nights: 2, AmountCents: 80_000},
		{TripID: "trip-2", CustomerID: "c-2", FlightNo: "LH456", HotelID: trips.FullHotel, Nights: 1, AmountCents: 40_000},
	} {
		if _, err := starter.Start(ctx, t.TripID, t); err != nil {
			panic(err)
		}
	}
	outcomes := []string{<-done, <-done}
	sort.Strings(outcomes)
	for _, o := range outcomes {
		fmt.Println(o)
	}
	cancel()
	if err := <-ran; err != nil {
		panic(err)
	}
	if err := <-served; err != nil {
		panic(err)
	}
	rt.Close()
	// Output:
	// trip-1 Completed
	// trip-2 Compensated
}
