package console

import (
	"fmt"
	"html/template"
	"math"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// The metrics the live view samples (see saga's instruments).
const (
	metricFinished = "sagapipe_saga_finished_total"
	metricInFlight = "sagapipe_saga_in_flight"
	metricDuration = "sagapipe_saga_duration_seconds"
	metricDLQ      = "sagapipe_dlq_records_total"
)

// reading is the metrics at one moment, summed over their series.
type reading struct {
	at       time.Time
	finished float64
	inFlight float64
	dlq      float64
	// buckets are the duration histogram's cumulative counts by upper bound.
	buckets map[float64]float64
	ok      bool
}

// live keeps the last readings of the process's metrics in a ring.
type live struct {
	metrics http.Handler
	mu      sync.Mutex
	ring    []reading
	next    int
	size    int
}

func newLive(metrics http.Handler, n int) *live {
	return &live{metrics: metrics, ring: make([]reading, n)}
}

// sample reads the metrics now.
func (l *live) sample(now time.Time) {
	rd := l.read(now)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ring[l.next] = rd
	l.next = (l.next + 1) % len(l.ring)
	l.size = min(l.size+1, len(l.ring))
}

func (l *live) read(now time.Time) reading {
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
	req.Header.Set("Accept", "text/plain")
	l.metrics.ServeHTTP(rec, req)
	rd := reading{at: now, buckets: map[float64]float64{}}
	if rec.Code != http.StatusOK {
		return rd
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(rec.Body)
	if err != nil {
		return rd
	}
	rd.ok = true
	sum := func(name string) float64 {
		total := 0.0
		if f := families[name]; f != nil {
			for _, m := range f.GetMetric() {
				total += value(m)
			}
		}
		return total
	}
	rd.finished, rd.inFlight, rd.dlq = sum(metricFinished), sum(metricInFlight), sum(metricDLQ)
	if f := families[metricDuration]; f != nil {
		for _, m := range f.GetMetric() {
			for _, b := range m.GetHistogram().GetBucket() {
				rd.buckets[b.GetUpperBound()] += float64(b.GetCumulativeCount())
			}
		}
	}
	return rd
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Untyped != nil:
		return m.Untyped.GetValue()
	}
	return 0
}

// readings returns the ring's readings, oldest first.
func (l *live) readings() []reading {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]reading, 0, l.size)
	for i := range l.size {
		out = append(out, l.ring[(l.next-l.size+i+len(l.ring))%len(l.ring)])
	}
	return out
}

// point is a series' value at a time; NaN is a gap.
type point struct {
	at time.Time
	v  float64
}

// series are the live view's charts' values.
type series struct {
	throughput, inFlight, p50, p99, dlq []point
}

func (l *live) series() series {
	var s series
	rds := l.readings()
	for i, rd := range rds {
		if !rd.ok {
			continue
		}
		s.inFlight = append(s.inFlight, point{rd.at, rd.inFlight})
		if i == 0 || !rds[i-1].ok {
			continue
		}
		prev := rds[i-1]
		dt := rd.at.Sub(prev.at).Seconds()
		if dt <= 0 {
			continue
		}
		s.throughput = append(s.throughput, point{rd.at, math.Max(rd.finished-prev.finished, 0) / dt})
		s.dlq = append(s.dlq, point{rd.at, math.Max(rd.dlq-prev.dlq, 0) / dt * 60})
		s.p50 = append(s.p50, point{rd.at, quantile(0.5, prev.buckets, rd.buckets)})
		s.p99 = append(s.p99, point{rd.at, quantile(0.99, prev.buckets, rd.buckets)})
	}
	return s
}

// quantile estimates the q-quantile of the observations between two
// readings of a cumulative histogram, interpolating inside the bucket it
// falls in (as Prometheus' histogram_quantile does); NaN without any.
func quantile(q float64, before, after map[float64]float64) float64 {
	bounds := make([]float64, 0, len(after))
	for b := range after {
		bounds = append(bounds, b)
	}
	slices.Sort(bounds)
	if len(bounds) == 0 {
		return math.NaN()
	}
	total := after[bounds[len(bounds)-1]] - before[bounds[len(bounds)-1]]
	if total <= 0 {
		return math.NaN()
	}
	rank := q * total
	lower, below := 0.0, 0.0
	for _, b := range bounds {
		n := after[b] - before[b]
		if n >= rank {
			if math.IsInf(b, 1) {
				return lower // past the last finite bound: that bound
			}
			inBucket := n - below
			if inBucket <= 0 {
				return b
			}
			return lower + (b-lower)*(rank-below)/inBucket
		}
		lower, below = b, n
	}
	return lower
}

// chart is one small chart.
type chart struct {
	Title, Unit string
	Now, Max    string
	SVG         template.HTML
}

const chartWidth, chartHeight = 320.0, 90.0

// render draws points as a small line chart, from 0 to their maximum, over
// window ending at end.
func renderChart(id, title, unit string, pts []point, end time.Time, window time.Duration, format func(float64) string) chart {
	c := chart{Title: title, Unit: unit, Now: "no data yet", Max: "–"}
	maxV := 0.0
	for _, p := range pts {
		if !math.IsNaN(p.v) {
			maxV = math.Max(maxV, p.v)
		}
	}
	for i := len(pts) - 1; i >= 0; i-- {
		if !math.IsNaN(pts[i].v) {
			c.Now = format(pts[i].v) + " " + unit
			break
		}
	}
	if len(pts) > 0 {
		c.Max = format(maxV) + " " + unit
	}
	top := maxV
	if top == 0 {
		top = 1
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg class="chart" role="img" aria-labelledby="%s-t %s-d" viewBox="0 0 %.0f %.0f" xmlns="http://www.w3.org/2000/svg">`, id, id, chartWidth, chartHeight)
	fmt.Fprintf(&b, `<title id="%s-t">%s</title><desc id="%s-d">Now %s; highest %s over the last %v.</desc>`, id, esc(title), id, esc(c.Now), esc(c.Max), window)
	fmt.Fprintf(&b, `<line class="axis" x1="0" y1="%.1f" x2="%.0f" y2="%.1f"/>`, chartHeight-1, chartWidth, chartHeight-1)
	fmt.Fprintf(&b, `<text class="scale" x="4" y="12">%s</text>`, esc(format(top)+" "+unit))
	var line []string
	flush := func() {
		if len(line) > 1 {
			fmt.Fprintf(&b, `<polyline class="line" points="%s"/>`, strings.Join(line, " "))
		} else if len(line) == 1 {
			xy := strings.Split(line[0], ",")
			fmt.Fprintf(&b, `<circle class="dot" cx="%s" cy="%s" r="2"/>`, xy[0], xy[1])
		}
		line = line[:0]
	}
	start := end.Add(-window)
	for _, p := range pts {
		if math.IsNaN(p.v) {
			flush()
			continue
		}
		x := chartWidth * p.at.Sub(start).Seconds() / window.Seconds()
		y := chartHeight - 4 - (chartHeight-20)*p.v/top
		line = append(line, fmt.Sprintf("%.1f,%.1f", math.Max(x, 0), y))
	}
	flush()
	b.WriteString(`</svg>`)
	c.SVG = template.HTML(b.String()) // safe: numbers and escaped text only
	return c
}

func (c *Console) charts() []chart {
	s := c.live.series()
	window := c.cfg.SampleEvery * time.Duration(LiveSamples)
	now := time.Now()
	rate := func(v float64) string { return fmt.Sprintf("%.2f", v) }
	count := func(v float64) string { return fmt.Sprintf("%.0f", v) }
	ms := func(v float64) string { return fmt.Sprintf("%.0f", v*1000) }
	return []chart{
		renderChart("throughput", "Throughput: sagas finished", "per s", s.throughput, now, window, rate),
		renderChart("inflight", "In flight", "sagas", s.inFlight, now, window, count),
		renderChart("p50", "Saga latency p50", "ms", s.p50, now, window, ms),
		renderChart("p99", "Saga latency p99", "ms", s.p99, now, window, ms),
		renderChart("dlq", "Dead letters", "per min", s.dlq, now, window, rate),
	}
}

type liveView struct {
	Charts []chart
	Every  time.Duration
	Window time.Duration
}

func (c *Console) livePage(w http.ResponseWriter, _ *http.Request, v view) {
	v.Title, v.Nav = "Live", "live"
	v.Data = liveView{Charts: c.charts(), Every: c.cfg.SampleEvery, Window: c.cfg.SampleEvery * time.Duration(LiveSamples)}
	c.render(w, http.StatusOK, "live.html", v)
}

func (c *Console) liveCharts(w http.ResponseWriter, _ *http.Request, v view) {
	v.Data = liveView{Charts: c.charts(), Every: c.cfg.SampleEvery}
	c.render(w, http.StatusOK, "charts.html", v)
}
