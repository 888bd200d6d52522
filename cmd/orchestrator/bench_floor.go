package main

import (
	"context"
	byteorder "encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/devstack"
	"github.com/sagapipe/sagapipe/internal/groups"
	"github.com/sagapipe/sagapipe/schema"
)

// Floor is the orders saga's message flow with no saga logic: the same
// topology, transactions and broker operations per saga as a saga run,
// each hop a plain kgo loop that writes records of an orders saga's sizes
// (floorRecord). An orchestrator of this flow (23 broker operations per
// saga) on these clients and this broker cannot go faster; a saga run's
// sagas/s over the floor's is the share sagapipe's own work leaves.
type Floor struct {
	SagasPerSecond   float64    `json:"sagas_per_second"`
	P50Millis        float64    `json:"p50_ms"`
	P99Millis        float64    `json:"p99_ms"`
	OpsPerSaga       float64    `json:"broker_ops_per_saga"`
	CPUMicrosPerSaga float64    `json:"cpu_us_per_saga"`
	Ops              *BrokerOps `json:"broker_ops,omitempty"`
	// RateLimit is the rate the sagas were placed at (0: as fast as
	// Concurrency allows); WarmUpSagas were placed at it and finished
	// before them, not in the figures, as in the half-rate runs.
	RateLimit   float64 `json:"rate_limit,omitempty"`
	WarmUpSagas int     `json:"warm_up_sagas,omitempty"`
}

// The floor's topics, named after the orders saga's.
const (
	floorInbox    = "floor.inbox"
	floorJournal  = "floor.journal"
	floorState    = "floor.state"
	floorOutcomes = "floor.outcomes"
	floorStepKey  = "floor_step"
	// floorWarmUpKey begins the keys of a run's warm-up sagas.
	floorWarmUpKey = "warm-"
)

var floorCommands = []string{"floor.inventory", "floor.payment", "floor.shipping"}

// benchFloor runs sagas through the floor's flow on a fresh embedded
// stack, at most concurrency at once:
//   - a storefront produces each saga's start record to the inbox (kgo's
//     default linger, as the demo's storefront);
//   - the orchestrator, a GroupTransactSession reading the inbox committed,
//     writes for each record a journal record, a state record and the
//     next command (or, after the third reply, the outcome) in one
//     transaction per poll, as the saga runtime does;
//   - three participants, one consumer group each, answer every command
//     with a reply to the inbox and commit after the replies are acked,
//     as a stage worker does.
//
// That is 16 produces and 7 consumes per saga, as an orders saga (counted,
// not assumed). The records are an orders saga's sizes (floorRecord):
// fresh IDs in their headers and values cut from order-like text, so
// compression wins about what it does on real records.
//
// With rate above 0 the sagas are placed at that many per second, after
// warmUp placed at it and finished (their latency not in the figures), as
// the half-rate runs place theirs: the latency the flow allows at a rate.
func benchFloor(ctx context.Context, sagas, concurrency int, partitions int32, rate float64, warmUp int) (Floor, error) {
	if sagas < 1 {
		return Floor{}, fmt.Errorf("floor: %d sagas: want at least 1", sagas)
	}
	// No settledHeap, unlike a saga run: the floor starts on the heap the
	// run before left, as it always has. Settled, it measured 15–20%
	// slower (interleaved, 2026-12-02), and a floor is kept at its best.
	stack, err := devstack.Start(devstack.Config{})
	if err != nil {
		return Floor{}, err
	}
	defer closeStack(stack)
	seed := []kgo.Opt{kgo.SeedBrokers(stack.KafkaAddrs()...)}
	admin, err := kgo.NewClient(seed...)
	if err != nil {
		return Floor{}, err
	}
	defer admin.Close()
	adm := kadm.NewClient(admin)
	topics := append([]string{floorInbox, floorJournal, floorState, floorOutcomes}, floorCommands...)
	created, err := adm.CreateTopics(ctx, partitions, 1, nil, topics...)
	if err == nil {
		err = created.Error()
	}
	if err != nil {
		return Floor{}, err
	}

	text := floorText()

	var (
		mu      sync.Mutex
		started = make(map[string]time.Time, sagas+warmUp)
		latency = make([]time.Duration, 0, sagas)
		warmed  int
		// finishedAll is set when allDone is closed: a saga's outcome
		// read again after a rebalance finishes nothing.
		finishedAll bool
		slots       = make(chan struct{}, concurrency)
		allDone     = make(chan struct{})
		warmDone    = make(chan struct{})
		failed      = make(chan struct{}) // closed on the first failure
		firstErr    error
	)
	if warmUp == 0 {
		close(warmDone)
	}
	fail := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		if firstErr == nil {
			close(failed)
		}
		firstErr = errors.Join(firstErr, err)
	}
	finished := func(ids []string) {
		mu.Lock()
		defer mu.Unlock()
		for _, id := range ids {
			at, ok := started[id]
			if !ok { // again, after a rebalance: counted once
				continue
			}
			delete(started, id)
			<-slots
			if strings.HasPrefix(id, floorWarmUpKey) {
				if warmed++; warmed == warmUp {
					close(warmDone)
				}
				continue
			}
			latency = append(latency, time.Since(at))
		}
		if len(latency) == sagas && !finishedAll {
			finishedAll = true
			close(allDone)
		}
	}

	loopCtx, stop := context.WithCancel(ctx)
	// A loop stopped in the middle of a request fails that request: not a
	// failure of the run.
	loopFail := func(err error) {
		if loopCtx.Err() == nil {
			fail(err)
		}
	}
	// Stopped in order: the loops, then their clients.
	var (
		loops   sync.WaitGroup
		closers []func()
	)
	defer func() {
		stop()
		loops.Wait()
		for _, c := range closers {
			c()
		}
	}()
	// fatal reports whether a poll's errors end a loop: the client
	// closed or the run stopped. kgo retries the others itself.
	fatal := func(fetches kgo.Fetches) bool {
		if loopCtx.Err() != nil {
			return true
		}
		closed := false
		fetches.EachError(func(_ string, _ int32, err error) {
			closed = closed || errors.Is(err, kgo.ErrClientClosed)
		})
		return closed
	}

	orchestrator, err := kgo.NewGroupTransactSession(append(slices.Clone(seed), kgo.ConsumerGroup("floor.orchestrator"), kgo.ConsumeTopics(floorInbox),
		kgo.TransactionalID("floor.orchestrator"), kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.ProducerLinger(0),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))...)
	if err != nil {
		return Floor{}, err
	}
	closers = append(closers, orchestrator.Close)
	loops.Go(func() {
		for loopCtx.Err() == nil {
			fetches := orchestrator.PollFetches(loopCtx)
			if fatal(fetches) {
				return
			}
			if fetches.NumRecords() == 0 {
				continue
			}
			if err := orchestrator.Begin(); err != nil {
				loopFail(fmt.Errorf("floor orchestrator: %w", err))
				return
			}
			var done []string
			fetches.EachRecord(func(r *kgo.Record) {
				step, cause := 0, []byte(nil)
				for _, h := range r.Headers {
					switch h.Key {
					case floorStepKey:
						step, _ = strconv.Atoi(string(h.Value))
					case schema.HeaderID:
						cause = h.Value
					}
				}
				orchestrator.Produce(loopCtx, floorRecord(text, floorJournal, r.Key, cause, -1), nil)
				orchestrator.Produce(loopCtx, floorRecord(text, floorState, r.Key, cause, -1), nil)
				if step < len(floorCommands) {
					orchestrator.Produce(loopCtx, floorRecord(text, floorCommands[step], r.Key, cause, step), nil)
				} else {
					orchestrator.Produce(loopCtx, floorRecord(text, floorOutcomes, r.Key, cause, -1), nil)
					done = append(done, string(r.Key))
				}
			})
			committed, err := orchestrator.End(loopCtx, kgo.TryCommit)
			if err != nil || !committed {
				loopFail(fmt.Errorf("floor orchestrator: transaction not committed: %v", err))
				return
			}
			finished(done)
		}
	})

	for step, topic := range floorCommands {
		cl, err := kgo.NewClient(append(slices.Clone(seed), kgo.ConsumerGroup(topic+".service"), kgo.ConsumeTopics(topic), kgo.DisableAutoCommit(),
			kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.ProducerLinger(0), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))...)
		if err != nil {
			return Floor{}, err
		}
		closers = append(closers, cl.Close)
		loops.Go(func() {
			for loopCtx.Err() == nil {
				fetches := cl.PollFetches(loopCtx)
				if fatal(fetches) {
					return
				}
				recs := fetches.Records()
				if len(recs) == 0 {
					continue
				}
				replies := make([]*kgo.Record, len(recs))
				for i, r := range recs {
					var cause []byte
					for _, h := range r.Headers {
						if h.Key == schema.HeaderID {
							cause = h.Value
						}
					}
					replies[i] = floorRecord(text, floorInbox, r.Key, cause, step+1)
				}
				if err := cl.ProduceSync(loopCtx, replies...).FirstErr(); err != nil {
					loopFail(fmt.Errorf("floor participant %s: %w", topic, err))
					return
				}
				if err := cl.CommitRecords(loopCtx, recs...); err != nil {
					loopFail(fmt.Errorf("floor participant %s: %w", topic, err))
					return
				}
			}
		})
	}

	members := map[string]string{"floor.orchestrator": floorInbox}
	for _, topic := range floorCommands {
		members[topic+".service"] = topic
	}
	if err := waitGroupsAssigned(ctx, adm, members, partitions); err != nil {
		return Floor{}, err
	}

	storefront, err := kgo.NewClient(seed...)
	if err != nil {
		return Floor{}, err
	}
	closers = append(closers, storefront.Close)
	counter := countOps(stack.Kafka())
	errFailed := errors.New("a floor loop failed")
	// place places n sagas, keyed prefix and their number, at rate if
	// it is above 0.
	place := func(prefix string, n int) error {
		paceFrom := time.Now()
		for i := range n {
			if rate > 0 {
				if wait := time.Until(paceFrom.Add(time.Duration(float64(i) / rate * float64(time.Second)))); wait > 0 {
					select {
					case <-time.After(wait):
					case <-ctx.Done():
						return ctx.Err()
					}
				}
			}
			select {
			case slots <- struct{}{}:
			case <-failed:
				return errFailed
			case <-ctx.Done():
				return ctx.Err()
			}
			key := fmt.Sprintf("%s%06d", prefix, i)
			mu.Lock()
			started[key] = time.Now()
			mu.Unlock()
			storefront.Produce(ctx, floorRecord(text, floorInbox, []byte(key), nil, 0), func(_ *kgo.Record, err error) {
				if err != nil {
					fail(fmt.Errorf("floor storefront: %w", err))
				}
			})
		}
		return nil
	}
	placed := func(err error) (Floor, error) {
		if errors.Is(err, errFailed) {
			mu.Lock()
			defer mu.Unlock()
			return Floor{}, firstErr
		}
		return Floor{}, err
	}
	if err := place(floorWarmUpKey, warmUp); err != nil {
		return placed(err)
	}
	select {
	case <-warmDone:
	case <-failed:
		return placed(errFailed)
	case <-time.After(5 * time.Minute):
		return Floor{}, fmt.Errorf("floor: the %d warm-up sagas did not finish in 5 minutes", warmUp)
	case <-ctx.Done():
		return Floor{}, ctx.Err()
	}
	cpuBefore := processCPU()
	began := time.Now()
	if err := place("order-", sagas); err != nil {
		return placed(err)
	}
	select {
	case <-allDone:
	case <-failed:
		mu.Lock()
		defer mu.Unlock()
		return Floor{}, firstErr
	case <-time.After(5 * time.Minute):
		mu.Lock()
		defer mu.Unlock()
		return Floor{}, errors.Join(fmt.Errorf("floor: %d of %d sagas finished in 5 minutes", len(latency), sagas), firstErr)
	case <-ctx.Done():
		return Floor{}, ctx.Err()
	}
	elapsed := time.Since(began)
	cpu := processCPU() - cpuBefore
	stop()
	loops.Wait()
	mu.Lock()
	defer mu.Unlock()
	if firstErr != nil {
		return Floor{}, firstErr
	}
	ops, err := counter.result(ctx, stack.KafkaAddrs())
	if err != nil {
		return Floor{}, err
	}
	slices.Sort(latency)
	n := float64(sagas)
	return Floor{SagasPerSecond: n / elapsed.Seconds(), P50Millis: ms(latency[len(latency)/2]), P99Millis: ms(latency[min(len(latency)-1, len(latency)*99/100)]),
		OpsPerSaga: float64(ops.Total()) / float64(sagas+warmUp), CPUMicrosPerSaga: float64(cpu.Microseconds()) / n, Ops: &ops,
		RateLimit: rate, WarmUpSagas: warmUp}, nil
}

// floorText is what floorRecord cuts values from: text like an order's
// fields, so that they compress about as well as Avro payloads do.
func floorText() []byte {
	var text []byte
	for len(text) < 1<<16 {
		text = fmt.Appendf(text, "order-%06d customer-%04d sku-%03d %d EUR %d;", mrand.IntN(1e6), mrand.IntN(1e4), mrand.IntN(1e3), mrand.IntN(5), mrand.IntN(1e5))
	}
	return text
}

// floorValueSizes are an orders saga's mean value sizes by topic, measured
// on a demo run (Avro payloads; a state record is a snapshot).
var floorValueSizes = map[string]int{floorInbox: 40, floorJournal: 235, floorState: 212, floorOutcomes: 54,
	"floor.inventory": 27, "floor.payment": 34, "floor.shipping": 28,
	"ceiling.in": 200} // the ceiling's records (benchCeiling)

// floorRecord is a record of topic for the saga key, caused by the record
// whose ce_id is cause, with an orders saga's sizes: 14 headers of about
// 400 bytes (the envelope, a trace parent, fresh IDs; a 15th carries the
// step to the next hop when step >= 0) on every topic but the state topic
// (a snapshot has one small header), and a value cut from text.
func floorRecord(text []byte, topic string, key, cause []byte, step int) *kgo.Record {
	size := floorValueSizes[topic]
	at := int(mrand.Uint32()) % (len(text) - size)
	r := &kgo.Record{Topic: topic, Key: key, Value: text[at : at+size]}
	if topic == floorState {
		r.Headers = []kgo.RecordHeader{{Key: "saga_state", Value: []byte("awaiting")}}
		return r
	}
	id := func() []byte {
		return hex.AppendEncode(nil, byteorder.LittleEndian.AppendUint64(byteorder.LittleEndian.AppendUint64(nil, mrand.Uint64()), mrand.Uint64()))
	}
	r.Headers = []kgo.RecordHeader{
		{Key: schema.HeaderSpecVersion, Value: []byte("1.0")},
		{Key: schema.HeaderID, Value: id()},
		{Key: schema.HeaderType, Value: []byte("sagapipe.examples.orders.InventoryReserved")},
		{Key: schema.HeaderSource, Value: []byte("sagapipe/orders")},
		{Key: schema.HeaderTime, Value: []byte("2026-12-02T06:00:00.123456789Z")},
		{Key: schema.HeaderContentType, Value: []byte("application/avro")},
		{Key: schema.HeaderCorrelationID, Value: key},
		{Key: schema.HeaderCausationID, Value: cause},
		{Key: schema.HeaderSagaName, Value: []byte("orders")},
		{Key: schema.HeaderSagaID, Value: key},
		{Key: schema.HeaderSagaStep, Value: []byte("inventory")},
		{Key: schema.HeaderReplyTo, Value: []byte("orders.inbox")},
		{Key: schema.HeaderIdempotencyKey, Value: id()},
		{Key: schema.HeaderTraceParent, Value: append(append([]byte("00-"), id()...), "-00f067aa0ba902b7-01"...)},
	}
	if step >= 0 {
		r.Headers = append(r.Headers, kgo.RecordHeader{Key: floorStepKey, Value: strconv.AppendInt(nil, int64(step), 10)})
	}
	return r
}

// waitGroupsAssigned waits until every group (to the topic it consumes)
// is stable with all of the topic's partitions assigned.
func waitGroupsAssigned(ctx context.Context, adm *kadm.Client, members map[string]string, partitions int32) error {
	deadline := time.Now().Add(time.Minute)
	for {
		waiting, err := groups.Waiting(ctx, adm, members, partitions)
		if err != nil {
			return err
		}
		if waiting == "" {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("group %s has not got its partitions in a minute", waiting)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}
