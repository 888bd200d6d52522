package saga_test

import (
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"pgregory.net/rapid"

	"github.com/sagapipe/sagapipe/saga"
	"github.com/sagapipe/sagapipe/statemachine"
)

// propertySaga is ordersSaga, with a deadline when d > 0, inventory and
// payment in parallel when parallel; with pivot, the payment is the pivot
// and a failed shipment goes forward to a courier step.
func propertySaga(t *testing.T, d time.Duration, parallel, pivot bool) *saga.Saga[orderData] {
	t.Helper()
	b := saga.New[orderData]("orders", orderDataSchema).
		StartOn(saga.Reply(orderPlaced, func(o *orderData, e msg) { o.OrderID = e.OrderID })).
		Outcome("orders.outcomes", saga.Cmd(orderConfirmed, command(msg{Detail: "confirmed"})),
			saga.Cmd(orderRejected, command(msg{Detail: "rejected"}))).
		Deadline(d)
	inv := b.Step("inventory").
		Command("inventory.commands", saga.Cmd(reserveInventory, command(msg{}))).
		OnSuccess(saga.Reply[orderData](inventoryReserved, nil)).
		OnFailure(saga.Reply[orderData](inventoryRejected, nil)).
		Timeout(5 * time.Second)
	saga.Compensate(inv, saga.Cmd(releaseInventory, command(msg{})), inventoryReleased).CompensationRetries(2)
	pay := b.Step("payment").
		Command("payment.commands", saga.Cmd(chargePayment, command(msg{}))).
		OnSuccess(saga.Reply[orderData](paymentCharged, nil)).
		OnFailure(saga.Reply[orderData](paymentDeclined, nil)).
		Timeout(10 * time.Second).Retries(1)
	if parallel {
		pay.Parallel()
	}
	if pivot {
		pay.Pivot()
	}
	saga.Compensate(pay, saga.Cmd(refundPayment, command(msg{})), paymentRefunded).CompensationRetries(1)
	ship := b.Step("shipping").
		Command("shipping.commands", saga.Cmd(scheduleShipment, command(msg{}))).
		OnSuccess(saga.Reply[orderData](shipmentScheduled, nil)).
		OnFailure(saga.Reply[orderData](shipmentFailed, nil)).
		Timeout(5 * time.Second)
	if pivot {
		// A failed shipment goes forward to a courier (then done).
		ship.Forward("courier")
		b.Step("courier").
			Command("shipping.commands", saga.Cmd(scheduleShipment, command(msg{}))).
			OnSuccess(saga.Reply[orderData](shipmentScheduled, nil)).
			Timeout(5 * time.Second)
	}
	s, err := b.Build()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

type simCommand struct{ id, step, typ string }

type simReply struct{ id, step, typ string }

type simTimer struct {
	step         string
	attempt      int
	compensation bool
	at           time.Time
}

// world is one saga, its three participants and the messages between
// them. The saga is the compiled state machine, driven as the runtime
// drives it: replies deduplicated by ce_id, one timer that fires only as
// the current one. The participants keep the contract (idempotent by
// order; compensating what was never applied bars it) and count every
// application; nothing caps what they count.
type world struct {
	t     *rapid.T
	s     *saga.Saga[orderData]
	state statemachine.State
	in    saga.Instance[orderData]
	now   time.Time
	timer *simTimer
	seen  map[string]bool

	commands []simCommand
	replies  []simReply
	replyN   int

	declines, shipFails bool
	// pivot: the payment is the pivot, and shipping fails once at most.
	pivot, shipFailed bool
	done              map[string]bool // effects applied: reserve, release, charge, refund, ship
	barred            map[string]bool
	applied           map[string]int // per effect
	byCommand         map[string]int // per command ID
	sequence          []string       // effects in the order applied
	announced         []string
	finished          []statemachine.State
}

func (w *world) apply(on statemachine.EventType, payload any) {
	if _, ok := payload.(saga.TimerFired); ok {
		w.timer = nil // fired, whatever it leads to (as the runtime does)
	}
	res, err := w.s.Machine().Apply(w.state, w.in, statemachine.Event{Type: on, Time: w.now, Payload: payload})
	if errors.Is(err, statemachine.ErrNoTransition) {
		return // journaled as ignored
	}
	if err != nil {
		w.t.Fatalf("%s in %s: %v", on, w.state, err)
	}
	w.state, w.in = res.To, res.Data
	for _, e := range res.Effects {
		switch e.Kind {
		case saga.Send:
			if e.Step == saga.OutcomeStep {
				w.announced = append(w.announced, e.EventType)
				continue
			}
			kind := "do"
			if e.Compensation {
				kind = "undo"
			}
			if e.Resume > 0 {
				kind += fmt.Sprintf("-resume%d", e.Resume)
			}
			w.commands = append(w.commands, simCommand{id: fmt.Sprintf("o-1/%s/%s/%d", e.Step, kind, e.Attempt), step: e.Step, typ: e.EventType})
		case saga.SetTimer:
			w.timer = &simTimer{step: e.Step, attempt: e.Attempt, compensation: e.Compensation, at: w.now.Add(e.After)}
		case saga.Finish:
			w.finished = append(w.finished, e.Outcome)
		}
	}
}

// effect applies name once, by command id, unless it is done.
func (w *world) effect(name, id string) {
	if w.done[name] {
		return
	}
	w.done[name] = true
	w.applied[name]++
	w.byCommand[id]++
	w.sequence = append(w.sequence, name)
}

// undo compensates effect by command id: a no-op that bars effect when it
// was never applied.
func (w *world) undo(effect, name, id string) {
	if !w.done[effect] {
		w.barred[effect] = true
		return
	}
	w.effect(name, id)
}

// handle is a participant handling c; it returns the reply's type.
func (w *world) handle(c simCommand) string {
	switch c.typ {
	case reserveInventory.Type:
		if w.barred["reserve"] {
			return inventoryRejected.Type
		}
		w.effect("reserve", c.id)
		return inventoryReserved.Type
	case releaseInventory.Type:
		w.undo("reserve", "release", c.id)
		return inventoryReleased.Type
	case chargePayment.Type:
		if w.declines || w.barred["charge"] {
			return paymentDeclined.Type
		}
		w.effect("charge", c.id)
		return paymentCharged.Type
	case refundPayment.Type:
		w.undo("charge", "refund", c.id)
		return paymentRefunded.Type
	case scheduleShipment.Type:
		if w.shipFails && !(w.pivot && w.shipFailed) {
			w.shipFailed = true
			return shipmentFailed.Type
		}
		w.effect("ship", c.id)
		return shipmentScheduled.Type
	}
	w.t.Fatalf("unexpected command %s", c.typ)
	return ""
}

func (w *world) deliverCommand(i int, lose bool) {
	c := w.commands[i]
	w.commands = slices.Delete(w.commands, i, i+1)
	typ := w.handle(c)
	if lose {
		return // applied, and the reply lost
	}
	w.replyN++
	w.replies = append(w.replies, simReply{id: fmt.Sprintf("reply-%d", w.replyN), step: c.step, typ: typ})
}

func (w *world) deliverReply(i int, again bool) {
	r := w.replies[i]
	if !again {
		w.replies = slices.Delete(w.replies, i, i+1)
	}
	if w.seen[r.id] {
		return // a duplicate: dropped by its ce_id
	}
	w.seen[r.id] = true
	w.apply(saga.ReplyEventType(r.step, r.typ), msg{OrderID: "o-1"})
}

func (w *world) fireTimer() {
	t := w.timer
	if t.at.After(w.now) {
		w.now = t.at
	}
	w.apply(saga.TimeoutEventType(t.step, t.compensation), saga.TimerFired{Step: t.step, Attempt: t.attempt})
}

// Any schedule of replies, duplicates, reorderings, delays past the
// timeouts (late successes), lost replies, declines, shipping failures, a
// cancel and a deadline ends, once everything in flight is delivered and
// an operator resumes what ended in CompensationFailed, in Completed or
// Compensated, with every effect applied at most once per order and per
// command ID, stock and money conserved, compensations in reverse order,
// and one outcome announced.
func TestPropertySagaSchedules(t *testing.T) {
	sagas := []*saga.Saga[orderData]{propertySaga(t, 0, false, false), propertySaga(t, 45*time.Second, false, false),
		propertySaga(t, 0, true, false), propertySaga(t, 45*time.Second, true, false),
		propertySaga(t, 0, false, true), propertySaga(t, 45*time.Second, false, true)}
	for range 30 { // 3,000 schedules (rapid.Check runs 100 unless -rapid.checks says otherwise)
		rapid.Check(t, property(sagas))
	}
	c := &covered
	t.Logf("%d schedules: %d completed, %d compensated (%d undoing applied effects), %d resumed",
		c.schedules.Load(), c.completed.Load(), c.compensated.Load(), c.uncertain.Load(), c.resumed.Load())
	for what, n := range map[string]int64{"completed": c.completed.Load(), "compensated": c.compensated.Load(),
		"undoing applied effects": c.uncertain.Load(), "resumed": c.resumed.Load()} {
		if n == 0 {
			t.Errorf("no schedule ended %s: the generator misses that path", what)
		}
	}
}

func property(sagas []*saga.Saga[orderData]) func(*rapid.T) {
	return func(rt *rapid.T) {
		variant := rapid.IntRange(0, len(sagas)-1).Draw(rt, "saga (0 sequential, 1 with a deadline, 2 parallel, 3 both, 4 pivot, 5 pivot and deadline)")
		w := &world{t: rt, s: sagas[variant], pivot: variant >= 4, state: saga.StateNew, now: at, seen: map[string]bool{},
			declines: rapid.Float64Range(0, 1).Draw(rt, "decline") < 0.2, shipFails: rapid.Float64Range(0, 1).Draw(rt, "shipFail") < 0.2,
			done: map[string]bool{}, barred: map[string]bool{}, applied: map[string]int{}, byCommand: map[string]int{}}
		w.apply(w.s.StartEventType(), msg{OrderID: "o-1"})
		cancelled := false
		for range rapid.IntRange(0, 80).Draw(rt, "steps") {
			var actions []string
			if len(w.commands) > 0 {
				actions = append(actions, "command", "command", "command")
			}
			if len(w.replies) > 0 {
				actions = append(actions, "reply", "reply", "reply")
			}
			if w.timer != nil {
				actions = append(actions, "timer")
			}
			if !cancelled && rapid.IntRange(0, 29).Draw(rt, "cancel now") == 0 {
				actions = append(actions, "cancel")
			}
			if len(actions) == 0 {
				break
			}
			switch rapid.SampledFrom(actions).Draw(rt, "action") {
			case "command":
				w.deliverCommand(rapid.IntRange(0, len(w.commands)-1).Draw(rt, "which command"), rapid.Float64Range(0, 1).Draw(rt, "lose") < 0.15)
			case "reply":
				w.deliverReply(rapid.IntRange(0, len(w.replies)-1).Draw(rt, "which reply"), rapid.Float64Range(0, 1).Draw(rt, "duplicate") < 0.2)
			case "timer":
				w.fireTimer()
			case "cancel":
				cancelled = true
				w.apply(saga.CancelEventType, nil)
			}
		}
		// Drain: everything in flight is delivered, an operator resumes a
		// CompensationFailed saga, and time passes when nothing else moves.
	drain:
		for range 10_000 {
			switch {
			case len(w.commands) > 0:
				w.deliverCommand(0, false)
			case len(w.replies) > 0:
				w.deliverReply(0, false)
			case w.state == saga.StateCompensationFailed:
				w.apply(saga.ResumeEventType, nil)
			case w.timer != nil:
				w.fireTimer()
			default:
				break drain
			}
		}
		w.check()
		covered.add(w)
	}
}

// covered counts what the schedules exercised, so that a generator that
// stopped reaching a path shows.
type coverage struct {
	schedules, completed, compensated, resumed, uncertain atomic.Int64
}

var covered coverage

func (c *coverage) add(w *world) {
	c.schedules.Add(1)
	if w.state == saga.StateCompleted {
		c.completed.Add(1)
	} else {
		c.compensated.Add(1)
	}
	if w.in.Resumes > 0 {
		c.resumed.Add(1)
	}
	// A step given up whose effect was applied all the same: its
	// compensation undid it.
	if w.state == saga.StateCompensated && ((w.done["charge"] && !w.declines) || w.done["reserve"]) {
		c.uncertain.Add(1)
	}
}

func (w *world) check() {
	t := w.t
	if w.state != saga.StateCompleted && w.state != saga.StateCompensated {
		t.Fatalf("ended in %s with %d commands, %d replies in flight and timer %v", w.state, len(w.commands), len(w.replies), w.timer)
	}
	if len(w.finished) == 0 || w.finished[len(w.finished)-1] != w.state {
		t.Fatalf("finished %v, ended in %s", w.finished, w.state)
	}
	for name, n := range w.applied {
		if n > 1 {
			t.Fatalf("%s applied %d times (%v)", name, n, w.sequence)
		}
	}
	for id, n := range w.byCommand {
		if n > 1 {
			t.Fatalf("command %s applied %d times", id, n)
		}
	}
	d := w.done
	switch w.state {
	case saga.StateCompleted:
		if !d["reserve"] || !d["charge"] || !d["ship"] || d["release"] || d["refund"] {
			t.Fatalf("completed with effects %v", w.sequence)
		}
	case saga.StateCompensated:
		if d["ship"] || d["reserve"] != d["release"] || d["charge"] != d["refund"] {
			t.Fatalf("compensated with effects %v: stock or money not conserved", w.sequence)
		}
	}
	if w.pivot && w.state == saga.StateCompensated && slices.Contains(w.in.Completed, "payment") {
		t.Fatalf("compensated after the pivot (payment) succeeded: %v", w.sequence)
	}
	if refund, release := slices.Index(w.sequence, "refund"), slices.Index(w.sequence, "release"); refund >= 0 && release >= 0 && release < refund {
		t.Fatalf("compensations out of reverse order: %v", w.sequence)
	}
	want := orderRejected.Type
	if w.state == saga.StateCompleted {
		want = orderConfirmed.Type
	}
	if len(w.announced) != 1 || w.announced[0] != want {
		t.Fatalf("announced %v, want one %s", w.announced, want)
	}
}
