package main

import (
	"context"
	"errors"
	"io"
	"log/slog"

	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"

	"github.com/sagapipe/sagapipe/examples/orders"
	"github.com/sagapipe/sagapipe/observability"
)

// demoTelemetry is the OpenTelemetry SDK of each service of the demo, set up
// from the OTEL_* environment. The orchestrator is named by
// OTEL_SERVICE_NAME if set; the storefront and the participants, which this
// one process plays, keep their own names so that traces show five services.
type demoTelemetry struct {
	services map[string]*observability.Telemetry
	logger   *slog.Logger
}

func setupDemoTelemetry(ctx context.Context, logTo io.Writer, level slog.Level) (*demoTelemetry, error) {
	d := &demoTelemetry{services: map[string]*observability.Telemetry{},
		logger: observability.NewJSONLogger(logTo, level)}
	for _, name := range orders.Services {
		opt := observability.WithResource(semconv.ServiceName(name))
		if name == orders.ServiceOrchestrator {
			opt = observability.WithServiceName(name)
		}
		t, err := observability.Setup(ctx, opt)
		if err != nil {
			return nil, errors.Join(err, d.shutdown(ctx))
		}
		d.services[name] = t
	}
	return d, nil
}

func (d *demoTelemetry) orchestrator() *observability.Telemetry {
	return d.services[orders.ServiceOrchestrator]
}

func (d *demoTelemetry) forService(name string) orders.Telemetry {
	t := d.services[name]
	return orders.Telemetry{TracerProvider: t.TracerProvider(), MeterProvider: t.MeterProvider(),
		Logger: d.logger.With("service", name)}
}

// shutdown flushes every service's spans.
func (d *demoTelemetry) shutdown(ctx context.Context) error {
	var errs []error
	for _, t := range d.services {
		errs = append(errs, t.Shutdown(ctx))
	}
	return errors.Join(errs...)
}
