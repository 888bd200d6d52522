package pipe_test

import (
	"fmt"
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/goleak"

	"github.com/sagapipe/sagapipe/devstack"
	"github.com/sagapipe/sagapipe/internal/testkit"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// consume reads n records of topic from the start, failing the test when
// they do not come in time or more come.
func consume(t testing.TB, s *devstack.Stack, topic string, n int, opts ...kgo.Opt) []*kgo.Record {
	t.Helper()
	out := testkit.Consume(t, s.KafkaAddrs(), topic, n, nil, opts...)
	if len(out) != n {
		t.Fatalf("consumed %d records of %s, want %d", len(out), topic, n)
	}
	return out
}

// header is testkit.Header for a record that must carry key at most once:
// piping overwrites its headers, never repeats them.
func header(r *kgo.Record, key string) string {
	if n := countHeader(r, key); n > 1 {
		panic(fmt.Sprintf("header %s appears %d times", key, n))
	}
	return testkit.Header(r, key)
}

func countHeader(r *kgo.Record, key string) int {
	n := 0
	for _, h := range r.Headers {
		if h.Key == key {
			n++
		}
	}
	return n
}
