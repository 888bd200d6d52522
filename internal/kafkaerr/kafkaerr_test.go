package kafkaerr_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/sagapipe/sagapipe/internal/kafkaerr"
	"github.com/sagapipe/sagapipe/internal/testkit"
)

// A connection closed at its first read: Transient leaves it to someone to
// act on (on a first connection, TLS or SASL is missing), Reconnectable
// rides through it (once the settings have reached the brokers, it is a
// connection cut).
func TestReconnectableFirstReadEOF(t *testing.T) {
	err := fmt.Errorf("saga orders: pipe: end transaction: %w", testkit.FirstReadEOF(t))
	if kafkaerr.Transient(err) {
		t.Errorf("Transient(%v) = true: a first connection closed at once must fail fast", err)
	}
	if !kafkaerr.Reconnectable(err) {
		t.Errorf("Reconnectable(%v) = false: a connection cut after the brokers answered is an outage", err)
	}
	if kafkaerr.Reconnectable(errors.New("nil map")) {
		t.Error("Reconnectable takes any error")
	}
}
