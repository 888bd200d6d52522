package pipe_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/devstack"
	"github.com/sagapipe/sagapipe/internal/testkit"
	"github.com/sagapipe/sagapipe/pipe"
)

func newSession(t *testing.T, s *devstack.Stack) *kgo.GroupTransactSession {
	t.Helper()
	sess, err := kgo.NewGroupTransactSession(
		kgo.SeedBrokers(s.KafkaAddrs()...),
		kgo.TransactionalID("pipe-test"),
		kgo.ConsumerGroup("piping"),
		kgo.ConsumeTopics("src"),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
	)
	if err != nil {
		t.Fatal(err)
	}
	return sess
}

func pollN(t *testing.T, sess *kgo.GroupTransactSession, n int) []*kgo.Record {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out []*kgo.Record
	for len(out) < n {
		fs := sess.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("polled %d of %d records", len(out), n)
		}
		if err := fs.Err0(); err != nil {
			t.Fatal(err)
		}
		out = append(out, fs.Records()...)
	}
	return out
}

func committedOffset(t *testing.T, s *devstack.Stack) int64 {
	t.Helper()
	offsets, err := kadm.NewClient(testkit.Client(t, s.KafkaAddrs())).FetchOffsets(context.Background(), "piping")
	if err != nil {
		t.Fatal(err)
	}
	o, ok := offsets.Lookup("src", 0)
	if !ok {
		return -1
	}
	return o.At
}

func TestTransactions(t *testing.T) {
	const n = 10
	ctx := context.Background()
	s := testkit.StartStack(t)
	testkit.CreateTopics(t, s.KafkaAddrs(), 1, "src")
	testkit.CreateTopics(t, s.KafkaAddrs(), 2, "dst")
	var seedRecs []*kgo.Record
	for i := range n {
		seedRecs = append(seedRecs, &kgo.Record{Topic: "src", Value: fmt.Appendf(nil, "%d", i)})
	}
	if err := testkit.Client(t, s.KafkaAddrs()).ProduceSync(ctx, seedRecs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	// run pipes the batch, valued "<label>-<source value>", and fails with
	// fail after piping when fail is set.
	run := func(label string, fail error) (bool, error) {
		sess := newSession(t, s)
		defer sess.Close()
		batch := pollN(t, sess, n)
		p, err := pipe.New(sess.Client())
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close(ctx)
		return p.Transact(ctx, sess, func(ctx context.Context, tx *pipe.Tx) error {
			ms := make([]pipe.Message, len(batch))
			for i, r := range batch {
				ms[i] = pipe.Message{Source: r, Value: []byte(label + "-" + string(r.Value))}
			}
			for _, r := range tx.PipeManySync(ctx, "dst", ms...) {
				if r.Err != nil {
					return r.Err
				}
			}
			return fail
		})
	}

	boom := errors.New("boom")
	committed, err := run("aborted", boom)
	if committed || !errors.Is(err, pipe.ErrAborted) || !errors.Is(err, boom) {
		t.Fatalf("aborted run: committed %v, err %v; want an abort wrapping the failure", committed, err)
	}
	if off := committedOffset(t, s); off > 0 {
		t.Fatalf("group offset %d after an abort, want none", off)
	}

	committed, err = run("committed", nil)
	if !committed || err != nil {
		t.Fatalf("committed run: %v, %v", committed, err)
	}
	if off := committedOffset(t, s); off != n {
		t.Fatalf("group offset %d after the commit, want %d", off, n)
	}

	// A read_committed consumer sees each record once, and nothing of the
	// aborted run, which sits at lower offsets and would come first.
	seen := map[string]int{}
	for _, r := range consume(t, s, "dst", n, kgo.FetchIsolationLevel(kgo.ReadCommitted())) {
		v := string(r.Value)
		if !strings.HasPrefix(v, "committed-") {
			t.Fatalf("read_committed consumer saw %q from the aborted transaction", v)
		}
		seen[v]++
	}
	for i := range n {
		if k := fmt.Sprintf("committed-%d", i); seen[k] != 1 {
			t.Fatalf("%s seen %d times, want once", k, seen[k])
		}
	}
}

func TestTransactRefusesAnotherClient(t *testing.T) {
	s := testkit.StartStack(t)
	sess := newSession(t, s)
	defer sess.Close()
	p, err := pipe.New(testkit.Client(t, s.KafkaAddrs()))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.Background())
	_, err = p.Transact(context.Background(), sess, func(context.Context, *pipe.Tx) error { return nil })
	if err == nil || !strings.Contains(err.Error(), "pipe.New(sess.Client())") {
		t.Fatalf("got %v, want an error naming the fix", err)
	}
}
