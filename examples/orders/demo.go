package orders

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagapipe/sagapipe/dlq"
	"github.com/sagapipe/sagapipe/internal/groups"
	"github.com/sagapipe/sagapipe/kread"
	"github.com/sagapipe/sagapipe/saga"
	"github.com/sagapipe/sagapipe/schema"
	"github.com/sagapipe/sagapipe/statemachine"
)

// The services of a demo run, as they are named in traces (service.name).
const (
	ServiceStorefront   = "storefront"            // places the orders
	ServiceOrchestrator = "sagapipe-orchestrator" // runs the saga
	ServiceInventory    = "inventory-service"
	ServicePayment      = "payment-service"
	ServiceShipping     = "shipping-service"
)

// Services lists every service of a demo run.
var Services = []string{ServiceStorefront, ServiceOrchestrator, ServiceInventory, ServicePayment, ServiceShipping}

// Telemetry is where a service of the demo sends spans, metrics and logs.
// Nil fields mean otel's globals and slog.Default().
type Telemetry struct {
	TracerProvider trace.TracerProvider
	MeterProvider  metric.MeterProvider
	Logger         *slog.Logger
}

// DemoConfig configures RunDemo.
type DemoConfig struct {
	Brokers     []string
	RegistryURL string
	Orders      int           // how many orders to place
	Concurrency int           // sagas in flight at most
	Partitions  int32         // of every topic
	StepTimeout time.Duration // per step, before a resend
	Faults      Faults
	// Progress, when set, is called as sagas finish.
	Progress func(finished, total int)
	// Telemetry, when set, gives each service of Services its telemetry.
	Telemetry func(service string) Telemetry
	// Rate, when positive, paces the orders at that many per second;
	// otherwise they are placed as fast as Concurrency allows.
	Rate float64
	// WarmUp orders are placed (at Rate) and finished before the Orders:
	// what a fresh process pays once (first requests, codecs, a small
	// heap) is not in Elapsed, SagasPerSecond, P50 and P99. The invariants
	// cover them too.
	WarmUp int
	// Window, when set, is called as the first of the Orders (after the
	// warm-up) is placed; the function it returns is called once the last
	// of them finished: a caller measures the same window as Elapsed.
	Window func() (end func())
}

func (c DemoConfig) telemetry(service string) Telemetry {
	if c.Telemetry == nil {
		return Telemetry{}
	}
	return c.Telemetry(service)
}

// Summary is what a demo run did and whether the invariants held.
type Summary struct {
	Orders                                            int
	Completed, Compensated, CompensationFailed, Stuck int
	DeadLettered                                      int
	// ReadyAfter is how long the services took to be ready (see
	// waitReady); the orders are placed after. Orders counts the warm-up's
	// too; Elapsed, SagasPerSecond, P50 and P99 are the measured orders'.
	ReadyAfter     time.Duration
	Elapsed        time.Duration
	SagasPerSecond float64
	P50, P99       time.Duration
	// WarmUpP99 is the warm-up orders' p99 (0 without a warm-up).
	WarmUpP99 time.Duration
	// Violations lists every invariant that did not hold; empty is a pass.
	Violations []string
	// Outcomes is how each saga ended, by order ID.
	Outcomes map[string]statemachine.State
	// DeadLetteredSagas lists the orders that had an inbox record
	// dead-lettered, in order.
	DeadLetteredSagas []string
}

type demoHooks struct {
	mu       sync.Mutex
	started  map[string]time.Time
	outcomes map[string]statemachine.State
	latency  []time.Duration // of the measured sagas
	warmUp   []time.Duration // of the warm-up's, while warming
	warming  bool
	dead     int
	deadIDs  []string
	slots    chan struct{}
	progress func(int, int)
	total    int
}

func (h *demoHooks) OnFinished(id string, outcome statemachine.State) {
	h.mu.Lock()
	if _, again := h.outcomes[id]; !again {
		h.outcomes[id] = outcome
		if h.warming {
			h.warmUp = append(h.warmUp, time.Since(h.started[id]))
		} else {
			h.latency = append(h.latency, time.Since(h.started[id]))
		}
		<-h.slots
	}
	n := len(h.outcomes)
	h.mu.Unlock()
	if h.progress != nil {
		h.progress(n, h.total)
	}
}

func (h *demoHooks) OnDeadLettered(rec *kgo.Record, _ dlq.Failure) {
	h.mu.Lock()
	h.dead++
	h.deadIDs = append(h.deadIDs, string(rec.Key))
	h.mu.Unlock()
}

// services are the orchestrator and the participants of a run.
type services struct {
	serde        *schema.Serde
	saga         *saga.Saga[OrderData]
	runtime      *saga.Runtime[OrderData]
	participants *Participants
	hooks        *demoHooks
	errs         chan error
	stop         func() // ends both and waits for them
}

// start creates the topics and runs the orchestrator and the participants.
func start(ctx context.Context, cfg DemoConfig) (*services, error) {
	serde, err := schema.NewSerde(cfg.RegistryURL, schema.WithSubjectNameStrategy(schema.RecordNameStrategy))
	if err != nil {
		return nil, err
	}
	s, err := Saga(cfg.StepTimeout)
	if err != nil {
		return nil, err
	}
	admin, err := kgo.NewClient(kgo.SeedBrokers(cfg.Brokers...))
	if err != nil {
		return nil, err
	}
	defer admin.Close()
	adm := kadm.NewClient(admin)
	if err := s.EnsureTopics(ctx, adm, cfg.Partitions, 1); err != nil {
		return nil, err
	}
	for _, t := range []string{InventoryTopic, PaymentTopic, ShippingTopic} {
		if err := saga.EnsureTopic(ctx, adm, t, cfg.Partitions, 1, nil); err != nil {
			return nil, err
		}
	}
	hooks := &demoHooks{started: map[string]time.Time{}, outcomes: map[string]statemachine.State{},
		slots: make(chan struct{}, max(cfg.Concurrency, 1)), progress: cfg.Progress, total: cfg.WarmUp + cfg.Orders, warming: cfg.WarmUp > 0}
	orch := cfg.telemetry(ServiceOrchestrator)
	runtime, err := saga.NewRuntime(s, saga.WithClientOptions(kgo.SeedBrokers(cfg.Brokers...)), saga.WithRegistry(serde), saga.WithHooks(hooks), saga.WithTracerProvider(orch.TracerProvider), saga.WithMeterProvider(orch.MeterProvider), saga.WithLogger(orch.Logger))
	if err != nil {
		return nil, err
	}
	sv := &services{serde: serde, saga: s, runtime: runtime, participants: NewParticipants(serde, cfg.Faults), hooks: hooks, errs: make(chan error, 2)}
	sv.participants.Tracing = func(service string) trace.TracerProvider { return cfg.telemetry(service).TracerProvider }
	runCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); sv.errs <- runtime.Run(runCtx) }()
	go func() { defer wg.Done(); sv.errs <- sv.participants.Run(runCtx, cfg.Brokers) }()
	sv.stop = func() {
		cancel()
		wg.Wait()
		runtime.Close()
		close(sv.errs)
	}
	return sv, nil
}

// RunDemo runs the orders saga end to end on the cluster: it creates the
// topics, runs the orchestrator and the three participants, waits until
// they are ready, places the warm-up's orders and waits for them, places
// the orders, waits for every saga to end, and checks the invariants:
// every saga terminal and its outcome announced once, stock reserved =
// released + shipped, money charged = refunded + captured, nothing applied
// twice.
func RunDemo(ctx context.Context, cfg DemoConfig) (Summary, error) {
	sum := Summary{Orders: cfg.WarmUp + cfg.Orders}
	sv, err := start(ctx, cfg)
	if err != nil {
		return sum, err
	}
	hooks := sv.hooks
	// Closed, not sent: every wait below sees it.
	deadline := make(chan struct{})
	timer := time.AfterFunc(cfg.StepTimeout*20+time.Minute, func() { close(deadline) })
	defer timer.Stop()
	readyFrom := time.Now()
	placeErr := waitReady(ctx, cfg, sv, deadline)
	sum.ReadyAfter = time.Since(readyFrom)
	var shop *storefront
	if placeErr == nil {
		shop, placeErr = newStorefront(cfg, sv)
	}
	if placeErr == nil && cfg.WarmUp > 0 {
		if placeErr = shop.place(ctx, sv, deadline, 0, cfg.WarmUp); placeErr == nil {
			placeErr = waitFinished(ctx, sv, cfg.WarmUp, deadline)
		}
		hooks.mu.Lock()
		hooks.warming = false
		if done := len(hooks.outcomes); placeErr == nil && done < cfg.WarmUp {
			placeErr = fmt.Errorf("warm-up: %d of %d sagas finished by the deadline", done, cfg.WarmUp)
		}
		hooks.mu.Unlock()
	}
	begin := time.Now()
	if placeErr == nil {
		end := func() {}
		if cfg.Window != nil {
			end = cfg.Window()
		}
		if placeErr = shop.place(ctx, sv, deadline, cfg.WarmUp, cfg.Orders); placeErr == nil {
			placeErr = waitFinished(ctx, sv, cfg.WarmUp+cfg.Orders, deadline)
		}
		end()
	}
	sum.Elapsed = time.Since(begin)
	if shop != nil {
		shop.close()
	}
	if placeErr == nil {
		// Participants slower than the step timeout still hold commands
		// (resends, compensations of given-up steps) when the last saga
		// ends: their effects count.
		placeErr = drain(ctx, cfg, sv, deadline)
	}
	sv.stop()
	for err := range sv.errs {
		placeErr = errors.Join(placeErr, err)
	}
	if placeErr != nil {
		return sum, placeErr
	}
	summarize(&sum, hooks, sv.participants.Ledger)
	if err := checkOutcomes(ctx, cfg, &sum, hooks); err != nil {
		return sum, err
	}
	return sum, nil
}

// waitFinished waits until n sagas have finished, or the deadline passes
// (the sagas left are reported as stuck).
func waitFinished(ctx context.Context, sv *services, n int, deadline <-chan struct{}) error {
	for {
		sv.hooks.mu.Lock()
		done := len(sv.hooks.outcomes)
		sv.hooks.mu.Unlock()
		if done >= n {
			return nil
		}
		select {
		case <-deadline:
			return nil
		case err := <-sv.errs:
			return fmt.Errorf("a service stopped: %w", err)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// waitReady waits until the orchestrator is ready (it has restored the
// inbox partitions it owns: what its readiness probe asks) and every group,
// the orchestrator's and each participant's, has all of its topic's
// partitions assigned: the moment a deployment starts taking orders.
func waitReady(ctx context.Context, cfg DemoConfig, sv *services, deadline <-chan struct{}) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(cfg.Brokers...))
	if err != nil {
		return err
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	members := map[string]string{InventoryTopic + ".service": InventoryTopic, PaymentTopic + ".service": PaymentTopic, ShippingTopic + ".service": ShippingTopic,
		"sagapipe." + sv.saga.Name(): sv.saga.InboxTopic()} // the runtime's default group
	for {
		waiting := "the orchestrator"
		if sv.runtime.Ready() {
			if waiting, err = groups.Waiting(ctx, adm, members, cfg.Partitions); err != nil {
				return fmt.Errorf("waiting for the participants: %w", err)
			}
		}
		if waiting == "" {
			return nil
		}
		select {
		case <-deadline:
			return fmt.Errorf("not ready at the deadline: waiting for %s", waiting)
		case err := <-sv.errs:
			return fmt.Errorf("a service stopped: %w", err)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// drain waits until nothing is left to handle: no command after what each
// participant committed, no inbox record after what the orchestrator
// committed, in two checks in a row (a participant commits a command only
// once its reply is in the inbox, and the orchestrator its inputs with the
// commands they led to).
func drain(ctx context.Context, cfg DemoConfig, sv *services, deadline <-chan struct{}) error {
	opts := []kgo.Opt{kgo.SeedBrokers(cfg.Brokers...)}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return err
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	queues := []struct{ group, topic string }{
		{InventoryTopic + ".service", InventoryTopic},
		{PaymentTopic + ".service", PaymentTopic},
		{ShippingTopic + ".service", ShippingTopic},
		{"sagapipe." + sv.saga.Name(), sv.saga.InboxTopic()}, // the runtime's default group
	}
	var left []string
	pending := func() (int, error) {
		n := 0
		left = left[:0]
		for _, q := range queues {
			committed, err := adm.FetchOffsets(ctx, q.group)
			if err == nil {
				err = committed.Error()
			}
			if err != nil {
				return 0, fmt.Errorf("draining: offsets of %s: %w", q.group, err)
			}
			from := map[int32]int64{}
			committed.Each(func(o kadm.OffsetResponse) {
				if o.Topic == q.topic {
					from[o.Partition] = o.At
				}
			})
			before := n
			if _, err := kread.From(ctx, opts, q.topic, nil, from, func(*kgo.Record) error { n++; return nil }); err != nil {
				return 0, fmt.Errorf("draining %s: %w", q.topic, err)
			}
			if n > before {
				left = append(left, fmt.Sprintf("%s %d", q.topic, n-before))
			}
		}
		return n, nil
	}
	for idle := 0; idle < 2; {
		n, err := pending()
		if err != nil {
			return err
		}
		if n == 0 {
			idle++
		} else {
			idle = 0
		}
		select {
		case <-deadline:
			return fmt.Errorf("draining: %d commands and replies still unhandled at the deadline (%s)", n, strings.Join(left, ", "))
		case err := <-sv.errs:
			return fmt.Errorf("a service stopped: %w", err)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil
}

// checkOutcomes reads OutcomesTopic: every finished order must have
// announced exactly one outcome, and the one that matches how it ended.
func checkOutcomes(ctx context.Context, cfg DemoConfig, sum *Summary, h *demoHooks) error {
	announced := map[string][]string{}
	err := kread.ToEnd(ctx, []kgo.Opt{kgo.SeedBrokers(cfg.Brokers...)}, OutcomesTopic, nil, func(r *kgo.Record) error {
		id, _ := schema.Header(r.Headers, schema.HeaderSagaID)
		typ, _ := schema.Header(r.Headers, schema.HeaderType)
		announced[id] = append(announced[id], typ)
		return nil
	})
	if err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for id, outcome := range h.outcomes {
		want := EvOrderRejected.Type
		if outcome == saga.StateCompleted {
			want = EvOrderConfirmed.Type
		}
		if got := announced[id]; len(got) != 1 || got[0] != want {
			sum.Violations = append(sum.Violations, fmt.Sprintf("%s (%s): announced %v, want one %s", id, outcome, got, want))
		}
	}
	return nil
}

// storefront places the orders: one client and one Starter for a run, so
// that the warm-up pays their first requests.
type storefront struct {
	cfg     DemoConfig
	cl      *kgo.Client
	starter *saga.Starter
}

func newStorefront(cfg DemoConfig, sv *services) (*storefront, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(cfg.Brokers...))
	if err != nil {
		return nil, err
	}
	starter, err := sv.saga.NewStarter(cl, sv.serde, saga.StartSource("orders-demo"),
		saga.StartTracerProvider(cfg.telemetry(ServiceStorefront).TracerProvider))
	if err != nil {
		cl.Close()
		return nil, err
	}
	return &storefront{cfg: cfg, cl: cl, starter: starter}, nil
}

func (f *storefront) close() { f.cl.Close() }

// place starts a saga for each of the n orders from the from-th
// (DemoOrder), at most Concurrency in flight at once, until a service
// stops or the deadline passes.
func (f *storefront) place(ctx context.Context, sv *services, deadline <-chan struct{}, from, n int) error {
	cfg, cl, starter, hooks := f.cfg, f.cl, f.starter, sv.hooks
	var failed error
	var mu sync.Mutex
	paceFrom := time.Now()
	for i := range n {
		if cfg.Rate > 0 {
			due := paceFrom.Add(time.Duration(float64(i) / cfg.Rate * float64(time.Second)))
			if wait := time.Until(due); wait > 0 {
				select {
				case <-time.After(wait):
				case <-ctx.Done():
					return ctx.Err()
				}
			}
		}
		select {
		case hooks.slots <- struct{}{}:
		case err := <-sv.errs:
			return fmt.Errorf("a service stopped: %w", err)
		case <-deadline:
			return fmt.Errorf("placing orders: %d of %d placed at the deadline", i, n)
		case <-ctx.Done():
			return ctx.Err()
		}
		o := DemoOrder(from + i)
		rec, err := starter.Record(ctx, o.OrderID, o)
		if err != nil {
			return err
		}
		hooks.mu.Lock()
		hooks.started[o.OrderID] = time.Now()
		hooks.mu.Unlock()
		// Each order's saga is a trace of its own, rooted here.
		starter.PublishAsync(trace.ContextWithSpanContext(ctx, trace.SpanContext{}), rec, func(_ *kgo.Record, err error) {
			if err != nil {
				mu.Lock()
				failed = errors.Join(failed, err)
				mu.Unlock()
			}
		})
	}
	if err := cl.Flush(ctx); err != nil {
		return err
	}
	mu.Lock()
	defer mu.Unlock()
	return failed
}

// DemoOrder is the i-th order of a run: "order-%06d", its other fields
// derived from i.
func DemoOrder(i int) OrderPlaced {
	o := OrderPlaced{OrderID: fmt.Sprintf("order-%06d", i), CustomerID: fmt.Sprintf("customer-%04d", i%997),
		SKU: fmt.Sprintf("sku-%03d", i%50), Quantity: int32(1 + i%4), UnitPriceCents: 1250 + int64(i%7)*100,
		Currency: "EUR", PlacedAt: time.Now().Truncate(time.Millisecond), Express: i%5 == 0}
	o.TotalCents = o.UnitPriceCents * int64(o.Quantity)
	return o
}

// percentile is the p-th percentile of durations, 0 for none.
func percentile(durations []time.Duration, p int) time.Duration {
	if len(durations) == 0 {
		return 0
	}
	sorted := slices.Clone(durations)
	slices.Sort(sorted)
	return sorted[min(len(sorted)-1, len(sorted)*p/100)]
}

// summarize counts outcomes and checks the invariants against the ledger.
func summarize(sum *Summary, h *demoHooks, l *Ledger) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, o := range h.outcomes {
		switch o {
		case saga.StateCompleted:
			sum.Completed++
		case saga.StateCompensated:
			sum.Compensated++
		case saga.StateCompensationFailed:
			sum.CompensationFailed++
		}
	}
	sum.DeadLettered = h.dead
	sum.DeadLetteredSagas = slices.Clone(h.deadIDs)
	sum.Outcomes = maps.Clone(h.outcomes)
	sum.Stuck = sum.Orders - len(h.outcomes)
	if sum.Elapsed > 0 {
		sum.SagasPerSecond = float64(len(h.latency)) / sum.Elapsed.Seconds()
	}
	sum.P50, sum.P99 = percentile(h.latency, 50), percentile(h.latency, 99)
	sum.WarmUpP99 = percentile(h.warmUp, 99)
	if sum.Stuck > 0 {
		sum.Violations = append(sum.Violations, fmt.Sprintf("%d sagas did not reach a terminal state", sum.Stuck))
	}
	orders := make([]string, sum.Orders)
	for i := range orders {
		orders[i] = DemoOrder(i).OrderID
	}
	sum.Violations = append(sum.Violations, l.Check(orders, h.outcomes)...)
}
