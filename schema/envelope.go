package schema

import (
	"sync"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Header names of the envelope. Values are UTF-8 strings. The ce_* headers and
// content-type are the CloudEvents Kafka protocol binding in binary mode.
const (
	HeaderSpecVersion   = "ce_specversion"
	HeaderID            = "ce_id"
	HeaderType          = "ce_type"
	HeaderSource        = "ce_source"
	HeaderTime          = "ce_time"
	HeaderContentType   = "content-type"
	HeaderCorrelationID = "correlation_id" // the business transaction (saga) the event belongs to
	HeaderCausationID   = "causation_id"   // ce_id of the event that caused this one
	HeaderSagaName      = "saga_name"
	HeaderSagaID        = "saga_id"
	HeaderSagaStep      = "saga_step"
	HeaderReplyTo       = "reply_to" // topic a participant pipes its reply to
	// HeaderIdempotencyKey names a command's effect, the same on every
	// resend of it ("<saga id>/<step>/do" or ".../undo"), where ce_id is
	// new on each: participants key their effects by it.
	HeaderIdempotencyKey = "idempotency_key"
	HeaderTraceParent    = "traceparent"
	HeaderTraceState     = "tracestate"
	// HeaderSagaState and HeaderSagaCompensation are, on a command, the
	// state the saga entered by sending it and whether it undoes a step
	// ("true" or "false"): what a participant's spans say of the saga.
	HeaderSagaState        = "saga_state"
	HeaderSagaCompensation = "saga_compensation"
	// HeaderSagaSpan is, on a start event, the W3C traceparent of the
	// saga's span, chosen by the starter: the orchestrator emits that span
	// when the saga ends, as the root of the saga's trace (or the child of
	// HeaderSagaSpanParent, a span ID, when the start had a parent).
	HeaderSagaSpan       = "saga_span"
	HeaderSagaSpanParent = "saga_span_parent"
)

// SpecVersion is the CloudEvents version the envelope follows.
const SpecVersion = "1.0"

// ContentTypeAvro is the content type of a Confluent-framed Avro value.
const ContentTypeAvro = "application/avro"

// Envelope is the metadata every sagapipe record carries in its headers.
type Envelope struct {
	ID            string    // ce_id, unique per event (a resent command has a new one; see IdempotencyKey)
	Type          string    // ce_type, e.g. "orders.OrderPlaced"
	Source        string    // ce_source, who emitted it
	Time          time.Time // ce_time; zero when absent
	ContentType   string
	CorrelationID string
	CausationID   string
	SagaName      string
	SagaID        string
	SagaStep      string
	ReplyTo       string
	// IdempotencyKey is a command's effect's key, the same across its
	// resends (see HeaderIdempotencyKey); empty on other events.
	IdempotencyKey string
	TraceParent    string
	TraceState     string
}

// NewID returns a new event ID: a UUIDv7, so IDs sort by creation time.
func NewID() string {
	id, err := uuid.NewV7()
	if err != nil {
		// NewV7 fails only when the system's random source does, after
		// which nothing else here would work either.
		panic("schema: generating event ID: " + err.Error())
	}
	return id.String()
}

// NewEnvelope returns an envelope for a new event of type typ emitted by
// source at now, with a new ID and the Avro content type.
func NewEnvelope(typ, source string, now time.Time) Envelope {
	return Envelope{ID: NewID(), Type: typ, Source: source, Time: now, ContentType: ContentTypeAvro}
}

// fields pairs each header with its field, in the order they are written.
func (e *Envelope) fields() [14]struct {
	name string
	val  *string
} {
	return [14]struct {
		name string
		val  *string
	}{
		{HeaderID, &e.ID}, {HeaderType, &e.Type}, {HeaderSource, &e.Source},
		{HeaderContentType, &e.ContentType}, {HeaderCorrelationID, &e.CorrelationID},
		{HeaderCausationID, &e.CausationID}, {HeaderSagaName, &e.SagaName},
		{HeaderSagaID, &e.SagaID}, {HeaderSagaStep, &e.SagaStep}, {HeaderReplyTo, &e.ReplyTo},
		{HeaderIdempotencyKey, &e.IdempotencyKey},
		{HeaderTraceParent, &e.TraceParent}, {HeaderTraceState, &e.TraceState},
		{HeaderSpecVersion, nil},
	}
}

// ReadEnvelope reads the envelope from a record's headers. A missing or empty
// ce_id or ce_type, a ce_time that is not RFC 3339, a ce_specversion other
// than 1.0 or a value that is not UTF-8 is a *HeaderError (poison) naming
// the header. When a header repeats, the last one counts, as Kafka's own
// header lookups do.
func ReadEnvelope(headers []kgo.RecordHeader) (Envelope, error) {
	var e Envelope
	fields := e.fields()
	for _, h := range headers {
		if !utf8.Valid(h.Value) {
			if isEnvelopeHeader(h.Key) {
				return Envelope{}, &HeaderError{Header: h.Key, Value: string(h.Value), Reason: "value is not UTF-8"}
			}
			continue
		}
		switch h.Key {
		case HeaderTime:
			t, err := time.Parse(time.RFC3339Nano, string(h.Value))
			if err != nil {
				return Envelope{}, &HeaderError{Header: HeaderTime, Value: string(h.Value), Reason: "not an RFC 3339 time"}
			}
			e.Time = t.UTC()
		case HeaderSpecVersion:
			if string(h.Value) != SpecVersion {
				return Envelope{}, &HeaderError{Header: HeaderSpecVersion, Value: string(h.Value), Reason: "only CloudEvents " + SpecVersion + " is supported"}
			}
		case HeaderType, HeaderSource, HeaderContentType, HeaderSagaName, HeaderSagaStep, HeaderReplyTo:
			for _, f := range fields {
				if f.name == h.Key {
					*f.val = intern(h.Value)
					break
				}
			}
		default:
			for _, f := range fields {
				if f.name == h.Key && f.val != nil {
					*f.val = sameOrCopy(&e, h.Value)
					break
				}
			}
		}
	}
	if e.ID == "" {
		return Envelope{}, &HeaderError{Header: HeaderID, Reason: "missing: every event needs an ID (the idempotency key)"}
	}
	if e.Type == "" {
		return Envelope{}, &HeaderError{Header: HeaderType, Reason: "missing: every event needs a type"}
	}
	return e, nil
}

// interned holds the values of the envelope's fields that take few values
// (types, sources, saga and step names, topics), so that reading them from
// every record allocates nothing. It is bounded: values from outside
// (anyone can produce to a topic) past its size, or long ones, are copied.
var interned = struct {
	sync.RWMutex
	values map[string]string
}{values: map[string]string{}}

const (
	maxInterned      = 4096
	maxInternedBytes = 128
)

func intern(b []byte) string {
	if len(b) > maxInternedBytes {
		return string(b)
	}
	interned.RLock()
	s, ok := interned.values[string(b)]
	interned.RUnlock()
	if ok {
		return s
	}
	s = string(b)
	interned.Lock()
	if len(interned.values) < maxInterned {
		interned.values[s] = s
	}
	interned.Unlock()
	return s
}

// sameOrCopy returns a field of e equal to v, or else a copy of v: a saga's
// ID is often its correlation ID too, and one string then serves both.
func sameOrCopy(e *Envelope, v []byte) string {
	for _, f := range [...]string{e.SagaID, e.CorrelationID, e.ID, e.CausationID} {
		if f != "" && f == string(v) {
			return f
		}
	}
	return string(v)
}

func isEnvelopeHeader(key string) bool {
	switch key {
	case HeaderSpecVersion, HeaderID, HeaderType, HeaderSource, HeaderTime, HeaderContentType,
		HeaderCorrelationID, HeaderCausationID, HeaderSagaName, HeaderSagaID, HeaderSagaStep,
		HeaderReplyTo, HeaderTraceParent, HeaderTraceState:
		return true
	}
	return false
}

// Apply writes the envelope into headers, replacing any envelope headers
// already there and keeping every other header in place. Empty fields are
// not written (and an earlier header of that name is removed). The result is
// a new slice; headers is not modified.
func (e Envelope) Apply(headers []kgo.RecordHeader) []kgo.RecordHeader {
	kept := make([]kgo.RecordHeader, 0, len(headers)+14)
	for _, h := range headers {
		if !isEnvelopeHeader(h.Key) {
			kept = append(kept, h)
		}
	}
	// The values in one allocation, each cut with a full slice expression
	// so that appending to one cannot write into the next.
	fields := e.fields()
	n := len(SpecVersion) + len(time.RFC3339Nano)
	for _, f := range fields {
		if f.val != nil {
			n += len(*f.val)
		}
	}
	values := make([]byte, 0, n)
	value := func(appended []byte) []byte {
		start := len(values)
		values = appended
		return values[start:len(values):len(values)]
	}
	for _, f := range fields {
		switch {
		case f.name == HeaderSpecVersion:
			kept = append(kept, kgo.RecordHeader{Key: HeaderSpecVersion, Value: value(append(values, SpecVersion...))})
		case *f.val != "":
			kept = append(kept, kgo.RecordHeader{Key: f.name, Value: value(append(values, *f.val...))})
		}
	}
	if !e.Time.IsZero() {
		kept = append(kept, kgo.RecordHeader{Key: HeaderTime, Value: value(e.Time.UTC().AppendFormat(values, time.RFC3339Nano))})
	}
	return kept
}

// Header returns the value of the last header named name.
func Header(headers []kgo.RecordHeader, name string) (string, bool) {
	for i := len(headers) - 1; i >= 0; i-- {
		if headers[i].Key == name {
			return string(headers[i].Value), true
		}
	}
	return "", false
}

// SetHeader sets header name to value: every earlier header of that name is
// removed and one is appended. The result is a new slice; headers is not
// modified.
func SetHeader(headers []kgo.RecordHeader, name, value string) []kgo.RecordHeader {
	kept := make([]kgo.RecordHeader, 0, len(headers)+1)
	for _, h := range headers {
		if h.Key != name {
			kept = append(kept, h)
		}
	}
	return append(kept, kgo.RecordHeader{Key: name, Value: []byte(value)})
}
