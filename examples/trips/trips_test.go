package trips_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/goleak"

	"github.com/sagapipe/sagapipe/devstack"
	"github.com/sagapipe/sagapipe/examples/orders"
	"github.com/sagapipe/sagapipe/examples/trips"
	"github.com/sagapipe/sagapipe/observability"
	"github.com/sagapipe/sagapipe/participant"
	"github.com/sagapipe/sagapipe/schema"
	"github.com/sagapipe/sagapipe/service"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestTripsAndOrdersInOneService runs the trips saga and the orders saga
// in one service, each with its participants, and starts both over the
// HTTP API: a trip that books, one whose hotel is full and one over the
// credit limit, and an order. Every saga ends as its participants
// decided, and nothing is booked twice or left booked by a rejected trip.
func TestTripsAndOrdersInOneService(t *testing.T) {
	stack, err := devstack.Start(devstack.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer stack.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	tripSaga, err := trips.Saga(2 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	orderSaga, err := orders.Saga(2 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(stack.KafkaAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	// EnsureTopics creates the participants' command topics too.
	if err := tripSaga.EnsureTopics(ctx, adm, 3, 1); err != nil {
		t.Fatal(err)
	}
	if err := orderSaga.EnsureTopics(ctx, adm, 2, 1); err != nil {
		t.Fatal(err)
	}

	desks := trips.NewDesks()
	partDone := make(chan error, 1)
	go func() {
		partDone <- participant.Run(ctx, participant.Config{Brokers: stack.KafkaAddrs(), RegistryURL: stack.RegistryURL()}, desks.Services()...)
	}()
	serde, err := schema.NewSerde(stack.RegistryURL(), schema.WithSubjectNameStrategy(schema.RecordNameStrategy))
	if err != nil {
		t.Fatal(err)
	}
	ordersDone := make(chan error, 1)
	go func() { ordersDone <- orders.NewParticipants(serde, orders.Faults{}).Run(ctx, stack.KafkaAddrs()) }()

	tel, err := observability.Setup(ctx)
	if err != nil {
		t.Fatal(err)
	}
	svc, err := service.New(service.Config{Brokers: stack.KafkaAddrs(), Registry: service.RegistryConfig{URL: stack.RegistryURL()}},
		tel, slog.New(slog.NewJSONHandler(io.Discard, nil)), service.Register(tripSaga), service.Register(orderSaga))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(svc.Handler())
	defer srv.Close()
	svcDone := make(chan error, 1)
	go func() { svcDone <- svc.Run(ctx) }()
	defer func() {
		cancel()
		for what, ch := range map[string]chan error{"service": svcDone, "trips participants": partDone, "orders participants": ordersDone} {
			if err := <-ch; err != nil {
				t.Errorf("%s: %v", what, err)
			}
		}
	}()

	post := func(path string, body any) {
		t.Helper()
		b, _ := json.Marshal(body)
		resp, err := http.Post(srv.URL+path, "application/json", bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			msg, _ := io.ReadAll(resp.Body)
			t.Fatalf("POST %s: %d %s", path, resp.StatusCode, msg)
		}
	}
	trip := func(id, hotel string, cents int64) map[string]any {
		return map[string]any{"trip_id": id, "customer_id": "c-1", "flight_no": "LH123", "hotel_id": hotel, "nights": 2, "amount_cents": cents}
	}
	post("/api/sagas/trips?id=trip-ok", trip("trip-ok", "hotel-1", 120_000))
	post("/api/sagas/trips?id=trip-full", trip("trip-full", trips.FullHotel, 120_000))
	post("/api/sagas/trips?id=trip-big", trip("trip-big", "hotel-1", trips.CreditLimit+1))
	o := orders.DemoOrder(1)
	post("/api/sagas/orders?id="+o.OrderID, map[string]any{"order_id": o.OrderID, "customer_id": o.CustomerID, "sku": o.SKU,
		"quantity": o.Quantity, "unit_price_cents": o.UnitPriceCents, "total_cents": o.TotalCents, "currency": o.Currency,
		"placed_at": o.PlacedAt.Format(time.RFC3339Nano), "express": o.Express})

	ends := map[string]string{}
	deadline := time.Now().Add(30 * time.Second)
	for _, s := range []struct{ saga, id, want string }{
		{"trips", "trip-ok", "Completed"}, {"trips", "trip-full", "Compensated"}, {"trips", "trip-big", "Compensated"},
		{"orders", o.OrderID, "Completed"},
	} {
		for {
			var status service.SagaStatus
			if resp, err := http.Get(fmt.Sprintf("%s/api/sagas/%s/%s", srv.URL, s.saga, s.id)); err == nil {
				_ = json.NewDecoder(resp.Body).Decode(&status)
				resp.Body.Close()
			}
			if status.Terminal {
				ends[s.id] = status.State
				if status.State != s.want {
					t.Errorf("%s %s ended %s, want %s", s.saga, s.id, status.State, s.want)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s %s not finished after 30s: %s", s.saga, s.id, status.State)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	// What the desks hold: only the completed trip keeps its bookings.
	for step, desk := range map[string]*trips.Desk{"flight": desks.Flight, "hotel": desks.Hotel, "billing": desks.Billing} {
		applied := desk.Counts()
		for trip, want := range map[string]bool{"trip-ok": true, "trip-full": false, "trip-big": false} {
			if held := applied[trip+"/"+step+"/do"] == 1 && applied[trip+"/"+step+"/undo"] == 0; held != want {
				t.Errorf("%s of %s held: %v, want %v (applications %v)", step, trip, held, want, applied)
			}
		}
		for key, n := range applied {
			if n != 1 {
				t.Errorf("%s applied %d times", key, n)
			}
		}
		// The over-limit trip booked its flight and hotel, then cancelled
		// them; the full hotel booked nothing.
		if step != "billing" && applied["trip-big/"+step+"/undo"] != 1 {
			t.Errorf("%s of trip-big not cancelled: %v", step, applied)
		}
		if step == "hotel" && applied["trip-full/hotel/do"] != 0 {
			t.Errorf("the full hotel booked: %v", applied)
		}
	}
}
