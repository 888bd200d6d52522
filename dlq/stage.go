package dlq

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/pipe"
)

// FailurePolicy adapts a Policy to a pipe.StageWorker: a command that fails
// is dead-lettered at once (poison, or exhausted after its one attempt; the
// stage worker does not retry) to the policy's topic, in its origin
// partition's order, and the worker moves on. client must be the worker's,
// built with kgo.RecordPartitioner(pipe.NewPartitioner(nil)). For retries
// with backoff, run the handler in a Consumer instead.
//
// Of opts, only WithTracerProvider, WithMeterProvider and WithPropagator
// apply; the others concern a Consumer.
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
		class := ClassExhausted
		if policy.Classify(err) == DeadLetter {
			class = ClassPoison
		}
		now := time.Now()
		f := Failure{Err: err, Class: class, Attempts: 1, FirstFailedAt: now, LastFailedAt: now}
		// An error stops the worker: the command is not committed and comes again.
		return dispatch(ctx, client, in, rec, f, policy.TopicFor(rec.Topic), group)
	}, nil
}
