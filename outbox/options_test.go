package outbox_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/outbox"
	"github.com/sagapipe/sagapipe/pipe"
	"github.com/sagapipe/sagapipe/schema"
)

// Every problem is reported at once, naming the option and the fix.
func TestConstructorsReportEveryProblem(t *testing.T) {
	client := func(opts ...kgo.Opt) *kgo.Client {
		cl, err := kgo.NewClient(opts...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(cl.Close)
		return cl
	}
	tests := []struct {
		name    string
		build   func() error
		wantIs  error
		wantErr []string
	}{
		{
			name: "store",
			build: func() error {
				_, err := outbox.New(context.Background(), nil, outbox.WithTablePrefix("Payments-"),
					outbox.WithPiperOptions(pipe.WithMaxInFlight(0)))
				return err
			},
			wantErr: []string{"pool is nil; open one with pgxpool.New", `WithTablePrefix("Payments-")`, "WithMaxInFlight(0)"},
		},
		{
			name: "relay options",
			build: func() error {
				_, err := outbox.NewRelay(nil, nil, outbox.WithBatchSize(0), outbox.WithPollInterval(0),
					outbox.WithRetention(-time.Second), outbox.WithPublishTimeout(0),
					outbox.WithBackoff(time.Second, time.Millisecond), outbox.WithLogger(nil), outbox.WithPropagator(nil))
				return err
			},
			wantIs: outbox.ErrNoStore,
			wantErr: []string{"create one with outbox.New", "client is nil", "WithBatchSize(0)", "WithPollInterval(0s)",
				"WithRetention(-1s)", "WithPublishTimeout(0s)", "WithBackoff(1s, 1ms)", "logger is nil", "propagator is nil"},
		},
		{
			name: "transactional client",
			build: func() error {
				_, err := outbox.NewRelay(nil, client(kgo.TransactionalID("payments")))
				return err
			},
			wantErr: []string{`kgo.TransactionalID("payments")`, "give it a client without TransactionalID"},
		},
		{
			name: "producer not idempotent",
			build: func() error {
				_, err := outbox.NewRelay(nil, client(kgo.DisableIdempotentWrite()))
				return err
			},
			wantErr: []string{"remove kgo.DisableIdempotentWrite()"},
		},
		{
			name: "handler without a store",
			build: func() error {
				_, err := outbox.Handler[Debit](nil, debit(codecs{}, nil, nil))(context.Background(), Debit{}, schema.Envelope{})
				return err
			},
			wantIs:  outbox.ErrNoStore,
			wantErr: []string{"create one with outbox.New"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.build()
			if err == nil {
				t.Fatal("no error")
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Errorf("%v is not %v", err, tt.wantIs)
			}
			for _, want := range tt.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("%q does not say %q", err, want)
				}
			}
		})
	}
}
