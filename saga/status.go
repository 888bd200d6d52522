package saga

import (
	"context"
	"slices"

	"github.com/sagapipe/sagapipe/statemachine"
)

// Ready reports whether the runtime has started (its topics checked, its
// schemas registered), reaches the cluster, owns inbox partitions and has
// restored every one it owns: what a readiness probe asks.
func (r *Runtime[D]) Ready() bool {
	if !r.started.Load() || !r.conn.reachable() {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.parts) == 0 {
		return false
	}
	for _, ps := range r.parts {
		if !ps.restored() {
			return false
		}
	}
	return true
}

// List returns the IDs of the live sagas this runtime owns that are in
// state, sorted. Closed sagas are not listed (their markers are on disk;
// the state topic lists them, see States).
func (r *Runtime[D]) List(state statemachine.State) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var ids []string
	for _, ps := range r.parts {
		for id, s := range ps.sagas {
			if s.state == state {
				ids = append(ids, id)
			}
		}
	}
	slices.Sort(ids)
	return ids
}

// Status is a saga's state as this runtime holds it.
type Status[D any] struct {
	State    statemachine.State
	Instance Instance[D]
	// Closed is set for a finished saga, of which only the state is kept
	// (a zero Instance); its journal has the rest.
	Closed bool
	// JournalPartition and JournalOffset say where its journal entries
	// are (see HistoryAt).
	JournalPartition int32
	JournalOffset    int64
}

// Status returns the committed state of saga id, if this runtime owns it:
// a live saga from memory, a closed one from the partition's store.
func (r *Runtime[D]) Status(ctx context.Context, id string) (Status[D], bool, error) {
	r.mu.Lock()
	stores := map[int32]*partitionState[D]{}
	for p, ps := range r.parts {
		if s, ok := ps.sagas[id]; ok {
			r.mu.Unlock()
			return Status[D]{State: s.state, Instance: s.inst, JournalPartition: s.journal.partition, JournalOffset: s.journal.offset}, true, nil
		}
		if ps.restored() {
			stores[p] = ps
		}
	}
	r.mu.Unlock()
	for p, ps := range stores {
		s, err := r.closedMarker(ctx, p, ps, id)
		if err != nil || s != nil {
			if s == nil {
				return Status[D]{}, false, err
			}
			return Status[D]{State: s.state, Closed: true, JournalPartition: s.journal.partition, JournalOffset: s.journal.offset}, true, err
		}
	}
	return Status[D]{}, false, nil
}

// Connected reports whether the runtime's client is not known to be cut
// off from the cluster: false once its attempts have failed, with nothing
// read from any broker, for 5 s (an outage, not a rolling restart of one
// broker). A runtime yet to connect counts as connected; Ready is the
// strict question.
func (r *Runtime[D]) Connected() bool { return !r.conn.out() }
