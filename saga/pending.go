package saga

// PendingTimer returns the timeout saga id waits for (the step, its send's
// attempt, whether it is a compensation, and when it fires), if this
// runtime owns the saga and it waits for one.
func (r *Runtime[D]) PendingTimer(id string) (SnapshotTimer, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, ps := range r.parts {
		if s, ok := ps.sagas[id]; ok && s.timer != nil {
			return SnapshotTimer{Step: s.timer.step, Attempt: s.timer.attempt, Compensation: s.timer.compensation, Deadline: s.timer.deadline}, true
		}
	}
	return SnapshotTimer{}, false
}
