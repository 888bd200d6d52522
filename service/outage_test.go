package service_test

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sagapipe/sagapipe/devstack"
	"github.com/sagapipe/sagapipe/examples/orders"
	"github.com/sagapipe/sagapipe/service"
)

// port is addr's port.
func port(t *testing.T, addr string) int {
	t.Helper()
	i := strings.LastIndex(addr, ":")
	p, err := strconv.Atoi(addr[i+1:])
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestServiceRidesThroughABrokerRestart stops the broker and the registry
// while the service runs sagas and starts them again on the same ports 7 s
// later: the service stays up, /readyz says 503 and starts are refused
// with 503 and Retry-After meanwhile, and once the cluster is back it is
// ready again by itself and every saga, before and after, completes.
func TestServiceRidesThroughABrokerRestart(t *testing.T) {
	dir := t.TempDir()
	first, err := devstack.Start(devstack.Config{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	kafkaPort, registryPort := port(t, first.KafkaAddrs()[0]), port(t, first.RegistryURL())
	s := ordersWorld(t, first) // its participants ride through the restart too
	st := startService(t, service.Config{Brokers: first.KafkaAddrs(), Registry: service.RegistryConfig{URL: first.RegistryURL()},
		SessionTimeout: 6 * time.Second, TransactionTimeout: 10 * time.Second}, s)
	base := st.http.URL
	waitReady := func(what string) {
		t.Helper()
		for deadline := time.Now().Add(90 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			if code, _ := do(t, "GET", base+"/readyz", "", ""); code == http.StatusOK {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("not ready %s within 90s; logs:\n%s", what, st.logs.String())
			}
		}
	}
	waitReady("at first")
	place := func(from, to int) {
		t.Helper()
		for i := from; i < to; i++ {
			o := orders.DemoOrder(i)
			body := fmt.Sprintf(`{"order_id":%q,"customer_id":"c","sku":"s","quantity":1,"unit_price_cents":100,"total_cents":100,"currency":"EUR","placed_at":"2026-01-01T00:00:00Z","express":false}`, o.OrderID)
			if code, resp := do(t, "POST", base+"/api/sagas/orders?id="+o.OrderID, "", body); code != http.StatusAccepted {
				t.Fatalf("start %s: %d %v", o.OrderID, code, resp)
			}
		}
	}
	place(0, 20)

	first.Close()
	time.Sleep(7 * time.Second) // past the runtime's 5 s grace before it calls the cluster out of reach
	if code, _ := do(t, "GET", base+"/readyz", "", ""); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz during the outage: %d, want 503", code)
	}
	req, _ := http.NewRequest("POST", base+"/api/sagas/orders?id=during", strings.NewReader(validOrder))
	if resp, err := http.DefaultClient.Do(req); err != nil {
		t.Errorf("start during the outage: %v", err)
	} else {
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
			t.Errorf("start during the outage: %d, Retry-After %q; want 503 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
		}
	}

	second, err := devstack.Start(devstack.Config{DataDir: dir, KafkaPort: kafkaPort, RegistryPort: registryPort})
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	waitReady("after the restart")
	place(20, 40)
	for i := range 40 {
		id := orders.DemoOrder(i).OrderID
		for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			_, status := do(t, "GET", base+"/api/sagas/orders/"+id, "", "")
			if status["state"] == "Completed" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %v after 60s; logs:\n%s", id, status["state"], st.logs.String())
			}
		}
	}
	if _, err := st.stop(); err != nil {
		t.Fatalf("the service stopped with %v", err)
	}
}
