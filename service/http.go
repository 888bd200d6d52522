package service

import (
	"cmp"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagapipe/sagapipe/console"
	"github.com/sagapipe/sagapipe/internal/telemetry"
	"github.com/sagapipe/sagapipe/saga"
	"github.com/sagapipe/sagapipe/schema"
)

// MaxBodyBytes bounds a POST body.
const MaxBodyBytes = 1 << 20

func (s *Service) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		sagas := map[string]bool{}
		for name := range s.sagas {
			rt, _ := s.runtime(name)
			sagas[name] = rt.Ready()
		}
		if !s.Ready() {
			writeJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "not ready: partitions not assigned or not restored yet", "sagas": sagas})
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"status": "ready", "sagas": sagas})
	})
	mux.Handle("GET /metrics", s.tel.MetricsHandler())
	// With api_token set, every /api call needs it, reads included: a
	// saga's data and journal are the business's.
	mux.Handle("GET /api/sagas/{name}", s.authorized(http.HandlerFunc(s.listSagas)))
	mux.Handle("GET /api/sagas/{name}/{id}", s.authorized(http.HandlerFunc(s.getSaga)))
	mux.Handle("POST /api/sagas/{name}", s.authorized(http.HandlerFunc(s.startSaga)))
	mux.Handle("POST /api/sagas/{name}/{id}/cancel", s.authorized(http.HandlerFunc(s.cancelSaga)))
	mux.Handle("POST /api/sagas/{name}/{id}/resume", s.authorized(http.HandlerFunc(s.resumeSaga)))
	// The web console (see package console): its own login and sessions.
	mux.Handle(console.Prefix+"/", s.console)
	mux.Handle(console.Prefix, s.console)
	return mux
}

type apiError struct {
	Error string `json:"error"`
	Field string `json:"field,omitempty"`
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// authorized requires the bearer token, when one is configured.
func (s *Service) authorized(h http.Handler) http.Handler {
	if s.cfg.APIToken == "" {
		return h
	}
	want := []byte("Bearer " + s.cfg.APIToken)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="sagapipe"`)
			writeJSON(w, http.StatusUnauthorized, apiError{Error: "missing or wrong bearer token (Authorization: Bearer <api_token>)"})
			return
		}
		h.ServeHTTP(w, r)
	})
}

// HistoryEntry is one journal entry as the API shows it.
type HistoryEntry struct {
	Time    time.Time `json:"time"`
	Event   string    `json:"event"`
	EventID string    `json:"event_id"`
	From    string    `json:"from"`
	To      string    `json:"to"`
	Outcome string    `json:"outcome"`
	// RequestedBy is who asked for an operator's event (cancel, resume).
	RequestedBy string `json:"requested_by,omitempty"`
	TraceID     string `json:"trace_id,omitempty"`
	SpanID      string `json:"span_id,omitempty"`
}

// SagaStatus is GET /api/sagas/{name}/{id}. State and history are the
// journal's as committed; Data is the saga's data: from memory when this
// instance owns the saga and it is live (it may then be a transaction ahead
// of the journal's last stable offset), else folded from its history.
type SagaStatus struct {
	Saga     string         `json:"saga"`
	ID       string         `json:"id"`
	State    string         `json:"state"`
	Terminal bool           `json:"terminal"`
	Data     any            `json:"data,omitempty"`
	History  []HistoryEntry `json:"history"`
}

func (s *Service) getSaga(w http.ResponseWriter, r *http.Request) {
	name, id := r.PathValue("name"), r.PathValue("id")
	rt, entries, owned, err := s.readSaga(r.Context(), name, id)
	switch {
	case errors.Is(err, errUnknownSaga):
		writeJSON(w, http.StatusNotFound, apiError{Error: fmt.Sprintf("no saga named %q is registered", name)})
	case errors.Is(err, saga.ErrNoHistory):
		writeJSON(w, http.StatusNotFound, apiError{Error: fmt.Sprintf("saga %s %q has no journal entries", name, id)})
	case err != nil:
		writeJSON(w, http.StatusBadGateway, apiError{Error: err.Error()})
	default:
		s.writeSaga(w, rt, name, id, entries, owned)
	}
}

// errUnknownSaga: no saga of that name is registered.
var errUnknownSaga = errors.New("service: no saga of that name is registered")

// readSaga reads a saga's journal entries and data: errUnknownSaga,
// saga.ErrNoHistory, or the failure to read them.
func (s *Service) readSaga(ctx context.Context, name, id string) (runtime, []saga.JournalEntry, sagaStatus, error) {
	rt, ok := s.runtime(name)
	if !ok {
		return nil, nil, sagaStatus{}, errUnknownSaga
	}
	// The owner knows where the saga's entries are; anyone else finds it
	// from the saga's snapshot. Either way one journal partition is read,
	// from the saga's first entry on.
	ctx, cancel := context.WithTimeout(ctx, historyTimeout)
	defer cancel()
	owned, isOwner, err := rt.status(ctx, id)
	var entries []saga.JournalEntry
	if err == nil {
		if isOwner {
			entries, err = saga.HistoryAt(ctx, s.clientOpts, s.serde, name, id, owned.journalPartition, owned.journalOffset)
		} else {
			entries, err = saga.History(ctx, s.clientOpts, s.serde, name, id)
		}
	}
	if err == nil && owned.data == nil {
		// Closed, or owned by another instance: its journal has the data.
		owned.data, err = rt.fold(ctx, entries)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		err = fmt.Errorf("reading the history of saga %s %q took over %v: %w", name, id, historyTimeout, err)
	}
	return rt, entries, owned, err
}

// historyTimeout bounds GET /api/sagas/{name}/{id}.
const historyTimeout = 10 * time.Second

func (s *Service) writeSaga(w http.ResponseWriter, rt runtime, name, id string, entries []saga.JournalEntry, owned sagaStatus) {
	st := SagaStatus{Saga: name, ID: id, History: make([]HistoryEntry, 0, len(entries))}
	for _, e := range entries {
		h := HistoryEntry{Time: e.Time, Event: e.EventType, EventID: e.CEID, From: e.FromState, To: e.ToState, Outcome: e.Outcome,
			RequestedBy: e.RequestedBy}
		if sc := telemetry.ParseTraceParent(e.TraceParent); sc.IsValid() {
			h.TraceID, h.SpanID = sc.TraceID().String(), sc.SpanID().String()
		}
		if e.Outcome == saga.OutcomeApplied {
			st.State = e.ToState
		}
		st.History = append(st.History, h)
	}
	st.Terminal = rt.isTerminal(st.State)
	st.Data = toAvroJSON(owned.data) // the schema's names, as POST takes them
	writeJSON(w, http.StatusOK, st)
}

// Started is the answer to POST /api/sagas/{name}.
type Started struct {
	Saga    string `json:"saga"`
	ID      string `json:"id"`
	EventID string `json:"event_id"`
	Status  string `json:"status_url"`
}

// startSaga converts the JSON body to the start event's Avro schema and
// produces it to the saga's inbox, keyed by the saga ID (?id=, default a
// new UUIDv7). The saga starts when the orchestrator consumes it: 202.
func (s *Service) startSaga(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	sg, ok := s.sagas[name]
	if !ok {
		writeJSON(w, http.StatusNotFound, apiError{Error: fmt.Sprintf("no saga named %q is registered", name)})
		return
	}
	if rt, _ := s.runtime(name); !rt.Connected() {
		unavailable(w, "the cluster is out of reach; retry later with the same id (a start is idempotent by its id)")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err != nil {
		writeJSON(w, http.StatusRequestEntityTooLarge, apiError{Error: fmt.Sprintf("body larger than %d bytes", MaxBodyBytes)})
		return
	}
	_, _, inbox := sg.startEvent()
	codec := s.starts[name]
	event, err := fromJSON(codec.Schema(), body)
	var fe *FieldError
	if errors.As(err, &fe) {
		writeJSON(w, http.StatusBadRequest, apiError{Error: fe.Error(), Field: fe.Field})
		return
	}
	ctx := r.Context()
	value, err := codec.Encode(ctx, inbox, &event)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, apiError{Error: "body does not encode to the start event's schema: " + err.Error()})
		return
	}
	id := r.URL.Query().Get("id")
	if id == "" {
		id = schema.NewID()
	}
	if err := saga.CheckID(id); err != nil {
		writeJSON(w, http.StatusBadRequest, apiError{Error: err.Error(), Field: "id"})
		return
	}
	// A request is no saga's message: the saga's trace begins here.
	pctx, cancel := context.WithTimeout(trace.ContextWithSpanContext(ctx, trace.SpanContext{}), publishTimeout)
	defer cancel()
	rec := s.starters[name].RecordOf(id, value)
	started, err := s.starters[name].Publish(pctx, rec)
	if err != nil {
		unavailable(w, "producing the start event: "+err.Error()+"; retry later with the same id (a start is idempotent by its id)")
		return
	}
	s.log.InfoContext(trace.ContextWithSpanContext(ctx, started.SpanContext), "saga start requested", "saga_name", name, "saga_id", id, "correlation_id", id)
	writeJSON(w, http.StatusAccepted, Started{Saga: name, ID: id, EventID: started.EventID, Status: "/api/sagas/" + name + "/" + id})
}

// Cancelled is the answer to POST /api/sagas/{name}/{id}/cancel and
// /resume.
type Cancelled struct {
	Saga    string `json:"saga"`
	ID      string `json:"id"`
	EventID string `json:"event_id"`
	// RequestedBy is the event's ce_source, journaled with it.
	RequestedBy string `json:"requested_by"`
	Status      string `json:"status_url"`
}

// cancelSaga produces a cancel for the saga to its inbox: a saga waiting on
// a step is compensated, a finished one ignores it (see saga.CancelRecord).
func (s *Service) cancelSaga(w http.ResponseWriter, r *http.Request) {
	s.operatorEvent(w, r, "cancel", saga.CancelRecord)
}

// resumeSaga produces a resume for the saga to its inbox: a saga in
// CompensationFailed sends the compensation it gave up again, any other
// ignores it (see saga.ResumeRecord).
func (s *Service) resumeSaga(w http.ResponseWriter, r *http.Request) {
	s.operatorEvent(w, r, "resume", saga.ResumeRecord)
}

// operatorEvent produces an operator's event for a saga. Who asked (the
// by query parameter, else the X-Requested-By header) goes into its
// ce_source: "sagapipe/api/<who>".
func (s *Service) operatorEvent(w http.ResponseWriter, r *http.Request, what string, record func(name, id, source string) *kgo.Record) {
	name, id := r.PathValue("name"), r.PathValue("id")
	source := "sagapipe/api"
	if by := cmp.Or(r.URL.Query().Get("by"), r.Header.Get("X-Requested-By")); by != "" {
		source += "/" + url.PathEscape(by)
	}
	eventID, err := s.requestOperatorEvent(r.Context(), name, id, source, what, record)
	switch {
	case errors.Is(err, errUnknownSaga):
		writeJSON(w, http.StatusNotFound, apiError{Error: fmt.Sprintf("no saga named %q is registered", name)})
	case err != nil:
		unavailable(w, err.Error()+"; retry later")
	default:
		writeJSON(w, http.StatusAccepted, Cancelled{Saga: name, ID: id, EventID: eventID, RequestedBy: source, Status: "/api/sagas/" + name + "/" + id})
	}
}

// requestOperatorEvent produces an operator's event for a saga, from
// source (its ce_source), and returns its event ID.
func (s *Service) requestOperatorEvent(ctx context.Context, name, id, source, what string, record func(name, id, source string) *kgo.Record) (string, error) {
	if _, ok := s.sagas[name]; !ok {
		return "", errUnknownSaga
	}
	rec := record(name, id, source)
	pctx, err := s.publish(ctx, rec)
	if err != nil {
		return "", fmt.Errorf("producing the %s: %w", what, err)
	}
	eventID, _ := schema.Header(rec.Headers, schema.HeaderID)
	s.log.InfoContext(pctx, "saga "+what+" requested", "saga_name", name, "saga_id", id, "correlation_id", id, "requested_by", source)
	return eventID, nil
}

// publishTimeout bounds how long a request waits for the broker to take
// what it produces: past it, the request answers 503.
const publishTimeout = 10 * time.Second

// unavailable answers 503 with a Retry-After: the cluster is out of reach
// for now, and the request may be repeated.
func unavailable(w http.ResponseWriter, msg string) {
	w.Header().Set("Retry-After", "5")
	writeJSON(w, http.StatusServiceUnavailable, apiError{Error: msg})
}

// publish produces rec in a publish span of its own, the root of a new
// trace (a request is no saga's message), and returns the span's context.
func (s *Service) publish(ctx context.Context, rec *kgo.Record) (context.Context, error) {
	ctx, cancel := context.WithTimeout(ctx, publishTimeout)
	defer cancel()
	tracer := telemetry.Tracer(s.tel.TracerProvider())
	pctx, span := telemetry.StartPublish(trace.ContextWithSpanContext(ctx, trace.SpanContext{}), tracer, s.tel.Propagator(), rec)
	err := s.producer.ProduceSync(pctx, rec).FirstErr()
	telemetry.EndPublish(span, rec, err)
	return pctx, err
}
