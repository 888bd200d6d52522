package kafkaerr

import (
	"errors"
	"net"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Transient tells whether a fetch error is one the client recovers from
// by itself: kgo's informational ErrGroupSession and ErrDataLoss, retriable
// broker errors, and network errors (a broker restarting, a network
// blip), and the errors of a group that moved on while the member was
// away (an illegal generation, an unknown member: it rejoins). A consumer
// loop logs these and polls on.
func Transient(err error) bool {
	var (
		session *kgo.ErrGroupSession
		loss    *kgo.ErrDataLoss
		netErr  net.Error
	)
	return errors.As(err, &session) || errors.As(err, &loss) || kerr.IsRetriable(err) || errors.As(err, &netErr) || rebalanced(err)
}

// rebalanced tells the errors of a group that moved on while a member was
// away (a broker restart, a session that expired): the client rejoins by
// itself, and what was not committed comes again.
func rebalanced(err error) bool {
	return errors.Is(err, kerr.IllegalGeneration) || errors.Is(err, kerr.UnknownMemberID) || errors.Is(err, kerr.RebalanceInProgress)
}

// Reconnectable is Transient for a client whose settings have reached the
// brokers already, and kgo's ErrFirstReadEOF besides. kgo takes a
// connection closed at its first read for a TLS or SASL mistake and does
// not retry it; once the same settings have worked, it is a connection cut
// (a network fault, a proxy resetting it), and the next request dials
// again. A loop that runs after its service checked the brokers uses it;
// a first connection keeps Transient, so that a mistake fails fast with
// kgo's hint.
func Reconnectable(err error) bool {
	var firstRead *kgo.ErrFirstReadEOF
	return Transient(err) || errors.As(err, &firstRead)
}
