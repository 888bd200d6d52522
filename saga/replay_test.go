package saga_test

import (
	"context"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/devstack"
	"github.com/sagapipe/sagapipe/kread"
	"github.com/sagapipe/sagapipe/saga"
	"github.com/sagapipe/sagapipe/schema"
	"github.com/sagapipe/sagapipe/statemachine"
)

// -update records the journals under testdata/journals anew, from a run of
// the orders saga on the embedded stack (the registry's own journal
// included, so that the records' schema IDs resolve).
var update = flag.Bool("update", false, "record testdata/journals anew from a live run")

// recorded is one saga's journal as the journal topic held it.
type recorded struct {
	Records [][]byte `json:"records"` // the records' values: Avro in the Confluent wire format
}

type replayWant struct {
	state     statemachine.State
	data      orderData
	completed []string
	attempt   int
}

// The states the recorded journals lead to, as the sagas ran: the oracle
// the production fold is checked against.
var replayWants = map[string]replayWant{
	"completed": {state: saga.StateCompleted, completed: []string{"inventory", "payment", "shipping"}, attempt: 1,
		data: orderData{OrderID: "completed", Amount: 100, Reserved: true, PaymentID: "by payment.commands"}},
	"declined": {state: saga.StateCompensated, completed: []string{"inventory"}, attempt: 1,
		data: orderData{OrderID: "declined", Amount: 100, Reserved: true, Reason: "by payment.commands"}},
	"payment_timeout": {state: saga.StateCompleted, completed: []string{"inventory", "payment", "shipping"}, attempt: 1,
		data: orderData{OrderID: "payment_timeout", Amount: 100, Reserved: true, PaymentID: "by payment.commands"}},
	"compensation_failed": {state: saga.StateCompensationFailed, completed: []string{"inventory"}, attempt: 4,
		data: orderData{OrderID: "compensation_failed", Amount: 100, Reserved: true, Reason: "by payment.commands"}},
}

// Recorded journals (real Avro records, with the registry that wrote them)
// fold, through the runtime's own fold, into the state the live run
// reached. A change to the definition that would fold old journals
// differently fails here.
func TestRecordedJournalsReplayToTheLiveState(t *testing.T) {
	dir := filepath.Join("testdata", "journals")
	if *update {
		recordJournals(t, dir)
	}
	data := t.TempDir()
	registryLog, err := os.ReadFile(filepath.Join(dir, "registry.journal"))
	if err != nil {
		t.Fatalf("%v (record the journals with: go test ./saga -run TestRecordedJournals -update)", err)
	}
	if err := os.MkdirAll(filepath.Join(data, "registry"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(data, "registry", "registry.journal"), registryLog, 0o644); err != nil {
		t.Fatal(err)
	}
	e := newEnvWith(t, 1, devstack.Config{DataDir: data})
	s, serde := e.saga, e.serde
	for name, want := range replayWants {
		t.Run(name, func(t *testing.T) {
			raw, err := os.ReadFile(filepath.Join(dir, name+".json"))
			if err != nil {
				t.Fatal(err)
			}
			var j recorded
			if err := json.Unmarshal(raw, &j); err != nil {
				t.Fatal(err)
			}
			// Twice: a replay depends on nothing but the journal.
			for range 2 {
				got, err := s.Replay(context.Background(), serde, j.Records)
				if err != nil {
					t.Fatal(err)
				}
				if got.State != want.state || got.Instance.Data != want.data || !slices.Equal(got.Instance.Completed, want.completed) || got.Instance.Attempt != want.attempt {
					t.Fatalf("replayed %s %+v; want %s %+v completed %v attempt %d",
						got.State, got.Instance, want.state, want.data, want.completed, want.attempt)
				}
			}
		})
	}
}

// A journal whose entry the definition now refuses is reported, not folded.
func TestReplayReportsAJournalTheDefinitionNoLongerFolds(t *testing.T) {
	e := newEnv(t, 1)
	ctx := context.Background()
	c, err := schema.NewCodec[saga.JournalEntry](e.serde, saga.JournalEntrySchema)
	if err != nil {
		t.Fatal(err)
	}
	entry := saga.JournalEntry{SagaID: "x", EventType: "payment/test.PaymentCharged", CEID: "e1", CEType: "test.PaymentCharged",
		Time: time.Now(), Outcome: saga.OutcomeApplied, TimerStep: "payment", TimerAttempt: 1}
	v, err := c.Encode(ctx, e.saga.JournalTopic(), &entry)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.saga.Replay(ctx, e.serde, [][]byte{v}); err == nil {
		t.Fatal("Replay folded an entry that was applied but no transition accepts now")
	}
}

// recordJournals runs four orders on a stack whose registry keeps its
// journal, then writes each saga's journal records and the registry's
// journal under dir.
func recordJournals(t *testing.T, dir string) {
	data := t.TempDir()
	e := newEnvWith(t, 1, devstack.Config{DataDir: data})
	var mu sync.Mutex
	charges := map[string]int{}
	e.participant("inventory.commands", map[string]func(string) *saga.EventDef[msg]{
		reserveInventory.Type: always(inventoryReserved),
		releaseInventory.Type: func(order string) *saga.EventDef[msg] {
			if order == "compensation_failed" {
				return nil // the release is never confirmed
			}
			return &inventoryReleased
		},
	})
	e.participant("payment.commands", map[string]func(string) *saga.EventDef[msg]{
		chargePayment.Type: func(order string) *saga.EventDef[msg] {
			mu.Lock()
			defer mu.Unlock()
			charges[order]++
			switch {
			case order == "declined" || order == "compensation_failed":
				return &paymentDeclined
			case order == "payment_timeout" && charges[order] == 1:
				return nil // slower than the timeout: the resend is answered
			}
			return &paymentCharged
		},
	})
	e.participant("shipping.commands", map[string]func(string) *saga.EventDef[msg]{scheduleShipment.Type: always(shipmentScheduled)})
	done := newFinished()
	clock := &testClock{}
	rt, stop := e.startRuntime(saga.WithHooks(done), saga.WithClock(clock))
	e.start("completed", "declined")
	done.wait(t, 2)
	e.start("payment_timeout", "compensation_failed")
	waitFor(t, "payment_timeout charged once and compensation_failed's release sent", func() bool {
		mu.Lock()
		charged := charges["payment_timeout"] == 1
		mu.Unlock()
		st, ok, _ := rt.Status(context.Background(), "compensation_failed")
		return charged && ok && st.State == "inventory.Compensating"
	})
	// Time moves on until each timeout has fired: a timer armed after an
	// advance needs the next one.
	advanceUntil := func(what string, step time.Duration, cond func() bool) {
		deadline := time.Now().Add(30 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			clock.Advance(step)
			time.Sleep(200 * time.Millisecond)
		}
	}
	finished := func(n int) func() bool {
		return func() bool {
			done.mu.Lock()
			defer done.mu.Unlock()
			return len(done.outcomes) >= n
		}
	}
	advanceUntil("payment_timeout's resend charged", 11*time.Second, finished(3)) // payment's timeout is 10s
	advanceUntil("compensation_failed's release given up", 31*time.Second, finished(4))
	outcomes := done.wait(t, 4)
	for name, want := range replayWants {
		if outcomes[name] != want.state {
			t.Fatalf("the live run ended %s in %s, want %s", name, outcomes[name], want.state)
		}
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	byID := map[string]*recorded{}
	err := kread.ToEnd(context.Background(), []kgo.Opt{kgo.SeedBrokers(e.stack.KafkaAddrs()...)}, e.saga.JournalTopic(), nil, func(r *kgo.Record) error {
		if byID[string(r.Key)] == nil {
			byID[string(r.Key)] = &recorded{}
		}
		byID[string(r.Key)].Records = append(byID[string(r.Key)].Records, r.Value)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name := range replayWants {
		raw, err := json.MarshalIndent(byID[name], "", " ")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name+".json"), append(raw, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	registryLog, err := os.ReadFile(filepath.Join(data, "registry", "registry.journal"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "registry.journal"), registryLog, 0o644); err != nil {
		t.Fatal(err)
	}
}
