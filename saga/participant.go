package saga

import (
	"fmt"

	"github.com/sagapipe/sagapipe/pipe"
	"github.com/sagapipe/sagapipe/schema"
)

// Route routes the commands declared by def to h in a participant's Mux,
// decoded into def's Go type with def's schema: a participant reuses the
// saga's event declarations, one handler per command type, whatever else
// comes on the topic (a compensation with its own schema, for one).
func Route[C any](m *pipe.Mux, registry *schema.Serde, def EventDef[C], h pipe.Handler[C]) error {
	codec, err := schema.NewCodec[C](registry, def.Schema)
	if err != nil {
		return fmt.Errorf("saga: Route %s: %w", def.Type, err)
	}
	pipe.Route(m, def.Type, codec, h)
	return nil
}
