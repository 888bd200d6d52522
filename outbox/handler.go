package outbox

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/pipe"
	"github.com/sagapipe/sagapipe/schema"
)

// TxHandler handles one decoded command inside the database transaction
// that also records it as processed and enqueues its reply: apply the
// effect with tx, and return the reply (or pipe.NoReply). Return an error
// and nothing of it is kept: neither the effect, nor the record that the
// command was handled, nor the reply. It is not called again for a command
// (an idempotency key) that was handled before.
type TxHandler[C any] func(ctx context.Context, tx pgx.Tx, cmd C, env schema.Envelope) (pipe.Reply, error)

// Handler returns the pipe.Handler that runs h in a transaction of store,
// for a stage worker (pipe.NewStageWorker) or a route (pipe.Route,
// saga.Route). The transaction records the command's idempotency key
// (env.IdempotencyKey, or env.ID when the command has none) with the reply,
// and enqueues the reply for the relay: the stage worker is answered
// pipe.NoReply and sends nothing itself.
//
// A command whose key was recorded before (a resend, or a redelivery after
// a crash) does not run h: the reply recorded with it is enqueued again,
// answering this command (its causation_id is this command's ce_id).
func Handler[C any](store *Store, h TxHandler[C]) pipe.Handler[C] {
	return func(ctx context.Context, cmd C, env schema.Envelope) (pipe.Reply, error) {
		switch {
		case store == nil:
			return pipe.NoReply, ErrNoStore
		case h == nil:
			return pipe.NoReply, errors.New("outbox: Handler: the handler is nil")
		}
		return pipe.NoReply, store.handle(ctx, env, func(ctx context.Context, tx pgx.Tx) (pipe.Reply, error) {
			return h(ctx, tx, cmd, env)
		})
	}
}

// handle runs h for the command of env unless its key was processed
// before, and enqueues the reply, in one transaction.
func (s *Store) handle(ctx context.Context, env schema.Envelope, h func(context.Context, pgx.Tx) (pipe.Reply, error)) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("outbox: begin the transaction of command %s: %w", env.ID, err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) // a no-op after Commit
	if err := s.apply(ctx, tx, env, h); err != nil {
		return err
	}
	// Deferred constraints are checked here: a failing commit keeps
	// nothing either.
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("outbox: commit command %s: %w", env.ID, err)
	}
	return nil
}

// apply is handle's work in tx.
func (s *Store) apply(ctx context.Context, tx pgx.Tx, env schema.Envelope, h func(context.Context, pgx.Tx) (pipe.Reply, error)) error {
	key := cmp.Or(env.IdempotencyKey, env.ID)
	// Claiming the key first makes a second handler of the same
	// command (another instance, during a rebalance) wait here until
	// the first one commits, and then find the key taken.
	claimed, err := tx.Exec(ctx, fmt.Sprintf(`INSERT INTO %s (saga_name, idempotency_key, command_id, command_type)
VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING`, s.processed), env.SagaName, key, env.ID, env.Type)
	if err != nil {
		return fmt.Errorf("outbox: record command %s as processed: %w", env.ID, err)
	}
	if claimed.RowsAffected() == 0 {
		return s.answerAgain(ctx, tx, env, key)
	}
	reply, err := h(ctx, tx)
	if err != nil {
		return err // the stage worker names the command
	}
	if reply.IsNoReply() {
		return nil
	}
	topic := cmp.Or(env.ReplyTo, s.replyTopic)
	if topic == "" {
		return fmt.Errorf("%w (command %s of type %s): send it with a %s header, or give the store outbox.WithReplyTopic",
			ErrNoReplyTopic, env.ID, env.Type, schema.HeaderReplyTo)
	}
	value, err := reply.Encode(ctx, topic)
	if err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, fmt.Sprintf(`UPDATE %s SET reply_topic = $3, reply_type = $4, reply_value = $5
WHERE saga_name = $1 AND idempotency_key = $2`, s.processed), env.SagaName, key, topic, reply.Type, value); err != nil {
		return fmt.Errorf("outbox: record the reply to command %s: %w", env.ID, err)
	}
	return s.enqueueReply(ctx, tx, env, topic, reply.Type, value)
}

// answerAgain enqueues the reply recorded for key, answering the command
// of env: a resend must be answered, or its saga waits on.
func (s *Store) answerAgain(ctx context.Context, tx pgx.Tx, env schema.Envelope, key string) error {
	var topic, typ *string
	var value []byte
	err := tx.QueryRow(ctx, fmt.Sprintf(`SELECT reply_topic, reply_type, reply_value FROM %s
WHERE saga_name = $1 AND idempotency_key = $2`, s.processed), env.SagaName, key).Scan(&topic, &typ, &value)
	if err != nil {
		return fmt.Errorf("outbox: read the reply recorded for %s: %w", key, err)
	}
	if typ == nil {
		return nil // it was answered with nothing
	}
	// The value stays the one first encoded: its schema ID decodes it on
	// any topic.
	return s.enqueueReply(ctx, tx, env, cmp.Or(env.ReplyTo, s.replyTopic, *topic), *typ, value)
}

// enqueueReply enqueues the reply to the command of env, built as a stage
// worker builds the reply it pipes: the command's envelope without
// reply_to and idempotency_key, a new ce_id and ce_time, causation_id the
// command's ce_id, the trace context of ctx (the command's process span).
func (s *Store) enqueueReply(ctx context.Context, tx pgx.Tx, env schema.Envelope, topic, typ string, value []byte) error {
	src, consumed := pipe.SourceRecord(ctx)
	if !consumed {
		// Not in a stage worker's handler: the reply is built from the
		// envelope, keyed by the saga as a saga's commands are.
		answered := env
		answered.ReplyTo, answered.IdempotencyKey = "", ""
		src = &kgo.Record{Headers: answered.Apply(nil)}
		if key := cmp.Or(env.SagaID, env.CorrelationID); key != "" {
			src.Key = []byte(key)
		}
	}
	rec, err := s.builder.Build(ctx, topic, pipe.Message{Source: src, Value: value, Type: typ})
	if err != nil {
		return fmt.Errorf("outbox: build the reply to command %s: %w", env.ID, err)
	}
	if !consumed {
		// Where the command was consumed from is unknown: the provenance
		// headers would be made up.
		rec.Headers = slices.DeleteFunc(rec.Headers, func(h kgo.RecordHeader) bool {
			switch h.Key {
			case pipe.HeaderOriginalTopic, pipe.HeaderOriginalPartition, pipe.HeaderOriginalOffset, pipe.HeaderOriginalConsumerGroup:
				return true
			}
			return false
		})
	}
	return s.Enqueue(ctx, tx, rec)
}
