package saga_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/saga"
	"github.com/sagapipe/sagapipe/schema"
	"github.com/sagapipe/sagapipe/statemachine"
)

type orderData struct {
	OrderID   string `avro:"order_id"`
	Amount    int64  `avro:"amount"`
	Reserved  bool   `avro:"reserved"`
	PaymentID string `avro:"payment_id"`
	Reason    string `avro:"reason"`
}

const orderDataSchema = `{"type":"record","name":"OrderData","fields":[
 {"name":"order_id","type":"string"},{"name":"amount","type":"long"},{"name":"reserved","type":"boolean"},
 {"name":"payment_id","type":"string"},{"name":"reason","type":"string"}]}`

// msg is the Go shape of every test event: an order ID and one detail.
type msg struct {
	OrderID string `avro:"order_id"`
	Detail  string `avro:"detail"`
}

func def(name string) saga.EventDef[msg] {
	return saga.Event[msg]("test."+name, fmt.Sprintf(`{"type":"record","name":%q,"namespace":"test","fields":[
 {"name":"order_id","type":"string"},{"name":"detail","type":"string","default":""}]}`, name))
}

var (
	orderPlaced       = def("OrderPlaced")
	reserveInventory  = def("ReserveInventory")
	inventoryReserved = def("InventoryReserved")
	inventoryRejected = def("InventoryRejected")
	releaseInventory  = def("ReleaseInventory")
	inventoryReleased = def("InventoryReleased")
	chargePayment     = def("ChargePayment")
	paymentCharged    = def("PaymentCharged")
	paymentDeclined   = def("PaymentDeclined")
	refundPayment     = def("RefundPayment")
	paymentRefunded   = def("PaymentRefunded")
	scheduleShipment  = def("ScheduleShipment")
	shipmentScheduled = def("ShipmentScheduled")
	shipmentFailed    = def("ShipmentFailed")
	orderConfirmed    = def("OrderConfirmed")
	orderRejected     = def("OrderRejected")
)

func command(d msg) func(orderData) msg {
	return func(o orderData) msg { return msg{OrderID: o.OrderID, Detail: d.Detail} }
}

// ordersSaga is the reference saga: inventory, payment, shipping.
func ordersSaga(t *testing.T) *saga.Saga[orderData] {
	t.Helper()
	b := saga.New[orderData]("orders", orderDataSchema).
		StartOn(saga.Reply(orderPlaced, func(d *orderData, e msg) { d.OrderID = e.OrderID; d.Amount = 100 })).
		Outcome("orders.outcomes", saga.Cmd(orderConfirmed, command(msg{Detail: "confirmed"})),
			saga.Cmd(orderRejected, func(d orderData) msg { return msg{OrderID: d.OrderID, Detail: d.Reason} }))
	inv := b.Step("inventory").
		Command("inventory.commands", saga.Cmd(reserveInventory, command(msg{Detail: "reserve"}))).
		OnSuccess(saga.Reply(inventoryReserved, func(d *orderData, _ msg) { d.Reserved = true })).
		OnFailure(saga.Reply(inventoryRejected, func(d *orderData, e msg) { d.Reason = e.Detail })).
		Timeout(5 * time.Second)
	// Compensations retried as often as commands: the journals in
	// testdata were recorded with that.
	saga.Compensate(inv, saga.Cmd(releaseInventory, command(msg{Detail: "release"})), inventoryReleased).
		CompensationRetries(saga.DefaultRetries)
	pay := b.Step("payment").
		Command("payment.commands", saga.Cmd(chargePayment, command(msg{Detail: "charge"}))).
		OnSuccess(saga.Reply(paymentCharged, func(d *orderData, e msg) { d.PaymentID = e.Detail })).
		OnFailure(saga.Reply(paymentDeclined, func(d *orderData, e msg) { d.Reason = e.Detail })).
		Timeout(10 * time.Second).Retries(1)
	saga.Compensate(pay, saga.Cmd(refundPayment, command(msg{Detail: "refund"})), paymentRefunded).CompensationRetries(1)
	b.Step("shipping").
		Command("shipping.commands", saga.Cmd(scheduleShipment, command(msg{Detail: "ship"}))).
		OnSuccess(saga.Reply[orderData](shipmentScheduled, nil)).
		OnFailure(saga.Reply[orderData](shipmentFailed, nil))
	s, err := b.Build()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

var at = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

// run applies events in order, failing the test on the first refusal, and
// returns the final state, instance and every effect.
type runner struct {
	t     *testing.T
	s     *saga.Saga[orderData]
	state statemachine.State
	in    saga.Instance[orderData]
	log   []string
}

func newRunner(t *testing.T) *runner {
	s := ordersSaga(t)
	return &runner{t: t, s: s, state: s.Machine().Initial()}
}

func (r *runner) apply(on statemachine.EventType, payload any) error {
	res, err := r.s.Machine().Apply(r.state, r.in, statemachine.Event{Type: on, ID: string(on), Time: at, Payload: payload})
	if err != nil {
		return err
	}
	r.state, r.in = res.To, res.Data
	for _, e := range res.Effects {
		switch e.Kind {
		case saga.Send:
			r.log = append(r.log, fmt.Sprintf("send %s %s#%d %v", e.Topic, e.EventType, e.Attempt, e.Command.(msg).Detail))
		case saga.SetTimer:
			r.log = append(r.log, fmt.Sprintf("timer %s#%d %v", e.Step, e.Attempt, e.After))
		case saga.Finish:
			r.log = append(r.log, "finish "+string(e.Outcome))
		}
	}
	return nil
}

func (r *runner) must(on statemachine.EventType, payload any) {
	r.t.Helper()
	if err := r.apply(on, payload); err != nil {
		r.t.Fatal(err)
	}
}

func reply(step string, d saga.EventDef[msg], detail string) (statemachine.EventType, any) {
	return saga.ReplyEventType(step, d.Type), msg{OrderID: "o-1", Detail: detail}
}

func timeout(step string, attempt int, compensation bool) (statemachine.EventType, any) {
	return saga.TimeoutEventType(step, compensation), saga.TimerFired{Step: step, Attempt: attempt}
}

func TestHappyPath(t *testing.T) {
	r := newRunner(t)
	r.must(r.s.StartEventType(), msg{OrderID: "o-1"})
	r.must(reply("inventory", inventoryReserved, ""))
	r.must(reply("payment", paymentCharged, "pay-9"))
	r.must(reply("shipping", shipmentScheduled, ""))
	want := []string{
		"send inventory.commands test.ReserveInventory#1 reserve", "timer inventory#1 5s",
		"send payment.commands test.ChargePayment#1 charge", "timer payment#1 10s",
		"send shipping.commands test.ScheduleShipment#1 ship", "timer shipping#1 30s",
		"send orders.outcomes test.OrderConfirmed#1 confirmed", "finish Completed",
	}
	if fmt.Sprint(r.log) != fmt.Sprint(want) {
		t.Fatalf("effects\n%v\nwant\n%v", r.log, want)
	}
	if r.state != saga.StateCompleted || !r.in.Data.Reserved || r.in.Data.PaymentID != "pay-9" ||
		fmt.Sprint(r.in.Completed) != "[inventory payment shipping]" {
		t.Fatalf("ended %s %+v", r.state, r.in)
	}
}

func TestPaymentDeclinedReleasesInventory(t *testing.T) {
	r := newRunner(t)
	r.must(r.s.StartEventType(), msg{OrderID: "o-1"})
	r.must(reply("inventory", inventoryReserved, ""))
	r.must(reply("payment", paymentDeclined, "insufficient funds"))
	if r.state != saga.CompensatingState("inventory") {
		t.Fatalf("state %s, want inventory.Compensating (payment was never charged)", r.state)
	}
	r.must(reply("inventory", inventoryReleased, ""))
	if r.state != saga.StateCompensated || r.in.Data.Reason != "insufficient funds" {
		t.Fatalf("ended %s %+v", r.state, r.in.Data)
	}
	if last := r.log[len(r.log)-1]; last != "finish Compensated" {
		t.Fatalf("last effect %q", last)
	}
}

func TestShippingFailureCompensatesInReverse(t *testing.T) {
	r := newRunner(t)
	r.must(r.s.StartEventType(), msg{OrderID: "o-1"})
	r.must(reply("inventory", inventoryReserved, ""))
	r.must(reply("payment", paymentCharged, "pay-9"))
	r.log = nil
	r.must(reply("shipping", shipmentFailed, ""))
	r.must(reply("payment", paymentRefunded, ""))
	r.must(reply("inventory", inventoryReleased, ""))
	want := []string{
		"send payment.commands test.RefundPayment#1 refund", "timer payment#1 10s",
		"send inventory.commands test.ReleaseInventory#1 release", "timer inventory#1 5s",
		"send orders.outcomes test.OrderRejected#1 ", "finish Compensated",
	}
	if fmt.Sprint(r.log) != fmt.Sprint(want) || r.state != saga.StateCompensated {
		t.Fatalf("effects %v, state %s; want refund then release, Compensated", r.log, r.state)
	}
}

// A step whose resends all time out is given up as uncertain: its
// participant may have applied it, only slowly. It is compensated first
// (the refund), then the completed steps in reverse (the release).
func TestTimeoutsRetryThenCompensateTheUncertainStepFirst(t *testing.T) {
	r := newRunner(t)
	r.must(r.s.StartEventType(), msg{OrderID: "o-1"})
	r.must(reply("inventory", inventoryReserved, ""))
	r.log = nil
	r.must(timeout("payment", 1, false)) // one retry allowed
	if r.state != saga.PendingState("payment") || r.in.Attempt != 2 {
		t.Fatalf("after the first timeout: %s attempt %d", r.state, r.in.Attempt)
	}
	// The first send's timer is stale now: nothing accepts it.
	if err := r.apply(timeout("payment", 1, false)); !errors.Is(err, statemachine.ErrNoTransition) {
		t.Fatalf("stale timer: %v, want ErrNoTransition", err)
	}
	r.must(timeout("payment", 2, false))
	want := []string{
		"send payment.commands test.ChargePayment#2 charge", "timer payment#2 20s", // backed off
		"send payment.commands test.RefundPayment#1 refund", "timer payment#1 10s", // the uncertain charge undone
	}
	if fmt.Sprint(r.log) != fmt.Sprint(want) || r.state != saga.CompensatingState("payment") {
		t.Fatalf("effects %v state %s; want the charge resent, then refunded", r.log, r.state)
	}
	// The charge's late success changes nothing: its refund is on its way.
	if err := r.apply(reply("payment", paymentCharged, "late")); !errors.Is(err, statemachine.ErrNoTransition) {
		t.Fatalf("late reply: %v, want ErrNoTransition", err)
	}
	r.log = nil
	r.must(reply("payment", paymentRefunded, ""))
	r.must(reply("inventory", inventoryReleased, ""))
	want = []string{
		"send inventory.commands test.ReleaseInventory#1 release", "timer inventory#1 5s",
		"send orders.outcomes test.OrderRejected#1 ", "finish Compensated",
	}
	if fmt.Sprint(r.log) != fmt.Sprint(want) || r.state != saga.StateCompensated {
		t.Fatalf("effects %v state %s; want the release, then Compensated", r.log, r.state)
	}
}

// The last step has no step after it to fail, but given up as uncertain
// it is compensated too when it has a compensation.
func TestTheLastStepIsCompensatedWhenUncertain(t *testing.T) {
	b := saga.New[orderData]("orders", orderDataSchema).
		StartOn(saga.Reply(orderPlaced, func(d *orderData, e msg) { d.OrderID = e.OrderID }))
	last := b.Step("payment").Command("payment.commands", saga.Cmd(chargePayment, command(msg{Detail: "charge"}))).
		OnSuccess(saga.Reply[orderData](paymentCharged, nil)).Retries(-1)
	saga.Compensate(last, saga.Cmd(refundPayment, command(msg{Detail: "refund"})), paymentRefunded)
	s, err := b.Build()
	if err != nil {
		t.Fatal(err)
	}
	r := &runner{t: t, s: s, state: saga.StateNew}
	r.must(s.StartEventType(), msg{OrderID: "o-1"})
	r.log = nil
	r.must(timeout("payment", 1, false))
	if r.state != saga.CompensatingState("payment") || fmt.Sprint(r.log) != fmt.Sprint([]string{"send payment.commands test.RefundPayment#1 refund", "timer payment#1 30s"}) {
		t.Fatalf("effects %v state %s; want the uncertain charge refunded", r.log, r.state)
	}
	r.must(reply("payment", paymentRefunded, ""))
	if r.state != saga.StateCompensated {
		t.Fatalf("state %s, want Compensated", r.state)
	}
}

func TestCompensationThatKeepsFailing(t *testing.T) {
	r := newRunner(t)
	r.must(r.s.StartEventType(), msg{OrderID: "o-1"})
	r.must(reply("inventory", inventoryReserved, ""))
	r.must(reply("payment", paymentCharged, "pay-9"))
	r.must(reply("shipping", shipmentFailed, ""))
	r.must(timeout("payment", 1, true)) // refund resent once
	r.must(timeout("payment", 2, true)) // then given up
	if r.state != saga.StateCompensationFailed || r.log[len(r.log)-1] != "finish CompensationFailed" {
		t.Fatalf("state %s, last effect %q; want CompensationFailed", r.state, r.log[len(r.log)-1])
	}
}

func TestReplayRebuildsTheSameInstance(t *testing.T) {
	r := newRunner(t)
	var journal []statemachine.Event
	record := func(on statemachine.EventType, payload any) {
		r.must(on, payload)
		journal = append(journal, statemachine.Event{Type: on, ID: string(on), Time: at, Payload: payload})
	}
	record(r.s.StartEventType(), msg{OrderID: "o-1"})
	record(reply("inventory", inventoryReserved, ""))
	record(timeout("payment", 1, false))
	record(reply("payment", paymentCharged, "pay-2"))
	state, in, err := r.s.Machine().Replay(saga.Instance[orderData]{}, journal)
	if err != nil {
		t.Fatal(err)
	}
	if state != r.state || fmt.Sprint(in) != fmt.Sprint(r.in) {
		t.Fatalf("replay: %s %+v; applying: %s %+v", state, in, r.state, r.in)
	}
}

func TestBuildReportsEveryProblem(t *testing.T) {
	b := saga.New[orderData]("orders", "")
	b.Step("inventory").Command("inventory.commands", saga.Cmd(reserveInventory, command(msg{}))).
		OnSuccess(saga.Reply[orderData](inventoryReserved, nil)).OnFailure(saga.Reply[orderData](inventoryReserved, nil))
	b.Step("inventory").Command("x", saga.Cmd(saga.Event[msg]("test.Bad", `{"type":"nope"}`), command(msg{}))).
		OnSuccess(saga.Reply[orderData](paymentCharged, nil)).Timeout(-time.Second)
	b.Step("shipping")
	_, err := b.Build()
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{
		"the saga's data has no Avro schema",
		"no start event",
		`two steps are named "inventory"`,
		`success and failure replies are both "test.InventoryReserved"`,
		"has side effects but no compensation: add Compensate, or mark it Pivot()",
		"Avro schema does not parse",
		"timeout -1s is negative",
		`step 2 "shipping" has no command`,
		`step 2 "shipping" has no success reply`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not report %q:\n%v", want, err)
		}
	}
}

func TestMermaid(t *testing.T) {
	m := ordersSaga(t).Machine().Mermaid()
	for _, want := range []string{
		"[*] --> New",
		"New --> inventory_Pending : start/test.OrderPlaced",
		"payment_Pending --> inventory_Compensating : payment/test.PaymentDeclined",
		"shipping_Pending --> payment_Compensating : shipping/test.ShipmentFailed",
		"payment_Compensating --> CompensationFailed : payment/compensation-timeout [current send, retries exhausted]",
		"Completed --> [*]",
	} {
		if !strings.Contains(m, want) {
			t.Errorf("diagram lacks %q:\n%s", want, m)
		}
	}
}

// A cancel while a step waits compensates that step (its command may have
// been applied) and then the completed ones; a finished saga ignores it.
func TestCancelCompensatesThePendingStepFirst(t *testing.T) {
	r := newRunner(t)
	r.must(r.s.StartEventType(), msg{OrderID: "o-1"})
	r.must(reply("inventory", inventoryReserved, ""))
	r.log = nil
	r.must(saga.CancelEventType, nil)
	want := []string{"send payment.commands test.RefundPayment#1 refund", "timer payment#1 10s"}
	if fmt.Sprint(r.log) != fmt.Sprint(want) || r.state != saga.CompensatingState("payment") {
		t.Fatalf("effects %v state %s; want the pending charge refunded", r.log, r.state)
	}
	if err := r.apply(saga.CancelEventType, nil); !errors.Is(err, statemachine.ErrNoTransition) {
		t.Fatalf("a second cancel: %v, want ErrNoTransition", err)
	}
	r.must(reply("payment", paymentRefunded, ""))
	r.must(reply("inventory", inventoryReleased, ""))
	if r.state != saga.StateCompensated {
		t.Fatalf("state %s, want Compensated", r.state)
	}
	if err := r.apply(saga.CancelEventType, nil); !errors.Is(err, statemachine.ErrNoTransition) {
		t.Fatalf("cancel of a finished saga: %v, want ErrNoTransition", err)
	}
}

// pivotSaga: payment (refundable), capture (the pivot), shipping and
// courier after it; a failed shipping goes forward to the courier.
func pivotSaga(t *testing.T) *saga.Saga[orderData] {
	t.Helper()
	b := saga.New[orderData]("orders", orderDataSchema).
		StartOn(saga.Reply(orderPlaced, func(d *orderData, e msg) { d.OrderID = e.OrderID }))
	pay := b.Step("payment").Command("payment.commands", saga.Cmd(chargePayment, command(msg{Detail: "charge"}))).
		OnSuccess(saga.Reply[orderData](paymentCharged, nil)).Retries(-1)
	saga.Compensate(pay, saga.Cmd(refundPayment, command(msg{Detail: "refund"})), paymentRefunded)
	b.Step("capture").Command("payment.commands", saga.Cmd(chargePayment, command(msg{Detail: "capture"}))).
		OnSuccess(saga.Reply[orderData](paymentCharged, nil)).
		OnFailure(saga.Reply[orderData](paymentDeclined, nil)).Pivot().Retries(-1)
	b.Step("shipping").Command("shipping.commands", saga.Cmd(scheduleShipment, command(msg{Detail: "ship"}))).
		OnSuccess(saga.Reply[orderData](shipmentScheduled, nil)).
		OnFailure(saga.Reply[orderData](shipmentFailed, nil)).Forward("courier").Retries(1)
	b.Step("courier").Command("shipping.commands", saga.Cmd(scheduleShipment, command(msg{Detail: "courier"}))).
		OnSuccess(saga.Reply[orderData](shipmentScheduled, nil))
	s, err := b.Build()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// After the pivot a saga only goes forward: a step that times out is
// resent past its retries (as long retries), a failure reply follows the
// step's Forward, and nothing is compensated. A failure of the pivot
// itself compensates the steps before it.
func TestPivotAndForwardRecovery(t *testing.T) {
	s := pivotSaga(t)
	r := &runner{t: t, s: s, state: saga.StateNew}
	r.must(s.StartEventType(), msg{OrderID: "o-1"})
	r.must(reply("payment", paymentCharged, ""))
	r.must(reply("capture", paymentCharged, ""))
	r.log = nil
	var long []bool
	for attempt := 1; attempt <= 4; attempt++ {
		res, err := s.Machine().Apply(r.state, r.in, statemachine.Event{Type: saga.TimeoutEventType("shipping", false),
			Time: at, Payload: saga.TimerFired{Step: "shipping", Attempt: attempt}})
		if err != nil {
			t.Fatalf("shipping timeout %d: %v", attempt, err)
		}
		r.state, r.in = res.To, res.Data
		long = append(long, res.Effects[0].LongRetry)
	}
	if r.state != saga.PendingState("shipping") || r.in.Attempt != 5 || fmt.Sprint(long) != "[false true true true]" {
		t.Fatalf("after 4 timeouts: %s attempt %d, long retries %v; want shipping.Pending, attempt 5, long retries past Retries(1)",
			r.state, r.in.Attempt, long)
	}
	r.must(reply("shipping", shipmentFailed, ""))
	if r.state != saga.PendingState("courier") || fmt.Sprint(r.log) != "[send shipping.commands test.ScheduleShipment#1 courier timer courier#1 30s]" {
		t.Fatalf("after the failure: %s, effects %v; want the courier's command", r.state, r.log)
	}
	if _, err := s.Machine().Apply(r.state, r.in, statemachine.Event{Type: saga.CancelEventType, Time: at}); !errors.Is(err, statemachine.ErrNoTransition) {
		t.Fatalf("a cancel after the pivot: %v, want it ignored (no transition)", err)
	}
	r.must(reply("courier", shipmentScheduled, ""))
	if r.state != saga.StateCompleted {
		t.Fatalf("state %s, want Completed", r.state)
	}

	// The pivot's own failure: the steps before it are compensated.
	r = &runner{t: t, s: s, state: saga.StateNew}
	r.must(s.StartEventType(), msg{OrderID: "o-2"})
	r.must(reply("payment", paymentCharged, ""))
	r.log = nil
	r.must(reply("capture", paymentDeclined, ""))
	if r.state != saga.CompensatingState("payment") || fmt.Sprint(r.log) != "[send payment.commands test.RefundPayment#1 refund timer payment#1 30s]" {
		t.Fatalf("after the pivot failed: %s, effects %v; want the refund", r.state, r.log)
	}
}

func TestBuildChecksThePivot(t *testing.T) {
	build := func(edit func(b *saga.Builder[orderData])) error {
		b := saga.New[orderData]("orders", orderDataSchema).
			StartOn(saga.Reply(orderPlaced, func(d *orderData, e msg) { d.OrderID = e.OrderID }))
		edit(b)
		_, err := b.Build()
		return err
	}
	step := func(b *saga.Builder[orderData], name string) *saga.StepBuilder[orderData] {
		return b.Step(name).Command(name+".commands", saga.Cmd(chargePayment, command(msg{}))).
			OnSuccess(saga.Reply[orderData](paymentCharged, nil))
	}
	for _, c := range []struct {
		name, want string
		edit       func(b *saga.Builder[orderData])
	}{
		{"two pivots", `steps "a" and "b" are both the pivot`, func(b *saga.Builder[orderData]) {
			step(b, "a").Pivot()
			step(b, "b").Pivot()
		}},
		{"failure without forward", `"b" comes after the pivot "a" and has a failure reply: declare where the saga goes on with Forward(step)`, func(b *saga.Builder[orderData]) {
			step(b, "a").Pivot()
			step(b, "b").OnFailure(saga.Reply[orderData](paymentDeclined, nil))
		}},
		{"forward before the pivot", `Forward("a") goes back to or before the pivot "a"`, func(b *saga.Builder[orderData]) {
			step(b, "a").Pivot()
			step(b, "b").OnFailure(saga.Reply[orderData](paymentDeclined, nil)).Forward("a")
		}},
		{"forward to itself", `Forward("b") must name a step after it`, func(b *saga.Builder[orderData]) {
			step(b, "a").Pivot()
			step(b, "b").OnFailure(saga.Reply[orderData](paymentDeclined, nil)).Forward("b")
		}},
		{"a plus in a name", `a step name must not hold '+'`, func(b *saga.Builder[orderData]) {
			step(b, "a+b")
		}},
		{"forward to nothing", `Forward("c") names no step`, func(b *saga.Builder[orderData]) {
			step(b, "a").Pivot()
			step(b, "b").OnFailure(saga.Reply[orderData](paymentDeclined, nil)).Forward("c")
		}},
		{"forward without a pivot", `Forward is for steps after the pivot`, func(b *saga.Builder[orderData]) {
			step(b, "b").OnFailure(saga.Reply[orderData](paymentDeclined, nil)).Forward("b")
		}},
		{"compensation after the pivot", `comes after the pivot "a", so it is never compensated`, func(b *saga.Builder[orderData]) {
			step(b, "a").Pivot()
			saga.Compensate(step(b, "b"), saga.Cmd(refundPayment, command(msg{})), paymentRefunded)
		}},
	} {
		if err := build(c.edit); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: Build() = %v, want an error containing %q", c.name, err, c.want)
		}
	}
}

// A resume sends the compensation that was given up again and the saga
// compensates on; it announces no second outcome. In any other state a
// resume is refused (journaled as ignored).
func TestResumeACompensationFailedSaga(t *testing.T) {
	r := newRunner(t)
	r.must(r.s.StartEventType(), msg{OrderID: "o-1"})
	r.must(reply("inventory", inventoryReserved, ""))
	if _, err := r.s.Machine().Apply(r.state, r.in, statemachine.Event{Type: saga.ResumeEventType, Time: at}); !errors.Is(err, statemachine.ErrNoTransition) {
		t.Fatalf("a resume while pending: %v, want no transition", err)
	}
	r.must(reply("payment", paymentCharged, "pay-9"))
	r.must(reply("shipping", shipmentFailed, ""))
	r.must(timeout("payment", 1, true))
	r.must(timeout("payment", 2, true))
	if r.state != saga.StateCompensationFailed || r.in.Stuck != "payment" || r.s.Machine().IsTerminal(r.state) {
		t.Fatalf("state %s, stuck %q, terminal %v; want CompensationFailed at payment, waiting for an operator",
			r.state, r.in.Stuck, r.s.Machine().IsTerminal(r.state))
	}
	r.log = nil
	r.must(saga.ResumeEventType, nil)
	if r.state != saga.CompensatingState("payment") || r.in.Resumes != 1 || r.in.Stuck != "" ||
		fmt.Sprint(r.log) != "[send payment.commands test.RefundPayment#1 refund timer payment#1 10s]" {
		t.Fatalf("after the resume: %s, %+v, effects %v; want the refund again from attempt 1", r.state, r.in, r.log)
	}
	r.must(reply("payment", paymentRefunded, ""))
	r.must(reply("inventory", inventoryReleased, ""))
	want := "[send payment.commands test.RefundPayment#1 refund timer payment#1 10s send inventory.commands test.ReleaseInventory#1 release timer inventory#1 5s finish Compensated]"
	if r.state != saga.StateCompensated || fmt.Sprint(r.log) != want {
		t.Fatalf("state %s, effects %v; want Compensated without a second outcome: %s", r.state, r.log, want)
	}
}

// A saga's deadline caps its step timers; when it passes, the step it
// waits on is given up as uncertain and compensated first. Compensating,
// the saga is past its deadline: its timers are its own.
func TestSagaDeadline(t *testing.T) {
	b := saga.New[orderData]("orders", orderDataSchema).
		StartOn(saga.Reply(orderPlaced, func(d *orderData, e msg) { d.OrderID = e.OrderID })).Deadline(time.Minute)
	inv := b.Step("inventory").Command("inventory.commands", saga.Cmd(reserveInventory, command(msg{Detail: "reserve"}))).
		OnSuccess(saga.Reply[orderData](inventoryReserved, nil)).Timeout(20 * time.Second)
	saga.Compensate(inv, saga.Cmd(releaseInventory, command(msg{Detail: "release"})), inventoryReleased)
	pay := b.Step("payment").Command("payment.commands", saga.Cmd(chargePayment, command(msg{Detail: "charge"}))).
		OnSuccess(saga.Reply[orderData](paymentCharged, nil)).Timeout(20 * time.Second)
	saga.Compensate(pay, saga.Cmd(refundPayment, command(msg{Detail: "refund"})), paymentRefunded)
	b.Step("shipping").Command("shipping.commands", saga.Cmd(scheduleShipment, command(msg{Detail: "ship"}))).
		OnSuccess(saga.Reply[orderData](shipmentScheduled, nil))
	s, err := b.Build()
	if err != nil {
		t.Fatal(err)
	}
	state, in := saga.StateNew, saga.Instance[orderData]{}
	apply := func(on statemachine.EventType, payload any, after time.Duration) []saga.Effect {
		t.Helper()
		res, err := s.Machine().Apply(state, in, statemachine.Event{Type: on, Time: at.Add(after), Payload: payload})
		if err != nil {
			t.Fatalf("%s at +%v: %v", on, after, err)
		}
		state, in = res.To, res.Data
		return res.Effects
	}
	apply(s.StartEventType(), msg{OrderID: "o-1"}, 0)
	if !in.Deadline.Equal(at.Add(time.Minute)) {
		t.Fatalf("deadline %v, want the start's time + 1m", in.Deadline)
	}
	if effects := apply(saga.ReplyEventType("inventory", inventoryReserved.Type), msg{}, 50*time.Second); effects[1].After != 10*time.Second {
		t.Fatalf("the charge sent at +50s waits %v, want 10s: its timer fires by the deadline", effects[1].After)
	}
	effects := apply(saga.TimeoutEventType("payment", false), saga.TimerFired{Step: "payment", Attempt: 1}, 60*time.Second)
	if state != saga.CompensatingState("payment") || effects[0].EventType != refundPayment.Type {
		t.Fatalf("at the deadline: %s, effects %+v; want the charge given up and refunded first", state, effects)
	}
	if effects[1].After != 20*time.Second {
		t.Fatalf("the refund waits %v, want its own timeout (past the deadline, compensations go on)", effects[1].After)
	}

	// A success that comes after the deadline starts no further step: the
	// saga compensates, the step that just succeeded first.
	state, in = saga.StateNew, saga.Instance[orderData]{}
	apply(s.StartEventType(), msg{OrderID: "o-2"}, 0)
	effects = apply(saga.ReplyEventType("inventory", inventoryReserved.Type), msg{}, 61*time.Second)
	if state != saga.CompensatingState("inventory") || effects[0].EventType != releaseInventory.Type {
		t.Fatalf("a late success: %s, effects %+v; want the reservation released", state, effects)
	}
}

// parallelSaga reserves inventory and charges payment together, then
// ships.
func parallelSaga(t *testing.T) *saga.Saga[orderData] {
	t.Helper()
	b := saga.New[orderData]("orders", orderDataSchema).
		StartOn(saga.Reply(orderPlaced, func(d *orderData, e msg) { d.OrderID = e.OrderID }))
	inv := b.Step("inventory").Command("inventory.commands", saga.Cmd(reserveInventory, command(msg{Detail: "reserve"}))).
		OnSuccess(saga.Reply(inventoryReserved, func(d *orderData, _ msg) { d.Reserved = true })).Timeout(5 * time.Second)
	saga.Compensate(inv, saga.Cmd(releaseInventory, command(msg{Detail: "release"})), inventoryReleased)
	pay := b.Step("payment").Command("payment.commands", saga.Cmd(chargePayment, command(msg{Detail: "charge"}))).
		OnSuccess(saga.Reply(paymentCharged, func(d *orderData, e msg) { d.PaymentID = e.Detail })).
		OnFailure(saga.Reply[orderData](paymentDeclined, nil)).Timeout(10 * time.Second).Retries(1).Parallel()
	saga.Compensate(pay, saga.Cmd(refundPayment, command(msg{Detail: "refund"})), paymentRefunded)
	b.Step("shipping").Command("shipping.commands", saga.Cmd(scheduleShipment, command(msg{Detail: "ship"}))).
		OnSuccess(saga.Reply[orderData](shipmentScheduled, nil))
	s, err := b.Build()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Parallel branches are sent together and joined in any order; a timeout
// resends only the branches that have not answered; a branch's failure
// compensates every branch in reverse, then the steps before.
func TestParallelSteps(t *testing.T) {
	s := parallelSaga(t)
	group := saga.PendingState("inventory+payment")
	r := &runner{t: t, s: s, state: saga.StateNew}
	r.must(s.StartEventType(), msg{OrderID: "o-1"})
	if r.state != group || fmt.Sprint(r.log) != "[send inventory.commands test.ReserveInventory#1 reserve send payment.commands test.ChargePayment#1 charge timer inventory+payment#1 10s]" {
		t.Fatalf("start: %s, effects %v; want both commands and one timer (the longest wait)", r.state, r.log)
	}
	r.log = nil
	r.must(reply("payment", paymentCharged, "pay-1"))
	if r.state != group || len(r.log) != 0 {
		t.Fatalf("after payment: %s %v; want still waiting for inventory", r.state, r.log)
	}
	if _, err := s.Machine().Apply(r.state, r.in, statemachine.Event{Type: saga.ReplyEventType("payment", paymentCharged.Type), Time: at}); !errors.Is(err, statemachine.ErrNoTransition) {
		t.Fatalf("a second payment reply: %v, want it ignored", err)
	}
	r.must(timeout("inventory+payment", 1, false))
	if fmt.Sprint(r.log) != "[send inventory.commands test.ReserveInventory#2 reserve timer inventory+payment#2 10s]" {
		t.Fatalf("the group's timeout: %v; want inventory resent alone", r.log)
	}
	r.must(reply("inventory", inventoryReserved, ""))
	if r.state != saga.PendingState("shipping") || fmt.Sprint(r.in.Completed) != "[payment inventory]" {
		t.Fatalf("after both: %s, completed %v; want shipping", r.state, r.in.Completed)
	}

	// A failure of one branch: every branch compensated, the last first.
	r = &runner{t: t, s: s, state: saga.StateNew}
	r.must(s.StartEventType(), msg{OrderID: "o-2"})
	r.must(reply("inventory", inventoryReserved, ""))
	r.log = nil
	r.must(reply("payment", paymentDeclined, ""))
	r.must(reply("payment", paymentRefunded, ""))
	r.must(reply("inventory", inventoryReleased, ""))
	want := "[send payment.commands test.RefundPayment#1 refund timer payment#1 10s send inventory.commands test.ReleaseInventory#1 release timer inventory#1 5s finish Compensated]"
	if r.state != saga.StateCompensated || fmt.Sprint(r.log) != want {
		t.Fatalf("after the decline: %s, %v; want %s", r.state, r.log, want)
	}

	// Given up after the group's retries: the branch that never answered
	// is uncertain, and compensated with the other.
	r = &runner{t: t, s: s, state: saga.StateNew}
	r.must(s.StartEventType(), msg{OrderID: "o-3"})
	r.must(reply("payment", paymentCharged, ""))
	// The group's retries are its branches' fewest: payment's Retries(1).
	r.must(timeout("inventory+payment", 1, false))
	r.must(timeout("inventory+payment", 2, false))
	if r.state != saga.CompensatingState("payment") {
		t.Fatalf("after the group's retries: %s, want payment.Compensating", r.state)
	}
}

func TestBuildChecksParallelGroups(t *testing.T) {
	b := saga.New[orderData]("orders", orderDataSchema).
		StartOn(saga.Reply(orderPlaced, func(d *orderData, e msg) { d.OrderID = e.OrderID }))
	b.Step("inventory").Command("inventory.commands", saga.Cmd(reserveInventory, command(msg{}))).
		OnSuccess(saga.Reply[orderData](inventoryReserved, nil)).Parallel()
	b.Step("payment").Command("payment.commands", saga.Cmd(chargePayment, command(msg{}))).
		OnSuccess(saga.Reply[orderData](paymentCharged, nil)).Parallel()
	_, err := b.Build()
	for _, want := range []string{`step 0 "inventory": Parallel on the first step`, `step 1 "payment": a parallel group's steps all need a compensation`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Build() = %v, want %q", err, want)
		}
	}
}

// Versions share codecs by ce_type: an event type whose Go type changed
// between versions is refused when the runtime is built, not at the first
// reply of an old saga.
func TestVersionsMustAgreeOnEventTypes(t *testing.T) {
	type placedV2 struct {
		OrderID string `avro:"order_id"`
		Channel string `avro:"channel"`
	}
	placed := saga.Event[placedV2](orderPlaced.Type, `{"type":"record","name":"OrderPlaced","namespace":"test","fields":[
 {"name":"order_id","type":"string"},{"name":"channel","type":"string","default":""}]}`)
	b := saga.New[orderData]("orders", orderDataSchema).Version(2).
		StartOn(saga.Reply(placed, func(d *orderData, e placedV2) { d.OrderID = e.OrderID }))
	b.Step("payment").Command("payment.commands", saga.Cmd(chargePayment, command(msg{}))).
		OnSuccess(saga.Reply[orderData](paymentCharged, nil)).OnFailure(saga.Reply[orderData](paymentDeclined, nil))
	v2, err := b.Build()
	if err != nil {
		t.Fatal(err)
	}
	serde, err := schema.NewSerde("http://127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	_, err = saga.NewRuntime(v2, saga.WithClientOptions(kgo.SeedBrokers("127.0.0.1:1")), saga.WithRegistry(serde), saga.WithOlderVersions(ordersSaga(t)))
	if err == nil || !strings.Contains(err.Error(), "test.OrderPlaced is saga_test.msg in version 1 of orders but saga_test.placedV2 in version 2") {
		t.Fatalf("NewRuntime = %v, want the changed Go type of test.OrderPlaced named", err)
	}
}
