package console

import (
	"cmp"
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/schema"
	"github.com/sagapipe/sagapipe/statemachine"
)

// Prefix is where the console is mounted.
const Prefix = "/ui"

// ErrNotFound: no such saga (Backend.Saga, Backend.Cancel, Backend.Resume).
var ErrNotFound = errors.New("console: not found")

// Backend is the service the console shows and acts on.
type Backend interface {
	// Definitions are the registered sagas, sorted by name.
	Definitions() []Definition
	// ListSagas returns a page of saga name's sagas and its counts by state.
	ListSagas(ctx context.Context, name string, q Query) (Page, error)
	// Saga returns one saga (ErrNotFound when it is unknown).
	Saga(ctx context.Context, name, id string) (Saga, error)
	// Cancel and Resume produce the operator's event for the saga and
	// return its event ID; source is who asked (the event's ce_source).
	Cancel(ctx context.Context, name, id, source string) (string, error)
	Resume(ctx context.Context, name, id, source string) (string, error)
}

// Definition is a registered saga's state machine.
type Definition struct {
	Name     string
	Initial  statemachine.State
	States   []statemachine.State
	Terminal []statemachine.State
	Edges    []statemachine.Edge
	// DeadLetterTopic is where its unprocessable inbox records go.
	DeadLetterTopic string
}

func (d Definition) terminal(s statemachine.State) bool { return slices.Contains(d.Terminal, s) }

// Query selects a page of sagas.
type Query struct {
	// State is a state category (see Categories) or a state's name; empty
	// for all.
	State string
	// Search keeps the sagas whose ID contains it.
	Search string
	// After is the last ID of the previous page.
	After string
	// Limit is the page size (default 50, at most 500).
	Limit int
}

// Page is a page of sagas, sorted by ID, and the counts of all.
type Page struct {
	Sagas  []SagaSummary `json:"sagas"`
	Counts Counts        `json:"counts"`
	// Matching counts the sagas that pass the query's state and search.
	Matching int `json:"matching"`
	// Next is the After of the next page, empty on the last.
	Next string `json:"next,omitempty"`
}

// SagaSummary is a saga in a list.
type SagaSummary struct {
	ID       string    `json:"id"`
	State    string    `json:"state"`
	Category string    `json:"category"`
	Since    time.Time `json:"since"`
	Closed   bool      `json:"closed"`
}

// Counts counts sagas by category.
type Counts struct {
	InFlight           int `json:"in_flight"`
	Completed          int `json:"completed"`
	Compensated        int `json:"compensated"`
	CompensationFailed int `json:"compensation_failed"`
}

// State categories, as Query.State takes them.
const (
	InFlight = "in_flight"
	// Completed and Compensated are the terminal states.
	Completed   = "completed"
	Compensated = "compensated"
	// CompensationFailed sagas gave a compensation up: they wait for an
	// operator's resume.
	CompensationFailed = "compensation_failed"
)

// Categories lists the state categories in the order the console shows them.
var Categories = []string{InFlight, Completed, Compensated, CompensationFailed}

// Category is the category of state.
func Category(state string) string {
	switch state {
	case "Completed":
		return Completed
	case "Compensated":
		return Compensated
	case "CompensationFailed":
		return CompensationFailed
	}
	return InFlight
}

// Add counts a saga in state.
func (c *Counts) Add(state string) {
	switch Category(state) {
	case Completed:
		c.Completed++
	case Compensated:
		c.Compensated++
	case CompensationFailed:
		c.CompensationFailed++
	default:
		c.InFlight++
	}
}

// Of returns the count of category.
func (c Counts) Of(category string) int {
	switch category {
	case Completed:
		return c.Completed
	case Compensated:
		return c.Compensated
	case CompensationFailed:
		return c.CompensationFailed
	}
	return c.InFlight
}

// Saga is one saga as its page shows it.
type Saga struct {
	Name, ID string
	State    string
	Terminal bool
	// Data is the saga's data (JSON-like: maps, slices, scalars).
	Data    any
	History []Entry
	// Timer is the timeout the saga waits for, when this instance owns it
	// and it waits for one.
	Timer *Timer
	// Deadline is the saga's own deadline (zero: none).
	Deadline time.Time
	// Stuck is, in CompensationFailed, the step whose compensation was given up.
	Stuck string
}

// Timer is a pending timeout.
type Timer struct {
	Step         string
	Attempt      int
	Compensation bool
	At           time.Time
}

// Entry is one journal entry.
type Entry struct {
	Time        time.Time
	Event       string
	EventID     string
	From, To    string
	Outcome     string
	RequestedBy string
	TraceID     string
	// Attempt is the send of the state's command the entry belongs to
	// (1 for the first send).
	Attempt int
}

// Config configures a console.
type Config struct {
	Backend Backend
	// Token, when set, is what the login form asks for (the service's
	// api_token); without it the console is open, its actions still
	// protected from cross-site requests.
	Token string
	// JaegerURL, when set, links each trace ID to <JaegerURL>/trace/<id>.
	JaegerURL string
	// ClientOptions reach the cluster, for the dead letters: kgo.SeedBrokers,
	// TLS, SASL.
	ClientOptions []kgo.Opt
	// Registry decodes the dead letters' values.
	Registry *schema.Serde
	// Metrics serves the process's metrics in the Prometheus text format,
	// which the live view samples.
	Metrics http.Handler
	// SampleEvery is the live view's sampling interval (default 5s); it
	// keeps LiveSamples samples.
	SampleEvery time.Duration
	Logger      *slog.Logger
}

// LiveSamples is how many samples the live view keeps.
const LiveSamples = 72

// Console is the web console; serve it at Prefix.
type Console struct {
	cfg    Config
	auth   *auth
	mux    *http.ServeMux
	pages  map[string]*template.Template
	live   *live
	jaeger string
}

//go:embed templates static
var assets embed.FS

// New checks cfg and returns the console.
func New(cfg Config) (*Console, error) {
	var errs []error
	if cfg.Backend == nil {
		errs = append(errs, errors.New("console: Config.Backend is required"))
	}
	if cfg.Metrics == nil {
		errs = append(errs, errors.New("console: Config.Metrics is required"))
	}
	jaeger := strings.TrimRight(cfg.JaegerURL, "/")
	if jaeger != "" {
		if u, err := url.Parse(jaeger); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("console: Jaeger UI URL %q is not an http(s) URL (e.g. http://jaeger:16686)", cfg.JaegerURL))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	cfg.SampleEvery = cmp.Or(cfg.SampleEvery, 5*time.Second)
	cfg.Logger = cmp.Or(cfg.Logger, slog.New(slog.DiscardHandler))
	c := &Console{cfg: cfg, auth: newAuth(cfg.Token), jaeger: jaeger, live: newLive(cfg.Metrics, LiveSamples)}
	pages, err := parsePages()
	if err != nil {
		return nil, err
	}
	c.pages = pages
	c.routes()
	return c, nil
}

// Run samples the metrics for the live view until ctx ends.
func (c *Console) Run(ctx context.Context) {
	c.live.sample(time.Now())
	t := time.NewTicker(c.cfg.SampleEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			c.live.sample(now)
		}
	}
}

func (c *Console) routes() {
	m := http.NewServeMux()
	static, _ := fs.Sub(assets, "static")
	m.Handle("GET /ui/static/", http.StripPrefix("/ui/static/", http.FileServerFS(static)))
	m.HandleFunc("GET /ui/login", c.loginPage)
	m.HandleFunc("POST /ui/login", c.login)
	m.Handle("POST /ui/logout", c.action(c.logout))
	m.Handle("GET /ui/{$}", c.page(c.home))
	m.Handle("GET /ui/sagas/{name}", c.page(c.sagasPage))
	m.Handle("GET /ui/sagas/{name}/{id}", c.page(c.sagaPage))
	m.Handle("GET /ui/sagas/{name}/{id}/{action}", c.page(c.confirmSagaAction))
	m.Handle("POST /ui/sagas/{name}/{id}/{action}", c.action(c.sagaAction))
	m.Handle("GET /ui/dlq", c.page(c.deadLettersIndex))
	m.Handle("GET /ui/dlq/{topic}", c.page(c.deadLettersPage))
	m.Handle("GET /ui/dlq/{topic}/{action}", c.page(c.confirmLetterAction))
	m.Handle("POST /ui/dlq/{topic}/{action}", c.action(c.letterAction))
	m.Handle("GET /ui/live", c.page(c.livePage))
	m.Handle("GET /ui/live/charts", c.page(c.liveCharts))
	c.mux = m
}

// ServeHTTP serves the console's pages under Prefix.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Frame-Options", "DENY")
	if r.URL.Path == Prefix {
		http.Redirect(w, r, Prefix+"/", http.StatusSeeOther)
		return
	}
	c.mux.ServeHTTP(w, r)
}

// view is what every page template gets.
type view struct {
	Title   string
	Nav     string
	CSRF    string
	Auth    bool
	Sagas   []Definition
	Message string
	Error   string
	Data    any
}

// render writes page with data, or a plain error.
func (c *Console) render(w http.ResponseWriter, code int, page string, v view) {
	t, ok := c.pages[page]
	if !ok {
		http.Error(w, "no page "+page, http.StatusInternalServerError)
		return
	}
	var b strings.Builder
	if err := t.ExecuteTemplate(&b, page, v); err != nil {
		c.cfg.Logger.Error("console: rendering a page", "page", page, "error", err)
		http.Error(w, "rendering the page failed; see the service's log", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = w.Write([]byte(b.String()))
}

// page serves h to a request with a session: without one, a login page
// (a token is configured) or a new anonymous session (none is).
func (c *Console) page(h func(http.ResponseWriter, *http.Request, view)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s, ok := c.auth.session(r)
		if !ok {
			if c.auth.required() {
				if r.URL.Path == Prefix+"/live/charts" {
					http.Error(w, "log in again", http.StatusUnauthorized)
					return
				}
				http.Redirect(w, r, Prefix+"/login", http.StatusSeeOther)
				return
			}
			s = c.auth.open(w, r)
		}
		h(w, r, view{CSRF: c.auth.csrf(s), Auth: c.auth.required(), Sagas: c.cfg.Backend.Definitions()})
	})
}

// maxFormBytes bounds an action's form: a few fields.
const maxFormBytes = 64 << 10

// action serves h to a POST with a session, its CSRF token and a
// same-origin request: 401, 403 otherwise.
func (c *Console) action(h func(http.ResponseWriter, *http.Request, view)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
		s, ok := c.auth.session(r)
		if !ok {
			c.render(w, http.StatusUnauthorized, "error.html", view{Title: "Not logged in", Auth: c.auth.required(),
				Error: "Your session has ended or was never opened: reload the page (logging in again if asked) and try again."})
			return
		}
		if err := c.auth.checkAction(r, s); err != nil {
			c.cfg.Logger.Warn("console: action refused", "path", r.URL.Path, "reason", err.Error())
			c.render(w, http.StatusForbidden, "error.html", view{Title: "Refused", Auth: c.auth.required(),
				Error: "The request was refused: " + err.Error() + ". Reload the page and try again."})
			return
		}
		h(w, r, view{CSRF: c.auth.csrf(s), Auth: c.auth.required(), Sagas: c.cfg.Backend.Definitions()})
	})
}

func (c *Console) definition(name string) (Definition, bool) {
	for _, d := range c.cfg.Backend.Definitions() {
		if d.Name == name {
			return d, true
		}
	}
	return Definition{}, false
}

func (c *Console) notFound(w http.ResponseWriter, v view, what string) {
	v.Title, v.Error = "Not found", what
	c.render(w, http.StatusNotFound, "error.html", v)
}

func (c *Console) home(w http.ResponseWriter, r *http.Request, v view) {
	if len(v.Sagas) == 0 {
		c.notFound(w, v, "No saga is registered.")
		return
	}
	http.Redirect(w, r, Prefix+"/sagas/"+url.PathEscape(v.Sagas[0].Name), http.StatusSeeOther)
}

// sagasList is the sagas page's data.
type sagasList struct {
	Saga       string
	Query      Query
	Page       Page
	Categories []categoryCount
	States     []statemachine.State
}

type categoryCount struct {
	Name, Label string
	Count       int
	Selected    bool
}

// CategoryLabel is how the console names a category.
func CategoryLabel(category string) string {
	switch category {
	case InFlight:
		return "In flight"
	case Completed:
		return "Completed"
	case Compensated:
		return "Compensated"
	case CompensationFailed:
		return "Compensation failed: waiting for an operator"
	}
	return category
}

func (c *Console) sagasPage(w http.ResponseWriter, r *http.Request, v view) {
	name := r.PathValue("name")
	def, ok := c.definition(name)
	if !ok {
		c.notFound(w, v, fmt.Sprintf("No saga named %q is registered.", name))
		return
	}
	q := Query{State: r.FormValue("state"), Search: strings.TrimSpace(r.FormValue("q")), After: r.FormValue("after")}
	q.Limit, _ = strconv.Atoi(r.FormValue("limit"))
	q.Limit = PageLimit(q.Limit)
	page, err := c.cfg.Backend.ListSagas(r.Context(), name, q)
	v.Title, v.Nav = "Sagas: "+name, "sagas"
	data := sagasList{Saga: name, Query: q, Page: page, States: def.States}
	for _, cat := range Categories {
		data.Categories = append(data.Categories, categoryCount{Name: cat, Label: CategoryLabel(cat), Count: page.Counts.Of(cat), Selected: q.State == cat})
	}
	v.Data = data
	if err != nil {
		v.Error = "Listing the sagas failed: " + err.Error()
		c.render(w, http.StatusBadGateway, "sagas.html", v)
		return
	}
	c.render(w, http.StatusOK, "sagas.html", v)
}

// PageLimit is the page size for a requested limit: 50 by default, at most 500.
func PageLimit(limit int) int {
	if limit <= 0 {
		return 50
	}
	return min(limit, 500)
}

// sagaView is the saga page's data.
type sagaView struct {
	Saga      Saga
	Diagram   template.HTML
	DataJSON  string
	JaegerURL string
	TraceID   string
	CanCancel bool
	CanResume bool
}

func (c *Console) sagaPage(w http.ResponseWriter, r *http.Request, v view) {
	name, id := r.PathValue("name"), r.PathValue("id")
	def, ok := c.definition(name)
	if !ok {
		c.notFound(w, v, fmt.Sprintf("No saga named %q is registered.", name))
		return
	}
	s, err := c.cfg.Backend.Saga(r.Context(), name, id)
	v.Title, v.Nav = "Saga "+id, "sagas"
	if errors.Is(err, ErrNotFound) {
		c.notFound(w, v, fmt.Sprintf("Saga %s %q has no journal entries.", name, id))
		return
	}
	if err != nil {
		v.Error = "Reading the saga failed: " + err.Error()
		c.render(w, http.StatusBadGateway, "error.html", v)
		return
	}
	sv := sagaView{Saga: s, Diagram: Diagram(def, s.State, s.History), DataJSON: indentJSON(s.Data), JaegerURL: c.jaeger,
		CanCancel: !s.Terminal && s.State != "CompensationFailed", CanResume: s.State == "CompensationFailed"}
	for _, e := range slices.Backward(s.History) {
		if e.TraceID != "" {
			sv.TraceID = e.TraceID
			break
		}
	}
	switch r.FormValue("done") {
	case "cancel":
		v.Message = "Cancel requested: the saga compensates its finished steps if it waits on one that can be compensated; the journal shows the outcome."
	case "resume":
		v.Message = "Resume requested: the saga sends the compensation it gave up again."
	}
	v.Data = sv
	c.render(w, http.StatusOK, "saga.html", v)
}

// sagaActions are the operator's actions on a saga.
var sagaActions = map[string]string{"cancel": "Cancel", "resume": "Resume"}

type confirmView struct {
	Action, Verb string
	Target       string
	What         string
	Fields       map[string]string
	Back         string
}

func (c *Console) confirmSagaAction(w http.ResponseWriter, r *http.Request, v view) {
	name, id, action := r.PathValue("name"), r.PathValue("id"), r.PathValue("action")
	verb, ok := sagaActions[action]
	if _, known := c.definition(name); !ok || !known {
		c.notFound(w, v, "No such page.")
		return
	}
	back := Prefix + "/sagas/" + url.PathEscape(name) + "/" + url.PathEscape(id)
	what := "The saga is cancelled: if it waits on a step that can be compensated, it compensates the steps it finished, in reverse. A saga that has finished, is compensating or waits on a step that cannot be undone ignores it; the journal records either."
	if action == "resume" {
		what = "The saga sends the compensation it gave up again, and goes on compensating. A saga not in CompensationFailed ignores it."
	}
	v.Title, v.Nav = verb+" saga "+id+"?", "sagas"
	v.Data = confirmView{Action: back + "/" + action, Verb: verb + " saga", Target: name + " " + id, What: what, Back: back}
	c.render(w, http.StatusOK, "confirm.html", v)
}

func (c *Console) sagaAction(w http.ResponseWriter, r *http.Request, v view) {
	name, id, action := r.PathValue("name"), r.PathValue("id"), r.PathValue("action")
	do := map[string]func(context.Context, string, string, string) (string, error){
		"cancel": c.cfg.Backend.Cancel, "resume": c.cfg.Backend.Resume}[action]
	if do == nil {
		c.notFound(w, v, "No such action.")
		return
	}
	eventID, err := do(r.Context(), name, id, "sagapipe/console")
	if errors.Is(err, ErrNotFound) {
		c.notFound(w, v, fmt.Sprintf("No saga named %q is registered.", name))
		return
	}
	if err != nil {
		v.Title, v.Nav = "The "+action+" failed", "sagas"
		v.Error = "Producing the " + action + " failed: " + err.Error() + ". Nothing was sent; try again."
		c.render(w, http.StatusServiceUnavailable, "error.html", v)
		return
	}
	c.cfg.Logger.Info("console: saga "+action+" requested", "saga_name", name, "saga_id", id, "event_id", eventID)
	http.Redirect(w, r, Prefix+"/sagas/"+url.PathEscape(name)+"/"+url.PathEscape(id)+"?done="+action, http.StatusSeeOther)
}

func parsePages() (map[string]*template.Template, error) {
	funcs := template.FuncMap{
		"category":      Category,
		"categoryLabel": CategoryLabel,
		"time": func(t time.Time) string {
			if t.IsZero() {
				return ""
			}
			return t.UTC().Format("2006-01-02 15:04:05.000Z")
		},
		"ago": func(t time.Time) string {
			if t.IsZero() {
				return ""
			}
			return time.Since(t).Round(time.Second).String() + " ago"
		},
		"in": func(t time.Time) string {
			d := time.Until(t).Round(time.Second)
			if d < 0 {
				return "due " + (-d).String() + " ago"
			}
			return "in " + d.String()
		},
		"path": url.PathEscape,
	}
	pages := map[string]*template.Template{}
	names, err := fs.Glob(assets, "templates/*.html")
	if err != nil {
		return nil, err
	}
	for _, n := range names {
		base := strings.TrimPrefix(n, "templates/")
		if base == "layout.html" {
			continue
		}
		t, err := template.New(base).Funcs(funcs).ParseFS(assets, "templates/layout.html", n)
		if err != nil {
			return nil, fmt.Errorf("console: template %s: %w", base, err)
		}
		pages[base] = t
	}
	return pages, nil
}

// indentJSON shows a saga's data as indented JSON.
func indentJSON(v any) string {
	if v == nil {
		return "(none)"
	}
	out, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Sprintf("(cannot be shown as JSON: %v)", err)
	}
	return string(out)
}
