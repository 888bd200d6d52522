// Package pipe moves records from one stage's topic to the next, after
// Karafka Pro's message piping.
//
// A Piper, built on a *kgo.Client, offers PipeSync, PipeAsync, PipeManySync
// and PipeManyAsync. By default the consumed record's key, value and headers
// are forwarded without deserializing; a Message may replace the value (a
// newly encoded Avro event) and the event type. An EnhanceFunc may change
// any record before it is sent.
//
// Keys: the source key is reused; a record without one gets a key derived
// from its source partition, so every record of one source partition lands
// in one target partition, in order, whatever the two partition counts (with
// a key-hashing partitioner, which kgo's default is). Records that have keys
// keep per-key order.
//
// Headers: original_topic, original_partition, original_offset and
// original_consumer_group are written on every piped record, overwriting
// earlier ones (as when piping out of a dead-letter topic). The envelope
// moves one hop: a new ce_id and ce_time, causation_id set to the source's
// ce_id, correlation and saga headers carried over, and the trace context of
// the call's ctx written into traceparent/tracestate.
//
// Results: every piped message yields exactly one Result carrying the
// record, the caller's pass-through value and the error (nil on success):
// returned by the sync calls, given to a callback by the async ones (to a
// channel with ResultsTo). That holds when the broker is unreachable, ctx is
// cancelled or the piper is closing: those are failure results, never lost
// ones. At most WithMaxInFlight records await their result; at the bound the
// calls block (cancellable by ctx), which is the backpressure.
//
// Transactions: Piper.Transact pipes a polled batch inside a kgo
// GroupTransactSession and commits the piped records and the consumed
// offsets together, or aborts both.
//
// Participants: a StageWorker consumes a command topic in a group, decodes
// each command with schema/, calls a typed Handler and pipes its Reply to
// the command's reply_to topic, skipping commands whose ce_id it has
// handled. A Middleware wraps the Handler (Chain composes several; the
// dlq package's RetryMiddleware retries with backoff). Failures go to a
// FailurePolicy; the default stops the worker without losing the command.
package pipe
