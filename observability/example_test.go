package observability_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"github.com/sagapipe/sagapipe/observability"
)

// A service sets up OpenTelemetry once, from the OTEL_* environment, and
// flushes it on the way out. With no exporter configured nothing is sent
// anywhere, and metrics are still served for Prometheus.
func Example() {
	ctx := context.Background()
	os.Unsetenv("OTEL_EXPORTER_OTLP_ENDPOINT") // as on a machine without a collector
	tel, err := observability.Setup(ctx, observability.WithServiceName("orders-orchestrator"))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer func() { _ = tel.Shutdown(ctx) }() // flushes spans; nothing to flush here
	tel.SetGlobal()
	slog.SetDefault(observability.NewJSONLogger(os.Stderr, slog.LevelInfo))

	fmt.Println("spans exported:", tel.Tracing())
	fmt.Println("metrics handler:", tel.MetricsHandler() != nil)
	// Output:
	// spans exported: none
	// metrics handler: true
}
