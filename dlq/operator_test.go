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

func TestReplayRoundTrip(t *testing.T) {
	ctx := context.Background()
	s := testkit.StartStack(t)
	testkit.CreateTopics(t, s.KafkaAddrs(), 2, "orders")
	testkit.CreateTopics(t, s.KafkaAddrs(), 1, "orders.dlq")
	produce(t, s, "orders", 2, 6)
	bad := func(v string) bool {
		var p, n int
		fmt.Sscanf(v, "%d-%d", &p, &n)
		return n%3 == 1
	}

	// A handler with a bug dead-letters a third of the records.
	var first, dead tracker
	stop := run(t, s, "orders", func(_ context.Context, r *kgo.Record) error {
		if bad(string(r.Value)) {
			return dlq.Poison(errors.New("bug"))
		}
		first.add(string(r.Value))
		return nil
	}, dlq.Policy{}, dlq.WithHooks(&dead))
	first.wait(t, 8)
	dead.wait(t, 4)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	const failed = 4
	if n := count(t, s, "orders.dlq"); n != failed {
		t.Fatalf("%d dead-lettered, want %d", n, failed)
	}

	// A dry run replays nothing and keeps no progress.
	dry, err := dlq.Replay(ctx, dlq.ReplayConfig{ClientOptions: []kgo.Opt{kgo.SeedBrokers(s.KafkaAddrs()...)}, Topic: "orders.dlq", DryRun: true})
	if err != nil || dry.Replayed != failed {
		t.Fatalf("dry run: %+v, %v; want %d to replay", dry, err, failed)
	}
	if n := count(t, s, "orders"); n != 12 {
		t.Fatalf("dry run republished: orders holds %d records, want 12", n)
	}

	var progress [][2]int64
	stats, err := dlq.Replay(ctx, dlq.ReplayConfig{ClientOptions: []kgo.Opt{kgo.SeedBrokers(s.KafkaAddrs()...)}, Topic: "orders.dlq",
		Progress: func(done, total int64) { progress = append(progress, [2]int64{done, total}) }})
	if err != nil || stats.Replayed != failed {
		t.Fatalf("replay: %+v, %v; want %d replayed", stats, err, failed)
	}
	if last := progress[len(progress)-1]; last != [2]int64{failed, failed} {
		t.Fatalf("final progress %v, want %d of %d", last, failed, failed)
	}

	// The fixed handler gets exactly the replayed records, once, in each
	// origin partition's order, marked as replayed.
	var second tracker
	var replayedFrom []string
	stop = run(t, s, "orders", func(_ context.Context, r *kgo.Record) error {
		second.add(string(r.Value))
		replayedFrom = append(replayedFrom, testkit.Header(r, dlq.HeaderReplayedFrom))
		return nil
	}, dlq.Policy{})
	second.wait(t, failed)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	got := second.snapshot()
	perPartition := map[byte][]string{}
	for _, v := range got {
		if !bad(v) {
			t.Fatalf("%s came back, but it never failed", v)
		}
		perPartition[v[0]] = append(perPartition[v[0]], v)
	}
	if fmt.Sprint(perPartition['0']) != "[0-1 0-4]" || fmt.Sprint(perPartition['1']) != "[1-1 1-4]" {
		t.Fatalf("replayed records handled as %v, want each once in origin order", perPartition)
	}
	for _, rf := range replayedFrom {
		if rf == "" {
			t.Fatal("a replayed record has no replayed_from header")
		}
	}

	again, err := dlq.Replay(ctx, dlq.ReplayConfig{ClientOptions: []kgo.Opt{kgo.SeedBrokers(s.KafkaAddrs()...)}, Topic: "orders.dlq"})
	if err != nil || again.Replayed != 0 {
		t.Fatalf("second replay: %+v, %v; want nothing republished", again, err)
	}
	if n := count(t, s, "orders"); n != 12+failed {
		t.Fatalf("orders holds %d records, want %d: a replay duplicated records", n, 12+failed)
	}
}

func TestListFilters(t *testing.T) {
	ctx := context.Background()
	s := testkit.StartStack(t)
	testkit.CreateTopics(t, s.KafkaAddrs(), 1, "a")
	testkit.CreateTopics(t, s.KafkaAddrs(), 1, "a.dlq")
	produce(t, s, "a", 1, 4)
	var dead tracker
	stop := run(t, s, "a", func(_ context.Context, r *kgo.Record) error {
		if string(r.Value) != "0-0" {
			return dlq.Poison(errors.New("no"))
		}
		return nil
	}, dlq.Policy{}, dlq.WithHooks(&dead))
	dead.wait(t, 3)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		filter dlq.Filter
		want   int
	}{
		{"all", dlq.Filter{}, 3},
		{"by origin topic", dlq.Filter{OriginTopic: "a"}, 3},
		{"other topic", dlq.Filter{OriginTopic: "b"}, 0},
		{"by key", dlq.Filter{Key: "k-2"}, 1},
		{"by class", dlq.Filter{Class: dlq.ClassExhausted}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := 0
			err := dlq.List(ctx, dlq.ListConfig{ClientOptions: []kgo.Opt{kgo.SeedBrokers(s.KafkaAddrs()...)}, Topic: "a.dlq", Filter: tt.filter}, func(e dlq.Entry, err error) error {
				if err != nil {
					return err
				}
				if e.OriginTopic != "a" || e.Class != dlq.ClassPoison || e.Attempts != 1 || e.Message != "no" {
					t.Errorf("entry %+v", e)
				}
				n++
				return nil
			})
			if err != nil || n != tt.want {
				t.Fatalf("listed %d (%v), want %d", n, err, tt.want)
			}
		})
	}
}
