package jaeger

import (
	"fmt"
	"html/template"
	"io"
	"slices"
	"strings"
	"time"
)

// WriteHTML writes the trace as a standalone page laid out like Jaeger's
// trace view: one row per span in tree order, the operation indented under
// its parent with its service, and a bar placed on the trace's timeline.
// It is how the docs show a saga's trace where no Jaeger UI is at hand.
func (t Trace) WriteHTML(w io.Writer, title string) error {
	rows := t.Rows()
	if len(rows) == 0 {
		return fmt.Errorf("trace %s has no spans", t.TraceID)
	}
	start, end := rows[0].Span.StartTime, rows[0].Span.StartTime
	for _, r := range rows {
		start = min(start, r.Span.StartTime)
		end = max(end, r.Span.StartTime+r.Span.Duration)
	}
	total := float64(max(end-start, 1))
	var services []string
	for _, r := range rows {
		if svc := t.Service(r.Span); !slices.Contains(services, svc) {
			services = append(services, svc)
		}
	}
	type row struct {
		Indent, Left, Width        float64
		Name, Service, Notes, Took string
		Colour                     string
		Failed                     bool
	}
	page := struct {
		Title, TraceID, Took string
		Spans, Depth         int
		Services             []string
		Colours              map[string]string
		Ticks                []string
		Rows                 []row
	}{Title: title, TraceID: t.TraceID, Spans: len(rows), Colours: map[string]string{},
		Took: (time.Duration(end-start) * time.Microsecond).Round(time.Millisecond).String()}
	for i, svc := range services {
		page.Colours[svc] = palette[i%len(palette)]
	}
	page.Services = services
	for i := range 5 {
		page.Ticks = append(page.Ticks, (time.Duration(float64(end-start)*float64(i)/4) * time.Microsecond).Round(time.Millisecond).String())
	}
	for _, r := range rows {
		s := r.Span
		page.Depth = max(page.Depth, r.Depth+1)
		page.Rows = append(page.Rows, row{Indent: float64(r.Depth) * 14, Name: s.OperationName, Service: t.Service(s),
			Notes: strings.Join(r.Notes(), " "), Colour: page.Colours[t.Service(s)], Failed: s.Failed(),
			Left: 100 * float64(s.StartTime-start) / total, Width: max(100*float64(s.Duration)/total, 0.3),
			Took: (time.Duration(s.Duration) * time.Microsecond).Round(10 * time.Microsecond).String()})
	}
	return traceHTML.Execute(w, page)
}

// palette colours services, in the order they appear; text says the
// service too, so nothing depends on colour alone.
var palette = []string{"#17b8be", "#f8dca1", "#b7885e", "#ffcb99", "#f89570", "#829ae3", "#e79fd5", "#1e96be"}

var traceHTML = template.Must(template.New("trace").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{.Title}}</title>
<style>
body{font:13px/1.4 system-ui,sans-serif;margin:0;color:#222}
header{padding:10px 16px;background:#f5f5f5;border-bottom:1px solid #ddd}
h1{font-size:17px;margin:0 0 4px}
.meta span{margin-right:18px;color:#555}
.legend span{display:inline-block;margin-right:12px}
.sw{display:inline-block;width:10px;height:10px;margin-right:4px;vertical-align:middle}
table{border-collapse:collapse;width:100%;table-layout:fixed}
td{padding:2px 8px;border-bottom:1px solid #eee;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
td.name{width:42%}
th{font-weight:normal;color:#666;text-align:left;padding:4px 8px;border-bottom:1px solid #ccc}
.ticks{display:flex;justify-content:space-between}
.svc{color:#666}
.bar{position:relative;height:14px}
.bar div{position:absolute;top:2px;height:10px;border-radius:2px}
.bar small{position:absolute;top:-1px;font-size:11px;color:#444;padding-left:4px}
.err{color:#c00;font-weight:bold}
.notes{color:#777;font-size:11px}
</style></head><body>
<header><h1>{{.Title}}</h1>
<div class="meta"><span>Trace {{.TraceID}}</span><span>Duration {{.Took}}</span><span>Services {{len .Services}}</span><span>Depth {{.Depth}}</span><span>Total spans {{.Spans}}</span></div>
<div class="legend">{{range .Services}}<span><i class="sw" style="background:{{index $.Colours .}}"></i>{{.}}</span>{{end}}</div>
</header>
<table><thead><tr><th>Service &amp; operation</th><th><div class="ticks">{{range .Ticks}}<span>{{.}}</span>{{end}}</div></th></tr></thead><tbody>
{{range .Rows}}<tr><td class="name" style="padding-left:{{.Indent}}px"><i class="sw" style="background:{{.Colour}}"></i>{{if .Failed}}<span class="err" title="error">!</span> {{end}}<span class="svc">{{.Service}}</span> {{.Name}} <span class="notes">{{.Notes}}</span></td>
<td><div class="bar"><div style="left:{{.Left}}%;width:{{.Width}}%;background:{{.Colour}}"></div><small style="left:{{.Left}}%">{{.Took}}</small></div></td></tr>
{{end}}</tbody></table></body></html>
`))
