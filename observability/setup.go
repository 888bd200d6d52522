package observability

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"runtime/debug"
	"strings"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/contrib/exporters/autoexport"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/sagapipe/sagapipe/internal/telemetry"
)

// DefaultServiceName is service.name when neither OTEL_SERVICE_NAME nor
// WithServiceName sets one.
const DefaultServiceName = "sagapipe-orchestrator"

// Opt configures Setup.
type Opt interface{ apply(*setupConfig) }

type optionFunc func(*setupConfig)

func (f optionFunc) apply(c *setupConfig) { f(c) }

type setupConfig struct {
	serviceName string
	attrs       []attribute.KeyValue
	lookupEnv   func(string) (string, bool)
}

// WithServiceName sets service.name unless OTEL_SERVICE_NAME (or
// OTEL_RESOURCE_ATTRIBUTES) sets it (default DefaultServiceName).
func WithServiceName(name string) Opt {
	return optionFunc(func(c *setupConfig) { c.serviceName = name })
}

// WithResource adds resource attributes that take precedence over the
// environment: one process that plays several services (the demo's
// participants) names each with semconv.ServiceName.
func WithResource(attrs ...attribute.KeyValue) Opt {
	return optionFunc(func(c *setupConfig) { c.attrs = append(c.attrs, attrs...) })
}

// Telemetry is one service's OpenTelemetry SDK: its tracer and meter
// providers, the propagator, and the Prometheus registry behind /metrics.
type Telemetry struct {
	tracerProvider trace.TracerProvider
	sdkTracer      *sdktrace.TracerProvider // nil when spans are not exported
	meterProvider  *sdkmetric.MeterProvider
	registry       *prometheus.Registry
	propagator     propagation.TextMapPropagator
	exporter       string
}

// Setup builds a service's OpenTelemetry SDK from the standard environment:
//
//   - Traces are exported when OTEL_TRACES_EXPORTER is set (otlp, console;
//     none turns them off) or when an OTLP endpoint is
//     (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT).
//     Without either nothing is exported, rather than failing against a
//     collector that is not there. OTEL_EXPORTER_OTLP_PROTOCOL chooses
//     grpc or http/protobuf (default); OTEL_TRACES_SAMPLER and
//     OTEL_TRACES_SAMPLER_ARG the sampler (default parentbased_always_on);
//     OTEL_BSP_* the batching.
//   - Metrics are always kept for Prometheus (MetricsHandler); they are also
//     pushed when OTEL_METRICS_EXPORTER is set (otlp, console).
//   - The resource comes from OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES.
//   - OTEL_SDK_DISABLED=true turns tracing off.
//
// The propagator is W3C TraceContext plus Baggage. Setup does not touch
// otel's globals; SetGlobal does. Shutdown flushes what is buffered.
func Setup(ctx context.Context, opts ...Opt) (*Telemetry, error) {
	cfg := setupConfig{serviceName: DefaultServiceName, lookupEnv: os.LookupEnv}
	for _, o := range opts {
		o.apply(&cfg)
	}
	res, err := newResource(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("observability: resource (check OTEL_RESOURCE_ATTRIBUTES): %w", err)
	}

	t := &Telemetry{propagator: telemetry.Propagator(), tracerProvider: noop.NewTracerProvider(), exporter: "none"}
	if disabled, _ := cfg.lookupEnv("OTEL_SDK_DISABLED"); !strings.EqualFold(disabled, "true") && tracesWanted(cfg.lookupEnv) {
		exp, err := autoexport.NewSpanExporter(ctx)
		if err != nil {
			return nil, fmt.Errorf("observability: traces exporter (check OTEL_TRACES_EXPORTER and OTEL_EXPORTER_OTLP_PROTOCOL): %w", err)
		}
		if !autoexport.IsNoneSpanExporter(exp) {
			t.sdkTracer = sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res),
				sdktrace.WithIDGenerator(IDGenerator()))
			t.tracerProvider = t.sdkTracer
			t.exporter = exporterName(cfg.lookupEnv)
		}
	}

	t.registry = prometheus.NewRegistry()
	t.registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	prom, err := otelprom.New(otelprom.WithRegisterer(t.registry), otelprom.WithoutScopeInfo())
	if err != nil {
		return nil, errors.Join(fmt.Errorf("observability: prometheus exporter: %w", err), t.shutdownTracer(ctx))
	}
	mopts := []sdkmetric.Option{sdkmetric.WithResource(res), sdkmetric.WithReader(prom)}
	if _, set := cfg.lookupEnv("OTEL_METRICS_EXPORTER"); set {
		reader, err := autoexport.NewMetricReader(ctx)
		if err != nil {
			return nil, errors.Join(fmt.Errorf("observability: metrics exporter (check OTEL_METRICS_EXPORTER): %w", err), t.shutdownTracer(ctx))
		}
		if !autoexport.IsNoneMetricReader(reader) {
			mopts = append(mopts, sdkmetric.WithReader(reader))
		}
	}
	t.meterProvider = sdkmetric.NewMeterProvider(mopts...)
	return t, nil
}

// IDGenerator returns the ID generator a TracerProvider needs for sagas'
// traces to have their shape: a span per saga, spans per step under it
// (Setup's provider has it). Those spans outlive the process that began
// them, so their IDs are chosen then, kept in the saga's state and given to
// the SDK through this generator when they end. With another generator the
// saga and step spans are left out and each hop is its causal parent's
// child: one chain. It makes random IDs otherwise, as the SDK's does.
//
//	tp := sdktrace.NewTracerProvider(sdktrace.WithIDGenerator(observability.IDGenerator()), ...)
func IDGenerator() sdktrace.IDGenerator { return telemetry.IDGenerator{} }

// JaegerHostKey is the resource attribute Jaeger's query API (the one its
// UI reads) tells hosts apart by: spans of one host are never adjusted for
// clock skew against each other, and spans of a process without it are
// checked against their parent's times, with a warning where a consumer's
// span falls outside its producer's.
const JaegerHostKey = attribute.Key("ip")

// hostIP returns the host's first IPv4 address, not a loopback one unless
// it has no other, as host.ip and JaegerHostKey (none when it has none).
func hostIP() []attribute.KeyValue {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var found net.IP
	for _, a := range addrs {
		if ipnet, ok := a.(*net.IPNet); ok && ipnet.IP.To4() != nil && (found == nil || found.IsLoopback()) {
			found = ipnet.IP
		}
	}
	if found == nil {
		return nil
	}
	return []attribute.KeyValue{semconv.HostIP(found.String()), JaegerHostKey.String(found.String())}
}

// newResource layers the resource: the SDK's defaults, the process (host
// name, a service instance ID, the service version), the service name
// given in code, the environment, then WithResource's attributes. A
// backend tells processes apart by host and instance (Jaeger adjusts clock
// skew per host, and warns on every span without one).
func newResource(ctx context.Context, cfg setupConfig) (*resource.Resource, error) {
	env, err := resource.New(ctx, resource.WithFromEnv())
	if err != nil {
		return nil, err
	}
	host, err := resource.New(ctx, resource.WithHost())
	if err != nil {
		return nil, err
	}
	res := resource.Default()
	for _, layer := range []*resource.Resource{
		host, resource.NewSchemaless(hostIP()...),
		resource.NewSchemaless(semconv.ServiceInstanceID(uuid.NewString()), semconv.ServiceVersion(version())),
		resource.NewSchemaless(semconv.ServiceName(cfg.serviceName)), env, resource.NewSchemaless(cfg.attrs...),
	} {
		if res, err = resource.Merge(res, layer); err != nil {
			return nil, err
		}
	}
	return res, nil
}

// tracesWanted tells whether the environment asks for spans to be exported.
func tracesWanted(lookup func(string) (string, bool)) bool {
	for _, k := range []string{"OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"} {
		if v, ok := lookup(k); ok && v != "" {
			return true
		}
	}
	return false
}

func exporterName(lookup func(string) (string, bool)) string {
	name, _ := lookup("OTEL_TRACES_EXPORTER")
	if name == "" || name == "otlp" {
		proto, _ := lookup("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
		if proto == "" {
			proto, _ = lookup("OTEL_EXPORTER_OTLP_PROTOCOL")
		}
		if proto == "" {
			proto = "http/protobuf"
		}
		endpoint, _ := lookup("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
		if endpoint == "" {
			endpoint, _ = lookup("OTEL_EXPORTER_OTLP_ENDPOINT")
		}
		if endpoint == "" {
			endpoint = "the default endpoint"
		}
		return "otlp " + proto + " to " + endpoint
	}
	return name
}

// TracerProvider is where the service's spans go; a no-op provider when
// tracing is off.
func (t *Telemetry) TracerProvider() trace.TracerProvider { return t.tracerProvider }

// MeterProvider is where the service's metrics go.
func (t *Telemetry) MeterProvider() metric.MeterProvider { return t.meterProvider }

// Propagator is W3C TraceContext plus Baggage.
func (t *Telemetry) Propagator() propagation.TextMapPropagator { return t.propagator }

// Tracing describes where spans are exported, or "none".
func (t *Telemetry) Tracing() string { return t.exporter }

// MetricsHandler serves the metrics in the Prometheus text format (mount it
// at /metrics): the sagapipe.* instruments plus Go runtime and process
// metrics.
func (t *Telemetry) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(t.registry, promhttp.HandlerOpts{ErrorLog: nil})
}

// SetGlobal installs the providers and the propagator as otel's globals,
// which every sagapipe component uses unless given others.
func (t *Telemetry) SetGlobal() {
	otel.SetTracerProvider(t.tracerProvider)
	otel.SetMeterProvider(t.meterProvider)
	otel.SetTextMapPropagator(t.propagator)
}

// Shutdown exports what is buffered and stops the providers. Call it once,
// after the components that use them have stopped.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	return errors.Join(t.shutdownTracer(ctx), t.meterProvider.Shutdown(ctx))
}

func (t *Telemetry) shutdownTracer(ctx context.Context) error {
	if t.sdkTracer == nil {
		return nil
	}
	if err := t.sdkTracer.Shutdown(ctx); err != nil {
		return fmt.Errorf("observability: flushing spans: %w", err)
	}
	return nil
}

// version is the main module's version as the binary was built (a tag
// with go install, "(devel)" from a checkout), or "unknown".
func version() string {
	if info, ok := debug.ReadBuildInfo(); ok && info.Main.Version != "" {
		return info.Main.Version
	}
	return "unknown"
}
