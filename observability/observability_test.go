package observability_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.uber.org/goleak"

	"github.com/sagapipe/sagapipe/observability"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestSetupReadsTheEnvironment(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name        string
		env         map[string]string
		opts        []observability.Opt
		wantTracing string
		wantService string
		wantErr     string
	}{
		{name: "nothing set: no export", wantTracing: "none", wantService: observability.DefaultServiceName},
		{name: "endpoint set: otlp over http", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"},
			wantTracing: "otlp http/protobuf to http://127.0.0.1:4318", wantService: observability.DefaultServiceName},
		{name: "grpc", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
			wantTracing: "otlp grpc to http://127.0.0.1:4317", wantService: observability.DefaultServiceName},
		{name: "exporter none", env: map[string]string{"OTEL_TRACES_EXPORTER": "none"}, wantTracing: "none", wantService: observability.DefaultServiceName},
		{name: "sdk disabled", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318", "OTEL_SDK_DISABLED": "true"}, wantTracing: "none"},
		{name: "service name: env over code", env: map[string]string{"OTEL_SERVICE_NAME": "from-env"},
			opts: []observability.Opt{observability.WithServiceName("from-code")}, wantTracing: "none", wantService: "from-env"},
		{name: "service name: WithResource over env", env: map[string]string{"OTEL_SERVICE_NAME": "from-env"},
			opts: []observability.Opt{observability.WithResource(attribute.String("service.name", "forced"))}, wantTracing: "none", wantService: "forced"},
		{name: "bad protocol", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "carrier-pigeon"},
			wantErr: "OTEL_EXPORTER_OTLP_PROTOCOL"},
		{name: "bad exporter", env: map[string]string{"OTEL_TRACES_EXPORTER": "fax"}, wantErr: "OTEL_TRACES_EXPORTER"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			tel, err := observability.Setup(ctx, tc.opts...)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want one naming %s", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = tel.Shutdown(ctx) }() // nothing was exported
			if got := tel.Tracing(); got != tc.wantTracing {
				t.Errorf("Tracing() = %q, want %q", got, tc.wantTracing)
			}
			if tc.wantService != "" {
				if _, sdk := tel.TracerProvider().(*sdktrace.TracerProvider); sdk != (tc.wantTracing != "none") {
					t.Fatalf("tracer provider %T with tracing %q", tel.TracerProvider(), tc.wantTracing)
				}
				// The resource shows in target_info on /metrics either way.
				body := scrape(t, tel.MetricsHandler())
				if !strings.Contains(body, `service_name="`+tc.wantService+`"`) {
					t.Errorf("service.name is not %q:\n%s", tc.wantService, grep(body, "target_info"))
				}
				// Each process tells itself apart: Jaeger adjusts clock
				// skew per host and warns on spans without one.
				for _, attr := range []string{"host_name", "service_instance_id", "service_version"} {
					if !strings.Contains(grep(body, "target_info"), attr+`="`) {
						t.Errorf("no %s in the resource:\n%s", attr, grep(body, "target_info"))
					}
				}
			}
		})
	}
}

func scrape(t *testing.T, h http.Handler) string {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("/metrics: %d", rec.Code)
	}
	return rec.Body.String()
}

func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func TestMetricsHandlerServesPrometheusText(t *testing.T) {
	ctx := context.Background()
	tel, err := observability.Setup(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tel.Shutdown(ctx) }() // nothing was exported
	c, err := tel.MeterProvider().Meter("test").Int64Counter("sagapipe.test.things", metric.WithUnit("{thing}"))
	if err != nil {
		t.Fatal(err)
	}
	c.Add(ctx, 3, metric.WithAttributes(attribute.String("saga.name", "orders")))
	body := scrape(t, tel.MetricsHandler())
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("not Prometheus text: %v", err)
	}
	f := families["sagapipe_test_things_total"]
	if f == nil || f.Metric[0].Counter.GetValue() != 3 || f.Metric[0].Label[0].GetValue() != "orders" {
		t.Fatalf("sagapipe_test_things_total: %v", f)
	}
	if families["go_goroutines"] == nil || families["process_resident_memory_bytes"] == nil {
		t.Fatal("no Go runtime or process metrics")
	}
}

func TestLogHandlerAddsTraceIDs(t *testing.T) {
	tp := sdktrace.NewTracerProvider()
	defer func() { _ = tp.Shutdown(context.Background()) }() // in-memory
	ctx, span := tp.Tracer("test").Start(context.Background(), "process")
	defer span.End()
	var buf bytes.Buffer
	log := observability.NewJSONLogger(&buf, nil)
	log.InfoContext(ctx, "saga event applied", "saga_id", "order-1")
	log.Info("no span here")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	var first, second map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &first); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(lines[1]), &second); err != nil {
		t.Fatal(err)
	}
	if first["trace_id"] != span.SpanContext().TraceID().String() || first["span_id"] != span.SpanContext().SpanID().String() || first["saga_id"] != "order-1" {
		t.Errorf("line with a span: %v", first)
	}
	if _, ok := second["trace_id"]; ok {
		t.Errorf("line without a span has a trace_id: %v", second)
	}
}
