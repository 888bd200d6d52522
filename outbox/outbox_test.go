package outbox_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/internal/testkit"
	"github.com/sagapipe/sagapipe/outbox"
	"github.com/sagapipe/sagapipe/pipe"
	"github.com/sagapipe/sagapipe/schema"
)

// A command handled through the outbox is answered by the relay with the
// record a stage worker would have piped itself: the same key, value and
// headers, but for what is new on every record (ce_id, ce_time, the span
// of traceparent) and the provenance headers, which a handler cannot know.
// The effect is applied, and its row marked published.
func TestReplyIsTheStageWorkersReply(t *testing.T) {
	w := newWorld(t, outbox.WithPiperOptions(pipe.WithSource("accounts-service")))
	w.createTopics(t, "plain.inbox")
	var calls int64
	var mu sync.Mutex
	w.runParticipant(t, outbox.Handler(w.store, debit(w.codecs, &calls, &mu)))
	// The same participant without the outbox, in a group of its own: it
	// pipes its reply itself (to another topic, to tell them apart).
	plain := w.client(t, workerClientOpts(w.stack.KafkaAddrs(), "plain")...)
	plainWorker, err := pipe.NewStageWorker(plain, w.codecs.debit,
		func(_ context.Context, cmd Debit, _ schema.Envelope) (pipe.Reply, error) {
			return pipe.NewReply(w.codecs.debited, debitedType, Debited{Account: cmd.Account, Balance: 1000 - cmd.Cents}), nil
		},
		pipe.WithPiperOptions(pipe.WithSource("accounts-service"),
			pipe.WithEnhance(func(_ context.Context, rec *kgo.Record, _ pipe.Message) error { rec.Topic = "plain.inbox"; return nil })))
	if err != nil {
		t.Fatal(err)
	}
	run(t, "plain stage worker", plainWorker.Run)

	rec, env := command(t, w.codecs, "saga-1", Debit{Account: "alice", Cents: 250})
	produce(t, w.client(t), rec)
	got := testkit.Consume(t, w.stack.KafkaAddrs(), inboxTopic, 1, nil)[0]
	want := testkit.Consume(t, w.stack.KafkaAddrs(), "plain.inbox", 1, nil)[0]

	if string(got.Key) != string(want.Key) {
		t.Errorf("key %q, the stage worker's %q", got.Key, want.Key)
	}
	gotReply, err := w.codecs.debited.Decode(context.Background(), got.Value)
	if err != nil {
		t.Fatal(err)
	}
	if wantReply := (Debited{Account: "alice", Balance: 750}); gotReply != wantReply {
		t.Errorf("reply %+v, want %+v", gotReply, wantReply)
	}
	newOnEach := []string{schema.HeaderID, schema.HeaderTime, schema.HeaderTraceParent,
		pipe.HeaderOriginalTopic, pipe.HeaderOriginalPartition, pipe.HeaderOriginalOffset, pipe.HeaderOriginalConsumerGroup}
	compared := func(r *kgo.Record) []string {
		var hs []string
		for _, h := range r.Headers {
			if !slices.Contains(newOnEach, h.Key) {
				hs = append(hs, h.Key+"="+string(h.Value))
			}
		}
		slices.Sort(hs)
		return hs
	}
	if g, w := compared(got), compared(want); !slices.Equal(g, w) {
		t.Errorf("headers differ from the stage worker's:\n got %q\nwant %q", g, w)
	}
	// Both consumed the same command: the reply says where it came from
	// (pipe.SourceRecord gives the handler the consumed record).
	for _, name := range []string{pipe.HeaderOriginalTopic, pipe.HeaderOriginalPartition, pipe.HeaderOriginalOffset} {
		if g, w := testkit.Header(got, name), testkit.Header(want, name); g == "" || g != w {
			t.Errorf("header %s = %q, the stage worker's %q", name, g, w)
		}
	}
	for name, value := range map[string]string{
		schema.HeaderCausationID: env.ID, schema.HeaderType: debitedType, schema.HeaderSource: "accounts-service",
		schema.HeaderSagaID: "saga-1", schema.HeaderCorrelationID: "corr-saga-1",
		schema.HeaderReplyTo: "", schema.HeaderIdempotencyKey: "",
	} {
		if v := testkit.Header(got, name); v != value {
			t.Errorf("header %s = %q, want %q", name, v, value)
		}
	}
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736" // the command's
	if tp := testkit.Header(got, schema.HeaderTraceParent); !strings.Contains(tp, traceID) {
		t.Errorf("traceparent %q is not in the command's trace %s", tp, traceID)
	}
	if testkit.Header(got, schema.HeaderID) == "" || testkit.Header(got, schema.HeaderID) == testkit.Header(want, schema.HeaderID) {
		t.Errorf("ce_id %q: want a new one", testkit.Header(got, schema.HeaderID))
	}

	if n := count(t, w.pool, "SELECT count(*) FROM effects WHERE command_id = $1", env.ID); n != 1 {
		t.Errorf("the debit was applied %d times, want 1", n)
	}
	testkit.WaitUntil(t, 10*time.Second, func() error {
		if n := count(t, w.pool, "SELECT count(*) FROM sagapipe_outbox WHERE published_at IS NULL"); n != 0 {
			return errors.New("the reply's row is not marked published")
		}
		return nil
	})
}

// A resend of a handled command (a new ce_id, the same idempotency key)
// is not applied again, and is answered again: with the reply recorded,
// for this command (its causation ID).
func TestResendIsAppliedOnceAndAnsweredAgain(t *testing.T) {
	w := newWorld(t)
	var calls int64
	var mu sync.Mutex
	w.runParticipant(t, outbox.Handler(w.store, debit(w.codecs, &calls, &mu)))

	first, env := command(t, w.codecs, "saga-1", Debit{Account: "alice", Cents: 250})
	produce(t, w.client(t), first)
	testkit.Consume(t, w.stack.KafkaAddrs(), inboxTopic, 1, nil)
	second, secondID := resend(first)
	third, thirdID := resend(first)
	produce(t, w.client(t), second, third)
	replies := testkit.Consume(t, w.stack.KafkaAddrs(), inboxTopic, 3, nil)

	var causes []string
	for _, r := range replies {
		causes = append(causes, testkit.Header(r, schema.HeaderCausationID))
		reply, err := w.codecs.debited.Decode(context.Background(), r.Value)
		if err != nil {
			t.Fatal(err)
		}
		if reply.Balance != 750 {
			t.Errorf("answered %+v to %s: want the first answer, a balance of 750", reply, testkit.Header(r, schema.HeaderCausationID))
		}
	}
	if want := []string{env.ID, secondID, thirdID}; !slices.Equal(causes, want) {
		t.Errorf("replies answer %q, want %q", causes, want)
	}
	if n := count(t, w.pool, "SELECT count(*) FROM effects WHERE account = 'alice'"); n != 1 {
		t.Errorf("the debit was applied %d times, want 1", n)
	}
	mu.Lock()
	defer mu.Unlock()
	if calls != 1 {
		t.Errorf("the handler ran %d times, want 1", calls)
	}
}

// A command that fails leaves nothing behind: not its effect, not its
// idempotency record (its resend is applied), not its reply.
func TestFailedCommandKeepsNothing(t *testing.T) {
	w := newWorld(t)
	failures := make(chan error, 10)
	var mu sync.Mutex
	failOnce := map[string]bool{"saga-fails": true, "saga-commit-fails": true}
	// A constraint checked at COMMIT: the transaction fails after the
	// handler has returned.
	if _, err := w.pool.Exec(context.Background(), "CREATE TABLE audits (entry text UNIQUE DEFERRABLE INITIALLY DEFERRED)"); err != nil {
		t.Fatal(err)
	}
	apply := debit(w.codecs, nil, nil)
	w.runParticipant(t, outbox.Handler(w.store, func(ctx context.Context, tx pgx.Tx, cmd Debit, env schema.Envelope) (pipe.Reply, error) {
		reply, err := apply(ctx, tx, cmd, env) // the effect is written...
		mu.Lock()
		fail := failOnce[env.SagaID]
		failOnce[env.SagaID] = false
		mu.Unlock()
		switch {
		case err != nil || !fail:
		case env.SagaID == "saga-commit-fails":
			_, err = tx.Exec(ctx, "INSERT INTO audits VALUES ('twice'), ('twice')")
		default:
			err = errFailed // ...and then something fails
		}
		return reply, err
	}), pipe.WithFailurePolicy(func(_ context.Context, _ *kgo.Record, err error) error {
		failures <- err
		return nil
	}))

	tests := []struct {
		name      string
		sagaID    string
		noReplyTo bool
		wantErr   error
		wantCode  string // SQLSTATE, when wantErr is nil
	}{
		{name: "the handler fails", sagaID: "saga-fails", wantErr: errFailed},
		{name: "the reply has nowhere to go", sagaID: "saga-lost", noReplyTo: true, wantErr: outbox.ErrNoReplyTopic},
		{name: "the commit fails", sagaID: "saga-commit-fails", wantCode: "23505"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec, env := command(t, w.codecs, tt.sagaID, Debit{Account: tt.sagaID, Cents: 100})
			failing := kgo.Record{Topic: rec.Topic, Key: rec.Key, Value: rec.Value, Headers: rec.Headers}
			if tt.noReplyTo {
				failing.Headers = slices.DeleteFunc(slices.Clone(rec.Headers), func(h kgo.RecordHeader) bool { return h.Key == schema.HeaderReplyTo })
			}
			produce(t, w.client(t), &failing)
			select {
			case err := <-failures:
				var pgErr *pgconn.PgError
				if tt.wantErr != nil && !errors.Is(err, tt.wantErr) ||
					tt.wantCode != "" && (!errors.As(err, &pgErr) || pgErr.Code != tt.wantCode) {
					t.Fatalf("failed with %v, want %v%s", err, tt.wantErr, tt.wantCode)
				}
			case <-time.After(20 * time.Second):
				t.Fatal("the command did not fail")
			}
			kept := map[string]int{
				"effects":   count(t, w.pool, "SELECT count(*) FROM effects WHERE account = $1", tt.sagaID),
				"processed": count(t, w.pool, "SELECT count(*) FROM sagapipe_processed WHERE idempotency_key = $1", env.IdempotencyKey),
				"outbox":    count(t, w.pool, "SELECT count(*) FROM sagapipe_outbox WHERE key = $1", []byte(tt.sagaID)),
			}
			for table, n := range kept {
				if n != 0 {
					t.Errorf("%s kept %d rows of the failed command", table, n)
				}
			}

			again, againID := resend(rec)
			produce(t, w.client(t), again)
			reply := testkit.Consume(t, w.stack.KafkaAddrs(), inboxTopic, 1, keyed(tt.sagaID))[0]
			if c := testkit.Header(reply, schema.HeaderCausationID); c != againID {
				t.Errorf("the reply answers %s, want the resend %s", c, againID)
			}
			if n := count(t, w.pool, "SELECT count(*) FROM effects WHERE account = $1", tt.sagaID); n != 1 {
				t.Errorf("the resend was applied %d times, want 1", n)
			}
		})
	}
}
