// Package dlq decides what happens to a record whose processing fails:
// retries with exponential backoff and full jitter up to MaxRetries, poison
// errors that skip the retries, and ordered dead-letter topics in which every
// record of one origin partition lands in one DLQ partition, in order, with
// headers that say where it came from and why it failed.
package dlq
