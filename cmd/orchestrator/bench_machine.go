package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Machine is where the figures were measured.
type Machine struct {
	CPUModel   string `json:"cpu_model"`
	Cores      int    `json:"cores"`
	GoMaxProcs int    `json:"gomaxprocs"`
	GoVersion  string `json:"go_version"`
	OS         string `json:"os"`
	// LoadBefore and LoadAfter are the 1-minute load average when the
	// harness began and ended: other work on the machine shows here.
	LoadBefore string `json:"load_average_before,omitempty"`
	LoadAfter  string `json:"load_average_after,omitempty"`
	// PeakRSSResets tells whether the resident set's high-water mark is
	// reset before each phase (/proc/self/clear_refs); when it is not,
	// peak_rss_bytes is the process's since it started.
	PeakRSSResets bool `json:"peak_rss_resets_per_phase"`
}

func machine() Machine {
	m := Machine{Cores: runtime.NumCPU(), GoMaxProcs: runtime.GOMAXPROCS(0), GoVersion: runtime.Version(),
		OS: runtime.GOOS + "/" + runtime.GOARCH, LoadBefore: loadAverage()}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	return m
}

func loadAverage() string {
	raw, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	fields := strings.Fields(string(raw))
	if len(fields) < 3 {
		return ""
	}
	return strings.Join(fields[:3], " ")
}

func printMachine(w io.Writer, m Machine) {
	fmt.Fprintf(w, "machine: %s, %d cores, GOMAXPROCS %d, %s %s, load average %s\n",
		m.CPUModel, m.Cores, m.GoMaxProcs, m.GoVersion, m.OS, m.LoadBefore)
}

// phaseMemory measures one phase's memory: the resident set's high-water
// mark, reset when the phase begins, and the heap's high-water mark,
// sampled every 10 ms (the GC's own figure is not resettable either).
type phaseMemory struct {
	stop     chan struct{}
	done     sync.WaitGroup
	peakHeap uint64
}

// resetPeakRSS returns what the process no longer uses to the OS and
// resets VmHWM to the resident set as it is now. It reports whether the
// kernel took the reset.
func resetPeakRSS() bool {
	debug.FreeOSMemory()
	return os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) == nil
}

func startPhaseMemory() *phaseMemory {
	resetPeakRSS()
	p := &phaseMemory{stop: make(chan struct{})}
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	read := func() {
		metrics.Read(sample)
		if sample[0].Value.Kind() == metrics.KindUint64 {
			p.peakHeap = max(p.peakHeap, sample[0].Value.Uint64())
		}
	}
	p.done.Add(1)
	go func() {
		defer p.done.Done()
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			read()
			select {
			case <-p.stop:
				return
			case <-tick.C:
			}
		}
	}()
	return p
}

// end stops the sampling and returns the phase's peak resident set and
// peak heap.
func (p *phaseMemory) end() (peakRSSBytes int64, peakHeapBytes uint64) {
	close(p.stop)
	p.done.Wait()
	return peakRSS(), p.peakHeap
}

// Spread is a figure's least, median and greatest over the repeated runs.
type Spread struct {
	Min    float64 `json:"min"`
	Median float64 `json:"median"`
	Max    float64 `json:"max"`
}

func spreadOf(values []float64) Spread {
	if len(values) == 0 {
		return Spread{}
	}
	v := slices.Clone(values)
	slices.Sort(v)
	median := v[len(v)/2]
	if len(v)%2 == 0 {
		median = (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return Spread{Min: v[0], Median: median, Max: v[len(v)-1]}
}

// format prints the spread with the given verb: "min / median / max".
func (s Spread) format(verb string) string {
	if s.Min == s.Max {
		return fmt.Sprintf(verb, s.Median)
	}
	return fmt.Sprintf(verb+" / "+verb+" / "+verb, s.Min, s.Median, s.Max)
}

// processCPU is the CPU time this process has used, user and system: on a
// machine shared with other work, CPU per saga varies less than sagas/s.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
