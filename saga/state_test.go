package saga_test

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/internal/testkit"
	"github.com/sagapipe/sagapipe/kread"
	"github.com/sagapipe/sagapipe/saga"
	"github.com/sagapipe/sagapipe/schema"
)

// restores records where each partition's state came from.
type restores struct {
	mu   sync.Mutex
	from []saga.RestoredFrom
	live int
}

func (r *restores) OnRestored(_ int32, from saga.RestoredFrom, live int, _ time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.from = append(r.from, from)
	r.live += live
}

func (r *restores) get() ([]saga.RestoredFrom, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.from), r.live
}

// waitFor waits (testkit.WaitUntil) until cond holds, for 20 seconds at
// most.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testkit.WaitUntil(t, 20*time.Second, func() error {
		if cond() {
			return nil
		}
		return fmt.Errorf("waiting for %s", what)
	})
}

// stateRecords reads the state topic: per saga ID, its records in order
// (nil values are tombstones).
func (e *env) stateRecords() map[string][]*kgo.Record {
	e.t.Helper()
	out := map[string][]*kgo.Record{}
	err := kread.ToEnd(context.Background(), []kgo.Opt{kgo.SeedBrokers(e.stack.KafkaAddrs()...)}, e.saga.StateTopic(), nil, func(r *kgo.Record) error {
		out[string(r.Key)] = append(out[string(r.Key)], r)
		return nil
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

// journalOf returns the journal entries of saga id.
func (e *env) journalOf(id string) []saga.JournalEntry {
	var out []saga.JournalEntry
	for _, je := range e.journal() {
		if je.SagaID == id {
			out = append(out, je)
		}
	}
	return out
}

// sendLate produces a reply for a saga as a late participant would.
func (e *env) sendLate(id, ceID string) {
	e.t.Helper()
	ctx := context.Background()
	value, err := e.codec(paymentCharged).Encode(ctx, e.saga.InboxTopic(), &msg{OrderID: id})
	if err != nil {
		e.t.Fatal(err)
	}
	late := schema.Envelope{ID: ceID, Type: paymentCharged.Type, SagaName: "orders", SagaID: id, SagaStep: "payment"}
	if err := e.client().ProduceSync(ctx, &kgo.Record{Topic: e.saga.InboxTopic(), Key: []byte(id), Value: value, Headers: late.Apply(nil)}).FirstErr(); err != nil {
		e.t.Fatal(err)
	}
}

// A finished saga leaves memory: its snapshot becomes a closed marker in
// the state topic and the local store. After a restart on a fresh machine
// (an empty store), what comes for it (a late reply, a duplicate start) is
// journaled as ignored, not dead-lettered and not run again.
func TestClosedSagasLeaveMemoryAndIgnoreLateEventsAfterRecovery(t *testing.T) {
	e := newEnv(t, 2)
	inventory := e.participant("inventory.commands", map[string]func(string) *saga.EventDef[msg]{reserveInventory.Type: always(inventoryReserved)})
	e.participant("payment.commands", map[string]func(string) *saga.EventDef[msg]{chargePayment.Type: always(paymentCharged)})
	e.participant("shipping.commands", map[string]func(string) *saga.EventDef[msg]{scheduleShipment.Type: always(shipmentScheduled)})
	done := newFinished()
	rt, stop := e.startRuntime(saga.WithHooks(done))
	e.start("o-1")
	done.wait(t, 1)

	if got := rt.List(saga.StateCompleted); len(got) != 0 {
		t.Fatalf("List(Completed) = %v: a closed saga stayed in memory", got)
	}
	st, ok, err := rt.Status(context.Background(), "o-1")
	if err != nil || !ok || !st.Closed || st.State != saga.StateCompleted {
		t.Fatalf("Status(o-1) = %+v, %v, %v; want a closed Completed saga from the store", st, ok, err)
	}
	recs := e.stateRecords()["o-1"]
	if len(recs) == 0 {
		t.Fatal("no snapshot of o-1 in the state topic")
	}
	last := recs[len(recs)-1]
	if kind := testkit.Header(last, saga.HeaderSnapshotKind); kind != "closed" {
		t.Fatalf("o-1's last snapshot is %q, want closed", kind)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	dead := make(chan struct{}, 10)
	from := &restores{}
	e.startRuntime(saga.WithHooks(from, deadHook(func() { dead <- struct{}{} })))
	before := len(e.journalOf("o-1"))
	e.sendLate("o-1", "late-1")
	e.start("o-1") // a second start event, with a new ce_id
	var added []saga.JournalEntry
	waitFor(t, "the late reply and the duplicate start in the journal", func() bool {
		added = e.journalOf("o-1")[before:]
		return len(added) >= 2
	})
	if len(added) != 2 || added[0].Outcome != saga.OutcomeIgnored || added[1].Outcome != saga.OutcomeIgnored {
		t.Fatalf("journal of o-1 grew by %+v, want the late reply and the second start, both ignored", added)
	}
	select {
	case <-dead:
		t.Fatal("an event for a closed saga was dead-lettered")
	default:
	}
	if n := inventory.count(reserveInventory.Type + " o-1"); n != 1 {
		t.Fatalf("inventory reserved o-1 %d times: the second start ran the saga again", n)
	}
	if got, _ := from.get(); len(got) != 2 || got[0] != saga.RestoredFromState || got[1] != saga.RestoredFromState {
		t.Fatalf("restored from %v, want the state topic for both partitions", got)
	}
}

// After ClosedRetention a closed marker is tombstoned in the state topic and
// leaves the store; the ID may then start a new saga.
func TestClosedMarkersAreTombstonedAfterTheRetention(t *testing.T) {
	e := newEnv(t, 1)
	inventory := e.participant("inventory.commands", map[string]func(string) *saga.EventDef[msg]{reserveInventory.Type: always(inventoryReserved)})
	e.participant("payment.commands", map[string]func(string) *saga.EventDef[msg]{chargePayment.Type: always(paymentCharged)})
	e.participant("shipping.commands", map[string]func(string) *saga.EventDef[msg]{scheduleShipment.Type: always(shipmentScheduled)})
	done := newFinished()
	clock := &testClock{}
	rt, _ := e.startRuntime(saga.WithHooks(done), saga.WithClock(clock), saga.WithClosedRetention(time.Hour))
	e.start("o-1", "o-2")
	done.wait(t, 2)
	clock.Advance(30 * time.Minute)
	e.start("o-3") // closes within the retention of the others' but after them
	done.wait(t, 3)

	clock.Advance(31 * time.Minute) // o-1 and o-2 are past the retention, o-3 is not
	waitFor(t, "tombstones of o-1 and o-2", func() bool {
		recs := e.stateRecords()
		return recs["o-1"][len(recs["o-1"])-1].Value == nil && recs["o-2"][len(recs["o-2"])-1].Value == nil
	})
	if recs := e.stateRecords()["o-3"]; recs[len(recs)-1].Value == nil {
		t.Fatal("o-3 was tombstoned within its retention")
	}
	waitFor(t, "o-1 to leave the store", func() bool {
		_, ok, err := rt.Status(context.Background(), "o-1")
		return err == nil && !ok
	})
	if _, ok, err := rt.Status(context.Background(), "o-3"); err != nil || !ok {
		t.Fatalf("Status(o-3) = %v, %v; want its closed marker", ok, err)
	}

	// The ID is free again: a new start runs a new saga (from New).
	e.start("o-1")
	waitFor(t, "o-1 to start again", func() bool {
		starts := 0
		for _, je := range e.journalOf("o-1") {
			if je.FromState == string(saga.StateNew) && je.Outcome == saga.OutcomeApplied {
				starts++
			}
		}
		return starts == 2
	})
	if n := inventory.count(reserveInventory.Type + " o-1"); n != 1 {
		// Its commands carry the first run's IDs, so an idempotent
		// participant drops them: the README's ID-reuse rule.
		t.Fatalf("inventory applied o-1's reservation %d times", n)
	}
}

// A partition whose state topic is empty (a deployment from before the
// state topic) is rebuilt once from the journal, its snapshots written;
// the next takeover restores from the state topic, and the sagas in flight
// go on from there.
func TestMigrationFromAJournalOnlyDeployment(t *testing.T) {
	e := newEnv(t, 2)
	payment, orders := e.heldAtShipping()
	// The journal-only topic set: an empty state topic.
	adm := kadm.NewClient(e.client())
	ctx := context.Background()
	if _, err := adm.DeleteTopics(ctx, e.saga.StateTopic()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the state topic recreated", func() bool {
		return saga.EnsureTopic(ctx, adm, e.saga.StateTopic(), 2, 1, saga.StateTopicConfig()) == nil &&
			len(e.stateRecords()) == 0
	})

	migrated := &restores{}
	stop := e.runtime(migrated)
	waitFor(t, "snapshots of every saga", func() bool { return len(e.stateRecords()) == len(orders) })
	if got, live := migrated.get(); len(got) != 2 || got[0] != saga.RestoredFromJournal || got[1] != saga.RestoredFromJournal || live != len(orders) {
		t.Fatalf("restored from %v with %d live sagas, want the journal for both partitions and %d live", got, live, len(orders))
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	second := newFinished()
	again := &restores{}
	e.runtime(second, again)
	e.participant("shipping.commands", map[string]func(string) *saga.EventDef[msg]{scheduleShipment.Type: always(shipmentScheduled)})
	outcomes := second.wait(t, len(orders))
	for _, o := range orders {
		if outcomes[o] != saga.StateCompleted {
			t.Fatalf("saga %s ended %s, want Completed", o, outcomes[o])
		}
		if n := payment.count(chargePayment.Type + " " + o); n != 1 {
			t.Fatalf("order %s charged %d times, want once", o, n)
		}
	}
	if got, live := again.get(); len(got) != 2 || got[0] != saga.RestoredFromState || got[1] != saga.RestoredFromState || live != len(orders) {
		t.Fatalf("second takeover restored from %v with %d live, want the state topic and %d live", got, live, len(orders))
	}
	checkJournal(t, e.journal())
}

// A snapshot that cannot be decoded stops the runtime with an error that
// names the saga, the record and the fix; the fix (RebuildState) rebuilds
// the partition from the journal.
func TestUndecodableSnapshotNamesTheKeyAndTheFix(t *testing.T) {
	e := newEnv(t, 1)
	e.participant("inventory.commands", map[string]func(string) *saga.EventDef[msg]{reserveInventory.Type: always(inventoryReserved)})
	done := newFinished()
	stop := e.runtime(done)
	e.start("o-1") // waits at payment: no participant
	waitFor(t, "o-1 at payment", func() bool { return len(e.journalOf("o-1")) == 2 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	garbage := &kgo.Record{Topic: e.saga.StateTopic(), Key: []byte("o-1"), Value: []byte{0, 0, 0, 0, 99, 1, 2},
		Headers: []kgo.RecordHeader{{Key: saga.HeaderSnapshotKind, Value: []byte("open")}}}
	if err := e.client().ProduceSync(context.Background(), garbage).FirstErr(); err != nil {
		t.Fatal(err)
	}

	r, err := saga.NewRuntime(e.saga, saga.WithClientOptions(kgo.SeedBrokers(e.stack.KafkaAddrs()...)), saga.WithRegistry(e.serde))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = r.Run(ctx)
	r.Close()
	if !errors.Is(err, saga.ErrSnapshot) {
		t.Fatalf("Run: %v, want ErrSnapshot", err)
	}
	for _, want := range []string{`"o-1"`, "orders.state/0", "RebuildState", "orders.journal"} {
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("Run: %v, want it to name %s", err, want)
		}
	}

	rebuilt := &restores{}
	rt, _ := e.startRuntime(saga.WithRebuildState(true), saga.WithHooks(rebuilt))
	waitFor(t, "the rebuilt partition ready", rt.Ready)
	if got, live := rebuilt.get(); len(got) != 1 || got[0] != saga.RestoredFromJournal || live != 1 {
		t.Fatalf("restored from %v with %d live, want the journal and o-1 live", got, live)
	}
	if st, ok, err := rt.Status(context.Background(), "o-1"); err != nil || !ok || st.Instance.Data.OrderID != "o-1" {
		t.Fatalf("Status(o-1) = %+v, %v, %v; want it rebuilt with its data", st, ok, err)
	}
}

// A saga waiting on a timer when its owner stops keeps it: the new owner
// (an empty local store) restores the deadline from the snapshot and the
// timeout fires there, resending the command.
func TestPendingTimersSurviveARestoreFromSnapshots(t *testing.T) {
	e := newEnv(t, 1)
	e.participant("inventory.commands", map[string]func(string) *saga.EventDef[msg]{reserveInventory.Type: always(inventoryReserved)})
	var mu sync.Mutex
	charges := 0
	payment := e.participant("payment.commands", map[string]func(string) *saga.EventDef[msg]{
		chargePayment.Type: func(string) *saga.EventDef[msg] {
			mu.Lock()
			defer mu.Unlock()
			if charges++; charges == 1 {
				return nil // slower than the timeout
			}
			return &paymentCharged
		},
	})
	e.participant("shipping.commands", map[string]func(string) *saga.EventDef[msg]{scheduleShipment.Type: always(shipmentScheduled)})
	clock := &testClock{}
	_, stop := e.startRuntime(saga.WithClock(clock))
	e.start("o-1")
	waitFor(t, "the first charge", func() bool { return payment.count(chargePayment.Type+" o-1") == 1 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	done := newFinished()
	from := &restores{}
	rt, _ := e.startRuntime(saga.WithClock(clock), saga.WithHooks(done, from))
	waitFor(t, "the restore", rt.Ready)
	st, ok, err := rt.Status(context.Background(), "o-1")
	if err != nil || !ok || st.State != "payment.Pending" {
		t.Fatalf("Status(o-1) = %+v, %v, %v; want payment.Pending", st, ok, err)
	}
	// One step of time makes the restored timer due (its deadline is
	// relative to the clock, so a waiter armed late fires at once); then
	// the resend is answered in real time, long before its own timeout.
	clock.Advance(11 * time.Second) // payment's timeout is 10s
	waitFor(t, "the resend", func() bool {
		st, ok, _ := rt.Status(context.Background(), "o-1")
		return ok && (st.State != "payment.Pending" || st.Instance.Attempt >= 2)
	})
	if got := done.wait(t, 1)["o-1"]; got != saga.StateCompleted {
		t.Fatalf("o-1 ended %s, want Completed", got)
	}
	if n := payment.count(chargePayment.Type + " o-1"); n != 2 {
		t.Fatalf("payment charged o-1 %d times, want the first send and the resend after the restore", n)
	}
	if got, _ := from.get(); len(got) != 1 || got[0] != saga.RestoredFromState {
		t.Fatalf("restored from %v, want the state topic", got)
	}
}

// A partition whose restore waits (here on a transaction a previous owner
// left open on its state partition) does not hold up the others: they are
// processed meanwhile, and it joins them once the transaction ends.
func TestARestoreDoesNotHoldUpTheOtherPartitions(t *testing.T) {
	e := newEnv(t, 2)
	inventory := e.participant("inventory.commands", map[string]func(string) *saga.EventDef[msg]{reserveInventory.Type: always(inventoryReserved)})
	ctx := context.Background()
	// An order ID for each inbox partition, as the default partitioner
	// places it.
	on := map[int32]string{}
	for i := 0; len(on) < 2; i++ {
		id := fmt.Sprintf("o-%d", i)
		p := int32(kgo.StickyKeyPartitioner(nil).ForTopic(e.saga.InboxTopic()).Partition(&kgo.Record{Key: []byte(id)}, 2))
		if _, ok := on[p]; !ok {
			on[p] = id
		}
	}
	stuck := e.client(kgo.TransactionalID("previous-owner"), kgo.TransactionTimeout(time.Minute),
		kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err := stuck.BeginTransaction(); err != nil {
		t.Fatal(err)
	}
	open := &kgo.Record{Topic: e.saga.StateTopic(), Partition: 1, Key: []byte("in-doubt"), Value: []byte("never committed")}
	if err := stuck.ProduceSync(ctx, open).FirstErr(); err != nil {
		t.Fatal(err)
	}

	rt, _ := e.startRuntime()
	e.start(on[0])
	waitFor(t, "partition 0's saga at inventory", func() bool { return inventory.count(reserveInventory.Type+" "+on[0]) == 1 })
	if rt.Ready() {
		t.Fatal("ready while partition 1 still waits for the open transaction")
	}
	if err := stuck.EndTransaction(ctx, kgo.TryAbort); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "partition 1 restored", rt.Ready)
	e.start(on[1])
	waitFor(t, "partition 1's saga at inventory", func() bool { return inventory.count(reserveInventory.Type+" "+on[1]) == 1 })
}

// A cancel from outside compensates a saga that waits on a silent step,
// that step first; a cancel for an unknown saga is dead-lettered; a cancel
// for a finished one is journaled as ignored.
func TestCancelRecordCompensatesAWaitingSaga(t *testing.T) {
	e := newEnv(t, 1)
	inventory := e.participant("inventory.commands", map[string]func(string) *saga.EventDef[msg]{
		reserveInventory.Type: always(inventoryReserved), releaseInventory.Type: always(inventoryReleased)})
	silent := func(string) *saga.EventDef[msg] { return nil }
	payment := e.participant("payment.commands", map[string]func(string) *saga.EventDef[msg]{
		chargePayment.Type: silent, refundPayment.Type: always(paymentRefunded)})
	done := newFinished()
	dead := make(chan struct{}, 10)
	e.runtime(done, deadHook(func() { dead <- struct{}{} }))
	e.start("o-1")
	waitFor(t, "the charge", func() bool { return payment.count(chargePayment.Type+" o-1") == 1 })
	ctx := context.Background()
	if err := e.client().ProduceSync(ctx, saga.CancelRecord("orders", "o-1", "test")).FirstErr(); err != nil {
		t.Fatal(err)
	}
	if got := done.wait(t, 1)["o-1"]; got != saga.StateCompensated {
		t.Fatalf("o-1 ended %s, want Compensated", got)
	}
	if payment.count(refundPayment.Type+" o-1") != 1 || inventory.count(releaseInventory.Type+" o-1") != 1 {
		t.Fatalf("refunds %d, releases %d: want one each", payment.count(refundPayment.Type+" o-1"), inventory.count(releaseInventory.Type+" o-1"))
	}
	before := len(e.journalOf("o-1"))
	if err := e.client().ProduceSync(ctx, saga.CancelRecord("orders", "o-1", "test"), saga.CancelRecord("orders", "nobody", "test")).FirstErr(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-dead:
	case <-time.After(20 * time.Second):
		t.Fatal("the cancel of an unknown saga was not dead-lettered")
	}
	waitFor(t, "the second cancel journaled", func() bool { return len(e.journalOf("o-1")) > before })
	if late := e.journalOf("o-1")[before]; late.EventType != string(saga.CancelEventType) || late.Outcome != saga.OutcomeIgnored {
		t.Fatalf("journaled %+v, want the cancel ignored", late)
	}
	checkJournal(t, e.journal())
}

// twoStepOrders is version 2 of the orders saga: inventory and payment,
// no shipping.
func twoStepOrders(t *testing.T) *saga.Saga[orderData] {
	t.Helper()
	b := saga.New[orderData]("orders", orderDataSchema).Version(2).
		StartOn(saga.Reply(orderPlaced, func(d *orderData, e msg) { d.OrderID = e.OrderID; d.Amount = 200 }))
	inv := b.Step("inventory").
		Command("inventory.commands", saga.Cmd(reserveInventory, command(msg{Detail: "reserve"}))).
		OnSuccess(saga.Reply(inventoryReserved, func(d *orderData, _ msg) { d.Reserved = true }))
	saga.Compensate(inv, saga.Cmd(releaseInventory, command(msg{Detail: "release"})), inventoryReleased)
	b.Step("payment").
		Command("payment.commands", saga.Cmd(chargePayment, command(msg{Detail: "charge"}))).
		OnSuccess(saga.Reply(paymentCharged, func(d *orderData, e msg) { d.PaymentID = e.Detail }))
	s, err := b.Build()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// A saga runs to its end on the version it started on: with version 1
// in flight, a runtime of version 2 alone refuses to start and says what
// is in flight; with both registered, the old saga finishes on version 1
// (its shipping step) while a new one runs on version 2 (no shipping).
func TestVersionsInFlightFinishOnTheirOwn(t *testing.T) {
	e := newEnv(t, 1)
	var shipAnswers atomic.Bool
	e.participant("inventory.commands", map[string]func(string) *saga.EventDef[msg]{reserveInventory.Type: always(inventoryReserved)})
	e.participant("payment.commands", map[string]func(string) *saga.EventDef[msg]{chargePayment.Type: always(paymentCharged)})
	shipping := e.participant("shipping.commands", map[string]func(string) *saga.EventDef[msg]{scheduleShipment.Type: func(string) *saga.EventDef[msg] {
		if shipAnswers.Load() {
			return &shipmentScheduled
		}
		return nil
	}})
	v1 := e.saga // ordersSaga: version 1
	if v1.Version() != 1 {
		t.Fatalf("default version %d, want 1", v1.Version())
	}
	_, stop := e.startVersions(v1, nil)
	e.start("old")
	waitFor(t, "the old saga to wait at shipping", func() bool { return shipping.count("test.ScheduleShipment old") > 0 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	v2 := twoStepOrders(t)
	alone, err := saga.NewRuntime(v2, saga.WithClientOptions(kgo.SeedBrokers(e.stack.KafkaAddrs()...)), saga.WithRegistry(e.serde))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	err = alone.Run(ctx)
	cancel()
	alone.Close()
	if !errors.Is(err, saga.ErrVersion) || !strings.Contains(err.Error(), "1 on version 1") || !strings.Contains(err.Error(), "registered: [2]") {
		t.Fatalf("version 2 alone: Run = %v, want ErrVersion listing 1 saga on version 1", err)
	}

	shipAnswers.Store(true)
	done := newFinished()
	clock := &testClock{}
	e.startVersions(v2, []*saga.Saga[orderData]{v1}, saga.WithHooks(done), saga.WithClock(clock))
	e.start("new")
	if got := done.wait(t, 1); got["new"] != saga.StateCompleted {
		t.Fatalf("outcomes %v, want new Completed first", got)
	}
	clock.Advance(31 * time.Second) // the old saga's shipping timer resends; shipping answers now
	got := done.wait(t, 2)
	if got["old"] != saga.StateCompleted || got["new"] != saga.StateCompleted {
		t.Fatalf("outcomes %v, want both Completed", got)
	}
	if n := shipping.count("test.ScheduleShipment new"); n != 0 {
		t.Fatalf("the new saga sent %d shipping commands: it ran on version 1", n)
	}
	for _, je := range e.journal() {
		if want := map[string]int32{"old": 1, "new": 2}[je.SagaID]; je.Version != want {
			t.Fatalf("%s's %s journaled on version %d, want %d", je.SagaID, je.EventType, je.Version, want)
		}
	}
	if _, err := saga.NewRuntime(v1, saga.WithClientOptions(kgo.SeedBrokers(e.stack.KafkaAddrs()...)), saga.WithRegistry(e.serde), saga.WithOlderVersions(v2)); err == nil ||
		!strings.Contains(err.Error(), "not older than 1") {
		t.Fatalf("NewRuntime(v1, v2): %v, want the order refused", err)
	}
}

// Parallel branches end to end: both commands go out at once, the saga
// joins them and ships; with a declined payment both are compensated.
func TestParallelStepsEndToEnd(t *testing.T) {
	e := newEnv(t, 1)
	inventory := e.participant("inventory.commands", map[string]func(string) *saga.EventDef[msg]{
		reserveInventory.Type: always(inventoryReserved), releaseInventory.Type: always(inventoryReleased)})
	payment := e.participant("payment.commands", map[string]func(string) *saga.EventDef[msg]{
		chargePayment.Type: func(order string) *saga.EventDef[msg] {
			if order == "declined" {
				return &paymentDeclined
			}
			return &paymentCharged
		},
		refundPayment.Type: always(paymentRefunded)})
	e.participant("shipping.commands", map[string]func(string) *saga.EventDef[msg]{scheduleShipment.Type: always(shipmentScheduled)})
	done := newFinished()
	e.startVersions(parallelSaga(t), nil, saga.WithHooks(done))
	e.start("ok", "declined")
	got := done.wait(t, 2)
	if got["ok"] != saga.StateCompleted || got["declined"] != saga.StateCompensated {
		t.Fatalf("outcomes %v", got)
	}
	if payment.count("test.RefundPayment declined") != 1 || inventory.count("test.ReleaseInventory declined") != 1 ||
		payment.count("test.RefundPayment ok") != 0 || inventory.count("test.ReleaseInventory ok") != 0 {
		t.Fatal("want the declined order's branches compensated once each, the other's not at all")
	}
	sawGroup := false
	for _, je := range e.journal() {
		sawGroup = sawGroup || je.ToState == string(saga.PendingState("inventory+payment"))
	}
	if !sawGroup {
		t.Fatal("no journal entry in the group's state")
	}
	checkJournal(t, e.journal())
}

// librdkafkaPartitioner places keyed records as librdkafka's default
// (consistent_random) does: CRC32 of the key modulo the partitions, not
// the Java client's murmur2.
func librdkafkaPartitioner() kgo.Partitioner {
	return kgo.BasicConsistentPartitioner(func(string) func(*kgo.Record, int) int {
		return func(r *kgo.Record, n int) int { return int(crc32.ChecksumIEEE(r.Key) % uint32(n)) }
	})
}

// Participants whose client hashes keys differently (librdkafka's CRC32)
// reply to partitions that do not hold their sagas, and starts come in on
// any partition: each is forwarded, in the transaction, to the saga's home
// partition, and every saga completes, none dead-lettered, nothing applied
// twice.
func TestRepliesOnAnyPartitionAreForwarded(t *testing.T) {
	e := newEnv(t, 4)
	crc := kgo.RecordPartitioner(librdkafkaPartitioner())
	inventory := e.participant("inventory.commands", map[string]func(string) *saga.EventDef[msg]{reserveInventory.Type: always(inventoryReserved)}, crc)
	payment := e.participant("payment.commands", map[string]func(string) *saga.EventDef[msg]{chargePayment.Type: always(paymentCharged)}, crc)
	shipping := e.participant("shipping.commands", map[string]func(string) *saga.EventDef[msg]{scheduleShipment.Type: always(shipmentScheduled)}, crc)
	done := newFinished()
	dead := 0
	var deadMu sync.Mutex
	e.runtime(done, deadHook(func() { deadMu.Lock(); dead++; deadMu.Unlock() }))
	var orders []string
	for i := range 30 {
		orders = append(orders, fmt.Sprintf("trip-%02d", i))
	}
	ctx := context.Background()
	c := e.codec(orderPlaced)
	var recs []*kgo.Record
	moved := 0
	for _, o := range orders {
		v, err := c.Encode(ctx, e.saga.InboxTopic(), &msg{OrderID: o})
		if err != nil {
			t.Fatal(err)
		}
		env := schema.NewEnvelope(orderPlaced.Type, "test", time.Now())
		env.SagaID, env.CorrelationID = o, o
		recs = append(recs, &kgo.Record{Topic: e.saga.InboxTopic(), Key: []byte(o), Value: v, Headers: env.Apply(nil)})
		if crc32.ChecksumIEEE([]byte(o))%4 != uint32(kgo.StickyKeyPartitioner(nil).ForTopic("x").Partition(&kgo.Record{Key: []byte(o)}, 4)) {
			moved++
		}
	}
	if moved < 10 {
		t.Fatalf("only %d of 30 keys land elsewhere under CRC32: the test would prove little", moved)
	}
	// Half the starts from the Java-compatible partitioner (as the API's),
	// half from a CRC32 one.
	if err := e.client().ProduceSync(ctx, recs[:15]...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	if err := e.client(crc).ProduceSync(ctx, recs[15:]...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	got := done.wait(t, len(orders))
	for _, o := range orders {
		if got[o] != saga.StateCompleted {
			t.Fatalf("%s ended %s, want Completed", o, got[o])
		}
		for _, p := range []*participant{inventory, payment, shipping} {
			for k, n := range p.applied {
				if n > 1 {
					t.Fatalf("%s applied %d times", k, n)
				}
			}
		}
	}
	deadMu.Lock()
	defer deadMu.Unlock()
	if dead != 0 {
		t.Fatalf("%d records dead-lettered, want none", dead)
	}
	checkJournal(t, e.journal())
}

// A registry that cannot be reached is no poison: the start event whose
// writer schema the runtime has not seen waits (its batch aborts and
// comes again with a backoff) and goes through once the registry is back;
// nothing is dead-lettered.
// flakyRegistry is a registry client through a proxy that answers 503
// while down is set, counting the requests it refuses.
func flakyRegistry(t *testing.T, registryURL string) (serde *schema.Serde, down *atomic.Bool, refused *atomic.Int64) {
	t.Helper()
	f := testkit.NewFlakyRegistry(t, registryURL)
	serde, err := schema.NewSerde(f.URL, schema.WithSubjectNameStrategy(schema.RecordNameStrategy))
	if err != nil {
		t.Fatal(err)
	}
	return serde, &f.Down, &f.Refused
}

// TestRuntimeStartsOnceTheRegistryAnswers: a runtime started while the
// registry is down waits for it, unready, and runs sagas once it answers.
func TestRuntimeStartsOnceTheRegistryAnswers(t *testing.T) {
	e := newEnv(t, 1)
	e.participant("inventory.commands", map[string]func(string) *saga.EventDef[msg]{reserveInventory.Type: always(inventoryReserved)})
	e.participant("payment.commands", map[string]func(string) *saga.EventDef[msg]{chargePayment.Type: always(paymentCharged)})
	e.participant("shipping.commands", map[string]func(string) *saga.EventDef[msg]{scheduleShipment.Type: always(shipmentScheduled)})
	serde, down, refused := flakyRegistry(t, e.stack.RegistryURL())
	down.Store(true)
	done := newFinished()
	r, stop := e.startVersions(e.saga, nil, saga.WithRegistry(serde), saga.WithHooks(done))
	waitFor(t, "the runtime to ask the registry twice", func() bool { return refused.Load() >= 2 })
	if r.Ready() {
		t.Fatal("ready while the registry is down")
	}
	down.Store(false)
	e.start("o-1")
	if got := done.wait(t, 1)["o-1"]; got != saga.StateCompleted {
		t.Fatalf("o-1 ended %s, want Completed", got)
	}
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
}

func TestRegistryOutageIsNotPoison(t *testing.T) {
	e := newEnv(t, 1)
	e.participant("inventory.commands", map[string]func(string) *saga.EventDef[msg]{reserveInventory.Type: always(inventoryReserved)})
	e.participant("payment.commands", map[string]func(string) *saga.EventDef[msg]{chargePayment.Type: always(paymentCharged)})
	e.participant("shipping.commands", map[string]func(string) *saga.EventDef[msg]{scheduleShipment.Type: always(shipmentScheduled)})
	serde, down, refused := flakyRegistry(t, e.stack.RegistryURL())
	done := newFinished()
	var dead atomic.Int64
	r, _ := e.startVersions(e.saga, nil, saga.WithRegistry(serde), saga.WithHooks(done, deadHook(func() { dead.Add(1) })))
	waitFor(t, "the runtime to be ready", r.Ready)
	// The start comes with a newer writer schema: the runtime must fetch it.
	type placedV2 struct {
		OrderID string `avro:"order_id"`
		Detail  string `avro:"detail"`
		Channel string `avro:"channel"`
	}
	codec, err := schema.NewCodec[placedV2](e.serde, `{"type":"record","name":"OrderPlaced","namespace":"test","fields":[
 {"name":"order_id","type":"string"},{"name":"detail","type":"string","default":""},{"name":"channel","type":"string","default":""}]}`)
	if err != nil {
		t.Fatal(err)
	}
	value, err := codec.Encode(context.Background(), e.saga.InboxTopic(), &placedV2{OrderID: "o-1", Channel: "web"})
	if err != nil {
		t.Fatal(err)
	}
	down.Store(true)
	env := schema.NewEnvelope(orderPlaced.Type, "test", time.Now())
	env.SagaID, env.CorrelationID = "o-1", "o-1"
	if err := e.client().ProduceSync(context.Background(), &kgo.Record{Topic: e.saga.InboxTopic(), Key: []byte("o-1"), Value: value, Headers: env.Apply(nil)}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the runtime to ask the registry", func() bool { return refused.Load() >= 2 })
	down.Store(false)
	if got := done.wait(t, 1)["o-1"]; got != saga.StateCompleted {
		t.Fatalf("o-1 ended %s, want Completed", got)
	}
	if n := dead.Load(); n != 0 {
		t.Fatalf("%d records dead-lettered during the outage, want none", n)
	}
}
