package dlq

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/pipe"
	"github.com/sagapipe/sagapipe/schema"
)

// FailurePolicy adapts a Policy to a pipe.StageWorker: a command that fails
// is dead-lettered to the policy's topic, in its origin partition's order,
// and the worker moves on. client must be the worker's, built with
// kgo.RecordPartitioner(pipe.NewPartitioner(nil)).
//
// The stage worker itself does not retry: a failure the handler returns is
// dead-lettered at once, poison or exhausted after its one attempt. Wrap
// the handler in RetryMiddleware (built from the same Policy) to retry it
// with backoff first: what it gives up on reaches the policy as a
// *GaveUpError, and the dead letter carries the class, attempt count and
// failure times it reports.
//
// Of opts, only WithTracerProvider, WithMeterProvider and WithPropagator
// apply; the others concern a Consumer or RetryMiddleware, and WithHooks
// is refused (it would call none).
func FailurePolicy(client *kgo.Client, policy Policy, opts ...Opt) (pipe.FailurePolicy, error) {
	if err := policy.Validate(); err != nil {
		return nil, err
	}
	if client == nil {
		return nil, errors.New("dlq: FailurePolicy: client is nil")
	}
	cfg := defaultConsumerConfig()
	for _, o := range opts {
		o.apply(&cfg)
	}
	if len(cfg.hooks) > 0 {
		// It would call none: a stage worker's dead letters are counted by
		// the meter provider's sagapipe.dlq.* instruments.
		return nil, errors.New("dlq: FailurePolicy: WithHooks does not apply (count dead letters with WithMeterProvider; HookRetry belongs to RetryMiddleware)")
	}
	in, err := newInstruments(cfg.tracer, cfg.meter, cfg.propagator)
	if err != nil {
		return nil, fmt.Errorf("dlq: FailurePolicy: metrics: %w", err)
	}
	if _, ok := client.OptValue(kgo.RecordPartitioner).(*pipe.ExplicitPartitioner); !ok {
		return nil, errors.New("dlq: FailurePolicy: the client's partitioner cannot keep origin partitions together; build it with kgo.RecordPartitioner(pipe.NewPartitioner(nil))")
	}
	policy = policy.withDefaults()
	group, _ := client.OptValue(kgo.ConsumerGroup).(string)
	return func(ctx context.Context, rec *kgo.Record, err error) error {
		if policy.NoDispatch {
			return nil
		}
		now := time.Now()
		f := Failure{Err: err, Class: ClassExhausted, Attempts: 1, FirstFailedAt: now, LastFailedAt: now}
		if gaveUp := (*GaveUpError)(nil); errors.As(err, &gaveUp) {
			f.Class, f.Attempts, f.FirstFailedAt, f.LastFailedAt = gaveUp.Class, gaveUp.Attempts, gaveUp.FirstFailedAt, gaveUp.LastFailedAt
		} else if policy.Classify(err) == DeadLetter {
			f.Class = ClassPoison
		}
		// An error stops the worker: the command is not committed and comes again.
		return dispatch(ctx, client, in, rec, f, policy.TopicFor(rec.Topic), group)
	}, nil
}

// GaveUpError is what a handler wrapped in RetryMiddleware returns for a command it
// stopped retrying: Err is the handler's last error, Class is ClassPoison
// when the policy's classifier says retrying cannot help and
// ClassExhausted when the retries (or the retry budget) ran out, and
// Attempts, FirstFailedAt and LastFailedAt say how it went. FailurePolicy
// dead-letters the command with them.
type GaveUpError struct{ Failure }

func (e *GaveUpError) Error() string {
	return fmt.Sprintf("dlq: gave up after %d attempt(s) (%s): %v", e.Attempts, e.Class, e.Err)
}

// Unwrap returns the handler's last error.
func (e *GaveUpError) Unwrap() error { return e.Err }

// RetryMiddleware returns a stage worker middleware (pipe.Middleware, after
// Watermill's Retry) that applies policy to the handler as a Consumer
// does: a failing command is retried in place after a backoff
// (exponential with full jitter between InitialBackoff and MaxBackoff), up
// to MaxRetries times and within RetryBudgetPerMinute (one budget per
// middleware); an error the policy's classifier calls poison is not
// retried. A command it gives up on is returned as a *GaveUpError, which
// FailurePolicy dead-letters with its real attempt count and class:
//
//	retry, err := dlq.RetryMiddleware[Shipment](policy, dlq.WithHooks(metrics))
//	deadLetters, err := dlq.FailurePolicy(client, policy)
//	w, err := pipe.NewStageWorker(client, codec, retry(handle), pipe.WithFailurePolicy(deadLetters))
//
// The worker waits while its command is retried (with WithConcurrency, the
// other lanes go on, but the batch is answered and committed only once
// every lane is done), so keep MaxRetries and MaxBackoff well inside the
// saga's step timeout, after which the saga resends the command. A worker
// stopped during a backoff stops waiting at once and leaves the command
// uncommitted, for the next owner of its partition. A registry outage
// (schema.ErrRegistryUnavailable) is passed through untouched: the worker
// waits it out itself, without spending retries.
//
// Of opts, WithClock, WithRand, WithHooks (HookRetry; with pipe's
// WithConcurrency they are called concurrently) and WithMeterProvider
// (sagapipe.dlq.retries) apply. One middleware may wrap the handlers of
// several workers and lanes at once; they share its retry budget.
func RetryMiddleware[C any](policy Policy, opts ...Opt) (pipe.Middleware[C], error) {
	r, err := newRetrier(policy, opts)
	if err != nil {
		return nil, err
	}
	return func(next pipe.Handler[C]) pipe.Handler[C] {
		return func(ctx context.Context, cmd C, env schema.Envelope) (pipe.Reply, error) {
			var reply pipe.Reply
			err := r.do(ctx, func() error {
				var err error
				reply, err = next(ctx, cmd, env)
				return err
			})
			return reply, err
		}
	}, nil
}

// retrier is RetryMiddleware without the command's type.
type retrier struct {
	policy Policy
	cfg    consumerConfig
	in     *instruments
	budget retryBudget
}

func newRetrier(policy Policy, opts []Opt) (*retrier, error) {
	cfg := defaultConsumerConfig()
	for _, o := range opts {
		o.apply(&cfg)
	}
	errs := []error{policy.Validate()}
	if cfg.clock == nil || cfg.randN == nil || cfg.propagator == nil {
		errs = append(errs, errors.New("dlq: WithClock, WithRand and WithPropagator take non-nil values"))
	}
	errs = append(errs, checkHooks("RetryMiddleware", cfg.hooks, false, true))
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	in, err := newInstruments(cfg.tracer, cfg.meter, cfg.propagator)
	if err != nil {
		return nil, fmt.Errorf("dlq: RetryMiddleware: metrics: %w", err)
	}
	return &retrier{policy: policy.withDefaults(), cfg: cfg, in: in}, nil
}

// do calls attempt until it succeeds or the policy gives up on it.
func (r *retrier) do(ctx context.Context, attempt func() error) error {
	var firstFailedAt time.Time
	for n := 1; ; n++ {
		err := attempt()
		if err == nil || ctx.Err() != nil || errors.Is(err, schema.ErrRegistryUnavailable) {
			// Stopping, the handler may have given up: the worker leaves
			// the command uncommitted. An outage the worker waits out.
			return err
		}
		now := r.cfg.clock.Now()
		if n == 1 {
			firstFailedAt = now
		}
		f := Failure{Err: err, Class: ClassExhausted, Attempts: n, FirstFailedAt: firstFailedAt, LastFailedAt: now}
		if r.policy.Classify(err) == DeadLetter {
			f.Class = ClassPoison
			return &GaveUpError{f}
		}
		if n > r.policy.MaxRetries || !r.budget.take(r.policy.RetryBudgetPerMinute, now) {
			return &GaveUpError{f}
		}
		backoff := r.policy.Backoff(n, r.cfg.randN)
		rec, ok := pipe.SourceRecord(ctx)
		if !ok {
			rec = &kgo.Record{} // called outside a stage worker
		}
		r.in.retried(ctx, rec)
		for _, h := range r.cfg.hooks {
			if h, ok := h.(HookRetry); ok {
				h.OnRetry(rec, n, backoff, err)
			}
		}
		if err := r.wait(ctx, backoff); err != nil {
			return fmt.Errorf("dlq: stopped while backing off before retry %d: %w", n, errors.Join(err, f.Err))
		}
	}
}

// wait returns once d has passed on the clock, or with ctx's error.
func (r *retrier) wait(ctx context.Context, d time.Duration) error {
	elapsed := make(chan struct{})
	stop := r.cfg.clock.AfterFunc(d, func() { close(elapsed) })
	select {
	case <-elapsed:
		return nil
	case <-ctx.Done():
		stop()
		return ctx.Err()
	}
}
