package main

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	bin "encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/Shopify/toxiproxy/v2"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/examples/orders"
	"github.com/sagapipe/sagapipe/examples/pgpayment"
	"github.com/sagapipe/sagapipe/internal/testkit"
	"github.com/sagapipe/sagapipe/kread"
	"github.com/sagapipe/sagapipe/schema"
)

// The chaos scenarios (make chaos; skipped under -short, which make test
// uses) hurt a running system the way production does, each part in its
// own OS process on a persistent dev stack: the broker killed with -9 and
// restarted on its ports, the registry out of reach for 15 s, 20
// orchestrator kill -9s across three instances, 50,000 garbage records in
// the inbox. Each drives 2,000 sagas, then checks the invariants from the
// topics and the participants' ledger, not from the process that was
// hurt (world.verify), and adds a row to the table printed at the end.

// chaosSagas is how many sagas each scenario drives.
const chaosSagas = 2000

// chaosRow is one scenario's line of the table.
type chaosRow struct {
	scenario            string
	sagas               int
	faults              string
	lost, doubled, dlqd int
	recover             time.Duration
	maxLatency          time.Duration
}

var (
	chaosMu    sync.Mutex
	chaosTable []chaosRow
)

func printChaosTable(w io.Writer) {
	chaosMu.Lock()
	defer chaosMu.Unlock()
	if len(chaosTable) == 0 {
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SCENARIO\tSAGAS\tFAULTS\tLOST\tDOUBLED\tDLQ'D\tRECOVERED IN\tMAX SAGA LATENCY")
	for _, r := range chaosTable {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%d\t%d\t%v\t%v\n", r.scenario, r.sagas, r.faults, r.lost, r.doubled, r.dlqd,
			r.recover.Round(100*time.Millisecond), r.maxLatency.Round(100*time.Millisecond))
	}
	_ = tw.Flush()
}

// freePort returns a TCP port free on 127.0.0.1 just now.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// proxy is a TCP proxy that can cut every connection through it and
// refuse new ones: an unreachable service.
type proxy struct {
	l      net.Listener
	target string
	down   atomic.Bool
	mu     sync.Mutex
	conns  map[net.Conn]bool
	wg     sync.WaitGroup
}

func newProxy(t *testing.T, target string) *proxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{l: l, target: target, conns: map[net.Conn]bool{}}
	p.wg.Go(p.serve)
	t.Cleanup(func() { l.Close(); p.cut(); p.wg.Wait() })
	return p
}

func (p *proxy) url() string { return "http://" + p.l.Addr().String() }

func (p *proxy) serve() {
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		if p.down.Load() {
			c.Close()
			continue
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns[c], p.conns[up] = true, true
		p.mu.Unlock()
		pipe := func(dst, src net.Conn) {
			_, _ = io.Copy(dst, src)
			dst.Close()
			src.Close()
		}
		p.wg.Go(func() { pipe(up, c) })
		p.wg.Go(func() { pipe(c, up) })
	}
}

// cut closes every connection through the proxy.
func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
	}
	clear(p.conns)
}

// chaosWorld is a world whose dev stack keeps its data and its ports (so
// it can be killed and started again) and whose registry is reached
// through a proxy (so it can be taken away).
type chaosWorld struct {
	*world
	t                  *testing.T
	dataDir            string
	kafkaPort, regPort int
	registryProxy      *proxy
	kafkaProxy         *toxiproxy.Proxy // with throughKafkaProxy
	advertisedPort     int              // the kafka proxy's
	participantArgs    []string         // for the participants process
	paymentDSN         string           // with paymentOnPostgres
	paymentsSpawned    int
	orchestrators      []*proc
}

func (cw *chaosWorld) orchestrator() *proc {
	p := cw.world.orchestrator()
	cw.orchestrators = append(cw.orchestrators, p)
	return p
}

// instance starts an orchestrator that is a static member of its groups
// under id, as a StatefulSet's pod restarted under its name would be.
func (cw *chaosWorld) instance(id string) *proc {
	env := cw.orchestratorEnv
	cw.orchestratorEnv = append(slices.Clone(env), "SAGAPIPE_INSTANCE_ID="+id)
	defer func() { cw.orchestratorEnv = env }()
	return cw.orchestrator()
}

// chaosOption changes the chaos world before its stack starts.
type chaosOption func(*chaosWorld)

// throughKafkaProxy puts a toxiproxy proxy in front of the broker; the
// broker advertises the proxy's port, so every client (orchestrators,
// participants, the test's own) reaches it through the proxy.
func throughKafkaProxy(cw *chaosWorld) {
	t := cw.t
	port := freePort(t)
	zerolog.SetGlobalLevel(zerolog.WarnLevel) // the toxics log every interrupted copy at trace level
	srv := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(prometheus.NewRegistry()), zerolog.Nop())
	cw.kafkaProxy = toxiproxy.NewProxy(srv, "kafka", "127.0.0.1:"+strconv.Itoa(port), "127.0.0.1:"+strconv.Itoa(cw.kafkaPort))
	if err := cw.kafkaProxy.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cw.kafkaProxy.Stop)
	cw.advertisedPort = port
}

// paymentOnPostgres runs the payment service apart, on PostgreSQL through
// package outbox (examples/pgpayment), so that it can be killed without
// losing the ledger that shows a doubled charge; the participants process
// leaves payment to it. Start it with payment().
func paymentOnPostgres(cw *chaosWorld) {
	pg := testkit.StartPostgres(cw.t)
	dsn, err := pg.CreateDatabase(context.Background(), "payment")
	if err != nil {
		cw.t.Fatal(err)
	}
	cw.paymentDSN = dsn
	cw.participantArgs = []string{"--services", "inventory,shipping"}
}

// payment starts a payment service on PostgreSQL (paymentOnPostgres).
func (cw *chaosWorld) payment() *proc {
	cw.paymentsSpawned++
	p := spawn(cw.t, fmt.Sprintf("payment-%d", cw.paymentsSpawned), nil, "participants", "--brokers", cw.brokers, "--registry", cw.registry,
		"--services", "payment", "--trips=false", "--payment-dsn", cw.paymentDSN, "--decline-rate", "0.2",
		// Restarted under the same ID, as a StatefulSet's pod would be (see
		// the kill storm): it takes its partitions back at once.
		"--instance-id", "payment")
	p.waitFor(cw.t, regexp.MustCompile(`participants running`), 20*time.Second)
	return p
}

// checkPayment checks the money in PostgreSQL once report has run: each
// order charged at most once and refunded at most once, charged = refunded
// + captured, no command applied twice.
func (cw *chaosWorld) checkPayment() {
	t := cw.t
	t.Helper()
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, cw.paymentDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	serde, err := schema.NewSerde(cw.registry, schema.WithSubjectNameStrategy(schema.RecordNameStrategy))
	if err != nil {
		t.Fatal(err)
	}
	payment, err := pgpayment.New(ctx, pool, serde, pgpayment.Config{})
	if err != nil {
		t.Fatal(err)
	}
	violations, err := payment.Check(ctx, cw.placed, cw.terminal)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range violations {
		t.Errorf("payment (PostgreSQL): %s", v)
	}
	var charges int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM payment_ledger WHERE entry = 'charge'").Scan(&charges); err != nil || charges == 0 {
		t.Fatalf("%d charges in PostgreSQL (%v): payment did not run there", charges, err)
	}
}

func newChaosWorld(t *testing.T, opts ...chaosOption) *chaosWorld {
	t.Helper()
	cw := &chaosWorld{dataDir: t.TempDir(), kafkaPort: freePort(t), regPort: freePort(t)}
	cw.t = t
	for _, o := range opts {
		o(cw)
	}
	dev := cw.startDev(t)
	m := dev.waitFor(t, regexp.MustCompile(`kafka:\s+(\S+)\nregistry: (\S+)`), 20*time.Second)
	cw.registryProxy = newProxy(t, strings.TrimPrefix(m[2], "http://"))
	// A CPU-starved orchestrator loses its group with 3 s sessions.
	cw.world = newWorldOn(t, dev, m[1], cw.registryProxy.url(), "10s", cw.participantArgs...)
	return cw
}

func (cw *chaosWorld) startDev(t *testing.T) *proc {
	return spawn(t, "dev", nil, "dev", "--kafka-port", strconv.Itoa(cw.kafkaPort), "--registry-port", strconv.Itoa(cw.regPort),
		"--kafka-advertised-port", strconv.Itoa(cw.advertisedPort),
		"--data-dir", cw.dataDir, "--kafka-log-level", cmp.Or(os.Getenv("CHAOS_KAFKA_LOG"), "none"))
}

// placeAsync places n orders over spread in the background; the returned
// channel is closed when they are all produced.
func (cw *chaosWorld) placeAsync(n int, spread time.Duration) chan struct{} {
	placed := make(chan struct{})
	go func() { defer close(placed); cw.place(n, spread) }()
	return placed
}

// firstOutcomeAfter waits for an outcome announced after since and
// returns how long after since it came: how long the system took to make
// progress again once the fault ended. Sagas are placed throughout the
// faults, so some are in flight when they end.
func (cw *chaosWorld) firstOutcomeAfter(since time.Time, within time.Duration) time.Duration {
	cw.t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		var first time.Time
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := kread.ToEnd(ctx, cw.opts(), orders.OutcomesTopic, nil, func(r *kgo.Record) error {
			if r.Timestamp.After(since) && (first.IsZero() || r.Timestamp.Before(first)) {
				first = r.Timestamp
			}
			return nil
		})
		cancel()
		if err == nil && !first.IsZero() {
			return first.Sub(since)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if os.Getenv("CHAOS_DEBUG") != "" {
		if cl, err := kgo.NewClient(cw.opts()...); err == nil {
			for range 5 {
				groups, err := kadm.NewClient(cl).DescribeGroups(context.Background(), "sagapipe.orders", "sagapipe.trips")
				for _, g := range groups {
					cw.t.Logf("%v group %s: state %s, protocol %s, %d members", time.Now().Format("15:04:05"), g.Group, g.State, g.Protocol, len(g.Members))
					for _, m := range g.Members {
						cw.t.Logf("  member %s client %s host %s", m.MemberID, m.ClientID, m.ClientHost)
					}
				}
				if err != nil {
					cw.t.Logf("describe groups: %v", err)
				}
				time.Sleep(5 * time.Second)
			}
			cl.Close()
		}
		for _, o := range cw.orchestrators {
			_ = o.cmd.Process.Signal(syscall.SIGQUIT)
			<-o.done
			_ = os.WriteFile("/tmp/"+o.name+".dump", []byte(o.out.String()), 0o644)
		}
		_ = os.WriteFile("/tmp/dev.dump", []byte(cw.dev.out.String()), 0o644)
	}
	cw.t.Fatalf("no outcome announced within %v of the fault's end", within)
	return 0
}

// report verifies the invariants and adds the scenario's row.
func (cw *chaosWorld) report(scenario, faults string, recovered time.Duration, garbage int) {
	t := cw.t
	t.Helper()
	cw.explainMissing(2 * time.Minute)
	cw.verify()
	cw.waitCaughtUp(time.Minute)
	announced := cw.outcomes()
	row := chaosRow{scenario: scenario, sagas: len(cw.placed), faults: faults, recover: recovered}
	for _, id := range cw.placed {
		switch n := len(announced[id]); {
		case n == 0:
			row.lost++
		case n > 1:
			row.doubled++
		}
	}
	// Saga latency: from its start record to its outcome.
	started := map[string]time.Time{}
	err := kread.ToEnd(context.Background(), cw.opts(), "orders.inbox", nil, func(r *kgo.Record) error {
		if typ, _ := schema.Header(r.Headers, schema.HeaderType); typ == orders.OrderPlacedType {
			if _, seen := started[string(r.Key)]; !seen {
				started[string(r.Key)] = r.Timestamp
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	err = kread.ToEnd(context.Background(), cw.opts(), orders.OutcomesTopic, nil, func(r *kgo.Record) error {
		if s, ok := started[string(r.Key)]; ok {
			row.maxLatency = max(row.maxLatency, r.Timestamp.Sub(s))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// The dead letters: the injected garbage, and nothing else.
	err = kread.ToEnd(context.Background(), cw.opts(), "orders.inbox.dlq", nil, func(r *kgo.Record) error {
		row.dlqd++
		if _, marked := schema.Header(r.Headers, garbageHeader); !marked && !strings.HasPrefix(string(r.Key), "garbage-") {
			t.Errorf("dead-lettered a record that was not injected: %s/%d key %q headers %v", r.Topic, r.Partition, r.Key, r.Headers)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if row.dlqd != garbage {
		t.Errorf("%d records dead-lettered, want the %d injected", row.dlqd, garbage)
	}
	if row.lost > 0 || row.doubled > 0 {
		t.Errorf("%d sagas lost, %d doubled", row.lost, row.doubled)
	}
	chaosMu.Lock()
	chaosTable = append(chaosTable, row)
	chaosMu.Unlock()
}

// waitCaughtUp waits until every consumer group has consumed every
// committed record of every partition it committed on: its lag back to 0.
// A group whose commit sits before a transaction marker (the marker is an
// offset, not a record) is caught up when no data record follows.
func (cw *chaosWorld) waitCaughtUp(within time.Duration) {
	t := cw.t
	t.Helper()
	ctx := context.Background()
	cl, err := kgo.NewClient(cw.opts()...)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	deadline := time.Now().Add(within)
	for {
		var behind []string
		listed, err := adm.ListGroups(ctx)
		if err == nil {
			var lags kadm.DescribedGroupLags
			lags, err = adm.Lag(ctx, listed.Groups()...)
			lags.Each(func(g kadm.DescribedGroupLag) {
				for topic, ps := range g.Lag {
					for p, l := range ps {
						if l.Lag == 0 {
							continue
						}
						left := 0
						_, rerr := kread.From(ctx, cw.opts(), topic, []int32{p}, map[int32]int64{p: l.Commit.At}, func(*kgo.Record) error {
							left++
							return nil
						})
						if rerr != nil || left > 0 || l.Lag < 0 {
							behind = append(behind, fmt.Sprintf("%s on %s/%d: %d records (%v)", g.Group, topic, p, left, cmp.Or(rerr, l.Err)))
						}
					}
				}
			})
		}
		if err == nil && len(behind) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("consumer lag not back to 0 within %v: %v %v", within, behind, err)
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// explainMissing waits for every placed saga's outcome; past within it
// fails naming each missing saga with what the topics hold of it: its
// start in the inbox, its journal entries.
func (cw *chaosWorld) explainMissing(within time.Duration) {
	cw.t.Helper()
	deadline := time.Now().Add(within)
	for {
		announced := cw.outcomes()
		var missing []string
		for _, id := range cw.placed {
			if len(announced[id]) == 0 {
				missing = append(missing, id)
			}
		}
		if len(missing) == 0 {
			return
		}
		if time.Now().Before(deadline) {
			time.Sleep(time.Second)
			continue
		}
		what := map[string][]string{}
		for _, topic := range []string{"orders.inbox", "orders.journal", "inventory.commands", "payment.commands", "shipping.commands"} {
			err := kread.ToEnd(context.Background(), cw.opts(), topic, nil, func(r *kgo.Record) error {
				if id := string(r.Key); slices.Contains(missing, id) {
					typ, _ := schema.Header(r.Headers, schema.HeaderType)
					what[id] = append(what[id], fmt.Sprintf("%s/%d@%d %s", topic, r.Partition, r.Offset, typ))
				}
				return nil
			})
			if err != nil {
				cw.t.Fatal(err)
			}
		}
		for _, id := range missing {
			cw.t.Errorf("%s has no outcome; the topics hold of it: %v", id, what[id])
		}
		cw.t.FailNow()
	}
}

func skipUnlessChaos(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("a chaos scenario: run by make chaos, skipped under -short (make test)")
	}
}

// TestChaosBrokerKill9 kills the broker with -9 mid-load and starts it
// again on its ports 3 s later.
func TestChaosBrokerKill9(t *testing.T) {
	skipUnlessChaos(t)
	cw := newChaosWorld(t)
	cw.orchestrator()
	cw.orchestrator()
	placed := cw.placeAsync(chaosSagas, 30*time.Second)
	cw.waitAnnounced(chaosSagas/4, 2*time.Minute)
	cw.dev.kill()
	time.Sleep(3 * time.Second)
	cw.dev = cw.startDev(t)
	cw.dev.waitFor(t, regexp.MustCompile(`kafka:\s+\S+`), 20*time.Second)
	back := time.Now()
	recovered := cw.firstOutcomeAfter(back, 3*time.Minute)
	<-placed
	cw.report("broker kill -9, restarted after 3 s", "1 broker kill", recovered, 0)
}

// TestChaosNetworkFaults puts faults between every client and the broker
// mid-load, through a toxiproxy proxy the broker advertises: latency with
// jitter, a bandwidth limit, connections reset, then a 20 s partition (no
// byte passes either way, connections stay open).
func TestChaosNetworkFaults(t *testing.T) {
	skipUnlessChaos(t)
	cw := newChaosWorld(t, throughKafkaProxy)
	cw.orchestrator()
	cw.orchestrator()
	placed := cw.placeAsync(chaosSagas, 60*time.Second)
	cw.waitAnnounced(chaosSagas/10, 2*time.Minute)
	both := func(name, typ string, attrs map[string]any) []map[string]any {
		return []map[string]any{
			{"name": name + "-up", "type": typ, "stream": "upstream", "attributes": attrs},
			{"name": name + "-down", "type": typ, "stream": "downstream", "attributes": attrs},
		}
	}
	phases := []struct {
		d      time.Duration
		toxics []map[string]any
	}{
		{10 * time.Second, both("latency", "latency", map[string]any{"latency": 100, "jitter": 50})},
		{10 * time.Second, []map[string]any{{"name": "bandwidth", "type": "bandwidth", "stream": "downstream", "attributes": map[string]any{"rate": 128}}}},
		{5 * time.Second, both("reset", "reset_peer", map[string]any{"timeout": 200})},
		{20 * time.Second, both("partition", "timeout", map[string]any{"timeout": 0})},
	}
	for _, ph := range phases {
		for _, tx := range ph.toxics {
			body, _ := json.Marshal(tx)
			if _, err := cw.kafkaProxy.Toxics.AddToxicJson(bytes.NewReader(body)); err != nil {
				t.Fatalf("toxic %v: %v", tx["name"], err)
			}
		}
		time.Sleep(ph.d)
		for _, tx := range ph.toxics {
			if err := cw.kafkaProxy.Toxics.RemoveToxic(context.Background(), tx["name"].(string)); err != nil {
				t.Fatalf("removing toxic %v: %v", tx["name"], err)
			}
		}
	}
	healed := time.Now()
	recovered := cw.firstOutcomeAfter(healed, 3*time.Minute)
	<-placed
	cw.report("network: latency, bandwidth, resets, 20 s partition", "4 faults, 45 s", recovered, 0)
}

// TestChaosParticipantKill9s kills the payment service with -9 eight
// times mid-load, one every 3–5 s, and starts it again (every other time
// only after 4 s, past the step's timeout, so that resends pile up). It keeps its money
// in PostgreSQL and sends its replies through package outbox, so a kill
// lands mid-handler (the transaction rolls back, the command comes again)
// or between the commit and the publish (the next process's relay sends
// the reply); either way each charge and refund is applied once.
func TestChaosParticipantKill9s(t *testing.T) {
	skipUnlessChaos(t)
	cw := newChaosWorld(t, paymentOnPostgres)
	cw.orchestrator()
	cw.orchestrator()
	pay := cw.payment()
	placed := cw.placeAsync(chaosSagas, 60*time.Second)
	cw.waitAnnounced(chaosSagas/10, 2*time.Minute)
	var last time.Time
	for i := range 8 {
		time.Sleep(3*time.Second + time.Duration(i%3)*time.Second)
		pay.kill()
		last = time.Now()
		if i%2 == 1 {
			// Down for longer than the payment step's 3 s timeout: the
			// orchestrator resends what it got no answer for, and the
			// restarted service finds those commands twice in its topic.
			time.Sleep(4 * time.Second)
		}
		pay = cw.payment()
	}
	recovered := cw.firstOutcomeAfter(last, 2*time.Minute)
	<-placed
	cw.report("payment participant (PostgreSQL outbox) kill -9s", "8 kills", recovered, 0)
	cw.checkPayment()
}

// TestChaosRegistryUnreachable takes the registry away for 15 s mid-load:
// every connection through its proxy is cut and new ones are refused.
func TestChaosRegistryUnreachable(t *testing.T) {
	skipUnlessChaos(t)
	cw := newChaosWorld(t)
	cw.orchestrator()
	placed := cw.placeAsync(chaosSagas, 40*time.Second)
	cw.waitAnnounced(chaosSagas/4, 2*time.Minute)
	cw.registryProxy.down.Store(true)
	cw.registryProxy.cut()
	time.Sleep(15 * time.Second)
	cw.registryProxy.down.Store(false)
	recovered := cw.firstOutcomeAfter(time.Now(), 2*time.Minute)
	<-placed
	cw.report("registry unreachable for 15 s", "15 s outage", recovered, 0)
}

// TestChaosOrchestratorKill9s kills an orchestrator with -9 twenty times,
// one every 2–4 s, across three instances; the first is never killed and
// must run throughout.
func TestChaosOrchestratorKill9s(t *testing.T) {
	skipUnlessChaos(t)
	cw := newChaosWorld(t)
	healthy := cw.instance("orchestrator-a")
	slots := []string{"orchestrator-b", "orchestrator-c"}
	victims := []*proc{cw.instance(slots[0]), cw.instance(slots[1])}
	placed := cw.placeAsync(chaosSagas, 90*time.Second)
	cw.waitAnnounced(chaosSagas/10, 2*time.Minute)
	var last time.Time
	for i := range 20 {
		time.Sleep(2*time.Second + time.Duration(i%3)*time.Second/2*2)
		v := i % len(victims)
		victims[v].kill()
		last = time.Now()
		victims[v] = cw.instance(slots[v])
		select {
		case <-healthy.done:
			t.Fatalf("the instance never killed exited after %d kills: %v", i+1, healthy.err)
		default:
		}
	}
	recovered := cw.firstOutcomeAfter(last, 2*time.Minute)
	<-placed
	select {
	case <-healthy.done:
		t.Fatalf("the instance never killed exited: %v", healthy.err)
	default:
	}
	cw.report("20 orchestrator kill -9s, 3 instances", "20 kills", recovered, 0)
}

// garbageHeader marks the garbage records (most of them; some have no
// headers at all).
const garbageHeader = "chaos_garbage"

// TestChaosGarbageInTheInbox produces 50,000 garbage records into the
// inbox while sagas run: random bytes, unknown schema IDs, forged replies
// for live sagas that do not decode, no headers, empty and oversized
// headers. Each is dead-lettered once; no saga is hurt.
func TestChaosGarbageInTheInbox(t *testing.T) {
	skipUnlessChaos(t)
	const garbage = 50_000
	cw := newChaosWorld(t)
	cw.orchestrator()
	placed := cw.placeAsync(chaosSagas, 8*time.Second)
	cw.waitAnnounced(chaosSagas/10, 2*time.Minute)
	cl, err := kgo.NewClient(append(cw.opts(), kgo.ProducerBatchMaxBytes(4<<20))...)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	big := strings.Repeat("x", 64<<10)
	var failed atomic.Value
	for i := range garbage {
		rec := &kgo.Record{Topic: "orders.inbox", Key: []byte("garbage-" + strconv.Itoa(i))}
		marker := kgo.RecordHeader{Key: garbageHeader, Value: []byte(strconv.Itoa(i))}
		switch i % 5 {
		case 0: // random bytes
			rec.Value = make([]byte, 16+i%200)
			_, _ = rand.Read(rec.Value)
			rec.Headers = []kgo.RecordHeader{marker}
		case 1: // the wire format with a schema ID the registry does not know
			rec.Value = bin.BigEndian.AppendUint32([]byte{0}, uint32(900_000+i%7))
			rec.Value = append(rec.Value, 1, 2, 3)
			env := schema.NewEnvelope(orders.OrderPlacedType, "chaos", time.Now())
			env.SagaID = "garbage-" + strconv.Itoa(i)
			rec.Headers = append(env.Apply(nil), marker)
		case 2: // a forged reply for a live saga that does not decode
			// One of the sagas announced before the garbage began (placed
			// in order), not cw.placed: place appends to it meanwhile.
			id := orders.DemoOrder(i % (chaosSagas / 10)).OrderID
			env := schema.NewEnvelope("sagapipe.examples.orders.PaymentCharged", "chaos", time.Now())
			env.SagaID, env.SagaStep, env.CorrelationID = id, "payment", id
			rec.Key, rec.Value = []byte(id), []byte("not avro at all")
			rec.Headers = append(env.Apply(nil), marker)
		case 3: // no headers at all
			rec.Value = []byte("headless")
		case 4: // an empty header and an oversized one
			rec.Value = []byte{0, 0, 0, 0, 1}
			rec.Headers = []kgo.RecordHeader{{}, {Key: "huge", Value: []byte(big)}, marker}
		}
		cl.Produce(context.Background(), rec, func(_ *kgo.Record, err error) {
			if err != nil {
				failed.CompareAndSwap(nil, err)
			}
		})
	}
	if err := cl.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err, _ := failed.Load().(error); err != nil {
		t.Fatalf("producing the garbage: %v", err)
	}
	injected := time.Now()
	<-placed
	recovered := cw.firstOutcomeAfter(injected, 2*time.Minute)
	cw.waitDeadLettered(garbage, 5*time.Minute)
	cw.report("50,000 garbage records in the inbox", "50,000 records", recovered, garbage)
}

// waitDeadLettered waits until the inbox's DLQ holds n records.
func (cw *chaosWorld) waitDeadLettered(n int, within time.Duration) {
	cw.t.Helper()
	deadline := time.Now().Add(within)
	for {
		got := 0
		err := kread.ToEnd(context.Background(), cw.opts(), "orders.inbox.dlq", nil, func(*kgo.Record) error { got++; return nil })
		if err == nil && got >= n {
			return
		}
		if time.Now().After(deadline) {
			cw.t.Fatalf("%d of %d garbage records dead-lettered within %v", got, n, within)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// chaosReport prints the table once the tests have run (TestMain).
func chaosReport() { printChaosTable(os.Stdout) }
