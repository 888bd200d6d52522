package saga

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"time"

	"github.com/sagapipe/sagapipe/schema"
)

// EventDef declares an event or command type: its ce_type and the Avro
// schema of its Go type T.
type EventDef[T any] struct {
	Type   string
	Schema string
}

// Event declares an event or command type for use in a saga definition.
func Event[T any](eventType, avroSchema string) EventDef[T] {
	return EventDef[T]{Type: eventType, Schema: avroSchema}
}

// Declared returns the ce_type and the Avro schema: an EventDef of any Go
// type, for lists of declarations (participant.Service.Replies).
func (d EventDef[T]) Declared() (ceType, avroSchema string) { return d.Type, d.Schema }

// codec is a schema.Codec with its Go type erased, so that the steps of one
// saga, whose commands and replies all have their own types, fit one slice.
type codec interface {
	encode(ctx context.Context, topic string, v any) ([]byte, error)
	decode(ctx context.Context, data []byte) (any, error)
}

type typedCodec[T any] struct{ c *schema.Codec[T] }

func (t typedCodec[T]) encode(ctx context.Context, topic string, v any) ([]byte, error) {
	typed, ok := v.(T)
	if !ok {
		return nil, fmt.Errorf("saga: encoding %T with the codec of %T", v, *new(T))
	}
	return t.c.Encode(ctx, topic, &typed)
}

func (t typedCodec[T]) decode(ctx context.Context, data []byte) (any, error) {
	return t.c.Decode(ctx, data)
}

// eventSpec is an EventDef with its type erased.
type eventSpec struct {
	eventType string
	schema    string
	goType    reflect.Type
	newCodec  func(*schema.Serde) (codec, error)
}

func specOf[T any](def EventDef[T]) eventSpec {
	return eventSpec{eventType: def.Type, schema: def.Schema, goType: reflect.TypeFor[T](), newCodec: func(s *schema.Serde) (codec, error) {
		c, err := schema.NewCodec[T](s, def.Schema)
		return typedCodec[T]{c}, err
	}}
}

// CommandSpec says how a step's command (or compensation) is built from the
// saga's data.
type CommandSpec[D any] struct {
	event eventSpec
	build func(D) any
}

// Cmd declares a command of type def built from the saga's data by build.
// build must be pure: it runs again whenever the command is resent.
func Cmd[D, C any](def EventDef[C], build func(data D) C) CommandSpec[D] {
	return CommandSpec[D]{event: specOf(def), build: func(d D) any { return build(d) }}
}

// ReplySpec says how a reply updates the saga's data.
type ReplySpec[D any] struct {
	event eventSpec
	apply func(data *D, reply any)
}

// Reply declares a reply of type def that updates the saga's data with
// apply (nil: the data is unchanged). apply must be pure: it runs again
// whenever the saga is rebuilt from its journal.
func Reply[D, R any](def EventDef[R], apply func(data *D, reply R)) ReplySpec[D] {
	return ReplySpec[D]{event: specOf(def), apply: func(d *D, r any) {
		if apply != nil {
			apply(d, r.(R))
		}
	}}
}

// DefaultTimeout is how long a step waits for its reply unless Timeout says
// otherwise.
const DefaultTimeout = 30 * time.Second

// DefaultRetries is how often a timed-out command is resent before the
// step is given up (as uncertain: it is compensated first).
const DefaultRetries = 3

// DefaultCompensationRetries is how often a timed-out compensation is
// resent before the saga ends in CompensationFailed. The waits double up
// to 8 times the step's timeout: with the default timeout, ten resends
// take about 35 minutes.
const DefaultCompensationRetries = 10

// StepBuilder defines one step; see Builder.Step.
type StepBuilder[D any] struct {
	name        string
	topic       string
	command     *CommandSpec[D]
	success     *ReplySpec[D]
	failure     *ReplySpec[D]
	compensate  *CommandSpec[D]
	compAck     *eventSpec
	timeout     time.Duration
	retries     int
	compRetries int
	pivot       bool
	forward     string
	parallel    bool
	givesUp     bool // compiled: whether the step can be given up (see compile)
}

// Command sets the topic the step's command is piped to and how it is built.
func (s *StepBuilder[D]) Command(topic string, cmd CommandSpec[D]) *StepBuilder[D] {
	s.topic, s.command = topic, &cmd
	return s
}

// OnSuccess sets the reply that completes the step.
func (s *StepBuilder[D]) OnSuccess(r ReplySpec[D]) *StepBuilder[D] { s.success = &r; return s }

// OnFailure sets the reply that fails the step: the completed steps are
// then compensated in reverse order.
func (s *StepBuilder[D]) OnFailure(r ReplySpec[D]) *StepBuilder[D] { s.failure = &r; return s }

// Compensate sets the command that undoes the step, sent to the step's
// topic, and the reply that confirms it.
func Compensate[D, A any](s *StepBuilder[D], cmd CommandSpec[D], done EventDef[A]) *StepBuilder[D] {
	ack := specOf(done)
	s.compensate, s.compAck = &cmd, &ack
	return s
}

// Timeout sets how long the step waits for a reply before it resends the
// command (default DefaultTimeout). Each resend waits twice as long as the
// one before, up to 8 times the timeout.
func (s *StepBuilder[D]) Timeout(d time.Duration) *StepBuilder[D] { s.timeout = d; return s }

// Retries sets how often a timed-out command is resent before the step is
// given up (default DefaultRetries; 0 keeps the default, a negative number
// means none). A step that cannot be compensated (it has no compensation,
// or it comes after the pivot) is never given up: past its retries it is
// resent at the longest wait until it answers, with a log line and the
// metric sagapipe.saga.step.long_retries for each resend.
func (s *StepBuilder[D]) Retries(n int) *StepBuilder[D] { s.retries = n; return s }

// CompensationRetries sets how often a timed-out compensation is resent
// before the saga ends in CompensationFailed (default
// DefaultCompensationRetries; 0 keeps the default, a negative number means
// none).
func (s *StepBuilder[D]) CompensationRetries(n int) *StepBuilder[D] { s.compRetries = n; return s }

// Pivot marks the step as the saga's point of no return: it needs no
// compensation, a failure before it compensates the steps before it, and
// the steps after it only go forward: they are resent until they answer,
// never compensated, and a failure reply of one continues where its
// Forward says.
func (s *StepBuilder[D]) Pivot() *StepBuilder[D] { s.pivot = true; return s }

// Parallel runs the step alongside the step before it: their commands are
// sent together, and the saga moves on when every branch has succeeded
// (its state meanwhile is "<a>+<b>.Pending"). The group has one timer,
// the longest of its branches' timeouts; a timeout resends the branches
// that have not answered, as often as the fewest Retries of its branches. A branch's failure, the group given up after
// its retries, the saga's deadline or a cancel compensate every branch in
// reverse order (a branch that never applied its command answers its
// compensation as a no-op, by the participant contract), then the steps
// before. Every branch needs a compensation; a group cannot hold the
// pivot or come after it.
func (s *StepBuilder[D]) Parallel() *StepBuilder[D] { s.parallel = true; return s }

// Forward declares, for a step after the pivot, where the saga goes on
// when the step's failure reply (OnFailure) comes: the named step, a later
// one (an alternative: another carrier, a manual-handling queue).
func (s *StepBuilder[D]) Forward(step string) *StepBuilder[D] { s.forward = step; return s }

// Builder defines a saga over data D; Build validates it.
type Builder[D any] struct {
	name       string
	dataSchema string
	start      *ReplySpec[D]
	steps      []*StepBuilder[D]
	outcome    *outcomeSpec[D]
	deadline   time.Duration
	version    int
}

type outcomeSpec[D any] struct {
	topic             string
	completed, failed CommandSpec[D]
}

// New starts the definition of saga name over data D, whose Avro schema is
// dataSchema (it is how the saga's state is shown and snapshotted).
func New[D any](name, dataSchema string) *Builder[D] {
	return &Builder[D]{name: name, dataSchema: dataSchema}
}

// StartOn sets the event that starts a saga and how it fills the data.
func (b *Builder[D]) StartOn(r ReplySpec[D]) *Builder[D] { b.start = &r; return b }

// Outcome makes the saga announce how it ended: completed is piped to topic
// when it completes, failed when it ends compensated or with a failed
// compensation, both built from its data and sent in the transaction that
// ends it.
func (b *Builder[D]) Outcome(topic string, completed, failed CommandSpec[D]) *Builder[D] {
	b.outcome = &outcomeSpec[D]{topic: topic, completed: completed, failed: failed}
	return b
}

// Deadline gives every saga d from its start event to finish its steps:
// when it passes while the saga waits on a step that can be given up
// (before or at the pivot, with a compensation), that step is given up as
// uncertain and the saga compensates, as on a cancel. It is durable like
// the step timers (the start event's journaled time plus d). After the
// pivot, or once compensating, a saga is past it: it goes on.
func (b *Builder[D]) Deadline(d time.Duration) *Builder[D] { b.deadline = d; return b }

// Version numbers the definition (default 1). Each saga runs to its end on
// the version it started on: a deployment that changes a definition gives
// it the next version and registers the previous ones with the runtime
// (NewRuntime's older) until their sagas have finished.
func (b *Builder[D]) Version(n int) *Builder[D] { b.version = n; return b }

// Step adds a step; steps run in the order they are added.
func (b *Builder[D]) Step(name string) *StepBuilder[D] {
	s := &StepBuilder[D]{name: name}
	b.steps = append(b.steps, s)
	return s
}

// Build validates the definition, reporting every problem at once, and
// compiles it.
func (b *Builder[D]) Build() (*Saga[D], error) {
	var errs []error
	fail := func(format string, a ...any) {
		errs = append(errs, fmt.Errorf("saga %s: "+format, append([]any{b.name}, a...)...))
	}
	if b.name == "" {
		fail("the saga has no name")
	}
	checkSchema := func(what, text string) {
		if text == "" {
			fail("%s has no Avro schema", what)
			return
		}
		if _, err := schema.Parse(text); err != nil {
			fail("%s: Avro schema does not parse: %v", what, err)
		}
	}
	checkEvent := func(what string, e eventSpec) {
		if e.eventType == "" {
			fail("%s has no event type", what)
		}
		checkSchema(what+" ("+e.eventType+")", e.schema)
	}
	checkSchema("the saga's data", b.dataSchema)
	if b.start == nil {
		fail("no start event (StartOn)")
	} else {
		checkEvent("the start event", b.start.event)
	}
	if len(b.steps) == 0 {
		fail("no steps")
	}
	if b.deadline < 0 {
		fail("deadline %v is negative", b.deadline)
	}
	if b.version < 0 {
		fail("version %d: want 1 or more", b.version)
	}
	if o := b.outcome; o != nil {
		if o.topic == "" {
			fail("the outcome has no topic")
		}
		checkEvent("the completed outcome", o.completed.event)
		checkEvent("the failed outcome", o.failed.event)
	}
	seen := map[string]bool{}
	pivot := -1
	for i, s := range b.steps {
		if s.pivot {
			if pivot >= 0 {
				fail("steps %q and %q are both the pivot: a saga has one point of no return", b.steps[pivot].name, s.name)
			}
			pivot = i
		}
	}
	index := map[string]int{}
	for i, s := range b.steps {
		index[s.name] = i
	}
	for i, s := range b.steps {
		afterPivot := pivot >= 0 && i > pivot
		where := fmt.Sprintf("step %d %q", i, s.name)
		switch {
		case s.name == "":
			fail("step %d has no name", i)
		case strings.ContainsAny(s.name, "+/ "):
			fail("step %d %q: a step name must not hold '+', '/' or spaces (they join parallel groups and IDs)", i, s.name)
		case seen[s.name]:
			fail("two steps are named %q", s.name)
		}
		seen[s.name] = true
		if s.command == nil || s.topic == "" {
			fail("%s has no command or command topic", where)
		} else {
			checkEvent(where+" command", s.command.event)
		}
		if s.success == nil {
			fail("%s has no success reply (OnSuccess)", where)
		} else {
			checkEvent(where+" success reply", s.success.event)
		}
		if s.failure != nil {
			checkEvent(where+" failure reply", s.failure.event)
			if s.success != nil && s.failure.event.eventType == s.success.event.eventType {
				fail("%s: success and failure replies are both %q", where, s.success.event.eventType)
			}
		}
		if s.compensate == nil && !s.pivot && !afterPivot && i < len(b.steps)-1 {
			fail("%s has side effects but no compensation: add Compensate, or mark it Pivot()", where)
		}
		if s.parallel {
			switch {
			case i == 0:
				fail("%s: Parallel on the first step: there is no step before it to run alongside", where)
			case s.compensate == nil || b.steps[i-1].compensate == nil:
				fail("%s: a parallel group's steps all need a compensation (a failed branch compensates the others)", where)
			case s.pivot || b.steps[i-1].pivot || afterPivot:
				fail("%s: a parallel group cannot hold the pivot or come after it", where)
			}
		}
		if afterPivot && s.compensate != nil {
			fail("%s comes after the pivot %q, so it is never compensated: drop its Compensate", where, b.steps[pivot].name)
		}
		if afterPivot && s.failure != nil && s.forward == "" {
			fail("%s comes after the pivot %q and has a failure reply: declare where the saga goes on with Forward(step)", where, b.steps[pivot].name)
		}
		if s.forward != "" {
			j, ok := index[s.forward]
			switch {
			case !afterPivot:
				fail("%s: Forward is for steps after the pivot (mark one step Pivot())", where)
			case s.failure == nil:
				fail("%s: Forward without a failure reply (OnFailure) to follow it", where)
			case !ok:
				fail("%s: Forward(%q) names no step", where, s.forward)
			case j <= pivot:
				fail("%s: Forward(%q) goes back to or before the pivot %q", where, s.forward, b.steps[pivot].name)
			case j <= i:
				// Its commands would carry the IDs and idempotency key the
				// participant answered (with the failure) before.
				fail("%s: Forward(%q) must name a step after it (an alternative), not itself or an earlier one", where, s.forward)
			}
		}
		if s.compensate != nil {
			checkEvent(where+" compensation", s.compensate.event)
			checkEvent(where+" compensation reply", *s.compAck)
		}
		if s.timeout < 0 {
			fail("%s: timeout %v is negative", where, s.timeout)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return compile(b)
}
