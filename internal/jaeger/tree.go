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

// WriteTree prints the trace as an indented tree, children in start order:
// offset from the trace's start, duration, service, operation, saga
// attributes and errors. A span whose parent is missing is printed as a
// root and marked.
func (t Trace) WriteTree(w io.Writer) {
	children := map[string][]Span{}
	for _, s := range t.Spans {
		children[s.Parent()] = append(children[s.Parent()], s)
	}
	byStart := func(a, b Span) int { return cmp.Compare(a.StartTime, b.StartTime) }
	roots := t.Roots()
	slices.SortFunc(roots, byStart)
	if len(roots) == 0 {
		return
	}
	start := roots[0].StartTime
	var walk func(s Span, depth int, orphan bool)
	walk = func(s Span, depth int, orphan bool) {
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
		if orphan {
			notes = append(notes, "(parent "+s.Parent()+" missing)")
		}
		fmt.Fprintf(w, "%9s %8s  %s%s [%s] %s\n",
			"+"+(time.Duration(s.StartTime-start)*time.Microsecond).Round(time.Millisecond).String(),
			(time.Duration(s.Duration) * time.Microsecond).Round(10*time.Microsecond).String(),
			strings.Repeat("  ", depth), s.OperationName, t.Service(s), strings.Join(notes, " "))
		kids := children[s.SpanID]
		slices.SortFunc(kids, byStart)
		for _, k := range kids {
			walk(k, depth+1, false)
		}
	}
	for _, r := range roots {
		walk(r, 0, r.Parent() != "")
	}
}
