package service

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/hamba/avro/v2"
)

const testSchema = `{"type":"record","name":"T","namespace":"test","fields":[
 {"name":"id","type":"string"},
 {"name":"n","type":"int"},
 {"name":"big","type":"long","default":7},
 {"name":"ratio","type":"double","default":0.5},
 {"name":"at","type":{"type":"long","logicalType":"timestamp-millis"}},
 {"name":"note","type":["null","string"],"default":null},
 {"name":"kind","type":{"type":"enum","name":"Kind","symbols":["A","B"]},"default":"A"},
 {"name":"tags","type":{"type":"array","items":"string"},"default":[]},
 {"name":"lines","type":{"type":"array","items":{"type":"record","name":"Line","fields":[{"name":"sku","type":"string"},{"name":"qty","type":"int"}]}},"default":[]},
 {"name":"raw","type":"bytes","default":""}
]}`

type line struct {
	SKU string `avro:"sku"`
	Qty int32  `avro:"qty"`
}

type testRecord struct {
	ID    string    `avro:"id"`
	N     int32     `avro:"n"`
	Big   int64     `avro:"big"`
	Ratio float64   `avro:"ratio"`
	At    time.Time `avro:"at"`
	Note  *string   `avro:"note"`
	Kind  string    `avro:"kind"`
	Tags  []string  `avro:"tags"`
	Lines []line    `avro:"lines"`
	Raw   []byte    `avro:"raw"`
}

// JSON converts to what encodes, and decodes back to the same values.
func TestFromJSONRoundTrip(t *testing.T) {
	s := avro.MustParse(testSchema)
	for _, tc := range []struct {
		name, body string
		check      func(t *testing.T, r testRecord)
	}{
		{"defaults", `{"id":"x","n":3,"at":"2026-11-23T10:00:00Z"}`, func(t *testing.T, r testRecord) {
			if r.N != 3 || r.Big != 7 || r.Ratio != 0.5 || r.Note != nil || r.Kind != "A" || len(r.Tags) != 0 || !r.At.Equal(time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)) {
				t.Fatalf("%+v", r)
			}
		}},
		{"everything", `{"id":"x","n":-3,"big":9007199254740993,"ratio":2,"at":"2026-11-23T10:00:00.123Z","note":"gift",
		  "kind":"B","tags":["a","b"],"lines":[{"sku":"s1","qty":2}],"raw":"aGk="}`, func(t *testing.T, r testRecord) {
			if r.N != -3 || r.Big != 9007199254740993 || r.Ratio != 2 || r.Note == nil || *r.Note != "gift" || r.Kind != "B" ||
				len(r.Tags) != 2 || len(r.Lines) != 1 || r.Lines[0].Qty != 2 || string(r.Raw) != "hi" {
				t.Fatalf("%+v", r)
			}
		}},
		{"explicit null", `{"id":"x","n":1,"at":"2026-11-23T10:00:00Z","note":null}`, func(t *testing.T, r testRecord) {
			if r.Note != nil {
				t.Fatalf("note %v", *r.Note)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := fromJSON(s, []byte(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			data, err := avro.Marshal(s, m)
			if err != nil {
				t.Fatal(err)
			}
			var r testRecord
			if err := avro.Unmarshal(s, data, &r); err != nil {
				t.Fatal(err)
			}
			tc.check(t, r)
		})
	}
}

func TestFromJSONNamesTheField(t *testing.T) {
	s := avro.MustParse(testSchema)
	base := `"id":"x","n":1,"at":"2026-11-23T10:00:00Z"`
	for _, tc := range []struct{ body, field string }{
		{`{` + base + `,"n":2147483648}`, "n"},
		{`{` + base + `,"big":1.5}`, "big"},
		{`{` + base + `,"note":5}`, "note"},
		{`{` + base + `,"kind":"C"}`, "kind"},
		{`{` + base + `,"tags":"a"}`, "tags"},
		{`{` + base + `,"lines":[{"sku":"s","qty":"2"}]}`, "lines.0.qty"},
		{`{` + base + `,"raw":"not base64!"}`, "raw"},
		{`{"n":1,"at":"2026-11-23T10:00:00Z"}`, "id"},
		{`{` + base + `,"extra":true}`, "extra"},
	} {
		_, err := fromJSON(s, []byte(tc.body))
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != tc.field {
			t.Errorf("%s: %v, want an error naming %q", tc.body, err, tc.field)
		}
	}
}

func TestToAvroJSONUsesTheSchemasNames(t *testing.T) {
	type leg struct {
		From string `avro:"from_city"`
	}
	type data struct {
		TripID  string            `avro:"trip_id"`
		Legs    []leg             `avro:"legs"`
		Hotel   *leg              `avro:"hotel"`
		Tags    map[string]string `avro:"tags"`
		Raw     []byte            `avro:"raw"`
		Skipped string            `avro:"-"`
		Plain   int
		hidden  int
	}
	got, err := json.Marshal(toAvroJSON(data{TripID: "t-1", Legs: []leg{{From: "BER"}}, Tags: map[string]string{"a": "b"},
		Raw: []byte{1}, Skipped: "x", Plain: 2, hidden: 3}))
	if err != nil {
		t.Fatal(err)
	}
	want := `{"Plain":2,"hotel":null,"legs":[{"from_city":"BER"}],"raw":"AQ==","tags":{"a":"b"},"trip_id":"t-1"}`
	if string(got) != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}
