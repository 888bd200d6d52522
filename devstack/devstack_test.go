package devstack_test

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/riferrei/srclient"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/goleak"

	"github.com/sagapipe/sagapipe/devstack"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestOutsideClientReachesBrokerOverTCP(t *testing.T) {
	s, err := devstack.Start(devstack.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	addrs := s.KafkaAddrs()
	if len(addrs) != 1 {
		t.Fatalf("addresses %v, want one", addrs)
	}
	if host, _, _ := net.SplitHostPort(addrs[0]); host != "127.0.0.1" {
		t.Fatalf("broker listens on %s, want 127.0.0.1", addrs[0])
	}
	produceAndConsume(t, addrs[0], "outside", "hello")
}

// produceAndConsume uses nothing but the address, as an outside client would.
func produceAndConsume(t *testing.T, addr, topic, value string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if _, err := kadm.NewClient(cl).CreateTopic(ctx, 1, 1, nil, topic); err != nil {
		t.Fatal(err)
	}
	if err := cl.ProduceSync(ctx, &kgo.Record{Topic: topic, Value: []byte(value)}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	consumeOne(t, addr, topic, value)
}

func consumeOne(t *testing.T, addr, topic, want string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	fs := cl.PollFetches(ctx)
	if err := fs.Err0(); err != nil {
		t.Fatal(err)
	}
	recs := fs.Records()
	if len(recs) != 1 || string(recs[0].Value) != want {
		t.Fatalf("consumed %d records, want one with %q", len(recs), want)
	}
}

func TestBusyPortNamesThePort(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port

	tests := []struct {
		name    string
		cfg     devstack.Config
		service string
	}{
		{"kafka", devstack.Config{KafkaPort: port}, "kafka"},
		{"registry", devstack.Config{RegistryPort: port}, "registry"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := devstack.Start(tt.cfg)
			if err == nil {
				s.Close()
				t.Fatal("started on a busy port")
			}
			var pe *devstack.PortInUseError
			if !errors.As(err, &pe) || pe.Service != tt.service || pe.Port != port {
				t.Fatalf("got %v, want PortInUseError for %s port %d", err, tt.service, port)
			}
		})
	}
}

func TestDataDirSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	s, err := devstack.Start(devstack.Config{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	produceAndConsume(t, s.KafkaAddrs()[0], "kept", "still here")
	sc := srclient.NewSchemaRegistryClient(s.RegistryURL())
	created, err := sc.CreateSchema("kept-value", `{"type":"record","name":"K","fields":[{"name":"a","type":"string"}]}`, srclient.Avro)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s2, err := devstack.Start(devstack.Config{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	consumeOne(t, s2.KafkaAddrs()[0], "kept", "still here")
	got, err := srclient.NewSchemaRegistryClient(s2.RegistryURL()).GetSchema(created.ID())
	if err != nil || got.Schema() != created.Schema() {
		t.Fatalf("schema %d after restart: %v, %v", created.ID(), got, err)
	}
}
