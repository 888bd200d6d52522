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

// SagaState is a saga as its snapshot tells: its state, when it got there,
// whether it is closed, and where its journal entries are.
type SagaState struct {
	ID               string
	State            string
	Since            time.Time
	Closed           bool
	JournalPartition int32
	JournalOffset    int64
}

// States reads every saga's snapshot from the state topic "<sagaName>.state",
// sorted by ID: what an operator lists (for example the sagas in
// CompensationFailed). It reads the compacted topic, so its cost follows the
// sagas that are live or within their closed retention, not history.
func States(ctx context.Context, opts []kgo.Opt, registry *schema.Serde, sagaName string) ([]SagaState, error) {
	codec, err := schema.NewCodec[Snapshot](registry, SnapshotSchema)
	if err != nil {
		return nil, err
	}
	topic := sagaName + ".state"
	states := map[string]SagaState{}
	err = kread.ToEnd(ctx, opts, topic, nil, func(rec *kgo.Record) error {
		if rec.Value == nil {
			delete(states, string(rec.Key))
			return nil
		}
		s, err := codec.Decode(ctx, rec.Value)
		if err != nil {
			return fmt.Errorf("%w: %s/%d@%d (key %q): %w", ErrSnapshot, rec.Topic, rec.Partition, rec.Offset, rec.Key, err)
		}
		states[s.SagaID] = SagaState{ID: s.SagaID, State: s.State, Since: s.Since, Closed: s.Closed,
			JournalPartition: s.JournalPartition, JournalOffset: s.JournalOffset}
		return nil
	})
	if errors.Is(err, kerr.UnknownTopicOrPartition) {
		return nil, fmt.Errorf("saga: state topic %s does not exist (is %q the saga's name? 'orchestrator topics ensure' creates it): %w", topic, sagaName, err)
	}
	if err != nil {
		return nil, fmt.Errorf("saga: reading %s: %w", topic, err)
	}
	out := slices.Collect(maps.Values(states))
	slices.SortFunc(out, func(a, b SagaState) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

// History is a saga's journal entries, in order, as committed when the read
// began. opts reach the cluster (seed brokers, TLS, SASL). It finds where
// the entries are from the saga's snapshot (see States) and reads that one
// journal partition from there (HistoryAt); a saga without a snapshot (its
// closed retention is over) is looked for in the whole journal. Bound it
// with ctx.
func History(ctx context.Context, opts []kgo.Opt, registry *schema.Serde, sagaName, id string) ([]JournalEntry, error) {
	states, err := States(ctx, opts, registry, sagaName)
	if err != nil {
		return nil, err
	}
	if i, found := slices.BinarySearchFunc(states, id, func(s SagaState, id string) int { return strings.Compare(s.ID, id) }); found {
		return HistoryAt(ctx, opts, registry, sagaName, id, states[i].JournalPartition, states[i].JournalOffset)
	}
	return readHistory(ctx, opts, registry, sagaName, id, nil, nil)
}

// HistoryAt is History when the saga's journal partition and an offset at
// or before its first entry are known (from its snapshot or
// Runtime.Status): it reads that partition from that offset only.
func HistoryAt(ctx context.Context, opts []kgo.Opt, registry *schema.Serde, sagaName, id string, partition int32, offset int64) ([]JournalEntry, error) {
	return readHistory(ctx, opts, registry, sagaName, id, []int32{partition}, map[int32]int64{partition: offset})
}

func readHistory(ctx context.Context, opts []kgo.Opt, registry *schema.Serde, sagaName, id string, partitions []int32, from map[int32]int64) ([]JournalEntry, error) {
	codec, err := schema.NewCodec[JournalEntry](registry, JournalEntrySchema)
	if err != nil {
		return nil, err
	}
	topic := sagaName + ".journal"
	var entries []JournalEntry
	_, err = kread.From(ctx, opts, topic, partitions, from, func(rec *kgo.Record) error {
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
