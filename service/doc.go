// Package service runs sagas as a deployable service: configuration from
// flags, SAGAPIPE_* environment variables and a YAML file; one saga runtime
// per registered saga, sharing the work with the other instances of the
// same consumer groups; an HTTP server with probes, Prometheus metrics and
// a small saga API; OpenTelemetry from the OTEL_* environment; and a
// graceful shutdown on SIGTERM or SIGINT.
//
// A team's own main registers its sagas and hands over:
//
//	func main() {
//		orders, err := mysagas.Orders()
//		if err != nil {
//			log.Fatal(err)
//		}
//		service.Main(service.Register(orders))
//	}
//
// A main with flags of its own passes them to MainWithFlags, which parses
// them with the service's.
//
// cmd/orchestrator is such a main, with the example orders saga, plus the
// operator subcommands.
package service
