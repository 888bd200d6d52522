package pipe

import (
	"context"
	"fmt"

	lru "github.com/hashicorp/golang-lru/v2"
)

// IdempotencyStore remembers which commands (by ce_id) a participant has
// handled. Delivery is at-least-once, so a command can come again after a
// crash or rebalance; a worker consults the store to handle it only once.
type IdempotencyStore interface {
	// Seen reports whether id was marked.
	Seen(ctx context.Context, id string) (bool, error)
	// Mark records id as handled.
	Mark(ctx context.Context, id string) error
}

// DefaultIdempotencyCapacity is how many IDs NewMemoryStore keeps when given 0.
const DefaultIdempotencyCapacity = 100_000

// MemoryStore is a bounded in-memory IdempotencyStore: it remembers the most
// recently marked IDs and forgets the oldest beyond its capacity. It forgets
// everything on restart, so participants whose effects must not repeat
// across restarts need a durable store (or effects that are idempotent by
// themselves, keyed by the command's ce_id).
type MemoryStore struct {
	ids *lru.Cache[string, struct{}]
}

// NewMemoryStore returns a MemoryStore holding up to capacity IDs (0 means
// DefaultIdempotencyCapacity).
func NewMemoryStore(capacity int) (*MemoryStore, error) {
	if capacity == 0 {
		capacity = DefaultIdempotencyCapacity
	}
	if capacity < 0 {
		return nil, fmt.Errorf("pipe: NewMemoryStore(%d): capacity must be positive", capacity)
	}
	ids, err := lru.New[string, struct{}](capacity)
	if err != nil {
		return nil, fmt.Errorf("pipe: NewMemoryStore: %w", err)
	}
	return &MemoryStore{ids: ids}, nil
}

// Seen implements IdempotencyStore.
func (s *MemoryStore) Seen(_ context.Context, id string) (bool, error) {
	return s.ids.Contains(id), nil
}

// Mark implements IdempotencyStore.
func (s *MemoryStore) Mark(_ context.Context, id string) error {
	s.ids.Add(id, struct{}{})
	return nil
}
