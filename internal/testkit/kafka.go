package testkit

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/devstack"
	"github.com/sagapipe/sagapipe/schema"
)

// Wait is how long the helpers wait for what should come.
const Wait = 20 * time.Second

// StartStack starts an embedded Kafka and registry on free ports, closed
// when the test ends.
func StartStack(t testing.TB) *devstack.Stack {
	t.Helper()
	s, err := devstack.Start(devstack.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// Client returns a client seeded with brokers and opts, closed when the
// test ends.
func Client(t testing.TB, brokers []string, opts ...kgo.Opt) *kgo.Client {
	t.Helper()
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(brokers...)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cl
}

// CreateTopics creates topics with partitions partitions each (replication
// 1), failing the test on any error, one that exists already included.
func CreateTopics(t testing.TB, brokers []string, partitions int32, topics ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	resp, err := kadm.NewClient(cl).CreateTopics(ctx, partitions, 1, nil, topics...)
	if err == nil {
		err = resp.Error()
	}
	if err != nil {
		t.Fatal(err)
	}
}

// Consume reads topic from its start until n records that keep accepts
// (nil: every record) have come, and returns them; opts are added to the
// reading client's. It fails the test when they do not come within Wait.
func Consume(t testing.TB, brokers []string, topic string, n int, keep func(*kgo.Record) bool, opts ...kgo.Opt) []*kgo.Record {
	t.Helper()
	recs, err := ConsumeWithin(brokers, topic, n, Wait, keep, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

// ConsumeWithin is Consume returning an error instead of failing a test:
// for a process that is not a test, or a test that expects nothing to come.
func ConsumeWithin(brokers []string, topic string, n int, timeout time.Duration, keep func(*kgo.Record) bool, opts ...kgo.Opt) ([]*kgo.Record, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart())}, opts...)...)
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	var out []*kgo.Record
	for len(out) < n {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			return out, fmt.Errorf("consumed %d of %d records of %s in %s", len(out), n, topic, timeout)
		}
		if err := fs.Err0(); err != nil {
			return out, err
		}
		for _, r := range fs.Records() {
			if keep == nil || keep(r) {
				out = append(out, r)
			}
		}
	}
	return out, nil
}

// Header returns the value of r's header key as schema.Header reads it
// (the last one, if there are several; "" when there is none).
func Header(r *kgo.Record, key string) string {
	v, _ := schema.Header(r.Headers, key)
	return v
}

// WaitUntil calls cond until it returns nil, failing the test with what it
// last returned when timeout has passed.
func WaitUntil(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %v", timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// FirstReadEOF returns the error kgo gives a request to a broker address
// that accepts connections and closes them at once, as a network fault or
// a resetting proxy does: a *kgo.ErrFirstReadEOF, which kgo does not retry.
func FirstReadEOF(t testing.TB) error {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			// The request is read first: closed with it unread, the
			// connection would be reset rather than ended.
			_ = c.SetReadDeadline(time.Now().Add(Wait))
			var size [4]byte
			if _, err := io.ReadFull(c, size[:]); err == nil {
				_, _ = io.CopyN(io.Discard, c, int64(binary.BigEndian.Uint32(size[:])))
			}
			c.Close()
		}
	}()
	defer func() { lis.Close(); <-done }()
	cl, err := kgo.NewClient(kgo.SeedBrokers(lis.Addr().String()), kgo.RequestRetries(0))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), Wait)
	defer cancel()
	pingErr := cl.Ping(ctx)
	var firstRead *kgo.ErrFirstReadEOF
	if !errors.As(pingErr, &firstRead) {
		t.Fatalf("ping of a connection closed at once: %v, want a *kgo.ErrFirstReadEOF", pingErr)
	}
	return pingErr
}
