package saga_test

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sagapipe/sagapipe/internal/testkit"
	"github.com/sagapipe/sagapipe/saga"
	"github.com/sagapipe/sagapipe/statemachine"
)

// testClock is real time plus an offset the test moves forward; waiters
// fire when the moved time reaches them.
type testClock struct {
	mu      sync.Mutex
	offset  time.Duration
	waiters []*waiter
}

type waiter struct {
	at    time.Time
	f     func()
	fired bool
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.offset)
}

func (c *testClock) AfterFunc(d time.Duration, f func()) func() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	w := &waiter{at: time.Now().Add(c.offset + d), f: f}
	if d <= 0 {
		w.fired = true
		go f()
	} else {
		c.waiters = append(c.waiters, w)
	}
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		stopped := !w.fired
		w.fired = true
		return stopped
	}
}

// Advance moves time forward by d and fires the waiters it reaches.
func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.offset += d
	now := time.Now().Add(c.offset)
	for _, w := range c.waiters {
		if !w.fired && !now.Before(w.at) {
			w.fired = true
			go w.f()
		}
	}
}

// pending counts the waiters not fired yet.
func (c *testClock) pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, w := range c.waiters {
		if !w.fired {
			n++
		}
	}
	return n
}

func (e *env) runtimeWithClock(clock *testClock, hooks ...saga.Hook) (stop func() error) {
	_, stop = e.startRuntime(saga.WithHooks(hooks...), saga.WithClock(clock))
	return stop
}

// The last step has no compensation: given up, it could be applied all
// the same (a shipment scheduled late) with nothing to undo it. So it is
// never given up: past its retries it is resent at the longest wait, with
// a warning each time, until its participant answers; nothing is
// compensated.
func TestAStepWithoutCompensationIsResentUntilItAnswers(t *testing.T) {
	e := newEnv(t, 1)
	inventory := e.participant("inventory.commands", map[string]func(string) *saga.EventDef[msg]{
		reserveInventory.Type: always(inventoryReserved), releaseInventory.Type: always(inventoryReleased)})
	payment := e.participant("payment.commands", map[string]func(string) *saga.EventDef[msg]{
		chargePayment.Type: always(paymentCharged), refundPayment.Type: always(paymentRefunded)})
	var answer atomic.Bool
	slow := func(string) *saga.EventDef[msg] { // shipping answers only at last
		if answer.Load() {
			return &shipmentScheduled
		}
		return nil
	}
	shipping := e.participant("shipping.commands", map[string]func(string) *saga.EventDef[msg]{scheduleShipment.Type: slow})
	var logs syncBuffer
	clock := &testClock{}
	done := newFinished()
	e.startRuntime(saga.WithClock(clock), saga.WithHooks(done), saga.WithLogger(slog.New(slog.NewJSONHandler(&logs, nil))))
	e.start("lost")
	// Time moves only once the saga waits at shipping, so that the earlier
	// steps, whose participants are still joining their groups, do not time out.
	for deadline := time.Now().Add(30 * time.Second); shipping.count("test.ScheduleShipment lost") == 0; {
		if time.Now().After(deadline) {
			t.Fatal("shipping never got its command")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// One timeout at a time: each resend must arrive before the next; two
	// past the retries.
	sends := 1 + saga.DefaultRetries + 2
	for n := 1; n < sends; n++ {
		if n == sends-1 {
			answer.Store(true) // the last resend is answered
		}
		clock.Advance(241 * time.Second) // past the longest backed-off wait (8 × 30s)
		for deadline := time.Now().Add(30 * time.Second); shipping.count("test.ScheduleShipment lost") <= n; {
			if time.Now().After(deadline) {
				t.Fatalf("resend %d never arrived", n)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	if got := done.wait(t, 1)["lost"]; got != saga.StateCompleted {
		t.Fatalf("outcome %s, want Completed once shipping answered", got)
	}
	if n := shipping.count("test.ScheduleShipment lost"); n != sends {
		t.Fatalf("shipping got %d commands, want %d", n, sends)
	}
	shipping.mu.Lock()
	keys, ids := fmt.Sprint(shipping.byKey), len(shipping.byID)
	shipping.mu.Unlock()
	if keys != fmt.Sprintf("map[lost/shipping/do:%d]", sends) || ids != sends {
		t.Fatalf("idempotency keys %s over %d command IDs; want one key for all %d sends, each with its own ID", keys, ids, sends)
	}
	if payment.count("test.RefundPayment lost") != 0 || inventory.count("test.ReleaseInventory lost") != 0 {
		t.Fatalf("refunds %d, releases %d: want none", payment.count("test.RefundPayment lost"), inventory.count("test.ReleaseInventory lost"))
	}
	if n := strings.Count(logs.String(), "still unanswered past its retries"); n != 2 {
		t.Fatalf("%d warnings of long retries, want 2 (one per resend past the retries): %s", n, logs.String())
	}
	checkJournal(t, e.journal())
}

func TestTimersSurviveARestart(t *testing.T) {
	e := newEnv(t, 1)
	e.participant("inventory.commands", map[string]func(string) *saga.EventDef[msg]{reserveInventory.Type: always(inventoryReserved)})
	e.participant("payment.commands", map[string]func(string) *saga.EventDef[msg]{chargePayment.Type: always(paymentCharged)})
	var mu sync.Mutex
	sends := 0
	// Shipping ignores the first command and answers the resend.
	shipping := e.participant("shipping.commands", map[string]func(string) *saga.EventDef[msg]{
		scheduleShipment.Type: func(string) *saga.EventDef[msg] {
			mu.Lock()
			defer mu.Unlock()
			sends++
			if sends == 1 {
				return nil
			}
			return &shipmentScheduled
		}})
	clock := &testClock{}
	first := newFinished()
	stop := e.runtimeWithClock(clock, first)
	e.start("slow")
	deadline := time.Now().Add(30 * time.Second)
	for shipping.count("test.ScheduleShipment slow") == 0 {
		if time.Now().After(deadline) {
			t.Fatal("shipping never got its command")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	// The new orchestrator knows the deadline only from the journal.
	second := newFinished()
	e.runtimeWithClock(clock, second)
	// The rebuilt runtime arms the timer from the journal; wait until it
	// has (the clock has a waiter), then move past the deadline once.
	for deadline := time.Now().Add(30 * time.Second); clock.pending() == 0; {
		if time.Now().After(deadline) {
			t.Fatal("the restarted runtime armed no timer")
		}
		time.Sleep(10 * time.Millisecond)
	}
	clock.Advance(31 * time.Second)
	if got := second.wait(t, 1)["slow"]; got != saga.StateCompleted {
		t.Fatalf("outcome %s, want Completed after the rebuilt timer resent the command", got)
	}
	if n := shipping.count("test.ScheduleShipment slow"); n != 2 {
		t.Fatalf("shipping got %d commands, want 2 (the first and the resend after the restart)", n)
	}
}

func TestCompensationFailedIsLoggedAndListed(t *testing.T) {
	e := newEnv(t, 1)
	e.participant("inventory.commands", map[string]func(string) *saga.EventDef[msg]{reserveInventory.Type: always(inventoryReserved)})
	payment := e.participant("payment.commands", map[string]func(string) *saga.EventDef[msg]{
		chargePayment.Type: always(paymentCharged),
		refundPayment.Type: func(string) *saga.EventDef[msg] { return nil }, // refunds are never confirmed
	})
	e.participant("shipping.commands", map[string]func(string) *saga.EventDef[msg]{scheduleShipment.Type: always(shipmentFailed)})
	var logs syncBuffer
	clock := &testClock{}
	done := newFinished()
	r, _ := e.startRuntime(saga.WithClock(clock), saga.WithHooks(done), saga.WithLogger(slog.New(slog.NewJSONHandler(&logs, nil))))
	e.start("stuck")
	// The refund (Retries(1)) is resent once, then given up on.
	for sends := 1; sends <= 2; sends++ {
		for deadline := time.Now().Add(30 * time.Second); payment.count("test.RefundPayment stuck") < sends; {
			if time.Now().After(deadline) {
				t.Fatalf("refund %d never sent", sends)
			}
			time.Sleep(10 * time.Millisecond)
		}
		clock.Advance(81 * time.Second) // past the refund's backed-off wait (8 × 10s)
	}
	if got := done.wait(t, 1)["stuck"]; got != saga.StateCompensationFailed {
		t.Fatalf("outcome %s, want CompensationFailed", got)
	}
	if ids := r.List(saga.StateCompensationFailed); fmt.Sprint(ids) != "[stuck]" {
		t.Fatalf("List(CompensationFailed) = %v, want [stuck]", ids)
	}
	if !strings.Contains(logs.String(), `"level":"ERROR"`) || !strings.Contains(logs.String(), `"saga_id":"stuck"`) {
		t.Fatalf("no error logged for the saga: %s", logs.String())
	}
}

// syncBuffer is written by a command or logger and read by the test at once.
type syncBuffer = testkit.SyncBuffer

// A participant slower than the step's timeout: the charge is resent, then
// given up as uncertain, and the saga refunds it before it releases the
// stock. Without that refund, money charged slowly would be kept.
func TestAnUncertainStepIsCompensatedEndToEnd(t *testing.T) {
	e := newEnv(t, 1)
	inventory := e.participant("inventory.commands", map[string]func(string) *saga.EventDef[msg]{
		reserveInventory.Type: always(inventoryReserved), releaseInventory.Type: always(inventoryReleased)})
	silent := func(string) *saga.EventDef[msg] { return nil } // charges, but answers too late to count
	payment := e.participant("payment.commands", map[string]func(string) *saga.EventDef[msg]{
		chargePayment.Type: silent, refundPayment.Type: always(paymentRefunded)})
	clock := &testClock{}
	done := newFinished()
	rt, _ := e.startRuntime(saga.WithHooks(done), saga.WithClock(clock))
	e.start("slow")
	waitFor(t, "the first charge", func() bool { return payment.count(chargePayment.Type+" slow") == 1 })
	// Time moves in two steps, each once the saga waits on the timer it
	// makes due: the charge is resent, then given up and refunded. The
	// refund is answered in real time, long before its own timeout.
	status := func() saga.Status[orderData] {
		st, _, _ := rt.Status(context.Background(), "slow")
		return st
	}
	clock.Advance(11 * time.Second) // payment's timeout is 10s
	waitFor(t, "the resend", func() bool { return status().Instance.Attempt >= 2 })
	clock.Advance(21 * time.Second) // the resend waits twice as long
	waitFor(t, "the charge given up", func() bool { return status().State != saga.PendingState("payment") })
	if got := done.wait(t, 1)["slow"]; got != saga.StateCompensated {
		t.Fatalf("outcome %s, want Compensated", got)
	}
	if n := payment.count(chargePayment.Type + " slow"); n != 2 {
		t.Fatalf("payment got %d charges, want the first and one resend", n)
	}
	if payment.count(refundPayment.Type+" slow") != 1 || inventory.count(releaseInventory.Type+" slow") != 1 {
		t.Fatalf("refunds %d, releases %d: want the uncertain charge refunded and the stock released, once each",
			payment.count(refundPayment.Type+" slow"), inventory.count(releaseInventory.Type+" slow"))
	}
	var order []string
	for _, je := range e.journalOf("slow") {
		if je.Outcome == saga.OutcomeApplied {
			order = append(order, je.ToState)
		}
	}
	if !slices.Contains(order, "payment.Compensating") || slices.Index(order, "payment.Compensating") > slices.Index(order, "inventory.Compensating") {
		t.Fatalf("states %v: want payment compensated before inventory", order)
	}
	checkJournal(t, e.journal())
}

// every records each OnFinished, a resumed saga's second one included.
type every struct {
	mu       sync.Mutex
	outcomes []string
}

func (e *every) OnFinished(id string, outcome statemachine.State) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.outcomes = append(e.outcomes, id+" "+string(outcome))
}

func (e *every) list() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.outcomes)
}

// An operator resumes a CompensationFailed saga once its participant is
// back: the refund is sent again, then the release, and the saga ends
// Compensated; the journal names who asked.
func TestResumeEndToEnd(t *testing.T) {
	e := newEnv(t, 1)
	var back atomic.Bool
	e.participant("inventory.commands", map[string]func(string) *saga.EventDef[msg]{
		reserveInventory.Type: always(inventoryReserved), releaseInventory.Type: always(inventoryReleased)})
	payment := e.participant("payment.commands", map[string]func(string) *saga.EventDef[msg]{
		chargePayment.Type: always(paymentCharged),
		refundPayment.Type: func(string) *saga.EventDef[msg] { // down until it is back
			if back.Load() {
				return &paymentRefunded
			}
			return nil
		},
	})
	e.participant("shipping.commands", map[string]func(string) *saga.EventDef[msg]{scheduleShipment.Type: always(shipmentFailed)})
	clock := &testClock{}
	hooks := &every{}
	e.startRuntime(saga.WithClock(clock), saga.WithHooks(hooks))
	e.start("stuck")
	for sends := 1; sends <= 2; sends++ {
		for deadline := time.Now().Add(30 * time.Second); payment.count("test.RefundPayment stuck") < sends; {
			if time.Now().After(deadline) {
				t.Fatalf("refund %d never sent", sends)
			}
			time.Sleep(10 * time.Millisecond)
		}
		clock.Advance(81 * time.Second)
	}
	waitFor(t, "the saga to end in CompensationFailed", func() bool { return len(hooks.list()) == 1 })
	back.Store(true)
	if err := e.client().ProduceSync(context.Background(), saga.ResumeRecord("orders", "stuck", "operator:alice")).FirstErr(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the resumed saga to end", func() bool { return len(hooks.list()) == 2 })
	if got := fmt.Sprint(hooks.list()); got != "[stuck CompensationFailed stuck Compensated]" {
		t.Fatalf("outcomes %s, want CompensationFailed, then Compensated", got)
	}
	var resumes []saga.JournalEntry
	for _, je := range e.journal() {
		if je.EventType == string(saga.ResumeEventType) {
			resumes = append(resumes, je)
		}
	}
	if len(resumes) != 1 || resumes[0].RequestedBy != "operator:alice" || resumes[0].ToState != string(saga.CompensatingState("payment")) {
		t.Fatalf("resume entries %+v, want one by operator:alice into payment.Compensating", resumes)
	}
	checkJournal(t, e.journal())
}
