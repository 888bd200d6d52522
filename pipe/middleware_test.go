package pipe_test

import (
	"context"
	"strings"
	"testing"

	"github.com/sagapipe/sagapipe/pipe"
	"github.com/sagapipe/sagapipe/schema"
)

func TestChainRunsTheFirstMiddlewareOutermost(t *testing.T) {
	var calls []string
	layer := func(name string) pipe.Middleware[string] {
		return func(next pipe.Handler[string]) pipe.Handler[string] {
			return func(ctx context.Context, cmd string, env schema.Envelope) (pipe.Reply, error) {
				calls = append(calls, name+" in")
				defer func() { calls = append(calls, name+" out") }()
				return next(ctx, cmd, env)
			}
		}
	}
	h := pipe.Chain(func(_ context.Context, cmd string, _ schema.Envelope) (pipe.Reply, error) {
		calls = append(calls, "handler "+cmd)
		return pipe.NoReply, nil
	}, layer("a"), layer("b"))
	if _, err := h(context.Background(), "x", schema.Envelope{}); err != nil {
		t.Fatal(err)
	}
	want := "a in, b in, handler x, b out, a out"
	if got := strings.Join(calls, ", "); got != want {
		t.Fatalf("calls %q, want %q", got, want)
	}
}
