package dlq_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/dlq"
	"github.com/sagapipe/sagapipe/internal/testkit"
	"github.com/sagapipe/sagapipe/pipe"
	"github.com/sagapipe/sagapipe/schema"
)

type command struct {
	ID string `avro:"id"`
}

func TestStageWorkerDeadLettersThroughThePolicy(t *testing.T) {
	ctx := context.Background()
	s := testkit.StartStack(t)
	testkit.CreateTopics(t, s.KafkaAddrs(), 1, "stage.commands")
	testkit.CreateTopics(t, s.KafkaAddrs(), 1, "stage.commands.dlq")
	testkit.CreateTopics(t, s.KafkaAddrs(), 1, "replies")
	serde, err := schema.NewSerde(s.RegistryURL())
	if err != nil {
		t.Fatal(err)
	}
	codec, err := schema.NewCodec[command](serde, `{"type":"record","name":"Command","fields":[{"name":"id","type":"string"}]}`)
	if err != nil {
		t.Fatal(err)
	}
	good, err := codec.Encode(ctx, "stage.commands", &command{ID: "c-2"})
	if err != nil {
		t.Fatal(err)
	}
	env := schema.NewEnvelope("Command", "test", time.Now())
	env.ReplyTo = "replies"
	bad := schema.NewEnvelope("Command", "test", time.Now())
	if err := testkit.Client(t, s.KafkaAddrs()).ProduceSync(ctx,
		&kgo.Record{Topic: "stage.commands", Key: []byte("k"), Value: []byte("not framed"), Headers: bad.Apply(nil)},
		&kgo.Record{Topic: "stage.commands", Key: []byte("k"), Value: good, Headers: env.Apply(nil)},
	).FirstErr(); err != nil {
		t.Fatal(err)
	}

	cl := testkit.Client(t, s.KafkaAddrs(), kgo.ConsumerGroup("stage"), kgo.ConsumeTopics("stage.commands"), kgo.DisableAutoCommit(), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.RecordPartitioner(pipe.NewPartitioner(nil)))
	policy, err := dlq.FailurePolicy(cl, dlq.Policy{})
	if err != nil {
		t.Fatal(err)
	}
	handled := make(chan string, 2)
	w, err := pipe.NewStageWorker(cl, codec, func(_ context.Context, c command, _ schema.Envelope) (pipe.Reply, error) {
		handled <- c.ID
		return pipe.NoReply, nil
	}, pipe.WithFailurePolicy(policy))
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	ran := make(chan error, 1)
	go func() { ran <- w.Run(runCtx) }()
	select {
	case id := <-handled:
		if id != "c-2" {
			t.Fatalf("handled %q, want c-2", id)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the good command behind the poison one was never handled")
	}
	stop()
	if err := <-ran; err != nil {
		t.Fatal(err)
	}
	r := testkit.Consume(t, s.KafkaAddrs(), "stage.commands.dlq", 1, nil)[0]
	if testkit.Header(r, dlq.HeaderErrorClass) != "poison" || !strings.Contains(testkit.Header(r, dlq.HeaderErrorMessage), "magic byte") ||
		testkit.Header(r, "original_consumer_group") != "stage" {
		t.Fatalf("dead letter headers %v", r.Headers)
	}
}

func TestFailurePolicyNeedsTheExplicitPartitioner(t *testing.T) {
	s := testkit.StartStack(t)
	_, err := dlq.FailurePolicy(testkit.Client(t, s.KafkaAddrs()), dlq.Policy{})
	if err == nil || !strings.Contains(err.Error(), "pipe.NewPartitioner") {
		t.Fatalf("got %v, want an error naming the partitioner to use", err)
	}
}
