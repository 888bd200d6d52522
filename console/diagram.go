package console

import (
	"fmt"
	"html/template"
	"slices"
	"strings"

	"github.com/sagapipe/sagapipe/statemachine"
)

// Diagram layout, in SVG user units.
const (
	charWidth  = 7.2 // of the 12px labels
	nodeHeight = 46
	columnGap  = 56
	rowGap     = 30
	margin     = 24
)

// Diagram draws def's state machine as inline SVG: the states in columns
// by their distance from the initial state, every transition an arrow
// (one per pair of states, its events in its tooltip), the path the
// journal's applied entries took in heavy solid arrows and the states
// they passed marked "passed", the current state marked "current" and
// outlined. Everything marked in colour is marked in text or line style
// too.
func Diagram(def Definition, current string, history []Entry) template.HTML {
	states := slices.Clone(def.States)
	if !slices.Contains(states, def.Initial) {
		states = append([]statemachine.State{def.Initial}, states...)
	}
	col := layers(def, states)
	last := 0
	for _, l := range col {
		last = max(last, l)
	}
	columns := make([][]statemachine.State, last+1)
	row := map[statemachine.State]int{}
	for l := range columns {
		// Within a column, a state goes near the states it comes from.
		var in []statemachine.State
		for _, s := range states {
			if col[s] == l {
				in = append(in, s)
			}
		}
		key := map[statemachine.State]float64{}
		for i, s := range in {
			sum, n := 0.0, 0
			for _, e := range def.Edges {
				if e.To == s && e.From != s && col[e.From] < l {
					sum += float64(row[e.From])
					n++
				}
			}
			key[s] = float64(i) / 100 // the definition's order breaks ties
			if n > 0 {
				key[s] += sum / float64(n)
			}
		}
		slices.SortStableFunc(in, func(a, b statemachine.State) int { return cmpFloat(key[a], key[b]) })
		for i, s := range in {
			row[s] = i
		}
		columns[l] = in
	}
	width := 110.0
	for _, s := range states {
		width = max(width, float64(len(s))*charWidth+28)
	}
	type box struct{ x, y float64 }
	at := map[statemachine.State]box{}
	rows := 0
	for i, c := range columns {
		rows = max(rows, len(c))
		for j, s := range c {
			at[s] = box{margin + float64(i)*(width+columnGap), margin + 16 + float64(j)*(nodeHeight+rowGap)}
		}
	}
	bottom := margin + 16 + float64(rows)*(nodeHeight+rowGap) - rowGap
	svgWidth := 2*margin + float64(len(columns))*(width+columnGap) - columnGap

	// The path taken: the applied entries' transitions.
	taken := map[[2]string]bool{}
	passed := map[string]bool{}
	var path []string
	for _, e := range history {
		if e.Outcome != "applied" {
			continue
		}
		if len(path) == 0 {
			path = append(path, e.From)
		}
		taken[[2]string{e.From, e.To}] = true
		passed[e.From] = true
		if e.To != path[len(path)-1] {
			path = append(path, e.To)
		}
	}

	// One arrow per pair of states.
	type arrow struct {
		from, to statemachine.State
		events   []string
	}
	var arrows []*arrow
	byPair := map[[2]statemachine.State]*arrow{}
	for _, e := range def.Edges {
		k := [2]statemachine.State{e.From, e.To}
		a := byPair[k]
		if a == nil {
			a = &arrow{from: e.From, to: e.To}
			byPair[k] = a
			arrows = append(arrows, a)
		}
		ev := string(e.On)
		if e.Guard != "" {
			ev += " [" + e.Guard + "]"
		}
		if !slices.Contains(a.events, ev) {
			a.events = append(a.events, ev)
		}
	}

	var b strings.Builder
	desc := fmt.Sprintf("Current state: %s.", current)
	if len(path) > 0 {
		desc += " Path taken: " + strings.Join(path, " → ") + "."
	}
	fmt.Fprintf(&b, `<svg class="diagram" role="img" aria-labelledby="diagram-title diagram-desc" viewBox="0 0 %.0f %%HEIGHT%%" width="%.0f" xmlns="http://www.w3.org/2000/svg">`, svgWidth, svgWidth)
	fmt.Fprintf(&b, `<title id="diagram-title">State machine of saga %s</title><desc id="diagram-desc">%s</desc>`, esc(def.Name), esc(desc))
	b.WriteString(`<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" class="arrowhead"/></marker>` +
		`<marker id="arrow-taken" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="6" markerHeight="6" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" class="arrowhead-taken"/></marker></defs>`)
	// Arrows first, under the states; the taken ones last, over the others.
	slices.SortStableFunc(arrows, func(x, y *arrow) int {
		tx, ty := taken[[2]string{string(x.from), string(x.to)}], taken[[2]string{string(y.from), string(y.to)}]
		switch {
		case tx == ty:
			return 0
		case ty:
			return -1
		}
		return 1
	})
	lanes := 0
	for _, a := range arrows {
		from, to := at[a.from], at[a.to]
		class, marker := "edge", "arrow"
		if taken[[2]string{string(a.from), string(a.to)}] {
			class, marker = "edge taken", "arrow-taken"
		}
		var d string
		switch {
		case a.from == a.to: // a loop over the state's top
			x, y := from.x+width/2, from.y
			d = fmt.Sprintf("M%.1f,%.1f C%.1f,%.1f %.1f,%.1f %.1f,%.1f", x-14, y, x-28, y-30, x+28, y-30, x+14, y)
		case col[a.to] == col[a.from]+1: // to the next column: right side to left side
			x1, y1 := from.x+width, from.y+nodeHeight/2
			x2, y2 := to.x, to.y+nodeHeight/2
			mid := (x1 + x2) / 2
			d = fmt.Sprintf("M%.1f,%.1f C%.1f,%.1f %.1f,%.1f %.1f,%.1f", x1, y1, mid, y1, mid, y2, x2, y2)
		default: // farther, or back: through the gaps beside the columns and a lane under the states
			lane := bottom + 16 + float64(lanes)*8
			shift := float64(lanes%5)*7 - 14
			lanes++
			x1, y1 := from.x+width, from.y+nodeHeight/2+6
			x2, y2 := to.x, to.y+nodeHeight/2+6
			right, left := x1+columnGap/2+shift, x2-columnGap/2+shift
			d = fmt.Sprintf("M%.1f,%.1f H%.1f V%.1f H%.1f V%.1f H%.1f", x1, y1, right, lane, left, y2, x2)
		}
		fmt.Fprintf(&b, `<path class="%s" d="%s" marker-end="url(#%s)"><title>%s → %s on %s</title></path>`,
			class, d, marker, esc(string(a.from)), esc(string(a.to)), esc(strings.Join(a.events, ", ")))
	}
	for _, s := range states {
		p := at[s]
		classes := []string{"state"}
		mark := ""
		switch {
		case string(s) == current:
			classes, mark = append(classes, "current"), "current"
		case passed[string(s)]:
			classes, mark = append(classes, "passed"), "passed"
		}
		if def.terminal(s) {
			classes = append(classes, "terminal")
		}
		fmt.Fprintf(&b, `<g class="%s" data-state="%s">`, strings.Join(classes, " "), esc(string(s)))
		fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%d" rx="8"/>`, p.x, p.y, width, nodeHeight)
		if def.terminal(s) {
			fmt.Fprintf(&b, `<rect class="inner" x="%.1f" y="%.1f" width="%.1f" height="%d" rx="6"/>`, p.x+3, p.y+3, width-6, nodeHeight-6)
		}
		ty := p.y + nodeHeight/2 + 4
		if mark != "" {
			ty = p.y + 19
		}
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`, p.x+width/2, ty, esc(string(s)))
		if mark != "" {
			symbol := "▶ "
			if mark == "passed" {
				symbol = "✓ "
			}
			fmt.Fprintf(&b, `<text class="mark" x="%.1f" y="%.1f" text-anchor="middle">%s%s</text>`, p.x+width/2, p.y+36, symbol, mark)
		}
		b.WriteString(`</g>`)
	}
	b.WriteString(`</svg>`)
	out := b.String()
	// The lanes are known once the arrows are drawn: the height follows.
	svgHeight := bottom + 16 + float64(lanes)*8 + margin
	out = strings.Replace(out, "%HEIGHT%", fmt.Sprintf("%.0f", svgHeight), 1)
	return template.HTML(out) // safe: every name in it is escaped by esc
}

// layers places each state in a column: the longest path to it from the
// initial state, transitions that close a cycle left out, the final
// states in the last column.
func layers(def Definition, states []statemachine.State) map[statemachine.State]int {
	// Depth-first from the initial state: an edge to a state on the
	// current path closes a cycle.
	back := map[[2]statemachine.State]bool{}
	onPath, done := map[statemachine.State]bool{}, map[statemachine.State]bool{}
	var visit func(s statemachine.State)
	visit = func(s statemachine.State) {
		onPath[s] = true
		for _, e := range def.Edges {
			if e.From != s || e.To == s {
				continue
			}
			switch {
			case onPath[e.To]:
				back[[2]statemachine.State{e.From, e.To}] = true
			case !done[e.To]:
				visit(e.To)
			}
		}
		onPath[s], done[s] = false, true
	}
	visit(def.Initial)
	col := map[statemachine.State]int{}
	for range states { // longest paths, relaxed as often as there are states
		changed := false
		for _, e := range def.Edges {
			if e.From != e.To && !back[[2]statemachine.State{e.From, e.To}] && col[e.To] < col[e.From]+1 {
				col[e.To] = col[e.From] + 1
				changed = true
			}
		}
		if !changed {
			break
		}
	}
	last := 0
	for _, s := range states {
		last = max(last, col[s])
	}
	for _, s := range def.Terminal {
		col[s] = last
	}
	return col
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func esc(s string) string { return template.HTMLEscapeString(s) }
