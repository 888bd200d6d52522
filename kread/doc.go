// Package kread reads Kafka topics to their end as it was when the read
// began: what restoring state from a state topic or a journal, reading a
// saga's history and listing a dead-letter topic all need.
package kread
