package service

import (
	"context"
	"errors"
	"slices"
	"strings"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/console"
	"github.com/sagapipe/sagapipe/dlq"
	"github.com/sagapipe/sagapipe/internal/telemetry"
	"github.com/sagapipe/sagapipe/saga"
	"github.com/sagapipe/sagapipe/statemachine"
)

// newConsole builds the web console served at /ui, on this service.
func (s *Service) newConsole(clientOpts []kgo.Opt) (*console.Console, error) {
	return console.New(console.Config{Backend: consoleBackend{s}, Token: s.cfg.APIToken, JaegerURL: s.cfg.JaegerUIURL,
		ClientOptions: clientOpts, Registry: s.serde, Metrics: s.tel.MetricsHandler(), Logger: s.log})
}

// consoleBackend is the service as the console sees it.
type consoleBackend struct{ s *Service }

// definer and timed are what a registered saga and its runtime tell the
// console (every Saga is a registered[D], every runtime a runtimeOf[D]).
type definer interface {
	definition() console.Definition
}

type timed interface {
	consoleStatus(ctx context.Context, id string) (console.Saga, bool, error)
}

func (r registered[D]) definition() console.Definition {
	m := r.s.Machine()
	var terminal []statemachine.State
	for _, st := range m.States() {
		if m.IsTerminal(st) {
			terminal = append(terminal, st)
		}
	}
	return console.Definition{Name: r.s.Name(), Initial: m.Initial(), States: m.States(), Terminal: terminal, Edges: m.Edges(),
		DeadLetterTopic: r.s.InboxTopic() + dlq.DefaultTopicSuffix}
}

// consoleStatus is what the owner knows beyond the journal: the timeout
// the saga waits for, its deadline and the step it gave up compensating.
func (r runtimeOf[D]) consoleStatus(ctx context.Context, id string) (console.Saga, bool, error) {
	st, ok, err := r.Status(ctx, id)
	if !ok || err != nil || st.Closed {
		return console.Saga{}, false, err
	}
	out := console.Saga{Deadline: st.Instance.Deadline, Stuck: st.Instance.Stuck}
	if t, ok := r.PendingTimer(id); ok {
		out.Timer = &console.Timer{Step: t.Step, Attempt: int(t.Attempt), Compensation: t.Compensation, At: t.Deadline}
	}
	return out, true, nil
}

func (b consoleBackend) Definitions() []console.Definition {
	defs := make([]console.Definition, 0, len(b.s.sagas))
	for _, sg := range b.s.sagas {
		defs = append(defs, sg.(definer).definition())
	}
	slices.SortFunc(defs, func(x, y console.Definition) int { return strings.Compare(x.Name, y.Name) })
	return defs
}

func (b consoleBackend) ListSagas(ctx context.Context, name string, q console.Query) (console.Page, error) {
	return b.s.sagaPage(ctx, name, q)
}

func (b consoleBackend) Saga(ctx context.Context, name, id string) (console.Saga, error) {
	rt, entries, owned, err := b.s.readSaga(ctx, name, id)
	if errors.Is(err, errUnknownSaga) || errors.Is(err, saga.ErrNoHistory) {
		return console.Saga{}, console.ErrNotFound
	}
	if err != nil {
		return console.Saga{}, err
	}
	out, _, err := rt.(timed).consoleStatus(ctx, id)
	if err != nil {
		return console.Saga{}, err
	}
	out.Name, out.ID, out.Data = name, id, toAvroJSON(owned.data)
	attempt := 1
	for _, e := range entries {
		if e.Outcome == saga.OutcomeApplied {
			out.State = e.ToState
			switch {
			case e.FromState != e.ToState:
				attempt = 1
			case e.TimerStep != "":
				attempt++ // a timeout that resent the command
			}
		}
		h := console.Entry{Time: e.Time, Event: e.EventType, EventID: e.CEID, From: e.FromState, To: e.ToState, Outcome: e.Outcome,
			RequestedBy: e.RequestedBy, Attempt: attempt}
		if sc := telemetry.ParseTraceParent(e.TraceParent); sc.IsValid() {
			h.TraceID = sc.TraceID().String()
		}
		out.History = append(out.History, h)
	}
	out.Terminal = rt.isTerminal(out.State)
	return out, nil
}

func (b consoleBackend) Cancel(ctx context.Context, name, id, source string) (string, error) {
	return b.consoleEvent(ctx, name, id, source, "cancel", saga.CancelRecord)
}

func (b consoleBackend) Resume(ctx context.Context, name, id, source string) (string, error) {
	return b.consoleEvent(ctx, name, id, source, "resume", saga.ResumeRecord)
}

func (b consoleBackend) consoleEvent(ctx context.Context, name, id, source, what string, record func(name, id, source string) *kgo.Record) (string, error) {
	eventID, err := b.s.requestOperatorEvent(ctx, name, id, source, what, record)
	if errors.Is(err, errUnknownSaga) {
		return "", console.ErrNotFound
	}
	return eventID, err
}
