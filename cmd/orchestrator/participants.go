package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/sagapipe/sagapipe/examples/orders"
	"github.com/sagapipe/sagapipe/examples/trips"
	"github.com/sagapipe/sagapipe/observability"
	"github.com/sagapipe/sagapipe/participant"
)

// runParticipants is `orchestrator participants`: the orders example's
// inventory, payment and shipping services (and the trips example's
// flight, hotel and billing) in their own process, for
// running the service against them (and the crash tests). On SIGTERM or
// SIGINT they stop and, with --ledger-out, write what they did as JSON.
func runParticipants(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("participants", flag.ContinueOnError)
	var cf clusterFlags
	cf.register(fs)
	ledgerOut := fs.String("ledger-out", "", "write the participants' ledger (effects per order) to this JSON file on exit")
	decline := fs.Float64("decline-rate", 0, "share of payments declined (0..1)")
	latency := fs.Duration("latency", 0, "added to every command's handling")
	lost := fs.Float64("lost-reply-rate", 0, "share of orders whose first command to each participant is applied and its reply lost (0..1)")
	silentShipping := fs.Bool("shipping-silent", false, "shipping never answers: sagas wait at their last step (for measuring in-flight memory)")
	if code := parseFlags(fs, args, stderr); code >= 0 {
		return code
	}
	if *decline < 0 || *decline > 1 || *latency < 0 {
		fmt.Fprintf(stderr, "orchestrator participants: --decline-rate must be in 0..1 and --latency not negative\n")
		return 2
	}
	serde, err := cf.cfg.Serde()
	if err != nil {
		fmt.Fprintf(stderr, "orchestrator participants: %v\n", err)
		return 2
	}
	p := orders.NewParticipants(serde, orders.Faults{DeclineRate: *decline, Latency: *latency, LostReplyRate: *lost, ShippingSilent: *silentShipping})
	fmt.Fprintln(stdout, "participants running")
	// The trips example's flight, hotel and billing run beside them; one
	// failing stops the other.
	ctx, cancel := context.WithCancel(ctx)
	tripsDone := make(chan error, 1)
	go func() {
		defer cancel()
		tripsDone <- participant.Run(ctx, participant.Config{Brokers: cf.brokerList(), Registry: serde, ClientOptions: cf.opts,
			Logger: observability.NewJSONLogger(stderr, slog.LevelWarn)}, trips.NewDesks().Services()...)
	}()
	runErr := p.Run(ctx, cf.brokerList(), cf.opts...)
	cancel()
	runErr = errors.Join(runErr, <-tripsDone)
	if *ledgerOut != "" {
		data, err := json.Marshal(p.Ledger.Snapshot())
		if err == nil {
			err = os.WriteFile(*ledgerOut, data, 0o644)
		}
		if err != nil {
			fmt.Fprintf(stderr, "orchestrator participants: --ledger-out: %v\n", err)
			return 1
		}
	}
	if runErr != nil {
		fmt.Fprintf(stderr, "orchestrator participants: %v\n", runErr)
		return 1
	}
	return 0
}
