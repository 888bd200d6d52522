package main

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/devstack"
	"github.com/sagapipe/sagapipe/dlq"
	"github.com/sagapipe/sagapipe/examples/orders"
	"github.com/sagapipe/sagapipe/schema"
)

// deadLetterTwo puts an Avro order and a garbage record into orders.dlq.
func deadLetterTwo(t *testing.T, s *devstack.Stack) {
	t.Helper()
	ctx := context.Background()
	cl, err := kgo.NewClient(kgo.SeedBrokers(s.KafkaAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if _, err := kadm.NewClient(cl).CreateTopics(ctx, 1, 1, nil, "orders", "orders.dlq"); err != nil {
		t.Fatal(err)
	}
	serde, err := schema.NewSerde(s.RegistryURL())
	if err != nil {
		t.Fatal(err)
	}
	codec, err := schema.NewCodec[orders.OrderPlaced](serde, orders.OrderPlacedSchema)
	if err != nil {
		t.Fatal(err)
	}
	o := smokeOrder(0, time.Now())
	value, err := codec.Encode(ctx, "orders", &o)
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.ProduceSync(ctx,
		&kgo.Record{Topic: "orders", Key: []byte("order-00000"), Value: value},
		&kgo.Record{Topic: "orders", Key: []byte("junk"), Value: []byte("\x07garbage")},
	).FirstErr(); err != nil {
		t.Fatal(err)
	}

	dead := make(chan struct{}, 2)
	reject := func(context.Context, *kgo.Record) error { return dlq.Poison(errors.New("rejected by test")) }
	c, err := dlq.NewConsumer("orders-service", []string{"orders"}, reject, dlq.Policy{},
		dlq.WithHooks(hookFunc(func() { dead <- struct{}{} })),
		dlq.WithClientOptions(kgo.SeedBrokers(s.KafkaAddrs()...), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart())))
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	ran := make(chan error, 1)
	go func() { ran <- c.Run(runCtx) }()
	for range 2 {
		select {
		case <-dead:
		case <-time.After(20 * time.Second):
			t.Fatal("records were not dead-lettered")
		}
	}
	stop()
	if err := <-ran; err != nil {
		t.Fatal(err)
	}
	c.Close()
}

type hookFunc func()

func (f hookFunc) OnDeadLettered(*kgo.Record, dlq.Failure) { f() }

func TestDLQCommands(t *testing.T) {
	s, err := devstack.Start(devstack.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	deadLetterTwo(t, s)
	conn := []string{"--brokers", s.KafkaAddrs()[0], "--registry", s.RegistryURL()}

	tests := []struct {
		name     string
		args     []string
		wantCode int
		want     []string
	}{
		{"list", []string{"dlq", "list", "orders.dlq"}, 0,
			[]string{"orders/0@0", "orders/0@1", "poison", "rejected by test", "2 record(s)"}},
		{"list by key", []string{"dlq", "list", "orders.dlq", "--key", "junk"}, 0, []string{"orders/0@1", "1 record(s)"}},
		{"show decodes through the registry", []string{"dlq", "show", "orders.dlq", "0", "0"}, 0,
			[]string{"error_class: poison", "original_topic: orders", `"order_id": "order-00000"`, `"sku": "sku-00"`}},
		{"show raw when it does not decode", []string{"dlq", "show", "orders.dlq", "0", "1"}, 0,
			[]string{"does not decode", "magic byte is 0x07", `\agarbage`}},
		{"dry run", []string{"dlq", "replay", "orders.dlq", "--dry-run"}, 0, []string{"would replay 2 record(s)"}},
		{"replay", []string{"dlq", "replay", "orders.dlq", "--class", "poison"}, 0, []string{"replayed 2 record(s)"}},
		{"replay again", []string{"dlq", "replay", "orders.dlq"}, 0, []string{"replayed 0 record(s)"}},
		{"release a key that is not parked", []string{"dlq", "release", "orders.dlq", "nobody"}, 0, []string{"not parked"}},
		{"release", []string{"dlq", "release", "orders.dlq", "junk"}, 0, []string{`released key "junk" in 1 partition(s)`}},
		{"bad class", []string{"dlq", "list", "orders.dlq", "--class", "bad"}, 2, nil},
		{"missing offset", []string{"dlq", "show", "orders.dlq", "0"}, 2, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr syncBuffer
			code := run(context.Background(), append(tt.args, conn...), &stdout, &stderr)
			if code != tt.wantCode {
				t.Fatalf("exit %d, want %d; stdout %q stderr %q", code, tt.wantCode, stdout.String(), stderr.String())
			}
			for _, w := range tt.want {
				if !strings.Contains(stdout.String(), w) {
					t.Errorf("stdout lacks %q:\n%s", w, stdout.String())
				}
			}
		})
	}
}
