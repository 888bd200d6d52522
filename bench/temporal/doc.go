// Command temporal-orders runs the orders saga of examples/orders on a
// Temporal dev server, as a workflow with one activity per step and one
// per compensation, for a side-by-side with `orchestrator bench`: the same
// orders, as many in flight, participants that always succeed, and the
// same figures (sagas/s, p50 and p99 from placing an order to its outcome).
//
// It starts `temporal server start-dev` (in-memory SQLite, headless) from
// the binary given by --temporal, built from the module proxy at a pinned
// version:
//
//	GOBIN=$HOME/.cache/sagapipe go install github.com/temporalio/cli/cmd/temporal@v1.5.1
//	cd bench/temporal && go run . --temporal $HOME/.cache/sagapipe/temporal
//
// or uses a running server with --address. The worker runs in this
// process, as sagapipe's participants run in the bench's.
//
// It is a module of its own so that the Temporal SDK stays out of
// sagapipe's go.mod.
package main
