package trips

import "maps"

// Counts returns a copy of the desk's applications, safe while its
// service runs.
func (d *Desk) Counts() map[string]int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return maps.Clone(d.Applied)
}
