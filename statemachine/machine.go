package statemachine

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// State names a state of a machine.
type State string

// EventType names a kind of event, e.g. "orders.PaymentCharged".
type EventType string

// Event is one input to a machine. Everything an action may depend on
// besides the data is in here: its time and ID are inputs, recorded with the
// event, never read from a clock or a generator while applying it.
type Event struct {
	Type    EventType
	ID      string
	Time    time.Time
	Payload any
}

// Guard decides whether a transition accepts an event. It must be pure: a
// function of its arguments only.
type Guard[D any] func(data D, ev Event) bool

// Action computes the data after a transition and the effects it asks for
// (commands to send, timers to set). It must be pure: no clock (use
// ev.Time), no randomness (take IDs from ev.ID), no I/O, no iteration over
// maps whose order matters. Replaying a journal relies on it.
type Action[D, F any] func(data D, ev Event) (D, []F)

// Transition moves the machine from From to To on an event of type On, when
// Guard (optional) accepts it.
type Transition[D, F any] struct {
	From State
	On   EventType
	To   State
	// GuardName labels the guard in diagrams and errors; required with Guard.
	GuardName string
	Guard     Guard[D]
	// Action (optional) updates the data and emits effects; without it the
	// data is unchanged and there are no effects.
	Action Action[D, F]
}

// Definition is a machine written down: build it with Build.
type Definition[D, F any] struct {
	Name        string
	Initial     State
	Terminal    []State
	Transitions []Transition[D, F]
}

// Machine is a built, validated state machine. It holds no state of its
// own: Apply takes the current state and data and returns the next, so one
// Machine serves any number of instances concurrently.
//
// Determinism contract: for the same state, data and event, Apply returns
// the same result, every time, on every machine. It evaluates transitions in
// definition order and calls only the guards and actions, which must be
// pure (see Action).
type Machine[D, F any] struct {
	def      Definition[D, F]
	byKey    map[transitionKey][]int // indexes into def.Transitions, in order
	states   []State                 // every state, in order of first mention
	terminal map[State]bool
}

type transitionKey struct {
	from State
	on   EventType
}

// ErrNoTransition: no transition accepts the event in the current state.
var ErrNoTransition = errors.New("statemachine: no transition accepts the event")

// NoTransitionError names the state and the event no transition accepted.
type NoTransitionError struct {
	Machine string
	State   State
	Event   EventType
	// Guards lists the guards that refused, when transitions existed.
	Guards []string
}

func (e *NoTransitionError) Error() string {
	msg := fmt.Sprintf("statemachine %s: no transition from state %q on event %q", e.Machine, e.State, e.Event)
	if len(e.Guards) > 0 {
		msg += fmt.Sprintf(" (guards refused: %s)", strings.Join(e.Guards, ", "))
	}
	return msg
}

func (e *NoTransitionError) Is(target error) bool { return target == ErrNoTransition }

// Build validates def and returns its machine, or every problem found:
// no name or initial state, transitions without a source, target or event,
// a guard without a name, transitions out of terminal states, ambiguous
// transitions (two for one state and event where an earlier one has no
// guard), and states that cannot be reached from the initial one.
func Build[D, F any](def Definition[D, F]) (*Machine[D, F], error) {
	var errs []error
	if def.Name == "" {
		errs = append(errs, errors.New("statemachine: definition has no Name"))
	}
	if def.Initial == "" {
		errs = append(errs, fmt.Errorf("statemachine %s: no Initial state", def.Name))
	}
	m := &Machine[D, F]{def: def, byKey: map[transitionKey][]int{}, terminal: map[State]bool{}}
	seen := map[State]bool{}
	addState := func(s State) {
		if s != "" && !seen[s] {
			seen[s] = true
			m.states = append(m.states, s)
		}
	}
	addState(def.Initial)
	for _, s := range def.Terminal {
		m.terminal[s] = true
	}
	for i, t := range def.Transitions {
		where := fmt.Sprintf("statemachine %s: transition %d (%s --%s--> %s)", def.Name, i, t.From, t.On, t.To)
		if t.From == "" || t.To == "" || t.On == "" {
			errs = append(errs, fmt.Errorf("%s: From, On and To are all required", where))
			continue
		}
		if (t.Guard == nil) != (t.GuardName == "") {
			errs = append(errs, fmt.Errorf("%s: Guard and GuardName go together", where))
		}
		if m.terminal[t.From] {
			errs = append(errs, fmt.Errorf("%s: leaves terminal state %q", where, t.From))
		}
		key := transitionKey{t.From, t.On}
		for _, j := range m.byKey[key] {
			if def.Transitions[j].Guard == nil {
				errs = append(errs, fmt.Errorf("%s: unreachable, transition %d takes every %q in %q first (give it a guard)", where, j, t.On, t.From))
			}
		}
		m.byKey[key] = append(m.byKey[key], i)
		addState(t.From)
		addState(t.To)
	}
	for _, s := range def.Terminal {
		addState(s)
	}
	if def.Initial != "" {
		reached := m.reachable()
		for _, s := range m.states {
			if !reached[s] {
				errs = append(errs, fmt.Errorf("statemachine %s: state %q cannot be reached from %q", def.Name, s, def.Initial))
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return m, nil
}

func (m *Machine[D, F]) reachable() map[State]bool {
	reached := map[State]bool{m.def.Initial: true}
	frontier := []State{m.def.Initial}
	for len(frontier) > 0 {
		s := frontier[0]
		frontier = frontier[1:]
		for _, t := range m.def.Transitions {
			if t.From == s && !reached[t.To] {
				reached[t.To] = true
				frontier = append(frontier, t.To)
			}
		}
	}
	return reached
}

// Name returns the machine's name.
func (m *Machine[D, F]) Name() string { return m.def.Name }

// Initial returns the state every instance starts in.
func (m *Machine[D, F]) Initial() State { return m.def.Initial }

// States returns every state, in order of first mention.
func (m *Machine[D, F]) States() []State { return slices.Clone(m.states) }

// IsTerminal reports whether s is a terminal state.
func (m *Machine[D, F]) IsTerminal(s State) bool { return m.terminal[s] }

// Result is what applying one event did.
type Result[D, F any] struct {
	From, To State
	Data     D
	Effects  []F
	// Transition is the index, in the definition, of the transition taken.
	Transition int
}

// Apply applies ev to an instance in state with data. It returns the next
// state, data and effects, or a *NoTransitionError (ErrNoTransition) when no
// transition accepts the event; the instance is then unchanged.
func (m *Machine[D, F]) Apply(state State, data D, ev Event) (Result[D, F], error) {
	var refused []string
	for _, i := range m.byKey[transitionKey{state, ev.Type}] {
		t := m.def.Transitions[i]
		if t.Guard != nil && !t.Guard(data, ev) {
			refused = append(refused, t.GuardName)
			continue
		}
		next, effects := data, []F(nil)
		if t.Action != nil {
			next, effects = t.Action(data, ev)
		}
		return Result[D, F]{From: state, To: t.To, Data: next, Effects: effects, Transition: i}, nil
	}
	return Result[D, F]{From: state, To: state, Data: data},
		&NoTransitionError{Machine: m.def.Name, State: state, Event: ev.Type, Guards: refused}
}

// Replay folds events into an instance that starts in the initial state with
// data, as rebuilding from a journal does, and returns where it ends. Effects
// are dropped: they happened when the events were first applied.
func (m *Machine[D, F]) Replay(data D, events []Event) (State, D, error) {
	state := m.def.Initial
	for i, ev := range events {
		r, err := m.Apply(state, data, ev)
		if err != nil {
			return state, data, fmt.Errorf("statemachine %s: replaying event %d (%s): %w", m.def.Name, i, ev.ID, err)
		}
		state, data = r.To, r.Data
	}
	return state, data, nil
}

// Mermaid describes the machine as a Mermaid state diagram, in definition
// order, so the same machine always gives the same text.
func (m *Machine[D, F]) Mermaid() string {
	var b strings.Builder
	b.WriteString("stateDiagram-v2\n")
	fmt.Fprintf(&b, "    [*] --> %s\n", mermaidID(m.def.Initial))
	for _, t := range m.def.Transitions {
		label := string(t.On)
		if t.GuardName != "" {
			label += " [" + t.GuardName + "]"
		}
		fmt.Fprintf(&b, "    %s --> %s : %s\n", mermaidID(t.From), mermaidID(t.To), label)
	}
	for _, s := range m.def.Terminal {
		fmt.Fprintf(&b, "    %s --> [*]\n", mermaidID(s))
	}
	return b.String()
}

// mermaidID makes a state name safe as a Mermaid identifier.
func mermaidID(s State) string {
	return strings.Map(func(r rune) rune {
		if r == '_' || (r >= '0' && r <= '9') || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') {
			return r
		}
		return '_'
	}, string(s))
}
