package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
)

// AllocProfile is where the allocations of one throughput run come from,
// every allocation recorded (runtime.MemProfileRate 1, so the run is slow
// and its throughput is not a figure), per saga. An allocation is put in
// the first component, in this order, with a frame on its stack (the
// innermost 32 frames): the broker (kfake), the registry (devstack), the
// storefront (saga.Starter, the demo placing orders), the participants'
// handlers (examples/orders.Participants, participant/), the orchestrator
// (any other function of saga/), the participants' pipe/ workers, the
// telemetry SDK (go.opentelemetry.io), the kgo clients' own goroutines (not
// attributable to one client), the rest.
type AllocProfile struct {
	Sagas int `json:"sagas"`
	// Alone tells the broker and the participants ran in their own
	// processes: the orchestrator figures are then this whole process's.
	Alone         bool               `json:"orchestrator_alone"`
	AllocsPerSaga float64            `json:"allocs_per_saga"`
	BytesPerSaga  float64            `json:"alloc_bytes_per_saga"`
	ByComponent   map[string]float64 `json:"allocs_per_saga_by_component"`
	// OrchestratorPerSaga is the orchestrator component's allocations:
	// the saga runtime's own code and the libraries it calls (kgo, avro,
	// otel) on its goroutines. OrchestratorDirectPerSaga is the share
	// allocated in sagapipe's own functions (the innermost frame outside
	// the Go runtime is sagapipe's).
	OrchestratorPerSaga       float64 `json:"orchestrator_allocs_per_saga"`
	OrchestratorDirectPerSaga float64 `json:"orchestrator_direct_allocs_per_saga"`
	// TopSites are the orchestrator's allocations by the innermost
	// sagapipe line on the stack (what in our code caused them);
	// TopAllocators by the innermost frame outside the Go runtime (where
	// they happen, ours or a library's).
	TopSites      []AllocSite `json:"top_sites"`
	TopAllocators []AllocSite `json:"top_allocators"`
}

// AllocSite is a line of code and the allocations under it, per saga.
type AllocSite struct {
	Function      string  `json:"function"`
	Line          string  `json:"line"`
	AllocsPerSaga float64 `json:"allocs_per_saga"`
	BytesPerSaga  float64 `json:"bytes_per_saga"`
}

const module = "github.com/sagapipe/sagapipe/"

// components classify a stack, first match wins (see AllocProfile).
var components = []struct {
	name     string
	prefixes []string
}{
	{"broker (kfake)", []string{"github.com/twmb/franz-go/pkg/kfake."}},
	{"registry (devstack)", []string{module + "devstack.", module + "internal/registry."}},
	{"storefront (saga.Starter, placing orders)", []string{module + "saga.(*Starter", module + "examples/orders.placeOrders"}},
	// The participants' handlers call saga's helpers (codecs, event
	// definitions): they are matched before the orchestrator.
	{participantsComponent, []string{module + "examples/orders.(*Participants", module + "participant."}},
	{orchestratorComponent, []string{module + "saga."}},
	// pipe's own goroutines with no saga frame are the participants'
	// stage workers.
	{participantsComponent, []string{module + "examples/orders.", module + "pipe."}},
	{"telemetry SDK (go.opentelemetry.io)", []string{"go.opentelemetry.io/"}},
	{"kgo clients' goroutines (any client)", []string{"github.com/twmb/franz-go/pkg/kgo."}},
}

const (
	orchestratorComponent = "orchestrator (saga runtime)"
	participantsComponent = "participants (examples/orders, participant, pipe)"
	otherComponent        = "harness, Go runtime and the rest"
)

type memRecord struct{ objects, bytes int64 }

// memProfile is the allocations recorded so far, by stack.
func memProfile() map[[32]uintptr]memRecord {
	runtime.GC()
	runtime.GC()
	var records []runtime.MemProfileRecord
	for {
		n, ok := runtime.MemProfile(records, true)
		if ok {
			records = records[:n]
			break
		}
		records = make([]runtime.MemProfileRecord, n+100)
	}
	out := make(map[[32]uintptr]memRecord, len(records))
	for _, r := range records {
		m := out[r.Stack0]
		m.objects += r.AllocObjects
		m.bytes += r.AllocBytes
		out[r.Stack0] = m
	}
	return out
}

// attributeAllocs classifies what was allocated between before and after.
// With alone (the orchestrator alone in this process), every allocation is
// the orchestrator's (or the storefront's) and goes into the top sites.
func attributeAllocs(before, after map[[32]uintptr]memRecord, sagas int, alone bool) *AllocProfile {
	p := &AllocProfile{Sagas: sagas, Alone: alone, ByComponent: map[string]float64{}}
	sites, allocators := map[string]*AllocSite{}, map[string]*AllocSite{}
	add := func(into map[string]*AllocSite, f runtime.Frame, rec memRecord) {
		line := fmt.Sprintf("%s:%d", trimPath(f.File), f.Line)
		s := into[line]
		if s == nil {
			s = &AllocSite{Function: f.Function, Line: line}
			into[line] = s
		}
		s.AllocsPerSaga += float64(rec.objects)
		s.BytesPerSaga += float64(rec.bytes)
	}
	var total memRecord
	for stack, a := range after {
		b := before[stack]
		rec := memRecord{a.objects - b.objects, a.bytes - b.bytes}
		if rec.objects <= 0 {
			continue
		}
		total.objects += rec.objects
		total.bytes += rec.bytes
		var frames []runtime.Frame
		pcs := stack[:]
		if i := slices.Index(pcs, 0); i >= 0 {
			pcs = pcs[:i]
		}
		iter := runtime.CallersFrames(pcs)
		for {
			f, more := iter.Next()
			frames = append(frames, f)
			if !more {
				break
			}
		}
		component := otherComponent
	classify:
		for _, c := range components {
			for _, f := range frames {
				for _, prefix := range c.prefixes {
					if strings.HasPrefix(f.Function, prefix) {
						component = c.name
						break classify
					}
				}
			}
		}
		p.ByComponent[component] += float64(rec.objects)
		if !alone && component != orchestratorComponent {
			continue
		}
		p.OrchestratorPerSaga += float64(rec.objects)
		innermost := slices.IndexFunc(frames, func(f runtime.Frame) bool { return !strings.HasPrefix(f.Function, "runtime.") })
		if innermost >= 0 {
			add(allocators, frames[innermost], rec)
			if strings.HasPrefix(frames[innermost].Function, module) {
				p.OrchestratorDirectPerSaga += float64(rec.objects)
			}
		}
		if own := slices.IndexFunc(frames, func(f runtime.Frame) bool { return strings.HasPrefix(f.Function, module) }); own >= 0 {
			add(sites, frames[own], rec)
		}
	}
	n := float64(sagas)
	p.AllocsPerSaga, p.BytesPerSaga = float64(total.objects)/n, float64(total.bytes)/n
	for k := range p.ByComponent {
		p.ByComponent[k] /= n
	}
	p.OrchestratorPerSaga /= n
	p.OrchestratorDirectPerSaga /= n
	top := func(m map[string]*AllocSite) []AllocSite {
		all := slices.Collect(maps.Values(m))
		slices.SortFunc(all, func(a, b *AllocSite) int { return cmp.Compare(b.AllocsPerSaga, a.AllocsPerSaga) })
		var out []AllocSite
		for _, s := range all[:min(len(all), 30)] {
			s.AllocsPerSaga /= n
			s.BytesPerSaga /= n
			out = append(out, *s)
		}
		return out
	}
	p.TopSites, p.TopAllocators = top(sites), top(allocators)
	return p
}

// moduleRoot is this module's directory as the binary was built, found
// from this file's own path.
var moduleRoot = func() string {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return ""
	}
	return strings.TrimSuffix(file, "cmd/orchestrator/bench_profile.go")
}()

// trimPath shortens a source path to its module-relative or GOROOT-relative
// form.
func trimPath(file string) string {
	if moduleRoot != "" && strings.HasPrefix(file, moduleRoot) {
		return strings.TrimPrefix(file, moduleRoot)
	}
	for _, marker := range []string{"/pkg/mod/", "/src/"} {
		if _, rest, ok := strings.Cut(file, marker); ok {
			return rest
		}
	}
	return file
}

func writeAllocProfile(w io.Writer, p *AllocProfile) {
	where := "the broker, the registry, the participants and the storefront in this process"
	if p.Alone {
		where = "the broker and the participants in their own processes; this process is the orchestrator and the storefront"
	}
	fmt.Fprintf(w, "allocations of %d sagas (%s), every allocation recorded (runtime.MemProfileRate = 1), per saga\n\n", p.Sagas, where)
	fmt.Fprintf(w, "whole process: %.1f allocs, %.1f KB per saga\n\nby component (first match on the innermost 32 frames):\n", p.AllocsPerSaga, p.BytesPerSaga/1000)
	for _, c := range slices.SortedFunc(maps.Keys(p.ByComponent), func(a, b string) int { return cmp.Compare(p.ByComponent[b], p.ByComponent[a]) }) {
		fmt.Fprintf(w, "  %8.1f  %s\n", p.ByComponent[c], c)
	}
	what := "orchestrator component"
	if p.Alone {
		what = "the whole process"
	}
	fmt.Fprintf(w, "\n%s: %.1f allocs per saga, %.1f of them in sagapipe's own functions (the innermost frame outside the Go runtime is sagapipe's), the rest in the libraries they call\n",
		what, p.OrchestratorPerSaga, p.OrchestratorDirectPerSaga)
	for _, list := range []struct {
		title string
		sites []AllocSite
	}{{"by the innermost sagapipe line on the stack (what in our code caused them)", p.TopSites},
		{"by the innermost frame outside the Go runtime (where they happen)", p.TopAllocators}} {
		fmt.Fprintf(w, "\n%s, %s:\n  allocs/saga   bytes/saga  line  function\n", what, list.title)
		for _, s := range list.sites {
			fmt.Fprintf(w, "  %11.2f  %11.0f  %s  %s\n", s.AllocsPerSaga, s.BytesPerSaga, s.Line, s.Function)
		}
	}
}

// benchProfile is `bench --only profile`, four runs into cfg.profileDir:
//
//  1. the orchestrator alone (broker and participants in their own
//     processes), every allocation recorded: allocs.pprof (this process's
//     profile, warm-up included), alloc-top.txt, alloc-profile.json;
//  2. the throughput scenario (all in this process), every allocation
//     recorded, attributed by component: alloc-components.txt;
//  3. the throughput scenario under the CPU profiler: cpu.pprof, and
//     the same traced (every span exported): cpu-traced.pprof;
//  4. the orchestrator alone under the CPU profiler: cpu-orchestrator.pprof;
//
// and, when the go command is at hand, the `go tool pprof -top` of each
// profile (cpu-top.txt, cpu-traced-top.txt, cpu-orchestrator-top.txt,
// alloc-objects-top.txt).
func benchProfile(ctx context.Context, cfg benchConfig, stdout, stderr io.Writer) int {
	fail := func(err error) int {
		fmt.Fprintf(stderr, "orchestrator bench: %v\n", err)
		return 1
	}
	if err := os.MkdirAll(cfg.profileDir, 0o755); err != nil {
		return fail(err)
	}
	in := func(name string) string { return filepath.Join(cfg.profileDir, name) }
	printMachine(stdout, machine())
	defaultRate := runtime.MemProfileRate
	var before, after map[[32]uintptr]memRecord
	recordAll := func(start bool) error {
		if start {
			runtime.MemProfileRate = 1
			before = memProfile()
		} else {
			after = memProfile()
			runtime.MemProfileRate = defaultRate
		}
		return nil
	}

	fmt.Fprintf(stdout, "1. allocations, orchestrator alone: %d sagas, %d in flight, broker and participants in their own processes, every allocation recorded\n", cfg.sagas, cfg.concurrency)
	if _, err := benchOrchestratorAlone(ctx, cfg.sagas, cfg.concurrency, cfg.partitions, stderr, recordAll); err != nil {
		return fail(err)
	}
	alone := attributeAllocs(before, after, cfg.sagas, true)
	if err := writeFile(in("allocs.pprof"), func(w io.Writer) error { return pprof.Lookup("allocs").WriteTo(w, 0) }); err != nil {
		return fail(err)
	}
	if err := writeFile(in("alloc-top.txt"), func(w io.Writer) error { writeAllocProfile(w, alone); return nil }); err != nil {
		return fail(err)
	}
	if err := writeFile(in("alloc-profile.json"), func(w io.Writer) error {
		data, err := json.MarshalIndent(alone, "", "  ")
		if err == nil {
			_, err = w.Write(append(data, '\n'))
		}
		return err
	}); err != nil {
		return fail(err)
	}
	fmt.Fprintf(stdout, "  %.1f allocs and %.1f KB per saga in the orchestrator's process, %.1f allocs in sagapipe's own functions: %s\n",
		alone.AllocsPerSaga, alone.BytesPerSaga/1000, alone.OrchestratorDirectPerSaga, in("alloc-top.txt"))

	fmt.Fprintf(stdout, "2. allocations by component: %d sagas, %d in flight, all in this process, every allocation recorded\n", cfg.sagas, cfg.concurrency)
	spec := runSpec{sagas: cfg.sagas, concurrency: cfg.concurrency, partitions: cfg.partitions}
	runtime.MemProfileRate = 1
	before = memProfile()
	_, err := benchRun(ctx, spec)
	after = memProfile()
	runtime.MemProfileRate = defaultRate
	if err != nil {
		return fail(err)
	}
	byComponent := attributeAllocs(before, after, cfg.sagas, false)
	if err := writeFile(in("alloc-components.txt"), func(w io.Writer) error { writeAllocProfile(w, byComponent); return nil }); err != nil {
		return fail(err)
	}
	fmt.Fprintf(stdout, "  %.0f allocs per saga in the whole process, %.1f with the saga runtime on the stack: %s\n",
		byComponent.AllocsPerSaga, byComponent.OrchestratorPerSaga, in("alloc-components.txt"))

	fmt.Fprintf(stdout, "3. cpu, all in this process: %s\n", in("cpu.pprof"))
	if err := profileCPU(ctx, spec, in("cpu.pprof")); err != nil {
		return fail(err)
	}
	fmt.Fprintf(stdout, "3b. cpu, all in this process, every span exported over OTLP %s: %s\n", cfg.otlpProtocol, in("cpu-traced.pprof"))
	traced := spec
	traced.telemetry, traced.otlpProtocol, traced.tracedQueue = telemetryTraced, cfg.otlpProtocol, cfg.tracedQueue
	if err := profileCPU(ctx, traced, in("cpu-traced.pprof")); err != nil {
		return fail(err)
	}
	fmt.Fprintf(stdout, "4. cpu, orchestrator alone: %s\n", in("cpu-orchestrator.pprof"))
	f, err := os.Create(in("cpu-orchestrator.pprof"))
	if err != nil {
		return fail(err)
	}
	defer f.Close()
	cpu := func(start bool) error {
		if start {
			return pprof.StartCPUProfile(f)
		}
		pprof.StopCPUProfile()
		return nil
	}
	if _, err := benchOrchestratorAlone(ctx, cfg.sagas, cfg.concurrency, cfg.partitions, stderr, cpu); err != nil {
		return fail(err)
	}

	self, err := os.Executable()
	if err != nil {
		return fail(err)
	}
	for _, summary := range []struct{ file, profile, index string }{
		{"cpu-top.txt", "cpu.pprof", ""},
		{"cpu-orchestrator-top.txt", "cpu-orchestrator.pprof", ""},
		{"cpu-traced-top.txt", "cpu-traced.pprof", ""},
		{"alloc-objects-top.txt", "allocs.pprof", "-sample_index=alloc_objects"},
	} {
		args := []string{"tool", "pprof", "-top", "-nodecount=60"}
		if summary.index != "" {
			args = append(args, summary.index)
		}
		args = append(args, self, in(summary.profile))
		text, err := exec.CommandContext(ctx, "go", args...).Output()
		if err != nil {
			fmt.Fprintf(stdout, "  (no %s: go %s: %v)\n", in(summary.file), strings.Join(args, " "), err)
			continue
		}
		if err := os.WriteFile(in(summary.file), text, 0o644); err != nil {
			return fail(err)
		}
		fmt.Fprintf(stdout, "  %s: go %s\n", in(summary.file), strings.Join(args, " "))
	}
	return 0
}

func writeFile(path string, write func(io.Writer) error) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := write(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
