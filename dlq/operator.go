package dlq

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/internal/consume"
	"github.com/sagapipe/sagapipe/kread"
	"github.com/sagapipe/sagapipe/pipe"
	"github.com/sagapipe/sagapipe/schema"
)

// HeaderReplayedFrom is added to a replayed record: "<dlq topic>/<partition>@<offset>".
const HeaderReplayedFrom = "replayed_from"

// Entry is one dead-letter record as an operator sees it.
type Entry struct {
	Record          *kgo.Record
	OriginTopic     string
	OriginPartition int32
	OriginOffset    int64
	Class           Class
	ErrorType       string
	Message         string
	Attempts        int
	FirstFailedAt   time.Time
	LastFailedAt    time.Time
}

// ParseEntry reads the dead-letter headers of rec. A record without
// original_topic and original_partition was not written by dlq and cannot be
// replayed; that is an error naming the record.
func ParseEntry(rec *kgo.Record) (Entry, error) {
	e := Entry{Record: rec}
	h := func(k string) string { v, _ := schema.Header(rec.Headers, k); return v }
	e.OriginTopic = h(pipe.HeaderOriginalTopic)
	p, perr := strconv.ParseInt(h(pipe.HeaderOriginalPartition), 10, 32)
	if e.OriginTopic == "" || perr != nil || p < 0 {
		return e, fmt.Errorf("dlq: %s/%d@%d has no valid %s/%s headers: not a dead-letter record",
			rec.Topic, rec.Partition, rec.Offset, pipe.HeaderOriginalTopic, pipe.HeaderOriginalPartition)
	}
	e.OriginPartition = int32(p)
	e.OriginOffset, _ = strconv.ParseInt(h(pipe.HeaderOriginalOffset), 10, 64)
	e.Class = Class(h(HeaderErrorClass))
	e.ErrorType = h(HeaderErrorType)
	e.Message = h(HeaderErrorMessage)
	e.Attempts, _ = strconv.Atoi(h(HeaderAttempts))
	e.FirstFailedAt, _ = time.Parse(time.RFC3339Nano, h(HeaderFirstFailedAt))
	e.LastFailedAt, _ = time.Parse(time.RFC3339Nano, h(HeaderLastFailedAt))
	return e, nil
}

// Filter selects dead-letter records; empty fields match everything.
type Filter struct {
	OriginTopic string
	Key         string
	Class       Class
}

// Match reports whether e passes the filter.
func (f Filter) Match(e Entry) bool {
	return (f.OriginTopic == "" || f.OriginTopic == e.OriginTopic) &&
		(f.Key == "" || f.Key == string(e.Record.Key)) &&
		(f.Class == "" || f.Class == e.Class)
}

// ListConfig says which dead-letter records to list.
type ListConfig struct {
	// ClientOptions reach the cluster: kgo.SeedBrokers, TLS, SASL.
	ClientOptions []kgo.Opt
	Topic         string
	Filter        Filter
}

// List calls fn for every dead-letter record of cfg.Topic that passes the
// filter, from the start of each partition up to its last stable offset when
// List began (records of transactions still open are not waited for).
// Records that are not dead-letter records are passed with their parse error.
func List(ctx context.Context, cfg ListConfig, fn func(Entry, error) error) error {
	err := kread.ToEnd(ctx, cfg.ClientOptions, cfg.Topic, nil, func(r *kgo.Record) error {
		e, perr := ParseEntry(r)
		if perr == nil && !cfg.Filter.Match(e) {
			return nil
		}
		return fn(e, perr)
	})
	if err != nil {
		return fmt.Errorf("dlq: list: %w", err)
	}
	return nil
}

// ReplayConfig says what to replay and how.
type ReplayConfig struct {
	// ClientOptions reach the cluster: kgo.SeedBrokers, TLS, SASL.
	ClientOptions []kgo.Opt
	// Topic is the dead-letter topic to replay from.
	Topic  string
	Filter Filter
	// Group keeps the replay's progress: a re-run with the same group
	// continues where the last one stopped. Default
	// "sagapipe.dlq-replay.<topic>".
	Group string
	// DryRun lists what would be replayed, republishing and committing nothing.
	DryRun bool
	// Progress, when set, is called after each batch with the records done
	// (replayed or skipped by the filter) and the total to do.
	Progress func(done, total int64)
}

// ReplayStats counts what a replay did.
type ReplayStats struct {
	Replayed, Skipped int64
}

// Replay republishes dead-letter records to their original topic and
// partition, in each origin partition's order, with their key, value and
// original headers and a replayed_from header. It reads the DLQ in a
// consumer group and commits its progress in the same Kafka transaction as
// the republished records, so an interrupted replay resumes without
// duplicates and a finished one republishes nothing when run again.
func Replay(ctx context.Context, cfg ReplayConfig) (ReplayStats, error) {
	var stats ReplayStats
	if cfg.Topic == "" {
		return stats, errors.New("dlq: replay: no dead-letter topic given")
	}
	if cfg.Group == "" {
		cfg.Group = "sagapipe.dlq-replay." + cfg.Topic
	}
	opts := append(slices.Clone(cfg.ClientOptions),
		kgo.ConsumerGroup(cfg.Group),
		kgo.ConsumeTopics(cfg.Topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.RecordPartitioner(pipe.NewPartitioner(nil)),
		kgo.TransactionalID(cfg.Group),
		kgo.KeepControlRecords(),
	)
	sess, err := kgo.NewGroupTransactSession(opts...)
	if err != nil {
		return stats, fmt.Errorf("dlq: replay: %w", err)
	}
	defer sess.Close()

	admin := kadm.NewClient(sess.Client())
	ends, err := admin.ListCommittedOffsets(ctx, cfg.Topic)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		return stats, fmt.Errorf("dlq: replay: end offsets of %s: %w", cfg.Topic, err)
	}
	committed, err := admin.FetchOffsets(ctx, cfg.Group)
	if errors.Is(err, kerr.GroupIDNotFound) {
		committed, err = nil, nil // the first run: no progress yet
	}
	if err != nil {
		return stats, fmt.Errorf("dlq: replay: progress of group %s: %w", cfg.Group, err)
	}
	remaining := kread.Ends{}
	var total int64
	ends.Each(func(o kadm.ListedOffset) {
		from := int64(0)
		if c, ok := committed.Lookup(cfg.Topic, o.Partition); ok && c.At > 0 {
			from = c.At
		}
		if o.Offset > from {
			remaining[o.Partition] = o.Offset
			total += o.Offset - from
		}
	})

	var done int64
	// Records lost to retention while the replay runs must not be skipped
	// as if replayed: the replay fails and says so.
	poller := consume.NewPoller(consume.Config{Name: "dlq: replay", Poll: sess.PollFetches, Fatal: func(err error) bool {
		var loss *kgo.ErrDataLoss
		return errors.As(err, &loss)
	}})
	for len(remaining) > 0 {
		fetches, stopped, err := poller.Poll(ctx, consume.NoWake)
		if stopped {
			return stats, ctx.Err()
		}
		if err != nil {
			return stats, err
		}
		var batch []*kgo.Record
		var parseErr error
		fetches.EachRecord(func(r *kgo.Record) {
			if !remaining.Next(r) {
				return
			}
			done++
			e, err := ParseEntry(r)
			if err != nil {
				parseErr = errors.Join(parseErr, err)
				return
			}
			if e.Class == ClassReleased || !cfg.Filter.Match(e) {
				stats.Skipped++
				return
			}
			stats.Replayed++
			batch = append(batch, replayRecord(ctx, e))
		})
		if parseErr != nil {
			return stats, fmt.Errorf("dlq: replay stopped, nothing of this batch was replayed: %w", parseErr)
		}
		if cfg.DryRun {
			if cfg.Progress != nil {
				cfg.Progress(done, total)
			}
			continue
		}
		ok, produceErr, err := consume.Transact(ctx, sess, consume.DefaultGrace, func(ctx context.Context) (bool, error) {
			return true, sess.ProduceSync(ctx, batch...).FirstErr()
		})
		if produceErr != nil || err != nil || !ok {
			return stats, fmt.Errorf("dlq: replay: batch aborted, re-run to continue (no duplicates): %w",
				errors.Join(produceErr, err, errIf(!ok && err == nil && produceErr == nil, "the group rebalanced")))
		}
		if cfg.Progress != nil {
			cfg.Progress(done, total)
		}
	}
	return stats, nil
}

func errIf(cond bool, msg string) error {
	if cond {
		return errors.New(msg)
	}
	return nil
}

// replayRecord rebuilds the original record of e, marked for its origin
// partition so that each origin partition's order survives the replay.
func replayRecord(ctx context.Context, e Entry) *kgo.Record {
	src := e.Record
	headers := make([]kgo.RecordHeader, 0, len(src.Headers)+1)
	for _, h := range src.Headers {
		switch h.Key {
		case HeaderErrorClass, HeaderErrorType, HeaderErrorMessage, HeaderAttempts, HeaderFirstFailedAt,
			HeaderLastFailedAt, HeaderReplayedFrom:
			continue
		}
		headers = append(headers, h)
	}
	headers = append(headers, kgo.RecordHeader{Key: HeaderReplayedFrom,
		Value: fmt.Appendf(nil, "%s/%d@%d", src.Topic, src.Partition, src.Offset)})
	out := &kgo.Record{Topic: e.OriginTopic, Key: src.Key, Value: src.Value, Headers: headers, Context: ctx}
	pipe.ToPartition(out, e.OriginPartition)
	return out
}

// HeaderRelease marks a release marker: a record that Release produces into
// an origin partition to unpark a key in sequenced mode. A Consumer takes it
// in order with the partition's other records and never hands it to its
// handler; other consumers of the topic must skip it too (IsReleaseMarker).
const HeaderRelease = "dlq_release"

// IsReleaseMarker reports whether rec is a release marker.
func IsReleaseMarker(rec *kgo.Record) bool {
	_, ok := schema.Header(rec.Headers, HeaderRelease)
	return ok
}

// ReleaseConfig says which parked key to release.
type ReleaseConfig struct {
	// ClientOptions reach the cluster: kgo.SeedBrokers, TLS, SASL.
	ClientOptions []kgo.Opt
	// Topic is the dead-letter topic the key's records are in.
	Topic string
	Key   string
	// OriginTopic, when set, releases the key on that origin topic only.
	OriginTopic string
}

// Release unparks a key in sequenced mode: for every origin partition in
// which the key is parked (its dead-letter records are not followed by a
// released marker), it produces a release marker into that partition, where
// the consumer meets it in order, records the release in the dead-letter
// topic and lets the key's later records through. It returns how many
// partitions it released; 0 means the key was not parked.
func Release(ctx context.Context, cfg ReleaseConfig) (int, error) {
	if cfg.Key == "" {
		return 0, errors.New("dlq: release: no key given")
	}
	type origin struct {
		topic     string
		partition int32
	}
	parked := map[origin]bool{}
	err := List(ctx, ListConfig{ClientOptions: cfg.ClientOptions, Topic: cfg.Topic,
		Filter: Filter{Key: cfg.Key, OriginTopic: cfg.OriginTopic}}, func(e Entry, err error) error {
		if err != nil {
			return nil
		}
		o := origin{e.OriginTopic, e.OriginPartition}
		if e.Class == ClassReleased {
			delete(parked, o)
		} else {
			parked[o] = true
		}
		return nil
	})
	if err != nil || len(parked) == 0 {
		return 0, err
	}
	cl, err := kgo.NewClient(append(slices.Clone(cfg.ClientOptions), kgo.RecordPartitioner(pipe.NewPartitioner(nil)))...)
	if err != nil {
		return 0, fmt.Errorf("dlq: release: %w", err)
	}
	defer cl.Close()
	var markers []*kgo.Record
	for o := range parked {
		m := &kgo.Record{Topic: o.topic, Key: []byte(cfg.Key), Context: ctx,
			Headers: []kgo.RecordHeader{{Key: HeaderRelease, Value: []byte(cfg.Topic)}}}
		pipe.ToPartition(m, o.partition)
		markers = append(markers, m)
	}
	if err := cl.ProduceSync(ctx, markers...).FirstErr(); err != nil {
		return 0, fmt.Errorf("dlq: release %q: %w", cfg.Key, err)
	}
	return len(markers), nil
}
