package dlq

import (
	"errors"
	"fmt"
	"math"
	"sync"
	"time"
)

// Class says why a record was dead-lettered; it is the error_class header.
type Class string

const (
	// ClassPoison: the error can never succeed (poison); no retry was made.
	ClassPoison Class = "poison"
	// ClassExhausted: the error was retryable, and the retries ran out (or
	// the retry budget did).
	ClassExhausted Class = "exhausted"
	// ClassPredecessorDeadLettered: sequenced mode parked the record behind
	// an earlier dead-lettered record of the same key.
	ClassPredecessorDeadLettered Class = "predecessor_dead_lettered"
	// ClassReleased marks, in the dead-letter topic, that a parked key was
	// released (by an operator or by the replay of its records). It is a
	// marker, not a failed record: replay skips it.
	ClassReleased Class = "released"
)

// Decision is what a Classifier makes of an error.
type Decision int

const (
	// Retry the record with backoff, up to MaxRetries.
	Retry Decision = iota
	// DeadLetter the record at once: retrying cannot help.
	DeadLetter
)

// Classifier decides how an error is handled.
type Classifier func(error) Decision

// Defaults of Policy's zero fields.
const (
	DefaultMaxRetries     = 3
	DefaultInitialBackoff = 100 * time.Millisecond
	DefaultMaxBackoff     = 30 * time.Second
	DefaultMultiplier     = 2.0
	// DefaultTopicSuffix makes the DLQ of topic t "t.dlq".
	DefaultTopicSuffix = ".dlq"
)

// NoRetries as MaxRetries dead-letters a record on its first failure.
const NoRetries = -1

// Policy says how failing records are retried and dead-lettered. It is a
// plain struct: the zero value is a working policy, each field documents its
// default, and Validate reports every problem at once.
type Policy struct {
	// MaxRetries is how many times a failing record is retried after its
	// first attempt. 0 means DefaultMaxRetries; NoRetries means none.
	MaxRetries int
	// InitialBackoff is the backoff cap of the first retry (default
	// DefaultInitialBackoff). The cap grows by Multiplier per retry up to
	// MaxBackoff, and the wait is drawn uniformly from [0, cap) ("full
	// jitter"), so that failing consumers do not retry in step.
	InitialBackoff time.Duration
	// MaxBackoff bounds the backoff cap (default DefaultMaxBackoff).
	MaxBackoff time.Duration
	// Multiplier grows the cap per retry (default DefaultMultiplier).
	Multiplier float64
	// RetryBudgetPerMinute, when positive, bounds the retries per minute of
	// one consumer: past it, failing records are dead-lettered as exhausted
	// at once, so a downstream outage cannot stall every partition in
	// backoff. 0 means no budget.
	RetryBudgetPerMinute int
	// Topic is the dead-letter topic. Empty means "<source topic>.dlq".
	Topic string
	// NoDispatch skips records that failed for good instead of
	// dead-lettering them (Karafka's "topic: false"). They are counted and
	// reported to hooks, but not kept anywhere.
	NoDispatch bool
	// Classify decides between retrying and dead-lettering at once
	// (default DefaultClassifier).
	Classify Classifier
	// Sequenced parks keys: once a record with key K from partition p is
	// dead-lettered, later records with key K in p are dead-lettered too
	// (class predecessor_dead_lettered) without reaching the handler, so an
	// entity's events are never applied out of order. K stays parked until
	// its records are replayed or an operator releases it (dlq.Release,
	// "orchestrator dlq release"). Parked keys are rebuilt from the
	// dead-letter topic whenever a partition is assigned, so they survive
	// restarts and rebalances. Keyless records are never parked.
	Sequenced bool
}

// DefaultClassifier dead-letters poison errors at once and retries the rest.
// Whatever the classifier, an error that is schema.ErrRegistryUnavailable
// (the registry could not be reached) is retried with backoff until the
// registry answers: never exhausted, never dead-lettered, outside
// MaxRetries and RetryBudgetPerMinute.
// Poison errors are those wrapped with Poison and any error with a method
// Poison() bool reporting true, as schema/'s framing, unknown-schema-ID,
// decode and header errors have.
func DefaultClassifier(err error) Decision {
	if IsPoison(err) {
		return DeadLetter
	}
	return Retry
}

// Validate reports every problem with the policy, or nil.
func (p Policy) Validate() error {
	var errs []error
	if p.MaxRetries < NoRetries {
		errs = append(errs, fmt.Errorf("dlq: Policy.MaxRetries %d: use a count ≥ 0, or NoRetries", p.MaxRetries))
	}
	if p.InitialBackoff < 0 {
		errs = append(errs, fmt.Errorf("dlq: Policy.InitialBackoff %v is negative", p.InitialBackoff))
	}
	if p.MaxBackoff < 0 {
		errs = append(errs, fmt.Errorf("dlq: Policy.MaxBackoff %v is negative", p.MaxBackoff))
	}
	if p.InitialBackoff > 0 && p.MaxBackoff > 0 && p.MaxBackoff < p.InitialBackoff {
		errs = append(errs, fmt.Errorf("dlq: Policy.MaxBackoff %v is below InitialBackoff %v", p.MaxBackoff, p.InitialBackoff))
	}
	if p.Multiplier != 0 && (p.Multiplier < 1 || math.IsNaN(p.Multiplier) || math.IsInf(p.Multiplier, 0)) {
		errs = append(errs, fmt.Errorf("dlq: Policy.Multiplier %v: must be at least 1", p.Multiplier))
	}
	if p.RetryBudgetPerMinute < 0 {
		errs = append(errs, fmt.Errorf("dlq: Policy.RetryBudgetPerMinute %d is negative (0 means no budget)", p.RetryBudgetPerMinute))
	}
	if p.Sequenced && p.NoDispatch {
		errs = append(errs, errors.New("dlq: Policy.Sequenced needs the dead-letter topic, but NoDispatch is set"))
	}
	if p.NoDispatch && p.Topic != "" {
		errs = append(errs, fmt.Errorf("dlq: Policy.NoDispatch is set, so Topic %q would never be used", p.Topic))
	}
	return errors.Join(errs...)
}

// withDefaults returns p with its zero fields set to their defaults.
func (p Policy) withDefaults() Policy {
	switch p.MaxRetries {
	case 0:
		p.MaxRetries = DefaultMaxRetries
	case NoRetries:
		p.MaxRetries = 0
	}
	if p.InitialBackoff == 0 {
		p.InitialBackoff = DefaultInitialBackoff
	}
	if p.MaxBackoff == 0 {
		p.MaxBackoff = max(DefaultMaxBackoff, p.InitialBackoff)
	}
	if p.Multiplier == 0 {
		p.Multiplier = DefaultMultiplier
	}
	if p.Classify == nil {
		p.Classify = DefaultClassifier
	}
	return p
}

// TopicFor returns the dead-letter topic of records from source.
func (p Policy) TopicFor(source string) string {
	if p.Topic != "" {
		return p.Topic
	}
	return source + DefaultTopicSuffix
}

// BackoffCap is the most a wait before retry number retry (1-based) may be:
// InitialBackoff × Multiplier^(retry-1), at most MaxBackoff.
func (p Policy) BackoffCap(retry int) time.Duration {
	p = p.withDefaults()
	c := float64(p.InitialBackoff) * math.Pow(p.Multiplier, float64(max(retry-1, 0)))
	if c >= float64(p.MaxBackoff) || math.IsInf(c, 0) {
		return p.MaxBackoff
	}
	return time.Duration(c)
}

// Backoff draws the wait before retry number retry with full jitter:
// uniformly from [0, BackoffCap(retry)). randN returns a number in [0, n).
func (p Policy) Backoff(retry int, randN func(n int64) int64) time.Duration {
	c := p.BackoffCap(retry)
	if c <= 0 {
		return 0
	}
	return time.Duration(randN(int64(c)))
}

// retryBudget counts the retries spent of Policy.RetryBudgetPerMinute, in
// windows of a minute; a Consumer and a Retry middleware have one each.
type retryBudget struct {
	mu    sync.Mutex // a Retry middleware's handlers may run concurrently
	start time.Time
	used  int
}

// take spends one retry of perMinute (none: no budget) at now, if one is
// left.
func (b *retryBudget) take(perMinute int, now time.Time) bool {
	if perMinute <= 0 {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if now.Sub(b.start) >= time.Minute {
		b.start, b.used = now, 0
	}
	if b.used >= perMinute {
		return false
	}
	b.used++
	return true
}

// Poison marks err as poison: the record will never succeed, and is
// dead-lettered without retries. Poison(nil) is nil.
func Poison(err error) error {
	if err == nil {
		return nil
	}
	return &poisonError{err}
}

type poisonError struct{ err error }

func (e *poisonError) Error() string { return e.err.Error() }
func (e *poisonError) Unwrap() error { return e.err }
func (e *poisonError) Poison() bool  { return true }

// IsPoison reports whether err, or an error it wraps, is marked poison.
func IsPoison(err error) bool {
	var p interface{ Poison() bool }
	return errors.As(err, &p) && p.Poison()
}
