package saga

import (
	"slices"
	"time"

	"github.com/sagapipe/sagapipe/statemachine"
)

// stepGroup is a run of steps sent together: one step, or the branches of
// a parallel group (StepBuilder.Parallel), steps[from..to].
type stepGroup struct {
	from, to int
	name     string // the step's name, or the branches' joined by "+"
}

type stepGroups []stepGroup

// groups splits the steps into their groups, in order.
func (s *Saga[D]) groups() stepGroups {
	var gs stepGroups
	for i, st := range s.steps {
		if st.parallel && len(gs) > 0 {
			g := &gs[len(gs)-1]
			g.to, g.name = i, g.name+"+"+st.name
			continue
		}
		gs = append(gs, stepGroup{from: i, to: i, name: st.name})
	}
	return gs
}

// of returns the index of the group holding step i.
func (gs stepGroups) of(i int) int {
	return slices.IndexFunc(gs, func(g stepGroup) bool { return g.from <= i && i <= g.to })
}

// state is the pending state of the group starting at step i.
func (gs stepGroups) state(i int) statemachine.State { return PendingState(gs[gs.of(i)].name) }

// enter returns the effects of starting the group that begins at step i:
// its command, or every branch's command and the group's one timer.
func (s *Saga[D]) enter(gs stepGroups, i int, in Instance[D], now time.Time) []Effect {
	g := gs[gs.of(i)]
	if g.to == g.from {
		return send(s.steps[i], in, false, now)
	}
	return s.sendBranches(g, in, now)
}

// sendBranches sends the commands of g's branches that have not succeeded
// yet, at in.Attempt, and sets the group's timer: the longest of their
// waits, by the saga's deadline.
func (s *Saga[D]) sendBranches(g stepGroup, in Instance[D], now time.Time) []Effect {
	var effects []Effect
	var wait time.Duration
	for j := g.from; j <= g.to; j++ {
		st := s.steps[j]
		if slices.Contains(in.Completed, st.name) {
			continue
		}
		e := send(st, in, false, now)
		effects = append(effects, e[0])
		wait = max(wait, e[1].After)
	}
	return append(effects, Effect{Kind: SetTimer, Step: g.name, Attempt: in.Attempt, After: wait})
}

// parallelTransitions are a parallel group's: a branch's success joins it
// (the last one moves on), a branch's failure, the group's timeouts given
// up, its deadline or a cancel compensate every branch, in reverse, then
// the steps before.
func (s *Saga[D]) parallelTransitions(gs stepGroups, g stepGroup) []statemachine.Transition[Instance[D], Effect] {
	type T = statemachine.Transition[Instance[D], Effect]
	pending := PendingState(g.name)
	last := s.steps[g.to] // every branch has a compensation (Build checks)
	compensate := func(in Instance[D], ev statemachine.Event) (Instance[D], []Effect) {
		in.Attempt = 1
		return in, send(last, in, true, ev.Time)
	}
	compensating := CompensatingState(last.name)
	var next statemachine.State = StateCompleted
	if g.to+1 < len(s.steps) {
		next = gs.state(g.to + 1)
	}
	var ts []T
	for j := g.from; j <= g.to; j++ {
		st := s.steps[j]
		others := func(in Instance[D]) bool { // every other branch succeeded
			for k := g.from; k <= g.to; k++ {
				if k != j && !slices.Contains(in.Completed, s.steps[k].name) {
					return false
				}
			}
			return true
		}
		fresh := func(in Instance[D]) bool { return !slices.Contains(in.Completed, st.name) }
		join := func(in Instance[D], ev statemachine.Event) Instance[D] {
			st.success.apply(&in.Data, ev.Payload)
			in.Completed = append(slices.Clip(in.Completed), st.name)
			return in
		}
		on := ReplyEventType(st.name, st.success.event.eventType)
		if s.deadline > 0 && g.to+1 < len(s.steps) && s.steps[g.to+1].givesUp {
			// The last branch's success after the deadline: no step that
			// could be given up starts; every branch is compensated.
			ts = append(ts, T{From: pending, On: on, To: compensating, GuardName: "the other branches succeeded, saga deadline passed",
				Guard: func(in Instance[D], ev statemachine.Event) bool {
					return fresh(in) && others(in) && deadlinePassed(in, ev)
				},
				Action: func(in Instance[D], ev statemachine.Event) (Instance[D], []Effect) {
					return compensate(join(in, ev), ev)
				}})
		}
		ts = append(ts,
			T{From: pending, On: on, To: next, GuardName: "the other branches succeeded",
				Guard: func(in Instance[D], _ statemachine.Event) bool { return fresh(in) && others(in) },
				Action: func(in Instance[D], ev statemachine.Event) (Instance[D], []Effect) {
					in = join(in, ev)
					in.Attempt = 1
					if g.to+1 < len(s.steps) {
						return in, s.enter(gs, g.to+1, in, ev.Time)
					}
					return in, s.finish(StateCompleted, in)
				}},
			T{From: pending, On: on, To: pending, GuardName: "other branches pending",
				Guard:  func(in Instance[D], _ statemachine.Event) bool { return fresh(in) && !others(in) },
				Action: func(in Instance[D], ev statemachine.Event) (Instance[D], []Effect) { return join(in, ev), nil }})
		if st.failure != nil {
			ts = append(ts, T{From: pending, On: ReplyEventType(st.name, st.failure.event.eventType), To: compensating,
				Action: func(in Instance[D], ev statemachine.Event) (Instance[D], []Effect) {
					st.failure.apply(&in.Data, ev.Payload)
					return compensate(in, ev)
				}})
		}
	}
	current := func(in Instance[D], ev statemachine.Event) bool {
		t, ok := ev.Payload.(TimerFired)
		return ok && t.Step == g.name && t.Attempt == in.Attempt
	}
	// The fewest retries of its branches: a branch that asked for none
	// (its participant is not idempotent, say) is not resent for another.
	retries := s.steps[g.from].retries
	for j := g.from; j <= g.to; j++ {
		retries = min(retries, s.steps[j].retries)
	}
	timeout := TimeoutEventType(g.name, false)
	if s.deadline > 0 {
		ts = append(ts, T{From: pending, On: timeout, To: compensating, GuardName: "saga deadline passed",
			Guard: func(in Instance[D], ev statemachine.Event) bool {
				return current(in, ev) && deadlinePassed(in, ev)
			},
			Action: compensate})
	}
	if retries > 0 {
		ts = append(ts, T{From: pending, On: timeout, To: pending, GuardName: "current send, retries left",
			Guard: func(in Instance[D], ev statemachine.Event) bool { return current(in, ev) && in.Attempt <= retries },
			Action: func(in Instance[D], ev statemachine.Event) (Instance[D], []Effect) {
				in.Attempt++
				return in, s.sendBranches(g, in, ev.Time)
			}})
	}
	// Branches that never answered are uncertain: with the others, they
	// are compensated.
	ts = append(ts,
		T{From: pending, On: timeout, To: compensating, GuardName: "current send, retries exhausted", Guard: current, Action: compensate},
		T{From: pending, On: CancelEventType, To: compensating, Action: compensate})
	return ts
}

// compensationTransitions are step i's compensation's: confirmed, the
// compensation moves to the step before; given up, the saga ends in
// CompensationFailed, which an operator can resume.
func (s *Saga[D]) compensationTransitions(i, pivot int) []statemachine.Transition[Instance[D], Effect] {
	type T = statemachine.Transition[Instance[D], Effect]
	step := s.steps[i]
	if step.compensate == nil || (pivot >= 0 && i > pivot) {
		return nil
	}
	var ts []T
	compensating := CompensatingState(step.name)
	before := s.compensationBefore(i)
	var doneTo statemachine.State = StateCompensated
	if before >= 0 {
		doneTo = CompensatingState(s.steps[before].name)
	}
	ts = append(ts, T{From: compensating, On: ReplyEventType(step.name, step.compAck.eventType), To: doneTo,
		Action: func(in Instance[D], ev statemachine.Event) (Instance[D], []Effect) {
			in.Attempt = 1
			if before < 0 {
				return in, s.finish(StateCompensated, in)
			}
			return in, send(s.steps[before], in, true, ev.Time)
		}})
	ts = append(ts, timeoutTransitions(step, true, step.compRetries, compensating, StateCompensationFailed,
		func(in Instance[D], _ statemachine.Event) (Instance[D], []Effect) {
			in.Stuck = step.name
			return in, s.finish(StateCompensationFailed, in)
		})...)
	// An operator's resume sends the compensation that was given up
	// again, from attempt 1; the steps before it follow.
	ts = append(ts, T{From: StateCompensationFailed, On: ResumeEventType, To: compensating,
		GuardName: "compensation of " + step.name + " given up",
		Guard:     func(in Instance[D], _ statemachine.Event) bool { return in.Stuck == step.name },
		Action: func(in Instance[D], ev statemachine.Event) (Instance[D], []Effect) {
			in.Stuck, in.Attempt = "", 1
			in.Resumes++
			return in, send(step, in, true, ev.Time)
		}})
	return ts
}
