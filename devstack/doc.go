// Package devstack runs the embedded development stack: an in-process Kafka
// (franz-go's kfake) and an in-process Confluent-compatible Schema Registry,
// both listening on real TCP ports on 127.0.0.1, so any Kafka client or
// registry client on this machine can use them with no setup.
//
// With a data directory both keep their state across a restart: kfake writes
// its log segments and group offsets under <dir>/kafka, the registry its
// write journal under <dir>/registry.
//
// Test your own sagas and participants against it: Start(Config{}) gives a
// fresh broker and registry on free ports; Close stops both.
package devstack
