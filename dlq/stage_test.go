package dlq_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/devstack"
	"github.com/sagapipe/sagapipe/dlq"
	"github.com/sagapipe/sagapipe/internal/testkit"
	"github.com/sagapipe/sagapipe/pipe"
	"github.com/sagapipe/sagapipe/schema"
)

type command struct {
	ID string `avro:"id"`
}

func TestStageWorkerDeadLettersThroughThePolicy(t *testing.T) {
	ctx := context.Background()
	s := testkit.StartStack(t)
	testkit.CreateTopics(t, s.KafkaAddrs(), 1, "stage.commands")
	testkit.CreateTopics(t, s.KafkaAddrs(), 1, "stage.commands.dlq")
	testkit.CreateTopics(t, s.KafkaAddrs(), 1, "replies")
	serde, err := schema.NewSerde(s.RegistryURL())
	if err != nil {
		t.Fatal(err)
	}
	codec, err := schema.NewCodec[command](serde, `{"type":"record","name":"Command","fields":[{"name":"id","type":"string"}]}`)
	if err != nil {
		t.Fatal(err)
	}
	good, err := codec.Encode(ctx, "stage.commands", &command{ID: "c-2"})
	if err != nil {
		t.Fatal(err)
	}
	env := schema.NewEnvelope("Command", "test", time.Now())
	env.ReplyTo = "replies"
	bad := schema.NewEnvelope("Command", "test", time.Now())
	if err := testkit.Client(t, s.KafkaAddrs()).ProduceSync(ctx,
		&kgo.Record{Topic: "stage.commands", Key: []byte("k"), Value: []byte("not framed"), Headers: bad.Apply(nil)},
		&kgo.Record{Topic: "stage.commands", Key: []byte("k"), Value: good, Headers: env.Apply(nil)},
	).FirstErr(); err != nil {
		t.Fatal(err)
	}

	cl := testkit.Client(t, s.KafkaAddrs(), kgo.ConsumerGroup("stage"), kgo.ConsumeTopics("stage.commands"), kgo.DisableAutoCommit(), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.RecordPartitioner(pipe.NewPartitioner(nil)))
	policy, err := dlq.FailurePolicy(cl, dlq.Policy{})
	if err != nil {
		t.Fatal(err)
	}
	handled := make(chan string, 2)
	w, err := pipe.NewStageWorker(cl, codec, func(_ context.Context, c command, _ schema.Envelope) (pipe.Reply, error) {
		handled <- c.ID
		return pipe.NoReply, nil
	}, pipe.WithFailurePolicy(policy))
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	ran := make(chan error, 1)
	go func() { ran <- w.Run(runCtx) }()
	select {
	case id := <-handled:
		if id != "c-2" {
			t.Fatalf("handled %q, want c-2", id)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the good command behind the poison one was never handled")
	}
	stop()
	if err := <-ran; err != nil {
		t.Fatal(err)
	}
	r := testkit.Consume(t, s.KafkaAddrs(), "stage.commands.dlq", 1, nil)[0]
	if testkit.Header(r, dlq.HeaderErrorClass) != "poison" || !strings.Contains(testkit.Header(r, dlq.HeaderErrorMessage), "magic byte") ||
		testkit.Header(r, "original_consumer_group") != "stage" {
		t.Fatalf("dead letter headers %v", r.Headers)
	}
}

func TestFailurePolicyNeedsTheExplicitPartitioner(t *testing.T) {
	s := testkit.StartStack(t)
	_, err := dlq.FailurePolicy(testkit.Client(t, s.KafkaAddrs()), dlq.Policy{})
	if err == nil || !strings.Contains(err.Error(), "pipe.NewPartitioner") {
		t.Fatalf("got %v, want an error naming the partitioner to use", err)
	}
}

// retryStage is a stage on the embedded stack for the retry middleware's
// tests: a command topic of partitions partitions with its DLQ and a
// reply topic.
type retryStage struct {
	t       *testing.T
	s       *devstack.Stack
	codec   *schema.Codec[command]
	replies *schema.Codec[command]
}

func newRetryStage(t *testing.T, partitions int32) *retryStage {
	t.Helper()
	s := testkit.StartStack(t)
	testkit.CreateTopics(t, s.KafkaAddrs(), partitions, "stage.commands", "stage.commands.dlq")
	testkit.CreateTopics(t, s.KafkaAddrs(), 1, "replies")
	serde, err := schema.NewSerde(s.RegistryURL(), schema.WithSubjectNameStrategy(schema.RecordNameStrategy))
	if err != nil {
		t.Fatal(err)
	}
	codec, err := schema.NewCodec[command](serde, `{"type":"record","name":"Command","fields":[{"name":"id","type":"string"}]}`)
	if err != nil {
		t.Fatal(err)
	}
	replies, err := schema.NewCodec[command](serde, `{"type":"record","name":"Answered","fields":[{"name":"id","type":"string"}]}`)
	if err != nil {
		t.Fatal(err)
	}
	return &retryStage{t: t, s: s, codec: codec, replies: replies}
}

// produce writes perPartition commands to each partition, with IDs
// "c-<partition>-<n>", and returns them.
func (st *retryStage) produce(partitions int32, perPartition int) []*kgo.Record {
	st.t.Helper()
	var recs []*kgo.Record
	for p := range partitions {
		for n := range perPartition {
			id := fmt.Sprintf("c-%d-%d", p, n)
			value, err := st.codec.Encode(context.Background(), "stage.commands", &command{ID: id})
			if err != nil {
				st.t.Fatal(err)
			}
			env := schema.NewEnvelope("Command", "test", time.Now())
			env.ID, env.ReplyTo = id, "replies"
			recs = append(recs, &kgo.Record{Topic: "stage.commands", Partition: p, Key: []byte(id), Value: value, Headers: env.Apply(nil)})
		}
	}
	cl := testkit.Client(st.t, st.s.KafkaAddrs(), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err := cl.ProduceSync(context.Background(), recs...).FirstErr(); err != nil {
		st.t.Fatal(err)
	}
	return recs
}

// run starts a worker in group "stage" that dead-letters through
// dlq.FailurePolicy; stop ends it, closes its client (leaving the group)
// and returns Run's error.
func (st *retryStage) run(h pipe.Handler[command]) (stop func() error) {
	st.t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(st.s.KafkaAddrs()...), kgo.ConsumerGroup("stage"), kgo.ConsumeTopics("stage.commands"),
		kgo.DisableAutoCommit(), kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.RecordPartitioner(pipe.NewPartitioner(nil)), kgo.ProducerLinger(0))
	if err != nil {
		st.t.Fatal(err)
	}
	deadLetters, err := dlq.FailurePolicy(cl, dlq.Policy{})
	if err != nil {
		st.t.Fatal(err)
	}
	w, err := pipe.NewStageWorker(cl, st.codec, h, pipe.WithFailurePolicy(deadLetters))
	if err != nil {
		st.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- w.Run(ctx) }()
	var once sync.Once
	var runErr error
	stop = func() error {
		once.Do(func() {
			cancel()
			runErr = <-ran
			cl.Close()
		})
		return runErr
	}
	st.t.Cleanup(func() { _ = stop() })
	return stop
}

func (st *retryStage) reply(_ context.Context, c command, _ schema.Envelope) (pipe.Reply, error) {
	return pipe.NewReply(st.replies, "Answered", c), nil
}

// attempts counts a handler's calls per command ID.
type attempts struct {
	mu sync.Mutex
	n  map[string]int
}

func (a *attempts) next(id string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.n == nil {
		a.n = map[string]int{}
	}
	a.n[id]++
	return a.n[id]
}

func (a *attempts) of(id string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.n[id]
}

func TestRetryMiddleware(t *testing.T) {
	const partitions, perPartition = 2, 3
	downstream := errors.New("downstream unavailable")
	policy := dlq.Policy{MaxRetries: 3, InitialBackoff: 100 * time.Millisecond, MaxBackoff: time.Second}
	// With the jitter at its top and the clock moved by each backoff, a
	// command failing every retry fails over 100+200+400ms less 3ns.
	const retryingFor = 700*time.Millisecond - 3
	tests := []struct {
		name         string
		fail         func(attempt int) error // the handler's error on its attempt-th call for a command
		wantAttempts int                     // calls of the handler per command
		wantClass    dlq.Class               // of the dead letter; "" for a reply
		wantFailing  time.Duration           // from the first failure to the last
	}{
		{name: "fails twice then succeeds", fail: func(n int) error {
			if n <= 2 {
				return downstream
			}
			return nil
		}, wantAttempts: 3},
		{name: "always fails", fail: func(int) error { return downstream }, wantAttempts: 4, wantClass: dlq.ClassExhausted, wantFailing: retryingFor},
		{name: "poison", fail: func(int) error { return dlq.Poison(errors.New("cannot apply")) }, wantAttempts: 1, wantClass: dlq.ClassPoison},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := newRetryStage(t, partitions)
			commands := st.produce(partitions, perPartition)
			clock := &manualClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), fire: true}
			hooks := &retryCounter{}
			retry, err := dlq.RetryMiddleware[command](policy, dlq.WithClock(clock), dlq.WithHooks(hooks),
				dlq.WithRand(func(n int64) int64 { return n - 1 }))
			if err != nil {
				t.Fatal(err)
			}
			var calls attempts
			handler := func(ctx context.Context, c command, env schema.Envelope) (pipe.Reply, error) {
				if err := tt.fail(calls.next(c.ID)); err != nil {
					return pipe.Reply{}, err
				}
				return st.reply(ctx, c, env)
			}
			stop := st.run(pipe.Chain(handler, retry))
			total := len(commands)
			if tt.wantClass == "" {
				testkit.Consume(t, st.s.KafkaAddrs(), "replies", total, nil)
			} else {
				testkit.Consume(t, st.s.KafkaAddrs(), "stage.commands.dlq", total, nil)
			}
			if err := stop(); err != nil {
				t.Fatalf("Run: %v", err)
			}

			for _, c := range commands {
				if got := calls.of(string(c.Key)); got != tt.wantAttempts {
					t.Errorf("%s: handler called %d times, want %d", c.Key, got, tt.wantAttempts)
				}
			}
			hooks.mu.Lock()
			if got, want := len(hooks.backoffs), total*(tt.wantAttempts-1); got != want {
				t.Errorf("%d retries announced, want %d", got, want)
			}
			hooks.mu.Unlock()
			wantReplies, wantDead := int64(total), int64(0)
			if tt.wantClass != "" {
				wantReplies, wantDead = 0, int64(total)
			}
			if got := count(t, st.s, "replies"); got != wantReplies {
				t.Errorf("%d replies, want %d (each command answered once)", got, wantReplies)
			}
			if got := count(t, st.s, "stage.commands.dlq"); got != wantDead {
				t.Fatalf("%d dead letters, want %d", got, wantDead)
			}
			if wantDead == 0 {
				return
			}
			// Each origin partition's dead letters are in its DLQ
			// partition, in its order, with the attempts made.
			next := map[int32]int64{}
			for _, r := range testkit.Consume(t, st.s.KafkaAddrs(), "stage.commands.dlq", total, nil) {
				e, err := dlq.ParseEntry(r)
				if err != nil {
					t.Fatal(err)
				}
				if e.OriginPartition != r.Partition || e.OriginOffset != next[r.Partition] {
					t.Errorf("dead letter %d@%d is of %d@%d, want %d@%d", r.Partition, r.Offset, e.OriginPartition, e.OriginOffset,
						r.Partition, next[r.Partition])
				}
				next[r.Partition]++
				if e.Class != tt.wantClass || e.Attempts != tt.wantAttempts || e.LastFailedAt.Sub(e.FirstFailedAt) != tt.wantFailing {
					t.Errorf("dead letter of %s: class %s, %d attempts, failing for %v; want %s, %d, %v", r.Key, e.Class, e.Attempts,
						e.LastFailedAt.Sub(e.FirstFailedAt), tt.wantClass, tt.wantAttempts, tt.wantFailing)
				}
			}
		})
	}
}

// retryWaiter is a HookRetry that tells when a backoff begins.
type retryWaiter chan struct{}

func (w retryWaiter) OnRetry(*kgo.Record, int, time.Duration, error) { w <- struct{}{} }

// A worker stopped while a command backs off stops waiting and leaves the
// command uncommitted: the next worker of the group gets it.
func TestRetryMiddlewareStoppedDuringBackoff(t *testing.T) {
	st := newRetryStage(t, 1)
	st.produce(1, 1)
	waiting := make(retryWaiter, 1)
	retry, err := dlq.RetryMiddleware[command](dlq.Policy{}, dlq.WithClock(&manualClock{now: time.Now()}), // a backoff never ends
		dlq.WithHooks(waiting))
	if err != nil {
		t.Fatal(err)
	}
	var calls attempts
	stop := st.run(retry(func(_ context.Context, c command, _ schema.Envelope) (pipe.Reply, error) {
		calls.next(c.ID)
		return pipe.Reply{}, errors.New("downstream unavailable")
	}))
	select {
	case <-waiting:
	case <-time.After(testkit.Wait):
		t.Fatal("the failing command was never retried")
	}
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if got := calls.of("c-0-0"); got != 1 {
		t.Fatalf("handler called %d times before the stop, want 1", got)
	}

	st.run(st.reply)
	r := testkit.Consume(t, st.s.KafkaAddrs(), "replies", 1, nil)[0]
	if got, err := st.replies.Decode(context.Background(), r.Value); err != nil || got.ID != "c-0-0" {
		t.Fatalf("reply %+v, %v; want the command c-0-0 answered by the next worker", got, err)
	}
	if got := count(t, st.s, "stage.commands.dlq"); got != 0 {
		t.Fatalf("%d dead letters, want none", got)
	}
}

func TestRetryMiddlewareRejectsABadPolicy(t *testing.T) {
	_, err := dlq.RetryMiddleware[command](dlq.Policy{MaxRetries: -2, InitialBackoff: -1}, dlq.WithClock(nil))
	for _, want := range []string{"MaxRetries", "InitialBackoff", "WithClock"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("got %v, want an error naming %s", err, want)
		}
	}
}

// deadHook hears of dead letters only.
type deadHook struct{}

func (deadHook) OnDeadLettered(*kgo.Record, dlq.Failure) {}

// typoHook means to be a HookDeadLettered, but its method's name is wrong:
// it would never be called.
type typoHook struct{}

func (typoHook) OnDeadLetter(string, dlq.Class) {}

// A hook that implements no hook interface is refused when the consumer or
// the middleware is built, naming it, rather than never called.
func TestAHookThatImplementsNothingIsRefused(t *testing.T) {
	handler := func(context.Context, *kgo.Record) error { return nil }
	_, consumerErr := dlq.NewConsumer("group", []string{"orders"}, handler, dlq.Policy{}, dlq.WithHooks(typoHook{}))
	_, middlewareErr := dlq.RetryMiddleware[command](dlq.Policy{}, dlq.WithHooks(typoHook{}))
	_, deadOnlyErr := dlq.RetryMiddleware[command](dlq.Policy{}, dlq.WithHooks(deadHook{}))
	s := testkit.StartStack(t)
	cl := testkit.Client(t, s.KafkaAddrs(), kgo.RecordPartitioner(pipe.NewPartitioner(nil)))
	_, policyErr := dlq.FailurePolicy(cl, dlq.Policy{}, dlq.WithHooks(deadHook{}))
	for name, tt := range map[string]struct {
		err  error
		want string
	}{
		"NewConsumer":                         {consumerErr, "hook 0 (dlq_test.typoHook) implements neither HookDeadLettered nor HookRetry"},
		"RetryMiddleware":                     {middlewareErr, "hook 0 (dlq_test.typoHook) does not implement HookRetry"},
		"RetryMiddleware, a dead-letter hook": {deadOnlyErr, "hook 0 (dlq_test.deadHook) does not implement HookRetry"},
		"FailurePolicy":                       {policyErr, "WithHooks does not apply"},
	} {
		if tt.err == nil || !strings.Contains(tt.err.Error(), tt.want) {
			t.Errorf("%s: %v, want an error saying %q", name, tt.err, tt.want)
		}
	}
}

// RetryMiddleware spends one retry budget per minute across the commands it
// wraps: once spent, a failing command is given up on after its first
// attempt, as exhausted.
func TestRetryMiddlewareSpendsOneBudget(t *testing.T) {
	clock := &manualClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), fire: true}
	retry, err := dlq.RetryMiddleware[command](dlq.Policy{MaxRetries: 5, RetryBudgetPerMinute: 3, InitialBackoff: time.Millisecond},
		dlq.WithClock(clock), dlq.WithRand(func(n int64) int64 { return n - 1 }))
	if err != nil {
		t.Fatal(err)
	}
	calls := 0
	handler := retry(func(context.Context, command, schema.Envelope) (pipe.Reply, error) {
		calls++
		return pipe.Reply{}, errors.New("the service is down")
	})
	for i, want := range []int{4, 1} { // 1 + the budget's 3 retries, then none left
		calls = 0
		_, err := handler(context.Background(), command{}, schema.Envelope{})
		var gaveUp *dlq.GaveUpError
		if !errors.As(err, &gaveUp) || gaveUp.Attempts != want || gaveUp.Class != dlq.ClassExhausted || calls != want {
			t.Fatalf("command %d: %v (%d calls), want given up as exhausted after %d attempts", i, err, calls, want)
		}
	}
}
