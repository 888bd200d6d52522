package saga

import (
	"slices"
	"time"

	"github.com/sagapipe/sagapipe/statemachine"
)

// Terminal and fixed states of every saga. Step states are "<step>.Pending"
// (its command is out) and "<step>.Compensating" (its compensation is out).
const (
	StateNew                statemachine.State = "New"
	StateCompleted          statemachine.State = "Completed"
	StateCompensated        statemachine.State = "Compensated"
	StateCompensationFailed statemachine.State = "CompensationFailed"
)

// PendingState is the state of a saga waiting for step's reply.
func PendingState(step string) statemachine.State { return statemachine.State(step + ".Pending") }

// CompensatingState is the state of a saga waiting for step's compensation.
func CompensatingState(step string) statemachine.State {
	return statemachine.State(step + ".Compensating")
}

// Instance is a saga's data and bookkeeping: everything its state machine
// folds from the journal besides the state itself.
type Instance[D any] struct {
	Data D
	// Completed lists the steps that succeeded, in order.
	Completed []string
	// Attempt counts the sends of the command or compensation now out
	// (1 for the first send).
	Attempt int
	// Deadline is when the saga must have finished its steps (zero: no
	// deadline; see Builder.Deadline).
	Deadline time.Time
	// Stuck is, in CompensationFailed, the step whose compensation was
	// given up: a resume sends it again.
	Stuck string
	// Resumes counts the operator's resumes.
	Resumes int
}

// EffectKind says what an Effect asks the runtime to do.
type EffectKind int

const (
	// Send pipes a command (or a compensation) to a step's topic.
	Send EffectKind = iota + 1
	// SetTimer asks for a timeout event After from the event's time.
	SetTimer
	// Finish reports that the saga reached its terminal state Outcome.
	Finish
)

// Effect is what applying an event asks the runtime to do.
type Effect struct {
	Kind         EffectKind
	Step         string
	Compensation bool
	Attempt      int
	// Send: where, what type and what.
	Topic     string
	EventType string
	Command   any
	// SetTimer: when, from the event's time.
	After time.Duration
	// LongRetry marks the Send of a step that cannot be given up, resent
	// past its retries.
	LongRetry bool
	// Resume is, for a compensation sent after an operator's resume, how
	// many resumes there were (its command IDs differ from earlier ones).
	Resume int
	// Finish: the terminal state.
	Outcome statemachine.State
}

// TimerFired is the payload of a timeout event: which send it times out.
type TimerFired struct {
	Step    string
	Attempt int
}

// Saga is a built saga definition: its state machine and the event types it
// understands.
type Saga[D any] struct {
	name       string
	dataSchema string
	start      ReplySpec[D]
	steps      []StepBuilder[D]
	outcome    *outcomeSpec[D]
	deadline   time.Duration
	version    int
	machine    *statemachine.Machine[Instance[D], Effect]

	// The topics' names, made once: the runtime names them per record.
	inboxTopic, journalTopic, stateTopic string
}

// Version returns the definition's version (see Builder.Version).
func (s *Saga[D]) Version() int { return s.version }

// OutcomeStep is the saga_step of outcome events.
const OutcomeStep = "outcome"

// OutcomeTopic is where the saga announces how it ended, or "" when it
// does not (see Builder.Outcome).
func (s *Saga[D]) OutcomeTopic() string {
	if s.outcome == nil {
		return ""
	}
	return s.outcome.topic
}

// finish returns the effects of ending in outcome: the outcome event, when
// the saga announces one, and Finish.
func (s *Saga[D]) finish(outcome statemachine.State, in Instance[D]) []Effect {
	done := Effect{Kind: Finish, Outcome: outcome}
	if s.outcome == nil || in.Resumes > 0 {
		// A resumed saga announced its failure when it first ended in
		// CompensationFailed.
		return []Effect{done}
	}
	spec := s.outcome.failed
	if outcome == StateCompleted {
		spec = s.outcome.completed
	}
	return []Effect{{Kind: Send, Step: OutcomeStep, Attempt: 1, Topic: s.outcome.topic,
		EventType: spec.event.eventType, Command: spec.build(in.Data)}, done}
}

// Name returns the saga's name.
func (s *Saga[D]) Name() string { return s.name }

// StartEvent returns the ce_type and the Avro schema of the event that
// starts the saga.
func (s *Saga[D]) StartEvent() (ceType, avroSchema string) {
	return s.start.event.eventType, s.start.event.schema
}

// InboxTopic is where start events and replies arrive: "<name>.inbox".
func (s *Saga[D]) InboxTopic() string { return s.inboxTopic }

// JournalTopic is the saga's source of truth: "<name>.journal".
func (s *Saga[D]) JournalTopic() string { return s.journalTopic }

// Machine returns the state machine the definition compiled to.
func (s *Saga[D]) Machine() *statemachine.Machine[Instance[D], Effect] { return s.machine }

// StartEventType is the state-machine event type of the start event.
func (s *Saga[D]) StartEventType() statemachine.EventType {
	return statemachine.EventType("start/" + s.start.event.eventType)
}

// Cancelling a saga from outside: a record of ce_type CancelType on the
// inbox, with the saga's ID and no value (see CancelRecord), is the
// state-machine event CancelEventType.
const (
	CancelType                             = "sagapipe.Cancel"
	CancelEventType statemachine.EventType = "cancel"
)

// Resuming a CompensationFailed saga: a record of ce_type ResumeType on
// the inbox (see ResumeRecord) is the state-machine event ResumeEventType.
const (
	ResumeType                             = "sagapipe.Resume"
	ResumeEventType statemachine.EventType = "resume"
)

// ReplyEventType is the state-machine event type of a reply of ceType to
// step: replies are told apart by the step they answer, so two steps may
// share a reply type.
func ReplyEventType(step, ceType string) statemachine.EventType {
	return statemachine.EventType(step + "/" + ceType)
}

// TimeoutEventType is the state-machine event type of step's command
// timeout (compensation false) or its compensation timeout.
func TimeoutEventType(step string, compensation bool) statemachine.EventType {
	if compensation {
		return statemachine.EventType(step + "/compensation-timeout")
	}
	return statemachine.EventType(step + "/timeout")
}

func compile[D any](b *Builder[D]) (*Saga[D], error) {
	s := &Saga[D]{name: b.name, dataSchema: b.dataSchema, start: *b.start, outcome: b.outcome,
		inboxTopic: b.name + ".inbox", journalTopic: b.name + ".journal", stateTopic: b.name + ".state"}
	for _, st := range b.steps {
		c := *st
		if c.timeout == 0 {
			c.timeout = DefaultTimeout
		}
		c.retries = retriesOr(c.retries, DefaultRetries)
		c.compRetries = retriesOr(c.compRetries, DefaultCompensationRetries)
		s.steps = append(s.steps, c)
	}
	pivot := slices.IndexFunc(s.steps, func(st StepBuilder[D]) bool { return st.pivot })
	for i := range s.steps {
		// A step that cannot be compensated (no compensation, or after
		// the pivot) is never given up: given up, it could still be
		// applied, with nothing to undo it.
		s.steps[i].givesUp = s.steps[i].compensate != nil && (pivot < 0 || i <= pivot)
	}
	s.deadline = b.deadline
	s.version = max(b.version, 1)
	groups := s.groups()

	type T = statemachine.Transition[Instance[D], Effect]
	var ts []T
	ts = append(ts, T{From: StateNew, On: s.StartEventType(), To: groups.state(0),
		Action: func(in Instance[D], ev statemachine.Event) (Instance[D], []Effect) {
			s.start.apply(&in.Data, ev.Payload)
			in.Attempt = 1
			if s.deadline > 0 {
				in.Deadline = ev.Time.Add(s.deadline)
			}
			return in, s.enter(groups, 0, in, ev.Time)
		}})
	for _, g := range groups {
		if g.to > g.from {
			ts = append(ts, s.parallelTransitions(groups, g)...)
		}
	}

	for i := range s.steps {
		step := s.steps[i]
		pending := PendingState(step.name)
		afterPivot := pivot >= 0 && i > pivot
		if g := groups[groups.of(i)]; g.to > g.from {
			// A branch of a parallel group: only its compensation below.
			ts = append(ts, s.compensationTransitions(i, pivot)...)
			continue
		}
		// Where a failure of this step goes: the nearest earlier step that
		// can be compensated, or straight to Compensated.
		compensateFrom := s.compensationBefore(i)

		var next statemachine.State = StateCompleted
		if i+1 < len(s.steps) {
			next = groups.state(i + 1)
		}
		fails := func(in Instance[D], now time.Time) (Instance[D], []Effect) {
			in.Attempt = 1
			if compensateFrom < 0 {
				return in, s.finish(StateCompensated, in)
			}
			return in, send(s.steps[compensateFrom], in, true, now)
		}
		failTo := StateCompensated
		if compensateFrom >= 0 {
			failTo = CompensatingState(s.steps[compensateFrom].name)
		}
		// A step given up after its timeouts may have been applied all the
		// same (its participant was only slow): it is uncertain, and is
		// compensated first, like a completed step. Compensating a command
		// that was never applied is a no-op for the participant.
		uncertainTo, uncertain := failTo, fails
		if step.compensate != nil {
			uncertainTo = CompensatingState(step.name)
			uncertain = func(in Instance[D], now time.Time) (Instance[D], []Effect) {
				in.Attempt = 1
				return in, send(step, in, true, now)
			}
		}
		// A success after the saga's deadline does not start a step that
		// could still be given up: the step counts as uncertain, and the
		// saga compensates, this step first.
		if s.deadline > 0 && i+1 < len(s.steps) && s.steps[i+1].givesUp {
			ts = append(ts, T{From: pending, On: ReplyEventType(step.name, step.success.event.eventType), To: uncertainTo,
				GuardName: "saga deadline passed", Guard: deadlinePassed[D],
				Action: func(in Instance[D], ev statemachine.Event) (Instance[D], []Effect) {
					step.success.apply(&in.Data, ev.Payload)
					in.Completed = append(slices.Clip(in.Completed), step.name)
					return uncertain(in, ev.Time)
				}})
		}
		ts = append(ts, T{From: pending, On: ReplyEventType(step.name, step.success.event.eventType), To: next,
			Action: func(in Instance[D], ev statemachine.Event) (Instance[D], []Effect) {
				step.success.apply(&in.Data, ev.Payload)
				in.Completed = append(slices.Clip(in.Completed), step.name)
				in.Attempt = 1
				if i+1 < len(s.steps) {
					return in, s.enter(groups, i+1, in, ev.Time)
				}
				return in, s.finish(StateCompleted, in)
			}})
		switch {
		case step.failure != nil && afterPivot:
			// Past the pivot, a failure goes forward, where declared.
			fwd := s.steps[slices.IndexFunc(s.steps, func(st StepBuilder[D]) bool { return st.name == step.forward })]
			ts = append(ts, T{From: pending, On: ReplyEventType(step.name, step.failure.event.eventType), To: PendingState(fwd.name),
				Action: func(in Instance[D], ev statemachine.Event) (Instance[D], []Effect) {
					step.failure.apply(&in.Data, ev.Payload)
					in.Attempt = 1
					return in, send(fwd, in, false, ev.Time)
				}})
		case step.failure != nil:
			ts = append(ts, T{From: pending, On: ReplyEventType(step.name, step.failure.event.eventType), To: failTo,
				Action: func(in Instance[D], ev statemachine.Event) (Instance[D], []Effect) {
					step.failure.apply(&in.Data, ev.Payload)
					return fails(in, ev.Time)
				}})
		}
		giveUp := func(in Instance[D], ev statemachine.Event) (Instance[D], []Effect) { return uncertain(in, ev.Time) }
		if !step.givesUp {
			ts = append(ts, resendTransitions(step, pending)...)
		} else {
			// The saga's deadline gives the step up like its last timeout:
			// its timers are set to fire by the deadline.
			if s.deadline > 0 {
				ts = append(ts, T{From: pending, On: TimeoutEventType(step.name, false), To: uncertainTo,
					GuardName: "saga deadline passed",
					Guard: func(in Instance[D], ev statemachine.Event) bool {
						return currentSend(step)(in, ev) && deadlinePassed(in, ev)
					},
					Action: giveUp})
			}
			ts = append(ts, timeoutTransitions(step, false, step.retries, pending, uncertainTo, giveUp)...)
			// A cancel while the step waits leaves it uncertain too. Once
			// compensating, or finished, or waiting on a step that cannot
			// be compensated, a saga ignores a cancel.
			ts = append(ts, T{From: pending, On: CancelEventType, To: uncertainTo, Action: giveUp})
		}

		ts = append(ts, s.compensationTransitions(i, pivot)...)
	}

	// CompensationFailed is not terminal: an operator can resume it.
	terminal := []statemachine.State{StateCompleted, StateCompensated}
	m, err := statemachine.Build(statemachine.Definition[Instance[D], Effect]{
		Name:        s.name,
		Initial:     StateNew,
		Terminal:    terminal,
		Transitions: ts,
	})
	if err != nil {
		return nil, err
	}
	s.machine = m
	return s, nil
}

// compensationBefore returns the index of the nearest step before i that has
// a compensation, or -1.
func (s *Saga[D]) compensationBefore(i int) int {
	for j := i - 1; j >= 0; j-- {
		if s.steps[j].compensate != nil {
			return j
		}
	}
	return -1
}

// send returns the effects of sending step's command (or compensation) at
// in.Attempt: the command and its timer.
// at in.Attempt: the command and its timer. A command that can be given up
// waits no longer than the saga's deadline (now is the event's time).
func send[D any](step StepBuilder[D], in Instance[D], compensation bool, now time.Time) []Effect {
	cmd := step.command
	if compensation {
		cmd = step.compensate
	}
	wait := resendWait(step.timeout, in.Attempt)
	if !compensation && step.givesUp && !in.Deadline.IsZero() {
		wait = max(min(wait, in.Deadline.Sub(now)), 0)
	}
	return []Effect{
		{Kind: Send, Step: step.name, Compensation: compensation, Attempt: in.Attempt, Topic: step.topic,
			EventType: cmd.event.eventType, Command: cmd.build(in.Data), Resume: resumeOf(in, compensation)},
		{Kind: SetTimer, Step: step.name, Compensation: compensation, Attempt: in.Attempt, After: wait},
	}
}

// resumeOf is a compensation's Effect.Resume.
func resumeOf[D any](in Instance[D], compensation bool) int {
	if compensation {
		return in.Resumes
	}
	return 0
}

// maxBackoffFactor caps how much longer than its timeout a resend waits.
const maxBackoffFactor = 8

// resendWait is how long send number attempt waits for its reply: the step's
// timeout, doubling with every resend up to maxBackoffFactor times it, so a
// participant that keeps failing is not hammered. It depends on the attempt
// only, so replays compute the same deadlines.
func resendWait(timeout time.Duration, attempt int) time.Duration {
	factor := time.Duration(1) << min(max(attempt-1, 0), 3)
	return timeout * min(factor, maxBackoffFactor)
}

// retriesOr is a configured retry count: 0 is the default, a negative
// number none.
func retriesOr(n, def int) int {
	switch {
	case n == 0:
		return def
	case n < 0:
		return 0
	}
	return n
}

// timeoutTransitions handle the timer of a step's command or compensation:
// a timer of an earlier send is stale and accepted by no transition; the
// current one resends while retries remain, then gives up with giveUp.
func timeoutTransitions[D any](step StepBuilder[D], compensation bool, retries int, waiting, giveUpTo statemachine.State,
	giveUp statemachine.Action[Instance[D], Effect]) []statemachine.Transition[Instance[D], Effect] {
	on := TimeoutEventType(step.name, compensation)
	exhausted := statemachine.Transition[Instance[D], Effect]{From: waiting, On: on, To: giveUpTo,
		GuardName: "current send, retries exhausted", Guard: currentSend(step), Action: giveUp}
	if retries == 0 {
		exhausted.GuardName = "current send"
		return []statemachine.Transition[Instance[D], Effect]{exhausted}
	}
	return []statemachine.Transition[Instance[D], Effect]{
		{From: waiting, On: on, To: waiting, GuardName: "current send, retries left",
			Guard: func(in Instance[D], ev statemachine.Event) bool {
				return currentSend(step)(in, ev) && in.Attempt <= retries
			},
			Action: func(in Instance[D], ev statemachine.Event) (Instance[D], []Effect) {
				in.Attempt++
				return in, send(step, in, compensation, ev.Time)
			}},
		exhausted,
	}
}

// resendTransitions handle the timer of a step that cannot be given up:
// the current send's timer resends it, past its retries as a long retry.
func resendTransitions[D any](step StepBuilder[D], waiting statemachine.State) []statemachine.Transition[Instance[D], Effect] {
	return []statemachine.Transition[Instance[D], Effect]{{From: waiting, On: TimeoutEventType(step.name, false), To: waiting,
		GuardName: "current send (never given up)", Guard: currentSend(step),
		Action: func(in Instance[D], ev statemachine.Event) (Instance[D], []Effect) {
			in.Attempt++
			effects := send(step, in, false, ev.Time)
			effects[0].LongRetry = in.Attempt > step.retries+1
			return in, effects
		}}}
}

// deadlinePassed tells whether the saga's deadline has passed at the
// event's time.
func deadlinePassed[D any](in Instance[D], ev statemachine.Event) bool {
	return !in.Deadline.IsZero() && !ev.Time.Before(in.Deadline)
}

// currentSend tells whether a timer event is the one of the send now out.
func currentSend[D any](step StepBuilder[D]) statemachine.Guard[Instance[D]] {
	return func(in Instance[D], ev statemachine.Event) bool {
		t, ok := ev.Payload.(TimerFired)
		return ok && t.Step == step.name && t.Attempt == in.Attempt
	}
}
