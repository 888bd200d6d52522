package participant_test

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/devstack"
	"github.com/sagapipe/sagapipe/participant"
	"github.com/sagapipe/sagapipe/pipe"
	"github.com/sagapipe/sagapipe/saga"
	"github.com/sagapipe/sagapipe/schema"
)

// Room is a hotel command and its replies.
type Room struct {
	TripID      string `avro:"trip_id"`
	Reservation string `avro:"reservation"`
}

func roomEvent(name string) saga.EventDef[Room] {
	return saga.Event[Room]("travel."+name, `{"type":"record","name":"`+name+`","namespace":"travel","fields":[
		{"name":"trip_id","type":"string"},{"name":"reservation","type":"string","default":""}]}`)
}

// A participant service answers each command on its topic with the reply
// its handler returns, sent to the saga's inbox the command names.
func Example() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stack, err := devstack.Start(devstack.Config{})
	if err != nil {
		panic(err)
	}
	defer stack.Close()
	bookRoom, roomBooked := roomEvent("BookRoom"), roomEvent("RoomBooked")

	hotel := participant.New("hotel-service", "hotel.commands").Replies(roomBooked)
	participant.Handle(hotel, bookRoom, func(ctx context.Context, c Room, env schema.Envelope) (pipe.Reply, error) {
		// Book it, idempotently by env.IdempotencyKey.
		return participant.Reply(ctx, roomBooked, Room{TripID: c.TripID, Reservation: "H-" + c.TripID})
	})

	// The orchestrator's side: topics, and a command for the hotel.
	cl, err := kgo.NewClient(kgo.SeedBrokers(stack.KafkaAddrs()...),
		kgo.ConsumeTopics("trips.inbox"), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		panic(err)
	}
	defer cl.Close()
	if _, err := kadm.NewClient(cl).CreateTopics(ctx, 1, 1, nil, "hotel.commands", "trips.inbox"); err != nil {
		panic(err)
	}
	serde, err := schema.NewSerde(stack.RegistryURL(), schema.WithSubjectNameStrategy(schema.RecordNameStrategy))
	if err != nil {
		panic(err)
	}
	commands, err := schema.NewCodec[Room](serde, bookRoom.Schema)
	if err != nil {
		panic(err)
	}
	value, err := commands.Encode(ctx, "hotel.commands", &Room{TripID: "trip-1"})
	if err != nil {
		panic(err)
	}
	env := schema.NewEnvelope(bookRoom.Type, "sagapipe/trips", time.Now())
	env.SagaName, env.SagaID, env.SagaStep, env.ReplyTo = "trips", "trip-1", "hotel", "trips.inbox"
	env.IdempotencyKey = "trip-1/hotel/do"
	if err := cl.ProduceSync(ctx, &kgo.Record{Topic: "hotel.commands", Key: []byte("trip-1"), Value: value, Headers: env.Apply(nil)}).FirstErr(); err != nil {
		panic(err)
	}

	ran := make(chan error, 1)
	go func() {
		ran <- participant.Run(ctx, participant.Config{Brokers: stack.KafkaAddrs(), Registry: serde, Logger: slog.New(slog.DiscardHandler)}, hotel)
	}()
	reply := cl.PollFetches(ctx).Records()[0]
	replyEnv, err := schema.ReadEnvelope(reply.Headers)
	if err != nil {
		panic(err)
	}
	replies, err := schema.NewCodec[Room](serde, roomBooked.Schema)
	if err != nil {
		panic(err)
	}
	booked, err := replies.Decode(ctx, reply.Value)
	if err != nil {
		panic(err)
	}
	fmt.Println(replyEnv.Type, replyEnv.SagaID, replyEnv.SagaStep, booked.Reservation)
	cancel()
	if err := <-ran; err != nil {
		panic(err)
	}
	// Output: travel.RoomBooked trip-1 hotel H-trip-1
}
