package saga

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/kread"
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
	return states(ctx, opts, registry, sagaName, nil)
}

// states reads the snapshots of the state topic's partitions (all of
// them when partitions is nil).
func states(ctx context.Context, opts []kgo.Opt, registry *schema.Serde, sagaName string, partitions []int32) ([]SagaState, error) {
	codec, err := schema.NewCodec[Snapshot](registry, SnapshotSchema)
	if err != nil {
		return nil, err
	}
	snapshots := &snapshots[struct{}]{env: codec}
	topic := sagaName + ".state"
	found := map[string]SagaState{}
	err = kread.ToEnd(ctx, opts, topic, partitions, func(rec *kgo.Record) error {
		if rec.Value == nil {
			delete(found, string(rec.Key))
			return nil
		}
		s, err := snapshots.decodeEnvelope(ctx, rec.Value)
		if err != nil {
			return fmt.Errorf("%w: %s/%d@%d (key %q): %w", ErrSnapshot, rec.Topic, rec.Partition, rec.Offset, rec.Key, err)
		}
		found[s.SagaID] = SagaState{ID: s.SagaID, State: s.State, Since: s.Since, Closed: s.Closed,
			JournalPartition: s.JournalPartition, JournalOffset: s.JournalOffset}
		return nil
	})
	if errors.Is(err, kerr.UnknownTopicOrPartition) {
		return nil, fmt.Errorf("saga: state topic %s does not exist (is %q the saga's name? 'orchestrator topics ensure' creates it): %w", topic, sagaName, err)
	}
	if err != nil {
		return nil, fmt.Errorf("saga: reading %s: %w", topic, err)
	}
	out := slices.Collect(maps.Values(found))
	slices.SortFunc(out, func(a, b SagaState) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

// History is a saga's journal entries, in order, as committed when the read
// began. opts reach the cluster (seed brokers, TLS, SASL). It finds where
// the entries are from the saga's snapshot, in the state partition its ID
// hashes to (as every Kafka client's default partitioner places it) and
// then in the others, and reads that one journal partition from there
// (HistoryAt). A saga without a snapshot (unknown, or closed over its
// retention ago) is ErrNoHistory: HistoryScan reads the whole journal for
// it. Bound it with ctx.
func History(ctx context.Context, opts []kgo.Opt, registry *schema.Serde, sagaName, id string) ([]JournalEntry, error) {
	home, others, err := keyPartition(ctx, opts, sagaName+".state", id)
	if err != nil {
		return nil, err
	}
	for _, ps := range [][]int32{{home}, others} {
		if len(ps) == 0 {
			continue
		}
		found, err := states(ctx, opts, registry, sagaName, ps)
		if err != nil {
			return nil, err
		}
		if i, ok := slices.BinarySearchFunc(found, id, func(s SagaState, id string) int { return strings.Compare(s.ID, id) }); ok {
			return HistoryAt(ctx, opts, registry, sagaName, id, found[i].JournalPartition, found[i].JournalOffset)
		}
	}
	return nil, fmt.Errorf("%w: %s %q has no snapshot in %s.state (unknown, or closed over its retention ago; HistoryScan, or 'orchestrator saga show --scan-journal', reads the whole journal)",
		ErrNoHistory, sagaName, id, sagaName)
}

// HistoryScan is History read from every partition of the journal: for a
// saga whose snapshot is gone. Its cost grows with the journal.
func HistoryScan(ctx context.Context, opts []kgo.Opt, registry *schema.Serde, sagaName, id string) ([]JournalEntry, error) {
	return readHistory(ctx, opts, registry, sagaName, id, nil, nil)
}

// keyPartition returns the partition of topic that key hashes to under the
// default partitioner, and the topic's other partitions.
func keyPartition(ctx context.Context, opts []kgo.Opt, topic, key string) (int32, []int32, error) {
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return 0, nil, err
	}
	defer cl.Close()
	details, err := kadm.NewClient(cl).ListTopics(ctx, topic)
	if err == nil {
		err = details.Error()
	}
	if err != nil {
		return 0, nil, fmt.Errorf("saga: state topic %s: %w", topic, err)
	}
	n := len(details[topic].Partitions)
	if n == 0 {
		return 0, nil, fmt.Errorf("saga: state topic %s has no partitions", topic)
	}
	home := int32(kgo.StickyKeyPartitioner(nil).ForTopic(topic).Partition(&kgo.Record{Key: []byte(key)}, n))
	var others []int32
	for p := range int32(n) {
		if p != home {
			others = append(others, p)
		}
	}
	return home, others, nil
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
