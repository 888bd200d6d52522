// Package e2e holds end-to-end tests that run sagapipe, on the embedded
// stack, against participants written on other Kafka clients than kgo, in
// their own processes.
//
// The librdkafka participant (testdata/participant.py, on confluent_kafka
// and Apache Avro) answers the orders saga's commands the way a Python team
// would: it decodes them from the registry's wire format, keeps their
// effects by idempotency key, copies the envelope onto its replies and
// produces them keyed by saga ID with librdkafka's default partitioner,
// which hashes keys with CRC32 where the orchestrator places sagas by
// murmur2. Its tests need Debian's python3-confluent-kafka and python3-avro.
//
// The package has no code of its own; the tests are the point.
package e2e
