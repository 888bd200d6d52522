package schema

import (
	"errors"
	"fmt"
)

// Sentinels for errors.Is. Each is matched by the typed error that carries
// the details.
var (
	// ErrNotFramed: the bytes are not in the Confluent wire format (too short,
	// or the first byte is not the 0x00 magic byte). Poison.
	ErrNotFramed = errors.New("schema: not in the Confluent wire format")
	// ErrUnknownSchemaID: the registry has no schema with the record's ID. Poison.
	ErrUnknownSchemaID = errors.New("schema: unknown schema ID")
	// ErrUndecodable: the payload does not decode with its writer's schema
	// into the reader's type. Poison.
	ErrUndecodable = errors.New("schema: payload does not decode")
	// ErrRegistryUnavailable: the registry could not be reached or failed on
	// its side. Transient: retry.
	ErrRegistryUnavailable = errors.New("schema: registry unavailable")
	// ErrIncompatible: the registry refused a schema as incompatible with the
	// subject's earlier versions.
	ErrIncompatible = errors.New("schema: incompatible with the subject's earlier versions")
	// ErrMissingHeader: a required envelope header is absent or empty. Poison.
	ErrMissingHeader = errors.New("schema: required header missing")
	// ErrInvalidHeader: an envelope header has a value it cannot have. Poison.
	ErrInvalidHeader = errors.New("schema: invalid header")
)

// Poison errors report input that will never process, however often it is
// retried: such errors have a method Poison() bool that returns true, which
// dlq/ uses to dead-letter the record at once. Transient errors have a method
// Temporary() bool that returns true.

// FramingError reports bytes that are not in the Confluent wire format.
type FramingError struct {
	Length int    // length of the value
	Magic  byte   // first byte, when there is one
	Reason string // what is wrong, for people
}

func (e *FramingError) Error() string {
	return fmt.Sprintf("%v: %s (%d bytes)", ErrNotFramed, e.Reason, e.Length)
}
func (e *FramingError) Is(target error) bool { return target == ErrNotFramed }

// Poison reports true: the bytes will never decode.
func (e *FramingError) Poison() bool { return true }

// UnknownSchemaIDError reports a schema ID the registry does not know.
type UnknownSchemaIDError struct {
	ID  int
	Err error // the registry's answer
}

func (e *UnknownSchemaIDError) Error() string {
	return fmt.Sprintf("%v %d (was the record written against another registry?): %v", ErrUnknownSchemaID, e.ID, e.Err)
}
func (e *UnknownSchemaIDError) Is(target error) bool { return target == ErrUnknownSchemaID }
func (e *UnknownSchemaIDError) Unwrap() error        { return e.Err }

// Poison reports true: the ID will not appear by retrying.
func (e *UnknownSchemaIDError) Poison() bool { return true }

// DecodeError reports a payload that does not decode.
type DecodeError struct {
	SchemaID int    // the writer's schema ID from the frame
	Target   string // the Go type decoded into
	Err      error  // hamba's error, or the resolution failure
}

func (e *DecodeError) Error() string {
	return fmt.Sprintf("%v: writer schema %d into %s: %v", ErrUndecodable, e.SchemaID, e.Target, e.Err)
}
func (e *DecodeError) Is(target error) bool { return target == ErrUndecodable }
func (e *DecodeError) Unwrap() error        { return e.Err }

// Poison reports true: the bytes and the schemas will not change.
func (e *DecodeError) Poison() bool { return true }

// RegistryError reports a failed registry call.
type RegistryError struct {
	Op      string // what was being done, e.g. `register subject "orders-value"`
	URL     string // the registry's base URL
	Code    int    // Confluent error_code when the registry answered, else 0
	Message string // the registry's message when it answered
	Err     error
}

func (e *RegistryError) Error() string {
	if e.Code != 0 {
		return fmt.Sprintf("schema: registry %s: %s: error %d: %s", e.URL, e.Op, e.Code, e.Message)
	}
	return fmt.Sprintf("schema: registry %s: %s: %v (is the registry running and the URL right?)", e.URL, e.Op, e.Err)
}
func (e *RegistryError) Unwrap() error { return e.Err }

// Is matches ErrRegistryUnavailable for transient failures and
// ErrIncompatible for a refused registration.
func (e *RegistryError) Is(target error) bool {
	switch target {
	case ErrRegistryUnavailable:
		return e.Temporary()
	case ErrIncompatible:
		return e.Code == 409
	}
	return false
}

// Temporary reports whether retrying may succeed: the registry was not
// reached, or it failed on its side (5xx).
func (e *RegistryError) Temporary() bool {
	return e.Code == 0 || e.Code >= 50000 || (e.Code >= 500 && e.Code < 600)
}

// HeaderError reports an envelope header that is missing or malformed.
type HeaderError struct {
	Header string // the header's name, e.g. "ce_id"
	Value  string // the offending value; empty when missing
	Reason string
}

func (e *HeaderError) Error() string {
	if e.Value == "" {
		return fmt.Sprintf("schema: header %q: %s", e.Header, e.Reason)
	}
	return fmt.Sprintf("schema: header %q=%q: %s", e.Header, e.Value, e.Reason)
}

func (e *HeaderError) Is(target error) bool {
	if target == ErrMissingHeader {
		return e.Value == ""
	}
	return target == ErrInvalidHeader && e.Value != ""
}

// Poison reports true: the headers of a record never change.
func (e *HeaderError) Poison() bool { return true }
