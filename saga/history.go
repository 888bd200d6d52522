package saga

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/internal/kread"
	"github.com/sagapipe/sagapipe/schema"
)

// ErrNoHistory: the journal holds nothing of the saga.
var ErrNoHistory = errors.New("saga: no journal entries for the saga")

// SagaState is a saga as its journal tells: its state and when it got there.
type SagaState struct {
	ID    string
	State string
	Since time.Time
}

// States folds the journal "<sagaName>.journal" into every saga's current
// state, sorted by ID: what an operator lists (for example the sagas in
// CompensationFailed).
func States(ctx context.Context, opts []kgo.Opt, registry *schema.Serde, sagaName string) ([]SagaState, error) {
	codec, err := schema.NewCodec[JournalEntry](registry, JournalEntrySchema)
	if err != nil {
		return nil, err
	}
	topic := sagaName + ".journal"
	states := map[string]SagaState{}
	err = kread.ToEnd(ctx, opts, topic, nil, func(rec *kgo.Record) error {
		e, err := codec.Decode(ctx, rec.Value)
		if err != nil {
			return fmt.Errorf("%s/%d@%d: %w", rec.Topic, rec.Partition, rec.Offset, err)
		}
		if e.Outcome == OutcomeApplied {
			states[e.SagaID] = SagaState{ID: e.SagaID, State: e.ToState, Since: e.Time}
		}
		return nil
	})
	if errors.Is(err, kerr.UnknownTopicOrPartition) {
		return nil, fmt.Errorf("saga: journal topic %s does not exist (is %q the saga's name?): %w", topic, sagaName, err)
	}
	if err != nil {
		return nil, fmt.Errorf("saga: reading %s: %w", topic, err)
	}
	out := slices.Collect(maps.Values(states))
	slices.SortFunc(out, func(a, b SagaState) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

// History is a saga's journal entries, in order, read from the journal
// topic "<sagaName>.journal" as committed when the read began. opts reach
// the cluster (seed brokers, TLS, SASL). It reads every partition, so it
// finds the saga whatever partitioner placed it; it is an operator's tool,
// not a hot path.
func History(ctx context.Context, opts []kgo.Opt, registry *schema.Serde, sagaName, id string) ([]JournalEntry, error) {
	codec, err := schema.NewCodec[JournalEntry](registry, JournalEntrySchema)
	if err != nil {
		return nil, err
	}
	topic := sagaName + ".journal"
	var entries []JournalEntry
	err = kread.ToEnd(ctx, opts, topic, nil, func(rec *kgo.Record) error {
		if string(rec.Key) != id {
			return nil
		}
		e, err := codec.Decode(ctx, rec.Value)
		if err != nil {
			return fmt.Errorf("%s/%d@%d: %w", rec.Topic, rec.Partition, rec.Offset, err)
		}
		entries = append(entries, e)
		return nil
	})
	if errors.Is(err, kerr.UnknownTopicOrPartition) {
		return nil, fmt.Errorf("saga: journal topic %s does not exist (is %q the saga's name?): %w", topic, sagaName, err)
	}
	if err != nil {
		return nil, fmt.Errorf("saga: reading %s: %w", topic, err)
	}
	if len(entries) == 0 {
		return nil, fmt.Errorf("%w: %s %q in %s", ErrNoHistory, sagaName, id, topic)
	}
	return entries, nil
}
