package pipe

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/schema"
)

// ErrNoRoute: a command's ce_type has no handler in the worker's Mux. It
// goes to the failure policy like any command that cannot be handled.
var ErrNoRoute = errors.New("pipe: no handler for the command's ce_type")

// Mux routes the commands of one topic to a typed handler per ce_type: a
// step's command and its compensation (ReserveInventory and
// ReleaseInventory) come on one topic with their own schemas, and each is
// decoded into its own Go type. Route adds the handlers; NewMuxWorker
// runs them.
type Mux struct {
	routes map[string]func(ctx context.Context, value []byte, env schema.Envelope) (Reply, error)
}

// NewMux returns a Mux without routes.
func NewMux() *Mux {
	return &Mux{routes: map[string]func(context.Context, []byte, schema.Envelope) (Reply, error){}}
}

// Route handles the commands of ce_type eventType with h, decoded with
// codec. A second route for one type replaces the first.
func Route[C any](m *Mux, eventType string, codec *schema.Codec[C], h Handler[C]) {
	m.routes[eventType] = func(ctx context.Context, value []byte, env schema.Envelope) (Reply, error) {
		cmd, err := codec.Decode(ctx, value)
		if err != nil {
			return Reply{}, err
		}
		return h(ctx, cmd, env)
	}
}

// Types returns the ce_types routed, sorted.
func (m *Mux) Types() []string { return slices.Sorted(maps.Keys(m.routes)) }

// NewMuxWorker returns a stage worker whose commands go to m's handlers by
// ce_type; client and opts are as for NewStageWorker. Each command is
// decoded by its route (the worker's type parameter is the raw value). A
// command of a type without a route is an ErrNoRoute failure.
func NewMuxWorker(client *kgo.Client, m *Mux, opts ...StageOpt) (*StageWorker[[]byte], error) {
	if m == nil || len(m.routes) == 0 {
		return nil, errors.New("pipe: NewMuxWorker: the Mux has no routes (add them with pipe.Route)")
	}
	routes := maps.Clone(m.routes)
	handler := func(ctx context.Context, value []byte, env schema.Envelope) (Reply, error) {
		route, ok := routes[env.Type]
		if !ok {
			return Reply{}, fmt.Errorf("%w: %q (routed: %v)", ErrNoRoute, env.Type, slices.Sorted(maps.Keys(routes)))
		}
		return route(ctx, value, env)
	}
	return newStageWorker(client, func(_ context.Context, value []byte) ([]byte, error) { return value, nil }, handler, nil, opts...)
}
