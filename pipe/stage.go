package pipe

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagapipe/sagapipe/internal/consume"
	"github.com/sagapipe/sagapipe/internal/kafkaerr"
	"github.com/sagapipe/sagapipe/internal/telemetry"
	"github.com/sagapipe/sagapipe/schema"
)

// Reply is a participant's answer to a command: an event of type Type,
// encoded when its target topic is known.
type Reply struct {
	Type   string
	encode func(ctx context.Context, topic string) ([]byte, error)
}

// NewReply returns a Reply carrying event, encoded with codec as eventType.
func NewReply[T any](codec *schema.Codec[T], eventType string, event T) Reply {
	return Reply{Type: eventType, encode: func(ctx context.Context, topic string) ([]byte, error) {
		return codec.Encode(ctx, topic, &event)
	}}
}

// RawReply returns a Reply carrying value as it is (already encoded, or
// deliberately not: fault injection answers with bytes that do not decode).
func RawReply(eventType string, value []byte) Reply {
	return Reply{Type: eventType, encode: func(context.Context, string) ([]byte, error) { return value, nil }}
}

// NoReply is the Reply of a command that is answered with nothing.
var NoReply = Reply{}

// Handler handles one decoded command of a stage. Delivery is at-least-once
// and a saga resends a command that is not answered in time, each resend
// with a new env.ID: make the effect idempotent, keyed by
// env.IdempotencyKey ("<saga id>/<step>/do", the same on every resend of
// one command; "/undo" for its compensation), and answer a command whose
// effect was applied before with the same reply.
type Handler[C any] func(ctx context.Context, cmd C, env schema.Envelope) (Reply, error)

// FailurePolicy decides what becomes of a command that could not be handled:
// its envelope or payload did not decode, the handler failed, or the reply
// could not be piped. Returning nil means the failure is dealt with (for
// example dead-lettered) and the worker moves on; returning an error stops
// the worker, and the command, whose offset was not committed, comes again.
type FailurePolicy func(ctx context.Context, rec *kgo.Record, err error) error

// StopOnFailure is the default FailurePolicy: the worker stops with the
// error, losing nothing, until a policy that can set records aside (dlq/) is
// configured.
func StopOnFailure(_ context.Context, rec *kgo.Record, err error) error {
	return fmt.Errorf("pipe: stage worker stopped at %s/%d@%d (configure WithFailurePolicy, e.g. a dead-letter policy, to move past failing commands): %w",
		rec.Topic, rec.Partition, rec.Offset, err)
}

// readCommitted is what client.OptValue(kgo.FetchIsolationLevel) reports
// for a client built with kgo.ReadCommitted(): the isolation level as the
// Fetch request carries it (KIP-98: 0 read_uncommitted, 1 read_committed);
// kgo does not export the value of its IsolationLevel.
const readCommitted int8 = 1

// StageOpt configures a StageWorker.
type StageOpt interface{ applyStage(*stageConfig) }

type stageOptFunc func(*stageConfig)

func (f stageOptFunc) applyStage(c *stageConfig) { f(c) }

type stageConfig struct {
	replyTopic  string
	onFailure   FailurePolicy
	store       IdempotencyStore
	pipeOpts    []Opt
	concurrency int
	logger      *slog.Logger
}

// WithLogger sets where the worker logs what it rides through (default
// slog.Default()).
func WithLogger(l *slog.Logger) StageOpt {
	return stageOptFunc(func(c *stageConfig) { c.logger = l })
}

// WithConcurrency lets the handler run for up to n commands of a polled
// batch at once (default 1: one after the other). Commands with the same
// key (one saga's) are still handled one at a time, in order; replies are
// piped and offsets committed as with 1. For participants whose handling
// waits on something slow (a remote API): with 1, a batch of commands
// waits for each in turn, and the saga's step timeouts fire while its
// command waits in the queue. The handler and the idempotency store must
// be safe for concurrent use. When the failure policy stops the worker at
// a command, later commands of the batch may have been handled already;
// they are not committed and come again.
func WithConcurrency(n int) StageOpt {
	return stageOptFunc(func(c *stageConfig) { c.concurrency = n })
}

// WithReplyTopic sets where replies go when a command carries no reply_to header.
func WithReplyTopic(topic string) StageOpt {
	return stageOptFunc(func(c *stageConfig) { c.replyTopic = topic })
}

// WithFailurePolicy sets what happens to commands that fail (default StopOnFailure).
func WithFailurePolicy(p FailurePolicy) StageOpt {
	return stageOptFunc(func(c *stageConfig) { c.onFailure = p })
}

// WithIdempotencyStore sets the store of handled command IDs (default a
// MemoryStore of DefaultIdempotencyCapacity).
func WithIdempotencyStore(s IdempotencyStore) StageOpt {
	return stageOptFunc(func(c *stageConfig) { c.store = s })
}

// WithPiperOptions passes options to the piper that sends replies (for
// example WithSource to name the participant in ce_source).
func WithPiperOptions(opts ...Opt) StageOpt {
	return stageOptFunc(func(c *stageConfig) { c.pipeOpts = append(c.pipeOpts, opts...) })
}

// StageWorker runs one participant stage: it consumes a command topic in a
// consumer group, decodes each command, calls the handler and pipes the
// reply to the topic named in the command's reply_to header. Offsets are
// committed after the replies of a polled batch are acknowledged: delivery is
// at-least-once, and a command whose ce_id the idempotency store has seen is
// skipped.
type StageWorker[C any] struct {
	client  *kgo.Client
	decode  func(ctx context.Context, value []byte) (C, error)
	handler Handler[C]
	cfg     stageConfig
	piper   *Piper
}

// NewStageWorker returns a worker consuming with client, which must be in a
// consumer group (kgo.ConsumerGroup), consume the command topic
// (kgo.ConsumeTopics), not auto-commit (kgo.DisableAutoCommit: the worker
// commits what it has answered) and read committed records
// (kgo.FetchIsolationLevel(kgo.ReadCommitted()): commands come out of the
// orchestrator's transactions). Every problem is reported at once.
//
// A saga waits for each reply, so kgo.ProducerLinger(0) is the setting
// for the client: kgo's default 10ms linger adds 10ms to every step.
func NewStageWorker[C any](client *kgo.Client, codec *schema.Codec[C], handler Handler[C], opts ...StageOpt) (*StageWorker[C], error) {
	if codec == nil {
		return newStageWorker[C](client, nil, handler, []error{errors.New("pipe: NewStageWorker: codec is nil")}, opts...)
	}
	return newStageWorker(client, codec.Decode, handler, nil, opts...)
}

// newStageWorker is NewStageWorker decoding with decode; errs are problems
// found already, reported with the others.
func newStageWorker[C any](client *kgo.Client, decode func(context.Context, []byte) (C, error), handler Handler[C], errs []error, opts ...StageOpt) (*StageWorker[C], error) {
	cfg := stageConfig{onFailure: StopOnFailure, concurrency: 1, logger: slog.Default()}
	for _, o := range opts {
		o.applyStage(&cfg)
	}
	if client == nil {
		errs = append(errs, errors.New("pipe: NewStageWorker: client is nil"))
	} else {
		if g, _ := client.OptValue(kgo.ConsumerGroup).(string); g == "" {
			errs = append(errs, errors.New("pipe: NewStageWorker: the client is in no consumer group; add kgo.ConsumerGroup(...)"))
		}
		if off, _ := client.OptValue(kgo.DisableAutoCommit).(bool); !off {
			errs = append(errs, errors.New("pipe: NewStageWorker: the client auto-commits, which could commit commands before they are answered; add kgo.DisableAutoCommit()"))
		}
		if level, _ := client.OptValue(kgo.FetchIsolationLevel).(int8); level != readCommitted {
			errs = append(errs, errors.New("pipe: NewStageWorker: the client reads uncommitted records, so it could act on a command whose transaction is aborted; add kgo.FetchIsolationLevel(kgo.ReadCommitted())"))
		}
	}
	if handler == nil {
		errs = append(errs, errors.New("pipe: NewStageWorker: handler is nil"))
	}
	if cfg.onFailure == nil {
		errs = append(errs, errors.New("pipe: WithFailurePolicy: policy is nil"))
	}
	if cfg.concurrency < 1 {
		errs = append(errs, fmt.Errorf("pipe: WithConcurrency(%d): want 1 or more", cfg.concurrency))
	}
	if cfg.store == nil {
		cfg.store, _ = NewMemoryStore(0) // the default capacity is valid
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	piper, err := New(client, cfg.pipeOpts...)
	if err != nil {
		return nil, err
	}
	return &StageWorker[C]{client: client, decode: decode, handler: handler, cfg: cfg, piper: piper}, nil
}

// Run consumes and handles commands until ctx is cancelled (it then commits
// what it has answered and returns nil) or the failure policy returns an
// error (Run returns it). The client stays open; its owner closes it.
func (w *StageWorker[C]) Run(ctx context.Context) error {
	defer w.piper.Close(context.Background()) // Run waited for every reply already
	poller := consume.NewPoller(consume.Config{Name: "pipe: stage worker", Poll: w.client.PollFetches, Logger: w.cfg.logger})
	for {
		fetches, stopped, err := poller.Poll(ctx, consume.NoWake)
		if stopped {
			return nil
		}
		if err != nil {
			return err
		}
		answered, stopErr := w.handleBatch(ctx, fetches.Records())
		if err := w.commit(ctx, answered); err != nil {
			// The batch was fetched, so these settings reach the
			// brokers: a connection cut at its first read is an outage.
			if stopErr != nil || !kafkaerr.Reconnectable(err) {
				return errors.Join(stopErr, err)
			}
			// Answered but not committed (the broker is away): they may
			// come again after a rebalance, and are answered again; the
			// next commit covers them otherwise.
			w.cfg.logger.Warn("pipe: stage worker: committing offsets failed; the next commit covers them", "error", err)
		}
		if stopErr != nil {
			return stopErr
		}
	}
}

// answer is one command's way through a batch.
type answer struct {
	rec   *kgo.Record
	id    string // ce_id, marked in the idempotency store once answered
	topic string // reply topic; empty when there is nothing to send
	msg   Message
	err   error
	span  trace.Span // "<topic> process", ended once the command is finished
}

// replyGrace bounds how long a stopping worker still spends sending the
// replies of the commands it handled.
const replyGrace = 30 * time.Second

// handleBatch handles a polled batch: every command is decoded and handled
// in order, then all replies are piped together (one round trip, not one per
// command). It returns the records that are finished, in order up to the
// first failure the policy would not move past, and that failure.
func (w *StageWorker[C]) handleBatch(ctx context.Context, recs []*kgo.Record) ([]*kgo.Record, error) {
	answers := make([]answer, 0, len(recs))
	var stopErr error
	// settle takes a prepared command in order: it tells whether the batch
	// stops there.
	settle := func(a answer) bool {
		switch {
		case a.span == nil: // not handled: the worker is stopping
			return true
		case a.err != nil && ctx.Err() != nil:
			// Stopping: the handler gave up on the command; it is left
			// uncommitted, for whoever handles the partition next.
			telemetry.Fail(a.span, a.err)
			a.span.End()
			return true
		case a.err != nil:
			telemetry.Fail(a.span, a.err)
			// In order, before later commands are answered.
			stopErr = w.cfg.onFailure(trace.ContextWithSpan(ctx, a.span), a.rec, a.err)
			a.span.End()
			if stopErr != nil {
				return true
			}
			a.err, a.id, a.topic, a.span = nil, "", "", nil
		}
		answers = append(answers, a)
		return false
	}
	inBatch := &claims{ids: map[string]bool{}} // not marked in the store until answered
	if lanes := min(w.cfg.concurrency, len(recs)); lanes <= 1 {
		for _, rec := range recs {
			if ctx.Err() != nil || settle(w.prepareRetrying(ctx, rec, inBatch)) {
				break
			}
		}
	} else {
		prepared := w.prepareConcurrently(ctx, recs, lanes, inBatch)
		for i, a := range prepared {
			if settle(a) {
				w.endSpans(prepared[i+1:])
				break
			}
		}
	}
	// The commands handled are applied: their replies go out, and they are
	// committed, even when the worker is stopping meanwhile (a reply lost
	// here would leave the saga to give the step up as uncertain).
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), replyGrace)
	defer cancel()
	byTopic := map[string][]int{}
	for i, a := range answers {
		if a.err == nil && a.topic != "" {
			byTopic[a.topic] = append(byTopic[a.topic], i)
		}
	}
	for topic, idx := range byTopic {
		ms := make([]Message, len(idx))
		for j, i := range idx {
			ms[j] = answers[i].msg
		}
		for j, res := range w.piper.PipeManySync(ctx, topic, ms...) {
			answers[idx[j]].err = res.Err
		}
	}
	var finished []*kgo.Record
	for i, a := range answers {
		err := w.finish(ctx, a)
		if err != nil {
			for _, rest := range answers[i+1:] {
				if rest.span != nil {
					rest.span.End()
				}
			}
			return finished, err
		}
		finished = append(finished, a.rec)
	}
	return finished, stopErr
}

// claims are the command IDs of a batch being handled: a copy of one in
// the same batch is a duplicate.
type claims struct {
	mu  sync.Mutex
	ids map[string]bool
}

// release gives up the claim on id: the command is handled again.
func (c *claims) release(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.ids, id)
}

// claim reports whether id was not claimed before, and claims it.
func (c *claims) claim(id string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ids[id] {
		return false
	}
	c.ids[id] = true
	return true
}

// prepareConcurrently prepares recs in lanes goroutines, a key's commands
// in one of them, in order. An answer left without a span was not
// handled: the worker was stopping.
func (w *StageWorker[C]) prepareConcurrently(ctx context.Context, recs []*kgo.Record, lanes int, inBatch *claims) []answer {
	answers := make([]answer, len(recs))
	byLane := make([][]int, lanes)
	for i, rec := range recs {
		h := fnv.New32a()
		_, _ = h.Write(rec.Key)
		l := int(h.Sum32() % uint32(lanes))
		byLane[l] = append(byLane[l], i)
	}
	var wg sync.WaitGroup
	for _, idx := range byLane {
		wg.Go(func() {
			for _, i := range idx {
				if ctx.Err() != nil {
					return
				}
				answers[i] = w.prepareRetrying(ctx, recs[i], inBatch)
			}
		})
	}
	wg.Wait()
	return answers
}

// endSpans ends the spans of answers that will not be finished.
func (w *StageWorker[C]) endSpans(answers []answer) {
	for _, a := range answers {
		if a.span != nil {
			a.span.End()
		}
	}
}

// finish settles a command whose reply was piped (or failed to be) and ends
// its span.
func (w *StageWorker[C]) finish(ctx context.Context, a answer) error {
	if a.span == nil {
		return nil
	}
	defer a.span.End()
	if a.err != nil { // the reply could not be piped
		telemetry.Fail(a.span, a.err)
		return w.cfg.onFailure(trace.ContextWithSpan(ctx, a.span), a.rec, a.err)
	}
	if a.id != "" {
		if err := w.cfg.store.Mark(ctx, a.id); err != nil {
			return fmt.Errorf("pipe: idempotency store: %w", err)
		}
	}
	return nil
}

func (w *StageWorker[C]) commit(ctx context.Context, recs []*kgo.Record) error {
	if len(recs) == 0 {
		return nil
	}
	// Commit what was answered even when ctx was just cancelled: it saves
	// the participant from handling those commands twice.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := w.client.CommitRecords(cctx, recs...); err != nil {
		return fmt.Errorf("pipe: stage worker: commit offsets: %w", err)
	}
	return nil
}

// registryBackoff is the first wait after the registry could not be
// reached; each further one doubles, up to maxRegistryBackoff.
var registryBackoff, maxRegistryBackoff = time.Second, 30 * time.Second

// prepareRetrying is prepare, retried while the registry cannot be
// reached (decoding the command or encoding its reply): an outage pauses
// the worker, with backoff, rather than handing good commands to the
// failure policy as poison. The handler may run again for the command, as
// for any redelivery. An answer without a span was not handled: the worker
// is stopping.
func (w *StageWorker[C]) prepareRetrying(ctx context.Context, rec *kgo.Record, inBatch *claims) answer {
	var wait time.Duration
	for {
		a := w.prepare(ctx, rec, inBatch)
		if a.err == nil || !errors.Is(a.err, schema.ErrRegistryUnavailable) || ctx.Err() != nil {
			return a
		}
		telemetry.Fail(a.span, a.err)
		a.span.End()
		if a.id != "" {
			inBatch.release(a.id)
		}
		wait = min(max(2*wait, registryBackoff), maxRegistryBackoff)
		w.cfg.logger.Warn("pipe: stage worker: the schema registry cannot be reached; the command waits", "topic", rec.Topic,
			"partition", rec.Partition, "offset", rec.Offset, "retry_in", wait, "error", a.err)
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return answer{rec: rec}
		}
	}
}

// prepare decodes and handles one command and builds its reply; an error
// goes to the failure policy. A command already answered gets nothing to do.
func (w *StageWorker[C]) prepare(ctx context.Context, rec *kgo.Record, inBatch *claims) answer {
	ctx, span := telemetry.StartProcess(ctx, w.piper.tracer, w.piper.cfg.propagator, rec, w.piper.cfg.group)
	a := answer{rec: rec, span: span}
	env, err := schema.ReadEnvelope(rec.Headers)
	if err != nil {
		a.err = err
		return a
	}
	if span.IsRecording() && env.SagaName != "" {
		span.SetAttributes(telemetry.SagaName.String(env.SagaName), telemetry.SagaID.String(env.SagaID),
			telemetry.SagaStep.String(env.SagaStep))
	}
	seen, err := w.cfg.store.Seen(ctx, env.ID)
	if err != nil {
		a.err = fmt.Errorf("pipe: idempotency store: %w", err)
		return a
	}
	if seen || !inBatch.claim(env.ID) {
		span.SetAttributes(attribute.Bool("sagapipe.duplicate", true))
		return a
	}
	a.id = env.ID
	cmd, err := w.decode(ctx, rec.Value)
	if err != nil {
		a.err = err
		return a
	}
	// The reply answers the command; it asks nothing back.
	source := *rec
	source.Headers = withoutHeader(withoutHeader(rec.Headers, schema.HeaderReplyTo), schema.HeaderIdempotencyKey)
	reply, err := w.handler(context.WithValue(ctx, sourceKey{}, &source), cmd, env)
	if err != nil {
		a.err = fmt.Errorf("pipe: handler for %s %s: %w", env.Type, env.ID, err)
		return a
	}
	if reply.encode == nil {
		return a
	}
	a.topic = cmp.Or(env.ReplyTo, w.cfg.replyTopic)
	if a.topic == "" {
		a.err = fmt.Errorf("pipe: command %s has no %s header and the worker has no WithReplyTopic", env.ID, schema.HeaderReplyTo)
		return a
	}
	value, err := reply.encode(ctx, a.topic)
	if err != nil {
		a.err = fmt.Errorf("pipe: encode reply %s: %w", reply.Type, err)
		return a
	}
	a.msg = Message{Source: &source, Value: value, Type: reply.Type, Context: ctx}
	return a
}

type sourceKey struct{}

// SourceRecord returns, in a stage worker's handler, the command's record
// as its reply is built from: where it was consumed, its key, its headers
// without reply_to and idempotency_key. A transactional outbox builds the
// reply it stores from it (pipe.Builder), as the worker would. Do not
// modify it.
func SourceRecord(ctx context.Context) (*kgo.Record, bool) {
	rec, ok := ctx.Value(sourceKey{}).(*kgo.Record)
	return rec, ok
}

func withoutHeader(headers []kgo.RecordHeader, name string) []kgo.RecordHeader {
	out := make([]kgo.RecordHeader, 0, len(headers))
	for _, h := range headers {
		if h.Key != name {
			out = append(out, h)
		}
	}
	return out
}
