// Package kafkaerr tells the errors a Kafka client recovers from by itself
// from those that need someone to act.
package kafkaerr
