package saga_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/goleak"

	"github.com/sagapipe/sagapipe/devstack"
	"github.com/sagapipe/sagapipe/dlq"
	"github.com/sagapipe/sagapipe/kread"
	"github.com/sagapipe/sagapipe/pipe"
	"github.com/sagapipe/sagapipe/saga"
	"github.com/sagapipe/sagapipe/schema"
	"github.com/sagapipe/sagapipe/statemachine"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// env is an embedded stack with the orders saga's topics.
type env struct {
	t     *testing.T
	stack *devstack.Stack
	serde *schema.Serde
	saga  *saga.Saga[orderData]
	// tp, when set, traces the participants and the starter.
	tp trace.TracerProvider
}

func newEnv(t *testing.T, inboxPartitions int32) *env {
	t.Helper()
	return newEnvWith(t, inboxPartitions, devstack.Config{})
}

// newEnvWith is newEnv on a stack started with cfg.
func newEnvWith(t *testing.T, inboxPartitions int32, cfg devstack.Config) *env {
	t.Helper()
	stack, err := devstack.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stack.Close() })
	serde, err := schema.NewSerde(stack.RegistryURL(), schema.WithSubjectNameStrategy(schema.RecordNameStrategy))
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, stack: stack, serde: serde, saga: ordersSaga(t)}
	cl := e.client()
	adm := kadm.NewClient(cl)
	ctx := context.Background()
	if err := e.saga.EnsureTopics(ctx, adm, inboxPartitions, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := adm.CreateTopics(ctx, 1, 1, nil, "inventory.commands", "payment.commands", "shipping.commands"); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *env) client(opts ...kgo.Opt) *kgo.Client {
	e.t.Helper()
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(e.stack.KafkaAddrs()...)}, opts...)...)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(cl.Close)
	return cl
}

func (e *env) codec(d saga.EventDef[msg]) *schema.Codec[msg] {
	e.t.Helper()
	c, err := schema.NewCodec[msg](e.serde, d.Schema)
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

// participant runs a stage worker on topic that answers each command type
// in replies; behaviour decides by order ID which reply (nil: none).
type participant struct {
	mu      sync.Mutex
	applied map[string]int // "<command type> <order>" → times
	byID    map[string]int // command ce_id → times
	byKey   map[string]int // idempotency key → times
}

func (e *env) participant(topic string, replies map[string]func(order string) *saga.EventDef[msg], opts ...kgo.Opt) *participant {
	e.t.Helper()
	var aliases []string
	for typ := range replies {
		aliases = append(aliases, fmt.Sprintf("%q", typ))
	}
	// One reader schema whose aliases accept every command type of the topic.
	reader := fmt.Sprintf(`{"type":"record","name":"Command","namespace":"any","aliases":[%s],"fields":[
 {"name":"order_id","type":"string"},{"name":"detail","type":"string","default":""}]}`, strings.Join(aliases, ","))
	cmdCodec, err := schema.NewCodec[msg](e.serde, reader)
	if err != nil {
		e.t.Fatal(err)
	}
	p := &participant{applied: map[string]int{}, byID: map[string]int{}, byKey: map[string]int{}}
	handler := func(_ context.Context, cmd msg, env schema.Envelope) (pipe.Reply, error) {
		p.mu.Lock()
		p.applied[env.Type+" "+cmd.OrderID]++
		p.byID[env.ID]++
		p.byKey[env.IdempotencyKey]++
		p.mu.Unlock()
		reply := replies[env.Type](cmd.OrderID)
		if reply == nil {
			return pipe.NoReply, nil
		}
		return pipe.NewReply(e.codec(*reply), reply.Type, msg{OrderID: cmd.OrderID, Detail: "by " + topic}), nil
	}
	cl := e.client(append([]kgo.Opt{kgo.ConsumerGroup(topic + ".worker"), kgo.ConsumeTopics(topic), kgo.DisableAutoCommit(), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart())}, opts...)...)
	var opts2 []pipe.StageOpt
	if e.tp != nil {
		opts2 = append(opts2, pipe.WithPiperOptions(pipe.WithTracerProvider(e.tp)))
	}
	w, err := pipe.NewStageWorker(cl, cmdCodec, handler, opts2...)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	e.t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			e.t.Errorf("participant %s: %v", topic, err)
		}
	})
	return p
}

func (p *participant) count(key string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.applied[key]
}

// repeatedIDs lists the command IDs the participant handled more than once:
// its idempotency store failed them.
func (p *participant) repeatedIDs() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var ids []string
	for id, n := range p.byID {
		if n > 1 {
			ids = append(ids, id)
		}
	}
	return ids
}

func always(d saga.EventDef[msg]) func(string) *saga.EventDef[msg] {
	return func(string) *saga.EventDef[msg] { return &d }
}

// finished collects the outcomes the runtime reports.
type finished struct {
	mu       sync.Mutex
	outcomes map[string]statemachine.State
	changed  chan struct{}
}

func newFinished() *finished {
	return &finished{outcomes: map[string]statemachine.State{}, changed: make(chan struct{}, 1000)}
}

func (f *finished) OnFinished(id string, outcome statemachine.State) {
	f.mu.Lock()
	if prev, ok := f.outcomes[id]; ok {
		panic(fmt.Sprintf("saga %s finished twice: %s then %s", id, prev, outcome))
	}
	f.outcomes[id] = outcome
	f.mu.Unlock()
	f.changed <- struct{}{}
}

func (f *finished) wait(t *testing.T, n int) map[string]statemachine.State {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		f.mu.Lock()
		if len(f.outcomes) >= n {
			out := map[string]statemachine.State{}
			for k, v := range f.outcomes {
				out[k] = v
			}
			f.mu.Unlock()
			return out
		}
		got := len(f.outcomes)
		f.mu.Unlock()
		select {
		case <-f.changed:
		case <-deadline:
			t.Fatalf("%d of %d sagas finished", got, n)
		}
	}
}

// startRuntime starts a runtime with opts (the stack's brokers and
// registry first, so opts may replace the registry); stop ends it and
// returns Run's error.
func (e *env) startRuntime(opts ...saga.Opt) (*saga.Runtime[orderData], func() error) {
	e.t.Helper()
	return e.startVersions(e.saga, nil, opts...)
}

// startVersions is startRuntime running definition s and older versions.
func (e *env) startVersions(s *saga.Saga[orderData], older []*saga.Saga[orderData], opts ...saga.Opt) (*saga.Runtime[orderData], func() error) {
	e.t.Helper()
	opts = append([]saga.Opt{saga.WithClientOptions(kgo.SeedBrokers(e.stack.KafkaAddrs()...)), saga.WithRegistry(e.serde),
		saga.WithOlderVersions(older...)}, opts...)
	r, err := saga.NewRuntime(s, opts...)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	var runErr error
	stop := func() error {
		once.Do(func() { cancel(); runErr = <-done; r.Close() })
		return runErr
	}
	e.t.Cleanup(func() { _ = stop() })
	return r, stop
}

// runtime starts a runtime reporting to hooks.
func (e *env) runtime(hooks ...saga.Hook) (stop func() error) {
	_, stop = e.startRuntime(saga.WithHooks(hooks...))
	return stop
}

// start places an order: the saga's Starter produces its OrderPlaced.
func (e *env) start(orders ...string) {
	e.t.Helper()
	ctx := context.Background()
	opts := []saga.StarterOpt{saga.StartSource("test")}
	if e.tp != nil {
		opts = append(opts, saga.StartTracerProvider(e.tp))
	}
	starter, err := e.saga.NewStarter(e.client(), e.serde, opts...)
	if err != nil {
		e.t.Fatal(err)
	}
	for _, o := range orders {
		if _, err := starter.Start(ctx, o, msg{OrderID: o}); err != nil {
			e.t.Fatal(err)
		}
	}
}

// journal reads the committed journal.
func (e *env) journal() []saga.JournalEntry {
	e.t.Helper()
	ctx := context.Background()
	c, err := schema.NewCodec[saga.JournalEntry](e.serde, saga.JournalEntrySchema)
	if err != nil {
		e.t.Fatal(err)
	}
	var out []saga.JournalEntry
	err = kread.ToEnd(ctx, []kgo.Opt{kgo.SeedBrokers(e.stack.KafkaAddrs()...)}, e.saga.JournalTopic(), nil, func(r *kgo.Record) error {
		je, err := c.Decode(ctx, r.Value)
		out = append(out, je)
		return err
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

// checkJournal asserts that no event was applied twice for a saga.
func checkJournal(t *testing.T, entries []saga.JournalEntry) {
	t.Helper()
	seen := map[string]bool{}
	for _, je := range entries {
		key := je.SagaID + " " + je.CEID
		if seen[key] {
			t.Fatalf("event %s journaled twice for saga %s", je.CEID, je.SagaID)
		}
		seen[key] = true
	}
}

func TestRuntimeHappyPathAndCompensation(t *testing.T) {
	e := newEnv(t, 1)
	inventory := e.participant("inventory.commands", map[string]func(string) *saga.EventDef[msg]{
		reserveInventory.Type: always(inventoryReserved),
		releaseInventory.Type: always(inventoryReleased),
	})
	payment := e.participant("payment.commands", map[string]func(string) *saga.EventDef[msg]{
		chargePayment.Type: func(order string) *saga.EventDef[msg] {
			if order == "declined" {
				return &paymentDeclined
			}
			return &paymentCharged
		},
		refundPayment.Type: always(paymentRefunded),
	})
	shipping := e.participant("shipping.commands", map[string]func(string) *saga.EventDef[msg]{
		scheduleShipment.Type: func(order string) *saga.EventDef[msg] {
			if order == "unshippable" {
				return &shipmentFailed
			}
			return &shipmentScheduled
		},
	})
	done := newFinished()
	e.runtime(done)
	e.start("ok", "declined", "unshippable")
	outcomes := done.wait(t, 3)
	want := map[string]statemachine.State{"ok": saga.StateCompleted, "declined": saga.StateCompensated, "unshippable": saga.StateCompensated}
	if fmt.Sprint(outcomes) != fmt.Sprint(want) {
		t.Fatalf("outcomes %v, want %v", outcomes, want)
	}
	effects := map[string]int{
		"test.ReserveInventory ok": inventory.count("test.ReserveInventory ok"), "test.ReleaseInventory ok": inventory.count("test.ReleaseInventory ok"),
		"test.ReleaseInventory declined": inventory.count("test.ReleaseInventory declined"), "test.RefundPayment declined": payment.count("test.RefundPayment declined"),
		"test.RefundPayment unshippable": payment.count("test.RefundPayment unshippable"), "test.ReleaseInventory unshippable": inventory.count("test.ReleaseInventory unshippable"),
		"test.ScheduleShipment unshippable": shipping.count("test.ScheduleShipment unshippable"),
	}
	wantEffects := map[string]int{
		"test.ReserveInventory ok": 1, "test.ReleaseInventory ok": 0,
		"test.ReleaseInventory declined": 1, "test.RefundPayment declined": 0, // never charged: nothing to refund
		"test.RefundPayment unshippable": 1, "test.ReleaseInventory unshippable": 1,
		"test.ScheduleShipment unshippable": 1,
	}
	if fmt.Sprint(effects) != fmt.Sprint(wantEffects) {
		t.Fatalf("participant effects %v, want %v", effects, wantEffects)
	}
	checkJournal(t, e.journal())
	// Each saga announced its outcome once, in the transaction that ended it.
	announced := map[string]string{}
	err := kread.ToEnd(context.Background(), []kgo.Opt{kgo.SeedBrokers(e.stack.KafkaAddrs()...)}, "orders.outcomes", nil, func(r *kgo.Record) error {
		id, _ := schema.Header(r.Headers, schema.HeaderSagaID)
		typ, _ := schema.Header(r.Headers, schema.HeaderType)
		if announced[id] != "" {
			t.Errorf("saga %s announced twice", id)
		}
		announced[id] = typ
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	wantAnnounced := map[string]string{"ok": orderConfirmed.Type, "declined": orderRejected.Type, "unshippable": orderRejected.Type}
	if fmt.Sprint(announced) != fmt.Sprint(wantAnnounced) {
		t.Fatalf("outcomes announced %v, want %v", announced, wantAnnounced)
	}
}

func TestRuntimeDuplicatesLateRepliesAndPoison(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, 1)
	e.participant("inventory.commands", map[string]func(string) *saga.EventDef[msg]{reserveInventory.Type: always(inventoryReserved)})
	e.participant("payment.commands", map[string]func(string) *saga.EventDef[msg]{chargePayment.Type: always(paymentCharged)})
	e.participant("shipping.commands", map[string]func(string) *saga.EventDef[msg]{scheduleShipment.Type: always(shipmentScheduled)})
	done := newFinished()
	dead := make(chan struct{}, 10)
	e.runtime(done, deadHook(func() { dead <- struct{}{} }))
	e.start("o-1")
	done.wait(t, 1)
	before := len(e.journal())

	// A copy of the payment reply (same ce_id), a late reply with a new
	// ce_id, a reply for a saga nobody started, and bytes that are not Avro.
	replyCodec := e.codec(paymentCharged)
	value, err := replyCodec.Encode(ctx, e.saga.InboxTopic(), &msg{OrderID: "o-1"})
	if err != nil {
		t.Fatal(err)
	}
	replyEnv := func(id, sagaID string) []kgo.RecordHeader {
		env := schema.Envelope{ID: id, Type: paymentCharged.Type, SagaName: "orders", SagaID: sagaID, SagaStep: "payment"}
		return env.Apply(nil)
	}
	var paymentReplyID string
	for _, je := range e.journal() {
		if je.CEType == paymentCharged.Type {
			paymentReplyID = je.CEID
		}
	}
	inbox := e.saga.InboxTopic()
	if err := e.client().ProduceSync(ctx,
		&kgo.Record{Topic: inbox, Key: []byte("o-1"), Value: value, Headers: replyEnv(paymentReplyID, "o-1")},
		&kgo.Record{Topic: inbox, Key: []byte("o-1"), Value: value, Headers: replyEnv("late-1", "o-1")},
		&kgo.Record{Topic: inbox, Key: []byte("ghost"), Value: value, Headers: replyEnv("r-ghost", "ghost")},
		&kgo.Record{Topic: inbox, Key: []byte("o-1"), Value: []byte("garbage"), Headers: replyEnv("r-garbage", "o-1")},
	).FirstErr(); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		select {
		case <-dead:
		case <-time.After(30 * time.Second):
			t.Fatal("the unknown saga's reply and the garbage were not both dead-lettered")
		}
	}
	entries := e.journal()
	checkJournal(t, entries)
	added := entries[before:]
	if len(added) != 1 || added[0].CEID != "late-1" || added[0].Outcome != saga.OutcomeIgnored {
		t.Fatalf("journal grew by %+v, want only the late reply, journaled as ignored", added)
	}
	var dlqCount int64
	err = kread.ToEnd(ctx, []kgo.Opt{kgo.SeedBrokers(e.stack.KafkaAddrs()...)}, inbox+".dlq", nil, func(r *kgo.Record) error {
		dlqCount++
		if c, _ := schema.Header(r.Headers, "error_message"); !strings.Contains(c, "does not know") && !strings.Contains(c, "magic byte") {
			t.Errorf("dead letter with message %q", c)
		}
		return nil
	})
	if err != nil || dlqCount != 2 {
		t.Fatalf("%d dead letters (%v), want 2", dlqCount, err)
	}
}

type deadHook func()

func (f deadHook) OnDeadLettered(*kgo.Record, dlq.Failure) { f() }

// heldAtShipping runs six orders through inventory and payment with no
// shipping participant, so that every saga waits at shipping, then stops
// the orchestrator. It returns the payment participant and the orders.
func (e *env) heldAtShipping() (*participant, []string) {
	e.t.Helper()
	e.participant("inventory.commands", map[string]func(string) *saga.EventDef[msg]{reserveInventory.Type: always(inventoryReserved)})
	payment := e.participant("payment.commands", map[string]func(string) *saga.EventDef[msg]{chargePayment.Type: always(paymentCharged)})
	stop := e.runtime()
	orders := []string{"a", "b", "c", "d", "e", "f"}
	e.start(orders...)
	waitFor(e.t, "every order charged", func() bool {
		n := 0
		for _, o := range orders {
			n += payment.count(chargePayment.Type + " " + o)
		}
		return n == len(orders)
	})
	if err := stop(); err != nil {
		e.t.Fatal(err)
	}
	return payment, orders
}

func TestRuntimeRecoversFromSnapshots(t *testing.T) {
	e := newEnv(t, 2)
	payment, orders := e.heldAtShipping()

	// A new orchestrator (an empty local store) restores every saga from
	// its snapshot; shipping comes up; every saga completes once.
	second := newFinished()
	e.runtime(second)
	e.participant("shipping.commands", map[string]func(string) *saga.EventDef[msg]{scheduleShipment.Type: always(shipmentScheduled)})
	outcomes := second.wait(t, len(orders))
	for _, o := range orders {
		if outcomes[o] != saga.StateCompleted {
			t.Fatalf("saga %s ended %s, want Completed", o, outcomes[o])
		}
		if n := payment.count("test.ChargePayment " + o); n != 1 {
			t.Fatalf("order %s charged %d times, want once", o, n)
		}
	}
	checkJournal(t, e.journal())
}

func TestNewRuntimeRefusesTopicNaming(t *testing.T) {
	e := newEnv(t, 1)
	serde, err := schema.NewSerde(e.stack.RegistryURL()) // topic naming: one subject for the whole inbox
	if err != nil {
		t.Fatal(err)
	}
	_, err = saga.NewRuntime(e.saga, saga.WithClientOptions(kgo.SeedBrokers(e.stack.KafkaAddrs()...)), saga.WithRegistry(serde))
	if err == nil || !strings.Contains(err.Error(), "RecordNameStrategy") {
		t.Fatalf("got %v, want an error naming RecordNameStrategy", err)
	}
}

// typoHook means to be a HookFinished, but its method is misspelt.
type typoHook struct{}

func (typoHook) OnFinish(string, statemachine.State) {}

// Every option NewRuntime needs and does not get, or gets wrong, is named
// with the fix.
func TestNewRuntimeNamesTheOptionToPass(t *testing.T) {
	serde, err := schema.NewSerde("http://127.0.0.1:1", schema.WithSubjectNameStrategy(schema.RecordNameStrategy))
	if err != nil {
		t.Fatal(err)
	}
	seeds := saga.WithClientOptions(kgo.SeedBrokers("127.0.0.1:1"))
	tests := []struct {
		name    string
		opts    []saga.Opt
		wantErr string
	}{
		{"no cluster", []saga.Opt{saga.WithRegistry(serde)}, "no cluster to reach: pass saga.WithClientOptions(kgo.SeedBrokers(...))"},
		{"client options without seed brokers", []saga.Opt{saga.WithClientOptions(kgo.ClientID("orders")), saga.WithRegistry(serde)},
			"no seed brokers: pass saga.WithClientOptions(kgo.SeedBrokers(...))"},
		{"no registry", []saga.Opt{seeds}, "no schema registry: pass saga.WithRegistry(serde)"},
		{"a nil option", []saga.Opt{seeds, saga.WithRegistry(serde), nil}, "an option is nil"},
		{"a negative transaction timeout", []saga.Opt{seeds, saga.WithRegistry(serde), saga.WithTransactionTimeout(-time.Second)},
			"WithTransactionTimeout(-1s) is negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := saga.NewRuntime(ordersSaga(t), tt.opts...)
			if err == nil {
				r.Close()
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("NewRuntime: %v, want an error saying %q", err, tt.wantErr)
			}
		})
	}
}

func TestNewRuntimeRefusesAHookThatImplementsNothing(t *testing.T) {
	serde, err := schema.NewSerde("http://127.0.0.1:1", schema.WithSubjectNameStrategy(schema.RecordNameStrategy))
	if err != nil {
		t.Fatal(err)
	}
	_, err = saga.NewRuntime(ordersSaga(t), saga.WithClientOptions(kgo.SeedBrokers("127.0.0.1:1")), saga.WithRegistry(serde), saga.WithHooks(newFinished(), typoHook{}))
	if err == nil || !strings.Contains(err.Error(), "hook 1 (saga_test.typoHook) implements none of HookFinished") {
		t.Fatalf("NewRuntime: %v, want an error naming the second hook", err)
	}
}

func TestRunRefusesMissingTopics(t *testing.T) {
	stack, err := devstack.Start(devstack.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer stack.Close()
	serde, err := schema.NewSerde(stack.RegistryURL(), schema.WithSubjectNameStrategy(schema.RecordNameStrategy))
	if err != nil {
		t.Fatal(err)
	}
	r, err := saga.NewRuntime(ordersSaga(t), saga.WithClientOptions(kgo.SeedBrokers(stack.KafkaAddrs()...)), saga.WithRegistry(serde))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	err = r.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "orders.journal") || !strings.Contains(err.Error(), "topics ensure") {
		t.Fatalf("Run: %v, want an error naming the missing topics and the fix", err)
	}
}
