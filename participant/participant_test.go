package participant_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/goleak"

	"github.com/sagapipe/sagapipe/devstack"
	"github.com/sagapipe/sagapipe/internal/testkit"
	"github.com/sagapipe/sagapipe/participant"
	"github.com/sagapipe/sagapipe/pipe"
	"github.com/sagapipe/sagapipe/saga"
	"github.com/sagapipe/sagapipe/schema"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type ping struct {
	ID string `avro:"id"`
}

var (
	evPing = saga.Event[ping]("test.Ping", `{"type":"record","name":"Ping","namespace":"test","fields":[{"name":"id","type":"string"}]}`)
	evPong = saga.Event[ping]("test.Pong", `{"type":"record","name":"Pong","namespace":"test","fields":[{"name":"id","type":"string"}]}`)
)

func stack(t *testing.T, topics ...string) (*devstack.Stack, *kgo.Client) {
	t.Helper()
	s := testkit.StartStack(t)
	cl := testkit.Client(t, s.KafkaAddrs(), kgo.ConsumeTopics("replies"), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	testkit.CreateTopics(t, s.KafkaAddrs(), 2, append(topics, "replies")...)
	return s, cl
}

// command produces a Ping command to topic, to be answered on "replies".
func command(t *testing.T, s *devstack.Stack, cl *kgo.Client, topic, id string) {
	t.Helper()
	serde, err := schema.NewSerde(s.RegistryURL(), schema.WithSubjectNameStrategy(schema.RecordNameStrategy))
	if err != nil {
		t.Fatal(err)
	}
	codec, err := schema.NewCodec[ping](serde, evPing.Schema)
	if err != nil {
		t.Fatal(err)
	}
	value, err := codec.Encode(context.Background(), topic, &ping{ID: id})
	if err != nil {
		t.Fatal(err)
	}
	env := schema.NewEnvelope(evPing.Type, "test", time.Now())
	env.SagaID, env.ReplyTo, env.IdempotencyKey = id, "replies", id+"/ping/do"
	if err := cl.ProduceSync(context.Background(), &kgo.Record{Topic: topic, Key: []byte(id), Value: value, Headers: env.Apply(nil)}).FirstErr(); err != nil {
		t.Fatal(err)
	}
}

// TestServiceAnswersWithDeclaredReplies runs a service end to end: the
// command decoded by its declaration, the reply encoded and sent to
// reply_to with the command's saga ID.
// runPinger runs, until ctx ends, a service "pinger" that answers each
// ping on "pings" with a pong; Run's result comes on the channel.
func runPinger(ctx context.Context, cfg participant.Config) <-chan error {
	svc := participant.New("pinger", "pings").Replies(evPong)
	participant.Handle(svc, evPing, func(ctx context.Context, c ping, env schema.Envelope) (pipe.Reply, error) {
		return participant.Reply(ctx, evPong, ping{ID: "pong " + c.ID})
	})
	done := make(chan error, 1)
	go func() { done <- participant.Run(ctx, cfg, svc) }()
	return done
}

func TestServiceAnswersWithDeclaredReplies(t *testing.T) {
	s, cl := stack(t, "pings")
	ctx, cancel := context.WithCancel(context.Background())
	done := runPinger(ctx, participant.Config{Brokers: s.KafkaAddrs(), RegistryURL: s.RegistryURL()})
	command(t, s, cl, "pings", "p-1")
	fctx, fcancel := context.WithTimeout(ctx, 15*time.Second)
	defer fcancel()
	fetches := cl.PollRecords(fctx, 1)
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	recs := fetches.Records()
	if len(recs) != 1 {
		t.Fatalf("no reply: %v", fetches.Err())
	}
	env, err := schema.ReadEnvelope(recs[0].Headers)
	if err != nil || env.Type != evPong.Type || env.SagaID != "p-1" || env.Source != "pinger" || string(recs[0].Key) != "p-1" {
		t.Fatalf("reply %s: %+v, %v", recs[0].Key, env, err)
	}
	if !bytes.Contains(recs[0].Value, []byte("pong p-1")) {
		t.Fatalf("reply value %q", recs[0].Value)
	}
}

// TestRefusedReplySchemaStopsBeforeAnyCommand: a reply schema the registry
// refuses (incompatible with the subject's) fails Run at start, and no
// command is handled: no effect without its reply.
func TestRefusedReplySchemaStopsBeforeAnyCommand(t *testing.T) {
	s, cl := stack(t, "pings")
	serde, err := schema.NewSerde(s.RegistryURL())
	if err != nil {
		t.Fatal(err)
	}
	// The subject holds a Pong whose id is an int: a string id is refused.
	if _, err := serde.Register(context.Background(), "test.Pong",
		`{"type":"record","name":"Pong","namespace":"test","fields":[{"name":"id","type":"int"}]}`); err != nil {
		t.Fatal(err)
	}
	command(t, s, cl, "pings", "p-1")
	var handled atomic.Int32
	svc := participant.New("pinger", "pings").Replies(evPong)
	participant.Handle(svc, evPing, func(ctx context.Context, c ping, env schema.Envelope) (pipe.Reply, error) {
		handled.Add(1)
		return participant.Reply(ctx, evPong, c)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err = participant.Run(ctx, participant.Config{Brokers: s.KafkaAddrs(), RegistryURL: s.RegistryURL()}, svc)
	if err == nil || !strings.Contains(err.Error(), `registering reply test.Pong under "test.Pong"`) {
		t.Fatalf("Run: %v, want the refused registration", err)
	}
	if n := handled.Load(); n != 0 {
		t.Fatalf("%d commands handled before the reply schema was accepted", n)
	}
}

// TestOneFailingServiceStopsTheOthers: a service whose handler fails
// (StopOnFailure) stops Run, and with it the healthy service.
func TestOneFailingServiceStopsTheOthers(t *testing.T) {
	s, cl := stack(t, "pings", "other")
	failing := participant.New("failing", "pings")
	participant.Handle(failing, evPing, func(context.Context, ping, schema.Envelope) (pipe.Reply, error) {
		return pipe.Reply{}, errors.New("the database is gone")
	})
	healthy := participant.New("healthy", "other")
	participant.Handle(healthy, evPing, func(context.Context, ping, schema.Envelope) (pipe.Reply, error) { return pipe.NoReply, nil })
	command(t, s, cl, "pings", "p-1")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := participant.Run(ctx, participant.Config{Brokers: s.KafkaAddrs(), RegistryURL: s.RegistryURL()}, failing, healthy)
	if err == nil || !strings.Contains(err.Error(), "participant failing") || !strings.Contains(err.Error(), "the database is gone") {
		t.Fatalf("Run: %v", err)
	}
	if ctx.Err() != nil {
		t.Fatal("Run returned only when the test's context ended")
	}
}

// TestRunReportsEveryProblemAtOnce checks the declarations before
// anything starts.
func TestRunReportsEveryProblemAtOnce(t *testing.T) {
	empty := participant.New("a", "t")
	twin := participant.New("a", "t")
	participant.Handle(twin, evPing, func(context.Context, ping, schema.Envelope) (pipe.Reply, error) { return pipe.NoReply, nil })
	err := participant.Run(context.Background(), participant.Config{}, empty, twin, participant.New("", "").Concurrency(0))
	for _, want := range []string{"no brokers", "no Schema Registry", "participant a: no handlers", `two services are named "a"`,
		"the service has no name", "has no topic", "Concurrency(0)"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Run: %v\nwant it to say %q", err, want)
		}
	}
	if _, err := participant.Reply(context.Background(), evPong, ping{}); err == nil {
		t.Error("Reply outside a handler: no error")
	}
}

// TestInstanceIDMakesAStaticMember: with Config.InstanceID each service
// joins its group as a static member under that ID, so that a restarted
// process takes its partitions back at once.
func TestInstanceIDMakesAStaticMember(t *testing.T) {
	s, cl := stack(t, "pings")
	ctx, cancel := context.WithCancel(context.Background())
	done := runPinger(ctx, participant.Config{Brokers: s.KafkaAddrs(), RegistryURL: s.RegistryURL(), InstanceID: "pinger-0"})
	command(t, s, cl, "pings", "p-1")
	fctx, fcancel := context.WithTimeout(ctx, 15*time.Second)
	defer fcancel()
	if fetches := cl.PollRecords(fctx, 1); len(fetches.Records()) != 1 {
		t.Fatalf("no reply: %v", fetches.Err())
	}
	groups, err := kadm.NewClient(cl).DescribeGroups(ctx, "pinger")
	cancel()
	if rerr := <-done; rerr != nil {
		t.Fatalf("Run: %v", rerr)
	}
	if err != nil {
		t.Fatal(err)
	}
	g := groups["pinger"]
	if len(g.Members) != 1 || g.Members[0].InstanceID == nil || *g.Members[0].InstanceID != "pinger-0" {
		t.Fatalf("group pinger's members %+v, want one static member pinger-0", g.Members)
	}
}
