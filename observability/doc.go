// Package observability sets up OpenTelemetry for a sagapipe service: one
// trace per saga in Jaeger, metrics for Prometheus, and logs that carry the
// trace.
//
// Setup builds a service's tracer and meter providers from the standard
// OTEL_* environment (OTLP over gRPC or HTTP, OTEL_SERVICE_NAME, resource
// attributes, sampler) with the W3C TraceContext and Baggage propagator,
// and returns a Telemetry whose Shutdown flushes what is buffered. Hand its
// providers to the components (saga.WithTracerProvider, pipe.WithTracerProvider,
// dlq.WithTracerProvider and the WithMeterProvider options), or install them
// as otel's globals with SetGlobal, which the components use by default.
//
// How a saga becomes one trace: every Kafka hop is a pair of spans after the
// OTel messaging conventions. Producing a record is a "<topic> publish" span
// whose context is written into the record's traceparent header; consuming
// it is a "<topic> process" span whose parent is read back from that
// header. The orchestrator's process span of a reply is the parent of the
// publish spans of the commands it decides, a participant's process span of
// a command the parent of its reply's publish span, and a timer's span
// continues the span that last changed its saga. So the chain runs unbroken
// from the event that started the saga to the span that reached its
// terminal state. Saga spans carry saga.name, saga.id, saga.step and
// saga.state; those of a compensating saga carry saga.compensation=true; a
// dead-lettered record gets a "<dlq> dead-letter" span with error status and
// the cause as an exception event. A record whose traceparent is missing or
// malformed starts a new trace; it is never failed for it.
//
// Metrics (MetricsHandler serves them in the Prometheus text format):
//
//	sagapipe_saga_started_total{saga_name}
//	sagapipe_saga_finished_total{saga_name,saga_outcome}        Completed, Compensated, CompensationFailed
//	sagapipe_saga_duration_seconds{saga_name,saga_outcome}      start event to terminal state
//	sagapipe_saga_step_duration_seconds{saga_name,saga_step}    command to the reply or timeout
//	sagapipe_saga_step_retries_total{saga_name,saga_step}       commands resent after a timeout
//	sagapipe_saga_in_flight{saga_name}                          owned sagas not yet terminal
//	sagapipe_consumer_lag{messaging_destination_name,messaging_destination_partition_id,messaging_consumer_group_name}
//	sagapipe_dlq_records_total{dlq_source_topic,error_class}
//	sagapipe_dlq_retries_total{dlq_source_topic}
//	sagapipe_transaction_duration_seconds{outcome}              commit or abort
//
// plus the Go runtime's and the process's. NewLogHandler adds trace_id and
// span_id to every slog record logged with a span in its context; the
// components log the lines about a saga that way, with saga_name, saga_id
// and correlation_id.
package observability
