package pipe

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/sagapipe/sagapipe/internal/consume"
)

// ErrAborted: the transaction was aborted because the batch function or a
// piped record failed; nothing it piped is visible to read_committed
// consumers and the group's offsets did not move.
var ErrAborted = errors.New("pipe: transaction aborted")

// Tx pipes records inside one transaction; see Piper.Transact. Its methods
// are the Piper's, and every result also counts towards the transaction's
// outcome.
type Tx struct {
	p        *Piper
	mu       sync.Mutex
	pending  sync.WaitGroup
	firstErr error
}

func (tx *Tx) observe(n int) func(Result) {
	tx.pending.Add(n)
	return func(r Result) {
		if r.Err != nil {
			tx.mu.Lock()
			if tx.firstErr == nil {
				tx.firstErr = r.Err
			}
			tx.mu.Unlock()
		}
		tx.pending.Done()
	}
}

// PipeSync is Piper.PipeSync inside the transaction.
func (tx *Tx) PipeSync(ctx context.Context, topic string, m Message) Result {
	return tx.PipeManySync(ctx, topic, m)[0]
}

// PipeManySync is Piper.PipeManySync inside the transaction.
func (tx *Tx) PipeManySync(ctx context.Context, topic string, ms ...Message) []Result {
	observe := tx.observe(len(ms))
	results := make([]Result, len(ms))
	var wg sync.WaitGroup
	wg.Add(len(ms))
	tx.p.pipe(ctx, topic, ms, func(i int, r Result) {
		results[i] = r
		observe(r)
		wg.Done()
	})
	wg.Wait()
	return results
}

// PipeAsync is Piper.PipeAsync inside the transaction.
func (tx *Tx) PipeAsync(ctx context.Context, topic string, m Message, done func(Result)) {
	tx.PipeManyAsync(ctx, topic, []Message{m}, done)
}

// PipeManyAsync is Piper.PipeManyAsync inside the transaction. Transact
// waits for every result before it ends the transaction.
func (tx *Tx) PipeManyAsync(ctx context.Context, topic string, ms []Message, done func(Result)) {
	if done == nil {
		panic("pipe: PipeAsync needs a result callback (use ResultsTo for a channel)")
	}
	observe := tx.observe(len(ms))
	tx.p.pipe(ctx, topic, ms, func(_ int, r Result) {
		done(r)
		observe(r)
	})
}

// Transact runs fn in one Kafka transaction on sess, whose client must be the
// one this Piper produces through. fn pipes the batch it was given (usually
// the records just polled from sess) through tx. When fn returns nil and
// every piped record succeeded, the transaction commits together with the
// offsets of everything sess polled: all of it happens or none of it does.
// Otherwise it aborts, and the error wraps ErrAborted and the first failure.
//
// A transaction that consumed nothing (the records it pipes come from
// timers or other work of the caller's own) commits no offsets, so a
// rebalance cannot make it duplicate anything: it commits even when the
// group rebalanced meanwhile. Callers that must not write for partitions
// they lost check ownership in fn.
//
// After an abort that consumed records, the session rewinds the group's
// partitions to their committed offsets: those records are polled again.
func (p *Piper) Transact(ctx context.Context, sess *kgo.GroupTransactSession, fn func(ctx context.Context, tx *Tx) error) (committed bool, err error) {
	if sess.Client() != p.client {
		return false, errors.New("pipe: Transact: the session's client is not the piper's; build the piper with pipe.New(sess.Client())")
	}
	var began time.Time // when the transaction's end began
	committed, failure, endErr := consume.Transact(ctx, sess, 0, func(ctx context.Context) (bool, error) {
		tx := &Tx{p: p}
		fnErr := fn(ctx, tx)
		tx.pending.Wait()
		tx.mu.Lock()
		defer tx.mu.Unlock()
		began = time.Now()
		return true, errors.Join(fnErr, tx.firstErr)
	})
	if !began.IsZero() {
		outcome := "commit"
		if !committed {
			outcome = "abort"
		}
		p.txDuration.Record(ctx, time.Since(began).Seconds(), metric.WithAttributes(attribute.String("outcome", outcome)))
	}
	switch {
	case endErr != nil:
		return false, errors.Join(fmt.Errorf("pipe: %w", endErr), failure)
	case failure != nil:
		return false, fmt.Errorf("%w: %w", ErrAborted, failure)
	case !committed:
		// A rebalance since Begin: the session aborted to stay exactly-once.
		return false, fmt.Errorf("%w: the group rebalanced during the transaction", ErrAborted)
	}
	return true, nil
}
