package testkit

import (
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync/atomic"
	"testing"
)

// FlakyRegistry is a proxy in front of the registry at registryURL that
// answers 503 (Confluent's error body) while Down is set, counting the
// requests it refuses. It stops with the test.
type FlakyRegistry struct {
	URL     string
	Down    atomic.Bool
	Refused atomic.Int64
}

// NewFlakyRegistry starts a FlakyRegistry in front of registryURL.
func NewFlakyRegistry(t testing.TB, registryURL string) *FlakyRegistry {
	t.Helper()
	target, err := url.Parse(registryURL)
	if err != nil {
		t.Fatal(err)
	}
	f := &FlakyRegistry{}
	proxy := httputil.NewSingleHostReverseProxy(target)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if f.Down.Load() {
			f.Refused.Add(1)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte(`{"error_code":50301,"message":"down for maintenance"}`))
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	f.URL = srv.URL
	return f
}
