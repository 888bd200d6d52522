package dlq_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/goleak"

	"github.com/sagapipe/sagapipe/devstack"
	"github.com/sagapipe/sagapipe/dlq"
	"github.com/sagapipe/sagapipe/internal/testkit"
	"github.com/sagapipe/sagapipe/pipe"
	"github.com/sagapipe/sagapipe/schema"
)

func TestMain(m *testing.M) {
	if brokers := os.Getenv(killChildEnv); brokers != "" {
		runKillChild(brokers) // a worker process of TestTransactionalDispatchSurvivesKill9
		return
	}
	goleak.VerifyTestMain(m)
}

// produce writes perPartition records to each partition, valued "<p>-<n>".
func produce(t *testing.T, s *devstack.Stack, topic string, partitions int32, perPartition int) {
	t.Helper()
	var recs []*kgo.Record
	for n := range perPartition {
		for p := range partitions {
			recs = append(recs, &kgo.Record{Topic: topic, Partition: p, Key: fmt.Appendf(nil, "k-%d", n),
				Value:   fmt.Appendf(nil, "%d-%d", p, n),
				Headers: []kgo.RecordHeader{{Key: "ce_id", Value: fmt.Appendf(nil, "id-%d-%d", p, n)}}})
		}
	}
	cl := testkit.Client(t, s.KafkaAddrs(), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err := cl.ProduceSync(context.Background(), recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
}

// count returns how many data records topic holds (transaction markers
// take offsets but are not records).
func count(t *testing.T, s *devstack.Stack, topic string) int64 {
	t.Helper()
	var n int64
	err := dlq.List(context.Background(), dlq.ListConfig{ClientOptions: []kgo.Opt{kgo.SeedBrokers(s.KafkaAddrs()...)}, Topic: topic},
		func(dlq.Entry, error) error { n++; return nil })
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// run starts a consumer of topic in group "workers" and returns a stop func
// that ends Run, closes the consumer and returns Run's error.
func run(t *testing.T, s *devstack.Stack, topic string, h dlq.Handler, p dlq.Policy, opts ...dlq.Opt) func() error {
	t.Helper()
	opts = append(opts, dlq.WithClientOptions(kgo.SeedBrokers(s.KafkaAddrs()...),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart())))
	c, err := dlq.NewConsumer("workers", []string{topic}, h, p, opts...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- c.Run(ctx) }()
	var once sync.Once
	var runErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			runErr = <-ran
			c.Close()
		})
		return runErr
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

// tracker counts handled records and signals when a count is reached.
type tracker struct {
	mu      sync.Mutex
	handled []string
	waiters map[int]chan struct{}
}

func (tr *tracker) add(v string) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.handled = append(tr.handled, v)
	if ch, ok := tr.waiters[len(tr.handled)]; ok {
		close(ch)
	}
}

func (tr *tracker) wait(t *testing.T, n int) {
	t.Helper()
	tr.mu.Lock()
	if tr.waiters == nil {
		tr.waiters = map[int]chan struct{}{}
	}
	ch := make(chan struct{})
	if len(tr.handled) >= n {
		close(ch)
	} else {
		tr.waiters[n] = ch
	}
	tr.mu.Unlock()
	select {
	case <-ch:
	case <-time.After(20 * time.Second):
		t.Fatalf("handled %d records, want %d", len(tr.snapshot()), n)
	}
}

// OnDeadLettered makes a tracker a dlq hook counting dispatched records.
func (tr *tracker) OnDeadLettered(rec *kgo.Record, _ dlq.Failure) { tr.add(string(rec.Value)) }

func (tr *tracker) snapshot() []string {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return append([]string(nil), tr.handled...)
}

func TestPoisonInTheMiddle(t *testing.T) {
	s := testkit.StartStack(t)
	testkit.CreateTopics(t, s.KafkaAddrs(), 1, "orders")
	testkit.CreateTopics(t, s.KafkaAddrs(), 1, "orders.dlq")
	produce(t, s, "orders", 1, 10)

	var tr tracker
	stop := run(t, s, "orders", func(_ context.Context, r *kgo.Record) error {
		if string(r.Value) == "0-4" {
			return dlq.Poison(errors.New("amount is negative"))
		}
		tr.add(string(r.Value))
		return nil
	}, dlq.Policy{})
	tr.wait(t, 9)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	want := []string{"0-0", "0-1", "0-2", "0-3", "0-5", "0-6", "0-7", "0-8", "0-9"}
	if got := tr.snapshot(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("handled %v, want %v", got, want)
	}
	if n := count(t, s, "orders.dlq"); n != 1 {
		t.Fatalf("%d records dead-lettered, want 1", n)
	}
	got := testkit.Consume(t, s.KafkaAddrs(), "orders.dlq", 1, nil)[0]
	for k, v := range map[string]string{
		dlq.HeaderErrorClass: "poison", dlq.HeaderAttempts: "1", dlq.HeaderErrorMessage: "amount is negative",
		dlq.HeaderErrorType: "*errors.errorString", pipe.HeaderOriginalTopic: "orders", pipe.HeaderOriginalOffset: "4",
		pipe.HeaderOriginalPartition: "0", pipe.HeaderOriginalConsumerGroup: "workers", "ce_id": "id-0-4",
	} {
		if testkit.Header(got, k) != v {
			t.Errorf("%s = %q, want %q", k, testkit.Header(got, k), v)
		}
	}
	if string(got.Key) != "k-4" || string(got.Value) != "0-4" {
		t.Errorf("key %q value %q, want the original's byte for byte", got.Key, got.Value)
	}
}

func TestOrderedDispatch(t *testing.T) {
	const (
		sources      = 10
		perPartition = 12
	)
	s := testkit.StartStack(t)
	testkit.CreateTopics(t, s.KafkaAddrs(), sources, "events")
	testkit.CreateTopics(t, s.KafkaAddrs(), 3, "events.dlq")
	produce(t, s, "events", sources, perPartition)

	failed := 0
	for p := range sources {
		for n := range perPartition {
			if (p+n)%3 == 0 {
				failed++
			}
		}
	}
	var tr, dead tracker
	stop := run(t, s, "events", func(_ context.Context, r *kgo.Record) error {
		var p, n int
		fmt.Sscanf(string(r.Value), "%d-%d", &p, &n)
		if (p+n)%3 == 0 {
			return dlq.Poison(fmt.Errorf("record %s is bad", r.Value))
		}
		tr.add(string(r.Value))
		return nil
	}, dlq.Policy{}, dlq.WithHooks(&dead))
	tr.wait(t, sources*perPartition-failed)
	dead.wait(t, failed)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	last := map[string]int64{}
	for _, r := range testkit.Consume(t, s.KafkaAddrs(), "events.dlq", failed, nil) {
		origin, _ := strconv.Atoi(testkit.Header(r, pipe.HeaderOriginalPartition))
		off, _ := strconv.ParseInt(testkit.Header(r, pipe.HeaderOriginalOffset), 10, 64)
		if want := int32(origin % 3); r.Partition != want {
			t.Fatalf("origin partition %d landed in DLQ partition %d, want %d", origin, r.Partition, want)
		}
		key := strconv.Itoa(origin)
		if prev, ok := last[key]; ok && off <= prev {
			t.Fatalf("origin partition %d out of order in the DLQ: offset %d after %d", origin, off, prev)
		}
		last[key] = off
	}
	if len(last) != sources {
		t.Fatalf("failures of %d origin partitions in the DLQ, want %d", len(last), sources)
	}
}

// manualClock records every backoff asked for; when fire is set it moves
// time forward by it and fires at once.
type manualClock struct {
	mu   sync.Mutex
	now  time.Time
	fire bool
}

func (c *manualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *manualClock) AfterFunc(d time.Duration, f func()) func() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fire {
		c.now = c.now.Add(d)
		go f()
	}
	return func() bool { return false }
}

// retryCounter records retries the consumer announced.
type retryCounter struct {
	mu       sync.Mutex
	backoffs []time.Duration
	dead     chan dlq.Failure
}

func (r *retryCounter) OnRetry(_ *kgo.Record, _ int, backoff time.Duration, _ error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.backoffs = append(r.backoffs, backoff)
}

func (r *retryCounter) OnDeadLettered(_ *kgo.Record, f dlq.Failure) { r.dead <- f }

func TestBackoffBoundsAndAttempts(t *testing.T) {
	policy := dlq.Policy{MaxRetries: 4, InitialBackoff: 100 * time.Millisecond, MaxBackoff: time.Second, Multiplier: 3}
	caps := []time.Duration{100 * time.Millisecond, 300 * time.Millisecond, 900 * time.Millisecond, time.Second}
	for i, c := range caps {
		if got := policy.BackoffCap(i + 1); got != c {
			t.Fatalf("cap of retry %d = %v, want %v", i+1, got, c)
		}
	}
	tests := []struct {
		name  string
		randN func(int64) int64
		want  func(cap time.Duration) time.Duration
	}{
		{"jitter at its top", func(n int64) int64 { return n - 1 }, func(c time.Duration) time.Duration { return c - 1 }},
		{"jitter at its bottom", func(int64) int64 { return 0 }, func(time.Duration) time.Duration { return 0 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := testkit.StartStack(t)
			testkit.CreateTopics(t, s.KafkaAddrs(), 1, "jobs")
			testkit.CreateTopics(t, s.KafkaAddrs(), 1, "jobs.dlq")
			produce(t, s, "jobs", 1, 1)
			clock := &manualClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), fire: true}
			hooks := &retryCounter{dead: make(chan dlq.Failure, 1)}
			attempts := 0
			var mu sync.Mutex
			stop := run(t, s, "jobs", func(context.Context, *kgo.Record) error {
				mu.Lock()
				attempts++
				mu.Unlock()
				return errors.New("downstream unavailable")
			}, policy, dlq.WithClock(clock), dlq.WithRand(tt.randN), dlq.WithHooks(hooks))
			var f dlq.Failure
			select {
			case f = <-hooks.dead:
			case <-time.After(20 * time.Second):
				t.Fatal("never dead-lettered")
			}
			if err := stop(); err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			defer mu.Unlock()
			if attempts != 5 || f.Attempts != 5 || f.Class != dlq.ClassExhausted {
				t.Fatalf("%d attempts, failure %+v; want 5 attempts (1 + MaxRetries) and class exhausted", attempts, f)
			}
			hooks.mu.Lock()
			defer hooks.mu.Unlock()
			if len(hooks.backoffs) != 4 {
				t.Fatalf("%d retries, want 4", len(hooks.backoffs))
			}
			for i, b := range hooks.backoffs {
				if want := tt.want(caps[i]); b != want {
					t.Errorf("backoff before retry %d = %v, want %v (cap %v)", i+1, b, want, caps[i])
				}
			}
			if got := f.LastFailedAt.Sub(f.FirstFailedAt); got != sum(hooks.backoffs) {
				t.Errorf("failed from %v to %v, want the %v of backoff between", f.FirstFailedAt, f.LastFailedAt, sum(hooks.backoffs))
			}
			r := testkit.Consume(t, s.KafkaAddrs(), "jobs.dlq", 1, nil)[0]
			if testkit.Header(r, dlq.HeaderAttempts) != "5" || testkit.Header(r, dlq.HeaderErrorClass) != "exhausted" {
				t.Errorf("DLQ headers attempts=%q class=%q", testkit.Header(r, dlq.HeaderAttempts), testkit.Header(r, dlq.HeaderErrorClass))
			}
		})
	}
}

func sum(ds []time.Duration) time.Duration {
	var total time.Duration
	for _, d := range ds {
		total += d
	}
	return total
}

func TestRetryingPartitionDoesNotDelayAnother(t *testing.T) {
	s := testkit.StartStack(t)
	testkit.CreateTopics(t, s.KafkaAddrs(), 2, "jobs")
	testkit.CreateTopics(t, s.KafkaAddrs(), 2, "jobs.dlq")
	produce(t, s, "jobs", 2, 10)
	// The clock never fires: partition 0 stays in backoff for good.
	clock := &manualClock{now: time.Now()}
	var tr tracker
	var mu sync.Mutex
	failures := 0
	stop := run(t, s, "jobs", func(_ context.Context, r *kgo.Record) error {
		if r.Partition == 0 {
			mu.Lock()
			failures++
			mu.Unlock()
			return errors.New("partition 0's dependency is down")
		}
		tr.add(string(r.Value))
		return nil
	}, dlq.Policy{}, dlq.WithClock(clock))
	tr.wait(t, 10) // every record of partition 1
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if failures != 1 {
		t.Fatalf("partition 0's first record was tried %d times, want once (it is backing off)", failures)
	}
	if n := count(t, s, "jobs.dlq"); n != 0 {
		t.Fatalf("%d records dead-lettered, want none", n)
	}
}

// TestStopDuringBackoffRedoesTheRecord: a consumer stopped while a record
// backs off leaves it uncommitted, and the next one handles it, in order.
// (A kill -9 is TestTransactionalDispatchSurvivesKill9.)
func TestStopDuringBackoffRedoesTheRecord(t *testing.T) {
	s := testkit.StartStack(t)
	testkit.CreateTopics(t, s.KafkaAddrs(), 1, "jobs")
	testkit.CreateTopics(t, s.KafkaAddrs(), 1, "jobs.dlq")
	produce(t, s, "jobs", 1, 3)

	var first tracker
	clock := &manualClock{now: time.Now()} // backoff never ends in the first run
	failed := make(chan struct{})
	var once sync.Once
	stop := run(t, s, "jobs", func(_ context.Context, r *kgo.Record) error {
		if string(r.Value) == "0-1" {
			once.Do(func() { close(failed) })
			return errors.New("not yet")
		}
		first.add(string(r.Value))
		return nil
	}, dlq.Policy{}, dlq.WithClock(clock))
	select {
	case <-failed:
	case <-time.After(20 * time.Second):
		t.Fatal("record 0-1 was never tried")
	}
	first.wait(t, 1)
	if err := stop(); err != nil { // the consumer goes away mid-backoff
		t.Fatal(err)
	}

	var second tracker
	stop = run(t, s, "jobs", func(_ context.Context, r *kgo.Record) error {
		second.add(string(r.Value))
		return nil
	}, dlq.Policy{})
	second.wait(t, 2)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	all := append(first.snapshot(), second.snapshot()...)
	if fmt.Sprint(all) != "[0-0 0-1 0-2]" {
		t.Fatalf("handled %v across the crash, want each record once, in order", all)
	}
	if n := count(t, s, "jobs.dlq"); n != 0 {
		t.Fatalf("%d records dead-lettered, want none", n)
	}
}

// TestStopCommitsWhatItFinished: a record whose handler returns while Run is
// being stopped is committed before Run returns if the handler finished it,
// and comes again, not dead-lettered, if the handler gave up.
func TestStopCommitsWhatItFinished(t *testing.T) {
	tests := []struct {
		name string
		// handle is the handler's answer for record 0-1, during which Run's
		// context is cancelled.
		handle func(ctx context.Context) error
		want   int64 // the committed offset once Run returned
	}{
		{name: "handled", handle: func(context.Context) error { return nil }, want: 2},
		{name: "gave up", handle: func(ctx context.Context) error { return ctx.Err() }, want: 1},
		{name: "poison", handle: func(ctx context.Context) error { return dlq.Poison(ctx.Err()) }, want: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := testkit.StartStack(t)
			testkit.CreateTopics(t, s.KafkaAddrs(), 1, "jobs")
			testkit.CreateTopics(t, s.KafkaAddrs(), 1, "jobs.dlq")
			produce(t, s, "jobs", 1, 3)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			c, err := dlq.NewConsumer("workers", []string{"jobs"}, func(hctx context.Context, r *kgo.Record) error {
				if string(r.Value) != "0-1" {
					return nil
				}
				cancel() // the stop lands while the handler runs
				return tt.handle(hctx)
			}, dlq.Policy{}, dlq.WithClientOptions(kgo.SeedBrokers(s.KafkaAddrs()...),
				kgo.ConsumeResetOffset(kgo.NewOffset().AtStart())))
			if err != nil {
				t.Fatal(err)
			}
			err = c.Run(ctx)
			c.Close()
			if err != nil {
				t.Fatal(err)
			}
			offsets, err := kadm.NewClient(testkit.Client(t, s.KafkaAddrs())).FetchOffsets(context.Background(), "workers")
			if err != nil {
				t.Fatal(err)
			}
			if o, _ := offsets.Lookup("jobs", 0); o.At != tt.want {
				t.Errorf("committed offset %d after the stop, want %d", o.At, tt.want)
			}
			if n := count(t, s, "jobs.dlq"); n != 0 {
				t.Errorf("%d records dead-lettered, want none", n)
			}
		})
	}
}

func TestPolicyValidateReportsEveryProblem(t *testing.T) {
	err := dlq.Policy{MaxRetries: -5, InitialBackoff: time.Second, MaxBackoff: time.Millisecond,
		Multiplier: 0.5, RetryBudgetPerMinute: -1, NoDispatch: true, Topic: "x.dlq"}.Validate()
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"MaxRetries", "MaxBackoff", "Multiplier", "RetryBudgetPerMinute", "NoDispatch"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q does not mention %s", err, want)
		}
	}
	if err := (dlq.Policy{}).Validate(); err != nil {
		t.Fatalf("zero policy: %v", err)
	}
}

// TestRegistryOutageIsRetriedPastMaxRetries: a record that fails because
// the registry cannot be reached is retried beyond MaxRetries and the
// retry budget, and handled once the registry answers: an outage
// dead-letters nothing.
func TestRegistryOutageIsRetriedPastMaxRetries(t *testing.T) {
	s := testkit.StartStack(t)
	testkit.CreateTopics(t, s.KafkaAddrs(), 1, "jobs")
	testkit.CreateTopics(t, s.KafkaAddrs(), 1, "jobs.dlq")
	produce(t, s, "jobs", 1, 1)
	clock := &manualClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), fire: true}
	hooks := &retryCounter{dead: make(chan dlq.Failure, 1)}
	var tr tracker
	attempts := 0
	var mu sync.Mutex
	stop := run(t, s, "jobs", func(_ context.Context, r *kgo.Record) error {
		mu.Lock()
		defer mu.Unlock()
		if attempts++; attempts <= 6 {
			return fmt.Errorf("decoding: %w", schema.ErrRegistryUnavailable)
		}
		tr.add(string(r.Value))
		return nil
	}, dlq.Policy{MaxRetries: 2, RetryBudgetPerMinute: 1, InitialBackoff: time.Millisecond}, dlq.WithClock(clock), dlq.WithHooks(hooks))
	tr.wait(t, 1)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	select {
	case f := <-hooks.dead:
		t.Fatalf("dead-lettered during the outage: %+v", f)
	default:
	}
	if n := count(t, s, "jobs.dlq"); n != 0 {
		t.Fatalf("%d records dead-lettered, want none", n)
	}
	mu.Lock()
	defer mu.Unlock()
	if attempts != 7 {
		t.Fatalf("%d attempts, want 7 (6 during the outage, then the one that succeeded)", attempts)
	}
}

// closedCounter counts its client's closes.
type closedCounter struct{ n atomic.Int32 }

func (c *closedCounter) OnClientClosed(*kgo.Client) { c.n.Add(1) }

// Close is idempotent: a second call closes nothing again.
func TestCloseTwiceClosesOnce(t *testing.T) {
	s := testkit.StartStack(t)
	for _, transactional := range []bool{false, true} {
		closed := &closedCounter{}
		opts := []dlq.Opt{dlq.WithClientOptions(kgo.SeedBrokers(s.KafkaAddrs()...), kgo.WithHooks(closed))}
		if transactional {
			opts = append(opts, dlq.WithTransactionalID("close-twice"))
		}
		c, err := dlq.NewConsumer("workers", []string{"orders"}, func(context.Context, *kgo.Record) error { return nil }, dlq.Policy{}, opts...)
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		c.Close()
		if n := closed.n.Load(); n != 1 {
			t.Errorf("transactional %v: the client was closed %d times, want once", transactional, n)
		}
	}
}
