package service_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/devstack"
	"github.com/sagapipe/sagapipe/examples/orders"
	"github.com/sagapipe/sagapipe/observability"
	"github.com/sagapipe/sagapipe/saga"
	"github.com/sagapipe/sagapipe/schema"
	"github.com/sagapipe/sagapipe/service"
)

// The service runs the registered sagas and serves their API: a saga
// started with a POST is followed with GETs until it ends.
func Example() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stack, err := devstack.Start(devstack.Config{})
	if err != nil {
		panic(err)
	}
	defer stack.Close()

	// The orders saga's topics, and its participants.
	ordersSaga, err := orders.Saga(2 * time.Second)
	if err != nil {
		panic(err)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(stack.KafkaAddrs()...))
	if err != nil {
		panic(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	if err := ordersSaga.EnsureTopics(ctx, adm, 1, 1); err != nil {
		panic(err)
	}
	for _, topic := range []string{orders.InventoryTopic, orders.PaymentTopic, orders.ShippingTopic} {
		if err := saga.EnsureTopic(ctx, adm, topic, 1, 1, nil); err != nil {
			panic(err)
		}
	}
	serde, err := schema.NewSerde(stack.RegistryURL(), schema.WithSubjectNameStrategy(schema.RecordNameStrategy))
	if err != nil {
		panic(err)
	}
	participants := make(chan error, 1)
	go func() { participants <- orders.NewParticipants(serde, orders.Faults{}).Run(ctx, stack.KafkaAddrs()) }()

	// The service, as service.Main would run it.
	tel, err := observability.Setup(ctx)
	if err != nil {
		panic(err)
	}
	cfg := service.Config{Brokers: stack.KafkaAddrs(), Registry: service.RegistryConfig{URL: stack.RegistryURL()}, HTTPAddr: "127.0.0.1:0"}
	svc, err := service.New(cfg, tel, slog.New(slog.DiscardHandler), service.Register(ordersSaga))
	if err != nil {
		panic(err)
	}
	api := httptest.NewServer(svc.Handler())
	defer api.Close()
	ran := make(chan error, 1)
	go func() { ran <- svc.Run(ctx) }()

	start := `{"order_id":"o-1","customer_id":"c-1","sku":"sku-1","quantity":2,"unit_price_cents":1250,
		"total_cents":2500,"currency":"EUR","placed_at":"2026-11-23T10:00:00Z"}`
	for {
		resp, err := http.Post(api.URL+"/api/sagas/orders?id=o-1", "application/json", strings.NewReader(start))
		if err != nil {
			panic(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusAccepted {
			break
		}
		time.Sleep(50 * time.Millisecond) // 503 until the service reaches the cluster
	}
	for {
		resp, err := http.Get(api.URL + "/api/sagas/orders/o-1")
		if err != nil {
			panic(err)
		}
		var status struct {
			State    string `json:"state"`
			Terminal bool   `json:"terminal"`
		}
		err = json.NewDecoder(resp.Body).Decode(&status)
		resp.Body.Close()
		if err == nil && status.Terminal {
			fmt.Println("o-1", status.State)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	if err := <-ran; err != nil {
		panic(err)
	}
	if err := <-participants; err != nil {
		panic(err)
	}
	// Output: o-1 Completed
}
