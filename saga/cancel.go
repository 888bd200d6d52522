package saga

import (
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/schema"
)

// CancelRecord is the record that cancels saga id of the saga named
// sagaName: produce it to the saga's inbox. A saga waiting on a step is
// compensated, that step first (its command may have been applied); a
// saga already compensating or finished journals the cancel as ignored;
// an unknown ID is dead-lettered. It is keyed by the saga's ID, so it
// reaches the saga's partition under the default partitioner, as the
// service's starts do. source is its ce_source (who asked).
func CancelRecord(sagaName, id, source string) *kgo.Record {
	env := schema.NewEnvelope(CancelType, source, time.Now())
	env.SagaName, env.SagaID, env.CorrelationID = sagaName, id, id
	return &kgo.Record{Topic: sagaName + ".inbox", Key: []byte(id), Headers: env.Apply(nil)}
}

// ResumeRecord is the record that resumes saga id of the saga named
// sagaName from CompensationFailed: produce it to the saga's inbox. The
// compensation that was given up is sent again from attempt 1, then the
// steps before it are compensated as usual; a saga in any other state
// journals it as ignored. source is its ce_source: who asked, journaled
// as the entry's RequestedBy.
func ResumeRecord(sagaName, id, source string) *kgo.Record {
	env := schema.NewEnvelope(ResumeType, source, time.Now())
	env.SagaName, env.SagaID, env.CorrelationID = sagaName, id, id
	return &kgo.Record{Topic: sagaName + ".inbox", Key: []byte(id), Headers: env.Apply(nil)}
}
