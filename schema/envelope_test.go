package schema_test

import (
	"errors"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/schema"
)

func TestEnvelopeRoundTrip(t *testing.T) {
	now := time.Date(2026, 11, 23, 10, 0, 0, 123456789, time.UTC)
	e := schema.NewEnvelope("shop.OrderPlaced", "orders-api", now)
	e.CorrelationID, e.CausationID = "corr-1", "cause-1"
	e.SagaName, e.SagaID, e.SagaStep, e.ReplyTo = "orders", "saga-1", "payment", "orders.inbox"
	e.TraceParent, e.TraceState = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "k=v"

	headers := e.Apply([]kgo.RecordHeader{{Key: "custom", Value: []byte("kept")}})
	got, err := schema.ReadEnvelope(headers)
	if err != nil {
		t.Fatal(err)
	}
	if got != e {
		t.Fatalf("read back %+v, want %+v", got, e)
	}
	if v, _ := schema.Header(headers, "custom"); v != "kept" {
		t.Fatalf("custom header lost: %q", v)
	}
	if v, _ := schema.Header(headers, schema.HeaderSpecVersion); v != "1.0" {
		t.Fatalf("ce_specversion %q, want 1.0", v)
	}
	if id, err := uuid.Parse(e.ID); err != nil || id.Version() != 7 {
		t.Fatalf("ce_id %q is not a UUIDv7: %v", e.ID, err)
	}
}

func TestApplyReplacesEnvelopeHeaders(t *testing.T) {
	old := schema.Envelope{ID: "old", Type: "t", SagaStep: "inventory", ReplyTo: "x"}
	headers := old.Apply(nil)
	next := schema.Envelope{ID: "new", Type: "t", CausationID: "old"}
	replaced := next.Apply(headers)
	got, err := schema.ReadEnvelope(replaced)
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != "new" || got.SagaStep != "" || got.ReplyTo != "" || got.CausationID != "old" {
		t.Fatalf("got %+v, want only the new envelope", got)
	}
	if v, _ := schema.Header(headers, schema.HeaderID); v != "old" {
		t.Fatal("Apply modified its input")
	}
	if n := count(replaced, schema.HeaderID); n != 1 {
		t.Fatalf("%d ce_id headers, want 1", n)
	}
}

func TestSetHeaderOverwrites(t *testing.T) {
	h := []kgo.RecordHeader{{Key: "a", Value: []byte("1")}, {Key: "b", Value: []byte("2")}, {Key: "a", Value: []byte("3")}}
	got := schema.SetHeader(h, "a", "4")
	if n := count(got, "a"); n != 1 {
		t.Fatalf("%d headers named a, want 1", n)
	}
	if v, _ := schema.Header(got, "a"); v != "4" {
		t.Fatalf("a=%q, want 4", v)
	}
	if v, _ := schema.Header(h, "a"); v != "3" {
		t.Fatal("SetHeader modified its input")
	}
}

func count(h []kgo.RecordHeader, key string) int {
	n := 0
	for _, x := range h {
		if x.Key == key {
			n++
		}
	}
	return n
}

func TestReadEnvelopeErrors(t *testing.T) {
	hdr := func(kv ...string) []kgo.RecordHeader {
		var out []kgo.RecordHeader
		for i := 0; i < len(kv); i += 2 {
			out = append(out, kgo.RecordHeader{Key: kv[i], Value: []byte(kv[i+1])})
		}
		return out
	}
	tests := []struct {
		name       string
		headers    []kgo.RecordHeader
		wantErr    error
		wantHeader string
	}{
		{"no headers", nil, schema.ErrMissingHeader, schema.HeaderID},
		{"empty ce_id", hdr("ce_id", "", "ce_type", "t"), schema.ErrMissingHeader, schema.HeaderID},
		{"missing ce_type", hdr("ce_id", "1"), schema.ErrMissingHeader, schema.HeaderType},
		{"bad ce_time", hdr("ce_id", "1", "ce_type", "t", "ce_time", "yesterday"), schema.ErrInvalidHeader, schema.HeaderTime},
		{"bad specversion", hdr("ce_id", "1", "ce_type", "t", "ce_specversion", "0.3"), schema.ErrInvalidHeader, schema.HeaderSpecVersion},
		{"non-UTF-8 saga_id", hdr("ce_id", "1", "ce_type", "t", "saga_id", "\xff\xfe"), schema.ErrInvalidHeader, schema.HeaderSagaID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := schema.ReadEnvelope(tt.headers)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("got %v, want %v", err, tt.wantErr)
			}
			var he *schema.HeaderError
			if !errors.As(err, &he) || he.Header != tt.wantHeader || !he.Poison() {
				t.Fatalf("got %v, want a poison HeaderError naming %s", err, tt.wantHeader)
			}
		})
	}
}

// FuzzReadEnvelope: any headers give an envelope with an ID and a type, or a
// typed poison error; never a panic.
func FuzzReadEnvelope(f *testing.F) {
	f.Add("ce_id", []byte("1"), "ce_type", []byte("t"), "ce_time", []byte("2026-11-23T10:00:00Z"))
	f.Add("ce_id", []byte(""), "ce_specversion", []byte("1.0"), "saga_id", []byte{0xff})
	f.Add("ce_time", []byte("x"), "ce_id", []byte("a"), "ce_type", []byte("b"))
	f.Add("ce_time", []byte("2026-11-23T10:00:00+01:00"), "ce_id", []byte("a"), "ce_type", []byte("b"))
	f.Fuzz(func(t *testing.T, k1 string, v1 []byte, k2 string, v2 []byte, k3 string, v3 []byte) {
		e, err := schema.ReadEnvelope([]kgo.RecordHeader{{Key: k1, Value: v1}, {Key: k2, Value: v2}, {Key: k3, Value: v3}})
		if err != nil {
			var he *schema.HeaderError
			if !errors.As(err, &he) || !he.Poison() {
				t.Fatalf("untyped error: %v", err)
			}
			return
		}
		if e.ID == "" || e.Type == "" {
			t.Fatalf("accepted an envelope without ID or type: %+v", e)
		}
		// Whatever was read writes back and reads the same.
		again, err := schema.ReadEnvelope(e.Apply(nil))
		if err != nil || again != e {
			t.Fatalf("re-read %+v, %v; want %+v", again, err, e)
		}
	})
}

// What ReadEnvelope returns is its own: values shared between fields (a
// saga ID that is also the correlation ID) or with other records (interned
// types and names) do not change when a record's header bytes are reused.
func TestReadEnvelopeCopiesValues(t *testing.T) {
	e := schema.NewEnvelope("payment.PaymentCharged", "payment", time.Time{})
	e.CorrelationID, e.SagaID, e.SagaName, e.SagaStep = "order-1", "order-1", "orders", "payment"
	headers := e.Apply(nil)
	got, err := schema.ReadEnvelope(headers)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range headers {
		for i := range h.Value {
			h.Value[i] = 'x'
		}
	}
	if got != e {
		t.Fatalf("after the header bytes were overwritten, read %+v, want %+v", got, e)
	}
	again, err := schema.ReadEnvelope(e.Apply(nil))
	if err != nil || again != e {
		t.Fatalf("read again %+v, %v; want %+v", again, err, e)
	}
}
