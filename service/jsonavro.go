package service

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/hamba/avro/v2"
)

// FieldError is a JSON body that does not match the Avro schema, at Field
// (a dotted path, e.g. "items.2.sku").
type FieldError struct {
	Field string
	Msg   string
}

func (e *FieldError) Error() string {
	if e.Field == "" {
		return e.Msg
	}
	return "field " + e.Field + ": " + e.Msg
}

// fromJSON decodes body, a JSON object, into the Go values hamba encodes
// for the record schema s: numbers become the schema's int, long, float or
// double (refusing fractions and overflow where they do not fit), RFC 3339
// strings become timestamps, base64 strings bytes, and absent fields take
// their defaults. Unknown fields are refused, so a typo is not dropped.
func fromJSON(s avro.Schema, body []byte) (map[string]any, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, &FieldError{Msg: "body is not valid JSON: " + err.Error()}
	}
	if dec.More() {
		return nil, &FieldError{Msg: "body holds more than one JSON value"}
	}
	out, err := convert(s, v, "")
	if err != nil {
		return nil, err
	}
	m, ok := out.(map[string]any)
	if !ok {
		return nil, &FieldError{Msg: "body must be a JSON object"}
	}
	return m, nil
}

func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

func describe(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case string:
		return "a string"
	case json.Number:
		return "a number"
	case bool:
		return "a boolean"
	case []any:
		return "an array"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("%T", v)
}

func convert(s avro.Schema, v any, path string) (any, error) {
	fail := func(format string, a ...any) (any, error) {
		return nil, &FieldError{Field: path, Msg: fmt.Sprintf(format, a...)}
	}
	switch s := s.(type) {
	case *avro.RecordSchema:
		obj, ok := v.(map[string]any)
		if !ok {
			return fail("want an object (%s), got %s", s.FullName(), describe(v))
		}
		known := map[string]bool{}
		out := make(map[string]any, len(s.Fields()))
		for _, f := range s.Fields() {
			known[f.Name()] = true
			fv, present := obj[f.Name()]
			if !present {
				if !f.HasDefault() {
					return nil, &FieldError{Field: join(path, f.Name()), Msg: "required (no default in the schema)"}
				}
				out[f.Name()] = defaultValue(f)
				continue
			}
			c, err := convert(f.Type(), fv, join(path, f.Name()))
			if err != nil {
				return nil, err
			}
			out[f.Name()] = c
		}
		var unknown []string
		for k := range obj {
			if !known[k] {
				unknown = append(unknown, k)
			}
		}
		if len(unknown) > 0 {
			slices.Sort(unknown)
			return nil, &FieldError{Field: join(path, unknown[0]), Msg: fmt.Sprintf("not in the schema %s", s.FullName())}
		}
		return out, nil
	case *avro.UnionSchema:
		if v == nil {
			if slices.ContainsFunc(s.Types(), func(t avro.Schema) bool { return t.Type() == avro.Null }) {
				return nil, nil
			}
			return fail("null is not allowed")
		}
		// The first non-null branch the value converts to.
		for _, t := range s.Types() {
			if t.Type() == avro.Null {
				continue
			}
			if c, err := convert(t, v, path); err == nil {
				if len(s.Types()) > 2 || !slices.ContainsFunc(s.Types(), func(t avro.Schema) bool { return t.Type() == avro.Null }) {
					// hamba needs the branch named when it cannot infer it.
					return map[string]any{unionName(t): c}, nil
				}
				return c, nil
			}
		}
		return fail("%s matches no branch of the union", describe(v))
	case *avro.RefSchema:
		return convert(s.Schema(), v, path)
	case *avro.EnumSchema:
		str, ok := v.(string)
		if !ok || !slices.Contains(s.Symbols(), str) {
			return fail("want one of %s", strings.Join(s.Symbols(), ", "))
		}
		return str, nil
	case *avro.ArraySchema:
		arr, ok := v.([]any)
		if !ok {
			return fail("want an array, got %s", describe(v))
		}
		out := make([]any, len(arr))
		for i, e := range arr {
			c, err := convert(s.Items(), e, join(path, fmt.Sprint(i)))
			if err != nil {
				return nil, err
			}
			out[i] = c
		}
		return out, nil
	case *avro.MapSchema:
		obj, ok := v.(map[string]any)
		if !ok {
			return fail("want an object, got %s", describe(v))
		}
		out := make(map[string]any, len(obj))
		for k, e := range obj {
			c, err := convert(s.Values(), e, join(path, k))
			if err != nil {
				return nil, err
			}
			out[k] = c
		}
		return out, nil
	case *avro.FixedSchema:
		b, err := bytesOf(v)
		if err != nil || len(b) != s.Size() {
			return fail("want %d bytes, base64-encoded", s.Size())
		}
		out := make([]byte, s.Size())
		copy(out, b)
		return out, nil
	case *avro.PrimitiveSchema:
		return primitive(s, v, path)
	case *avro.NullSchema:
		if v != nil {
			return fail("want null, got %s", describe(v))
		}
		return nil, nil
	}
	return fail("schema type %s is not supported over JSON", s.Type())
}

func unionName(t avro.Schema) string {
	if n, ok := t.(avro.NamedSchema); ok {
		return n.FullName()
	}
	if ls, ok := t.(avro.LogicalTypeSchema); ok && ls.Logical() != nil {
		return string(t.Type()) + "." + string(ls.Logical().Type())
	}
	return string(t.Type())
}

func bytesOf(v any) ([]byte, error) {
	str, ok := v.(string)
	if !ok {
		return nil, fmt.Errorf("not a string")
	}
	return base64.StdEncoding.DecodeString(str)
}

func primitive(s *avro.PrimitiveSchema, v any, path string) (any, error) {
	fail := func(format string, a ...any) (any, error) {
		return nil, &FieldError{Field: path, Msg: fmt.Sprintf(format, a...)}
	}
	logical := ""
	if s.Logical() != nil {
		logical = string(s.Logical().Type())
	}
	switch logical {
	case string(avro.TimestampMillis), string(avro.TimestampMicros), string(avro.LocalTimestampMillis), string(avro.LocalTimestampMicros):
		str, ok := v.(string)
		if !ok {
			return fail("want an RFC 3339 timestamp string, got %s", describe(v))
		}
		t, err := time.Parse(time.RFC3339Nano, str)
		if err != nil {
			return fail("%q is not an RFC 3339 timestamp", str)
		}
		return t, nil
	case string(avro.Date):
		str, ok := v.(string)
		if !ok {
			return fail("want a date string YYYY-MM-DD, got %s", describe(v))
		}
		t, err := time.Parse(time.DateOnly, str)
		if err != nil {
			return fail("%q is not a date YYYY-MM-DD", str)
		}
		return t, nil
	}
	switch s.Type() {
	case avro.String:
		str, ok := v.(string)
		if !ok {
			return fail("want a string, got %s", describe(v))
		}
		return str, nil
	case avro.Boolean:
		b, ok := v.(bool)
		if !ok {
			return fail("want true or false, got %s", describe(v))
		}
		return b, nil
	case avro.Bytes:
		b, err := bytesOf(v)
		if err != nil {
			return fail("want base64-encoded bytes")
		}
		return b, nil
	case avro.Int, avro.Long:
		n, ok := v.(json.Number)
		if !ok {
			return fail("want an integer, got %s", describe(v))
		}
		i, err := n.Int64()
		if err != nil {
			return fail("%s is not an integer", n)
		}
		if s.Type() == avro.Int {
			if i < math.MinInt32 || i > math.MaxInt32 {
				return fail("%d does not fit an int (32 bits)", i)
			}
			return int32(i), nil
		}
		return i, nil
	case avro.Float, avro.Double:
		n, ok := v.(json.Number)
		if !ok {
			return fail("want a number, got %s", describe(v))
		}
		f, err := n.Float64()
		if err != nil {
			return fail("%s is not a number", n)
		}
		if s.Type() == avro.Float {
			return float32(f), nil
		}
		return f, nil
	}
	return fail("type %s is not supported over JSON", s.Type())
}

// defaultValue is a field's default as hamba encodes it.
func defaultValue(f *avro.Field) any {
	d := f.Default()
	if f.Type().Type() == avro.Int {
		if n, ok := d.(int); ok {
			return int32(n)
		}
	}
	return d
}

// toAvroJSON returns v ready for JSON under the names of its Avro schema,
// the names POST takes: a struct becomes an object keyed by its fields'
// avro tags (the field's name when it has none; "-" leaves it out), and
// slices, arrays, maps and pointers are converted through. Other values
// (strings, numbers, times, byte slices) are left to encoding/json.
func toAvroJSON(v any) any {
	if v == nil {
		return nil
	}
	return avroJSONValue(reflect.ValueOf(v))
}

func avroJSONValue(v reflect.Value) any {
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if v.IsNil() {
			return nil
		}
		return avroJSONValue(v.Elem())
	case reflect.Struct:
		if v.Type() == reflect.TypeFor[time.Time]() {
			return v.Interface()
		}
		out := make(map[string]any, v.NumField())
		for i := range v.NumField() {
			f := v.Type().Field(i)
			if !f.IsExported() {
				continue
			}
			name := f.Name
			if tag, ok := f.Tag.Lookup("avro"); ok {
				if tag == "-" {
					continue
				}
				name = tag
			}
			out[name] = avroJSONValue(v.Field(i))
		}
		return out
	case reflect.Slice, reflect.Array:
		if v.Kind() == reflect.Slice && v.IsNil() {
			return nil
		}
		if v.Type().Elem().Kind() == reflect.Uint8 {
			return v.Interface() // bytes: base64, as encoding/json writes them
		}
		out := make([]any, v.Len())
		for i := range out {
			out[i] = avroJSONValue(v.Index(i))
		}
		return out
	case reflect.Map:
		if v.IsNil() {
			return nil
		}
		out := make(map[string]any, v.Len())
		for it := v.MapRange(); it.Next(); {
			out[fmt.Sprint(it.Key().Interface())] = avroJSONValue(it.Value())
		}
		return out
	default:
		if !v.IsValid() {
			return nil
		}
		return v.Interface()
	}
}
