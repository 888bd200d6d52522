package schema_test

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/hamba/avro/v2"
	"github.com/riferrei/srclient"
	"go.uber.org/goleak"

	"github.com/sagapipe/sagapipe/internal/registry"
	"github.com/sagapipe/sagapipe/schema"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// orderSchema is an order event of ten fields, the size the benchmark targets.
const orderSchema = `{"type":"record","name":"OrderPlaced","namespace":"shop","fields":[
 {"name":"order_id","type":"string"},
 {"name":"customer_id","type":"string"},
 {"name":"sku","type":"string"},
 {"name":"quantity","type":"int"},
 {"name":"unit_price_cents","type":"long"},
 {"name":"total_cents","type":"long"},
 {"name":"currency","type":"string"},
 {"name":"placed_at_ms","type":"long"},
 {"name":"express","type":"boolean"},
 {"name":"note","type":["null","string"],"default":null}
]}`

type Order struct {
	OrderID        string  `avro:"order_id"`
	CustomerID     string  `avro:"customer_id"`
	SKU            string  `avro:"sku"`
	Quantity       int32   `avro:"quantity"`
	UnitPriceCents int64   `avro:"unit_price_cents"`
	TotalCents     int64   `avro:"total_cents"`
	Currency       string  `avro:"currency"`
	PlacedAtMS     int64   `avro:"placed_at_ms"`
	Express        bool    `avro:"express"`
	Note           *string `avro:"note"`
}

func sampleOrder() Order {
	note := "leave at the door"
	return Order{OrderID: "o-1", CustomerID: "c-7", SKU: "sku-42", Quantity: 3, UnitPriceCents: 1250,
		TotalCents: 3750, Currency: "EUR", PlacedAtMS: 1_700_000_000_000, Express: true, Note: &note}
}

// v2 adds a field with a default: fully compatible both ways.
const orderSchemaV2 = `{"type":"record","name":"OrderPlaced","namespace":"shop","fields":[
 {"name":"order_id","type":"string"},
 {"name":"customer_id","type":"string"},
 {"name":"sku","type":"string"},
 {"name":"quantity","type":"int"},
 {"name":"unit_price_cents","type":"long"},
 {"name":"total_cents","type":"long"},
 {"name":"currency","type":"string"},
 {"name":"placed_at_ms","type":"long"},
 {"name":"express","type":"boolean"},
 {"name":"note","type":["null","string"],"default":null},
 {"name":"channel","type":"string","default":"web"}
]}`

type OrderV2 struct {
	Order
	Channel string `avro:"channel"`
}

// startRegistry serves the embedded registry over HTTP for one test.
func startRegistry(t testing.TB) string {
	t.Helper()
	reg, err := registry.New()
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(reg)
	t.Cleanup(func() { srv.Close(); reg.Close() })
	return srv.URL
}

func newSerde(t testing.TB, opts ...schema.Opt) *schema.Serde {
	t.Helper()
	s, err := schema.NewSerde(startRegistry(t), opts...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func newCodec[T any](t testing.TB, s *schema.Serde, text string) *schema.Codec[T] {
	t.Helper()
	c, err := schema.NewCodec[T](s, text)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestRoundTrip(t *testing.T) {
	ctx := context.Background()
	s := newSerde(t)
	c := newCodec[Order](t, s, orderSchema)
	want := sampleOrder()
	data, err := c.Encode(ctx, "orders", &want)
	if err != nil {
		t.Fatal(err)
	}
	if data[0] != 0 {
		t.Fatalf("magic byte %#x, want 0", data[0])
	}
	got, err := c.Decode(ctx, data)
	if err != nil {
		t.Fatal(err)
	}
	if *got.Note != *want.Note || got.OrderID != want.OrderID || got.TotalCents != want.TotalCents || !got.Express {
		t.Fatalf("round trip: got %+v, want %+v", got, want)
	}
}

func TestEvolution(t *testing.T) {
	ctx := context.Background()
	s := newSerde(t)
	v1 := newCodec[Order](t, s, orderSchema)
	v2 := newCodec[OrderV2](t, s, orderSchemaV2)

	t.Run("v1 writer, v2 reader fills the default", func(t *testing.T) {
		o := sampleOrder()
		data, err := v1.Encode(ctx, "orders", &o)
		if err != nil {
			t.Fatal(err)
		}
		got, err := v2.Decode(ctx, data)
		if err != nil {
			t.Fatal(err)
		}
		if got.Channel != "web" || got.OrderID != o.OrderID || *got.Note != *o.Note {
			t.Fatalf("got %+v, want v1's fields and channel=web", got)
		}
	})
	t.Run("v2 writer, v1 reader skips the new field", func(t *testing.T) {
		o := OrderV2{Order: sampleOrder(), Channel: "app"}
		data, err := v2.Encode(ctx, "orders", &o)
		if err != nil {
			t.Fatal(err)
		}
		got, err := v1.Decode(ctx, data)
		if err != nil {
			t.Fatal(err)
		}
		if got.OrderID != o.OrderID || got.Quantity != o.Quantity || got.Express != o.Express {
			t.Fatalf("got %+v, want %+v", got, o.Order)
		}
	})
}

// Two reader schemas that differ only in a default must each apply their own:
// hamba caches codecs by a fingerprint that ignores defaults.
func TestReadersDifferingOnlyInDefaults(t *testing.T) {
	ctx := context.Background()
	s := newSerde(t)
	v1 := newCodec[Order](t, s, orderSchema)
	web := newCodec[OrderV2](t, s, orderSchemaV2)
	app := newCodec[OrderV2](t, s, strings.Replace(orderSchemaV2, `"default":"web"`, `"default":"app"`, 1))

	o := sampleOrder()
	data, err := v1.Encode(ctx, "orders", &o)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name  string
		codec *schema.Codec[OrderV2]
		want  string
	}{{"web", web, "web"}, {"app", app, "app"}, {"web again", web, "web"}} {
		got, err := tt.codec.Decode(ctx, data)
		if err != nil {
			t.Fatal(err)
		}
		if got.Channel != tt.want {
			t.Errorf("%s: channel %q, want %q", tt.name, got.Channel, tt.want)
		}
	}
}

func TestCachedPathMakesNoRegistryCalls(t *testing.T) {
	ctx := context.Background()
	s := newSerde(t)
	c := newCodec[Order](t, s, orderSchema)
	o := sampleOrder()
	data, err := c.Encode(ctx, "orders", &o)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Decode(ctx, data); err != nil {
		t.Fatal(err)
	}
	before := s.RegistryCalls()
	if before == 0 {
		t.Fatal("no registry call counted for the first encode and decode")
	}
	for range 100 {
		data, err := c.Encode(ctx, "orders", &o)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Decode(ctx, data); err != nil {
			t.Fatal(err)
		}
	}
	if got := s.RegistryCalls() - before; got != 0 {
		t.Fatalf("%d registry calls on the cached path, want 0", got)
	}
}

func TestSubjectNaming(t *testing.T) {
	ctx := context.Background()
	url := startRegistry(t)
	sc := srclient.NewSchemaRegistryClient(url)
	tests := []struct {
		name     string
		strategy schema.SubjectNameStrategy
		want     string
	}{
		{"topic name", schema.TopicNameStrategy, "orders-value"},
		{"record name", schema.RecordNameStrategy, "shop.OrderPlaced"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := schema.NewSerde(url, schema.WithSubjectNameStrategy(tt.strategy))
			if err != nil {
				t.Fatal(err)
			}
			id, err := newCodec[Order](t, s, orderSchema).Register(ctx, "orders")
			if err != nil {
				t.Fatal(err)
			}
			got, err := sc.GetLatestSchema(tt.want)
			if err != nil {
				t.Fatalf("subject %q: %v", tt.want, err)
			}
			if got.ID() != id {
				t.Fatalf("subject %q holds ID %d, want %d", tt.want, got.ID(), id)
			}
		})
	}
}

func TestTypedErrors(t *testing.T) {
	ctx := context.Background()
	s := newSerde(t)
	c := newCodec[Order](t, s, orderSchema)
	o := sampleOrder()
	good, err := c.Encode(ctx, "orders", &o)
	if err != nil {
		t.Fatal(err)
	}
	id := binary.BigEndian.Uint32(good[1:5])
	frame := func(id uint32, payload []byte) []byte {
		return append(binary.BigEndian.AppendUint32([]byte{0}, id), payload...)
	}

	tests := []struct {
		name    string
		data    []byte
		wantErr error
	}{
		{"empty", nil, schema.ErrNotFramed},
		{"too short", []byte{0, 0, 0}, schema.ErrNotFramed},
		{"bad magic byte", append([]byte{1}, good[1:]...), schema.ErrNotFramed},
		{"unknown schema ID", frame(999_999, good[5:]), schema.ErrUnknownSchemaID},
		{"truncated payload", good[:len(good)-4], schema.ErrUndecodable},
		{"bytes left over", append(append([]byte(nil), good...), 7, 7), schema.ErrUndecodable},
		{"garbage payload", frame(id, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}), schema.ErrUndecodable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := c.Decode(ctx, tt.data)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("got %v, want %v", err, tt.wantErr)
			}
			var p interface{ Poison() bool }
			if !errors.As(err, &p) || !p.Poison() {
				t.Fatalf("%v is not marked poison", err)
			}
		})
	}
}

func TestUnreachableRegistryIsTransient(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	s, err := schema.NewSerde("http://" + addr)
	if err != nil {
		t.Fatal(err)
	}
	c := newCodec[Order](t, s, orderSchema)
	o := sampleOrder()
	_, err = c.Encode(context.Background(), "orders", &o)
	if !errors.Is(err, schema.ErrRegistryUnavailable) {
		t.Fatalf("encode: %v, want ErrRegistryUnavailable", err)
	}
	_, err = c.Decode(context.Background(), []byte{0, 0, 0, 0, 1, 2})
	if !errors.Is(err, schema.ErrRegistryUnavailable) {
		t.Fatalf("decode: %v, want ErrRegistryUnavailable", err)
	}
	var p interface{ Poison() bool }
	if errors.As(err, &p) {
		t.Fatal("an unreachable registry must not be poison")
	}
	if !strings.Contains(err.Error(), addr) {
		t.Fatalf("error %q does not name the registry", err)
	}
}

func TestIncompatibleRegistration(t *testing.T) {
	ctx := context.Background()
	s := newSerde(t)
	o := sampleOrder()
	if _, err := newCodec[Order](t, s, orderSchema).Encode(ctx, "orders", &o); err != nil {
		t.Fatal(err)
	}
	// A new required field without a default breaks FULL_TRANSITIVE.
	broken := strings.Replace(orderSchemaV2, `,"default":"web"`, ``, 1)
	_, err := newCodec[OrderV2](t, s, broken).Register(ctx, "orders")
	if !errors.Is(err, schema.ErrIncompatible) || !strings.Contains(err.Error(), "channel") {
		t.Fatalf("got %v, want ErrIncompatible naming the field", err)
	}
}

func TestAutoRegisterOff(t *testing.T) {
	ctx := context.Background()
	url := startRegistry(t)
	s, err := schema.NewSerde(url, schema.WithAutoRegister(false))
	if err != nil {
		t.Fatal(err)
	}
	c := newCodec[Order](t, s, orderSchema)
	if _, err := c.Register(ctx, "orders"); err == nil || !strings.Contains(err.Error(), "register it first") {
		t.Fatalf("got %v, want an error saying to register first", err)
	}
	if _, err := srclient.NewSchemaRegistryClient(url).CreateSchema("orders-value", orderSchema, srclient.Avro); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Register(ctx, "orders"); err != nil {
		t.Fatalf("after registering: %v", err)
	}
}

func TestNewSerdeReportsEveryProblem(t *testing.T) {
	_, err := schema.NewSerde("localhost:8081", schema.WithTimeout(-1), schema.WithBasicAuth("u", ""))
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"localhost:8081", "WithTimeout", "WithBasicAuth"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
	if _, err := schema.NewCodec[Order](newSerde(t), `{"type":"record"`); err == nil || !strings.Contains(err.Error(), "Order") {
		t.Fatalf("bad schema: got %v, want an error naming the type", err)
	}
}

// FuzzDecode: any bytes give a value or a typed poison error, never a panic.
func FuzzDecode(f *testing.F) {
	ctx := context.Background()
	s := newSerde(f)
	c := newCodec[Order](f, s, orderSchema)
	o := sampleOrder()
	good, err := c.Encode(ctx, "orders", &o)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte{})
	f.Add([]byte{0, 0, 0, 0, 1})
	f.Add([]byte{0, 0, 0, 0, 9, 1, 2, 3})
	f.Add(good[:len(good)/2])
	f.Fuzz(func(t *testing.T, data []byte) {
		// Unknown IDs would each cost a registry round trip; keep the ID of
		// the registered schema so the fuzzer explores the payload.
		if len(data) >= 5 && data[0] == 0 {
			copy(data[1:5], good[1:5])
		}
		_, err := c.Decode(ctx, data)
		if err == nil {
			return
		}
		var p interface{ Poison() bool }
		if !errors.As(err, &p) || !p.Poison() {
			t.Fatalf("untyped or non-poison error for outside bytes: %v", err)
		}
	})
}

// The frame is plain enough to parse by hand and hand to hamba directly.
func TestFrameParsesByHand(t *testing.T) {
	ctx := context.Background()
	url := startRegistry(t)
	s, err := schema.NewSerde(url)
	if err != nil {
		t.Fatal(err)
	}
	o := sampleOrder()
	data, err := newCodec[Order](t, s, orderSchema).Encode(ctx, "orders", &o)
	if err != nil {
		t.Fatal(err)
	}
	decodeByHand(t, url, data, o)
}

func decodeByHand(t *testing.T, registryURL string, data []byte, want Order) {
	t.Helper()
	if len(data) < 5 || data[0] != 0 {
		t.Fatalf("not framed: % x", data)
	}
	id := int(binary.BigEndian.Uint32(data[1:5]))
	got, err := srclient.NewSchemaRegistryClient(registryURL).GetSchema(id)
	if err != nil {
		t.Fatal(err)
	}
	var v Order
	if err := avro.Unmarshal(avro.MustParse(got.Schema()), data[5:], &v); err != nil {
		t.Fatal(err)
	}
	if v.OrderID != want.OrderID || v.TotalCents != want.TotalCents || *v.Note != *want.Note {
		t.Fatalf("hamba read %+v, want %+v", v, want)
	}
}

// Two writer schemas that differ only in a default must each write their own
// default for a field the Go type lacks: hamba caches encoders by a
// fingerprint that ignores defaults.
func TestWritersDifferingOnlyInDefaults(t *testing.T) {
	ctx := context.Background()
	s := newSerde(t, schema.WithSubjectNameStrategy(schema.TopicNameStrategy))
	appSchema := strings.Replace(orderSchemaV2, `"default":"web"`, `"default":"app"`, 1)
	web := newCodec[Order](t, s, orderSchemaV2)
	app := newCodec[Order](t, s, appSchema)
	reader := newCodec[OrderV2](t, s, orderSchemaV2)

	o := sampleOrder()
	for _, tt := range []struct {
		name  string
		codec *schema.Codec[Order]
		topic string
		want  string
	}{{"web", web, "web-orders", "web"}, {"app", app, "app-orders", "app"}} {
		data, err := tt.codec.Encode(ctx, tt.topic, &o)
		if err != nil {
			t.Fatal(err)
		}
		got, err := reader.Decode(ctx, data)
		if err != nil {
			t.Fatal(err)
		}
		if got.Channel != tt.want {
			t.Errorf("%s: wrote channel %q, want %q", tt.name, got.Channel, tt.want)
		}
	}
}
