package statemachine_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/sagapipe/sagapipe/statemachine"
)

// order is the data of a small payment flow; effects are command names.
type order struct {
	Amount   int
	Attempts int
	Paid     bool
}

type ev = statemachine.Event

func paymentMachine(t *testing.T) *statemachine.Machine[order, string] {
	t.Helper()
	m, err := statemachine.Build(statemachine.Definition[order, string]{
		Name:     "payment",
		Initial:  "New",
		Terminal: []statemachine.State{"Paid", "Failed"},
		Transitions: []statemachine.Transition[order, string]{
			{From: "New", On: "Placed", To: "Charging", Action: func(d order, e ev) (order, []string) {
				d.Amount = e.Payload.(int)
				return d, []string{"Charge"}
			}},
			{From: "Charging", On: "Charged", To: "Paid", Action: func(d order, _ ev) (order, []string) {
				d.Paid = true
				return d, []string{"Ship"}
			}},
			{From: "Charging", On: "Declined", To: "Charging", GuardName: "attempts < 3",
				Guard: func(d order, _ ev) bool { return d.Attempts < 2 },
				Action: func(d order, _ ev) (order, []string) {
					d.Attempts++
					return d, []string{"Charge"}
				}},
			{From: "Charging", On: "Declined", To: "Failed"},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestApply(t *testing.T) {
	m := paymentMachine(t)
	tests := []struct {
		name        string
		state       statemachine.State
		data        order
		event       ev
		wantState   statemachine.State
		wantEffects string
		wantErr     error
	}{
		{"start", "New", order{}, ev{Type: "Placed", Payload: 42}, "Charging", "Charge", nil},
		{"success", "Charging", order{Amount: 42}, ev{Type: "Charged"}, "Paid", "Ship", nil},
		{"guarded retry", "Charging", order{Attempts: 1}, ev{Type: "Declined"}, "Charging", "Charge", nil},
		{"guard refuses, next transition", "Charging", order{Attempts: 2}, ev{Type: "Declined"}, "Failed", "", nil},
		{"no transition", "Paid", order{}, ev{Type: "Declined"}, "Paid", "", statemachine.ErrNoTransition},
		{"unknown event", "New", order{}, ev{Type: "Refunded"}, "New", "", statemachine.ErrNoTransition},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := m.Apply(tt.state, tt.data, tt.event)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err %v, want %v", err, tt.wantErr)
			}
			if r.To != tt.wantState || strings.Join(r.Effects, ",") != tt.wantEffects {
				t.Fatalf("-> %s %v, want %s %s", r.To, r.Effects, tt.wantState, tt.wantEffects)
			}
		})
	}
}

func TestNoTransitionErrorNamesStateAndEvent(t *testing.T) {
	_, err := paymentMachine(t).Apply("Paid", order{}, ev{Type: "Declined"})
	var nt *statemachine.NoTransitionError
	if !errors.As(err, &nt) || nt.State != "Paid" || nt.Event != "Declined" || nt.Machine != "payment" {
		t.Fatalf("got %v, want a NoTransitionError naming state Paid and event Declined", err)
	}
	if !strings.Contains(err.Error(), `"Paid"`) || !strings.Contains(err.Error(), `"Declined"`) {
		t.Fatalf("message %q does not name the state and event", err)
	}
}

func TestReplayIsDeterministic(t *testing.T) {
	m := paymentMachine(t)
	at := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	events := []ev{
		{Type: "Placed", ID: "e1", Time: at, Payload: 42},
		{Type: "Declined", ID: "e2", Time: at.Add(time.Second)},
		{Type: "Declined", ID: "e3", Time: at.Add(2 * time.Second)},
		{Type: "Charged", ID: "e4", Time: at.Add(3 * time.Second)},
	}
	// Applying one by one and replaying must agree, every time.
	state, data := m.Initial(), order{}
	for _, e := range events {
		r, err := m.Apply(state, data, e)
		if err != nil {
			t.Fatal(err)
		}
		state, data = r.To, r.Data
	}
	s, d, err := m.Replay(order{}, events)
	if err != nil {
		t.Fatal(err)
	}
	if s != state || d != data {
		t.Fatalf("replay gave %s %+v, applying gave %s %+v", s, d, state, data)
	}
	if state != "Paid" || data != (order{Amount: 42, Attempts: 2, Paid: true}) {
		t.Fatalf("ended %s %+v", state, data)
	}
	if _, _, err := m.Replay(order{}, []ev{{Type: "Charged", ID: "x"}}); !errors.Is(err, statemachine.ErrNoTransition) || !strings.Contains(err.Error(), "x") {
		t.Fatalf("replay of an impossible journal: %v, want ErrNoTransition naming the event", err)
	}
}

// TestOverlappingGuardsResolveInDefinitionOrder: when several guarded
// transitions accept an event, the first in the definition is taken,
// whatever the build, the instance or the event: a replay on another
// process takes the path the first run took. (Running one path twice in
// one process could not show it; an order that depends on map iteration,
// say, shows here.)
func TestOverlappingGuardsResolveInDefinitionOrder(t *testing.T) {
	const branches = 8
	var transitions []statemachine.Transition[order, string]
	for i := range branches {
		transitions = append(transitions, statemachine.Transition[order, string]{
			From: "A", On: "go", To: statemachine.State(fmt.Sprintf("S%d", i)), GuardName: fmt.Sprintf("amount >= %d", i),
			// Branch i accepts amounts of at least i: for amount a, branches 0..a all accept.
			Guard: func(d order, _ ev) bool { return d.Amount >= i },
		})
	}
	var terminal []statemachine.State
	for i := range branches {
		terminal = append(terminal, statemachine.State(fmt.Sprintf("S%d", i)))
	}
	for build := range 50 {
		m, err := statemachine.Build(statemachine.Definition[order, string]{Name: "overlap", Initial: "A", Terminal: terminal, Transitions: transitions})
		if err != nil {
			t.Fatal(err)
		}
		for amount := range branches {
			r, err := m.Apply("A", order{Amount: amount}, ev{Type: "go", ID: fmt.Sprintf("e-%d-%d", build, amount)})
			if err != nil {
				t.Fatal(err)
			}
			if r.To != "S0" || r.Transition != 0 {
				t.Fatalf("build %d, amount %d: took transition %d to %s, want the first declared (0, S0)", build, amount, r.Transition, r.To)
			}
		}
	}
}

func TestBuildReportsEveryProblem(t *testing.T) {
	noop := func(order, ev) bool { return true }
	_, err := statemachine.Build(statemachine.Definition[order, string]{
		Name:     "broken",
		Initial:  "A",
		Terminal: []statemachine.State{"Done"},
		Transitions: []statemachine.Transition[order, string]{
			{From: "A", On: "go", To: "Done"},
			{From: "A", On: "go", To: "B"},             // shadowed by the unguarded one before it
			{From: "Done", On: "again", To: "A"},       // leaves a terminal state
			{From: "A", On: "", To: "B"},               // no event
			{From: "A", On: "x", To: "B", Guard: noop}, // guard without a name
			{From: "Island", On: "y", To: "Island"},    // unreachable
		},
	})
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"unreachable, transition 0", "leaves terminal state", "required", "GuardName", `"Island" cannot be reached`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not report %q:\n%v", want, err)
		}
	}
}

func TestMermaid(t *testing.T) {
	want := `stateDiagram-v2
    [*] --> New
    New --> Charging : Placed
    Charging --> Paid : Charged
    Charging --> Charging : Declined [attempts < 3]
    Charging --> Failed : Declined
    Paid --> [*]
    Failed --> [*]
`
	if got := paymentMachine(t).Mermaid(); got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
}
