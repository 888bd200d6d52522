// Package registry is the embedded Confluent-compatible Schema Registry.
//
// It serves franz-go's srfake handler, which implements the registry's REST
// API in memory but answers every compatibility question with "compatible".
// This package puts real enforcement in front of it: every registration
// (POST /subjects/{subject}/versions) and every compatibility check
// (POST /compatibility/subjects/{subject}/versions[/{version}]) is checked
// with hamba/avro's schema compatibility checker against the subject's level
// (NONE, BACKWARD, BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE, FULL,
// FULL_TRANSITIVE), in the directions that level requires. An incompatible
// registration is refused with HTTP 409 and Confluent's error body, whose
// message names the offending field.
//
// The default level is FULL_TRANSITIVE: a saga's events live in the journal
// for as long as the saga may be replayed, so every reader must read every
// version. Change it globally with PUT /config or per subject with
// PUT /config/{subject}.
//
// With a data directory the registry survives a restart: every successful
// write request is appended to a journal and replayed, in order, when the
// registry starts, so schema IDs stay what the records on disk refer to.
// Schema contexts (/contexts/...) are served by srfake but not checked.
package registry
