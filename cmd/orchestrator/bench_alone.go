package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/examples/orders"
	"github.com/sagapipe/sagapipe/saga"
	"github.com/sagapipe/sagapipe/schema"
	"github.com/sagapipe/sagapipe/statemachine"
)

// OrchestratorAlone is the orders saga with the broker and the
// participants in their own processes (as in the in-flight scenario, but
// shipping answers): what this process allocates is the saga runtime's,
// with its Kafka client, codecs and (no-op) telemetry, plus the storefront
// placing the orders through saga.Starter and its own client.
type OrchestratorAlone struct {
	Sagas          int     `json:"sagas"`
	SagasPerSecond float64 `json:"sagas_per_second"`
	AllocsPerSaga  float64 `json:"allocs_per_saga"`
	BytesPerSaga   float64 `json:"alloc_bytes_per_saga"`
	ElapsedSeconds float64 `json:"elapsed_seconds"`
}

// finishLog counts finished sagas and frees a slot for each.
type finishLog struct {
	mu       sync.Mutex
	finished map[string]bool
	slots    chan struct{}
	all      chan struct{}
	want     int
}

func (f *finishLog) OnFinished(id string, _ statemachine.State) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.finished[id] {
		return
	}
	f.finished[id] = true
	<-f.slots
	if len(f.finished) == f.want {
		close(f.all)
	}
}

// benchOrchestratorAlone runs n sagas, at most concurrency in flight, after
// a warm-up, measuring this process's allocations over the n. With profile
// set, it is called between the warm-up and the measured sagas, and again
// after them (to start and stop a profiler).
func benchOrchestratorAlone(ctx context.Context, n, concurrency int, partitions int32, stderr io.Writer, profile func(start bool) error) (OrchestratorAlone, error) {
	res := OrchestratorAlone{Sagas: n}
	self, err := os.Executable()
	if err != nil {
		return res, err
	}
	brokers, registryURL, stopDev, err := startDevProcess(ctx, self, stderr)
	if err != nil {
		return res, err
	}
	defer stopDev()
	s, err := orders.Saga(30 * time.Second)
	if err != nil {
		return res, err
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers))
	if err != nil {
		return res, err
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	if err := ensureOrdersTopics(ctx, adm, s, partitions); err != nil {
		return res, err
	}
	stopParticipants, err := startParticipantsProcess(ctx, self, brokers, registryURL, stderr, "--trips=false")
	if err != nil {
		return res, err
	}
	defer stopParticipants()

	serde, err := schema.NewSerde(registryURL, schema.WithSubjectNameStrategy(schema.RecordNameStrategy))
	if err != nil {
		return res, err
	}
	const warm = 500 // clients, codecs, caches and maps warmed up before measuring
	log := &finishLog{finished: map[string]bool{}, slots: make(chan struct{}, concurrency), all: make(chan struct{}), want: warm + n}
	rt, err := saga.NewRuntime(s, saga.WithClientOptions(kgo.SeedBrokers(brokers)), saga.WithRegistry(serde), saga.WithHooks(log))
	if err != nil {
		return res, err
	}
	rctx, cancel := context.WithCancel(ctx)
	var runErr error
	stopped := make(chan struct{})
	go func() { runErr = rt.Run(rctx); close(stopped) }()
	defer func() { cancel(); <-stopped; rt.Close() }()

	starter, err := s.NewStarter(cl, serde, saga.StartSource("bench"))
	if err != nil {
		return res, err
	}
	var (
		produceMu  sync.Mutex
		produceErr error
	)
	place := func(from, to int) error {
		for i := from; i < to; i++ {
			select {
			case log.slots <- struct{}{}:
			case <-stopped:
				return fmt.Errorf("the runtime stopped: %v", runErr)
			case <-ctx.Done():
				return ctx.Err()
			}
			o := orders.DemoOrder(i)
			rec, err := starter.Record(ctx, o.OrderID, o)
			if err != nil {
				return err
			}
			cl.Produce(ctx, rec, func(_ *kgo.Record, err error) {
				if err != nil {
					produceMu.Lock()
					produceErr = err
					produceMu.Unlock()
				}
			})
		}
		return nil
	}
	finished := func() int {
		log.mu.Lock()
		defer log.mu.Unlock()
		return len(log.finished)
	}
	waitFor := func(want int) error {
		deadline := time.After(5 * time.Minute)
		for finished() < want {
			select {
			case <-deadline:
				return fmt.Errorf("only %d of %d sagas finished", finished(), want)
			case <-stopped:
				return fmt.Errorf("the runtime stopped: %v", runErr)
			case <-time.After(5 * time.Millisecond):
			}
		}
		produceMu.Lock()
		defer produceMu.Unlock()
		return produceErr
	}
	if err := place(0, warm); err != nil {
		return res, err
	}
	if err := waitFor(warm); err != nil {
		return res, err
	}
	runtime.GC()
	if profile != nil {
		if err := profile(true); err != nil {
			return res, err
		}
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	began := time.Now()
	err = place(warm, warm+n)
	if err == nil {
		select {
		case <-log.all:
		case <-time.After(5 * time.Minute):
			err = fmt.Errorf("only %d of %d sagas finished", finished()-warm, n)
		case <-stopped:
			err = fmt.Errorf("the runtime stopped: %v", runErr)
		}
	}
	elapsed := time.Since(began)
	runtime.ReadMemStats(&after)
	if profile != nil {
		if perr := profile(false); err == nil {
			err = perr
		}
	}
	if err != nil {
		return res, err
	}
	produceMu.Lock()
	err = produceErr
	produceMu.Unlock()
	if err != nil {
		return res, fmt.Errorf("placing the orders: %w", err)
	}
	res.ElapsedSeconds = elapsed.Seconds()
	res.SagasPerSecond = float64(n) / elapsed.Seconds()
	res.AllocsPerSaga = float64(after.Mallocs-before.Mallocs) / float64(n)
	res.BytesPerSaga = float64(after.TotalAlloc-before.TotalAlloc) / float64(n)
	return res, nil
}
