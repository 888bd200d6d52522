package registry

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/hamba/avro/v2"
	"github.com/twmb/franz-go/pkg/sr"
	"github.com/twmb/franz-go/pkg/sr/srfake"

	"github.com/sagapipe/sagapipe/schema"
)

// DefaultCompatibility is the level of a subject that has none of its own
// while no global level was set.
const DefaultCompatibility = "FULL_TRANSITIVE"

// journalFile is the name of the write-request journal in the data directory.
const journalFile = "registry.journal"

// maxBody bounds request bodies, as Confluent's registry does.
const maxBody = 1 << 20

// Registry is an http.Handler serving the Schema Registry REST API with
// compatibility enforcement. Create it with New; Close it to release the
// journal.
type Registry struct {
	fake    *srfake.Registry
	handler http.Handler

	// writeMu serializes write requests so that a compatibility check and
	// the registration it allows are one atomic step, and the journal's
	// order is the order the writes took effect.
	writeMu sync.Mutex
	journal *os.File
}

// Option configures a Registry.
type Option func(*options)

type options struct {
	dataDir string
}

// WithDataDir keeps the registry's state in dir, so that it survives a
// restart. The directory is created if needed.
func WithDataDir(dir string) Option { return func(o *options) { o.dataDir = dir } }

// New returns a Registry. With a data directory it replays the journal there
// before returning.
func New(opts ...Option) (*Registry, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	level, _ := parseLevel(DefaultCompatibility)
	r := &Registry{fake: srfake.NewRegistry(srfake.WithGlobalCompat(level))}

	mux := http.NewServeMux()
	mux.HandleFunc("POST /subjects/{subject}/versions", r.handleRegister)
	mux.HandleFunc("POST /compatibility/subjects/{subject}/versions", r.handleCompatibility)
	mux.HandleFunc("POST /compatibility/subjects/{subject}/versions/{version}", r.handleCompatibility)
	mux.Handle("/", r.fake.Handler())
	r.handler = mux

	if o.dataDir == "" {
		return r, nil
	}
	if err := os.MkdirAll(o.dataDir, 0o755); err != nil {
		return nil, fmt.Errorf("registry: create data directory: %w", err)
	}
	path := filepath.Join(o.dataDir, journalFile)
	if err := r.replay(path); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, fmt.Errorf("registry: open journal: %w", err)
	}
	r.journal = f
	return r, nil
}

// Close closes the journal. The handler must not be used afterwards.
func (r *Registry) Close() error {
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	if r.journal == nil {
		return nil
	}
	err := r.journal.Close()
	r.journal = nil
	return err
}

// ServeHTTP implements http.Handler.
func (r *Registry) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.Method == http.MethodGet || req.Method == http.MethodHead {
		r.handler.ServeHTTP(w, req)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, req.Body, maxBody))
	if err != nil {
		writeError(w, http.StatusRequestEntityTooLarge, 41301, "request body too large or unreadable: "+err.Error())
		return
	}
	req.Body = io.NopCloser(bytes.NewReader(body))

	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
	r.handler.ServeHTTP(rec, req)
	if rec.status < 300 && !strings.HasPrefix(req.URL.Path, "/compatibility/") && r.journal != nil {
		// A failed journal write must not pass silently: the next restart
		// would hand out schema IDs that records on disk already use.
		if err := r.appendJournal(req, body); err != nil {
			panic(fmt.Sprintf("registry: journal write failed, schema state would be lost on restart: %v", err))
		}
	}
}

type journalEntry struct {
	Method string `json:"method"`
	Path   string `json:"path"`
	Body   string `json:"body,omitempty"`
}

func (r *Registry) appendJournal(req *http.Request, body []byte) error {
	line, err := json.Marshal(journalEntry{Method: req.Method, Path: req.URL.RequestURI(), Body: string(body)})
	if err != nil {
		return err
	}
	if _, err := r.journal.Write(append(line, '\n')); err != nil {
		return err
	}
	return r.journal.Sync()
}

func (r *Registry) replay(path string) error {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("registry: read journal: %w", err)
	}
	good := 0 // bytes of whole, replayed lines
	for n := 1; good < len(data); n++ {
		line, rest, complete := bytes.Cut(data[good:], []byte{'\n'})
		var e journalEntry
		if err := json.Unmarshal(line, &e); err != nil {
			if !complete || len(bytes.TrimSpace(rest)) == 0 {
				break // a torn last line is what a crash mid-append leaves
			}
			return fmt.Errorf("registry: journal %s line %d is corrupt (move the file away to start empty): %w", path, n, err)
		}
		req := httptest.NewRequest(e.Method, e.Path, strings.NewReader(e.Body))
		rec := httptest.NewRecorder()
		r.handler.ServeHTTP(rec, req)
		if rec.Code >= 300 {
			return fmt.Errorf("registry: replaying journal %s line %d (%s %s) failed: %d %s",
				path, n, e.Method, e.Path, rec.Code, strings.TrimSpace(rec.Body.String()))
		}
		good += len(line) + 1
	}
	if good < len(data) {
		if err := os.Truncate(path, int64(good)); err != nil {
			return fmt.Errorf("registry: drop torn journal tail: %w", err)
		}
	}
	return nil
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}

// schemaRequest is the body of a registration or compatibility request.
type schemaRequest struct {
	Schema     string            `json:"schema"`
	SchemaType string            `json:"schemaType,omitempty"`
	References []json.RawMessage `json:"references,omitempty"`
	Metadata   json.RawMessage   `json:"metadata,omitempty"`
	RuleSet    json.RawMessage   `json:"ruleSet,omitempty"`
}

func (s schemaRequest) isAvro() bool {
	return s.SchemaType == "" || strings.EqualFold(s.SchemaType, "AVRO")
}

func (r *Registry) handleRegister(w http.ResponseWriter, req *http.Request) {
	subject := req.PathValue("subject")
	body, _ := io.ReadAll(req.Body) // ServeHTTP already read and bounded it
	req.Body = io.NopCloser(bytes.NewReader(body))

	var sreq schemaRequest
	if err := json.Unmarshal(body, &sreq); err != nil {
		writeError(w, http.StatusUnprocessableEntity, 42201, "Invalid schema request body: "+err.Error())
		return
	}
	if !sreq.isAvro() || len(sreq.References) > 0 {
		// Only self-contained Avro schemas are checked; the rest is srfake's.
		r.fake.Handler().ServeHTTP(w, req)
		return
	}
	candidate, err := schema.Parse(sreq.Schema)
	if err != nil {
		writeError(w, http.StatusUnprocessableEntity, 42201, "Invalid schema "+sreq.Schema+": "+err.Error())
		return
	}
	if r.alreadyRegistered(subject, body) {
		r.fake.Handler().ServeHTTP(w, req)
		return
	}
	level, err := r.level(subject)
	if err != nil {
		writeError(w, http.StatusInternalServerError, 50001, err.Error())
		return
	}
	if problem := r.check(subject, candidate, level, nil); problem != nil {
		msg := fmt.Sprintf("Schema being registered is incompatible with an earlier schema for subject %q, details: [%s]",
			subject, problem)
		writeError(w, http.StatusConflict, http.StatusConflict, msg)
		return
	}
	r.fake.Handler().ServeHTTP(w, req)
}

func (r *Registry) handleCompatibility(w http.ResponseWriter, req *http.Request) {
	subject := req.PathValue("subject")
	var sreq schemaRequest
	if err := json.NewDecoder(req.Body).Decode(&sreq); err != nil {
		writeError(w, http.StatusUnprocessableEntity, 42201, "Invalid schema request body: "+err.Error())
		return
	}
	if !sreq.isAvro() || len(sreq.References) > 0 {
		writeError(w, http.StatusUnprocessableEntity, 42201,
			"the embedded registry checks only self-contained AVRO schemas")
		return
	}
	candidate, err := schema.Parse(sreq.Schema)
	if err != nil {
		writeError(w, http.StatusUnprocessableEntity, 42201, "Invalid schema: "+err.Error())
		return
	}
	level, err := r.level(subject)
	if err != nil {
		writeError(w, http.StatusInternalServerError, 50001, err.Error())
		return
	}

	var only *int
	if v := req.PathValue("version"); v != "" {
		n, err := r.resolveVersion(subject, v)
		if err != nil {
			writeError(w, http.StatusNotFound, 40402, err.Error())
			return
		}
		only = &n
	}
	resp := map[string]any{"is_compatible": true}
	if problem := r.check(subject, candidate, level, only); problem != nil {
		resp["is_compatible"] = false
		if req.URL.Query().Get("verbose") == "true" {
			resp["messages"] = []string{problem.Error()}
		}
	}
	respondJSON(w, http.StatusOK, resp)
}

// check returns why candidate may not join subject at level, or nil. With
// only set, candidate is checked against that version alone.
func (r *Registry) check(subject string, candidate avro.Schema, level string, only *int) error {
	directions := levelDirections[level]
	if len(directions) == 0 {
		return nil
	}
	versions, err := r.versions(subject)
	if err != nil {
		return err
	}
	switch {
	case only != nil:
		versions = []int{*only}
	case !strings.HasSuffix(level, "_TRANSITIVE") && len(versions) > 0:
		versions = versions[len(versions)-1:]
	}
	// Newest first: the most relevant conflict is reported.
	for i := len(versions) - 1; i >= 0; i-- {
		existing, err := r.schemaAt(subject, versions[i])
		if err != nil {
			return err
		}
		for _, d := range directions {
			reader, writer := candidate, existing
			if d == "FORWARD" {
				reader, writer = existing, candidate
			}
			// A fresh checker per check: hamba caches verdicts by canonical
			// fingerprint, which ignores defaults, so a cached verdict could
			// belong to a version that differs only in a default.
			if err := avro.NewSchemaCompatibility().Compatible(reader, writer); err != nil {
				return &incompatibility{direction: d, level: level, version: versions[i], reason: err.Error()}
			}
		}
	}
	return nil
}

type incompatibility struct {
	direction, level, reason string
	version                  int
}

func (e *incompatibility) Error() string {
	return fmt.Sprintf("{errorType:'%s_INCOMPATIBLE', description:'%s'}, {oldSchemaVersion: %d}, {compatibility: '%s'}",
		e.direction, e.reason, e.version, e.level)
}

// levelDirections says which reads a level requires: BACKWARD, the new
// schema reads data written with the old; FORWARD, the old reads the new.
var levelDirections = map[string][]string{
	"NONE":                nil,
	"BACKWARD":            {"BACKWARD"},
	"BACKWARD_TRANSITIVE": {"BACKWARD"},
	"FORWARD":             {"FORWARD"},
	"FORWARD_TRANSITIVE":  {"FORWARD"},
	"FULL":                {"BACKWARD", "FORWARD"},
	"FULL_TRANSITIVE":     {"BACKWARD", "FORWARD"},
}

func parseLevel(s string) (sr.CompatibilityLevel, error) {
	var l sr.CompatibilityLevel
	err := l.UnmarshalText([]byte(s))
	return l, err
}

// The helpers below ask srfake through its own REST API, so this package
// depends on nothing but srfake's documented behaviour.

func (r *Registry) fakeGet(path string, into any) (int, error) {
	rec := httptest.NewRecorder()
	r.fake.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	if rec.Code != http.StatusOK {
		return rec.Code, nil
	}
	return rec.Code, json.Unmarshal(rec.Body.Bytes(), into)
}

func (r *Registry) level(subject string) (string, error) {
	var cfg struct {
		CompatibilityLevel string `json:"compatibilityLevel"`
	}
	code, err := r.fakeGet("/config/"+url.PathEscape(subject)+"?defaultToGlobal=true", &cfg)
	if err != nil || code != http.StatusOK {
		return "", fmt.Errorf("reading compatibility level of %q: status %d: %v", subject, code, err)
	}
	if _, ok := levelDirections[cfg.CompatibilityLevel]; !ok {
		return "", fmt.Errorf("subject %q has unknown compatibility level %q", subject, cfg.CompatibilityLevel)
	}
	return cfg.CompatibilityLevel, nil
}

func (r *Registry) versions(subject string) ([]int, error) {
	var vs []int
	code, err := r.fakeGet("/subjects/"+url.PathEscape(subject)+"/versions", &vs)
	if code == http.StatusNotFound {
		return nil, nil
	}
	if err != nil || code != http.StatusOK {
		return nil, fmt.Errorf("listing versions of %q: status %d: %v", subject, code, err)
	}
	sort.Ints(vs)
	return vs, nil
}

func (r *Registry) resolveVersion(subject, v string) (int, error) {
	var got struct {
		Version int `json:"version"`
	}
	code, err := r.fakeGet("/subjects/"+url.PathEscape(subject)+"/versions/"+url.PathEscape(v), &got)
	if err != nil || code != http.StatusOK {
		return 0, fmt.Errorf("version %s not found for subject %q", v, subject)
	}
	return got.Version, nil
}

func (r *Registry) schemaAt(subject string, version int) (avro.Schema, error) {
	var got struct {
		Schema string `json:"schema"`
	}
	path := "/subjects/" + url.PathEscape(subject) + "/versions/" + strconv.Itoa(version)
	if code, err := r.fakeGet(path, &got); err != nil || code != http.StatusOK {
		return nil, fmt.Errorf("reading %q version %d: status %d: %v", subject, version, code, err)
	}
	return schema.Parse(got.Schema)
}

func (r *Registry) alreadyRegistered(subject string, body []byte) bool {
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodPost, "/subjects/"+url.PathEscape(subject), bytes.NewReader(body))
	r.fake.Handler().ServeHTTP(rec, req)
	return rec.Code == http.StatusOK
}

func respondJSON(w http.ResponseWriter, status int, body any) {
	w.Header().Set("Content-Type", "application/vnd.schemaregistry.v1+json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}

func writeError(w http.ResponseWriter, status, code int, msg string) {
	respondJSON(w, status, map[string]any{"error_code": code, "message": msg})
}
