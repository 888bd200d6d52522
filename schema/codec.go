package schema

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"reflect"
	"sync"

	"github.com/hamba/avro/v2"
)

// magicByte opens every Confluent-framed value.
const magicByte = 0x00

// headerLen is the frame: magic byte and 4-byte big-endian schema ID.
const headerLen = 5

// Codec encodes values of T with one Avro schema (the writer's schema on
// encode, the reader's on decode) in the Confluent wire format. It is safe
// for concurrent use.
type Codec[T any] struct {
	serde  *Serde
	schema avro.Schema
	text   string
	target string

	// api is private to this codec: hamba caches encoders and decoders by
	// canonical fingerprint, which ignores defaults, so two codecs whose
	// schemas differ only in defaults must not share one.
	api avro.API

	ids      sync.Map // topic → schema ID
	readers  sync.Map // writer schema ID → schema to read with
	writers  sync.Pool
	decoders sync.Pool
}

// NewCodec returns a codec for T with the Avro schema text. T's fields map
// to the schema's fields by their `avro:"name"` tags.
func NewCodec[T any](s *Serde, schemaText string) (*Codec[T], error) {
	target := reflect.TypeFor[T]().String()
	if s == nil {
		return nil, fmt.Errorf("schema: NewCodec[%s]: serde is nil", target)
	}
	sch, err := Parse(schemaText)
	if err != nil {
		return nil, fmt.Errorf("schema: NewCodec[%s]: schema does not parse: %w", target, err)
	}
	c := &Codec[T]{serde: s, schema: sch, text: schemaText, target: target, api: avro.Config{}.Freeze()}
	c.writers.New = func() any { return avro.NewWriter(nil, 256, avro.WithWriterConfig(c.api)) }
	c.decoders.New = func() any { return avro.NewReader(nil, 0, avro.WithReaderConfig(c.api)) }
	return c, nil
}

// Schema returns the codec's schema.
func (c *Codec[T]) Schema() avro.Schema { return c.schema }

// Register registers the codec's schema for topic's subject (when the serde
// auto-registers; otherwise it looks it up) and returns its ID. Encode does
// this on first use; call it at start-up to fail early.
func (c *Codec[T]) Register(ctx context.Context, topic string) (int, error) {
	if id, ok := c.ids.Load(topic); ok {
		return id.(int), nil
	}
	subject, err := c.serde.Subject(topic, c.schema)
	if err != nil {
		return 0, err
	}
	id, err := c.serde.Register(ctx, subject, c.text)
	if err != nil {
		return 0, err
	}
	c.ids.Store(topic, id)
	return id, nil
}

// Encode returns v in the Confluent wire format, registered for topic.
func (c *Codec[T]) Encode(ctx context.Context, topic string, v *T) ([]byte, error) {
	id, err := c.Register(ctx, topic)
	if err != nil {
		return nil, err
	}
	w := c.writers.Get().(*avro.Writer)
	defer c.writers.Put(w)
	w.Reset(nil)
	var frame [headerLen]byte
	frame[0] = magicByte
	binary.BigEndian.PutUint32(frame[1:], uint32(id))
	_, _ = w.Write(frame[:])
	w.WriteVal(c.schema, v)
	if err := w.Error; err != nil {
		w.Error = nil
		return nil, fmt.Errorf("schema: encode %s for topic %q: %w", c.target, topic, err)
	}
	return append([]byte(nil), w.Buffer()...), nil
}

// Decode decodes a Confluent-framed value into a new T.
func (c *Codec[T]) Decode(ctx context.Context, data []byte) (T, error) {
	var v T
	err := c.DecodeInto(ctx, data, &v)
	return v, err
}

// DecodeInto decodes a Confluent-framed value into v, resolving the writer's
// schema (looked up by the frame's ID) against the codec's. Errors are a
// *FramingError, *UnknownSchemaIDError or *DecodeError (all poison) or a
// *RegistryError (transient when the registry is unreachable).
func (c *Codec[T]) DecodeInto(ctx context.Context, data []byte, v *T) error {
	id, payload, err := SplitFrame(data)
	if err != nil {
		return err
	}
	sch, err := c.readerFor(ctx, id)
	if err != nil {
		return err
	}
	r := c.decoders.Get().(*avro.Reader)
	r.Reset(payload)
	r.ReadVal(sch, v)
	err = r.Error
	if err == nil {
		// Peek at the end of input sets io.EOF; anything else is left over.
		r.Peek()
		if r.Error == nil {
			err = errors.New("bytes left over after the value: the writer's schema does not match the payload")
		}
	} else if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	r.Error = nil
	r.Reset(nil)
	c.decoders.Put(r)
	if err != nil {
		return &DecodeError{SchemaID: id, Target: c.target, Err: err}
	}
	return nil
}

// readerFor returns the schema that reads data written with schema id into
// T: the codec's own when the writer's is the same, else the resolution of
// the two.
func (c *Codec[T]) readerFor(ctx context.Context, id int) (avro.Schema, error) {
	if sch, ok := c.readers.Load(id); ok {
		return sch.(avro.Schema), nil
	}
	writer, err := c.serde.SchemaByID(ctx, id)
	if err != nil {
		return nil, err
	}
	sch := c.schema
	if writer.CacheFingerprint() != c.schema.CacheFingerprint() {
		// A fresh checker: its verdicts are cached by canonical fingerprint,
		// which ignores defaults.
		sch, err = avro.NewSchemaCompatibility().Resolve(c.schema, writer)
		if err != nil {
			return nil, &DecodeError{SchemaID: id, Target: c.target,
				Err: fmt.Errorf("writer schema cannot be read with the codec's schema: %w", err)}
		}
	}
	c.readers.Store(id, sch)
	return sch, nil
}

// SplitFrame splits a Confluent-framed value into its schema ID and Avro
// payload. Data that is not framed is a *FramingError.
func SplitFrame(data []byte) (id int, payload []byte, err error) {
	if len(data) < headerLen {
		return 0, nil, &FramingError{Length: len(data), Reason: "shorter than the 5-byte header (magic byte + schema ID)"}
	}
	if data[0] != magicByte {
		return 0, nil, &FramingError{Length: len(data), Magic: data[0],
			Reason: fmt.Sprintf("magic byte is 0x%02x, want 0x00", data[0])}
	}
	return int(binary.BigEndian.Uint32(data[1:headerLen])), data[headerLen:], nil
}
