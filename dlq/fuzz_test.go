package dlq_test

import (
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/dlq"
	"github.com/sagapipe/sagapipe/pipe"
)

// FuzzParseEntry: dead-letter topics hold whatever was written to them; any
// headers give an entry or an error naming the record, never a panic.
func FuzzParseEntry(f *testing.F) {
	f.Add("orders", "3", "17", "poison", "2", "2026-11-23T10:00:00Z")
	f.Add("", "x", "-1", "", "many", "yesterday")
	f.Add("orders", "-1", "0", "poison", "1", "")
	f.Add("t", "2147483648", "9223372036854775807", "released", "0", "")
	f.Fuzz(func(t *testing.T, topic, partition, offset, class, attempts, at string) {
		rec := &kgo.Record{Topic: "x.dlq", Headers: []kgo.RecordHeader{
			{Key: pipe.HeaderOriginalTopic, Value: []byte(topic)},
			{Key: pipe.HeaderOriginalPartition, Value: []byte(partition)},
			{Key: pipe.HeaderOriginalOffset, Value: []byte(offset)},
			{Key: dlq.HeaderErrorClass, Value: []byte(class)},
			{Key: dlq.HeaderAttempts, Value: []byte(attempts)},
			{Key: dlq.HeaderFirstFailedAt, Value: []byte(at)},
		}}
		e, err := dlq.ParseEntry(rec)
		if err == nil && (e.OriginTopic == "" || e.OriginPartition < 0) {
			t.Fatalf("accepted %+v without a valid origin: replay could not place it", e)
		}
	})
}
