package pipe

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagapipe/sagapipe/internal/telemetry"
	"github.com/sagapipe/sagapipe/schema"
)

// Provenance header names, written on every piped record and overwriting any
// earlier ones (as when piping out of a dead-letter topic). Values are
// decimal strings.
const (
	HeaderOriginalTopic         = "original_topic"
	HeaderOriginalPartition     = "original_partition"
	HeaderOriginalOffset        = "original_offset"
	HeaderOriginalConsumerGroup = "original_consumer_group"
)

var (
	// ErrClosed: the piper was closed before the record could be piped.
	ErrClosed = errors.New("pipe: piper is closed")
	// ErrNoSource: a Message had no Source record.
	ErrNoSource = errors.New("pipe: message has no source record")
	// ErrNoTopic: the target topic is empty.
	ErrNoTopic = errors.New("pipe: target topic is empty")
)

// Message is one consumed record to pipe.
type Message struct {
	// Source is the consumed record. Its key, value and headers are
	// forwarded as they are unless a field below says otherwise.
	Source *kgo.Record
	// Value, when non-nil, replaces the source's value (for example a newly
	// encoded Avro event).
	Value []byte
	// Type, when set, is the piped event's ce_type; otherwise the source's
	// is kept.
	Type string
	// ID, when set, is the piped event's ce_id; otherwise a new one is made.
	// A deterministic ID lets a receiver recognize a resent command.
	ID string
	// Headers are set on the piped record last, each replacing every
	// header of its name (e.g. saga_step, reply_to). Their values are not
	// copied: do not change them until the record's Result arrives.
	Headers []kgo.RecordHeader
	// PassThrough comes back untouched in the record's Result.
	PassThrough any
	// Context, when set, is the context whose span the record's publish
	// span continues, instead of the call's (the call's ctx still cancels).
	// Piping a batch in one call, it keeps each record in its own trace.
	Context context.Context
}

// Result is the outcome of piping one Message. Every piped message yields
// exactly one.
type Result struct {
	// Record is the record as built for the target; after a successful
	// produce its Partition and Offset are set. It is nil when the record
	// could not be built.
	Record      *kgo.Record
	Source      *kgo.Record
	PassThrough any
	// Err is nil on success.
	Err error
}

// EnhanceFunc may change the record about to be piped (key, value, headers,
// topic). An error fails the record's Result and nothing is sent.
type EnhanceFunc func(ctx context.Context, rec *kgo.Record, m Message) error

// Piper pipes consumed records to target topics. It is safe for concurrent
// use. It owns no goroutines; results of asynchronous pipes are delivered on
// the kgo client's promise goroutine, so callbacks must not block for long.
type Piper struct {
	client      *kgo.Client
	cfg         config
	tracer      trace.Tracer
	traceFields []string // the headers the propagator writes
	txDuration  metric.Float64Histogram
	sem         chan struct{} // a slot per in-flight record
	closing     chan struct{}
	closeOnce   sync.Once
	base        context.Context // cancelled when Close gives up waiting
	cancelBase  context.CancelFunc
	closeErr    error
	closeMu     sync.Mutex
}

// New returns a Piper producing through client. Options are validated
// together; every problem is reported.
//
// Records without a key get one derived from their source partition, so the
// client must partition by key hash (kgo's default partitioner does).
func New(client *kgo.Client, opts ...Opt) (*Piper, error) {
	cfg := defaultConfig()
	for _, o := range opts {
		o.apply(&cfg)
	}
	var errs []error
	if client == nil {
		errs = append(errs, errors.New("pipe: New: client is nil"))
	}
	errs = append(errs, cfg.validate()...)
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if cfg.group == "" {
		if g, _ := client.OptValue(kgo.ConsumerGroup).(string); g != "" {
			cfg.group = g
		}
	}
	txDuration, err := telemetry.Meter(cfg.meter).Float64Histogram("sagapipe.transaction.duration",
		metric.WithUnit("s"), metric.WithDescription("How long ending a Kafka transaction (commit or abort) took."),
		metric.WithExplicitBucketBoundaries(telemetry.LatencyBuckets...))
	if err != nil {
		return nil, fmt.Errorf("pipe: metrics: %w", err)
	}
	base, cancel := context.WithCancel(context.Background())
	return &Piper{
		client:      client,
		cfg:         cfg,
		tracer:      telemetry.Tracer(cfg.tracer),
		traceFields: cfg.propagator.Fields(),
		txDuration:  txDuration,
		sem:         make(chan struct{}, cfg.maxInFlight),
		closing:     make(chan struct{}),
		base:        base,
		cancelBase:  cancel,
	}, nil
}

// PipeSync pipes m to topic and returns its result once the broker has
// answered. Cancelling ctx fails the record if it has not been sent yet.
func (p *Piper) PipeSync(ctx context.Context, topic string, m Message) Result {
	return p.PipeManySync(ctx, topic, m)[0]
}

// PipeManySync pipes every message to topic and returns their results in the
// order of ms.
func (p *Piper) PipeManySync(ctx context.Context, topic string, ms ...Message) []Result {
	results := make([]Result, len(ms))
	var wg sync.WaitGroup
	wg.Add(len(ms))
	p.pipe(ctx, topic, ms, func(i int, r Result) {
		results[i] = r
		wg.Done()
	})
	wg.Wait()
	return results
}

// PipeAsync pipes m to topic and calls done with its result exactly once,
// possibly before PipeAsync returns. PipeAsync blocks while the piper has
// its maximum of records in flight (WithMaxInFlight); cancelling ctx ends
// the wait, and fails the record if it has not been sent, with the failure
// delivered to done.
func (p *Piper) PipeAsync(ctx context.Context, topic string, m Message, done func(Result)) {
	p.PipeManyAsync(ctx, topic, []Message{m}, done)
}

// PipeManyAsync pipes every message to topic, calling done once per message,
// as PipeAsync does.
func (p *Piper) PipeManyAsync(ctx context.Context, topic string, ms []Message, done func(Result)) {
	if done == nil {
		panic("pipe: PipeAsync needs a result callback (use ResultsTo for a channel)")
	}
	p.pipe(ctx, topic, ms, func(_ int, r Result) { done(r) })
}

// ResultsTo returns a callback that sends each result to ch. The channel's
// capacity, or its reader, is what keeps up with the results: a full channel
// blocks the kgo client's promise goroutine.
func ResultsTo(ch chan<- Result) func(Result) {
	return func(r Result) { ch <- r }
}

// pipe is the one path every Pipe* method takes. done is called exactly once
// per message, with the message's index.
func (p *Piper) pipe(ctx context.Context, topic string, ms []Message, done func(int, Result)) {
	if len(ms) == 0 {
		return
	}
	// One context per call joins the caller's with the piper's, so that
	// both the caller and a Close that gives up can cancel unsent records.
	rctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(p.base, cancel)
	remaining := atomic.Int64{}
	remaining.Store(int64(len(ms)))
	finish := func(i int, r Result) {
		done(i, r)
		if remaining.Add(-1) == 0 {
			stop()
			cancel()
		}
	}
	for i, m := range ms {
		fail := func(err error) { finish(i, Result{Source: m.Source, PassThrough: m.PassThrough, Err: err}) }
		select {
		case <-p.closing:
			fail(ErrClosed)
			continue
		default:
		}
		select {
		case p.sem <- struct{}{}:
		case <-p.closing:
			fail(ErrClosed)
			continue
		case <-rctx.Done():
			fail(fmt.Errorf("pipe: waiting for an in-flight slot: %w", context.Cause(rctx)))
			continue
		}
		rec, err := p.build(rctx, topic, m)
		if err != nil {
			<-p.sem
			fail(err)
			continue
		}
		sctx, span := telemetry.StartPublish(p.parent(rctx, m), p.tracer, p.cfg.propagator, rec)
		rec.Context = sctx
		p.client.Produce(rctx, rec, func(r *kgo.Record, err error) {
			<-p.sem
			telemetry.EndPublish(span, r, err)
			if err != nil {
				err = fmt.Errorf("pipe: produce to %s: %w", r.Topic, err)
			}
			finish(i, Result{Record: r, Source: m.Source, PassThrough: m.PassThrough, Err: err})
		})
	}
}

// parent returns the context a message's publish span continues: the
// message's own, else the call's, else the source record's trace, so that a
// plain pipe stays in the trace of what it forwards.
func (p *Piper) parent(ctx context.Context, m Message) context.Context {
	switch {
	case m.Context != nil:
		if bare(m.Context) && bare(ctx) {
			return ctx // neither has a span or baggage: nothing to take from m.Context
		}
		return trace.ContextWithSpan(baggage.ContextWithBaggage(ctx, baggage.FromContext(m.Context)), trace.SpanFromContext(m.Context))
	case trace.SpanContextFromContext(ctx).IsValid():
		return ctx
	default:
		return p.cfg.propagator.Extract(ctx, telemetry.Headers{Record: m.Source})
	}
}

// bare tells whether ctx holds no trace context: no valid or recording
// span, no baggage.
func bare(ctx context.Context) bool {
	span := trace.SpanFromContext(ctx)
	return !span.SpanContext().IsValid() && !span.IsRecording() && baggage.FromContext(ctx).Len() == 0
}

// partitionKeys are the derived keys of the first source partitions,
// allocated once.
var partitionKeys = func() [][]byte {
	keys := make([][]byte, 1024)
	for i := range keys {
		keys[i] = []byte(strconv.Itoa(i))
	}
	return keys
}()

// derivedKey returns the key a keyless record from source partition p is
// piped with: every record of one source partition gets the same key, so
// they land in one target partition, in order, whatever the two topics'
// partition counts.
func derivedKey(p int32) []byte {
	if p >= 0 && int(p) < len(partitionKeys) {
		return partitionKeys[p]
	}
	return []byte(strconv.Itoa(int(p)))
}

// build makes the record to produce for m.
func (p *Piper) build(ctx context.Context, topic string, m Message) (*kgo.Record, error) {
	src := m.Source
	if src == nil {
		return nil, ErrNoSource
	}
	if topic == "" {
		return nil, ErrNoTopic
	}
	rec := &kgo.Record{Topic: topic, Key: src.Key, Value: src.Value}
	if m.Value != nil {
		rec.Value = m.Value
	}
	if rec.Key == nil {
		rec.Key = derivedKey(src.Partition)
	}

	var causation []byte // the source's ce_id, the last one
	for i := len(src.Headers) - 1; i >= 0; i-- {
		if src.Headers[i].Key == schema.HeaderID {
			causation = src.Headers[i].Value
			break
		}
	}

	headers := make([]kgo.RecordHeader, 0, len(src.Headers)+10)
	for _, h := range src.Headers {
		switch h.Key {
		case HeaderOriginalTopic, HeaderOriginalPartition, HeaderOriginalOffset, HeaderOriginalConsumerGroup,
			schema.HeaderID, schema.HeaderTime, schema.HeaderCausationID,
			// A saga's span belongs to its start event: what is piped from
			// it (a command, a reply, another saga's start) is not that start.
			schema.HeaderSagaSpan, schema.HeaderSagaSpanParent:
			continue
		case schema.HeaderType:
			if m.Type != "" {
				continue
			}
		case schema.HeaderSource:
			if p.cfg.source != "" {
				continue
			}
		}
		if slices.Contains(p.traceFields, h.Key) {
			continue // the publish span writes its own
		}
		headers = append(headers, h)
	}
	id := m.ID
	if id == "" {
		id = p.cfg.newID()
	}
	// The values this record adds, in one allocation; each is cut with a
	// full slice expression, so that appending to one cannot write into
	// the next.
	values := make([]byte, 0, len(src.Topic)+2*20+len(p.cfg.group)+len(id)+len(time.RFC3339Nano)+
		len(causation)+len(m.Type)+len(p.cfg.source))
	var ends [9]int
	values = append(values, src.Topic...)
	ends[0] = len(values)
	values = strconv.AppendInt(values, int64(src.Partition), 10)
	ends[1] = len(values)
	values = strconv.AppendInt(values, src.Offset, 10)
	ends[2] = len(values)
	values = append(values, p.cfg.group...)
	ends[3] = len(values)
	values = append(values, id...)
	ends[4] = len(values)
	values = p.cfg.now().UTC().AppendFormat(values, time.RFC3339Nano)
	ends[5] = len(values)
	values = append(values, causation...)
	ends[6] = len(values)
	values = append(values, m.Type...)
	ends[7] = len(values)
	values = append(values, p.cfg.source...)
	ends[8] = len(values)
	value := func(i int) []byte {
		start := 0
		if i > 0 {
			start = ends[i-1]
		}
		return values[start:ends[i]:ends[i]]
	}
	headers = append(headers,
		kgo.RecordHeader{Key: HeaderOriginalTopic, Value: value(0)},
		kgo.RecordHeader{Key: HeaderOriginalPartition, Value: value(1)},
		kgo.RecordHeader{Key: HeaderOriginalOffset, Value: value(2)},
		kgo.RecordHeader{Key: HeaderOriginalConsumerGroup, Value: value(3)},
		kgo.RecordHeader{Key: schema.HeaderID, Value: value(4)},
		kgo.RecordHeader{Key: schema.HeaderTime, Value: value(5)},
	)
	if len(causation) > 0 {
		headers = append(headers, kgo.RecordHeader{Key: schema.HeaderCausationID, Value: value(6)})
	}
	if m.Type != "" {
		headers = append(headers, kgo.RecordHeader{Key: schema.HeaderType, Value: value(7)})
	}
	if p.cfg.source != "" {
		headers = append(headers, kgo.RecordHeader{Key: schema.HeaderSource, Value: value(8)})
	}
	if len(m.Headers) > 0 {
		overridden := func(key string) bool {
			return slices.ContainsFunc(m.Headers, func(o kgo.RecordHeader) bool { return o.Key == key })
		}
		kept := headers[:0]
		for _, h := range headers {
			if !overridden(h.Key) {
				kept = append(kept, h)
			}
		}
		headers = kept
		for i, h := range m.Headers {
			if !slices.ContainsFunc(m.Headers[i+1:], func(o kgo.RecordHeader) bool { return o.Key == h.Key }) {
				headers = append(headers, h) // of one name, the last wins
			}
		}
	}
	rec.Headers = headers

	if p.cfg.enhance != nil {
		if err := p.cfg.enhance(ctx, rec, m); err != nil {
			return nil, fmt.Errorf("pipe: enhance hook refused the record: %w", err)
		}
	}
	return rec, nil
}

// Close stops the piper: pipes started afterwards fail with ErrClosed, and
// Close waits until every record in flight has its result. When ctx ends
// first, Close cancels the records kgo has not sent yet (kgo fails them, and
// their results are delivered) and returns ctx's error; results of records
// already sent arrive when the broker answers or the client is closed. Close
// is idempotent: later calls return the first call's error.
func (p *Piper) Close(ctx context.Context) error {
	p.closeMu.Lock()
	defer p.closeMu.Unlock()
	first := false
	p.closeOnce.Do(func() { close(p.closing); first = true })
	if !first {
		return p.closeErr
	}
	// Holding every slot means nothing is in flight.
	for acquired := 0; acquired < cap(p.sem); acquired++ {
		select {
		case p.sem <- struct{}{}:
		case <-ctx.Done():
			p.cancelBase()
			p.closeErr = fmt.Errorf("pipe: close: %d records still in flight: %w", cap(p.sem)-acquired, ctx.Err())
			return p.closeErr
		}
	}
	p.cancelBase()
	return nil
}
