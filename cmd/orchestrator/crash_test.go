package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/examples/orders"
	"github.com/sagapipe/sagapipe/internal/testkit"
	"github.com/sagapipe/sagapipe/kread"
	"github.com/sagapipe/sagapipe/saga"
	"github.com/sagapipe/sagapipe/schema"
	"github.com/sagapipe/sagapipe/statemachine"
)

// The crash tests run every part in its own OS process, as in production:
// the dev broker and registry, the participants, and one to three
// orchestrators (`orchestrator run`), which they kill and restart while
// orders flow. After each, every saga must be terminal with its outcome
// announced once, each decision journaled once, and each effect applied
// once at the participants.

var (
	binOnce sync.Once
	binDir  string // the binary, and the children's TMPDIR; removed after the tests
	binPath string
	binErr  error
)

// binary builds cmd/orchestrator once per test run.
func binary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "sagapipe-crash-")
		if err != nil {
			binErr = err
			return
		}
		binDir = dir
		if binErr = os.Mkdir(filepath.Join(dir, "tmp"), 0o755); binErr != nil {
			return
		}
		binPath = filepath.Join(dir, "orchestrator")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// proc is a child process whose output is kept for the failure report.
type proc struct {
	name string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	err  error
}

func spawn(t *testing.T, name string, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, cmd: exec.Command(binary(t), args...), out: &syncBuffer{}, done: make(chan struct{})}
	// A child's temporary directories (a runtime's default state
	// directory) go where the tests remove them: a child killed by a test
	// cannot remove its own.
	p.cmd.Env = append(append(os.Environ(), "TMPDIR="+filepath.Join(binDir, "tmp")), env...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	testkit.DieWithParent(p.cmd)
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("--- %s output:\n%s", p.name, lastLines(p.out.String(), 40))
		}
	})
	return p
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func (p *proc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// term sends SIGTERM and returns how long the process took to exit and its
// exit code.
func (p *proc) term(t *testing.T, within time.Duration) (time.Duration, int) {
	t.Helper()
	began := time.Now()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(within):
		t.Fatalf("%s did not exit within %v of SIGTERM", p.name, within)
	}
	return time.Since(began), p.cmd.ProcessState.ExitCode()
}

func (p *proc) waitFor(t *testing.T, re *regexp.Regexp, within time.Duration) []string {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if m := re.FindStringSubmatch(p.out.String()); m != nil {
			return m
		}
		select {
		case <-p.done:
			t.Fatalf("%s exited (%v) before printing %s", p.name, p.err, re)
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("%s did not print %s within %v", p.name, re, within)
	return nil
}

// world is a dev stack and participants in their own processes.
type world struct {
	t                    *testing.T
	brokers, registry    string
	dev, participants    *proc
	ledgerFile           string
	orchestratorEnv      []string
	terminal             map[string]statemachine.State // each saga's terminal state, once verify ran
	placed               []string
	orchestratorsSpawned int
}

func newWorld(t *testing.T) *world {
	t.Helper()
	dev := spawn(t, "dev", nil, "dev", "--kafka-port", "0", "--registry-port", "0")
	m := dev.waitFor(t, regexp.MustCompile(`kafka:\s+(\S+)\nregistry: (\S+)`), 20*time.Second)
	return newWorldOn(t, dev, m[1], m[2], "3s")
}

// newWorldOn creates the topics on a running dev stack and starts the
// participants; orchestrators get sessionTimeout.
func newWorldOn(t *testing.T, dev *proc, brokers, registry, sessionTimeout string, participantArgs ...string) *world {
	t.Helper()
	w := &world{t: t, brokers: brokers, registry: registry, dev: dev, ledgerFile: filepath.Join(t.TempDir(), "ledger.json")}
	topics := spawn(t, "topics", nil, "topics", "ensure", "--brokers", w.brokers, "--partitions", "6")
	<-topics.done
	if topics.err != nil {
		t.Fatalf("topics ensure: %v\n%s", topics.err, topics.out.String())
	}
	w.participants = spawn(t, "participants", nil, append([]string{"participants", "--brokers", w.brokers, "--registry", w.registry,
		"--ledger-out", w.ledgerFile, "--decline-rate", "0.2", "--latency", "1ms"}, participantArgs...)...)
	w.participants.waitFor(t, regexp.MustCompile(`participants running`), 20*time.Second)
	w.orchestratorEnv = []string{
		"SAGAPIPE_BROKERS=" + w.brokers, "SAGAPIPE_REGISTRY_URL=" + w.registry, "SAGAPIPE_HTTP_ADDR=127.0.0.1:0",
		"SAGAPIPE_SHUTDOWN_GRACE=10s", "SAGAPIPE_SESSION_TIMEOUT=" + sessionTimeout, "SAGAPIPE_TRANSACTION_TIMEOUT=5s",
		"SAGAPIPE_ORDERS_STEP_TIMEOUT=3s", "SAGAPIPE_LOG_LEVEL=info", "OTEL_SDK_DISABLED=true",
	}
	return w
}

func (w *world) orchestrator() *proc {
	w.orchestratorsSpawned++
	p := spawn(w.t, fmt.Sprintf("orchestrator-%d", w.orchestratorsSpawned), w.orchestratorEnv, "run")
	p.waitFor(w.t, regexp.MustCompile(`sagapipe service started`), 20*time.Second)
	return p
}

func (w *world) opts() []kgo.Opt { return []kgo.Opt{kgo.SeedBrokers(w.brokers)} }

// place produces n orders over about spread, so that a kill lands mid-load.
func (w *world) place(n int, spread time.Duration) {
	w.t.Helper()
	ctx := context.Background()
	serde, err := schema.NewSerde(w.registry, schema.WithSubjectNameStrategy(schema.RecordNameStrategy))
	if err != nil {
		w.t.Fatal(err)
	}
	s, err := orders.Saga(time.Second)
	if err != nil {
		w.t.Fatal(err)
	}
	cl, err := kgo.NewClient(w.opts()...)
	if err != nil {
		w.t.Fatal(err)
	}
	defer cl.Close()
	starter, err := s.NewStarter(cl, serde, saga.StartSource("crash-test"))
	if err != nil {
		w.t.Fatal(err)
	}
	for range n {
		o := orders.DemoOrder(len(w.placed))
		rec, err := starter.Record(ctx, o.OrderID, o)
		if err != nil {
			w.t.Fatal(err)
		}
		if err := cl.ProduceSync(ctx, rec).FirstErr(); err != nil {
			w.t.Fatal(err)
		}
		w.placed = append(w.placed, string(rec.Key))
		if spread > 0 {
			time.Sleep(spread / time.Duration(n))
		}
	}
}

// outcomes reads the outcomes topic: every announcement, by order.
func (w *world) outcomes() map[string][]string {
	w.t.Helper()
	got := map[string][]string{}
	err := kread.ToEnd(context.Background(), w.opts(), orders.OutcomesTopic, nil, func(r *kgo.Record) error {
		typ, _ := schema.Header(r.Headers, schema.HeaderType)
		got[string(r.Key)] = append(got[string(r.Key)], typ)
		return nil
	})
	if err != nil {
		w.t.Fatal(err)
	}
	return got
}

// waitAnnounced waits until at least n orders have announced an outcome.
func (w *world) waitAnnounced(n int, within time.Duration) {
	w.t.Helper()
	deadline := time.Now().Add(within)
	for {
		got := len(w.outcomes())
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			w.t.Fatalf("%d of %d orders announced an outcome within %v", got, n, within)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// verify checks the guarantees once every placed order has an outcome.
func (w *world) verify() {
	t := w.t
	t.Helper()
	w.waitAnnounced(len(w.placed), 2*time.Minute)
	announced := w.outcomes()
	for _, id := range w.placed {
		if len(announced[id]) != 1 {
			t.Errorf("%s announced %v, want exactly one outcome", id, announced[id])
		}
	}

	// The journal: each event applied once per saga, one terminal entry each.
	serde, err := schema.NewSerde(w.registry, schema.WithSubjectNameStrategy(schema.RecordNameStrategy))
	if err != nil {
		t.Fatal(err)
	}
	codec, err := schema.NewCodec[saga.JournalEntry](serde, saga.JournalEntrySchema)
	if err != nil {
		t.Fatal(err)
	}
	applied := map[string]int{}
	terminal := map[string][]string{}
	err = kread.ToEnd(context.Background(), w.opts(), "orders.journal", nil, func(r *kgo.Record) error {
		e, err := codec.Decode(context.Background(), r.Value)
		if err != nil {
			return err
		}
		if e.Outcome == saga.OutcomeApplied {
			applied[e.SagaID+" "+e.CEID]++
			switch e.ToState {
			case string(saga.StateCompleted), string(saga.StateCompensated), string(saga.StateCompensationFailed):
				terminal[e.SagaID] = append(terminal[e.SagaID], e.ToState)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for k, n := range applied {
		if n > 1 {
			t.Errorf("journal: %s applied %d times", k, n)
		}
	}
	for _, id := range w.placed {
		if len(terminal[id]) != 1 {
			t.Errorf("journal: %s reached terminal states %v, want one", id, terminal[id])
		}
	}

	// The participants: stop them, read what they did.
	if _, code := w.participants.term(t, 20*time.Second); code != 0 {
		t.Fatalf("participants exited %d", code)
	}
	raw, err := os.ReadFile(w.ledgerFile)
	if err != nil {
		t.Fatal(err)
	}
	var l orders.Ledger
	if err := json.Unmarshal(raw, &l); err != nil {
		t.Fatal(err)
	}
	outcomes := map[string]statemachine.State{}
	for id, states := range terminal {
		if len(states) == 1 {
			outcomes[id] = statemachine.State(states[0])
		}
	}
	w.terminal = outcomes
	// Each outcome matches how its saga ended.
	for id, state := range outcomes {
		want := orders.EvOrderRejected.Type
		if state == saga.StateCompleted {
			want = orders.EvOrderConfirmed.Type
		}
		if got := announced[id]; len(got) == 1 && got[0] != want {
			t.Errorf("%s ended %s but announced %s, want %s", id, state, got[0], want)
		}
	}
	for _, v := range l.Check(w.placed, outcomes) {
		t.Errorf("participants: %s", v)
	}
	compensated := 0
	for _, states := range terminal {
		if len(states) == 1 && states[0] == string(saga.StateCompensated) {
			compensated++
		}
	}
	if compensated == 0 {
		t.Errorf("no saga was compensated: the run did not exercise compensation")
	}
}

func TestCrashKill9MidLoadThenRestart(t *testing.T) {
	w := newWorld(t)
	a := w.orchestrator()
	placed := make(chan struct{})
	go func() { defer close(placed); w.place(400, 3*time.Second) }()
	w.waitAnnounced(80, time.Minute)
	a.kill() // SIGKILL: no shutdown at all, possibly mid-transaction
	<-placed
	w.orchestrator()
	w.verify()
}

func TestCrashSIGTERMMidLoadShutsDownWithinGrace(t *testing.T) {
	w := newWorld(t)
	a := w.orchestrator()
	placed := make(chan struct{})
	go func() { defer close(placed); w.place(400, 3*time.Second) }()
	w.waitAnnounced(80, time.Minute)
	took, code := a.term(t, 15*time.Second)
	if code != 0 || took > 10*time.Second {
		t.Errorf("SIGTERM: exit %d after %v, want 0 within the 10s grace", code, took)
	}
	if out := a.out.String(); !strings.Contains(out, `"msg":"stopped"`) {
		t.Errorf("no graceful stop logged:\n%s", lastLines(out, 10))
	}
	<-placed
	w.orchestrator()
	w.verify()
}

func TestCrashThreeInstancesOneKilledOneAdded(t *testing.T) {
	w := newWorld(t)
	w.orchestrator()
	b := w.orchestrator()
	w.orchestrator()
	placed := make(chan struct{})
	go func() { defer close(placed); w.place(600, 4*time.Second) }()
	w.waitAnnounced(120, time.Minute)
	b.kill()
	w.orchestrator()
	<-placed
	w.verify()
}

// A shutdown that cannot finish (the broker is gone) is cut short by a
// second signal: the process exits at once, non-zero.
func TestCrashSecondSignalExitsAtOnce(t *testing.T) {
	w := newWorld(t)
	a := w.orchestrator()
	w.place(20, 0)
	w.waitAnnounced(20, time.Minute)
	w.dev.kill() // nothing can be committed or left any more
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	a.waitFor(t, regexp.MustCompile(`a second one exits at once`), 10*time.Second)
	select {
	case <-a.done:
		t.Fatalf("the first signal ended the process (%v): nothing for the second to cut short", a.err)
	case <-time.After(time.Second): // still shutting down, stuck on the broker
	}
	took, code := a.term(t, 3*time.Second)
	if code == 0 || took > 2*time.Second {
		t.Fatalf("second SIGTERM: exit %d after %v, want non-zero at once", code, took)
	}
}
