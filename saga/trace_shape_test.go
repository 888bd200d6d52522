package saga_test

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagapipe/sagapipe/observability"
	"github.com/sagapipe/sagapipe/saga"
)

// Issue 16: a saga's trace reads as the saga. One root per saga ("orders
// <id>"), a span per step attempt and per compensation under it, each
// parenting its command's publish (and through it the participant's
// processing) and its reply's processing; depth bounded; no orphan. Three
// sagas: one declined (compensated), one whose shipping command is lost
// (two shipping attempts), one plain. The orchestrator is replaced while
// "ok" and "slow" wait for shipping: the second one ends spans the first
// one began, by the IDs kept in their snapshots.
func TestASagasTraceHasTheSagasShape(t *testing.T) {
	e := newEnv(t, 2)
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans), sdktrace.WithIDGenerator(observability.IDGenerator()))
	t.Cleanup(func() { _ = tp.Shutdown(t.Context()) })
	e.tp = tp
	e.participant("inventory.commands", map[string]func(string) *saga.EventDef[msg]{
		reserveInventory.Type: always(inventoryReserved), releaseInventory.Type: always(inventoryReleased)})
	payment := e.participant("payment.commands", map[string]func(string) *saga.EventDef[msg]{
		chargePayment.Type: func(order string) *saga.EventDef[msg] {
			if order == "declined" {
				return &paymentDeclined
			}
			return &paymentCharged
		},
		refundPayment.Type: always(paymentRefunded)})
	clock := &testClock{}
	first := newFinished()
	_, stop := e.startRuntime(saga.WithClock(clock), saga.WithHooks(first), saga.WithTracerProvider(tp))
	e.start("ok", "declined", "slow")
	if got := first.wait(t, 1); got["declined"] != saga.StateCompensated {
		t.Fatalf("outcomes %v, want declined compensated", got)
	}
	waitFor(t, "ok and slow charged", func() bool {
		return payment.count(chargePayment.Type+" ok") == 1 && payment.count(chargePayment.Type+" slow") == 1
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	second := newFinished()
	e.startRuntime(saga.WithClock(clock), saga.WithHooks(second), saga.WithTracerProvider(tp))
	var mu sync.Mutex
	slowSends := 0
	shipping := e.participant("shipping.commands", map[string]func(string) *saga.EventDef[msg]{
		scheduleShipment.Type: func(order string) *saga.EventDef[msg] {
			mu.Lock()
			defer mu.Unlock()
			if order == "slow" {
				if slowSends++; slowSends == 1 {
					return nil // lost: the step times out and is sent again
				}
			}
			return &shipmentScheduled
		}})
	waitFor(t, "slow's first shipping command", func() bool { return shipping.count(scheduleShipment.Type+" slow") == 1 })
	if got := second.wait(t, 1); got["ok"] != saga.StateCompleted {
		t.Fatalf("outcomes %v, want ok completed", got)
	}
	clock.Advance(31e9) // shipping's timeout is the default 30s
	if got := second.wait(t, 2); got["slow"] != saga.StateCompleted {
		t.Fatalf("outcomes %v, want ok and slow completed", got)
	}
	waitSettled(spans)

	traces := map[trace.TraceID][]sdktrace.ReadOnlySpan{}
	for _, s := range spans.Ended() {
		if s.Name() == "sagapipe ID probe" {
			continue
		}
		traces[s.SpanContext().TraceID()] = append(traces[s.SpanContext().TraceID()], s)
	}
	bySaga := map[string][]sdktrace.ReadOnlySpan{}
	for id, tr := range traces {
		sagas := map[string]bool{}
		for _, s := range tr {
			if v, ok := attr(s, "saga.id"); ok {
				sagas[v] = true
			}
		}
		if len(sagas) != 1 {
			t.Fatalf("trace %s holds sagas %v, want one:\n%s", id, sagas, tree(tr))
		}
		for s := range sagas {
			bySaga[s] = tr
		}
	}
	if len(bySaga) != 3 {
		t.Fatalf("traces of sagas %v, want ok, declined and slow", slices.Sorted(func(yield func(string) bool) {
			for k := range bySaga {
				if !yield(k) {
					return
				}
			}
		}))
	}
	wantSteps := map[string][]string{
		"ok":       {"orders: inventory", "orders: payment", "orders: shipping"},
		"declined": {"orders: compensate inventory", "orders: inventory", "orders: payment"},
		"slow":     {"orders: inventory", "orders: payment", "orders: shipping", "orders: shipping"},
	}
	for id, tr := range bySaga {
		checkSagaTrace(t, id, tr, wantSteps[id])
	}
}

// checkSagaTrace checks one saga's trace: its shape and its attributes.
func checkSagaTrace(t *testing.T, id string, tr []sdktrace.ReadOnlySpan, wantSteps []string) {
	t.Helper()
	byID := map[trace.SpanID]sdktrace.ReadOnlySpan{}
	for _, s := range tr {
		if _, dup := byID[s.SpanContext().SpanID()]; dup {
			t.Errorf("saga %s: span %s %q emitted twice", id, s.SpanContext().SpanID(), s.Name())
		}
		byID[s.SpanContext().SpanID()] = s
	}
	var roots []sdktrace.ReadOnlySpan
	for _, s := range tr {
		if _, ok := byID[s.Parent().SpanID()]; !ok {
			roots = append(roots, s)
		}
	}
	if len(roots) != 1 || roots[0].Name() != "orders "+id || roots[0].Parent().IsValid() || roots[0].SpanKind() != trace.SpanKindInternal {
		t.Fatalf("saga %s: want one root, the saga's internal span %q; roots %v:\n%s", id, "orders "+id, names(roots), tree(tr))
	}
	root := roots[0]
	outcome, _ := attr(root, "saga.outcome")
	wantStatus := codes.Ok
	if outcome != string(saga.StateCompleted) {
		wantStatus = codes.Error
	}
	if root.Status().Code != wantStatus {
		t.Errorf("saga %s: root status %v, want %v for outcome %q", id, root.Status().Code, wantStatus, outcome)
	}
	for _, s := range tr {
		if s.StartTime().Before(root.StartTime()) || s.EndTime().After(root.EndTime()) {
			if !strings.HasSuffix(s.Name(), " publish") && !strings.HasSuffix(s.Name(), " process") {
				t.Errorf("saga %s: %q (%v–%v) is outside the saga's span (%v–%v)", id, s.Name(), s.StartTime(), s.EndTime(), root.StartTime(), root.EndTime())
			}
		}
	}

	depth := func(s sdktrace.ReadOnlySpan) int {
		d := 1
		for s.Parent().IsValid() {
			s = byID[s.Parent().SpanID()]
			d++
		}
		return d
	}
	var steps []string
	for _, s := range tr {
		if d := depth(s); d > 5 {
			t.Errorf("saga %s: %q is %d levels deep, want at most 5:\n%s", id, s.Name(), d, tree(tr))
		}
		if strings.HasPrefix(s.Name(), "orders: ") {
			steps = append(steps, s.Name())
			if s.Parent().SpanID() != root.SpanContext().SpanID() {
				t.Errorf("saga %s: step span %q is not the root's child", id, s.Name())
			}
		}
		// Every span a sagapipe component makes says which saga, where.
		for _, k := range []string{"saga.name", "saga.id", "saga.state", "saga.compensation"} {
			if _, ok := attr(s, k); !ok {
				t.Errorf("saga %s: span %q has no %s", id, s.Name(), k)
			}
		}
		// A command's publish, and the processing of its reply, sit
		// under the attempt of their step.
		parent := byID[s.Parent().SpanID()]
		step, _ := attr(s, "saga.step")
		switch {
		case strings.HasSuffix(s.Name(), ".commands publish"):
			if !strings.HasPrefix(parent.Name(), "orders: ") || !strings.HasSuffix(parent.Name(), " "+step) {
				t.Errorf("saga %s: command publish %q (step %s) is under %q, want its step's span", id, s.Name(), step, parent.Name())
			}
		case s.Name() == "orders.inbox process" && step != "":
			if !strings.HasPrefix(parent.Name(), "orders: ") || !strings.HasSuffix(parent.Name(), " "+step) {
				t.Errorf("saga %s: the processing of a %s reply is under %q, want its step's span", id, step, parent.Name())
			}
			if len(s.Links()) != 1 || byID[s.Links()[0].SpanContext.SpanID()] == nil ||
				byID[s.Links()[0].SpanContext.SpanID()].Name() != "orders.inbox publish" {
				t.Errorf("saga %s: the processing of a %s reply links to %v, want the reply's publish:\n%s", id, step, s.Links(), tree(tr))
			}
		}
	}
	slices.Sort(steps)
	if !slices.Equal(steps, wantSteps) {
		t.Errorf("saga %s: step spans %v, want %v:\n%s", id, steps, wantSteps, tree(tr))
	}
	if id == "slow" {
		var outcomes []string
		for _, s := range tr {
			if s.Name() == "orders: shipping" {
				a, _ := attr(s, "saga.step.attempt")
				o, _ := attr(s, "saga.step.outcome")
				outcomes = append(outcomes, a+" "+o)
			}
		}
		slices.Sort(outcomes)
		if want := []string{"1 timed out", "2 replied"}; !slices.Equal(outcomes, want) {
			t.Errorf("saga slow: shipping attempts %v, want %v", outcomes, want)
		}
	}
}

func attr(s sdktrace.ReadOnlySpan, key string) (string, bool) {
	for _, kv := range s.Attributes() {
		if kv.Key == attribute.Key(key) {
			return kv.Value.String(), true
		}
	}
	return "", false
}

func names(spans []sdktrace.ReadOnlySpan) []string {
	out := make([]string, len(spans))
	for i, s := range spans {
		out[i] = s.Name()
	}
	return out
}

// tree prints a trace indented by parent, for failure messages.
func tree(tr []sdktrace.ReadOnlySpan) string {
	children := map[trace.SpanID][]sdktrace.ReadOnlySpan{}
	ids := map[trace.SpanID]bool{}
	for _, s := range tr {
		ids[s.SpanContext().SpanID()] = true
	}
	var roots []sdktrace.ReadOnlySpan
	for _, s := range tr {
		if ids[s.Parent().SpanID()] {
			children[s.Parent().SpanID()] = append(children[s.Parent().SpanID()], s)
		} else {
			roots = append(roots, s)
		}
	}
	var b strings.Builder
	var walk func(s sdktrace.ReadOnlySpan, depth int)
	walk = func(s sdktrace.ReadOnlySpan, depth int) {
		step, _ := attr(s, "saga.step")
		state, _ := attr(s, "saga.state")
		fmt.Fprintf(&b, "%s%s [step=%s state=%s]\n", strings.Repeat("  ", depth), s.Name(), step, state)
		kids := children[s.SpanContext().SpanID()]
		slices.SortFunc(kids, func(a, b sdktrace.ReadOnlySpan) int { return a.StartTime().Compare(b.StartTime()) })
		for _, k := range kids {
			walk(k, depth+1)
		}
	}
	for _, r := range roots {
		walk(r, 0)
	}
	return b.String()
}

// A parallel group's timer (its step is the branches' names joined by "+")
// ends the attempts of the branches still unanswered as timed out, and its
// span sits under one of them; a branch resent gets a new attempt's span.
func TestAParallelGroupsTimeoutInTheTrace(t *testing.T) {
	e := newEnv(t, 1)
	e.saga = parallelSaga(t)
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans), sdktrace.WithIDGenerator(observability.IDGenerator()))
	t.Cleanup(func() { _ = tp.Shutdown(t.Context()) })
	e.tp = tp
	var mu sync.Mutex
	reserves := 0
	inventory := e.participant("inventory.commands", map[string]func(string) *saga.EventDef[msg]{
		reserveInventory.Type: func(string) *saga.EventDef[msg] {
			mu.Lock()
			defer mu.Unlock()
			if reserves++; reserves == 1 {
				return nil // lost: the group times out and sends it again
			}
			return &inventoryReserved
		}})
	e.participant("payment.commands", map[string]func(string) *saga.EventDef[msg]{chargePayment.Type: always(paymentCharged)})
	e.participant("shipping.commands", map[string]func(string) *saga.EventDef[msg]{scheduleShipment.Type: always(shipmentScheduled)})
	clock := &testClock{}
	done := newFinished()
	rt, _ := e.startRuntime(saga.WithClock(clock), saga.WithHooks(done), saga.WithTracerProvider(tp))
	e.start("p-1")
	waitFor(t, "the first reserve, and payment's reply applied", func() bool {
		st, ok, _ := rt.Status(t.Context(), "p-1")
		return inventory.count(reserveInventory.Type+" p-1") == 1 && ok && slices.Contains(st.Instance.Completed, "payment")
	})
	clock.Advance(11e9)
	if got := done.wait(t, 1)["p-1"]; got != saga.StateCompleted {
		t.Fatalf("p-1 ended %s, want Completed", got)
	}
	waitSettled(spans)

	byID := map[trace.SpanID]sdktrace.ReadOnlySpan{}
	var attempts []string
	var timer sdktrace.ReadOnlySpan
	for _, s := range spans.Ended() {
		byID[s.SpanContext().SpanID()] = s
		switch s.Name() {
		case "orders: inventory", "orders: payment":
			a, _ := attr(s, "saga.step.attempt")
			o, _ := attr(s, "saga.step.outcome")
			attempts = append(attempts, s.Name()+" "+a+" "+o)
		case "orders timeout":
			timer = s
		}
	}
	slices.Sort(attempts)
	if want := []string{"orders: inventory 1 timed out", "orders: inventory 2 replied", "orders: payment 1 replied"}; !slices.Equal(attempts, want) {
		t.Errorf("branch attempts %v, want %v", attempts, want)
	}
	if timer == nil {
		t.Fatal("no timer span")
	}
	if parent := byID[timer.Parent().SpanID()]; parent == nil || parent.Name() != "orders: inventory" {
		name := "nothing recorded"
		if parent != nil {
			name = parent.Name()
		}
		t.Errorf("the group's timer span is under %q, want the unanswered branch's attempt", name)
	}
}

// waitSettled waits until the count of ended spans stops growing: a
// participant's spans end when its transaction has ended, which may be
// after the orchestrator processed its reply.
func waitSettled(spans *tracetest.SpanRecorder) {
	for last, stable, deadline := -1, 0, time.Now().Add(10*time.Second); stable < 3 && time.Now().Before(deadline); {
		n := len(spans.Ended())
		if n == last {
			stable++
		} else {
			stable = 0
		}
		last = n
		time.Sleep(200 * time.Millisecond)
	}
}

// A saga cancelled while it waits on a step no longer waits on it: the
// step's span ends then, as abandoned, not when the saga ends.
func TestACancelledStepsSpanEndsAtTheCancel(t *testing.T) {
	e := newEnv(t, 1)
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans), sdktrace.WithIDGenerator(observability.IDGenerator()))
	t.Cleanup(func() { _ = tp.Shutdown(t.Context()) })
	e.tp = tp
	e.participant("inventory.commands", map[string]func(string) *saga.EventDef[msg]{
		reserveInventory.Type: always(inventoryReserved), releaseInventory.Type: always(inventoryReleased)})
	payment := e.participant("payment.commands", map[string]func(string) *saga.EventDef[msg]{
		chargePayment.Type: func(string) *saga.EventDef[msg] { return nil }, // never answers
		refundPayment.Type: always(paymentRefunded)})
	done := newFinished()
	e.startRuntime(saga.WithHooks(done), saga.WithTracerProvider(tp))
	e.start("c-1")
	waitFor(t, "the charge", func() bool { return payment.count(chargePayment.Type+" c-1") == 1 })
	cl := e.client()
	if err := cl.ProduceSync(t.Context(), saga.CancelRecord("orders", "c-1", "test")).FirstErr(); err != nil {
		t.Fatal(err)
	}
	if got := done.wait(t, 1)["c-1"]; got != saga.StateCompensated {
		t.Fatalf("c-1 ended %s, want Compensated", got)
	}
	waitSettled(spans)
	var pay, undo sdktrace.ReadOnlySpan
	for _, s := range spans.Ended() {
		switch s.Name() {
		case "orders: payment":
			pay = s
		case "orders: compensate inventory":
			undo = s
		}
	}
	if pay == nil || undo == nil {
		t.Fatalf("payment's span %v, inventory's compensation span %v: want both", pay != nil, undo != nil)
	}
	if o, _ := attr(pay, "saga.step.outcome"); o != "abandoned" || pay.EndTime().After(undo.StartTime().Add(time.Second)) {
		t.Errorf("payment's span ended %q at %v, want abandoned by the cancel, before inventory's compensation (%v)", o, pay.EndTime(), undo.StartTime())
	}
}
