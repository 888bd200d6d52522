package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/sagapipe/sagapipe/examples/orders"
)

func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	var sf stackFlags
	sf.register(fs, 0, 0)
	n := fs.Int("orders", 1000, "orders to place")
	concurrency := fs.Int("concurrency", 200, "sagas in flight at most")
	partitions := fs.Int("partitions", 3, "partitions of every topic")
	stepTimeout := fs.Duration("step-timeout", 2*time.Second, "how long a step waits for its reply before the command is resent")
	decline := fs.Float64("decline-rate", 0.05, "share of payments declined (0..1)")
	shipFail := fs.Float64("shipping-failure-rate", 0.03, "share of shipments that fail (0..1)")
	poison := fs.Float64("poison-rate", 0.01, "share of first replies sent as undecodable bytes (0..1)")
	latency := fs.Duration("latency", 0, "added to every participant's command handling")
	if code := parseFlags(fs, args, stderr); code >= 0 {
		return code
	}
	problems := atLeastOne(nil, map[string]int{"--orders": *n, "--concurrency": *concurrency, "--partitions": *partitions})
	if *stepTimeout <= 0 {
		problems = append(problems, fmt.Errorf("--step-timeout %v: must be positive", *stepTimeout))
	}
	for name, r := range map[string]float64{"--decline-rate": *decline, "--shipping-failure-rate": *shipFail, "--poison-rate": *poison} {
		if r < 0 || r > 1 {
			problems = append(problems, fmt.Errorf("%s %v: must be between 0 and 1", name, r))
		}
	}
	if len(problems) > 0 {
		fmt.Fprintf(stderr, "orchestrator demo: %v\n", errors.Join(problems...))
		return 2
	}

	stack := sf.startAnnounced("demo", stdout, stderr)
	if stack == nil {
		return 1
	}
	defer stack.Close()
	fmt.Fprintf(stdout, "placing %d orders (%d in flight at most; declines %.0f%%, shipping failures %.0f%%, poison replies %.0f%%)\n",
		*n, *concurrency, *decline*100, *shipFail*100, *poison*100)

	last := time.Time{}
	sum, err := orders.RunDemo(ctx, orders.DemoConfig{
		Brokers: stack.KafkaAddrs(), RegistryURL: stack.RegistryURL(),
		Orders: *n, Concurrency: *concurrency, Partitions: int32(*partitions), StepTimeout: *stepTimeout,
		Faults: orders.Faults{DeclineRate: *decline, ShippingFailureRate: *shipFail, PoisonRate: *poison, Latency: *latency},
		Progress: func(done, total int) {
			if time.Since(last) < 100*time.Millisecond && done < total {
				return
			}
			last = time.Now()
			fmt.Fprintf(stderr, "\rsagas %s %d/%d", bar(int64(done), int64(total), 30), done, total)
			if done >= total {
				fmt.Fprintln(stderr)
			}
		},
	})
	if err != nil {
		fmt.Fprintf(stderr, "\norchestrator demo: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "completed            %d\ncompensated          %d\ncompensation failed  %d\nnot finished         %d\ndead-lettered        %d\n",
		sum.Completed, sum.Compensated, sum.CompensationFailed, sum.Stuck, sum.DeadLettered)
	fmt.Fprintf(stdout, "throughput           %.0f sagas/s (%d in %v)\nsaga latency         p50 %v, p99 %v\n",
		sum.SagasPerSecond, sum.Orders, sum.Elapsed.Round(time.Millisecond), sum.P50.Round(time.Millisecond), sum.P99.Round(time.Millisecond))
	if len(sum.Violations) > 0 {
		fmt.Fprintf(stdout, "INVARIANTS BROKEN (%d):\n", len(sum.Violations))
		for i, v := range sum.Violations {
			if i == 20 {
				fmt.Fprintf(stdout, "  ... and %d more\n", len(sum.Violations)-20)
				break
			}
			fmt.Fprintf(stdout, "  %s\n", v)
		}
		return 1
	}
	fmt.Fprintln(stdout, "invariants hold: every saga terminal and announced once; stock reserved = released + shipped; money charged = refunded + captured; nothing applied twice")
	return 0
}
