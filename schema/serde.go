package schema

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hamba/avro/v2"
	"github.com/riferrei/srclient"
	"golang.org/x/sync/singleflight"
)

// SubjectNameStrategy names the registry subject a topic's values are
// registered under.
type SubjectNameStrategy func(topic string, s avro.Schema) (string, error)

// TopicNameStrategy names the subject "<topic>-value": one schema lineage
// per topic. It is the default, as in Confluent's serializers.
func TopicNameStrategy(topic string, _ avro.Schema) (string, error) {
	if topic == "" {
		return "", errors.New("schema: topic name strategy needs a topic; the topic is empty")
	}
	return topic + "-value", nil
}

// RecordNameStrategy names the subject after the record's full name, so one
// topic may carry several event types, each with its own lineage.
func RecordNameStrategy(_ string, s avro.Schema) (string, error) {
	named, ok := s.(avro.NamedSchema)
	if !ok {
		return "", fmt.Errorf("schema: record name strategy needs a named schema (record, enum or fixed); got %s", s.Type())
	}
	return named.FullName(), nil
}

// Opt configures a Serde.
type Opt interface{ apply(*serdeConfig) }

type optFunc func(*serdeConfig)

func (f optFunc) apply(c *serdeConfig) { f(c) }

type serdeConfig struct {
	naming       SubjectNameStrategy
	autoRegister bool
	user, pass   string
	httpClient   *http.Client
	timeout      time.Duration
}

// WithSubjectNameStrategy sets how subjects are named (default TopicNameStrategy).
func WithSubjectNameStrategy(s SubjectNameStrategy) Opt {
	return optFunc(func(c *serdeConfig) { c.naming = s })
}

// WithAutoRegister sets whether Encode registers a schema the subject does
// not have yet (default true). With false, the schema must have been
// registered beforehand, as production registries often require.
func WithAutoRegister(on bool) Opt {
	return optFunc(func(c *serdeConfig) { c.autoRegister = on })
}

// WithBasicAuth authenticates to the registry with HTTP basic auth.
func WithBasicAuth(user, password string) Opt {
	return optFunc(func(c *serdeConfig) { c.user, c.pass = user, password })
}

// WithHTTPClient sets the HTTP client (for TLS settings, proxies). Its
// Timeout is replaced by WithTimeout's when that is given.
func WithHTTPClient(hc *http.Client) Opt {
	return optFunc(func(c *serdeConfig) { c.httpClient = hc })
}

// WithTimeout bounds each registry request (default 10s). srclient takes no
// context, so this, not ctx, bounds a request already sent.
func WithTimeout(d time.Duration) Opt {
	return optFunc(func(c *serdeConfig) { c.timeout = d })
}

// Serde talks to the Schema Registry for the codecs built on it and caches
// everything it learns: schemas by ID and IDs by subject and schema. After
// the first record of each schema no call reaches the registry. A Serde is
// safe for concurrent use and holds no goroutines.
type Serde struct {
	client *srclient.SchemaRegistryClient
	url    string
	cfg    serdeConfig
	calls  atomic.Int64

	flight singleflight.Group
	mu     sync.RWMutex
	byID   map[int]avro.Schema
	ids    map[subjectSchema]int
}

type subjectSchema struct{ subject, text string }

// NewSerde returns a Serde for the registry at registryURL.
func NewSerde(registryURL string, opts ...Opt) (*Serde, error) {
	cfg := serdeConfig{naming: TopicNameStrategy, autoRegister: true, timeout: 10 * time.Second}
	for _, o := range opts {
		o.apply(&cfg)
	}
	var errs []error
	u, err := url.Parse(registryURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		errs = append(errs, fmt.Errorf("schema: registry URL %q must be http(s)://host:port", registryURL))
	}
	if cfg.naming == nil {
		errs = append(errs, errors.New("schema: WithSubjectNameStrategy: strategy is nil"))
	}
	if cfg.timeout <= 0 {
		errs = append(errs, fmt.Errorf("schema: WithTimeout: %v must be positive", cfg.timeout))
	}
	if (cfg.user == "") != (cfg.pass == "") {
		errs = append(errs, errors.New("schema: WithBasicAuth needs both a user and a password"))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}

	hc := &http.Client{}
	if cfg.httpClient != nil {
		c := *cfg.httpClient
		hc = &c
	}
	hc.Timeout = cfg.timeout
	s := &Serde{
		url:  registryURL,
		cfg:  cfg,
		byID: make(map[int]avro.Schema),
		ids:  make(map[subjectSchema]int),
	}
	s.client = srclient.NewSchemaRegistryClient(registryURL,
		srclient.WithClient(hc),
		srclient.WithPreReqFn(func(*http.Request) error { s.calls.Add(1); return nil }))
	// Our caches are the ones that matter; srclient's would also cache
	// "latest" forever.
	s.client.CachingEnabled(false)
	if cfg.user != "" {
		s.client.SetCredentials(cfg.user, cfg.pass)
	}
	return s, nil
}

// RegistryCalls returns how many HTTP requests reached the registry.
func (s *Serde) RegistryCalls() int64 { return s.calls.Load() }

// RegistryURL returns the registry's base URL.
func (s *Serde) RegistryURL() string { return s.url }

// Subject returns the subject topic's values of schema sch are registered under.
func (s *Serde) Subject(topic string, sch avro.Schema) (string, error) {
	return s.cfg.naming(topic, sch)
}

// Register returns the ID of schema text under subject, registering it when
// auto-registration is on and looking it up otherwise. Answers are cached.
func (s *Serde) Register(ctx context.Context, subject, text string) (int, error) {
	key := subjectSchema{subject, text}
	s.mu.RLock()
	id, ok := s.ids[key]
	s.mu.RUnlock()
	if ok {
		return id, nil
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	v, err, _ := s.flight.Do("r\x00"+subject+"\x00"+text, func() (any, error) {
		var (
			got *srclient.Schema
			err error
			op  string
		)
		if s.cfg.autoRegister {
			op = fmt.Sprintf("register subject %q", subject)
			got, err = s.client.CreateSchema(subject, text, srclient.Avro)
		} else {
			op = fmt.Sprintf("look up schema in subject %q (auto-registration is off: register it first)", subject)
			got, err = s.client.LookupSchema(subject, text, srclient.Avro)
		}
		if err != nil {
			return 0, s.registryError(op, err)
		}
		s.mu.Lock()
		s.ids[key] = got.ID()
		s.mu.Unlock()
		return got.ID(), nil
	})
	if err != nil {
		return 0, err
	}
	return v.(int), nil
}

// SchemaByID returns the schema the registry holds under id, parsed. Answers
// are cached; a schema ID never changes what it names.
func (s *Serde) SchemaByID(ctx context.Context, id int) (avro.Schema, error) {
	s.mu.RLock()
	sch, ok := s.byID[id]
	s.mu.RUnlock()
	if ok {
		return sch, nil
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	v, err, _ := s.flight.Do("i\x00"+strconv.Itoa(id), func() (any, error) {
		got, err := s.client.GetSchema(id)
		if err != nil {
			var se srclient.Error
			if errors.As(err, &se) && se.Code == 40403 {
				return nil, &UnknownSchemaIDError{ID: id, Err: err}
			}
			return nil, s.registryError(fmt.Sprintf("get schema %d", id), err)
		}
		sch, err := Parse(got.Schema())
		if err != nil {
			return nil, &DecodeError{SchemaID: id, Target: "schema", Err: fmt.Errorf("registry schema does not parse: %w", err)}
		}
		s.mu.Lock()
		s.byID[id] = sch
		s.mu.Unlock()
		return sch, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(avro.Schema), nil
}

func (s *Serde) registryError(op string, err error) error {
	re := &RegistryError{Op: op, URL: s.url, Err: err}
	var se srclient.Error
	if errors.As(err, &se) {
		re.Code, re.Message = se.Code, se.Message
	}
	return re
}

// Parse parses an Avro schema with a cache of its own: hamba's default cache
// is global and keyed by full name, so two versions of one record would
// collide in it. Use it, not avro.Parse, for schemas that evolve.
func Parse(text string) (avro.Schema, error) {
	return avro.ParseWithCache(text, "", &avro.SchemaCache{})
}
