package service_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/goleak"

	"github.com/sagapipe/sagapipe/devstack"
	"github.com/sagapipe/sagapipe/examples/orders"
	"github.com/sagapipe/sagapipe/internal/testkit"
	"github.com/sagapipe/sagapipe/observability"
	"github.com/sagapipe/sagapipe/saga"
	"github.com/sagapipe/sagapipe/schema"
	"github.com/sagapipe/sagapipe/service"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// ordersWorld is an embedded stack with the orders topics and the three
// participants running.
func ordersWorld(t *testing.T, stack *devstack.Stack, clientOpts ...kgo.Opt) *saga.Saga[orders.OrderData] {
	t.Helper()
	return ordersWorldWith(t, stack, 2*time.Second, orders.Faults{}, clientOpts...)
}

// ordersWorldWith is ordersWorld with the saga's step timeout and the
// participants' faults.
func ordersWorldWith(t *testing.T, stack *devstack.Stack, stepTimeout time.Duration, faults orders.Faults, clientOpts ...kgo.Opt) *saga.Saga[orders.OrderData] {
	t.Helper()
	ctx := context.Background()
	s, err := orders.Saga(stepTimeout)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(stack.KafkaAddrs()...)}, clientOpts...)...)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	if err := s.EnsureTopics(ctx, adm, 2, 1); err != nil {
		t.Fatal(err)
	}
	for _, topic := range []string{orders.InventoryTopic, orders.PaymentTopic, orders.ShippingTopic} {
		if err := saga.EnsureTopic(ctx, adm, topic, 2, 1, nil); err != nil {
			t.Fatal(err)
		}
	}
	serde, err := schema.NewSerde(stack.RegistryURL(), schema.WithSubjectNameStrategy(schema.RecordNameStrategy))
	if err != nil {
		t.Fatal(err)
	}
	p := orders.NewParticipants(serde, faults)
	pctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- p.Run(pctx, stack.KafkaAddrs(), clientOpts...) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("participants: %v", err)
		}
	})
	return s
}

// started is a running service.
type started struct {
	svc  *service.Service
	http *httptest.Server
	stop func() (time.Duration, error)
	logs *syncBuffer
}

// syncBuffer is written by a command or logger and read by the test at once.
type syncBuffer = testkit.SyncBuffer

func startService(t *testing.T, cfg service.Config, s *saga.Saga[orders.OrderData]) *started {
	t.Helper()
	tel, err := observability.Setup(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	svc, err := service.New(cfg, tel, observability.NewJSONLogger(logs, slog.LevelDebug), service.Register(s))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(svc.Handler())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	var once sync.Once
	var runErr error
	var took time.Duration
	stop := func() (time.Duration, error) {
		once.Do(func() {
			began := time.Now()
			cancel()
			runErr = <-done
			took = time.Since(began)
			srv.Close()
		})
		return took, runErr
	}
	t.Cleanup(func() { stop() })
	return &started{svc: svc, http: srv, stop: stop, logs: logs}
}

func do(t *testing.T, method, url, token, body string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	_ = json.Unmarshal(raw, &out)
	if out == nil {
		out = map[string]any{"raw": string(raw)}
	}
	return resp.StatusCode, out
}

const validOrder = `{"order_id":"o-1","customer_id":"c-1","sku":"sku-1","quantity":2,"unit_price_cents":1250,
 "total_cents":2500,"currency":"EUR","placed_at":"2026-11-23T10:00:00Z"}`

func TestServiceAPIEndToEnd(t *testing.T) {
	stack, err := devstack.Start(devstack.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stack.Close() }) // after the participants stop
	s := ordersWorld(t, stack)
	const token = "s3cret-token"
	svc := startService(t, service.Config{Brokers: stack.KafkaAddrs(), Registry: service.RegistryConfig{URL: stack.RegistryURL()},
		HTTPAddr: "127.0.0.1:0", APIToken: token, ShutdownGrace: 10 * time.Second}, s)
	base := svc.http.URL

	if code, _ := do(t, "GET", base+"/healthz", "", ""); code != 200 {
		t.Fatalf("/healthz %d", code)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, body := do(t, "GET", base+"/readyz", "", "")
		if code == 200 {
			break
		}
		if code != 503 || time.Now().After(deadline) {
			t.Fatalf("/readyz %d %v", code, body)
		}
		time.Sleep(20 * time.Millisecond)
	}

	for _, tc := range []struct {
		name, token, body string
		wantCode          int
		wantField         string
	}{
		{name: "no token", body: validOrder, wantCode: 401},
		{name: "wrong token", token: "guess", body: validOrder, wantCode: 401},
		{name: "not JSON", token: token, body: `{"order_id":`, wantCode: 400},
		{name: "wrong type", token: token, body: strings.Replace(validOrder, `"quantity":2`, `"quantity":"two"`, 1), wantCode: 400, wantField: "quantity"},
		{name: "fraction for an int", token: token, body: strings.Replace(validOrder, `"quantity":2`, `"quantity":2.5`, 1), wantCode: 400, wantField: "quantity"},
		{name: "missing field", token: token, body: strings.Replace(validOrder, `"sku":"sku-1",`, ``, 1), wantCode: 400, wantField: "sku"},
		{name: "unknown field", token: token, body: strings.Replace(validOrder, `"sku":"sku-1",`, `"sku":"sku-1","skew":1,`, 1), wantCode: 400, wantField: "skew"},
		{name: "bad timestamp", token: token, body: strings.Replace(validOrder, `2026-11-23T10:00:00Z`, `yesterday`, 1), wantCode: 400, wantField: "placed_at"},
		{name: "array body", token: token, body: `[1,2]`, wantCode: 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := do(t, "POST", base+"/api/sagas/orders?id=bad-"+strings.ReplaceAll(tc.name, " ", "-"), tc.token, tc.body)
			if code != tc.wantCode || (tc.wantField != "" && body["field"] != tc.wantField) {
				t.Fatalf("%d %v, want %d naming field %q", code, body, tc.wantCode, tc.wantField)
			}
		})
	}
	if code, body := do(t, "POST", base+"/api/sagas/refunds", token, validOrder); code != 404 {
		t.Fatalf("unknown saga: %d %v", code, body)
	}

	code, body := do(t, "POST", base+"/api/sagas/orders?id=o-1", token, validOrder)
	if code != 202 || body["id"] != "o-1" || body["status_url"] != "/api/sagas/orders/o-1" {
		t.Fatalf("start: %d %v", code, body)
	}
	var status map[string]any
	deadline = time.Now().Add(20 * time.Second)
	for {
		code, status = do(t, "GET", base+"/api/sagas/orders/o-1", token, "")
		if code == 200 && status["state"] == "Completed" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("saga o-1 did not complete: %d %v", code, status)
		}
		time.Sleep(50 * time.Millisecond)
	}
	history, _ := status["history"].([]any)
	data, _ := status["data"].(map[string]any)
	if status["terminal"] != true || len(history) != 4 || data == nil {
		t.Fatalf("status %v", status)
	}
	// The data speaks the schema's names, as POST does.
	if data["order_id"] != "o-1" || data["OrderID"] != nil {
		t.Fatalf("data %v, want the Avro field names (order_id), not Go's", data)
	}
	if first := history[0].(map[string]any); first["to"] != "inventory.Pending" || first["outcome"] != "applied" {
		t.Fatalf("first history entry %v", first)
	}
	// The bad requests started nothing.
	if code, body := do(t, "GET", base+"/api/sagas/orders/bad-wrong-type", token, ""); code != 404 {
		t.Fatalf("a refused start left a saga: %d %v", code, body)
	}
	if code, _ := do(t, "GET", base+"/api/sagas/nope/o-1", token, ""); code != 404 {
		t.Fatalf("unknown saga: %d", code)
	}
	// Reads need the token too, and the list finds o-1 as completed.
	for _, path := range []string{"/api/sagas/orders/o-1", "/api/sagas/orders"} {
		if code, body := do(t, "GET", base+path, "", ""); code != 401 {
			t.Fatalf("GET %s without the token: %d %v", path, code, body)
		}
	}
	code, list := do(t, "GET", base+"/api/sagas/orders?state=completed&limit=10", token, "")
	if sagas, _ := list["sagas"].([]any); code != 200 || len(sagas) != 1 || sagas[0].(map[string]any)["id"] != "o-1" ||
		list["counts"].(map[string]any)["completed"] != 1.0 {
		t.Fatalf("list of completed sagas: %d %v", code, list)
	}
	if code, body := do(t, "GET", base+"/metrics", "", ""); code != 200 || !strings.Contains(body["raw"].(string), `sagapipe_saga_finished_total{saga_name="orders",saga_outcome="Completed"} 1`) {
		t.Fatalf("/metrics: %d %v", code, body)
	}

	// A cancel needs the token; o-1 has finished, so it is journaled as
	// ignored.
	if code, body := do(t, "POST", base+"/api/sagas/orders/o-1/cancel", "", ""); code != 401 {
		t.Fatalf("cancel without the token: %d %v", code, body)
	}
	if code, body := do(t, "POST", base+"/api/sagas/refunds/o-1/cancel", token, ""); code != 404 {
		t.Fatalf("cancel of an unknown saga: %d %v", code, body)
	}
	if code, body := do(t, "POST", base+"/api/sagas/orders/o-1/cancel", token, ""); code != 202 || body["event_id"] == "" {
		t.Fatalf("cancel: %d %v", code, body)
	}
	// journaled waits until o-1's history holds n entries; it returns the
	// status and the last entry.
	journaled := func(n int, what string) (map[string]any, map[string]any) {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); ; {
			_, status := do(t, "GET", base+"/api/sagas/orders/o-1", token, "")
			if history, _ := status["history"].([]any); len(history) == n {
				return status, history[n-1].(map[string]any)
			}
			if time.Now().After(deadline) {
				t.Fatalf("the %s was not journaled: %v", what, status)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	if status, last := journaled(5, "cancel"); last["event"] != "cancel" || last["outcome"] != "ignored" || status["state"] != "Completed" {
		t.Fatalf("after the cancel: %v", status)
	}
	// A resume names who asked; o-1 is not in CompensationFailed, so it is
	// journaled as ignored, with who asked.
	if code, body := do(t, "POST", base+"/api/sagas/orders/o-1/resume?by=alice", token, ""); code != 202 || body["requested_by"] != "sagapipe/api/alice" {
		t.Fatalf("resume: %d %v", code, body)
	}
	if _, last := journaled(6, "resume"); last["event"] != "resume" || last["outcome"] != "ignored" || last["requested_by"] != "sagapipe/api/alice" {
		t.Fatalf("after the resume: %v", last)
	}

	took, err := svc.stop()
	if err != nil {
		t.Fatalf("Run after shutdown: %v", err)
	}
	if took > 10*time.Second {
		t.Fatalf("shutdown took %v, over its grace", took)
	}
	if strings.Contains(svc.logs.String(), token) {
		t.Fatalf("the API token is in the logs:\n%s", svc.logs.String())
	}
	if !strings.Contains(svc.logs.String(), `"api_token":"[redacted]"`) {
		t.Fatalf("the start line does not show the configuration redacted:\n%s", svc.logs.String())
	}
	// Durations read as durations, not nanoseconds.
	if !regexp.MustCompile(`"shutdown_grace":"[0-9.]+m?s"`).MatchString(svc.logs.String()) {
		t.Fatalf("the start line does not show shutdown_grace as a duration:\n%s", svc.logs.String())
	}
}
