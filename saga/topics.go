package saga

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"

	"github.com/sagapipe/sagapipe/dlq"
)

// StateTopic holds the latest snapshot of each saga: "<name>.state", a
// compacted topic co-partitioned with the inbox.
func (s *Saga[D]) StateTopic() string { return s.stateTopic }

// CommandTopics returns the topics the saga's steps send their commands
// to, each once, in step order: the participants' topics.
func (s *Saga[D]) CommandTopics() []string {
	var topics []string
	for _, st := range s.steps {
		if !slices.Contains(topics, st.topic) {
			topics = append(topics, st.topic)
		}
	}
	return topics
}

// Topics returns every topic EnsureTopics creates: the inbox, journal,
// state topic, the inbox's dead-letter topic, the outcome topic (if any)
// and the command topics.
func (s *Saga[D]) Topics() []string {
	topics := []string{s.InboxTopic(), s.JournalTopic(), s.StateTopic(), s.InboxTopic() + dlq.DefaultTopicSuffix}
	if t := s.OutcomeTopic(); t != "" {
		topics = append(topics, t)
	}
	return append(topics, s.CommandTopics()...)
}

// EnsureTopics creates, where they are missing, the saga's inbox, journal
// and state topic with partitions partitions, the inbox's dead-letter topic,
// the outcome topic and the participants' command topics. The journal keeps everything by default (it is the
// source of truth and the audit log; lower its retention.ms to keep less
// history, recovery never reads it); the state topic is compacted.
func (s *Saga[D]) EnsureTopics(ctx context.Context, adm *kadm.Client, partitions int32, replication int16) error {
	forever := "-1"
	keep := map[string]*string{"retention.ms": &forever, "retention.bytes": &forever}
	err := errors.Join(
		EnsureTopic(ctx, adm, s.InboxTopic(), partitions, replication, nil),
		EnsureTopic(ctx, adm, s.JournalTopic(), partitions, replication, keep),
		EnsureTopic(ctx, adm, s.StateTopic(), partitions, replication, StateTopicConfig()),
		EnsureTopic(ctx, adm, s.InboxTopic()+dlq.DefaultTopicSuffix, partitions, replication, keep),
	)
	if t := s.OutcomeTopic(); t != "" {
		err = errors.Join(err, EnsureTopic(ctx, adm, t, partitions, replication, nil))
	}
	for _, t := range s.CommandTopics() {
		err = errors.Join(err, EnsureTopic(ctx, adm, t, partitions, replication, nil))
	}
	return err
}

// StateTopicConfig is the configuration EnsureTopics gives a state topic:
// compacted, in 64 MiB segments and cleaned once 30% of a partition is
// superseded. A broker never compacts the active segment, and its default
// (1 GiB) would leave a fresh machine's restore reading that much of old
// snapshots; smaller segments keep what a restore reads close to the live
// keys.
func StateTopicConfig() map[string]*string {
	v := func(s string) *string { return &s }
	return map[string]*string{
		"cleanup.policy":            v("compact"),
		"segment.bytes":             v("67108864"),
		"min.cleanable.dirty.ratio": v("0.3"),
	}
}

// EnsureTopic creates topic unless it exists.
func EnsureTopic(ctx context.Context, adm *kadm.Client, topic string, partitions int32, replication int16, configs map[string]*string) error {
	resp, err := adm.CreateTopic(ctx, partitions, replication, configs, topic)
	if err == nil {
		err = resp.Err
	}
	if err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
		return fmt.Errorf("create topic %s: %w", topic, err)
	}
	return nil
}

// CheckTopics verifies that the inbox, journal, state and dead-letter
// topics exist, that the journal and state topic have the inbox's partition
// count, and that the state topic is compacted.
func (r *Runtime[D]) CheckTopics(ctx context.Context) error {
	inbox, journal, state := r.saga.InboxTopic(), r.saga.JournalTopic(), r.saga.StateTopic()
	want := []string{inbox, journal, state, r.cfg.DeadLetterTopic}
	if t := r.saga.OutcomeTopic(); t != "" {
		want = append(want, t)
	}
	adm := kadm.NewClient(r.sess.Client())
	details, err := adm.ListTopics(ctx, want...)
	if err != nil {
		return fmt.Errorf("saga %s: listing topics: %w", r.saga.name, err)
	}
	var missing []string
	for _, t := range want {
		if d, ok := details[t]; !ok || d.Err != nil {
			missing = append(missing, t)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("saga %s: topics missing: %v (create them with the service's 'topics ensure' command, e.g. 'orchestrator topics ensure' or '<your service.Main binary> topics ensure', or with Saga.EnsureTopics; they are not auto-created)", r.saga.name, missing)
	}
	r.inboxPartitions.Store(int32(len(details[inbox].Partitions)))
	var errs []error
	for _, t := range []string{journal, state} {
		if a, b := len(details[inbox].Partitions), len(details[t].Partitions); a != b {
			errs = append(errs, fmt.Errorf("saga %s: %s has %d partitions but %s has %d: it must be co-partitioned with the inbox (recreate %s with %d partitions; 'topics ensure' creates missing topics only)", r.saga.name, inbox, a, t, b, t, a))
		}
	}
	configs, err := adm.DescribeTopicConfigs(ctx, state)
	if err != nil {
		return fmt.Errorf("saga %s: describing %s: %w", r.saga.name, state, err)
	}
	if c, err := configs.On(state, nil); err == nil && c.Err == nil {
		policy := ""
		for _, kv := range c.Configs {
			if kv.Key == "cleanup.policy" && kv.Value != nil {
				policy = *kv.Value
			}
		}
		if policy != "compact" {
			errs = append(errs, fmt.Errorf("saga %s: %s has cleanup.policy=%q: it must be compact alone (kafka-configs --alter --entity-type topics --entity-name %s --add-config cleanup.policy=compact): with delete, retention removes the snapshots of long-running sagas; without compact, restores grow with history",
				r.saga.name, state, policy, state))
		}
	}
	return errors.Join(errs...)
}
