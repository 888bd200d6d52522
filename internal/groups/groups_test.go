package groups_test

import (
	"context"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/goleak"

	"github.com/sagapipe/sagapipe/devstack"
	"github.com/sagapipe/sagapipe/internal/groups"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// A group is waited for until it is stable with every partition of its
// topic; a group nobody runs is waited for forever.
func TestWaiting(t *testing.T) {
	ctx := context.Background()
	stack, err := devstack.Start(devstack.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer stack.Close()
	admin, err := kgo.NewClient(kgo.SeedBrokers(stack.KafkaAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	adm := kadm.NewClient(admin)
	if _, err := adm.CreateTopic(ctx, 3, 1, nil, "t"); err != nil {
		t.Fatal(err)
	}
	members := map[string]string{"g": "t"}
	if waiting, err := groups.Waiting(ctx, adm, members, 3); err != nil || waiting != "g" {
		t.Fatalf("before anyone joined: waiting %q, %v; want g", waiting, err)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(stack.KafkaAddrs()...), kgo.ConsumerGroup("g"), kgo.ConsumeTopics("t"))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for deadline := time.Now().Add(30 * time.Second); ; {
		waiting, err := groups.Waiting(ctx, adm, members, 3)
		if err != nil {
			t.Fatal(err)
		}
		if waiting == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the group never had its 3 partitions")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// More partitions than the topic has are never all assigned.
	if waiting, err := groups.Waiting(ctx, adm, members, 4); err != nil || waiting != "g" {
		t.Fatalf("4 partitions wanted: waiting %q, %v; want g", waiting, err)
	}
}
