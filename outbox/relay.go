package outbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagapipe/sagapipe/internal/kafkaerr"
	"github.com/sagapipe/sagapipe/internal/telemetry"
)

// Defaults of the relay's options.
const (
	DefaultBatchSize      = 100
	DefaultPollInterval   = time.Second
	DefaultRetention      = time.Hour
	DefaultPublishTimeout = 30 * time.Second
	DefaultMinBackoff     = 100 * time.Millisecond
	DefaultMaxBackoff     = 30 * time.Second
)

// RelayOpt configures a Relay.
type RelayOpt interface{ applyRelay(*relayConfig) }

type relayOptFunc func(*relayConfig)

func (f relayOptFunc) applyRelay(c *relayConfig) { f(c) }

type relayConfig struct {
	batchSize      int
	poll           time.Duration
	retention      time.Duration
	publishTimeout time.Duration
	minBackoff     time.Duration
	maxBackoff     time.Duration
	logger         *slog.Logger
	tracer         trace.TracerProvider
	propagator     propagation.TextMapPropagator
}

// WithBatchSize sets how many rows the relay takes, publishes and marks in
// one database transaction (default DefaultBatchSize).
func WithBatchSize(n int) RelayOpt { return relayOptFunc(func(c *relayConfig) { c.batchSize = n }) }

// WithPollInterval sets how often the relay looks for rows when no
// notification wakes it (default DefaultPollInterval): it finds the rows
// of a notification it missed (its connection was down) and rows whose
// retry has come due.
func WithPollInterval(d time.Duration) RelayOpt {
	return relayOptFunc(func(c *relayConfig) { c.poll = d })
}

// WithRetention sets how long published rows are kept, for inspection,
// before the relay deletes them (default DefaultRetention; 0 deletes them
// at the next poll).
func WithRetention(d time.Duration) RelayOpt {
	return relayOptFunc(func(c *relayConfig) { c.retention = d })
}

// WithPublishTimeout bounds how long one batch waits for the broker
// (default DefaultPublishTimeout): its rows stay locked meanwhile. Records
// kgo has sent already are waited for regardless: an idempotent producer
// cannot forget them.
func WithPublishTimeout(d time.Duration) RelayOpt {
	return relayOptFunc(func(c *relayConfig) { c.publishTimeout = d })
}

// WithBackoff sets the exponential backoff, from minimum to maximum, after
// a failed batch and between the attempts to publish a row that failed
// (default DefaultMinBackoff to DefaultMaxBackoff).
func WithBackoff(minimum, maximum time.Duration) RelayOpt {
	return relayOptFunc(func(c *relayConfig) { c.minBackoff, c.maxBackoff = minimum, maximum })
}

// WithLogger sets where the relay reports what it rides through and what
// it cannot publish (default slog.Default()).
func WithLogger(l *slog.Logger) RelayOpt { return relayOptFunc(func(c *relayConfig) { c.logger = l }) }

// WithTracerProvider sets where the "<topic> publish" span of every record
// goes (default otel's global provider), a child of the span the record
// was built in.
func WithTracerProvider(tp trace.TracerProvider) RelayOpt {
	return relayOptFunc(func(c *relayConfig) { c.tracer = tp })
}

// WithPropagator sets how trace context is read from and written to the
// records' headers (default W3C TraceContext and Baggage, as pipe's).
func WithPropagator(p propagation.TextMapPropagator) RelayOpt {
	return relayOptFunc(func(c *relayConfig) { c.propagator = p })
}

// Relay publishes the outbox's rows to Kafka, in the order they were
// enqueued, and marks them published. Delivery is at-least-once: a relay
// stopped between a publish and its mark publishes the row again (with the
// same ce_id), which is what the saga's inbox expects of replies.
//
// Several relays on one store share the work without publishing a row
// twice (each locks the rows it takes, SKIP LOCKED); rows taken by
// different relays keep no order between them.
type Relay struct {
	store   *Store
	client  *kgo.Client
	cfg     relayConfig
	tracer  trace.Tracer
	running atomic.Bool
}

// NewRelay returns a relay publishing store's outbox with client, an
// idempotent producer (kgo's default: kgo's retries then cannot duplicate
// a record) outside transactions. Set kgo.ProducerLinger(0) on it: a saga
// waits for each reply. Every problem is reported at once.
//
// A running relay takes one connection out of the store's pool for
// LISTEN (the pool opens another in its place) and uses one more while it
// publishes a batch.
func NewRelay(store *Store, client *kgo.Client, opts ...RelayOpt) (*Relay, error) {
	cfg := relayConfig{
		batchSize: DefaultBatchSize, poll: DefaultPollInterval, retention: DefaultRetention,
		publishTimeout: DefaultPublishTimeout, minBackoff: DefaultMinBackoff, maxBackoff: DefaultMaxBackoff,
		logger: slog.Default(), propagator: telemetry.Propagator(),
	}
	for _, o := range opts {
		o.applyRelay(&cfg)
	}
	var errs []error
	if store == nil {
		errs = append(errs, fmt.Errorf("outbox: NewRelay: %w", ErrNoStore))
	}
	if client == nil {
		errs = append(errs, errors.New("outbox: NewRelay: client is nil"))
	} else {
		if id, _ := client.OptValue(kgo.TransactionalID).(string); id != "" {
			errs = append(errs, fmt.Errorf("outbox: NewRelay: the client is transactional (kgo.TransactionalID(%q)) and the relay publishes outside transactions; give it a client without TransactionalID", id))
		}
		if off, _ := client.OptValue(kgo.DisableIdempotentWrite).(bool); off {
			errs = append(errs, errors.New("outbox: NewRelay: the client is not an idempotent producer, so its retries could publish a row twice; remove kgo.DisableIdempotentWrite()"))
		}
	}
	if cfg.batchSize < 1 {
		errs = append(errs, fmt.Errorf("outbox: WithBatchSize(%d): want 1 or more", cfg.batchSize))
	}
	if cfg.poll <= 0 {
		errs = append(errs, fmt.Errorf("outbox: WithPollInterval(%s): want more than 0", cfg.poll))
	}
	if cfg.retention < 0 {
		errs = append(errs, fmt.Errorf("outbox: WithRetention(%s): want 0 or more", cfg.retention))
	}
	if cfg.publishTimeout <= 0 {
		errs = append(errs, fmt.Errorf("outbox: WithPublishTimeout(%s): want more than 0", cfg.publishTimeout))
	}
	if cfg.minBackoff <= 0 || cfg.maxBackoff < cfg.minBackoff {
		errs = append(errs, fmt.Errorf("outbox: WithBackoff(%s, %s): want 0 < minimum <= maximum", cfg.minBackoff, cfg.maxBackoff))
	}
	if cfg.logger == nil {
		errs = append(errs, errors.New("outbox: WithLogger: logger is nil"))
	}
	if cfg.propagator == nil {
		errs = append(errs, errors.New("outbox: WithPropagator: propagator is nil"))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return &Relay{store: store, client: client, cfg: cfg, tracer: telemetry.Tracer(cfg.tracer)}, nil
}

// Run publishes rows until ctx is cancelled, then returns nil. It wakes on
// the notification of every committed row (LISTEN), and polls besides.
// Failures of the database or of Kafka are logged and retried with
// backoff: a row stays in the outbox until it is published, however long
// that takes. The client stays open; its owner closes it.
func (r *Relay) Run(ctx context.Context) error {
	if !r.running.CompareAndSwap(false, true) {
		return errors.New("outbox: Relay.Run is running already; a second relay needs a Relay of its own")
	}
	defer r.running.Store(false)
	var listener *pgx.Conn
	defer func() {
		if listener != nil {
			cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			listener.Close(cctx) // closing: nothing to do about it
		}
	}()
	failures := 0
	var pruned time.Time
	for {
		if listener == nil {
			listener = r.listen(ctx)
		}
		taken, retryIn, err := r.publishBatch(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			failures++
			wait := r.backoff(failures)
			r.cfg.logger.Warn("outbox relay: a batch failed; retrying", "table", r.store.outbox, "retry_in", wait, "error", err)
			if !sleep(ctx, wait) {
				return nil
			}
			continue
		}
		failures = 0
		if taken == r.cfg.batchSize {
			continue // there may be more
		}
		if time.Since(pruned) >= min(r.cfg.retention, time.Minute) {
			if err := r.prune(ctx); err != nil && ctx.Err() == nil {
				r.cfg.logger.Warn("outbox relay: deleting published rows failed; retrying later", "table", r.store.outbox, "error", err)
			}
			pruned = time.Now()
		}
		if !r.wait(ctx, &listener, retryIn) {
			return nil
		}
	}
}

// listen returns a connection listening on the store's channel, or nil
// when there is none to be had now (the relay polls meanwhile).
func (r *Relay) listen(ctx context.Context) *pgx.Conn {
	pooled, err := r.store.pool.Acquire(ctx)
	if err != nil {
		if ctx.Err() == nil {
			r.cfg.logger.Warn("outbox relay: no connection to listen on; polling", "error", err)
		}
		return nil
	}
	// Taken out of the pool: a listening connection must not serve others.
	conn := pooled.Hijack()
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{r.store.channel}.Sanitize()); err != nil {
		conn.Close(context.Background()) // it failed already
		if ctx.Err() == nil {
			r.cfg.logger.Warn("outbox relay: LISTEN failed; polling", "channel", r.store.channel, "error", err)
		}
		return nil
	}
	return conn
}

// wait waits for a notification, or the poll interval, or retryIn when
// that is sooner and not 0; false means ctx ended.
func (r *Relay) wait(ctx context.Context, listener **pgx.Conn, retryIn time.Duration) bool {
	d := r.cfg.poll
	if retryIn > 0 {
		d = min(d, retryIn)
	}
	if *listener == nil {
		return sleep(ctx, d)
	}
	conn := *listener
	wctx, cancel := context.WithTimeout(ctx, d)
	_, err := conn.WaitForNotification(wctx)
	cancel()
	if ctx.Err() != nil {
		return false
	}
	if err != nil && !errors.Is(err, context.DeadlineExceeded) {
		r.cfg.logger.Warn("outbox relay: lost the listening connection; reconnecting", "error", err)
		conn.Close(context.Background()) // it is broken already
		*listener = nil
		return true
	}
	// One batch answers every notification received so far.
	done, cancelDone := context.WithCancel(ctx)
	cancelDone()
	for {
		if _, err := conn.WaitForNotification(done); err != nil {
			return true
		}
	}
}

// outboxRow is a row taken for publishing.
type outboxRow struct {
	id       int64
	attempts int
	rec      *kgo.Record
	span     trace.Span
}

// publishBatch publishes the next batch of rows that are due and marks
// them: published, or failed with the time of their next attempt. It
// returns how many rows it took, and when the first that failed is due
// again (0 when none failed).
func (r *Relay) publishBatch(ctx context.Context) (taken int, retryIn time.Duration, err error) {
	tx, err := r.store.pool.Begin(ctx)
	if err != nil {
		return 0, 0, fmt.Errorf("begin: %w", err)
	}
	// Whatever was published is marked even when ctx ends meanwhile: it
	// saves publishing it again.
	mctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	defer tx.Rollback(mctx) // a no-op after Commit
	rows, err := r.take(ctx, tx)
	if err != nil || len(rows) == 0 {
		return 0, 0, err
	}
	pctx, cancelPublish := context.WithTimeout(ctx, r.cfg.publishTimeout)
	defer cancelPublish()
	recs := make([]*kgo.Record, len(rows))
	for i := range rows {
		parent := r.cfg.propagator.Extract(context.Background(), telemetry.Headers{Record: rows[i].rec})
		sctx, span := telemetry.StartPublish(parent, r.tracer, r.cfg.propagator, rows[i].rec)
		rows[i].rec.Context, rows[i].span = sctx, span
		recs[i] = rows[i].rec
	}
	results := r.client.ProduceSync(pctx, recs...)
	var published, failed []int64
	var reasons []string
	var delays []float64
	for i, res := range results {
		row := rows[i]
		telemetry.EndPublish(row.span, res.Record, res.Err)
		if res.Err == nil {
			published = append(published, row.id)
			continue
		}
		if ctx.Err() != nil {
			continue // stopping: no failure of the row's; it is taken again at once next time
		}
		delay := r.backoff(row.attempts + 1)
		if retryIn == 0 || delay < retryIn {
			retryIn = delay
		}
		failed, reasons, delays = append(failed, row.id), append(reasons, res.Err.Error()), append(delays, delay.Seconds())
		if kafkaerr.Transient(res.Err) || errors.Is(res.Err, context.DeadlineExceeded) {
			r.cfg.logger.Warn("outbox relay: publishing a row failed; it is retried", "table", r.store.outbox, "id", row.id,
				"topic", row.rec.Topic, "attempts", row.attempts+1, "retry_in", delay, "error", res.Err)
		} else {
			r.cfg.logger.Error("outbox relay: the broker refuses a row; it stays in the outbox and is retried with backoff until it is published (fix the cause, or delete the row to give it up)",
				"table", r.store.outbox, "id", row.id, "topic", row.rec.Topic, "attempts", row.attempts+1, "retry_in", delay, "error", res.Err)
		}
	}
	if len(published) > 0 {
		if _, err := tx.Exec(mctx, fmt.Sprintf(`UPDATE %s SET published_at = now(), attempts = attempts + 1, last_error = NULL, retry_at = NULL
WHERE id = ANY($1)`, r.store.outbox), published); err != nil {
			return len(rows), 0, fmt.Errorf("mark %d rows published: %w", len(published), err)
		}
	}
	if len(failed) > 0 {
		if _, err := tx.Exec(mctx, fmt.Sprintf(`UPDATE %s AS o SET attempts = o.attempts + 1, last_error = f.reason,
	retry_at = now() + f.delay * interval '1 second'
FROM unnest($1::bigint[], $2::text[], $3::float8[]) AS f(id, reason, delay) WHERE o.id = f.id`, r.store.outbox), failed, reasons, delays); err != nil {
			return len(rows), 0, fmt.Errorf("record %d failed publishes: %w", len(failed), err)
		}
	}
	if err := tx.Commit(mctx); err != nil {
		return len(rows), 0, fmt.Errorf("commit: %w", err)
	}
	return len(rows), retryIn, nil
}

// take locks the next rows that are due, in the order they were enqueued,
// skipping those another relay holds.
func (r *Relay) take(ctx context.Context, tx pgx.Tx) ([]outboxRow, error) {
	rows, err := tx.Query(ctx, fmt.Sprintf(`SELECT id, attempts, topic, key, value, header_keys, header_values FROM %s
WHERE published_at IS NULL AND (retry_at IS NULL OR retry_at <= now())
ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED`, r.store.outbox), r.cfg.batchSize)
	if err != nil {
		return nil, fmt.Errorf("select rows to publish: %w", err)
	}
	var out []outboxRow
	for rows.Next() {
		var (
			row    outboxRow
			rec    kgo.Record
			keys   []string
			values [][]byte
		)
		if err := rows.Scan(&row.id, &row.attempts, &rec.Topic, &rec.Key, &rec.Value, &keys, &values); err != nil {
			rows.Close()
			return nil, fmt.Errorf("read a row to publish: %w", err)
		}
		rec.Headers = make([]kgo.RecordHeader, len(keys))
		for i := range keys {
			rec.Headers[i] = kgo.RecordHeader{Key: keys[i], Value: values[i]}
		}
		row.rec = &rec
		out = append(out, row)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("select rows to publish: %w", err)
	}
	return out, nil
}

// prune deletes rows published longer ago than the retention, a bounded
// number at a time.
func (r *Relay) prune(ctx context.Context) error {
	_, err := r.store.pool.Exec(ctx, fmt.Sprintf(`DELETE FROM %[1]s WHERE id IN (
	SELECT id FROM %[1]s WHERE published_at < now() - $1 * interval '1 second' LIMIT 10000)`, r.store.outbox),
		r.cfg.retention.Seconds())
	return err
}

// backoff is the wait before attempt n+1 after n failures: exponential
// from the minimum, capped at the maximum.
func (r *Relay) backoff(failures int) time.Duration {
	d := float64(r.cfg.minBackoff) * math.Pow(2, float64(max(failures-1, 0)))
	return time.Duration(min(d, float64(r.cfg.maxBackoff)))
}

// sleep waits for d; false means ctx ended first.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
