package devstack

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/kversion"
)

// A broker killed with transactions open leaves their records on disk with
// no end. Restarting, kfake counts them as aborted (the last stable offset
// moves past them) but, unlike a Kafka transaction coordinator, writes no
// abort marker. Read-committed clients drop a producer's transactional
// records from an aborted transaction's first offset until they meet an
// abort marker of that producer, so without one they drop every later
// transaction of that producer ID within the same fetch, commits included
// (a restarted producer keeps its transactional ID and so its producer ID),
// and a read to the end never sees the partition's last offsets.
//
// sealCrashAborted finds those transactions and writes the abort markers a
// coordinator would have written. It runs on a broker of its own on a
// private port, before the stack's broker serves any client, so that no
// new record of the same producer can land before its marker.

// cleanFile marks a data directory whose broker was closed, not killed.
const cleanFile = "clean-shutdown"

// sealIfCrashed seals the crash-aborted transactions of the broker data in
// dir unless its last broker was closed cleanly; it returns how many
// markers it wrote.
func sealIfCrashed(dir string, opts []kfake.Opt) (int, error) {
	if _, err := os.Stat(filepath.Join(dir, "kafka", "meta.json")); errors.Is(err, os.ErrNotExist) {
		return 0, nil // a new data directory
	}
	clean := filepath.Join(dir, cleanFile)
	if _, err := os.Stat(clean); err == nil {
		return 0, os.Remove(clean) // until the next clean Close
	}
	cluster, err := kfake.NewCluster(append(slices.Clone(opts), kfake.DataDir(filepath.Join(dir, "kafka")))...)
	if err != nil {
		return 0, fmt.Errorf("devstack: open the broker data to seal it: %w", err)
	}
	defer cluster.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	n, err := sealCrashAborted(ctx, cluster.ListenAddrs())
	if err != nil {
		return n, fmt.Errorf("devstack: write the abort markers of transactions the last broker left open (delete %s to start empty): %w", dir, err)
	}
	return n, nil
}

// markClean records that the broker over dir was closed cleanly.
func markClean(dir string) error {
	return os.WriteFile(filepath.Join(dir, cleanFile), nil, 0o644)
}

// sealCrashAborted reads every partition's batches, matches each aborted
// transaction the broker reports with an abort marker of its producer, and
// writes a marker for each one left without.
func sealCrashAborted(ctx context.Context, addrs []string) (int, error) {
	// Fetch v12 names topics; v13 would need their IDs.
	versions := kversion.Stable()
	versions.SetMaxKeyVersion(1, 12)
	cl, err := kgo.NewClient(kgo.SeedBrokers(addrs...), kgo.MaxVersions(versions))
	if err != nil {
		return 0, err
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	starts, err := adm.ListStartOffsets(ctx)
	if err == nil {
		err = starts.Error()
	}
	if err != nil {
		return 0, fmt.Errorf("list start offsets: %w", err)
	}
	ends, err := adm.ListEndOffsets(ctx)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		return 0, fmt.Errorf("list end offsets: %w", err)
	}
	written := 0
	var errs []error
	ends.Each(func(end kadm.ListedOffset) {
		start, _ := starts.Lookup(end.Topic, end.Partition)
		if end.Offset <= start.Offset || errors.Join(errs...) != nil {
			return
		}
		open, err := unmarkedAborts(ctx, cl, end.Topic, end.Partition, start.Offset, end.Offset)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s/%d: %w", end.Topic, end.Partition, err))
			return
		}
		for _, tx := range open {
			if err := writeAbortMarker(ctx, cl, end.Topic, end.Partition, tx); err != nil {
				errs = append(errs, fmt.Errorf("%s/%d: producer %d: %w", end.Topic, end.Partition, tx.pid, err))
				return
			}
			written++
		}
	})
	return written, errors.Join(errs...)
}

// producerTxn is a transaction of one producer.
type producerTxn struct {
	pid   int64
	epoch int16
	first int64 // its first offset
}

// unmarkedAborts reads [start, end) of a partition and returns the aborted
// transactions that no abort marker of their producer ends.
func unmarkedAborts(ctx context.Context, cl *kgo.Client, topic string, partition int32, start, end int64) ([]producerTxn, error) {
	aborted := map[int64]map[int64]bool{} // pid -> first offsets the broker reports aborted
	markers := map[int64][]int64{}        // pid -> offsets of its abort markers
	epochs := map[int64]int16{}
	for off := start; off < end; {
		req := kmsg.NewPtrFetchRequest()
		req.ReplicaID = -1
		req.MaxWaitMillis = 0
		req.MaxBytes = 64 << 20
		req.IsolationLevel = 1 // read committed: the broker lists the aborted transactions
		rt := kmsg.NewFetchRequestTopic()
		rt.Topic = topic
		rp := kmsg.NewFetchRequestTopicPartition()
		rp.Partition = partition
		rp.FetchOffset = off
		rp.PartitionMaxBytes = 64 << 20
		rp.LogStartOffset = -1
		rt.Partitions = append(rt.Partitions, rp)
		req.Topics = append(req.Topics, rt)
		resp, err := req.RequestWith(ctx, cl)
		if err != nil {
			return nil, fmt.Errorf("fetch at %d: %w", off, err)
		}
		if len(resp.Topics) != 1 || len(resp.Topics[0].Partitions) != 1 {
			return nil, fmt.Errorf("fetch at %d: unexpected response shape", off)
		}
		p := resp.Topics[0].Partitions[0]
		if err := kerr.ErrorForCode(p.ErrorCode); err != nil {
			return nil, fmt.Errorf("fetch at %d: %w", off, err)
		}
		for _, a := range p.AbortedTransactions {
			if aborted[a.ProducerID] == nil {
				aborted[a.ProducerID] = map[int64]bool{}
			}
			aborted[a.ProducerID][a.FirstOffset] = true
		}
		next := off
		for raw := p.RecordBatches; len(raw) >= 12; {
			size := 12 + int(int32(binary.BigEndian.Uint32(raw[8:12])))
			if size > len(raw) {
				break // a batch cut by the size limit: fetched again from its start
			}
			var b kmsg.RecordBatch
			if err := b.ReadFrom(raw[:size]); err != nil {
				return nil, fmt.Errorf("batch at %d: %w", off, err)
			}
			raw = raw[size:]
			last := b.FirstOffset + int64(b.LastOffsetDelta)
			if last < off {
				continue
			}
			next = last + 1
			if b.Attributes&0x10 == 0 { // not transactional
				continue
			}
			epochs[b.ProducerID] = b.ProducerEpoch
			if b.Attributes&0x20 != 0 && isAbortMarker(b) {
				markers[b.ProducerID] = append(markers[b.ProducerID], b.FirstOffset)
			}
		}
		if next == off {
			return nil, fmt.Errorf("fetch at %d made no progress (end %d)", off, end)
		}
		off = next
	}
	var open []producerTxn
	for pid, firsts := range aborted {
		pending := make([]int64, 0, len(firsts))
		for f := range firsts {
			pending = append(pending, f)
		}
		slices.Sort(pending)
		// Each abort marker ends its producer's oldest aborted
		// transaction that began before it.
		for _, m := range markers[pid] {
			if len(pending) > 0 && pending[0] < m {
				pending = pending[1:]
			}
		}
		for _, f := range pending {
			open = append(open, producerTxn{pid: pid, epoch: epochs[pid], first: f})
		}
	}
	slices.SortFunc(open, func(a, b producerTxn) int { return int(a.first - b.first) })
	return open, nil
}

// isAbortMarker reports whether a control batch holds an abort marker (a
// control record whose key's type is 0).
func isAbortMarker(b kmsg.RecordBatch) bool {
	var r kmsg.Record
	if err := r.ReadFrom(b.Records); err != nil || len(r.Key) < 4 {
		return false
	}
	return binary.BigEndian.Uint16(r.Key[2:4]) == 0
}

func writeAbortMarker(ctx context.Context, cl *kgo.Client, topic string, partition int32, tx producerTxn) error {
	req := kmsg.NewPtrWriteTxnMarkersRequest()
	m := kmsg.NewWriteTxnMarkersRequestMarker()
	m.ProducerID = tx.pid
	m.ProducerEpoch = tx.epoch
	m.Committed = false
	mt := kmsg.NewWriteTxnMarkersRequestMarkerTopic()
	mt.Topic = topic
	mt.Partitions = []int32{partition}
	m.Topics = append(m.Topics, mt)
	req.Markers = append(req.Markers, m)
	resp, err := req.RequestWith(ctx, cl)
	if err != nil {
		return err
	}
	for _, rm := range resp.Markers {
		for _, rt := range rm.Topics {
			for _, rp := range rt.Partitions {
				if err := kerr.ErrorForCode(rp.ErrorCode); err != nil {
					return err
				}
			}
		}
	}
	return nil
}
