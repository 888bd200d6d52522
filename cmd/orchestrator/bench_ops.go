package main

import (
	"context"
	byteorder "encoding/binary"
	"fmt"
	"maps"
	"slices"
	"sync"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/sagapipe/sagapipe/kread"
)

// BrokerOps are the broker operations of a run, the unit the saga run and
// the ceiling are compared in: every record a producer appended and every
// record a consumer group consumed. Both are counted, not assumed: the
// appends at the embedded broker from the produce requests it handled, the
// consumes after the run from each group's committed offsets (the data
// records below them; transaction markers are not records).
type BrokerOps struct {
	Produced int64 `json:"produced"`
	Consumed int64 `json:"consumed"`
	// ProducedByTopic and ConsumedByTopic ("<topic> by <group>") show
	// where the operations went.
	ProducedByTopic map[string]int64 `json:"produced_by_topic"`
	ConsumedByTopic map[string]int64 `json:"consumed_by_topic"`
}

// Total is every produce and every consume.
func (o BrokerOps) Total() int64 { return o.Produced + o.Consumed }

// opsCounter counts the records of every produce request the embedded
// broker handles. Requests from v13 name topics by ID; the IDs are named
// when the count is read, because the cluster cannot be asked from inside
// its own request loop.
type opsCounter struct {
	cluster *kfake.Cluster
	mu      sync.Mutex
	byName  map[string]int64
	byID    map[[16]byte]int64
}

// countOps starts counting the produce requests cluster handles, from now
// on. The control function observes and never handles a request.
func countOps(cluster *kfake.Cluster) *opsCounter {
	o := &opsCounter{cluster: cluster, byName: map[string]int64{}, byID: map[[16]byte]int64{}}
	cluster.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		produce, ok := req.(*kmsg.ProduceRequest)
		if !ok {
			return nil, nil, false
		}
		o.mu.Lock()
		defer o.mu.Unlock()
		for _, t := range produce.Topics {
			var n int64
			for _, p := range t.Partitions {
				n += batchRecords(p.Records)
			}
			if t.Topic != "" {
				o.byName[t.Topic] += n
			} else {
				o.byID[t.TopicID] += n
			}
		}
		return nil, nil, false
	})
	return o
}

// batchRecords is how many records the v2 record batches in b hold, read
// from each batch's header (length at bytes 8-11, record count at 57-60).
func batchRecords(b []byte) int64 {
	var n int64
	for len(b) >= 61 {
		length := int(byteorder.BigEndian.Uint32(b[8:12]))
		n += int64(int32(byteorder.BigEndian.Uint32(b[57:61])))
		if length <= 0 || 12+length > len(b) {
			break
		}
		b = b[12+length:]
	}
	return n
}

// result names the topics, then counts what each consumer group consumed.
func (o *opsCounter) result(ctx context.Context, brokers []string) (BrokerOps, error) {
	ops := BrokerOps{ProducedByTopic: map[string]int64{}, ConsumedByTopic: map[string]int64{}}
	o.mu.Lock()
	for name, n := range o.byName {
		ops.ProducedByTopic[name] += n
	}
	ids := maps.Clone(o.byID)
	o.mu.Unlock()
	for id, n := range ids {
		name := fmt.Sprintf("topic %x", id)
		if info := o.cluster.TopicIDInfo(id); info != nil {
			name = info.Topic
		}
		ops.ProducedByTopic[name] += n
	}
	for _, n := range ops.ProducedByTopic {
		ops.Produced += n
	}
	consumed, err := consumedByGroups(ctx, brokers)
	if err != nil {
		return ops, err
	}
	ops.ConsumedByTopic = consumed
	for _, n := range consumed {
		ops.Consumed += n
	}
	return ops, nil
}

// consumedByGroups counts, for every consumer group and every topic it
// committed offsets on, the data records below its committed offsets.
func consumedByGroups(ctx context.Context, brokers []string) (map[string]int64, error) {
	opts := []kgo.Opt{kgo.SeedBrokers(brokers...)}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	groups, err := adm.ListGroups(ctx)
	if err != nil {
		return nil, fmt.Errorf("counting consumes: listing groups: %w", err)
	}
	// committed[topic][group][partition] is the group's committed offset.
	committed := map[string]map[string]map[int32]int64{}
	for _, group := range groups.Groups() {
		offsets, err := adm.FetchOffsets(ctx, group)
		if err == nil {
			err = offsets.Error()
		}
		if err != nil {
			return nil, fmt.Errorf("counting consumes: offsets of group %s: %w", group, err)
		}
		offsets.Each(func(o kadm.OffsetResponse) {
			if committed[o.Topic] == nil {
				committed[o.Topic] = map[string]map[int32]int64{}
			}
			if committed[o.Topic][group] == nil {
				committed[o.Topic][group] = map[int32]int64{}
			}
			committed[o.Topic][group][o.Partition] = o.At
		})
	}
	consumed := map[string]int64{}
	for _, topic := range slices.Sorted(maps.Keys(committed)) {
		byGroup := committed[topic]
		err := kread.ToEnd(ctx, opts, topic, nil, func(r *kgo.Record) error {
			for group, at := range byGroup {
				if r.Offset < at[r.Partition] {
					consumed[topic+" by "+group]++
				}
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("counting consumes of %s: %w", topic, err)
		}
	}
	return consumed, nil
}
