package outbox_test

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/sagapipe/sagapipe/internal/testkit"
	"github.com/sagapipe/sagapipe/outbox"
)

// enqueue commits n records for topic, numbered from first in header "n",
// in transactions of ten.
func (w *world) enqueue(t *testing.T, topic string, first, n int) {
	t.Helper()
	ctx := context.Background()
	for i := first; i < first+n; i += 10 {
		err := pgx.BeginFunc(ctx, w.pool, func(tx pgx.Tx) error {
			for j := i; j < min(i+10, first+n); j++ {
				rec := &kgo.Record{Topic: topic, Key: []byte("k"), Value: []byte("v"),
					Headers: []kgo.RecordHeader{{Key: "n", Value: []byte(strconv.Itoa(j))}}}
				if err := w.store.Enqueue(ctx, tx, rec); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

func (w *world) runRelay(t *testing.T, opts ...outbox.RelayOpt) {
	t.Helper()
	// The metadata refresh kgo waits for before it retries a refused
	// write: 5s by default, long for a test.
	relay, err := outbox.NewRelay(w.store, w.client(t, kgo.ProducerLinger(0), kgo.MetadataMinAge(100*time.Millisecond)), opts...)
	if err != nil {
		t.Fatal(err)
	}
	run(t, "relay", relay.Run)
}

func (w *world) waitPublished(t *testing.T) {
	t.Helper()
	testkit.WaitUntil(t, 20*time.Second, func() error {
		if n := count(t, w.pool, "SELECT count(*) FROM sagapipe_outbox WHERE published_at IS NULL"); n != 0 {
			return fmt.Errorf("%d rows unpublished", n)
		}
		return nil
	})
}

// One relay publishes the rows in the order they were committed; two
// relays share them, and neither publishes a row the other has. Every
// row is published once.
func TestRelaysPublishEveryRowOnce(t *testing.T) {
	w := newWorld(t)
	tests := []struct {
		name      string
		relays    int
		wantOrder bool
	}{
		{name: "one relay", relays: 1, wantOrder: true},
		{name: "two relays", relays: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			topic := strings.ReplaceAll(tt.name, " ", "-")
			w.createTopics(t, topic)
			const rows = 300
			// All waiting when the relays start: they compete for them.
			w.enqueue(t, topic, 0, rows)
			for range tt.relays {
				w.runRelay(t, outbox.WithBatchSize(7))
			}
			w.waitPublished(t)

			published := testkit.Consume(t, w.stack.KafkaAddrs(), topic, rows, nil)
			times := map[string]int{}
			for i, r := range published {
				n := testkit.Header(r, "n")
				times[n]++
				if tt.wantOrder && n != strconv.Itoa(i) {
					t.Fatalf("record %d of the topic is row %s: out of order", i, n)
				}
			}
			for i := range rows {
				if n := times[strconv.Itoa(i)]; n != 1 {
					t.Errorf("row %d published %d times, want once", i, n)
				}
			}
			if n := records(t, w.client(t), topic); n != rows {
				t.Errorf("%d records published, want %d", n, rows)
			}
		})
	}
}

// A record the broker refuses for good stays in the outbox, is logged
// and retried, and does not hold up the rows after it; once its cause is
// fixed, it is published.
func TestRelayKeepsWhatTheBrokerRefuses(t *testing.T) {
	w := newWorld(t)
	w.createTopics(t, "events")
	ctx := context.Background()
	err := pgx.BeginFunc(ctx, w.pool, func(tx pgx.Tx) error {
		// Over kgo's 1MB batch limit: kerr.MessageTooLarge, which no
		// retry mends.
		if err := w.store.Enqueue(ctx, tx, &kgo.Record{Topic: "events", Value: make([]byte, 2<<20)}); err != nil {
			return err
		}
		return w.store.Enqueue(ctx, tx, &kgo.Record{Topic: "events", Value: []byte("fine")})
	})
	if err != nil {
		t.Fatal(err)
	}
	logs := &testkit.SyncBuffer{}
	w.runRelay(t, outbox.WithBackoff(20*time.Millisecond, 100*time.Millisecond),
		outbox.WithLogger(slog.New(slog.NewTextHandler(logs, nil))))

	testkit.WaitUntil(t, 20*time.Second, func() error {
		if n := count(t, w.pool, "SELECT count(*) FROM sagapipe_outbox WHERE id = 2 AND published_at IS NOT NULL"); n != 1 {
			return fmt.Errorf("the row after the refused one is not published")
		}
		if n := count(t, w.pool, `SELECT count(*) FROM sagapipe_outbox WHERE id = 1 AND published_at IS NULL
			AND attempts >= 3 AND last_error LIKE '%MESSAGE_TOO_LARGE%'`); n != 1 {
			return fmt.Errorf("the refused row is not kept with its error and three attempts")
		}
		if !strings.Contains(logs.String(), "the broker refuses a row") || !strings.Contains(logs.String(), "id=1") {
			return fmt.Errorf("the refusal of row 1 is not logged: %s", logs)
		}
		return nil
	})

	// The operator mends the row.
	if _, err := w.pool.Exec(ctx, "UPDATE sagapipe_outbox SET value = 'mended' WHERE id = 1"); err != nil {
		t.Fatal(err)
	}
	w.waitPublished(t)
	published := testkit.Consume(t, w.stack.KafkaAddrs(), "events", 2, nil)
	if string(published[0].Value) != "fine" || string(published[1].Value) != "mended" {
		t.Errorf("published %q, %q; want fine, mended", published[0].Value, published[1].Value)
	}
}

// While the broker refuses writes (a leader moving, say), the relay backs
// off and retries; afterwards every row is published, and once.
func TestRelayRidesThroughABrokerOutage(t *testing.T) {
	w := newWorld(t)
	w.createTopics(t, "events")
	var outage atomic.Bool
	outage.Store(true)
	cluster := w.stack.Kafka()
	cluster.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		cluster.KeepControl()
		if !outage.Load() {
			return nil, nil, false
		}
		produce := req.(*kmsg.ProduceRequest)
		resp := produce.ResponseKind().(*kmsg.ProduceResponse)
		for _, topic := range produce.Topics {
			rt := kmsg.NewProduceResponseTopic()
			rt.Topic, rt.TopicID = topic.Topic, topic.TopicID
			for _, p := range topic.Partitions {
				rp := kmsg.NewProduceResponseTopicPartition()
				rp.Partition, rp.ErrorCode = p.Partition, kerr.NotLeaderForPartition.Code
				rt.Partitions = append(rt.Partitions, rp)
			}
			resp.Topics = append(resp.Topics, rt)
		}
		return resp, nil, true
	})
	const rows = 30
	w.enqueue(t, "events", 0, rows)
	logs := &testkit.SyncBuffer{}
	w.runRelay(t, outbox.WithPublishTimeout(200*time.Millisecond), outbox.WithBackoff(20*time.Millisecond, 200*time.Millisecond),
		outbox.WithLogger(slog.New(slog.NewTextHandler(logs, nil))))
	testkit.WaitUntil(t, 20*time.Second, func() error {
		if n := count(t, w.pool, "SELECT count(*) FROM sagapipe_outbox WHERE attempts >= 2 AND published_at IS NULL"); n != rows {
			return fmt.Errorf("%d of %d rows retried", n, rows)
		}
		if !strings.Contains(logs.String(), "publishing a row failed; it is retried") {
			return fmt.Errorf("the failures are not logged: %s", logs)
		}
		return nil
	})
	outage.Store(false)
	w.waitPublished(t)
	times := map[string]int{}
	for _, r := range testkit.Consume(t, w.stack.KafkaAddrs(), "events", rows, nil) {
		times[testkit.Header(r, "n")]++
	}
	for i := range rows {
		if n := times[strconv.Itoa(i)]; n != 1 {
			t.Errorf("row %d published %d times, want once", i, n)
		}
	}
	if n := records(t, w.client(t), "events"); n != rows {
		t.Errorf("%d records published, want %d", n, rows)
	}
}

// Published rows are deleted once their retention has passed: the outbox
// stays as small as what is in flight.
func TestRelayDeletesPublishedRows(t *testing.T) {
	w := newWorld(t)
	w.createTopics(t, "events")
	w.enqueue(t, "events", 0, 20)
	w.runRelay(t, outbox.WithRetention(0), outbox.WithPollInterval(50*time.Millisecond))
	testkit.WaitUntil(t, 20*time.Second, func() error {
		if n := count(t, w.pool, "SELECT count(*) FROM sagapipe_outbox"); n != 0 {
			return fmt.Errorf("%d rows left in the outbox", n)
		}
		return nil
	})
	if n := records(t, w.client(t), "events"); n != 20 {
		t.Errorf("%d records published, want 20", n)
	}
}

// A committed row wakes the relay (LISTEN/NOTIFY): it is published at
// once, not at the next poll.
func TestRelayWakesOnCommit(t *testing.T) {
	w := newWorld(t)
	w.createTopics(t, "events")
	w.runRelay(t, outbox.WithPollInterval(time.Hour))
	for i := range 3 {
		w.enqueue(t, "events", i, 1)
		if _, err := testkit.ConsumeWithin(w.stack.KafkaAddrs(), "events", i+1, 5*time.Second, nil); err != nil {
			t.Fatalf("row %d: %v", i, err)
		}
	}
}
