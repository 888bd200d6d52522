package jaeger

import (
	"cmp"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// Roots returns the spans without a parent in the trace: the root, and any
// span whose parent never arrived (a broken chain).
func (t Trace) Roots() []Span {
	ids := make(map[string]bool, len(t.Spans))
	for _, s := range t.Spans {
		ids[s.SpanID] = true
	}
	var roots []Span
	for _, s := range t.Spans {
		if p := s.Parent(); p == "" || !ids[p] {
			roots = append(roots, s)
		}
	}
	return roots
}

// Row is a span in tree order: its depth, and whether its parent is
// missing from the trace (a broken chain).
type Row struct {
	Span   Span
	Depth  int
	Orphan bool
}

// Rows returns the trace's spans depth first, children in start order,
// roots first in start order.
func (t Trace) Rows() []Row {
	children := map[string][]Span{}
	for _, s := range t.Spans {
		children[s.Parent()] = append(children[s.Parent()], s)
	}
	byStart := func(a, b Span) int { return cmp.Compare(a.StartTime, b.StartTime) }
	roots := t.Roots()
	slices.SortFunc(roots, byStart)
	var rows []Row
	var walk func(s Span, depth int, orphan bool)
	walk = func(s Span, depth int, orphan bool) {
		rows = append(rows, Row{Span: s, Depth: depth, Orphan: orphan})
		kids := children[s.SpanID]
		slices.SortFunc(kids, byStart)
		for _, k := range kids {
			walk(k, depth+1, false)
		}
	}
	for _, r := range roots {
		walk(r, 0, r.Parent() != "")
	}
	return rows
}

// Notes are what a row says beyond its name: saga attributes, an error, a
// missing parent.
func (r Row) Notes() []string {
	s := r.Span
	var notes []string
	for _, k := range []string{"saga.id", "saga.step", "saga.state"} {
		if v, ok := s.Tag(k); ok && v != "" {
			notes = append(notes, k+"="+v)
		}
	}
	if v, _ := s.Tag("saga.compensation"); v == "true" {
		notes = append(notes, "compensation")
	}
	if s.Failed() {
		msg, _ := s.Tag("otel.status_description")
		notes = append(notes, "ERROR "+msg)
	}
	if r.Orphan {
		notes = append(notes, "(parent "+s.Parent()+" missing)")
	}
	return notes
}

// WriteTree prints the trace as an indented tree, children in start order:
// offset from the trace's start, duration, service, operation, saga
// attributes and errors. A span whose parent is missing is printed as a
// root and marked.
func (t Trace) WriteTree(w io.Writer) {
	rows := t.Rows()
	if len(rows) == 0 {
		return
	}
	start := rows[0].Span.StartTime
	for _, r := range rows {
		s := r.Span
		fmt.Fprintf(w, "%9s %8s  %s%s [%s] %s\n",
			"+"+(time.Duration(s.StartTime-start)*time.Microsecond).Round(time.Millisecond).String(),
			(time.Duration(s.Duration) * time.Microsecond).Round(10*time.Microsecond).String(),
			strings.Repeat("  ", r.Depth), s.OperationName, t.Service(s), strings.Join(r.Notes(), " "))
	}
}
