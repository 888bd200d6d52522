package pipe

import (
	"context"

	"github.com/twmb/franz-go/pkg/kgo"
)

// ExplicitPartitioner is a kgo.Partitioner that sends a record marked with
// ToPartition to that partition modulo the topic's partition count, and every
// other record where its fallback would. Dead-letter dispatch (origin
// partition modulo the DLQ's count) needs it; build the producing client
// with kgo.RecordPartitioner(pipe.NewPartitioner(nil)).
type ExplicitPartitioner struct {
	fallback kgo.Partitioner
}

// NewPartitioner returns an ExplicitPartitioner over fallback; nil means
// kgo's default partitioner (Kafka's KIP-794 uniform sticky partitioner,
// murmur2 for keyed records).
func NewPartitioner(fallback kgo.Partitioner) *ExplicitPartitioner {
	if fallback == nil {
		fallback = kgo.UniformBytesPartitioner(64<<10, true, true, nil)
	}
	return &ExplicitPartitioner{fallback: fallback}
}

// ForTopic implements kgo.Partitioner.
func (p *ExplicitPartitioner) ForTopic(topic string) kgo.TopicPartitioner {
	return explicitTopic{p.fallback.ForTopic(topic)}
}

type explicitTopic struct{ fallback kgo.TopicPartitioner }

type partitionKey struct{}

// ToPartition marks rec to be produced to partition p modulo the topic's
// partition count, by a client whose partitioner is an ExplicitPartitioner.
func ToPartition(rec *kgo.Record, p int32) {
	parent := rec.Context
	if parent == nil {
		if p >= 0 && int(p) < len(partitionContexts) {
			rec.Context = partitionContexts[p]
			return
		}
		parent = context.Background()
	}
	rec.Context = context.WithValue(parent, partitionKey{}, p)
}

// partitionContexts are the marks of the first partitions on records
// without a context of their own, made once: a mark per record produced is
// an allocation per record.
var partitionContexts = func() []context.Context {
	ctxs := make([]context.Context, 1024)
	for p := range ctxs {
		ctxs[p] = context.WithValue(context.Background(), partitionKey{}, int32(p))
	}
	return ctxs
}()

func explicitPartition(r *kgo.Record) (int32, bool) {
	if r.Context == nil {
		return 0, false
	}
	p, ok := r.Context.Value(partitionKey{}).(int32)
	return p, ok && p >= 0
}

func (t explicitTopic) RequiresConsistency(r *kgo.Record) bool {
	if _, ok := explicitPartition(r); ok {
		return true // order depends on it: never move to another partition
	}
	return t.fallback.RequiresConsistency(r)
}

func (t explicitTopic) Partition(r *kgo.Record, n int) int {
	if p, ok := explicitPartition(r); ok {
		return int(p) % n
	}
	return t.fallback.Partition(r, n)
}

// PartitionByBackup forwards to the fallback's backup partitioning when it
// has one (kgo calls this instead of Partition when it exists).
func (t explicitTopic) PartitionByBackup(r *kgo.Record, n int, backup kgo.TopicBackupIter) int {
	if p, ok := explicitPartition(r); ok {
		return int(p) % n
	}
	if bp, ok := t.fallback.(kgo.TopicBackupPartitioner); ok {
		return bp.PartitionByBackup(r, n, backup)
	}
	return t.fallback.Partition(r, n)
}

// OnNewBatch forwards to the fallback, which the sticky partitioner needs.
func (t explicitTopic) OnNewBatch() {
	if nb, ok := t.fallback.(kgo.TopicPartitionerOnNewBatch); ok {
		nb.OnNewBatch()
	}
}
