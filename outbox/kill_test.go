package outbox_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/sync/errgroup"

	"github.com/sagapipe/sagapipe/internal/testkit"
	"github.com/sagapipe/sagapipe/outbox"
	"github.com/sagapipe/sagapipe/pipe"
	"github.com/sagapipe/sagapipe/schema"
)

// The test binary runs as the participant when these are set.
const (
	childModeEnv     = "SAGAPIPE_OUTBOX_CHILD" // "crash" or "recover"
	childBrokersEnv  = "SAGAPIPE_OUTBOX_BROKERS"
	childRegistryEnv = "SAGAPIPE_OUTBOX_REGISTRY"
	childDatabaseEnv = "SAGAPIPE_OUTBOX_DATABASE"
)

// A participant killed with SIGKILL after its transaction committed and
// before its relay published the reply: restarted, it publishes the
// reply, and the command, which comes again (its offset was never
// committed), is answered again and not applied again.
func TestKillBetweenCommitAndPublish(t *testing.T) {
	w := newWorld(t)
	rec, env := command(t, w.codecs, "saga-1", Debit{Account: "alice", Cents: 250})
	produce(t, w.client(t), rec)

	crashed := startChild(t, w, "crash")
	if err := crashed.wait(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	if sig := crashed.signal(); sig != syscall.SIGKILL {
		t.Fatalf("the participant ended by %v, want SIGKILL after its commit; its output:\n%s", sig, crashed.out)
	}
	// Where the crash left it: the debit and its reply committed, nothing
	// published. Were the reply out already, the test would have missed
	// the window it is about.
	if n := count(t, w.pool, "SELECT count(*) FROM effects"); n != 1 {
		t.Fatalf("after the kill, %d debits are committed, want 1", n)
	}
	if n := count(t, w.pool, "SELECT count(*) FROM sagapipe_outbox WHERE published_at IS NULL"); n != 1 {
		t.Fatalf("after the kill, %d replies wait in the outbox, want 1", n)
	}
	if n := records(t, w.client(t), inboxTopic); n != 0 {
		t.Fatalf("%d replies were published before the kill: the kill came after the publish, not between the commit and the publish", n)
	}

	restarted := startChild(t, w, "recover")
	// The reply of the first run, and the answer to the command's
	// redelivery.
	testkit.WaitUntil(t, 30*time.Second, func() error {
		rows := count(t, w.pool, "SELECT count(*) FROM sagapipe_outbox")
		unpublished := count(t, w.pool, "SELECT count(*) FROM sagapipe_outbox WHERE published_at IS NULL")
		if rows != 2 || unpublished != 0 {
			return fmt.Errorf("the outbox holds %d replies, %d unpublished; want 2, all published (participant output:\n%s)", rows, unpublished, restarted.out)
		}
		return nil
	})
	if err := restarted.stop(); err != nil {
		t.Fatal(err)
	}

	replies := testkit.Consume(t, w.stack.KafkaAddrs(), inboxTopic, 2, nil)
	for _, r := range replies {
		reply, err := w.codecs.debited.Decode(context.Background(), r.Value)
		if err != nil {
			t.Fatal(err)
		}
		if c := testkit.Header(r, schema.HeaderCausationID); c != env.ID || reply.Balance != 750 {
			t.Errorf("reply %+v to %s, want a balance of 750 answering %s", reply, c, env.ID)
		}
	}
	if n := records(t, w.client(t), inboxTopic); n != 2 {
		t.Errorf("%d replies published, want 2: one per handling of the command", n)
	}
	if n := count(t, w.pool, "SELECT count(*) FROM effects"); n != 1 {
		t.Errorf("the debit was applied %d times, want once", n)
	}
}

// child is the participant running in a process of its own.
type child struct {
	cmd  *exec.Cmd
	out  *testkit.SyncBuffer
	done chan struct{}
	err  error // of Wait, once done
}

func startChild(t *testing.T, w *world, mode string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childModeEnv+"="+mode,
		childBrokersEnv+"="+strings.Join(w.stack.KafkaAddrs(), ","),
		childRegistryEnv+"="+w.stack.RegistryURL(), childDatabaseEnv+"="+w.pg.URL)
	c := &child{cmd: cmd, out: &testkit.SyncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = c.out, c.out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // dies with the test
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { c.err = cmd.Wait(); close(c.done) }()
	t.Cleanup(func() {
		select {
		case <-c.done:
		default:
			_ = cmd.Process.Kill()
			<-c.done
		}
	})
	return c
}

func (c *child) wait(timeout time.Duration) error {
	select {
	case <-c.done:
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("the participant did not end within %s; its output:\n%s", timeout, c.out)
	}
}

func (c *child) signal() syscall.Signal {
	ws, _ := c.cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ws.Signaled() {
		return 0
	}
	return ws.Signal()
}

// stop ends the participant as an orchestrator would (SIGTERM), and
// wants it to stop cleanly.
func (c *child) stop() error {
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	if err := c.wait(20 * time.Second); err != nil {
		return err
	}
	if c.err != nil {
		return fmt.Errorf("the participant stopped with %v; its output:\n%s", c.err, c.out)
	}
	return nil
}

func childMode() string { return os.Getenv(childModeEnv) }

// runChild runs the participant and exits.
func runChild(mode string) {
	if err := participant(mode); err != nil {
		fmt.Fprintln(os.Stderr, "participant:", err)
		os.Exit(2)
	}
	os.Exit(0)
}

// participant runs the accounts participant until SIGTERM; in mode
// "crash" it kills itself after the first command's transaction commits.
func participant(mode string) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	pool, err := pgxpool.New(ctx, os.Getenv(childDatabaseEnv))
	if err != nil {
		return err
	}
	defer pool.Close()
	store, err := outbox.New(ctx, pool)
	if err != nil {
		return err
	}
	c, err := newCodecs(os.Getenv(childRegistryEnv))
	if err != nil {
		return err
	}
	cl, err := kgo.NewClient(workerClientOpts(strings.Split(os.Getenv(childBrokersEnv), ","), "accounts")...)
	if err != nil {
		return err
	}
	defer cl.Close()
	handler := outbox.Handler(store, debit(c, nil, nil))
	if mode == "crash" {
		committed := handler
		handler = func(ctx context.Context, cmd Debit, env schema.Envelope) (pipe.Reply, error) {
			reply, err := committed(ctx, cmd, env)
			if err == nil {
				// The transaction is committed; the relay has not had the
				// time to publish. A power cut now:
				_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
				select {}
			}
			return reply, err
		}
	} else if mode != "recover" {
		return errors.New("unknown mode " + mode)
	}
	worker, err := pipe.NewStageWorker(cl, c.debit, handler)
	if err != nil {
		return err
	}
	relay, err := outbox.NewRelay(store, cl, outbox.WithLogger(slog.New(slog.NewTextHandler(os.Stderr, nil))))
	if err != nil {
		return err
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return worker.Run(gctx) })
	g.Go(func() error { return relay.Run(gctx) })
	return g.Wait()
}
