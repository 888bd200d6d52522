package dlq_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/dlq"
	"github.com/sagapipe/sagapipe/internal/testkit"
)

func TestSequencedModeParksKeysAcrossRestarts(t *testing.T) {
	ctx := context.Background()
	s := testkit.StartStack(t)
	testkit.CreateTopics(t, s.KafkaAddrs(), 1, "accounts")
	testkit.CreateTopics(t, s.KafkaAddrs(), 1, "accounts.dlq")
	send := func(kv ...string) {
		t.Helper()
		var recs []*kgo.Record
		for i := 0; i < len(kv); i += 2 {
			recs = append(recs, &kgo.Record{Topic: "accounts", Key: []byte(kv[i]), Value: []byte(kv[i+1])})
		}
		if err := testkit.Client(t, s.KafkaAddrs()).ProduceSync(ctx, recs...).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	policy := dlq.Policy{Sequenced: true}
	// consume runs a consumer until it has handled wantHandled and
	// dead-lettered wantDead records, and returns what it handled.
	consumeRun := func(wantHandled, wantDead int) []string {
		t.Helper()
		var handled, dead tracker
		stop := run(t, s, "accounts", func(_ context.Context, r *kgo.Record) error {
			if string(r.Value) == "poison" {
				return dlq.Poison(errors.New("cannot apply"))
			}
			handled.add(string(r.Key) + ":" + string(r.Value))
			return nil
		}, policy, dlq.WithHooks(&dead))
		handled.wait(t, wantHandled)
		dead.wait(t, wantDead)
		if err := stop(); err != nil {
			t.Fatal(err)
		}
		return handled.snapshot()
	}

	send("K1", "poison", "K2", "b", "K1", "c", "K2", "d", "K1", "e")
	if got := consumeRun(2, 3); fmt.Sprint(got) != "[K2:b K2:d]" {
		t.Fatalf("first run handled %v, want only K2's records: K1 is parked behind its poison record", got)
	}
	classes := map[string]int{}
	for _, r := range testkit.Consume(t, s.KafkaAddrs(), "accounts.dlq", 3, nil) {
		classes[testkit.Header(r, dlq.HeaderErrorClass)]++
	}
	if classes["poison"] != 1 || classes["predecessor_dead_lettered"] != 2 {
		t.Fatalf("DLQ classes %v, want 1 poison and 2 predecessor_dead_lettered", classes)
	}

	// A new consumer rebuilds the parked keys from the DLQ.
	send("K1", "f", "K2", "g")
	if got := consumeRun(1, 1); fmt.Sprint(got) != "[K2:g]" {
		t.Fatalf("after a restart handled %v, want [K2:g]: K1 must still be parked", got)
	}

	n, err := dlq.Release(ctx, dlq.ReleaseConfig{ClientOptions: []kgo.Opt{kgo.SeedBrokers(s.KafkaAddrs()...)}, Topic: "accounts.dlq", Key: "K1"})
	if err != nil || n != 1 {
		t.Fatalf("release: %d, %v; want 1 partition released", n, err)
	}
	send("K1", "h")
	if got := consumeRun(1, 0); fmt.Sprint(got) != "[K1:h]" {
		t.Fatalf("after the release handled %v, want [K1:h]", got)
	}
	// The release is in the DLQ, so a later restart keeps K1 free.
	send("K1", "i")
	if got := consumeRun(1, 0); fmt.Sprint(got) != "[K1:i]" {
		t.Fatalf("after a restart following the release handled %v, want [K1:i]", got)
	}
	if n, err := dlq.Release(ctx, dlq.ReleaseConfig{ClientOptions: []kgo.Opt{kgo.SeedBrokers(s.KafkaAddrs()...)}, Topic: "accounts.dlq", Key: "K1"}); err != nil || n != 0 {
		t.Fatalf("second release: %d, %v; want nothing left to release", n, err)
	}
}
