package main

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/examples/orders"
	"github.com/sagapipe/sagapipe/saga"
	"github.com/sagapipe/sagapipe/schema"
)

// Recovery is the recovery scenario: a takeover of every partition of the
// orders saga with History closed sagas (within their retention) and
// InFlight sagas held in flight. The broker and the participants run in
// their own processes; the runtimes measured run in this one.
type Recovery struct {
	History  int `json:"history"`
	InFlight int `json:"in_flight"`
	// FreshTakeoverSeconds is from a new runtime with an empty local store
	// (a fresh machine) until it is ready.
	FreshTakeoverSeconds float64 `json:"fresh_takeover_seconds"`
	// RestartSeconds is the same with the local store the previous run
	// left.
	RestartSeconds float64 `json:"restart_seconds"`
	// HeapAfterTakeoverBytes is this process's live heap after the fresh
	// takeover (the least of five samples over a second), less what it
	// was before the runtime started.
	HeapAfterTakeoverBytes int64 `json:"heap_after_takeover_bytes"`
	// RestoredFrom lists where each partition was restored from in the
	// fresh takeover ("state" for all: the journal is not read).
	RestoredFrom []saga.RestoredFrom `json:"restored_from"`
}

// restoreLog records the runtime's restores.
type restoreLog struct {
	mu   sync.Mutex
	from []saga.RestoredFrom
}

func (l *restoreLog) OnRestored(_ int32, from saga.RestoredFrom, _ int, _ time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.from = append(l.from, from)
}

// benchRecovery builds a history of closed markers and a set of sagas in
// flight, then measures a takeover on a fresh machine and a restart.
// With cpuProfile set, the fresh takeover's CPU profile is written there.
func benchRecovery(ctx context.Context, history, inFlight int, partitions int32, cpuProfile string, stderr io.Writer) (Recovery, error) {
	res := Recovery{History: history, InFlight: inFlight}
	self, err := os.Executable()
	if err != nil {
		return res, err
	}
	// The embedded broker compacts no state topic while the takeover is
	// measured: on a real cluster that is the brokers' work, on other
	// machines; here it would take the measured process's cores.
	brokers, registryURL, stopDev, err := startDevProcess(ctx, self, stderr, "--compaction-interval", "1h")
	if err != nil {
		return res, err
	}
	defer stopDev()
	s, err := orders.Saga(time.Hour)
	if err != nil {
		return res, err
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers), kgo.ProducerLinger(5*time.Millisecond))
	if err != nil {
		return res, err
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	if err := ensureOrdersTopics(ctx, adm, s, partitions); err != nil {
		return res, err
	}
	serde, err := schema.NewSerde(registryURL, schema.WithSubjectNameStrategy(schema.RecordNameStrategy))
	if err != nil {
		return res, err
	}
	if err := writeClosedMarkers(ctx, cl, serde, s.StateTopic(), history); err != nil {
		return res, err
	}

	stopParticipants, err := startParticipantsProcess(ctx, self, brokers, registryURL, stderr, "--shipping-silent")
	if err != nil {
		return res, err
	}
	defer stopParticipants()

	start := func(stateDir string, hooks ...saga.Hook) (*saga.Runtime[orders.OrderData], func(), error) {
		rt, err := saga.NewRuntime(s, saga.WithClientOptions(kgo.SeedBrokers(brokers)), saga.WithRegistry(serde), saga.WithStateDir(stateDir), saga.WithHooks(hooks...))
		if err != nil {
			return nil, nil, err
		}
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- rt.Run(rctx) }()
		return rt, func() { cancel(); <-done; rt.Close() }, nil
	}
	ready := func(rt *saga.Runtime[orders.OrderData], what string) (time.Duration, error) {
		began := time.Now()
		for !rt.Ready() {
			if time.Since(began) > 5*time.Minute {
				return 0, fmt.Errorf("%s: not ready after 5 minutes", what)
			}
			time.Sleep(time.Millisecond)
		}
		return time.Since(began), nil
	}

	// The sagas in flight, placed through a first runtime and held at
	// shipping (its participant is silent).
	first, stopFirst, err := start("")
	if err != nil {
		return res, err
	}
	starter, err := s.NewStarter(cl, serde, saga.StartSource("bench"))
	if err != nil {
		stopFirst()
		return res, err
	}
	for i := range inFlight {
		o := orders.DemoOrder(i)
		rec, err := starter.Record(ctx, o.OrderID, o)
		if err != nil {
			stopFirst()
			return res, err
		}
		cl.Produce(ctx, rec, nil)
	}
	if err := cl.Flush(ctx); err != nil {
		stopFirst()
		return res, err
	}
	deadline := time.Now().Add(5 * time.Minute)
	for len(first.List(saga.PendingState("shipping"))) < inFlight {
		if time.Now().After(deadline) {
			stopFirst()
			return res, fmt.Errorf("only %d of %d sagas reached shipping", len(first.List(saga.PendingState("shipping"))), inFlight)
		}
		time.Sleep(20 * time.Millisecond)
	}
	stopFirst()

	stateDir, err := os.MkdirTemp("", "sagapipe-bench-state-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(stateDir)
	before := liveHeap()
	log := &restoreLog{}
	if cpuProfile != "" {
		f, err := os.Create(cpuProfile)
		if err != nil {
			return res, err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return res, err
		}
		defer pprof.StopCPUProfile()
	}
	fresh, stopFresh, err := start(stateDir, log)
	if err != nil {
		return res, err
	}
	took, err := ready(fresh, "fresh takeover")
	if err != nil {
		stopFresh()
		return res, err
	}
	res.FreshTakeoverSeconds = took.Seconds()
	pprof.StopCPUProfile() // the takeover's alone (a second stop does nothing)
	// The stores' background compactions allocate for a while after a
	// takeover: the least of a few samples is the heap that stays.
	settled := liveHeap()
	for range 4 {
		time.Sleep(250 * time.Millisecond)
		settled = min(settled, liveHeap())
	}
	res.HeapAfterTakeoverBytes = int64(settled) - int64(before)
	if held := len(fresh.List(saga.PendingState("shipping"))); held != inFlight {
		stopFresh()
		return res, fmt.Errorf("the takeover holds %d sagas at shipping, want %d", held, inFlight)
	}
	stopFresh()
	log.mu.Lock()
	res.RestoredFrom = log.from
	log.mu.Unlock()

	restarted, stopRestarted, err := start(stateDir)
	if err != nil {
		return res, err
	}
	took, err = ready(restarted, "restart")
	stopRestarted()
	if err != nil {
		return res, err
	}
	res.RestartSeconds = took.Seconds()
	return res, nil
}

// writeClosedMarkers writes n closed markers to the state topic, shaped as
// the runtime writes them: a finished saga's ID, correlation ID (a UUID),
// state, times, journal position and the digests of the five events it
// journaled.
func writeClosedMarkers(ctx context.Context, cl *kgo.Client, serde *schema.Serde, topic string, n int) error {
	codec, err := schema.NewCodec[saga.Snapshot](serde, saga.SnapshotSchema)
	if err != nil {
		return err
	}
	now := time.Now()
	closedAt := strconv.AppendInt(nil, now.UnixMilli(), 10)
	var (
		mu       sync.Mutex
		firstErr error
	)
	for i := range n {
		id := fmt.Sprintf("closed-%08d", i)
		snap := saga.Snapshot{Version: saga.SnapshotVersion, SagaID: id, CorrelationID: uuid.NewString(), State: string(saga.StateCompleted),
			Closed: true, Completed: []string{}, Seen: []string{}, Started: now, Since: now, JournalOffset: int64(i)}
		for range 5 { // the digests of the five events an orders saga journals
			snap.SeenDigests = append(snap.SeenDigests, rand.Int64())
		}
		slices.Sort(snap.SeenDigests)
		value, err := codec.Encode(ctx, topic, &snap)
		if err != nil {
			return err
		}
		cl.Produce(ctx, &kgo.Record{Topic: topic, Key: []byte(id), Value: value, Headers: []kgo.RecordHeader{
			{Key: saga.HeaderSnapshotKind, Value: []byte("closed")}, {Key: saga.HeaderClosedAt, Value: closedAt}}},
			func(_ *kgo.Record, err error) {
				if err != nil {
					mu.Lock()
					firstErr = err
					mu.Unlock()
				}
			})
	}
	if err := cl.Flush(ctx); err != nil {
		return err
	}
	return firstErr
}

func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}
