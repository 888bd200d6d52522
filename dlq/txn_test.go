package dlq_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/devstack"
	"github.com/sagapipe/sagapipe/dlq"
	"github.com/sagapipe/sagapipe/internal/testkit"
)

// txnConsumer runs a transactional consumer of "jobs" whose handler pipes
// every record it handles to "out" inside the transaction. fail decides, per
// record, what the handler returns.
func txnConsumer(t *testing.T, s *devstack.Stack, fail func(*kgo.Record) error, opts ...dlq.Opt) (stop func() error) {
	t.Helper()
	var c *dlq.Consumer
	handler := func(ctx context.Context, r *kgo.Record) error {
		if err := fail(r); err != nil {
			return err
		}
		return c.Client().ProduceSync(ctx, &kgo.Record{Topic: "out", Key: r.Key, Value: r.Value}).FirstErr()
	}
	opts = append(opts, dlq.WithTransactionalID("jobs-worker"),
		dlq.WithClientOptions(kgo.SeedBrokers(s.KafkaAddrs()...), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart())))
	c, err := dlq.NewConsumer("workers", []string{"jobs"}, handler, dlq.Policy{}, opts...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- c.Run(ctx) }()
	var once sync.Once
	var runErr error
	stop = func() error {
		once.Do(func() { cancel(); runErr = <-ran; c.Close() })
		return runErr
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

// committed returns the values of the committed records of topic.
func committed(t *testing.T, s *devstack.Stack, topic string) []string {
	t.Helper()
	var out []string
	err := dlq.List(context.Background(), dlq.ListConfig{ClientOptions: []kgo.Opt{kgo.SeedBrokers(s.KafkaAddrs()...)}, Topic: topic},
		func(e dlq.Entry, _ error) error { out = append(out, string(e.Record.Value)); return nil })
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	return out
}

// TestTransactionalDispatchStoppedBeforeItsCommit: a consumer stopped
// right after dispatching a dead letter, before its transaction ends,
// leaves nothing committed, and the next one dead-letters it once. (A kill
// -9 is TestTransactionalDispatchSurvivesKill9.)
func TestTransactionalDispatchStoppedBeforeItsCommit(t *testing.T) {
	s := testkit.StartStack(t)
	testkit.CreateTopics(t, s.KafkaAddrs(), 1, "jobs")
	testkit.CreateTopics(t, s.KafkaAddrs(), 1, "jobs.dlq")
	testkit.CreateTopics(t, s.KafkaAddrs(), 1, "out")
	produce(t, s, "jobs", 1, 3)
	poison := func(r *kgo.Record) error {
		if string(r.Value) == "0-1" {
			return dlq.Poison(errors.New("bad job"))
		}
		return nil
	}

	// The first instance is stopped right after dispatching the dead
	// letter, before its transaction ends.
	crashed := make(chan struct{})
	var once sync.Once
	stop := txnConsumer(t, s, poison, dlq.WithHooks(hookFunc(func() { once.Do(func() { close(crashed) }) })))
	select {
	case <-crashed:
	case <-time.After(20 * time.Second):
		t.Fatal("nothing was dead-lettered")
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if got := committed(t, s, "jobs.dlq"); len(got) != 0 {
		t.Fatalf("DLQ holds %v after the crash, want nothing committed", got)
	}

	dead := make(chan struct{}, 1)
	stop = txnConsumer(t, s, poison, dlq.WithHooks(hookFunc(func() { dead <- struct{}{} })))
	select {
	case <-dead:
	case <-time.After(20 * time.Second):
		t.Fatal("the restarted consumer did not dead-letter the poison record: the crashed batch was committed")
	}
	// The output is committed with the batch; wait for it.
	deadline := time.Now().Add(20 * time.Second)
	for len(committed(t, s, "out")) < 2 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if got := committed(t, s, "jobs.dlq"); fmt.Sprint(got) != "[0-1]" {
		t.Fatalf("DLQ holds %v, want the poison record once", got)
	}
	if got := committed(t, s, "out"); fmt.Sprint(got) != "[0-0 0-2]" {
		t.Fatalf("out holds %v, want each good record once", got)
	}
}

func TestTransactionalRetryRewinds(t *testing.T) {
	s := testkit.StartStack(t)
	testkit.CreateTopics(t, s.KafkaAddrs(), 2, "jobs")
	testkit.CreateTopics(t, s.KafkaAddrs(), 2, "jobs.dlq")
	testkit.CreateTopics(t, s.KafkaAddrs(), 1, "out")
	produce(t, s, "jobs", 2, 3)
	var mu sync.Mutex
	tries := map[string]int{}
	flaky := func(r *kgo.Record) error {
		mu.Lock()
		defer mu.Unlock()
		tries[string(r.Value)]++
		if string(r.Value) == "0-1" && tries["0-1"] <= 2 {
			return errors.New("downstream busy")
		}
		return nil
	}
	clock := &manualClock{now: time.Now(), fire: true}
	stop := txnConsumer(t, s, flaky, dlq.WithClock(clock))
	deadline := time.Now().Add(20 * time.Second)
	for len(committed(t, s, "out")) < 6 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if got := committed(t, s, "out"); fmt.Sprint(got) != "[0-0 0-1 0-2 1-0 1-1 1-2]" {
		t.Fatalf("out holds %v, want each record exactly once despite the rewinds", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if tries["0-1"] != 3 {
		t.Fatalf("0-1 tried %d times, want 3 (two failures, then success)", tries["0-1"])
	}
	if n := count(t, s, "jobs.dlq"); n != 0 {
		t.Fatalf("%d dead-lettered, want none", n)
	}
}

type hookFunc func()

func (f hookFunc) OnDeadLettered(*kgo.Record, dlq.Failure) { f() }
