package dlq

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagapipe/sagapipe/internal/telemetry"
	"github.com/sagapipe/sagapipe/pipe"
)

// Header names added to a dead-letter record, next to pipe's provenance
// headers (original_topic, original_partition, original_offset,
// original_consumer_group). Values are strings; times are RFC 3339.
const (
	HeaderErrorClass    = "error_class"
	HeaderErrorType     = "error_type"
	HeaderErrorMessage  = "error_message"
	HeaderAttempts      = "attempts"
	HeaderFirstFailedAt = "first_failed_at"
	HeaderLastFailedAt  = "last_failed_at"
)

// maxErrorMessage bounds error_message so one verbose error cannot make the
// dead-letter record too large to produce.
const maxErrorMessage = 4 << 10

// Failure is why and how a record failed for good.
type Failure struct {
	Err           error
	Class         Class
	Attempts      int
	FirstFailedAt time.Time
	LastFailedAt  time.Time
}

// NewRecord builds the dead-letter record of rec: its key, value and headers
// byte for byte, with the provenance and error headers written over any
// earlier ones (a record replayed and failed again says where it failed
// last), and the trace context of ctx. The record is marked for the DLQ
// partition rec.Partition modulo the topic's count (see pipe.ToPartition).
func NewRecord(ctx context.Context, rec *kgo.Record, f Failure, topic, group string, propagator propagation.TextMapPropagator) *kgo.Record {
	var trace propagation.MapCarrier = map[string]string{}
	if propagator != nil {
		propagator.Inject(ctx, trace)
	}
	headers := make([]kgo.RecordHeader, 0, len(rec.Headers)+10+len(trace))
	for _, h := range rec.Headers {
		switch h.Key {
		case pipe.HeaderOriginalTopic, pipe.HeaderOriginalPartition, pipe.HeaderOriginalOffset, pipe.HeaderOriginalConsumerGroup,
			HeaderErrorClass, HeaderErrorType, HeaderErrorMessage, HeaderAttempts, HeaderFirstFailedAt, HeaderLastFailedAt:
			continue
		}
		if _, ok := trace[h.Key]; ok {
			continue
		}
		headers = append(headers, h)
	}
	str := func(k, v string) kgo.RecordHeader { return kgo.RecordHeader{Key: k, Value: []byte(v)} }
	headers = append(headers,
		str(pipe.HeaderOriginalTopic, rec.Topic),
		str(pipe.HeaderOriginalPartition, strconv.Itoa(int(rec.Partition))),
		str(pipe.HeaderOriginalOffset, strconv.FormatInt(rec.Offset, 10)),
		str(pipe.HeaderOriginalConsumerGroup, group),
		str(HeaderErrorClass, string(f.Class)),
		str(HeaderErrorType, errorType(f.Err)),
		str(HeaderErrorMessage, truncate(errorMessage(f.Err), maxErrorMessage)),
		str(HeaderAttempts, strconv.Itoa(f.Attempts)),
		str(HeaderFirstFailedAt, f.FirstFailedAt.UTC().Format(time.RFC3339Nano)),
		str(HeaderLastFailedAt, f.LastFailedAt.UTC().Format(time.RFC3339Nano)),
	)
	for k, v := range trace {
		headers = append(headers, str(k, v))
	}
	out := &kgo.Record{Topic: topic, Key: rec.Key, Value: rec.Value, Headers: headers, Context: ctx}
	pipe.ToPartition(out, rec.Partition)
	return out
}

// dispatch produces the dead-letter record of rec to topic and waits for
// the broker's acknowledgement.
// A failure's dispatch is a span with error status, its cause an exception
// event, and the dead letter carries that span's trace context.
func dispatch(ctx context.Context, client *kgo.Client, in *instruments, rec *kgo.Record, f Failure, topic, group string) error {
	if f.Err != nil {
		var span trace.Span
		ctx, span = telemetry.StartDeadLetter(ctx, in.tracer, rec, topic, string(f.Class), f.Err)
		defer span.End()
	}
	out := NewRecord(ctx, rec, f, topic, group, in.propagator)
	if err := client.ProduceSync(ctx, out).FirstErr(); err != nil {
		if errors.Is(err, kerr.UnknownTopicOrPartition) {
			err = fmt.Errorf("%w (create the dead-letter topic %s)", err, topic)
		}
		return fmt.Errorf("dlq: dispatch %s/%d@%d to %s: %w", rec.Topic, rec.Partition, rec.Offset, topic, err)
	}
	if f.Err != nil {
		in.deadLettered(ctx, rec, f)
	}
	return nil
}

func errorMessage(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// errorType names the most specific error in err's chain: the first that is
// not merely a wrapper added on the way up (Poison, RetryMiddleware's
// GaveUpError, fmt.Errorf's %w).
func errorType(err error) string {
	for err != nil {
		name := fmt.Sprintf("%T", err)
		next := errors.Unwrap(err)
		_, poison := err.(*poisonError)
		_, gaveUp := err.(*GaveUpError)
		if next == nil || (!poison && !gaveUp && name != "*fmt.wrapError") {
			return name
		}
		err = next
	}
	return ""
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[:n]
	for !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s + "…"
}
