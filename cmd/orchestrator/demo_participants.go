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
	"slices"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/sync/errgroup"

	"github.com/sagapipe/sagapipe/examples/orders"
	"github.com/sagapipe/sagapipe/examples/pgpayment"
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
	services := fs.String("services", "inventory,payment,shipping", "the orders example's services to run (comma-separated)")
	paymentDSN := fs.String("payment-dsn", "", "PostgreSQL connection string: payment keeps its money there, through package outbox (examples/pgpayment), instead of in memory")
	withTrips := fs.Bool("trips", true, "run the trips example's flight, hotel and billing as well")
	instanceID := fs.String("instance-id", "", "static group membership: this process's ID, stable across its restarts (default dynamic membership)")
	if code := parseFlags(fs, args, stderr); code >= 0 {
		return code
	}
	if *decline < 0 || *decline > 1 || *latency < 0 {
		fmt.Fprintf(stderr, "orchestrator participants: --decline-rate must be in 0..1 and --latency not negative\n")
		return 2
	}
	if *instanceID != "" {
		// One client per group in this process, so one ID serves them all.
		cf.opts = append(cf.opts, kgo.InstanceID(*instanceID))
	}
	serde, err := cf.cfg.Serde()
	if err != nil {
		fmt.Fprintf(stderr, "orchestrator participants: %v\n", err)
		return 2
	}
	p := orders.NewParticipants(serde, orders.Faults{DeclineRate: *decline, Latency: *latency, LostReplyRate: *lost, ShippingSilent: *silentShipping})
	names := map[string]string{"inventory": orders.ServiceInventory, "payment": orders.ServicePayment, "shipping": orders.ServiceShipping}
	for _, name := range strings.Split(*services, ",") {
		if name = strings.TrimSpace(name); name == "" {
			continue
		}
		svc, ok := names[name]
		if !ok {
			fmt.Fprintf(stderr, "orchestrator participants: --services: %q is not inventory, payment or shipping\n", name)
			return 2
		}
		p.Services = append(p.Services, svc)
	}
	var payment *pgpayment.Payment
	if *paymentDSN != "" && slices.Contains(p.Services, orders.ServicePayment) {
		pool, err := pgxpool.New(ctx, *paymentDSN)
		if err == nil {
			rate := *decline
			payment, err = pgpayment.New(ctx, pool, serde, pgpayment.Config{
				Decline: func(c orders.ChargePayment) bool { return orders.Declines(c.OrderID, rate) }})
		}
		if err != nil {
			fmt.Fprintf(stderr, "orchestrator participants: --payment-dsn: %v\n", err)
			return 1
		}
		defer pool.Close()
		p.Services = slices.DeleteFunc(p.Services, func(s string) bool { return s == orders.ServicePayment })
	}
	fmt.Fprintln(stdout, "participants running")
	// The services run side by side; one failing stops the others.
	ctx, cancel := context.WithCancel(ctx)
	var wg errgroup.Group
	if *withTrips {
		wg.Go(func() error {
			defer cancel()
			return participant.Run(ctx, participant.Config{Brokers: cf.brokerList(), Registry: serde, ClientOptions: cf.opts,
				Logger: observability.NewJSONLogger(stderr, slog.LevelWarn)}, trips.NewDesks().Services()...)
		})
	}
	if payment != nil {
		wg.Go(func() error {
			defer cancel()
			return payment.Run(ctx, cf.brokerList(), cf.opts...)
		})
	}
	var runErr error
	if len(p.Services) > 0 {
		runErr = p.Run(ctx, cf.brokerList(), cf.opts...)
	} else {
		<-ctx.Done()
	}
	cancel()
	runErr = errors.Join(runErr, wg.Wait())
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
