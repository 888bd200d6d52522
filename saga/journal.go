package saga

import "time"

// JournalEntry is one record of a saga's journal, its source of truth: an
// event the saga received (or a timer that fired) and what it did. A saga's
// state is the fold of its applied entries through its state machine.
type JournalEntry struct {
	SagaID string `avro:"saga_id"`
	// EventType is the state-machine event type, e.g. "payment/orders.PaymentCharged".
	EventType string `avro:"event_type"`
	CEID      string `avro:"ce_id"`
	CEType    string `avro:"ce_type"`
	// Time is the event's time: the input that timers are computed from.
	Time time.Time `avro:"time"`
	// Payload is the event's value as received (Confluent-framed Avro);
	// empty for timers.
	Payload      []byte `avro:"payload"`
	TimerStep    string `avro:"timer_step"`
	TimerAttempt int32  `avro:"timer_attempt"`
	// Outcome is OutcomeApplied or OutcomeIgnored (a late or stale event
	// no transition accepted).
	Outcome     string `avro:"outcome"`
	FromState   string `avro:"from_state"`
	ToState     string `avro:"to_state"`
	TraceParent string `avro:"traceparent"`
	// RequestedBy is, for an operator's event (a cancel, a resume), who
	// asked: the record's ce_source.
	RequestedBy string `avro:"requested_by"`
	// Version is the definition version the saga runs on (0: 1, from
	// before versions were journaled).
	Version int32 `avro:"version"`
}

// Journal outcomes.
const (
	OutcomeApplied = "applied"
	OutcomeIgnored = "ignored"
)

// JournalEntrySchema is the Avro schema of JournalEntry.
const JournalEntrySchema = `{"type":"record","name":"JournalEntry","namespace":"sagapipe.journal","fields":[
 {"name":"saga_id","type":"string"},
 {"name":"event_type","type":"string"},
 {"name":"ce_id","type":"string"},
 {"name":"ce_type","type":"string"},
 {"name":"time","type":{"type":"long","logicalType":"timestamp-micros"}},
 {"name":"payload","type":"bytes"},
 {"name":"timer_step","type":"string","default":""},
 {"name":"timer_attempt","type":"int","default":0},
 {"name":"outcome","type":"string"},
 {"name":"from_state","type":"string"},
 {"name":"to_state","type":"string"},
 {"name":"traceparent","type":"string","default":""},
 {"name":"requested_by","type":"string","default":""},
 {"name":"version","type":"int","default":0}
]}`
