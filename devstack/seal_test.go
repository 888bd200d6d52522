package devstack_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/devstack"
	"github.com/sagapipe/sagapipe/kread"
)

// A broker killed with a transaction open leaves it on disk with no end.
// After a restart, a read-committed reader must see every committed record
// (the restarted producer's included: it keeps its producer ID) and a read
// to the end must end. The kill is a copy of the data directory taken while
// the transaction is open, started as a broker of its own: what a kill -9
// leaves behind.
func TestATransactionLeftOpenByACrashIsAbortedWithAMarker(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	live := t.TempDir()
	s, err := devstack.Start(devstack.Config{DataDir: live})
	if err != nil {
		t.Fatal(err)
	}
	plain := client(t, s.KafkaAddrs())
	if _, err := kadm.NewClient(plain).CreateTopic(ctx, 1, 1, nil, "t"); err != nil {
		t.Fatal(err)
	}
	if err := plain.ProduceSync(ctx, &kgo.Record{Topic: "t", Value: []byte("before")}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	tx := client(t, s.KafkaAddrs(), kgo.TransactionalID("left-open"))
	if err := tx.BeginTransaction(); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := tx.ProduceSync(ctx, &kgo.Record{Topic: "t", Value: []byte("never committed")}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	crashed := t.TempDir()
	if err := os.CopyFS(crashed, os.DirFS(live)); err != nil {
		t.Fatal(err)
	}
	tx.Close()
	plain.Close()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s2, err := devstack.Start(devstack.Config{DataDir: crashed})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	// The producer comes back under its transactional ID, and so its
	// producer ID, and commits.
	again := client(t, s2.KafkaAddrs(), kgo.TransactionalID("left-open"))
	if err := again.BeginTransaction(); err != nil {
		t.Fatal(err)
	}
	if err := again.ProduceSync(ctx, &kgo.Record{Topic: "t", Value: []byte("after")}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	if err := again.EndTransaction(ctx, kgo.TryCommit); err != nil {
		t.Fatal(err)
	}
	rctx, rcancel := context.WithTimeout(ctx, 15*time.Second)
	defer rcancel()
	var got []string
	err = kread.ToEnd(rctx, []kgo.Opt{kgo.SeedBrokers(s2.KafkaAddrs()...)}, "t", nil, func(r *kgo.Record) error {
		got = append(got, string(r.Value))
		return nil
	})
	if err != nil || !slices.Equal(got, []string{"before", "after"}) {
		t.Fatalf("read to the end: %v, %v; want [before after]: the open transaction aborted, the later commit kept", got, err)
	}

	// Closed cleanly, the data is not looked through again.
	if err := s2.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(crashed, "clean-shutdown")); err != nil {
		t.Fatalf("no clean-shutdown mark after Close: %v", err)
	}
}

func client(t *testing.T, addrs []string, opts ...kgo.Opt) *kgo.Client {
	t.Helper()
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(addrs...)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cl
}
