package dlq_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/dlq"
	"github.com/sagapipe/sagapipe/internal/testkit"
)

// killChildEnv names the broker a worker process (this test binary,
// re-executed) consumes from; see runKillChild.
const killChildEnv = "DLQ_KILL_CHILD_BROKERS"

// poisoned tells which jobs the worker dead-letters: one in ten.
func poisoned(value string) bool { return strings.HasSuffix(value, "7") }

// runKillChild is the worker of TestTransactionalDispatchSurvivesKill9: a
// transactional consumer of "jobs" that pipes each good job to "out" and
// dead-letters the poisoned ones, until it is killed. It appends each job
// it handles to the file named by DLQ_KILL_CHILD_LOG, so the test can tell
// that a kill cut work short.
func runKillChild(brokers string) {
	log, err := os.OpenFile(os.Getenv("DLQ_KILL_CHILD_LOG"), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	var c *dlq.Consumer
	handler := func(ctx context.Context, r *kgo.Record) error {
		fmt.Fprintf(log, "%s\n", r.Value)
		time.Sleep(time.Millisecond) // long enough for kills to land mid-batch
		if poisoned(string(r.Value)) {
			return dlq.Poison(errors.New("bad job"))
		}
		return c.Client().ProduceSync(ctx, &kgo.Record{Topic: "out", Key: r.Key, Value: r.Value}).FirstErr()
	}
	c, err = dlq.NewConsumer("workers", []string{"jobs"}, handler, dlq.Policy{},
		dlq.WithTransactionalID("jobs-worker"),
		dlq.WithClientOptions(kgo.SeedBrokers(brokers), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
			// A restarted worker takes its predecessor's place at once.
			kgo.InstanceID("worker"), kgo.SessionTimeout(6*time.Second)))
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	fmt.Println("running")
	if err := c.Run(context.Background()); err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
}

// startKillChild starts a worker process on the stack.
func startKillChild(t *testing.T, brokers, log string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), killChildEnv+"="+brokers, "DLQ_KILL_CHILD_LOG="+log)
	testkit.DieWithParent(cmd)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "running\n" {
		t.Fatalf("worker process: %q, %v", line, err)
	}
	return cmd
}

// A transactional worker killed with -9 again and again mid-load: its open
// transaction (piped output, dead letters, offsets) is aborted, and the
// next worker does that work again. In the end every good job is in "out"
// once and every poisoned one in the DLQ once.
func TestTransactionalDispatchSurvivesKill9(t *testing.T) {
	s := testkit.StartStack(t)
	testkit.CreateTopics(t, s.KafkaAddrs(), 2, "jobs")
	testkit.CreateTopics(t, s.KafkaAddrs(), 2, "jobs.dlq")
	testkit.CreateTopics(t, s.KafkaAddrs(), 1, "out")
	const perPartition = 400
	produce(t, s, "jobs", 2, perPartition)
	brokers := strings.Join(s.KafkaAddrs(), ",")
	log := t.TempDir() + "/handled"

	kills := 0
	worker := startKillChild(t, brokers, log)
	for range 6 {
		time.Sleep(400 * time.Millisecond)
		_ = worker.Process.Kill()
		_ = worker.Wait()
		kills++
		worker = startKillChild(t, brokers, log)
	}

	// The last worker finishes: the group's offsets reach the end.
	adm := kadm.NewClient(testkit.Client(t, s.KafkaAddrs()))
	deadline := time.Now().Add(60 * time.Second)
	for {
		offsets, err := adm.FetchOffsets(context.Background(), "workers")
		done := err == nil
		for p := range int32(2) {
			o, ok := offsets.Lookup("jobs", p)
			done = done && ok && o.At == perPartition
		}
		if done {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the jobs were not all committed within 60 s of the last kill: %v %v", offsets, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	_ = worker.Process.Kill()
	_ = worker.Wait()

	var good, bad []string
	for p := range 2 {
		for n := range perPartition {
			v := strconv.Itoa(p) + "-" + strconv.Itoa(n)
			if poisoned(v) {
				bad = append(bad, v)
			} else {
				good = append(good, v)
			}
		}
	}
	slices.Sort(good)
	slices.Sort(bad)
	if got := committed(t, s, "out"); !slices.Equal(got, good) {
		t.Errorf("out holds %d records, want the %d good jobs once each (%s)", len(got), len(good), diff(got, good))
	}
	if got := committed(t, s, "jobs.dlq"); !slices.Equal(got, bad) {
		t.Errorf("the DLQ holds %d records, want the %d poisoned jobs once each (%s)", len(got), len(bad), diff(got, bad))
	}
	raw, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	handled := strings.Count(string(raw), "\n")
	if handled <= len(good)+len(bad) {
		t.Fatalf("%d handler calls for %d jobs across %d kills: no kill cut a batch short, the test proved nothing", handled, len(good)+len(bad), kills)
	}
	t.Logf("%d kills; %d handler calls for %d jobs", kills, handled, len(good)+len(bad))
}

// diff names the first values got holds twice or misses.
func diff(got, want []string) string {
	count := map[string]int{}
	for _, v := range got {
		count[v]++
	}
	var twice, missing []string
	for v, n := range count {
		if n > 1 {
			twice = append(twice, v)
		}
	}
	for _, v := range want {
		if count[v] == 0 {
			missing = append(missing, v)
		}
	}
	slices.Sort(twice)
	return fmt.Sprintf("twice: %v; missing: %v", twice[:min(len(twice), 5)], missing[:min(len(missing), 5)])
}
