// Package jaeger builds, runs and queries Jaeger for sagapipe's traced demo,
// its end-to-end tracing test and `orchestrator saga trace`.
//
// Jaeger is built from the Go module proxy by the tools module in
// internal/tools/jaeger (its go.sum is committed, so the build needs no
// checksum database) and cached outside the repository. It runs with
// in-memory storage, OTLP in and the query API out, all on loopback; its UI
// assets are not in the Go module, so the UI is a placeholder and the query
// API (/api/...) is what works.
package jaeger

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"time"
)

// Version is the Jaeger release the tools module pins.
const Version = "v1.76.0"

// Package is what the tools module builds.
const Package = "github.com/jaegertracing/jaeger/cmd/jaeger"

// BinaryEnv names the environment variable that overrides BinaryPath.
const BinaryEnv = "SAGAPIPE_JAEGER_BIN"

// BinaryPath is where the built Jaeger is cached: $SAGAPIPE_JAEGER_BIN, or
// sagapipe/jaeger-<Version> in the user's cache directory
// ($XDG_CACHE_HOME, else ~/.cache), the same path `make jaeger` uses.
func BinaryPath() (string, error) {
	if p := os.Getenv(BinaryEnv); p != "" {
		return p, nil
	}
	dir, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("jaeger: no cache directory for the binary (set %s): %w", BinaryEnv, err)
	}
	return filepath.Join(dir, "sagapipe", "jaeger-"+Version), nil
}

// ToolsDir is the directory of the tools module (next to this source file).
func ToolsDir() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("jaeger: cannot locate the source tree")
	}
	dir := filepath.Join(filepath.Dir(file), "..", "tools", "jaeger")
	if _, err := os.Stat(filepath.Join(dir, "go.mod")); err != nil {
		return "", fmt.Errorf("jaeger: tools module not found: %w", err)
	}
	return dir, nil
}

// EnsureBinary returns the cached Jaeger, building it first when it is
// missing (a few minutes on two cores; build output goes to log).
func EnsureBinary(ctx context.Context, log io.Writer) (string, error) {
	bin, err := BinaryPath()
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	dir, err := ToolsDir()
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		return "", fmt.Errorf("jaeger: %w", err)
	}
	fmt.Fprintf(log, "building Jaeger %s into %s (once; it is cached)\n", Version, bin)
	tmp := fmt.Sprintf("%s.%d.tmp", bin, os.Getpid())
	cmd := exec.CommandContext(ctx, "go", "build", "-o", tmp, Package)
	cmd.Dir, cmd.Stdout, cmd.Stderr = dir, log, log
	if err := cmd.Run(); err != nil {
		_ = os.Remove(tmp)
		return "", fmt.Errorf("jaeger: building %s in %s: %w", Package, dir, err)
	}
	if err := os.Rename(tmp, bin); err != nil {
		return "", fmt.Errorf("jaeger: %w", err)
	}
	return bin, nil
}

// Process is a running Jaeger.
type Process struct {
	// QueryURL is the query API's base, e.g. http://127.0.0.1:16686.
	QueryURL string
	// OTLPHTTP and OTLPGRPC are the OTLP receivers' host:port.
	OTLPHTTP, OTLPGRPC string
	cmd                *exec.Cmd
	done               chan error
}

// Start runs bin on free loopback ports with in-memory storage and waits
// until its query API answers. Stop ends it.
func Start(ctx context.Context, bin string, log io.Writer) (*Process, error) {
	dir, err := ToolsDir()
	if err != nil {
		return nil, err
	}
	ports, err := freePorts(4)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "--config", filepath.Join(dir, "config.yaml"))
	cmd.Env = append(os.Environ(),
		"JAEGER_QUERY_PORT="+strconv.Itoa(ports[0]), "JAEGER_QUERY_GRPC_PORT="+strconv.Itoa(ports[1]),
		"JAEGER_OTLP_HTTP_PORT="+strconv.Itoa(ports[2]), "JAEGER_OTLP_GRPC_PORT="+strconv.Itoa(ports[3]))
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("jaeger: start %s: %w", bin, err)
	}
	p := &Process{QueryURL: fmt.Sprintf("http://127.0.0.1:%d", ports[0]),
		OTLPHTTP: fmt.Sprintf("127.0.0.1:%d", ports[2]), OTLPGRPC: fmt.Sprintf("127.0.0.1:%d", ports[3]),
		cmd: cmd, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	c := Client{URL: p.QueryURL}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := c.Services(ctx); err == nil {
			return p, nil
		}
		select {
		case err := <-p.done:
			return nil, fmt.Errorf("jaeger: exited before it was ready: %v", err)
		case <-ctx.Done():
			p.Stop()
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.Stop()
			return nil, errors.New("jaeger: query API not ready after 30s")
		}
	}
}

// Stop ends the process and waits for it.
func (p *Process) Stop() {
	_ = p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func freePorts(n int) ([]int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("jaeger: finding a free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// Client queries Jaeger's HTTP query API.
type Client struct {
	URL  string
	HTTP *http.Client // default http.DefaultClient
}

type response[T any] struct {
	Data   T `json:"data"`
	Errors []struct {
		Code int    `json:"code"`
		Msg  string `json:"msg"`
	} `json:"errors"`
}

func get[T any](ctx context.Context, c Client, path string, query url.Values) (T, error) {
	var zero T
	u := c.URL + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return zero, fmt.Errorf("jaeger: %w", err)
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return zero, fmt.Errorf("jaeger: %w", err)
	}
	defer resp.Body.Close()
	var r response[T]
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return zero, fmt.Errorf("jaeger: GET %s: %s, and the body is not Jaeger's JSON: %w", u, resp.Status, err)
	}
	if resp.StatusCode != http.StatusOK || len(r.Errors) > 0 {
		msg := resp.Status
		if len(r.Errors) > 0 {
			msg = r.Errors[0].Msg
		}
		return zero, fmt.Errorf("jaeger: GET %s: %s", u, msg)
	}
	return r.Data, nil
}

// Services lists the services Jaeger holds spans of.
func (c Client) Services(ctx context.Context) ([]string, error) {
	return get[[]string](ctx, c, "/api/services", nil)
}

// Trace fetches one trace by its hex ID.
func (c Client) Trace(ctx context.Context, traceID string) (Trace, error) {
	ts, err := get[[]Trace](ctx, c, "/api/traces/"+url.PathEscape(traceID), nil)
	if err != nil {
		return Trace{}, err
	}
	if len(ts) == 0 {
		return Trace{}, fmt.Errorf("jaeger: trace %s not found", traceID)
	}
	return ts[0], nil
}

// Traces searches the traces that hold spans of service, newest first, in
// the last hour.
func (c Client) Traces(ctx context.Context, service string, limit int) ([]Trace, error) {
	return get[[]Trace](ctx, c, "/api/traces", url.Values{
		"service": {service}, "limit": {strconv.Itoa(limit)}, "lookback": {"1h"}})
}

// Trace is a trace as Jaeger's query API returns it.
type Trace struct {
	TraceID   string                 `json:"traceID"`
	Spans     []Span                 `json:"spans"`
	Processes map[string]SpanProcess `json:"processes"`
}

// Span is one span of a Trace.
type Span struct {
	TraceID       string      `json:"traceID"`
	SpanID        string      `json:"spanID"`
	OperationName string      `json:"operationName"`
	References    []Reference `json:"references"`
	StartTime     int64       `json:"startTime"` // µs since the epoch
	Duration      int64       `json:"duration"`  // µs
	Tags          []Tag       `json:"tags"`
	Logs          []Log       `json:"logs"`
	ProcessID     string      `json:"processID"`
	// Warnings are what Jaeger found wrong with the span, e.g. a clock
	// skew adjustment.
	Warnings []string `json:"warnings"`
}

// Reference links a span to another (CHILD_OF its parent, or FOLLOWS_FROM).
type Reference struct {
	RefType string `json:"refType"`
	TraceID string `json:"traceID"`
	SpanID  string `json:"spanID"`
}

// Tag is a span attribute.
type Tag struct {
	Key   string `json:"key"`
	Type  string `json:"type"`
	Value any    `json:"value"`
}

// Log is a span event (an exception, for example).
type Log struct {
	Timestamp int64 `json:"timestamp"`
	Fields    []Tag `json:"fields"`
}

// SpanProcess is the resource a span came from.
type SpanProcess struct {
	ServiceName string `json:"serviceName"`
	Tags        []Tag  `json:"tags"`
}

// Tag returns the value of the span's tag key, formatted, and whether it has one.
func (s Span) Tag(key string) (string, bool) {
	for _, t := range s.Tags {
		if t.Key == key {
			return fmt.Sprint(t.Value), true
		}
	}
	return "", false
}

// Failed tells whether the span has error status.
func (s Span) Failed() bool {
	v, _ := s.Tag("error")
	return v == "true"
}

// Parent returns the span's CHILD_OF parent's ID ("" for a root).
func (s Span) Parent() string {
	for _, r := range s.References {
		if r.RefType == "CHILD_OF" {
			return r.SpanID
		}
	}
	return ""
}

// Service returns the service.name of the span's process.
func (t Trace) Service(s Span) string { return t.Processes[s.ProcessID].ServiceName }
