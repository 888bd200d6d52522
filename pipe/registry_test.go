package pipe_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/internal/testkit"
	"github.com/sagapipe/sagapipe/pipe"
	"github.com/sagapipe/sagapipe/schema"
)

// TestStageWorkerWaitsOutARegistryOutage: a command whose writer schema
// cannot be fetched while the registry is down waits, with backoff, and is
// answered once the registry is back: it never reaches the failure policy
// (which would dead-letter a good command as poison).
func TestStageWorkerWaitsOutARegistryOutage(t *testing.T) {
	ctx := context.Background()
	s := testkit.StartStack(t)
	testkit.CreateTopics(t, s.KafkaAddrs(), 1, "inventory.commands", "replies")
	flaky := testkit.NewFlakyRegistry(t, s.RegistryURL())
	down, refused := &flaky.Down, &flaky.Refused

	// The command is written while the registry is up.
	direct, _ := codecs(t, s)
	value, err := direct.Encode(ctx, "inventory.commands", &reserveInventory{OrderID: "o-1", SKU: "sku", Quantity: 1})
	if err != nil {
		t.Fatal(err)
	}
	env := schema.NewEnvelope("test.ReserveInventory", "orchestrator", time.Now())
	env.ReplyTo, env.SagaID = "replies", "o-1"
	down.Store(true)
	if err := testkit.Client(t, s.KafkaAddrs()).ProduceSync(ctx, &kgo.Record{Topic: "inventory.commands", Key: []byte("o-1"), Value: value, Headers: env.Apply(nil)}).FirstErr(); err != nil {
		t.Fatal(err)
	}

	// The worker's registry client goes through the proxy: it has never
	// seen the writer schema.
	proxied, err := schema.NewSerde(flaky.URL)
	if err != nil {
		t.Fatal(err)
	}
	cmdCodec := newCodec[reserveInventory](t, proxied, reserveInventorySchema)
	replyCodec := newCodec[inventoryReserved](t, newSerde(t, s), inventoryReservedSchema)
	var handled, failed atomic.Int64
	client := testkit.Client(t, s.KafkaAddrs(), kgo.ConsumerGroup("inventory"), kgo.ConsumeTopics("inventory.commands"),
		kgo.DisableAutoCommit(), kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	w, err := pipe.NewStageWorker(client, cmdCodec, func(_ context.Context, c reserveInventory, _ schema.Envelope) (pipe.Reply, error) {
		handled.Add(1)
		return pipe.NewReply(replyCodec, "test.InventoryReserved", inventoryReserved{OrderID: c.OrderID}), nil
	}, pipe.WithFailurePolicy(func(context.Context, *kgo.Record, error) error { failed.Add(1); return nil }))
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(runCtx) }()
	for deadline := time.Now().Add(20 * time.Second); refused.Load() < 2; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the worker asked the registry %d times in 20s, want a retry", refused.Load())
		}
	}
	down.Store(false)
	reply := consume(t, s, "replies", 1)[0]
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if header(reply, schema.HeaderType) != "test.InventoryReserved" || string(reply.Key) != "o-1" {
		t.Fatalf("reply %s %q", reply.Key, header(reply, schema.HeaderType))
	}
	if n := failed.Load(); n != 0 {
		t.Fatalf("the failure policy got %d commands during the outage, want none", n)
	}
	if n := handled.Load(); n != 1 {
		t.Fatalf("handled %d times, want 1", n)
	}
}
