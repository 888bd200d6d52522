package consume_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/internal/consume"
	"github.com/sagapipe/sagapipe/internal/testkit"
)

// wakeNow is an AfterFunc whose wait has always passed already.
func wakeNow(_ time.Duration, f func()) func() bool {
	f()
	return func() bool { return false }
}

func TestPoll(t *testing.T) {
	s := testkit.StartStack(t)
	testkit.CreateTopics(t, s.KafkaAddrs(), 1, "src")
	tests := []struct {
		name        string
		ctx         func() context.Context
		wake        time.Duration
		closed      bool
		wantStopped bool
		wantErr     error
	}{
		{name: "woken for the caller's deadline", ctx: context.Background, wake: time.Hour},
		{name: "ctx ended", ctx: func() context.Context {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			return ctx
		}, wake: consume.NoWake, wantStopped: true},
		{name: "client closed", ctx: context.Background, wake: consume.NoWake, closed: true, wantErr: consume.ErrClientClosed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cl := testkit.Client(t, s.KafkaAddrs(), kgo.ConsumeTopics("src"))
			if tt.closed {
				cl.Close()
			}
			allowed := 0
			p := consume.NewPoller(consume.Config{Name: "test loop", Poll: cl.PollFetches, AllowRebalance: func() { allowed++ },
				AfterFunc: wakeNow, Logger: slog.New(slog.DiscardHandler)})
			fetches, stopped, err := p.Poll(tt.ctx(), tt.wake)
			if stopped != tt.wantStopped || !errors.Is(err, tt.wantErr) || fetches.NumRecords() != 0 {
				t.Fatalf("Poll: %d records, stopped %v, error %v; want none, %v, %v", fetches.NumRecords(), stopped, err, tt.wantStopped, tt.wantErr)
			}
			if allowed != 1 {
				t.Fatalf("AllowRebalance called %d times, want once before the poll", allowed)
			}
		})
	}
}

// A loop that wakes its poll itself gets the poll's wake-up before the
// poll, and undoes what it armed once the poll has ended.
func TestPollWith(t *testing.T) {
	s := testkit.StartStack(t)
	testkit.CreateTopics(t, s.KafkaAddrs(), 1, "src")
	cl := testkit.Client(t, s.KafkaAddrs(), kgo.ConsumeTopics("src"))
	p := consume.NewPoller(consume.Config{Name: "test loop", Poll: cl.PollFetches, Logger: slog.New(slog.DiscardHandler)})
	armed, disarmed := 0, 0
	done := make(chan struct{})
	go func() {
		defer close(done)
		fetches, stopped, err := p.PollWith(context.Background(), func(wake context.CancelFunc) func() {
			armed++
			go wake() // another goroutine ends the poll, as a restore does
			return func() { disarmed++ }
		})
		if stopped || err != nil || fetches.NumRecords() != 0 {
			t.Errorf("PollWith: %d records, stopped %v, error %v; want none, false, nil", fetches.NumRecords(), stopped, err)
		}
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the poll was not woken") // a poll of an empty topic waits until woken
	}
	if armed != 1 || disarmed != 1 {
		t.Fatalf("armed %d times, disarmed %d times; want once each", armed, disarmed)
	}
}

// A transient fetch error is logged once until fetching works again; a
// poll the loop woke itself, with nothing fetched, is not fetching working
// again. Errors Fatal names end the loop although the client would retry.
func TestPollLogsAnOutageOnce(t *testing.T) {
	transient := kgo.Fetches{{Topics: []kgo.FetchTopic{{Topic: "src", Partitions: []kgo.FetchPartition{{Partition: 0, Err: kerr.LeaderNotAvailable}}}}}}
	record := kgo.Fetches{{Topics: []kgo.FetchTopic{{Topic: "src", Partitions: []kgo.FetchPartition{{Partition: 0,
		Records: []*kgo.Record{{Topic: "src", Value: []byte("v")}}}}}}}}
	woken := kgo.Fetches{{Topics: []kgo.FetchTopic{{Partitions: []kgo.FetchPartition{{Partition: -1, Err: context.Canceled}}}}}}
	polls := []kgo.Fetches{transient, woken, transient, woken, record}
	var logs strings.Builder
	p := consume.NewPoller(consume.Config{Name: "test loop", AfterFunc: wakeNow, Logger: slog.New(slog.NewTextHandler(&logs, nil)),
		Poll: func(context.Context) kgo.Fetches { f := polls[0]; polls = polls[1:]; return f }})
	for range 4 {
		if _, stopped, err := p.Poll(context.Background(), time.Hour); stopped || err != nil {
			t.Fatalf("Poll: stopped %v, error %v", stopped, err)
		}
	}
	if warns, works := strings.Count(logs.String(), "fetch error; the client retries"), strings.Count(logs.String(), "loop: fetching works again"); warns != 1 || works != 0 {
		t.Fatalf("during the outage: %d warnings, %d recoveries logged; want 1 and 0:\n%s", warns, works, logs.String())
	}
	if _, _, err := p.Poll(context.Background(), consume.NoWake); err != nil {
		t.Fatal(err)
	}
	if works := strings.Count(logs.String(), "loop: fetching works again"); works != 1 {
		t.Fatalf("after a fetch: %d recoveries logged, want 1:\n%s", works, logs.String())
	}

	fatal := consume.NewPoller(consume.Config{Name: "replay", Logger: slog.New(slog.DiscardHandler),
		Poll: func(context.Context) kgo.Fetches { return transient }, Fatal: func(err error) bool { return errors.Is(err, kerr.LeaderNotAvailable) }})
	if _, _, err := fatal.Poll(context.Background(), consume.NoWake); !errors.Is(err, kerr.LeaderNotAvailable) {
		t.Fatalf("Poll with Fatal: %v, want the error", err)
	}
}

func newSession(t *testing.T, s interface{ KafkaAddrs() []string }, id string) *kgo.GroupTransactSession {
	t.Helper()
	sess, err := kgo.NewGroupTransactSession(kgo.SeedBrokers(s.KafkaAddrs()...), kgo.TransactionalID(id), kgo.ConsumerGroup("group-"+id),
		kgo.ConsumeTopics("src"), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sess.Close)
	return sess
}

// A transaction ends with the verdict of its work, and a caller stopped
// meanwhile still ends the transaction it opened (within the grace):
// read_committed readers see the outcome at once, not after the broker's
// transaction timeout.
func TestTransact(t *testing.T) {
	s := testkit.StartStack(t)
	testkit.CreateTopics(t, s.KafkaAddrs(), 1, "src", "out")
	if err := testkit.Client(t, s.KafkaAddrs()).ProduceSync(context.Background(), &kgo.Record{Topic: "src", Value: []byte("in")}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	failed := errors.New("work failed")
	tests := []struct {
		name          string
		consume       bool // poll the source record first: its offset commits with the transaction
		stopMidway    bool // ctx is cancelled once the record is produced
		commit        bool
		workErr       error
		wantCommitted bool
	}{
		{name: "commits with offsets", consume: true, commit: true, wantCommitted: true},
		{name: "commits without offsets", commit: true, wantCommitted: true},
		{name: "aborts when the work fails", consume: true, commit: true, workErr: failed},
		{name: "aborts when the work says so", consume: true},
		{name: "stopped midway, aborts within the grace", consume: true, stopMidway: true},
	}
	const grace = 10 * time.Second
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sess := newSession(t, s, "txn-"+string(rune('a'+i)))
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tt.consume {
				pctx, pcancel := context.WithTimeout(ctx, testkit.Wait)
				n := sess.PollFetches(pctx).NumRecords()
				pcancel()
				if n != 1 {
					t.Fatalf("polled %d records of src, want its one", n)
				}
			}
			value := []byte(tt.name)
			committed, workErr, endErr := consume.Transact(ctx, sess, grace, func(ctx context.Context) (bool, error) {
				if err := sess.ProduceSync(ctx, &kgo.Record{Topic: "out", Value: value}).FirstErr(); err != nil {
					return false, err
				}
				if tt.stopMidway {
					cancel()
				}
				return tt.commit && ctx.Err() == nil, tt.workErr
			})
			if committed != tt.wantCommitted || !errors.Is(workErr, tt.workErr) || endErr != nil {
				t.Fatalf("Transact: committed %v, work error %v, end error %v; want %v, %v, nil", committed, workErr, endErr, tt.wantCommitted, tt.workErr)
			}
			// A marker after the transaction: once a read_committed reader
			// has it, the transaction has ended one way or the other.
			if err := testkit.Client(t, s.KafkaAddrs()).ProduceSync(context.Background(), &kgo.Record{Topic: "out", Value: []byte("marker " + tt.name)}).FirstErr(); err != nil {
				t.Fatal(err)
			}
			var seen bool
			testkit.Consume(t, s.KafkaAddrs(), "out", 1, func(r *kgo.Record) bool {
				seen = seen || string(r.Value) == tt.name
				return string(r.Value) == "marker "+tt.name
			}, kgo.FetchIsolationLevel(kgo.ReadCommitted()))
			if seen != tt.wantCommitted {
				t.Fatalf("the transaction's record visible to read_committed readers: %v, want %v", seen, tt.wantCommitted)
			}
		})
	}
}
