package kread

import (
	"context"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// ToEnd calls fn for every committed record of topic's partitions (all of
// them when partitions is nil), in offset order per partition, from the
// start up to the last stable offset when ToEnd began. opts reach the
// cluster (seed brokers, TLS, SASL); they must not name a consumer group.
//
// It reads committed records only, and stops at the last stable offset
// rather than the high watermark: a transaction still open is not waited
// for. It keeps control records, whose offsets it needs to see a partition
// end on a transaction marker, but does not pass them to fn.
func ToEnd(ctx context.Context, opts []kgo.Opt, topic string, partitions []int32, fn func(*kgo.Record) error) error {
	_, err := From(ctx, opts, topic, partitions, nil, fn)
	return err
}

// From is ToEnd starting at from[p] for the partitions from names (the
// start for the others), and returns where each partition read ended: the
// last stable offset when From began, the offset to start the next read at.
// A start past a partition's end reads nothing of it.
func From(ctx context.Context, opts []kgo.Opt, topic string, partitions []int32, from map[int32]int64, fn func(*kgo.Record) error) (map[int32]int64, error) {
	client, err := kgo.NewClient(append(append([]kgo.Opt(nil), opts...),
		kgo.KeepControlRecords(), kgo.FetchIsolationLevel(kgo.ReadCommitted()))...)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", topic, err)
	}
	defer client.Close()
	ends, err := kadm.NewClient(client).ListCommittedOffsets(ctx, topic)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", topic, err)
	}
	wanted := map[int32]bool{}
	for _, p := range partitions {
		wanted[p] = true
	}
	starts := map[int32]kgo.Offset{}
	remaining := Ends{}
	read := map[int32]int64{}
	ends.Each(func(o kadm.ListedOffset) {
		if partitions != nil && !wanted[o.Partition] {
			return
		}
		read[o.Partition] = o.Offset
		start, ok := from[o.Partition]
		if o.Offset > 0 && (!ok || start < o.Offset) {
			starts[o.Partition] = kgo.NewOffset().AtStart()
			if ok && start > 0 {
				starts[o.Partition] = kgo.NewOffset().At(start)
			}
			remaining[o.Partition] = o.Offset
		}
	})
	if len(remaining) == 0 {
		return read, nil
	}
	client.AddConsumePartitions(map[string]map[int32]kgo.Offset{topic: starts})
	for len(remaining) > 0 {
		fetches := client.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if err := fetches.Err0(); err != nil {
			return nil, fmt.Errorf("read %s: %w", topic, err)
		}
		var stop error
		fetches.EachRecord(func(r *kgo.Record) {
			if stop == nil && remaining.Next(r) {
				stop = fn(r)
			}
		})
		if stop != nil {
			return nil, stop
		}
	}
	return read, nil
}

// Ends holds, per partition, the offset a read stops at; a partition is
// removed once its end is reached, so an empty Ends means done. Readers
// must keep control records (kgo.KeepControlRecords): a partition may end on
// a transaction marker.
type Ends map[int32]int64

// Next reports whether r is a data record before its partition's end, and
// forgets the partition when r is its last offset.
func (e Ends) Next(r *kgo.Record) bool {
	end, ok := e[r.Partition]
	if !ok || r.Offset >= end {
		return false
	}
	if r.Offset == end-1 {
		delete(e, r.Partition)
	}
	return !r.Attrs.IsControl()
}

// WaitStable waits until no transaction is open on topic's partitions (the
// last stable offset has caught up with the high watermark), so that a read
// to the end sees everything a previous owner committed. A new owner of a
// partition must wait like this before restoring from it: the old owner's
// last transaction may still be completing, and reading past it would miss
// what it wrote. It gives up when ctx ends (bound it by the transaction
// timeout: by then the broker aborts what was left open).
func WaitStable(ctx context.Context, opts []kgo.Opt, topic string, partitions []int32) error {
	client, err := kgo.NewClient(opts...)
	if err != nil {
		return err
	}
	defer client.Close()
	adm := kadm.NewClient(client)
	for {
		hw, err := adm.ListEndOffsets(ctx, topic)
		if err == nil {
			err = hw.Error()
		}
		if err != nil {
			return fmt.Errorf("wait for %s to be stable: %w", topic, err)
		}
		ls, err := adm.ListCommittedOffsets(ctx, topic)
		if err == nil {
			err = ls.Error()
		}
		if err != nil {
			return fmt.Errorf("wait for %s to be stable: %w", topic, err)
		}
		stable := true
		for _, p := range partitions {
			h, _ := hw.Lookup(topic, p)
			l, _ := ls.Lookup(topic, p)
			stable = stable && h.Offset == l.Offset
		}
		if stable {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s to be stable: a transaction stayed open: %w", topic, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}
