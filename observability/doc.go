// Package observability sets up OpenTelemetry tracing and metrics, carries
// trace context in Kafka headers so that one saga is one connected trace, and
// gives structured logs that carry trace, correlation and saga IDs.
package observability
