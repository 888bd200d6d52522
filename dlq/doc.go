// Package dlq decides what becomes of a record whose processing fails, after
// Karafka Pro's enhanced dead-letter queue.
//
// A Policy (a plain struct whose zero value works) says how often to retry
// (MaxRetries), how long to back off (exponential with full jitter between
// InitialBackoff and MaxBackoff), how many retries a minute may spend at
// most (RetryBudgetPerMinute), and where failures go: Topic, by default
// "<topic>.dlq", or nowhere (NoDispatch). Its Classifier sends poison
// errors, wrapped with Poison or reporting Poison() true as schema/'s
// framing, unknown-ID, decode and header errors do, to the dead-letter topic
// at once, and retries everything else.
//
// A Consumer applies a Policy to a Handler. A failing record holds back only
// the records behind it in its partition, which is paused in kgo so that the
// consumer keeps polling and stays in its group; other partitions keep
// flowing. Records that fail for good are dispatched before their offsets
// are committed, so a crash never loses one. Every record of one origin
// partition goes to one DLQ partition (origin partition modulo the DLQ's
// partition count), in order, with its key, value and headers byte for byte
// and these headers added: original_topic, original_partition,
// original_offset, original_consumer_group, error_class (poison or
// exhausted), error_type, error_message, attempts, first_failed_at,
// last_failed_at, and the trace context. Hooks (HookDeadLettered, HookRetry)
// feed metrics and logs.
//
// A pipe.StageWorker applies a Policy through two pieces: RetryMiddleware
// wraps its handler (a pipe.Middleware) and retries a failing command in
// place with the policy's backoff, and FailurePolicy dead-letters what the
// middleware gives up on (a *GaveUpError) with its class and real attempt
// count, in origin partition order. The worker keeps its typed decoding,
// idempotency and reply piping; unlike a Consumer it holds its whole batch,
// not one partition, while a command backs off.
//
// Sequenced mode (Policy.Sequenced), after Axon's sequenced dead-letter
// queue: once a record with key K is dead-lettered, later records of K in
// the same partition follow it into the DLQ (predecessor_dead_lettered)
// instead of being applied out of order, until K's records are replayed or
// K is released. Parked keys are rebuilt from the DLQ when a partition is
// assigned, so they survive restarts.
//
// Operators work with List, Replay (republish to the original topic and
// partition, resumable and free of duplicates: progress and records commit
// in one transaction) and Release, also as "orchestrator dlq list | show |
// replay | release".
package dlq
