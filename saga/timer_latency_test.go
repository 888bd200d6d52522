package saga_test

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/sagapipe/sagapipe/saga"
	"github.com/sagapipe/sagapipe/statemachine"
)

// finishedAt records when each saga was reported finished.
type finishedAt struct {
	mu sync.Mutex
	at map[string]time.Time
}

func (f *finishedAt) OnFinished(id string, _ statemachine.State) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.at[id] = time.Now()
}

func (f *finishedAt) get(id string) (time.Time, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t, ok := f.at[id]
	return t, ok
}

// kgoSleeps is a kgo logger that keeps only the lines where a
// GroupTransactSession announces its post-commit 500 ms wait (the guard kgo
// applies when it cannot tell that the broker supports KIP-447).
type kgoSleeps struct {
	mu sync.Mutex
	at []time.Time
}

func (l *kgoSleeps) Level() kgo.LogLevel { return kgo.LogLevelDebug }

func (l *kgoSleeps) Log(_ kgo.LogLevel, msg string, _ ...any) {
	if strings.HasPrefix(msg, "sleeping 500ms before allowing a rebalance") {
		l.mu.Lock()
		l.at = append(l.at, time.Now())
		l.mu.Unlock()
	}
}

func (l *kgoSleeps) list() []time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]time.Time(nil), l.at...)
}

// Issue 16: shipping ignores its first command; the step times out, the
// runtime resends the command, and shipping answers the resend at once. The
// runtime must apply that answer at once too. It used to apply it ~500 ms
// later: the batch of the timer alone commits no consumed offsets, so kgo's
// GroupTransactSession.End gets no TxnOffsetCommit response to learn that the
// broker supports KIP-447 from, and holds End for 500 ms after the commit.
// The resend is out (and answered) at the commit, but the runtime polls the
// answer only once End has returned.
func TestAReplyToAResendIsAppliedPromptly(t *testing.T) {
	e := newEnv(t, 1)
	e.participant("inventory.commands", map[string]func(string) *saga.EventDef[msg]{reserveInventory.Type: always(inventoryReserved)})
	e.participant("payment.commands", map[string]func(string) *saga.EventDef[msg]{chargePayment.Type: always(paymentCharged)})
	var mu sync.Mutex
	sends := 0
	var answeredAt time.Time
	shipping := e.participant("shipping.commands", map[string]func(string) *saga.EventDef[msg]{
		scheduleShipment.Type: func(string) *saga.EventDef[msg] {
			mu.Lock()
			defer mu.Unlock()
			sends++
			if sends == 1 {
				return nil // lost: the step times out
			}
			answeredAt = time.Now() // the resend, answered at once
			return &shipmentScheduled
		}}, kgo.ProducerLinger(0))

	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	t.Cleanup(func() { _ = tp.Shutdown(t.Context()) })
	sleeps := &kgoSleeps{}
	clock := &testClock{}
	done := &finishedAt{at: map[string]time.Time{}}
	e.startRuntime(saga.WithClock(clock), saga.WithHooks(done), saga.WithTracerProvider(tp), saga.WithClientOptions([]kgo.Opt{kgo.WithLogger(sleeps)}...))
	e.start("slow")
	waitFor(t, "the first shipping command", func() bool { return shipping.count(scheduleShipment.Type+" slow") == 1 })
	sleepsBefore := len(sleeps.list())

	fired := time.Now()
	clock.Advance(31 * time.Second) // shipping's timeout is the default 30s
	var finished time.Time
	waitFor(t, "the saga to finish on the answer to the resend", func() bool {
		var ok bool
		finished, ok = done.get("slow")
		return ok
	})
	mu.Lock()
	answered := answeredAt
	mu.Unlock()

	// What the spans say: the timer's span covers its batch's transaction;
	// the last inbox process span is the runtime picking the answer up.
	var timer, pickup sdktrace.ReadOnlySpan
	for _, s := range spans.Ended() {
		switch s.Name() {
		case "orders timeout":
			timer = s
		case "orders.inbox process":
			if pickup == nil || s.StartTime().After(pickup.StartTime()) {
				pickup = s
			}
		}
	}
	if timer == nil || pickup == nil {
		t.Fatalf("no timer span (%v) or inbox process span (%v)", timer, pickup)
	}
	timerSpan := timer.EndTime().Sub(timer.StartTime())
	pickedUp := pickup.StartTime().Sub(answered)
	delay := finished.Sub(answered)
	var sleepsAfter []time.Duration
	for _, at := range sleeps.list()[sleepsBefore:] {
		sleepsAfter = append(sleepsAfter, at.Sub(fired).Round(time.Millisecond))
	}
	t.Logf("after the timer fired: resend answered at +%v, timer span %v, answer picked up %v after it was given, saga finished %v after it; kgo post-commit 500ms sleeps at %v",
		answered.Sub(fired).Round(time.Millisecond), timerSpan.Round(time.Millisecond), pickedUp.Round(time.Millisecond),
		delay.Round(time.Millisecond), sleepsAfter)
	const limit = 300 * time.Millisecond // the stall was 500 ms; 5–8 ms without it
	if delay > limit {
		t.Errorf("the answer to the resend was applied %v after the participant gave it, want under %v (timer span %v, picked up after %v)",
			delay.Round(time.Millisecond), limit, timerSpan.Round(time.Millisecond), pickedUp.Round(time.Millisecond))
	}
	if timerSpan > limit {
		t.Errorf("the timer's span lasted %v, want under %v: its transaction should end as soon as it commits", timerSpan.Round(time.Millisecond), limit)
	}
}
