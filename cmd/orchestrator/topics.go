package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/examples/orders"
	"github.com/sagapipe/sagapipe/saga"
)

func runTopics(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "ensure" {
		fmt.Fprintln(stderr, "usage: orchestrator topics ensure [--brokers B] [--partitions N] [--replication R]")
		return 2
	}
	fs := flag.NewFlagSet("topics ensure", flag.ContinueOnError)
	var cf clusterFlags
	cf.register(fs)
	partitions := fs.Int("partitions", 3, "partitions of each topic (the inbox and the journal must match)")
	replication := fs.Int("replication", 1, "replication factor (3 in production)")
	if code := parseFlags(fs, args[1:], stderr); code >= 0 {
		return code
	}
	if *partitions < 1 || *replication < 1 {
		fmt.Fprintf(stderr, "orchestrator topics ensure: --partitions %d and --replication %d must be at least 1\n", *partitions, *replication)
		return 2
	}
	s, err := orders.Saga(2 * time.Second)
	if err != nil {
		fmt.Fprintf(stderr, "orchestrator topics ensure: %v\n", err)
		return 1
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(cf.brokerList()...))
	if err != nil {
		fmt.Fprintf(stderr, "orchestrator topics ensure: %v\n", err)
		return 1
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	p, r := int32(*partitions), int16(*replication)
	err = s.EnsureTopics(ctx, adm, p, r)
	for _, t := range []string{orders.InventoryTopic, orders.PaymentTopic, orders.ShippingTopic} {
		err = errors.Join(err, saga.EnsureTopic(ctx, adm, t, p, r, nil))
	}
	if err != nil {
		fmt.Fprintf(stderr, "orchestrator topics ensure: %v\n", err)
		return 1
	}
	details, err := adm.ListTopics(ctx, s.InboxTopic(), s.JournalTopic(), s.InboxTopic()+".dlq",
		orders.InventoryTopic, orders.PaymentTopic, orders.ShippingTopic)
	if err != nil {
		fmt.Fprintf(stderr, "orchestrator topics ensure: %v\n", err)
		return 1
	}
	for _, d := range details.Sorted() {
		fmt.Fprintf(stdout, "%-24s %d partitions\n", d.Topic, len(d.Partitions))
	}
	if len(details[s.InboxTopic()].Partitions) != len(details[s.JournalTopic()].Partitions) {
		fmt.Fprintf(stderr, "orchestrator topics ensure: %s and %s exist with different partition counts; the runtime will refuse them (recreate the journal to match the inbox)\n",
			s.InboxTopic(), s.JournalTopic())
		return 1
	}
	return 0
}
