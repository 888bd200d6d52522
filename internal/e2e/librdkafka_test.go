package e2e_test

import (
	"context"
	"fmt"
	"hash/crc32"
	"maps"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/goleak"

	"github.com/sagapipe/sagapipe/devstack"
	"github.com/sagapipe/sagapipe/dlq"
	"github.com/sagapipe/sagapipe/examples/orders"
	"github.com/sagapipe/sagapipe/internal/testkit"
	"github.com/sagapipe/sagapipe/kread"
	"github.com/sagapipe/sagapipe/saga"
	"github.com/sagapipe/sagapipe/schema"
	"github.com/sagapipe/sagapipe/statemachine"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	python = "/usr/bin/python3"
	// aptInstall is what the machine needs for these tests.
	aptInstall = "apt-get install -y python3-confluent-kafka python3-avro"
	// partitions of every topic: with 3, CRC32 and murmur2 disagree on
	// about two keys in three.
	partitions = 3
	sagas      = 30
	// stepTimeout is far above a step's round trip: no command is resent,
	// so a saga whose reply is lost stalls visibly instead of healing.
	stepTimeout = 15 * time.Second
	// sagasDeadline bounds the wait for every saga to finish.
	sagasDeadline = 20 * time.Second
)

// The bug report's setup: a participant on librdkafka and Apache Avro
// replies keyed by saga ID with its client's default partitioner
// (consistent_random: CRC32 of the key), so most replies land on inbox
// partitions that do not hold their sagas (kgo's murmur2 placed the
// starts). Each is forwarded, inside the transaction, to its saga's
// partition: all 30 sagas complete, nothing is dead-lettered. Before
// forwarding, 22 of the report's 30 stalled; with it disabled, the 19 of
// these 30 whose replies land elsewhere do.
func TestLibrdkafkaParticipantRepliesAreForwarded(t *testing.T) {
	e := setup(t)
	ctx, s := t.Context(), e.saga
	ids := make([]string, sagas)
	misplaced := map[string]bool{} // sagas whose replies CRC32 puts off their home partition
	for i := range ids {
		ids[i] = orders.DemoOrder(i).OrderID
		if librdkafkaPartition(ids[i]) != home(s, ids[i]) {
			misplaced[ids[i]] = true
		}
	}
	if len(misplaced) == 0 {
		t.Fatal("CRC32 and murmur2 agree on every saga ID: the test would prove nothing")
	}

	ended := runRuntime(t, s, e.brokers, e.serde)
	if err := startOrders(ctx, s, e.client, e.serde, ids); err != nil {
		t.Fatal(err)
	}
	outcomes, dead := ended.wait(sagasDeadline, len(ids))
	var stalled []string
	for _, id := range ids {
		if outcomes[id] != saga.StateCompleted {
			stalled = append(stalled, fmt.Sprintf("%s (%s)", id, described(outcomes[id])))
		}
	}
	if len(stalled) > 0 || len(dead) > 0 {
		t.Fatalf("%d of %d sagas did not complete within %v: %v\n%d inbox records dead-lettered: %v\nthe participant's output:\n%s",
			len(stalled), len(ids), sagasDeadline, stalled, len(dead), dead, e.participant)
	}

	// What the inbox holds proves the path: every reply on the partition
	// CRC32 picks, and each one there that is not its saga's home
	// forwarded once, to the home partition.
	var replies, offHome int
	forwarded := map[string]int{}
	err := kread.ToEnd(ctx, []kgo.Opt{kgo.SeedBrokers(e.brokers...)}, s.InboxTopic(), nil, func(r *kgo.Record) error {
		id := string(r.Key)
		if _, ok := schema.Header(r.Headers, saga.HeaderForwardedFrom); ok {
			forwarded[id]++
			if r.Partition != home(s, id) {
				t.Errorf("%s forwarded to partition %d, its home is %d", id, r.Partition, home(s, id))
			}
			return nil
		}
		if typ, _ := schema.Header(r.Headers, schema.HeaderType); typ == orders.OrderPlacedType {
			return nil
		}
		replies++
		if r.Partition != librdkafkaPartition(id) {
			t.Errorf("a reply for %s is on partition %d, not %d: the participant's partitioner is not CRC32", id, r.Partition, librdkafkaPartition(id))
		}
		if r.Partition != home(s, id) {
			offHome++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Three replies a saga (inventory, payment, shipping); a step resent
	// under load would add its second reply.
	if replies < 3*sagas {
		t.Errorf("%d replies in the inbox, want at least %d", replies, 3*sagas)
	}
	if n := sum(forwarded); n != offHome {
		t.Errorf("%d replies landed off their saga's partition, %d were forwarded", offHome, n)
	}
	if got, want := slices.Sorted(maps.Keys(forwarded)), slices.Sorted(maps.Keys(misplaced)); !slices.Equal(got, want) {
		t.Errorf("forwarded the replies of %v, want those of %v", got, want)
	}
	t.Logf("%d sagas completed; %d of %d replies landed off their saga's partition (%d sagas) and were forwarded",
		len(ids), offHome, replies, len(misplaced))
}

// The participant keeps the contract docs/participants.md states, command by
// command: a compensation that comes before its command applies nothing,
// replies, and bars the command, which is then refused; a resend (a new
// ce_id, the same idempotency_key) gets the same reply and applies
// nothing again; every reply goes to reply_to keyed by saga_id, with the
// command's saga headers and trace context, caused by its ce_id.
func TestLibrdkafkaParticipantKeepsTheContract(t *testing.T) {
	e := setup(t)
	ctx := t.Context()
	const replyTo = "e2e.replies"
	if err := saga.EnsureTopic(ctx, kadm.NewClient(e.client), replyTo, partitions, 1, nil); err != nil {
		t.Fatal(err)
	}
	refund := func(id string) *kgo.Record {
		return command(t, e.serde, orders.EvRefundPayment, orders.RefundPayment{OrderID: id, PaymentID: "pay-" + id, AmountCents: 500}, id, "undo", replyTo)
	}
	charge := func(id string) *kgo.Record {
		return command(t, e.serde, orders.EvChargePayment, orders.ChargePayment{OrderID: id, CustomerID: "c-1", AmountCents: 500}, id, "do", replyTo)
	}
	tests := []struct {
		name    string
		command *kgo.Record
		want    string // the reply's ce_type
	}{
		{"compensation before its command", refund("never-charged"), orders.EvPaymentRefunded.Type},
		{"command after its compensation", charge("never-charged"), orders.EvPaymentDeclined.Type},
		{"a resend of the refused command", charge("never-charged"), orders.EvPaymentDeclined.Type},
		{"a command", charge("charged"), orders.EvPaymentCharged.Type},
		{"a resend of the applied command", charge("charged"), orders.EvPaymentCharged.Type},
		{"its compensation", refund("charged"), orders.EvPaymentRefunded.Type},
	}
	for _, tt := range tests {
		if err := e.client.ProduceSync(ctx, tt.command).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	replies := readReplies(t, e.brokers, replyTo, len(tests))
	for _, tt := range tests {
		cmd, _ := schema.ReadEnvelope(tt.command.Headers)
		r := replies[cmd.ID]
		if r == nil {
			t.Errorf("%s (%s): no reply; the participant's output:\n%s", tt.name, cmd.IdempotencyKey, e.participant)
			continue
		}
		got, err := schema.ReadEnvelope(r.Headers)
		if err != nil {
			t.Errorf("%s: %v", tt.name, err)
			continue
		}
		if got.Type != tt.want {
			t.Errorf("%s (%s): replied %s, want %s", tt.name, cmd.IdempotencyKey, got.Type, tt.want)
		}
		want := cmd
		want.ID, want.Type, want.Source, want.Time, want.CausationID, want.ReplyTo, want.IdempotencyKey =
			got.ID, got.Type, got.Source, got.Time, cmd.ID, "", ""
		if got != want || got.ID == cmd.ID || string(r.Key) != cmd.SagaID {
			t.Errorf("%s: reply keyed %q with envelope\n%+v\nwant keyed %q with\n%+v (a new ce_id)", tt.name, r.Key, got, cmd.SagaID, want)
		}
	}
	// Effects are applied once per idempotency key; a compensation with
	// nothing to undo and the command it barred, never.
	applied := map[string]int{}
	for _, line := range strings.Split(e.participant.String(), "\n") {
		if fields := strings.Fields(line); len(fields) == 3 && fields[0] == "applied" {
			applied[fields[2]]++
		}
	}
	if want := map[string]int{"charged/payment/do": 1, "charged/payment/undo": 1}; !maps.Equal(applied, want) {
		t.Errorf("effects applied %v, want %v", applied, want)
	}
}

// env is a running embedded stack with the orders saga's topics and the
// librdkafka participant consuming its command topics.
type env struct {
	brokers     []string
	client      *kgo.Client
	serde       *schema.Serde
	saga        *saga.Saga[orders.OrderData]
	participant *testkit.SyncBuffer // its output
}

func setup(t *testing.T) *env {
	t.Helper()
	requirePython(t)
	stack, err := devstack.Start(devstack.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stack.Close() })
	e := &env{brokers: stack.KafkaAddrs()}
	if e.client, err = kgo.NewClient(kgo.SeedBrokers(e.brokers...)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.client.Close)
	if e.serde, err = schema.NewSerde(stack.RegistryURL(), schema.WithSubjectNameStrategy(schema.RecordNameStrategy)); err != nil {
		t.Fatal(err)
	}
	if e.saga, err = orders.Saga(stepTimeout); err != nil {
		t.Fatal(err)
	}
	adm := kadm.NewClient(e.client)
	if err := e.saga.EnsureTopics(t.Context(), adm, partitions, 1); err != nil {
		t.Fatal(err)
	}
	for _, topic := range []string{orders.InventoryTopic, orders.PaymentTopic, orders.ShippingTopic} {
		if err := saga.EnsureTopic(t.Context(), adm, topic, partitions, 1, nil); err != nil {
			t.Fatal(err)
		}
	}
	e.participant = startParticipant(t, e.brokers, stack.RegistryURL())
	return e
}

// command is a command of the orders saga's payment step as the
// orchestrator sends it, for saga id, its effect's kind "do" or "undo".
func command[T any](t *testing.T, serde *schema.Serde, def saga.EventDef[T], v T, id, kind, replyTo string) *kgo.Record {
	t.Helper()
	codec, err := schema.NewCodec[T](serde, def.Schema)
	if err != nil {
		t.Fatal(err)
	}
	value, err := codec.Encode(t.Context(), orders.PaymentTopic, &v)
	if err != nil {
		t.Fatal(err)
	}
	env := schema.NewEnvelope(def.Type, "sagapipe/orders", time.Now())
	env.SagaName, env.SagaID, env.SagaStep, env.CorrelationID = "orders", id, "payment", id
	env.ReplyTo, env.IdempotencyKey = replyTo, id+"/payment/"+kind
	env.TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	return &kgo.Record{Topic: orders.PaymentTopic, Key: []byte(id), Value: value, Headers: env.Apply(nil)}
}

// readReplies reads n records from topic, by causation_id.
func readReplies(t *testing.T, brokers []string, topic string, n int) map[string]*kgo.Record {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	got := map[string]*kgo.Record{}
	for len(got) < n && ctx.Err() == nil {
		cl.PollFetches(ctx).EachRecord(func(r *kgo.Record) {
			cause, _ := schema.Header(r.Headers, schema.HeaderCausationID)
			got[cause] = r
		})
	}
	return got
}

// requirePython fails the test, naming the packages to install, when the
// participant cannot run here.
func requirePython(t *testing.T) {
	t.Helper()
	if out, err := exec.Command(python, "-c", "import confluent_kafka, avro").CombinedOutput(); err != nil {
		t.Fatalf("the librdkafka participant needs %s with confluent_kafka and avro: %s (%v)\n%s", python, aptInstall, err, out)
	}
}

// startParticipant runs testdata/participant.py until the test ends, and
// returns once it has been assigned its partitions. Its output is returned
// for failure messages. It must stop cleanly on SIGTERM.
func startParticipant(t *testing.T, brokers []string, registryURL string) *testkit.SyncBuffer {
	t.Helper()
	ctx, stop := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, python, filepath.Join("testdata", "participant.py"),
		strings.Join(brokers, ","), registryURL, filepath.Join("..", "..", "examples", "orders", "schemas"))
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second // then it is killed
	out := &testkit.SyncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	testkit.DieWithParent(cmd)
	if err := cmd.Start(); err != nil {
		stop()
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { defer close(exited); _ = cmd.Wait() }()
	t.Cleanup(func() {
		stop()
		<-exited
		if !cmd.ProcessState.Success() {
			t.Errorf("the participant did not exit cleanly on SIGTERM (%v):\n%s", cmd.ProcessState, out)
		}
	})
	deadline := time.After(15 * time.Second)
	for !strings.Contains(out.String(), "assigned") {
		select {
		case <-exited:
			t.Fatalf("the participant exited (%v):\n%s", cmd.ProcessState, out)
		case <-deadline:
			t.Fatalf("the participant was not assigned its partitions within 15s:\n%s", out)
		case <-time.After(20 * time.Millisecond):
		}
	}
	return out
}

// runRuntime runs the saga's orchestrator until the test ends.
func runRuntime(t *testing.T, s *saga.Saga[orders.OrderData], brokers []string, serde *schema.Serde) *endings {
	t.Helper()
	ended := &endings{outcomes: map[string]statemachine.State{}, changed: make(chan struct{}, 1)}
	rt, err := saga.NewRuntime(s, saga.WithClientOptions(kgo.SeedBrokers(brokers...)), saga.WithRegistry(serde), saga.WithHooks(ended))
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- rt.Run(ctx) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("runtime: %v", err)
		}
		rt.Close()
	})
	return ended
}

// startOrders starts a saga per ID, an OrderPlaced keyed by its ID with
// kgo's default partitioner: the start lands on the saga's home partition.
func startOrders(ctx context.Context, s *saga.Saga[orders.OrderData], client *kgo.Client, serde *schema.Serde, ids []string) error {
	starter, err := s.NewStarter(client, serde, saga.StartSource("e2e"))
	if err != nil {
		return err
	}
	for i, id := range ids {
		o := orders.DemoOrder(i)
		o.OrderID = id
		if _, err := starter.Start(ctx, id, o); err != nil {
			return err
		}
	}
	return nil
}

// home is saga id's inbox partition: the one kgo's default partitioner
// (murmur2, as Java's) picks for its key.
func home(s *saga.Saga[orders.OrderData], id string) int32 {
	return int32(kgo.StickyKeyPartitioner(nil).ForTopic(s.InboxTopic()).Partition(&kgo.Record{Key: []byte(id)}, partitions))
}

// librdkafkaPartition is where librdkafka's default partitioner
// (consistent_random) puts key id: CRC32 of the key, modulo the count.
func librdkafkaPartition(id string) int32 {
	return int32(crc32.ChecksumIEEE([]byte(id)) % partitions)
}

func sum(counts map[string]int) int {
	n := 0
	for _, c := range counts {
		n += c
	}
	return n
}

func described(s statemachine.State) statemachine.State {
	if s == "" {
		return "not finished"
	}
	return s
}

// endings hears how sagas ended and what was dead-lettered.
type endings struct {
	mu       sync.Mutex
	outcomes map[string]statemachine.State
	dead     []string
	changed  chan struct{}
}

func (e *endings) OnFinished(id string, outcome statemachine.State) {
	e.mu.Lock()
	e.outcomes[id] = outcome
	e.mu.Unlock()
	e.notify()
}

func (e *endings) OnDeadLettered(rec *kgo.Record, f dlq.Failure) {
	e.mu.Lock()
	e.dead = append(e.dead, fmt.Sprintf("%s/%d@%d %s: %v", rec.Topic, rec.Partition, rec.Offset, rec.Key, f.Err))
	e.mu.Unlock()
	e.notify()
}

func (e *endings) notify() {
	select {
	case e.changed <- struct{}{}:
	default:
	}
}

// wait returns the outcomes and dead letters once n sagas have finished,
// or when timeout has passed.
func (e *endings) wait(timeout time.Duration, n int) (map[string]statemachine.State, []string) {
	deadline := time.After(timeout)
	for {
		e.mu.Lock()
		outcomes, dead := maps.Clone(e.outcomes), slices.Clone(e.dead)
		e.mu.Unlock()
		if len(outcomes) >= n {
			return outcomes, dead
		}
		select {
		case <-e.changed:
		case <-deadline:
			return outcomes, dead
		}
	}
}
