package saga

import (
	"cmp"
	"container/heap"
	"slices"
	"time"
)

// timerEntry is a saga's deadline as it was when the entry was added. The
// saga may since have another timer or none: entries are checked against
// the saga when they come up, and stale ones dropped (lazy deletion).
type timerEntry struct {
	// deadline is in Unix nanoseconds: 32 bytes an entry instead of 48,
	// with an entry or two per saga in flight.
	deadline  int64
	partition int32
	id        string
}

// at is the entry's deadline.
func (e timerEntry) at() time.Time { return time.Unix(0, e.deadline) }

// timerKey is the saga a timer entry belongs to.
type timerKey struct {
	partition int32
	id        string
}

// dueTimer is a timer that has come due.
type dueTimer = timerEntry

// timerHeap orders entries by deadline: finding the next timer and the due
// ones costs O(log n) per timer instead of a scan of every owned saga.
type timerHeap []timerEntry

func (h timerHeap) Len() int           { return len(h) }
func (h timerHeap) Less(i, j int) bool { return h[i].deadline < h[j].deadline }
func (h timerHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *timerHeap) Push(x any)        { *h = append(*h, x.(timerEntry)) }
func (h *timerHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}

func (h *timerHeap) add(deadline time.Time, partition int32, id string) {
	heap.Push(h, timerEntry{deadline: deadline.UnixNano(), partition: partition, id: id})
}

// live tells whether e is still the timer of an owned saga. Callers hold mu.
func (r *Runtime[D]) live(e timerEntry) bool {
	ps := r.parts[e.partition]
	if ps == nil {
		return false // revoked
	}
	s := ps.sagas[e.id]
	return s != nil && s.timer != nil && s.timer.deadline.UnixNano() == e.deadline
}

// nextTimer returns how long until the earliest timer of an owned saga.
func (r *Runtime[D]) nextTimer() (time.Duration, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.compactTimers()
	for r.timers.Len() > 0 && !r.live(r.timers[0]) {
		heap.Pop(&r.timers)
	}
	if r.timers.Len() == 0 {
		return 0, false
	}
	return max(r.timers[0].at().Sub(r.cfg.Clock.Now()), 0), true
}

// dueTimers takes the owned sagas' timers that have passed off the heap, in
// a fixed order. The caller puts them back if its transaction does not
// commit.
func (r *Runtime[D]) dueTimers() []dueTimer {
	now := r.cfg.Clock.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	var due []dueTimer
	taken := map[timerKey]bool{} // a saga may have been added twice
	for r.timers.Len() > 0 && now.UnixNano() >= r.timers[0].deadline {
		e := heap.Pop(&r.timers).(timerEntry)
		if k := (timerKey{e.partition, e.id}); r.live(e) && !taken[k] {
			taken[k] = true
			due = append(due, e)
		}
	}
	slices.SortFunc(due, func(a, b dueTimer) int {
		return cmp.Or(cmp.Compare(a.partition, b.partition), cmp.Compare(a.id, b.id))
	})
	return due
}

// compactTimers drops the stale entries once they outnumber the owned
// sagas: with long timeouts, replaced deadlines would otherwise stay in
// the heap until they come up. Amortized O(1) per entry added. Callers
// hold mu.
func (r *Runtime[D]) compactTimers() {
	owned := 0
	for _, ps := range r.parts {
		owned += len(ps.sagas)
	}
	if r.timers.Len() <= owned+owned/2+64 {
		return
	}
	kept := make(map[timerKey]bool, owned)
	live := make(timerHeap, 0, owned) // a new array: the old one's size goes too
	for _, e := range r.timers {
		if k := (timerKey{e.partition, e.id}); r.live(e) && !kept[k] {
			kept[k] = true
			live = append(live, e)
		}
	}
	r.timers = live
	heap.Init(&r.timers)
}
