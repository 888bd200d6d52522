// Package pipe moves records from one stage's topic to the next, after
// Karafka Pro's message piping: synchronously or asynchronously, one record
// or many, with an enhance hook, provenance headers (original_topic,
// original_partition, original_offset, original_consumer_group), keys that
// keep each source partition's order, and a result for every piped record.
// Its transactional mode pipes and marks consumed in one Kafka transaction.
package pipe
