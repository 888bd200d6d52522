package statemachine

// Edge is a transition as a diagram draws it: its states and event, and
// its guard's name, without the guard and action themselves.
type Edge struct {
	From  State
	On    EventType
	To    State
	Guard string
}

// Edges returns the machine's transitions in definition order (the order
// Mermaid draws them in).
func (m *Machine[D, F]) Edges() []Edge {
	edges := make([]Edge, len(m.def.Transitions))
	for i, t := range m.def.Transitions {
		edges[i] = Edge{From: t.From, On: t.On, To: t.To, Guard: t.GuardName}
	}
	return edges
}
