package consume

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/internal/kafkaerr"
)

// ErrClientClosed: the client was closed while the loop polled with it;
// its owner closed it too early (close it after Run returned).
var ErrClientClosed = errors.New("the client was closed while the loop ran")

// NoWake as Poll's wake polls until records come or ctx ends.
const NoWake time.Duration = -1

// Config describes a loop to NewPoller.
type Config struct {
	// Name prefixes the loop's logs and errors ("pipe: stage worker").
	Name string
	// Poll is the client's or the session's PollFetches.
	Poll func(context.Context) kgo.Fetches
	// Fatal, when set, tells which fetch errors the client would ride
	// through must end the loop all the same (a replay that must not skip
	// records lost to retention: *kgo.ErrDataLoss).
	Fatal func(error) bool
	// AllowRebalance, when not nil, is called before each poll: the
	// client's or session's, for a client built with
	// kgo.BlockRebalanceOnPoll.
	AllowRebalance func()
	// AfterFunc is the clock of Poll's wake-ups (default time.AfterFunc's).
	AfterFunc func(d time.Duration, f func()) (stop func() bool)
	// Logger hears of transient fetch errors (default slog.Default()).
	Logger *slog.Logger
}

// Poller polls for one loop.
type Poller struct {
	cfg     Config
	failing bool // a transient fetch error was logged and fetching has not worked since
}

// NewPoller returns the Poller of the loop cfg describes.
func NewPoller(cfg Config) *Poller {
	if cfg.AfterFunc == nil {
		cfg.AfterFunc = func(d time.Duration, f func()) func() bool { return time.AfterFunc(d, f).Stop }
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Poller{cfg: cfg}
}

// Poll polls until records come, ctx ends, or wake has passed (NoWake: no
// such limit; a loop waking for a retry or a timer of its own). A poll so
// woken returns what came, maybe nothing. Fetch errors the client recovers
// from by itself are logged once until fetching works again, and skipped;
// any other one is returned, as is ErrClientClosed. stopped reports that
// ctx ended: the loop returns.
func (p *Poller) Poll(ctx context.Context, wake time.Duration) (fetches kgo.Fetches, stopped bool, err error) {
	if wake < 0 {
		return p.PollWith(ctx, nil)
	}
	return p.PollWith(ctx, func(w context.CancelFunc) func() {
		stop := p.cfg.AfterFunc(wake, w)
		return func() { stop() }
	})
}

// PollWith is Poll for a loop that wakes its poll itself, from several
// sources (timers, other goroutines, work already waiting): arm, when not
// nil, is given the poll's wake-up before the poll begins (calling it ends
// the poll; calling it at once skips the wait) and returns what undoes
// whatever it armed, called once the poll has ended.
func (p *Poller) PollWith(ctx context.Context, arm func(wake context.CancelFunc) (disarm func())) (fetches kgo.Fetches, stopped bool, err error) {
	if p.cfg.AllowRebalance != nil {
		p.cfg.AllowRebalance()
	}
	pollCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	if arm != nil {
		defer arm(cancel)()
	}
	fetches = p.cfg.Poll(pollCtx)
	if ctx.Err() != nil {
		return nil, true, nil
	}
	if fetches.IsClientClosed() {
		return nil, false, fmt.Errorf("%s: %w", p.cfg.Name, ErrClientClosed)
	}
	transient := false
	fetches.EachError(func(topic string, partition int32, fetchErr error) {
		switch {
		case errors.Is(fetchErr, context.Canceled): // the caller's own wake-up
		case kafkaerr.Transient(fetchErr) && (p.cfg.Fatal == nil || !p.cfg.Fatal(fetchErr)):
			// A broker restarting, a lost group session: the client
			// retries by itself, and the loop goes on with it.
			if !p.failing && !transient {
				p.cfg.Logger.Warn(p.cfg.Name+": fetch error; the client retries (logged once until fetching works again)",
					"topic", topic, "partition", partition, "error", fetchErr)
			}
			transient = true
		default:
			err = errors.Join(err, fmt.Errorf("%s: fetching %s/%d: %w", p.cfg.Name, topic, partition, fetchErr))
		}
	})
	if err != nil {
		return nil, false, err
	}
	if !transient && pollCtx.Err() != nil && fetches.NumRecords() == 0 {
		// Woken by the loop itself with nothing fetched: that says
		// nothing about whether fetching works again.
		return fetches, false, nil
	}
	if p.failing && !transient {
		p.cfg.Logger.Info(p.cfg.Name + ": fetching works again")
	}
	p.failing = transient
	return fetches, false, nil
}

// DefaultGrace is how long a stopping loop's transaction end may take
// past its context, unless the loop has a reason for another bound.
const DefaultGrace = 30 * time.Second

// Transact runs one transaction on sess: it begins it, calls fn, and ends
// it, committing (with the offsets of what sess polled) when fn reports
// commit and no error, aborting otherwise. grace, when positive, lets the
// end outlive ctx's cancellation by that long, so that a loop being
// stopped ends the transaction it opened; with 0 the end runs under ctx as
// it is (a caller that bounds it with its own deadline).
//
// committed is false after an abort, and after a commit the session turned
// into an abort because the group rebalanced meanwhile (KIP-447); either
// way kgo rewinds the group's partitions to their committed offsets.
// fnErr is fn's error, endErr the begin's or end's.
//
// A transaction that consumed nothing (its records come from timers or
// the caller's own work) commits no offsets, so there is no group
// membership to secure: it is committed even when the group rebalanced
// meanwhile. Callers that must not write for partitions they lost check
// ownership in fn.
func Transact(ctx context.Context, sess *kgo.GroupTransactSession, grace time.Duration, fn func(ctx context.Context) (commit bool, err error)) (committed bool, fnErr, endErr error) {
	if err := sess.Begin(); err != nil {
		return false, nil, fmt.Errorf("begin transaction: %w", err)
	}
	commit, fnErr := fn(ctx)
	try := kgo.TryAbort
	if commit && fnErr == nil {
		try = kgo.TryCommit
	}
	endCtx := ctx
	if grace > 0 {
		var cancel context.CancelFunc
		endCtx, cancel = context.WithTimeout(context.WithoutCancel(ctx), grace)
		defer cancel()
	}
	cl := sess.Client()
	if try == kgo.TryCommit && len(cl.UncommittedOffsets()) == 0 {
		committed, endErr = endWithoutOffsets(endCtx, cl)
	} else {
		committed, endErr = sess.End(endCtx, try)
	}
	if endErr != nil {
		return false, fnErr, fmt.Errorf("end transaction: %w", endErr)
	}
	return committed && try == kgo.TryCommit, fnErr, nil
}

// endWithoutOffsets commits a transaction that consumed nothing (a batch of
// timers or snapshots alone): there are no offsets to commit, so no group
// membership to secure either (GroupTransactSession.End skips its heartbeat
// for the same reason). End itself is no good here: it learns that the broker
// supports KIP-447 only from the response to its TxnOffsetCommit, which it
// does not send without offsets, so it assumes a pre-2.5 broker and holds the
// caller 500ms after every such commit. A commit the broker did not attempt,
// or that it calls abortable or could not confirm, is aborted, as End does.
func endWithoutOffsets(ctx context.Context, cl *kgo.Client) (committed bool, err error) {
	if err := cl.Flush(ctx); err != nil {
		return false, err
	}
	err = cl.EndTransaction(ctx, kgo.TryCommit)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, kerr.OperationNotAttempted), errors.Is(err, kerr.TransactionAbortable), errors.Is(err, kerr.UnknownServerError):
		return false, cl.EndTransaction(ctx, kgo.TryAbort)
	}
	return false, err
}
