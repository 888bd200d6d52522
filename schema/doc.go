// Package schema is the serde every sagapipe component uses: Avro values in
// the Confluent wire format, schemas in a Confluent-compatible Schema
// Registry, and the event envelope that rides in Kafka headers.
//
// A value on the wire is the magic byte 0x00, the writer's schema ID as four
// big-endian bytes, and the Avro binary encoding. A Codec[T] encodes T with
// its schema, registered under the subject its SubjectNameStrategy names
// (TopicNameStrategy, "<topic>-value", by default; RecordNameStrategy for
// topics that carry several event types). It decodes by the writer's schema
// ID into T, resolving schema evolution the way Avro allows: a reader on v1
// reads v2 data and the reverse, with defaults filling fields the writer did
// not have.
//
// No registry call is made per message. A Serde caches schemas by ID and IDs
// by subject and schema text; a Codec caches the ID per topic and the
// resolved reader per writer ID. Each Codec has a hamba configuration of its
// own, because hamba caches encoders by a fingerprint that ignores defaults
// and two schema versions that differ only in a default must not share one.
//
// Errors say what to do about them. Bytes that are not framed
// (*FramingError), an unknown schema ID (*UnknownSchemaIDError), a payload
// that does not decode (*DecodeError) and a missing or malformed envelope
// header (*HeaderError) are poison: retrying never helps, and they have a
// method Poison() bool that reports true, which dlq/ reads to dead-letter
// the record at once. An unreachable registry (*RegistryError matching
// ErrRegistryUnavailable) is transient: it has Temporary() bool. Test them
// with errors.Is against the Err* sentinels or errors.As against the types.
//
// The envelope is the CloudEvents Kafka binding in binary mode (ce_id,
// ce_type, ce_source, ce_time, ce_specversion, content-type) plus sagapipe's
// correlation_id, causation_id, saga_name, saga_id, saga_step, reply_to and
// the W3C traceparent and tracestate. ReadEnvelope validates it; event IDs
// are UUIDv7s and are the participants' idempotency key.
package schema
