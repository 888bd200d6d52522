package service

import (
	"errors"
	"fmt"
	"testing"

	"github.com/twmb/franz-go/pkg/kerr"

	"github.com/sagapipe/sagapipe/internal/testkit"
	"github.com/sagapipe/sagapipe/schema"
)

// A runtime failed by a connection cut at its first read (a network fault
// during a transaction's end) is replaced, not the service stopped: the
// brokers answered these settings when the service started.
func TestRecoverableFailures(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{fmt.Errorf("saga orders: pipe: end transaction: %w", testkit.FirstReadEOF(t)), true},
		{fmt.Errorf("saga orders: %w", schema.ErrRegistryUnavailable), true},
		{fmt.Errorf("saga orders: %w", kerr.ProducerFenced), true},
		{errors.New("saga orders: topic orders.inbox does not exist"), false},
		{kerr.TopicAuthorizationFailed, false},
	} {
		if got := recoverable(c.err); got != c.want {
			t.Errorf("recoverable(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
