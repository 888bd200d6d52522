package console

import (
	"context"
	"crypto/tls"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sagapipe/sagapipe/dlq"
	"github.com/sagapipe/sagapipe/statemachine"
)

// stubBackend is a backend with one saga, o-1, in payment.Pending; it
// counts the actions it was asked for.
type stubBackend struct {
	mu      sync.Mutex
	cancels int
}

var stubDefinition = Definition{Name: "orders", Initial: "New", DeadLetterTopic: "orders.inbox.dlq",
	States:   []statemachine.State{"New", "inventory.Pending", "payment.Pending", "inventory.Compensating", "Completed", "Compensated"},
	Terminal: []statemachine.State{"Completed", "Compensated"},
	Edges: []statemachine.Edge{
		{From: "New", On: "start/orders.OrderPlaced", To: "inventory.Pending"},
		{From: "inventory.Pending", On: "inventory/orders.InventoryReserved", To: "payment.Pending"},
		{From: "inventory.Pending", On: "inventory/timeout", To: "inventory.Pending"},
		{From: "inventory.Pending", On: "inventory/orders.InventoryRejected", To: "Compensated"},
		{From: "payment.Pending", On: "payment/orders.PaymentCharged", To: "Completed"},
		{From: "payment.Pending", On: "payment/orders.PaymentDeclined", To: "inventory.Compensating"},
		{From: "payment.Pending", On: "cancel", To: "inventory.Compensating"},
		{From: "inventory.Compensating", On: "inventory/orders.InventoryReleased", To: "Compensated"},
	}}

var stubHistory = []Entry{
	{Event: "start/orders.OrderPlaced", From: "New", To: "inventory.Pending", Outcome: "applied", Attempt: 1},
	{Event: "inventory/timeout", From: "inventory.Pending", To: "inventory.Pending", Outcome: "applied", Attempt: 2},
	{Event: "inventory/orders.InventoryReserved", From: "inventory.Pending", To: "payment.Pending", Outcome: "applied", Attempt: 1,
		TraceID: "4bf92f3577b34da6a3ce929d0e0e4736"},
	{Event: "cancel", From: "Completed", To: "Completed", Outcome: "ignored", Attempt: 1},
}

func (*stubBackend) Definitions() []Definition { return []Definition{stubDefinition} }
func (*stubBackend) ListSagas(context.Context, string, Query) (Page, error) {
	p := Page{Sagas: []SagaSummary{{ID: "o-1", State: "payment.Pending", Category: InFlight}}, Matching: 1}
	p.Counts.Add("payment.Pending")
	return p, nil
}
func (*stubBackend) Saga(_ context.Context, name, id string) (Saga, error) {
	if id != "o-1" {
		return Saga{}, ErrNotFound
	}
	return Saga{Name: name, ID: id, State: "payment.Pending", History: stubHistory, Data: map[string]any{"order_id": "o-1"}}, nil
}
func (b *stubBackend) Cancel(context.Context, string, string, string) (string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.cancels++
	return "ev-1", nil
}
func (*stubBackend) Resume(context.Context, string, string, string) (string, error) {
	return "ev-2", nil
}

func newTestConsole(t *testing.T, token string) (*Console, *stubBackend) {
	t.Helper()
	b := &stubBackend{}
	c, err := New(Config{Backend: b, Token: token, Metrics: http.NotFoundHandler(), JaegerURL: "http://jaeger:16686/"})
	if err != nil {
		t.Fatal(err)
	}
	return c, b
}

// call serves one request to c.
func call(c *Console, method, target string, form url.Values, cookies []*http.Cookie, header map[string]string) *httptest.ResponseRecorder {
	var req *http.Request
	if form != nil {
		req = httptest.NewRequest(method, target, strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	} else {
		req = httptest.NewRequest(method, target, nil)
	}
	for _, ck := range cookies {
		req.AddCookie(ck)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	rec := httptest.NewRecorder()
	c.ServeHTTP(rec, req)
	return rec
}

var csrfInPage = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func csrfOf(t *testing.T, body string) string {
	t.Helper()
	m := csrfInPage.FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no CSRF token in the page:\n%s", body)
	}
	return m[1]
}

func TestLoginAndSessions(t *testing.T) {
	const token = "s3cret-token"
	c, _ := newTestConsole(t, token)

	// Without a session every page sends to the login form.
	for _, path := range []string{"/ui/", "/ui/sagas/orders", "/ui/sagas/orders/o-1", "/ui/dlq", "/ui/live"} {
		if rec := call(c, "GET", path, nil, nil, nil); rec.Code != http.StatusSeeOther || rec.Header().Get("Location") != "/ui/login" {
			t.Errorf("GET %s without a session: %d to %q, want 303 to /ui/login", path, rec.Code, rec.Header().Get("Location"))
		}
	}
	if rec := call(c, "GET", "/ui/live/charts", nil, nil, nil); rec.Code != http.StatusUnauthorized {
		t.Errorf("the charts without a session: %d, want 401", rec.Code)
	}
	if rec := call(c, "GET", "/ui/login", nil, nil, nil); rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), `type="password"`) {
		t.Fatalf("login page: %d\n%s", rec.Code, rec.Body)
	}
	for _, tc := range []struct {
		name, token string
		header      map[string]string
		wantCode    int
	}{
		{name: "wrong token", token: "guess", wantCode: http.StatusUnauthorized},
		{name: "no token", token: "", wantCode: http.StatusUnauthorized},
		{name: "from another site", token: token, header: map[string]string{"Sec-Fetch-Site": "cross-site"}, wantCode: http.StatusForbidden},
		{name: "right token", token: token, wantCode: http.StatusSeeOther},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := call(c, "POST", "/ui/login", url.Values{"token": {tc.token}}, nil, tc.header)
			if rec.Code != tc.wantCode {
				t.Fatalf("login: %d, want %d", rec.Code, tc.wantCode)
			}
			if opened := len(rec.Result().Cookies()) > 0; opened != (tc.wantCode == http.StatusSeeOther) {
				t.Fatalf("session cookie set: %v", opened)
			}
		})
	}

	rec := call(c, "POST", "/ui/login", url.Values{"token": {token}}, nil, nil)
	cookies := rec.Result().Cookies()
	if len(cookies) != 1 {
		t.Fatalf("cookies %v", cookies)
	}
	ck := cookies[0]
	if !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode || ck.Secure || ck.Path != "/ui" || strings.Contains(ck.Value, token) {
		t.Fatalf("session cookie %+v", ck)
	}
	// Over TLS, or behind a proxy that terminates it, the cookie is Secure.
	req := httptest.NewRequest("POST", "/ui/login", strings.NewReader("token="+token))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.TLS = &tls.ConnectionState{}
	tlsRec := httptest.NewRecorder()
	c.ServeHTTP(tlsRec, req)
	if tc := tlsRec.Result().Cookies(); len(tc) != 1 || !tc[0].Secure {
		t.Fatalf("over TLS the cookie is not Secure: %v", tc)
	}
	if rec := call(c, "POST", "/ui/login", url.Values{"token": {token}}, nil, map[string]string{"X-Forwarded-Proto": "https"}); !rec.Result().Cookies()[0].Secure {
		t.Fatal("behind a TLS proxy the cookie is not Secure")
	}

	page := call(c, "GET", "/ui/sagas/orders/o-1", nil, cookies, nil)
	if page.Code != http.StatusOK || !strings.Contains(page.Body.String(), "payment.Pending") {
		t.Fatalf("saga page with a session: %d\n%s", page.Code, page.Body)
	}
	if csp := page.Header().Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || page.Header().Get("Referrer-Policy") != "no-referrer" {
		t.Fatalf("security headers: %v", page.Header())
	}

	// A forged or expired cookie is no session.
	forged := *ck
	forged.Value = strings.Replace(ck.Value, ck.Value[:4], "AAAA", 1)
	expired := *ck
	for name, cookie := range map[string]*http.Cookie{"forged": &forged, "garbage": {Name: SessionCookie, Value: "x.y"}} {
		if rec := call(c, "GET", "/ui/sagas/orders", nil, []*http.Cookie{cookie}, nil); rec.Code != http.StatusSeeOther {
			t.Errorf("%s cookie: %d, want 303 to the login", name, rec.Code)
		}
	}
	c.auth.now = func() time.Time { return time.Now().Add(SessionLifetime + time.Minute) }
	if rec := call(c, "GET", "/ui/sagas/orders", nil, []*http.Cookie{&expired}, nil); rec.Code != http.StatusSeeOther {
		t.Errorf("expired session: %d, want 303 to the login", rec.Code)
	}
	c.auth.now = time.Now

	// Another token (another console, or the token rotated) ends it.
	other, _ := newTestConsole(t, "another-token")
	if rec := call(other, "GET", "/ui/sagas/orders", nil, cookies, nil); rec.Code != http.StatusSeeOther {
		t.Errorf("a session of another token: %d, want 303 to the login", rec.Code)
	}
}

// Every action needs the session, its CSRF token and the console's origin.
func TestActionsNeedCSRF(t *testing.T) {
	for _, token := range []string{"s3cret-token", ""} {
		t.Run("token="+token, func(t *testing.T) {
			c, b := newTestConsole(t, token)
			var cookies []*http.Cookie
			if token != "" {
				cookies = call(c, "POST", "/ui/login", url.Values{"token": {token}}, nil, nil).Result().Cookies()
			}
			confirm := call(c, "GET", "/ui/sagas/orders/o-1/cancel", nil, cookies, nil)
			if token == "" {
				cookies = confirm.Result().Cookies() // an open console gives every browser a session
			}
			if confirm.Code != http.StatusOK || len(cookies) != 1 {
				t.Fatalf("confirmation page: %d, cookies %v\n%s", confirm.Code, cookies, confirm.Body)
			}
			csrf := csrfOf(t, confirm.Body.String())
			other, _ := newTestConsole(t, token)
			otherCSRF := other.auth.csrf(session{nonce: []byte("0123456789abcdef")})
			for _, tc := range []struct {
				name     string
				form     url.Values
				cookies  []*http.Cookie
				header   map[string]string
				wantCode int
			}{
				{name: "no session", form: url.Values{CSRFField: {csrf}}, wantCode: http.StatusUnauthorized},
				{name: "no CSRF token", form: url.Values{}, cookies: cookies, wantCode: http.StatusForbidden},
				{name: "wrong CSRF token", form: url.Values{CSRFField: {otherCSRF}}, cookies: cookies, wantCode: http.StatusForbidden},
				{name: "from another site", form: url.Values{CSRFField: {csrf}}, cookies: cookies, header: map[string]string{"Sec-Fetch-Site": "cross-site"}, wantCode: http.StatusForbidden},
				{name: "from another origin", form: url.Values{CSRFField: {csrf}}, cookies: cookies, header: map[string]string{"Origin": "https://evil.example"}, wantCode: http.StatusForbidden},
				{name: "logout without CSRF token", form: url.Values{}, cookies: cookies, wantCode: http.StatusForbidden},
				{name: "all there", form: url.Values{CSRFField: {csrf}}, cookies: cookies, header: map[string]string{"Sec-Fetch-Site": "same-origin"}, wantCode: http.StatusSeeOther},
			} {
				t.Run(tc.name, func(t *testing.T) {
					before := b.cancels
					target := "/ui/sagas/orders/o-1/cancel"
					if strings.HasPrefix(tc.name, "logout") {
						target = "/ui/logout"
					}
					rec := call(c, "POST", target, tc.form, tc.cookies, tc.header)
					if rec.Code != tc.wantCode {
						t.Fatalf("%d, want %d\n%s", rec.Code, tc.wantCode, rec.Body)
					}
					if done := b.cancels - before; done != map[bool]int{true: 1, false: 0}[tc.wantCode == http.StatusSeeOther] {
						t.Fatalf("cancels made: %d", done)
					}
				})
			}
		})
	}
}

func TestDiagram(t *testing.T) {
	svg := string(Diagram(stubDefinition, "payment.Pending", stubHistory))
	for _, s := range stubDefinition.States {
		if !strings.Contains(svg, `data-state="`+string(s)+`"`) || !strings.Contains(svg, ">"+string(s)+"</text>") {
			t.Errorf("state %s is not drawn", s)
		}
	}
	state := func(name string) string {
		i := strings.Index(svg, `data-state="`+name+`"`)
		if i < 0 {
			return ""
		}
		start := strings.LastIndex(svg[:i], "<g ")
		return svg[start : i+strings.Index(svg[i:], "</g>")]
	}
	for _, tc := range []struct {
		state, wantClass, wantMark string
	}{
		{"payment.Pending", "state current", "▶ current"},
		{"New", "state passed", "✓ passed"},
		{"inventory.Pending", "state passed", "✓ passed"},
		{"inventory.Compensating", `class="state"`, ""},
		{"Compensated", "state terminal", ""},
	} {
		g := state(tc.state)
		if !strings.Contains(g, tc.wantClass) || (tc.wantMark != "" && !strings.Contains(g, tc.wantMark)) || (tc.wantMark == "" && strings.Contains(g, `class="mark"`)) {
			t.Errorf("state %s drawn as %s; want class %q and mark %q", tc.state, g, tc.wantClass, tc.wantMark)
		}
	}
	// Exactly one current state; the three transitions taken are marked
	// (the loop of the resend too), and the description says it in text.
	if n := strings.Count(svg, "▶ current"); n != 1 {
		t.Errorf("%d states marked current", n)
	}
	if n := strings.Count(svg, `class="edge taken"`); n != 3 {
		t.Errorf("%d transitions marked taken, want 3", n)
	}
	if !strings.Contains(svg, "Current state: payment.Pending. Path taken: New → inventory.Pending → payment.Pending.") {
		t.Errorf("no text description of the path:\n%s", svg)
	}
	// Names are escaped.
	evil := stubDefinition
	evil.States = append(evil.States, `<script>alert(1)</script>`)
	if out := string(Diagram(evil, "", nil)); strings.Contains(out, "<script>") {
		t.Error("a state name went into the SVG unescaped")
	}
}

func TestQuantile(t *testing.T) {
	before := map[float64]float64{0.1: 0, 1: 0, 10: 0}
	after := map[float64]float64{0.1: 50, 1: 90, 10: 100}
	for _, tc := range []struct {
		q, want float64
	}{{0.5, 0.1}, {0.25, 0.05}, {0.9, 1}, {0.99, 9.1}} {
		if got := quantile(tc.q, before, after); got < tc.want-1e-9 || got > tc.want+1e-9 {
			t.Errorf("quantile(%v) = %v, want %v", tc.q, got, tc.want)
		}
	}
}

// Every page renders, with what it must show.
func TestPages(t *testing.T) {
	c, _ := newTestConsole(t, "")
	for _, tc := range []struct {
		path, want string
	}{
		{"/ui/sagas/orders", `<span class="n">1</span> <span class="label">In flight</span>`},
		{"/ui/sagas/orders?state=compensated&q=o-", `<option value="compensated" selected>`},
		{"/ui/sagas/orders/o-1", `<strong class="state" id="current-state">payment.Pending</strong>`},
		{"/ui/sagas/orders/o-1", `attempt 2`},
		{"/ui/sagas/orders/o-1", `<a href="http://jaeger:16686/trace/4bf92f3577b34da6a3ce929d0e0e4736" rel="noreferrer">`},
		{"/ui/sagas/orders/o-1/cancel", `<button type="submit" id="confirm">Cancel saga</button>`},
		{"/ui/sagas/orders/o-1/resume", `<button type="submit" id="confirm">Resume saga</button>`},
		{"/ui/dlq/orders.inbox.dlq/replay?origin=orders.inbox&class=poison", `the letters not replayed yet that failed on orders.inbox, of class poison`},
		{"/ui/dlq/orders.inbox.dlq/release?key=o-1", `<input type="hidden" name="key" value="o-1">`},
		{"/ui/live", `<svg class="chart"`},
		{"/ui/live/charts", `Saga latency p99`},
		{"/ui/static/console.css", `.timeline`},
	} {
		rec := call(c, "GET", tc.path, nil, nil, nil)
		if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), tc.want) {
			t.Errorf("GET %s: %d, want 200 with %q\n%s", tc.path, rec.Code, tc.want, rec.Body)
		}
	}
	// Not a dead-letter topic (a saga's, or named *.dlq): not the console's
	// to show or replay from.
	for _, path := range []string{"/ui/sagas/refunds", "/ui/sagas/orders/o-404", "/ui/sagas/orders/o-1/delete", "/ui/dlq/orders.inbox.dlq/release",
		"/ui/dlq/payments", "/ui/dlq/orders.journal/replay"} {
		if rec := call(c, "GET", path, nil, nil, nil); rec.Code != http.StatusNotFound {
			t.Errorf("GET %s: %d, want 404", path, rec.Code)
		}
	}
}

// The live view turns the metrics' counters and histogram into rates and
// percentiles between samples.
func TestLiveSamples(t *testing.T) {
	finished, slow := 0, 0
	metrics := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "# TYPE sagapipe_saga_finished_total counter\nsagapipe_saga_finished_total{saga_name=\"orders\",saga_outcome=\"Completed\"} %d\n", finished)
		fmt.Fprintf(w, "# TYPE sagapipe_saga_in_flight gauge\nsagapipe_saga_in_flight{saga_name=\"orders\"} 7\n")
		fmt.Fprintf(w, "# TYPE sagapipe_dlq_records_total counter\nsagapipe_dlq_records_total{error_class=\"poison\"} %d\n", finished/10)
		fmt.Fprintf(w, "# TYPE sagapipe_saga_duration_seconds histogram\n")
		fmt.Fprintf(w, "sagapipe_saga_duration_seconds_bucket{le=\"0.1\"} %d\nsagapipe_saga_duration_seconds_bucket{le=\"1\"} %d\nsagapipe_saga_duration_seconds_bucket{le=\"+Inf\"} %d\n", finished-slow, finished, finished)
		fmt.Fprintf(w, "sagapipe_saga_duration_seconds_sum 1\nsagapipe_saga_duration_seconds_count %d\n", finished)
	})
	l := newLive(metrics, 3)
	at := time.Unix(1000, 0)
	for i := range 4 { // one more than the ring holds
		l.sample(at.Add(time.Duration(i) * 5 * time.Second))
		finished += 100
		slow += 2
	}
	s := l.series()
	if len(s.inFlight) != 3 || len(s.throughput) != 2 || s.inFlight[2].v != 7 {
		t.Fatalf("series %+v", s)
	}
	if got := s.throughput[1].v; got != 20 {
		t.Errorf("throughput %v/s, want 20", got)
	}
	if got := s.dlq[1].v; got != 120 {
		t.Errorf("dead letters %v/min, want 120", got)
	}
	if p50, p99 := s.p50[1].v, s.p99[1].v; math.Abs(p50-0.1*50/98) > 1e-9 || math.Abs(p99-0.55) > 1e-9 { // interpolated in their buckets
		t.Errorf("p50 %v, p99 %v", p50, p99)
	}
}

func TestNewRefusesBadSettings(t *testing.T) {
	_, err := New(Config{JaegerURL: "jaeger:16686"})
	for _, want := range []string{"Config.Backend is required", "Config.Metrics is required", `Jaeger UI URL "jaeger:16686" is not an http(s) URL`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("New: %v, want it to say %q", err, want)
		}
	}
}

func ExampleReplayGroup() {
	fmt.Println(ReplayGroup("orders.inbox.dlq", dlq.Filter{}))
	fmt.Println(ReplayGroup("orders.inbox.dlq", dlq.Filter{Key: "o-1"}))
	// Output:
	// sagapipe.dlq-replay.orders.inbox.dlq
	// sagapipe.dlq-replay.orders.inbox.dlq?key_sha256=5cbdcb742069a582
}
