package outbox

import (
	"context"
	"errors"
	"fmt"
	"regexp"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/pipe"
)

// DefaultTablePrefix starts the names of the store's tables and of its
// notification channel unless WithTablePrefix says otherwise.
const DefaultTablePrefix = "sagapipe_"

var (
	// ErrNoStore: a Handler or Relay was given a nil *Store.
	ErrNoStore = errors.New("outbox: the store is nil; create one with outbox.New")
	// ErrNoReplyTopic: a command to be answered names no reply topic.
	ErrNoReplyTopic = errors.New("outbox: the command has no reply_to header and the store has no WithReplyTopic, so its reply has nowhere to go")
)

// Opt configures a Store.
type Opt interface{ apply(*config) }

type optFunc func(*config)

func (f optFunc) apply(c *config) { f(c) }

type config struct {
	prefix     string
	pipeOpts   []pipe.Opt
	replyTopic string
}

// WithTablePrefix sets what the store's table names start with (default
// DefaultTablePrefix): <prefix>processed and <prefix>outbox, and the
// channel <prefix>outbox the relay listens on. Participants sharing a
// database may share the tables or keep their own. Lower-case letters,
// digits and underscores, starting with a letter.
func WithTablePrefix(prefix string) Opt { return optFunc(func(c *config) { c.prefix = prefix }) }

// WithPiperOptions sets how replies are built, as the stage worker's
// pipe.WithPiperOptions does for the replies it pipes: pipe.WithSource to
// name the participant in ce_source, pipe.WithConsumerGroup, and so on.
func WithPiperOptions(opts ...pipe.Opt) Opt {
	return optFunc(func(c *config) { c.pipeOpts = append(c.pipeOpts, opts...) })
}

// WithReplyTopic sets where replies go when a command carries no reply_to
// header (a saga's commands always do), as pipe.WithReplyTopic does.
func WithReplyTopic(topic string) Opt { return optFunc(func(c *config) { c.replyTopic = topic }) }

var identifier = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)

// Store keeps a participant's idempotency records and its outbox in
// PostgreSQL. It is safe for concurrent use.
type Store struct {
	pool       *pgxpool.Pool
	builder    *pipe.Builder
	replyTopic string
	processed  string // quoted table names
	outbox     string
	channel    string // unquoted: it is passed to pg_notify as a value
}

// New returns a store on pool, creating its tables when they are missing
// (safe to run from several processes at once). Every problem with the
// options is reported at once.
func New(ctx context.Context, pool *pgxpool.Pool, opts ...Opt) (*Store, error) {
	cfg := config{prefix: DefaultTablePrefix}
	for _, o := range opts {
		o.apply(&cfg)
	}
	var errs []error
	if pool == nil {
		errs = append(errs, errors.New("outbox: New: pool is nil; open one with pgxpool.New(ctx, databaseURL)"))
	}
	// 63 is PostgreSQL's identifier limit; "processed" is the longest suffix.
	if !identifier.MatchString(cfg.prefix) || len(cfg.prefix)+len("processed") > 63 {
		errs = append(errs, fmt.Errorf("outbox: WithTablePrefix(%q): want lower-case letters, digits and underscores, starting with a letter, at most %d long", cfg.prefix, 63-len("processed")))
	}
	builder, err := pipe.NewBuilder(cfg.pipeOpts...)
	if err != nil {
		errs = append(errs, fmt.Errorf("outbox: WithPiperOptions: %w", err))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	s := &Store{
		pool: pool, builder: builder, replyTopic: cfg.replyTopic,
		processed: pgx.Identifier{cfg.prefix + "processed"}.Sanitize(),
		outbox:    pgx.Identifier{cfg.prefix + "outbox"}.Sanitize(),
		channel:   cfg.prefix + "outbox",
	}
	if err := s.migrate(ctx, cfg.prefix); err != nil {
		return nil, err
	}
	return s, nil
}

// migrate creates the tables. CREATE ... IF NOT EXISTS races with itself
// in PostgreSQL (two sessions can both find the table missing), so the
// sessions take turns on an advisory lock.
func (s *Store) migrate(ctx context.Context, prefix string) error {
	ddl := fmt.Sprintf(`
CREATE TABLE IF NOT EXISTS %[1]s (
	saga_name       text NOT NULL,
	idempotency_key text NOT NULL,
	command_id      text NOT NULL,
	command_type    text NOT NULL,
	reply_topic     text,
	reply_type      text,
	reply_value     bytea,
	processed_at    timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (saga_name, idempotency_key)
);
CREATE TABLE IF NOT EXISTS %[2]s (
	id            bigserial PRIMARY KEY,
	topic         text NOT NULL,
	key           bytea,
	value         bytea,
	header_keys   text[] NOT NULL,
	header_values bytea[] NOT NULL,
	created_at    timestamptz NOT NULL DEFAULT now(),
	published_at  timestamptz,
	attempts      integer NOT NULL DEFAULT 0,
	last_error    text,
	retry_at      timestamptz
);
CREATE INDEX IF NOT EXISTS %[3]s ON %[2]s (id) WHERE published_at IS NULL;
CREATE INDEX IF NOT EXISTS %[4]s ON %[2]s (published_at) WHERE published_at IS NOT NULL;`,
		s.processed, s.outbox,
		pgx.Identifier{prefix + "outbox_unpublished"}.Sanitize(), pgx.Identifier{prefix + "outbox_published"}.Sanitize())
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtext($1))", prefix+"outbox migration"); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, ddl)
		return err
	})
	if err != nil {
		return fmt.Errorf("outbox: create tables %s and %s: %w", s.processed, s.outbox, err)
	}
	return nil
}

// Enqueue adds rec to the outbox in tx: the relay publishes it once tx
// commits, and never if it rolls back. Handler enqueues replies with it; a
// handler may enqueue other events of its effect (a PaymentCaptured for
// the ledger's consumers, say) the same way.
func (s *Store) Enqueue(ctx context.Context, tx pgx.Tx, rec *kgo.Record) error {
	if rec == nil || rec.Topic == "" {
		return fmt.Errorf("outbox: Enqueue: %w", pipe.ErrNoTopic)
	}
	keys := make([]string, len(rec.Headers))
	values := make([][]byte, len(rec.Headers))
	for i, h := range rec.Headers {
		keys[i], values[i] = h.Key, h.Value
		if values[i] == nil {
			values[i] = []byte{} // a NULL element would not round-trip
		}
	}
	// The notification is sent when tx commits; a relay that misses it
	// finds the row on its next poll.
	_, err := tx.Exec(ctx, fmt.Sprintf(`WITH row AS (
	INSERT INTO %s (topic, key, value, header_keys, header_values) VALUES ($1, $2, $3, $4, $5) RETURNING id
) SELECT pg_notify($6, '') FROM row`, s.outbox), rec.Topic, rec.Key, rec.Value, keys, values, s.channel)
	if err != nil {
		return fmt.Errorf("outbox: enqueue a record for %s: %w", rec.Topic, err)
	}
	return nil
}
