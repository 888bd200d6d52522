package pipe_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagapipe/sagapipe/devstack"
	"github.com/sagapipe/sagapipe/internal/testkit"
	"github.com/sagapipe/sagapipe/pipe"
	"github.com/sagapipe/sagapipe/schema"
)

type reserveInventory struct {
	OrderID  string `avro:"order_id"`
	SKU      string `avro:"sku"`
	Quantity int32  `avro:"quantity"`
}

const reserveInventorySchema = `{"type":"record","name":"ReserveInventory","namespace":"test","fields":[
 {"name":"order_id","type":"string"},{"name":"sku","type":"string"},{"name":"quantity","type":"int"}]}`

type inventoryReserved struct {
	OrderID string `avro:"order_id"`
}

const inventoryReservedSchema = `{"type":"record","name":"InventoryReserved","namespace":"test","fields":[
 {"name":"order_id","type":"string"}]}`

func codecs(t *testing.T, s *devstack.Stack, opts ...schema.Opt) (*schema.Codec[reserveInventory], *schema.Codec[inventoryReserved]) {
	t.Helper()
	serde := newSerde(t, s, opts...)
	return newCodec[reserveInventory](t, serde, reserveInventorySchema), newCodec[inventoryReserved](t, serde, inventoryReservedSchema)
}

func newSerde(t *testing.T, s *devstack.Stack, opts ...schema.Opt) *schema.Serde {
	t.Helper()
	serde, err := schema.NewSerde(s.RegistryURL(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	return serde
}

func newCodec[T any](t *testing.T, serde *schema.Serde, avsc string) *schema.Codec[T] {
	t.Helper()
	c, err := schema.NewCodec[T](serde, avsc)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestStageWorker(t *testing.T) {
	ctx := context.Background()
	s := testkit.StartStack(t)
	testkit.CreateTopics(t, s.KafkaAddrs(), 1, "inventory.commands", "orders.inbox")
	cmdCodec, replyCodec := codecs(t, s)

	command := func(id, order string, value []byte) *kgo.Record {
		env := schema.NewEnvelope("test.ReserveInventory", "orchestrator", time.Now())
		env.ID, env.ReplyTo, env.CorrelationID = id, "orders.inbox", "corr-"+order
		env.SagaName, env.SagaID, env.SagaStep = "orders", order, "inventory"
		if value == nil {
			var err error
			value, err = cmdCodec.Encode(ctx, "inventory.commands", &reserveInventory{OrderID: order, SKU: "sku-1", Quantity: 2})
			if err != nil {
				t.Fatal(err)
			}
		}
		return &kgo.Record{Topic: "inventory.commands", Key: []byte(order), Value: value, Headers: env.Apply(nil)}
	}
	// X comes twice (a redelivery), the poison one is not framed, and Z,
	// last in the partition, tells when everything before it was handled.
	commands := []*kgo.Record{
		command("cmd-x", "order-x", nil),
		command("cmd-x", "order-x", nil),
		command("cmd-y", "order-y", nil),
		command("cmd-poison", "order-p", []byte("not avro")),
		command("cmd-z", "order-z", nil),
	}
	if err := testkit.Client(t, s.KafkaAddrs()).ProduceSync(ctx, commands...).FirstErr(); err != nil {
		t.Fatal(err)
	}

	var (
		mu       sync.Mutex
		handled  = map[string]int{}
		failures []error
	)
	handler := func(_ context.Context, cmd reserveInventory, env schema.Envelope) (pipe.Reply, error) {
		mu.Lock()
		handled[cmd.OrderID]++
		mu.Unlock()
		return pipe.NewReply(replyCodec, "test.InventoryReserved", inventoryReserved{OrderID: cmd.OrderID}), nil
	}
	policy := func(_ context.Context, rec *kgo.Record, err error) error {
		mu.Lock()
		failures = append(failures, err)
		mu.Unlock()
		return nil // dealt with: move on
	}
	client := testkit.Client(t, s.KafkaAddrs(), kgo.ConsumerGroup("inventory"), kgo.ConsumeTopics("inventory.commands"),
		kgo.DisableAutoCommit(), kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	w, err := pipe.NewStageWorker(client, cmdCodec, handler, pipe.WithFailurePolicy(policy),
		pipe.WithPiperOptions(pipe.WithSource("inventory-service")))
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	ran := make(chan error, 1)
	go func() { ran <- w.Run(runCtx) }()

	replies := consume(t, s, "orders.inbox", 3)
	stop()
	if err := <-ran; err != nil {
		t.Fatalf("Run: %v", err)
	}

	mu.Lock()
	defer mu.Unlock()
	for _, order := range []string{"order-x", "order-y", "order-z"} {
		if handled[order] != 1 {
			t.Errorf("%s handled %d times, want once", order, handled[order])
		}
	}
	if len(failures) != 1 || !errors.Is(failures[0], schema.ErrNotFramed) {
		t.Fatalf("failure policy got %v, want one ErrNotFramed", failures)
	}
	for i, r := range replies {
		want := []string{"cmd-x", "cmd-y", "cmd-z"}[i]
		got, err := replyCodec.Decode(ctx, r.Value)
		if err != nil {
			t.Fatal(err)
		}
		order := "order-" + want[len("cmd-"):]
		checks := map[string]string{
			schema.HeaderCausationID: want, schema.HeaderCorrelationID: "corr-" + order,
			schema.HeaderType: "test.InventoryReserved", schema.HeaderSource: "inventory-service",
			schema.HeaderSagaID: order, schema.HeaderSagaStep: "inventory",
			pipe.HeaderOriginalTopic: "inventory.commands", pipe.HeaderOriginalConsumerGroup: "inventory",
		}
		for h, v := range checks {
			if header(r, h) != v {
				t.Errorf("reply %d: %s = %q, want %q", i, h, header(r, h), v)
			}
		}
		if countHeader(r, schema.HeaderReplyTo) != 0 {
			t.Errorf("reply %d carries reply_to", i)
		}
		if got.OrderID != order || string(r.Key) != order {
			t.Errorf("reply %d: order %q key %q, want %q", i, got.OrderID, r.Key, order)
		}
	}
	offsets, err := kadm.NewClient(testkit.Client(t, s.KafkaAddrs())).FetchOffsets(ctx, "inventory")
	if err != nil {
		t.Fatal(err)
	}
	if o, _ := offsets.Lookup("inventory.commands", 0); o.At != int64(len(commands)) {
		t.Fatalf("committed offset %d, want %d", o.At, len(commands))
	}
}

func TestStageWorkerStopsOnFailureByDefault(t *testing.T) {
	ctx := context.Background()
	s := testkit.StartStack(t)
	testkit.CreateTopics(t, s.KafkaAddrs(), 1, "inventory.commands")
	cmdCodec, replyCodec := codecs(t, s)
	env := schema.NewEnvelope("test.ReserveInventory", "orchestrator", time.Now())
	if err := testkit.Client(t, s.KafkaAddrs()).ProduceSync(ctx, &kgo.Record{Topic: "inventory.commands", Value: []byte{9}, Headers: env.Apply(nil)}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	client := testkit.Client(t, s.KafkaAddrs(), kgo.ConsumerGroup("inventory"), kgo.ConsumeTopics("inventory.commands"),
		kgo.DisableAutoCommit(), kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	handler := func(context.Context, reserveInventory, schema.Envelope) (pipe.Reply, error) {
		return pipe.NewReply(replyCodec, "t", inventoryReserved{}), nil
	}
	w, err := pipe.NewStageWorker(client, cmdCodec, handler)
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	err = w.Run(runCtx)
	if !errors.Is(err, schema.ErrNotFramed) || !strings.Contains(err.Error(), "WithFailurePolicy") {
		t.Fatalf("Run: %v, want the poison error and the option that moves past it", err)
	}
	offsets, err := kadm.NewClient(testkit.Client(t, s.KafkaAddrs())).FetchOffsets(ctx, "inventory")
	if err != nil {
		t.Fatal(err)
	}
	if o, ok := offsets.Lookup("inventory.commands", 0); ok && o.At > 0 {
		t.Fatalf("the failed command was committed (offset %d): it would be lost", o.At)
	}
}

func TestNewStageWorkerNamesEveryFix(t *testing.T) {
	s := testkit.StartStack(t)
	cmdCodec, _ := codecs(t, s)
	_, err := pipe.NewStageWorker[reserveInventory](testkit.Client(t, s.KafkaAddrs()), cmdCodec, nil)
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"kgo.ConsumerGroup", "kgo.DisableAutoCommit", "kgo.ReadCommitted", "handler is nil"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
}

// Each command is processed under a span continuing the trace in its
// headers, and the reply continues that span. A command whose traceparent
// is malformed is answered all the same, in a new trace.
func TestStageWorkerTraces(t *testing.T) {
	ctx := context.Background()
	s := testkit.StartStack(t)
	testkit.CreateTopics(t, s.KafkaAddrs(), 1, "inventory.commands", "orders.inbox")
	cmdCodec, replyCodec := codecs(t, s)
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	defer tp.Shutdown(ctx) // in-memory

	const upstream = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	var commands []*kgo.Record
	for _, tc := range []struct{ order, traceparent string }{{"order-1", upstream}, {"order-2", "00-garbage"}} {
		env := schema.NewEnvelope("test.ReserveInventory", "orchestrator", time.Now())
		env.ReplyTo, env.SagaName, env.SagaID, env.SagaStep, env.TraceParent = "orders.inbox", "orders", tc.order, "inventory", tc.traceparent
		value, err := cmdCodec.Encode(ctx, "inventory.commands", &reserveInventory{OrderID: tc.order, SKU: "s", Quantity: 1})
		if err != nil {
			t.Fatal(err)
		}
		commands = append(commands, &kgo.Record{Topic: "inventory.commands", Key: []byte(tc.order), Value: value, Headers: env.Apply(nil)})
	}
	if err := testkit.Client(t, s.KafkaAddrs()).ProduceSync(ctx, commands...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	handler := func(ctx context.Context, cmd reserveInventory, _ schema.Envelope) (pipe.Reply, error) {
		if !trace.SpanContextFromContext(ctx).IsValid() {
			return pipe.Reply{}, errors.New("the handler's ctx holds no span")
		}
		return pipe.NewReply(replyCodec, "test.InventoryReserved", inventoryReserved{OrderID: cmd.OrderID}), nil
	}
	client := testkit.Client(t, s.KafkaAddrs(), kgo.ConsumerGroup("inventory"), kgo.ConsumeTopics("inventory.commands"),
		kgo.DisableAutoCommit(), kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	w, err := pipe.NewStageWorker(client, cmdCodec, handler, pipe.WithPiperOptions(pipe.WithTracerProvider(tp)))
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	ran := make(chan error, 1)
	go func() { ran <- w.Run(runCtx) }()
	replies := consume(t, s, "orders.inbox", 2)
	stop()
	if err := <-ran; err != nil {
		t.Fatalf("Run: %v", err)
	}

	byName := map[string][]sdktrace.ReadOnlySpan{}
	for _, sp := range spans.Ended() {
		byName[sp.Name()] = append(byName[sp.Name()], sp)
	}
	process, publish := byName["inventory.commands process"], byName["orders.inbox publish"]
	if len(process) != 2 || len(publish) != 2 {
		t.Fatalf("spans %v, want two process and two publish spans", byName)
	}
	for i, r := range replies {
		got := header(r, schema.HeaderTraceParent)
		if got != "" && got[3:35] != publish[i].SpanContext().TraceID().String() {
			t.Errorf("reply %d traceparent %q is not its publish span's trace", i, got)
		}
		if publish[i].Parent().SpanID() != process[i].SpanContext().SpanID() {
			t.Errorf("reply %d: publish span's parent is not the command's process span", i)
		}
	}
	if got := process[0].SpanContext().TraceID().String(); got != upstream[3:35] || process[0].Parent().SpanID().String() != upstream[36:52] {
		t.Errorf("command 1 processed in trace %s, want the upstream trace", got)
	}
	if process[1].Parent().IsValid() || !process[1].SpanContext().IsValid() {
		t.Errorf("command 2 (malformed traceparent) processed with parent %v, want a new root", process[1].Parent())
	}
}

// A worker stopped while a handler is busy returns nil; the commands it
// handled before are answered and committed (their effects are applied:
// losing their replies would leave the saga to give the step up), and the
// command whose handler gave up is left for the next owner.
func TestStageWorkerStopsCleanlyMidBatch(t *testing.T) {
	ctx := context.Background()
	s := testkit.StartStack(t)
	testkit.CreateTopics(t, s.KafkaAddrs(), 1, "inventory.commands", "orders.inbox")
	cmdCodec, replyCodec := codecs(t, s)
	var commands []*kgo.Record
	for _, order := range []string{"order-1", "order-2", "order-3"} {
		env := schema.NewEnvelope("test.ReserveInventory", "orchestrator", time.Now())
		env.ID, env.ReplyTo = "cmd-"+order, "orders.inbox"
		value, err := cmdCodec.Encode(ctx, "inventory.commands", &reserveInventory{OrderID: order})
		if err != nil {
			t.Fatal(err)
		}
		commands = append(commands, &kgo.Record{Topic: "inventory.commands", Key: []byte(order), Value: value, Headers: env.Apply(nil)})
	}
	if err := testkit.Client(t, s.KafkaAddrs()).ProduceSync(ctx, commands...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	busy := make(chan struct{})
	var handled []string
	handler := func(ctx context.Context, cmd reserveInventory, _ schema.Envelope) (pipe.Reply, error) {
		if cmd.OrderID == "order-3" {
			close(busy)
			<-ctx.Done() // a slow participant, stopped
			return pipe.Reply{}, ctx.Err()
		}
		handled = append(handled, cmd.OrderID)
		return pipe.NewReply(replyCodec, "test.InventoryReserved", inventoryReserved{OrderID: cmd.OrderID}), nil
	}
	client := testkit.Client(t, s.KafkaAddrs(), kgo.ConsumerGroup("inventory"), kgo.ConsumeTopics("inventory.commands"),
		kgo.DisableAutoCommit(), kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	w, err := pipe.NewStageWorker(client, cmdCodec, handler)
	if err != nil {
		t.Fatal(err)
	}
	ran := make(chan error, 1)
	go func() { ran <- w.Run(runCtx) }()
	select {
	case <-busy:
	case <-time.After(30 * time.Second):
		t.Fatal("the third command never reached the handler")
	}
	stop()
	if err := <-ran; err != nil {
		t.Fatalf("Run returned %v when stopped, want nil", err)
	}
	if len(handled) != 2 {
		t.Fatalf("handled %v, want order-1 and order-2", handled)
	}
	replies := consume(t, s, "orders.inbox", 2)
	for i, r := range replies {
		if got := header(r, schema.HeaderCausationID); got != "cmd-order-"+string(rune('1'+i)) {
			t.Errorf("reply %d answers %q", i, got)
		}
	}
	offsets, err := kadm.NewClient(testkit.Client(t, s.KafkaAddrs())).FetchOffsets(ctx, "inventory")
	if err != nil {
		t.Fatal(err)
	}
	if o, _ := offsets.Lookup("inventory.commands", 0); o.At != 2 {
		t.Fatalf("committed offset %d, want 2 (the two answered commands; the third comes again)", o.At)
	}
}

// With WithConcurrency, commands of different keys are handled at the
// same time, while one key's commands are handled one at a time, in order;
// replies keep the commands' order and everything is committed.
func TestStageWorkerConcurrency(t *testing.T) {
	ctx := context.Background()
	s := testkit.StartStack(t)
	testkit.CreateTopics(t, s.KafkaAddrs(), 1, "inventory.commands", "orders.inbox")
	cmdCodec, replyCodec := codecs(t, s)
	var commands []*kgo.Record
	for i := range 12 {
		order := fmt.Sprintf("order-%d", i%4) // three commands per key
		env := schema.NewEnvelope("test.ReserveInventory", "orchestrator", time.Now())
		env.ID, env.ReplyTo = fmt.Sprintf("cmd-%02d", i), "orders.inbox"
		value, err := cmdCodec.Encode(ctx, "inventory.commands", &reserveInventory{OrderID: order, Quantity: int32(i)})
		if err != nil {
			t.Fatal(err)
		}
		commands = append(commands, &kgo.Record{Topic: "inventory.commands", Key: []byte(order), Value: value, Headers: env.Apply(nil)})
	}
	if err := testkit.Client(t, s.KafkaAddrs()).ProduceSync(ctx, commands...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	var (
		mu             sync.Mutex
		running, peak  int
		busyKey        = map[string]bool{}
		order          = map[string][]int32{}
		sameKeyOverlap bool
	)
	handler := func(_ context.Context, cmd reserveInventory, _ schema.Envelope) (pipe.Reply, error) {
		mu.Lock()
		running++
		peak = max(peak, running)
		sameKeyOverlap = sameKeyOverlap || busyKey[cmd.OrderID]
		busyKey[cmd.OrderID] = true
		order[cmd.OrderID] = append(order[cmd.OrderID], cmd.Quantity)
		mu.Unlock()
		time.Sleep(50 * time.Millisecond)
		mu.Lock()
		running--
		busyKey[cmd.OrderID] = false
		mu.Unlock()
		return pipe.NewReply(replyCodec, "test.InventoryReserved", inventoryReserved{OrderID: cmd.OrderID}), nil
	}
	client := testkit.Client(t, s.KafkaAddrs(), kgo.ConsumerGroup("inventory"), kgo.ConsumeTopics("inventory.commands"),
		kgo.DisableAutoCommit(), kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	w, err := pipe.NewStageWorker(client, cmdCodec, handler, pipe.WithConcurrency(8))
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	ran := make(chan error, 1)
	go func() { ran <- w.Run(runCtx) }()
	replies := consume(t, s, "orders.inbox", len(commands))
	stop()
	if err := <-ran; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if peak < 2 {
		t.Errorf("at most %d command handled at once, want several", peak)
	}
	if sameKeyOverlap {
		t.Error("two commands of one key were handled at the same time")
	}
	for key, qs := range order {
		if !slices.IsSorted(qs) {
			t.Errorf("%s handled out of order: %v", key, qs)
		}
	}
	for i, r := range replies {
		if got, want := header(r, schema.HeaderCausationID), fmt.Sprintf("cmd-%02d", i); got != want {
			t.Fatalf("reply %d answers %s, want %s: replies out of order", i, got, want)
		}
	}
	offsets, err := kadm.NewClient(testkit.Client(t, s.KafkaAddrs())).FetchOffsets(ctx, "inventory")
	if err != nil {
		t.Fatal(err)
	}
	if o, _ := offsets.Lookup("inventory.commands", 0); o.At != int64(len(commands)) {
		t.Fatalf("committed offset %d, want %d", o.At, len(commands))
	}
	if _, err := pipe.NewStageWorker(client, cmdCodec, handler, pipe.WithConcurrency(0)); err == nil || !strings.Contains(err.Error(), "WithConcurrency(0)") {
		t.Fatalf("WithConcurrency(0): %v, want an error naming it", err)
	}
}

type releaseInventory struct {
	OrderID string `avro:"order_id"`
	Reason  string `avro:"reason"`
}

const releaseInventorySchema = `{"type":"record","name":"ReleaseInventory","namespace":"test","fields":[
 {"name":"order_id","type":"string"},{"name":"reason","type":"string"}]}`

// A command and its compensation come on one topic with their own
// schemas: a Mux decodes each into its own type; a type without a route
// goes to the failure policy as ErrNoRoute.
func TestMuxWorkerRoutesByType(t *testing.T) {
	ctx := context.Background()
	s := testkit.StartStack(t)
	testkit.CreateTopics(t, s.KafkaAddrs(), 1, "inventory.commands", "orders.inbox")
	// Two record types on one topic: subjects by record name.
	serde := newSerde(t, s, schema.WithSubjectNameStrategy(schema.RecordNameStrategy))
	reserveCodec := newCodec[reserveInventory](t, serde, reserveInventorySchema)
	replyCodec := newCodec[inventoryReserved](t, serde, inventoryReservedSchema)
	releaseCodec := newCodec[releaseInventory](t, serde, releaseInventorySchema)
	record := func(typ string, value []byte) *kgo.Record {
		env := schema.NewEnvelope(typ, "orchestrator", time.Now())
		env.ReplyTo = "orders.inbox"
		return &kgo.Record{Topic: "inventory.commands", Key: []byte("o-1"), Value: value, Headers: env.Apply(nil)}
	}
	reserve, err := reserveCodec.Encode(ctx, "inventory.commands", &reserveInventory{OrderID: "o-1", SKU: "sku-1", Quantity: 2})
	if err != nil {
		t.Fatal(err)
	}
	release, err := releaseCodec.Encode(ctx, "inventory.commands", &releaseInventory{OrderID: "o-1", Reason: "payment declined"})
	if err != nil {
		t.Fatal(err)
	}
	if err := testkit.Client(t, s.KafkaAddrs()).ProduceSync(ctx, record("test.ReserveInventory", reserve), record("test.Audit", reserve),
		record("test.ReleaseInventory", release)).FirstErr(); err != nil {
		t.Fatal(err)
	}
	var (
		mu  sync.Mutex
		got []string
	)
	m := pipe.NewMux()
	pipe.Route(m, "test.ReserveInventory", reserveCodec, func(_ context.Context, c reserveInventory, _ schema.Envelope) (pipe.Reply, error) {
		mu.Lock()
		got = append(got, fmt.Sprintf("reserve %s %d", c.SKU, c.Quantity))
		mu.Unlock()
		return pipe.NewReply(replyCodec, "test.InventoryReserved", inventoryReserved{OrderID: c.OrderID}), nil
	})
	pipe.Route(m, "test.ReleaseInventory", releaseCodec, func(_ context.Context, c releaseInventory, _ schema.Envelope) (pipe.Reply, error) {
		mu.Lock()
		got = append(got, "release: "+c.Reason)
		mu.Unlock()
		return pipe.NewReply(replyCodec, "test.InventoryReleased", inventoryReserved{OrderID: c.OrderID}), nil
	})
	var failures []error
	policy := func(_ context.Context, _ *kgo.Record, err error) error {
		mu.Lock()
		failures = append(failures, err)
		mu.Unlock()
		return nil
	}
	client := testkit.Client(t, s.KafkaAddrs(), kgo.ConsumerGroup("inventory"), kgo.ConsumeTopics("inventory.commands"),
		kgo.DisableAutoCommit(), kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	w, err := pipe.NewMuxWorker(client, m, pipe.WithFailurePolicy(policy))
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	ran := make(chan error, 1)
	go func() { ran <- w.Run(runCtx) }()
	replies := consume(t, s, "orders.inbox", 2)
	stop()
	if err := <-ran; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(got) != "[reserve sku-1 2 release: payment declined]" {
		t.Fatalf("handled %v", got)
	}
	if len(failures) != 1 || !errors.Is(failures[0], pipe.ErrNoRoute) || !strings.Contains(failures[0].Error(), `"test.Audit"`) {
		t.Fatalf("failures %v, want one ErrNoRoute naming test.Audit", failures)
	}
	if header(replies[0], schema.HeaderType) != "test.InventoryReserved" || header(replies[1], schema.HeaderType) != "test.InventoryReleased" {
		t.Fatal("replies out of order or of the wrong types")
	}
	if _, err := pipe.NewMuxWorker(client, pipe.NewMux()); err == nil || !strings.Contains(err.Error(), "pipe.Route") {
		t.Fatalf("a Mux without routes: %v", err)
	}
}

// A broker that restarts (same port, same data) is ridden through: the
// worker logs the fetch errors its client retries, and answers the next
// command once the broker is back, instead of returning.
func TestStageWorkerRidesThroughABrokerRestart(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	first, err := devstack.Start(devstack.Config{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	addr := first.KafkaAddrs()[0]
	_, portText, _ := strings.Cut(addr, ":")
	port, err := strconv.Atoi(portText)
	if err != nil {
		t.Fatal(err)
	}
	testkit.CreateTopics(t, first.KafkaAddrs(), 1, "inventory.commands", "orders.inbox")
	cmdCodec, replyCodec := codecs(t, first)
	command := func(id string) *kgo.Record {
		env := schema.NewEnvelope("test.ReserveInventory", "orchestrator", time.Now())
		env.ID, env.ReplyTo = id, "orders.inbox"
		value, err := cmdCodec.Encode(ctx, "inventory.commands", &reserveInventory{OrderID: id})
		if err != nil {
			t.Fatal(err)
		}
		return &kgo.Record{Topic: "inventory.commands", Key: []byte(id), Value: value, Headers: env.Apply(nil)}
	}
	handler := func(_ context.Context, cmd reserveInventory, _ schema.Envelope) (pipe.Reply, error) {
		return pipe.NewReply(replyCodec, "test.InventoryReserved", inventoryReserved{OrderID: cmd.OrderID}), nil
	}
	client, err := kgo.NewClient(kgo.SeedBrokers(addr), kgo.ConsumerGroup("inventory"), kgo.ConsumeTopics("inventory.commands"),
		kgo.DisableAutoCommit(), kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.SessionTimeout(6*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	var logs testkit.SyncBuffer
	w, err := pipe.NewStageWorker(client, cmdCodec, handler, pipe.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	ran := make(chan error, 1)
	go func() { ran <- w.Run(runCtx) }()
	if err := testkit.Client(t, first.KafkaAddrs()).ProduceSync(ctx, command("before")).FirstErr(); err != nil {
		t.Fatal(err)
	}
	consume(t, first, "orders.inbox", 1)
	first.Close()
	time.Sleep(3 * time.Second) // the worker's client fails to reach it meanwhile
	select {
	case err := <-ran:
		t.Fatalf("the worker stopped while the broker was away: %v", err)
	default:
	}
	second, err := devstack.Start(devstack.Config{DataDir: dir, KafkaPort: port})
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	if err := testkit.Client(t, second.KafkaAddrs()).ProduceSync(ctx, command("after")).FirstErr(); err != nil {
		t.Fatal(err)
	}
	replies := consume(t, second, "orders.inbox", 2)
	if got := header(replies[1], schema.HeaderCausationID); got != "after" {
		t.Fatalf("second reply answers %q, want the command sent after the restart", got)
	}
	stop()
	if err := <-ran; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if !strings.Contains(logs.String(), "fetch error; the client retries") {
		t.Logf("no fetch error was logged (the client may have retried below the surface): %s", logs.String())
	}
}
