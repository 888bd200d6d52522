package main

import (
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"sync/atomic"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
)

// otlpSink is an OTLP trace receiver inside the harness: it decodes every
// export request, counts its spans and drops them, so that a traced run
// measures what exporting costs the services, not what a backend costs.
// It speaks OTLP/HTTP (protobuf, POST /v1/traces) or OTLP/gRPC.
type otlpSink struct {
	protocol   string // "http/protobuf" or "grpc"
	endpoint   string // what OTEL_EXPORTER_OTLP_ENDPOINT is set to
	spans      atomic.Int64
	attributes atomic.Int64 // the spans' attributes, summed
	requests   atomic.Int64
	// cpu is the receiver's own CPU time (OTLP/HTTP only: reading and
	// decoding each request on a thread locked for it), which the traced
	// run's CPU per saga includes and a real collector would spend
	// elsewhere.
	cpu   atomic.Int64
	close func()
}

// startOTLPSink listens on a free port of 127.0.0.1.
func startOTLPSink(protocol string) (*otlpSink, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &otlpSink{protocol: protocol}
	switch protocol {
	case "grpc":
		srv := grpc.NewServer()
		coltracepb.RegisterTraceServiceServer(srv, grpcTraceSink{s: s})
		go func() { _ = srv.Serve(lis) }()
		s.endpoint, s.close = "http://"+lis.Addr().String(), srv.Stop
	case "http/protobuf":
		srv := &http.Server{Handler: http.HandlerFunc(s.serveHTTP)}
		go func() { _ = srv.Serve(lis) }()
		s.endpoint, s.close = "http://"+lis.Addr().String(), func() { _ = srv.Close() }
	default:
		lis.Close()
		return nil, fmt.Errorf("--otlp-protocol %q: want grpc or http/protobuf", protocol)
	}
	return s, nil
}

func (s *otlpSink) count(req *coltracepb.ExportTraceServiceRequest) {
	var n, attrs int64
	for _, rs := range req.GetResourceSpans() {
		for _, ss := range rs.GetScopeSpans() {
			n += int64(len(ss.GetSpans()))
			for _, span := range ss.GetSpans() {
				attrs += int64(len(span.GetAttributes()))
			}
		}
	}
	s.spans.Add(n)
	s.attributes.Add(attrs)
	s.requests.Add(1)
}

func (s *otlpSink) serveHTTP(w http.ResponseWriter, r *http.Request) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	began := threadCPU()
	defer func() { s.cpu.Add(int64(threadCPU() - began)) }()
	if r.Method != http.MethodPost || r.URL.Path != "/v1/traces" {
		http.Error(w, "only POST /v1/traces", http.StatusNotFound)
		return
	}
	var body io.Reader = r.Body
	if r.Header.Get("Content-Encoding") == "gzip" {
		gz, err := gzip.NewReader(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		defer gz.Close()
		body = gz
	}
	raw, err := io.ReadAll(body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var req coltracepb.ExportTraceServiceRequest
	if err := proto.Unmarshal(raw, &req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	s.count(&req)
	resp, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
	w.Header().Set("Content-Type", "application/x-protobuf")
	_, _ = w.Write(resp)
}

type grpcTraceSink struct {
	coltracepb.UnimplementedTraceServiceServer
	s *otlpSink
}

func (g grpcTraceSink) Export(_ context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	g.s.count(req)
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

var errNoSpans = errors.New("the traced run exported no spans (is the exporter pointed at the sink?)")
