package saga

import (
	"slices"
	"strings"
	"testing"
	"time"
)

// A saga's seen ce_ids, kept in one string: every ID journaled is found,
// nothing else is (not a prefix, not two IDs run together), whatever the
// IDs' lengths, and a copy of the saga does not see what the original sees
// later.
func TestSeenIDs(t *testing.T) {
	long := strings.Repeat("x", 300) // a length of two varint bytes
	ids := []string{"0192f0c4-7a1b-7c3d-8e4f-000000000001", "order-1/payment/do/1", long, "a"}
	s := newSagaRecord[struct{}]("order-1", "", time.Unix(1700000000, 0), journalPosition{}, 1)
	for _, id := range ids {
		s.see(id)
	}
	s.see(ids[0]) // again: kept once
	c := s.clone()
	s.see("later")
	tests := []struct {
		name string
		id   string
		want bool
	}{
		{"uuid", ids[0], true}, {"timer", ids[1], true}, {"long", long, true}, {"one byte", "a", true},
		{"prefix", "order-1/payment", false}, {"two run together", "aorder", false}, {"empty", "", false},
		{"long minus one", long[1:], false}, {"seen after the copy", "later", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := c.saw(tt.id); got != tt.want {
				t.Errorf("saw(%.20q) = %v, want %v", tt.id, got, tt.want)
			}
		})
	}
	if got, want := c.allSeen(), slices.Sorted(slices.Values(ids)); !slices.Equal(got, want) {
		t.Errorf("allSeen() = %.40q, want %.40q", got, want)
	}
	if !s.saw("later") || c.correlation != "order-1" {
		t.Errorf("the original does not see what it saw after the copy (%v), or its correlation %q is not its ID", s.saw("later"), c.correlation)
	}
}
