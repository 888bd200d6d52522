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
	"github.com/sagapipe/sagapipe/schema"
)

const smokeTopic = "orders.placed"

func runSmoke(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("smoke", flag.ContinueOnError)
	var sf stackFlags
	sf.register(fs, 0, 0)
	count := fs.Int("count", 1000, "how many OrderPlaced events to round-trip")
	partitions := fs.Int("partitions", 3, "partitions of the "+smokeTopic+" topic")
	if code := parseFlags(fs, args, stderr); code >= 0 {
		return code
	}
	problems := atLeastOne(nil, map[string]int{"--count": *count, "--partitions": *partitions})
	if len(problems) > 0 {
		fmt.Fprintf(stderr, "orchestrator smoke: %v\n", errors.Join(problems...))
		return 2
	}

	stack := sf.startAnnounced("smoke", stdout, stderr)
	if stack == nil {
		return 1
	}
	defer stack.Close()

	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := smoke(ctx, stack.KafkaAddrs(), stack.RegistryURL(), *count, int32(*partitions), stdout); err != nil {
		fmt.Fprintf(stderr, "orchestrator smoke: FAILED: %v\n", err)
		return 1
	}
	return 0
}

// smoke produces count OrderPlaced events through schema/ and reads them back
// with a separate consumer, checking every field and header.
func smoke(ctx context.Context, brokers []string, registryURL string, count int, partitions int32, out io.Writer) error {
	serde, err := schema.NewSerde(registryURL)
	if err != nil {
		return err
	}
	codec, err := schema.NewCodec[orders.OrderPlaced](serde, orders.OrderPlacedSchema)
	if err != nil {
		return err
	}
	producer, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		return err
	}
	defer producer.Close()
	if _, err := kadm.NewClient(producer).CreateTopic(ctx, partitions, 1, nil, smokeTopic); err != nil {
		return fmt.Errorf("create topic %s: %w", smokeTopic, err)
	}

	start := time.Now()
	sent := make(map[string]orders.OrderPlaced, count)
	records := make([]*kgo.Record, 0, count)
	for i := range count {
		o := smokeOrder(i, start)
		value, err := codec.Encode(ctx, smokeTopic, &o)
		if err != nil {
			return err
		}
		env := schema.NewEnvelope(orders.OrderPlacedType, "orchestrator-smoke", start)
		env.CorrelationID = o.OrderID
		sent[env.ID] = o
		records = append(records, &kgo.Record{Topic: smokeTopic, Key: []byte(o.OrderID), Value: value, Headers: env.Apply(nil)})
	}
	if err := producer.ProduceSync(ctx, records...).FirstErr(); err != nil {
		return fmt.Errorf("produce: %w", err)
	}
	produced := time.Since(start)

	consumer, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(smokeTopic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		return err
	}
	defer consumer.Close()
	got := 0
	for got < count {
		fs := consumer.PollFetches(ctx)
		if err := fs.Err0(); err != nil {
			return fmt.Errorf("consume after %d of %d events: %w", got, count, err)
		}
		for _, r := range fs.Records() {
			env, err := schema.ReadEnvelope(r.Headers)
			if err != nil {
				return fmt.Errorf("record %s/%d@%d: %w", r.Topic, r.Partition, r.Offset, err)
			}
			o, err := codec.Decode(ctx, r.Value)
			if err != nil {
				return fmt.Errorf("record %s/%d@%d: %w", r.Topic, r.Partition, r.Offset, err)
			}
			want, ok := sent[env.ID]
			if !ok {
				return fmt.Errorf("record %s/%d@%d has ce_id %s, which was not sent or came twice", r.Topic, r.Partition, r.Offset, env.ID)
			}
			if !sameOrder(o, want) || env.CorrelationID != want.OrderID {
				return fmt.Errorf("record %s/%d@%d: read %+v, sent %+v", r.Topic, r.Partition, r.Offset, o, want)
			}
			delete(sent, env.ID)
			got++
		}
	}
	total := time.Since(start)
	fmt.Fprintf(out, "round-tripped %d OrderPlaced events over %d partitions: produced in %v, read back and checked in %v\n",
		count, partitions, produced.Round(time.Millisecond), (total - produced).Round(time.Millisecond))
	fmt.Fprintf(out, "registry calls: %d (schemas are cached after first use)\n", serde.RegistryCalls())
	fmt.Fprintln(out, "smoke OK")
	return nil
}

func smokeOrder(i int, now time.Time) orders.OrderPlaced {
	o := orders.OrderPlaced{
		OrderID: fmt.Sprintf("order-%05d", i), CustomerID: fmt.Sprintf("customer-%03d", i%97),
		SKU: fmt.Sprintf("sku-%02d", i%20), Quantity: int32(1 + i%5), UnitPriceCents: 1999,
		Currency: "EUR", PlacedAt: now.Truncate(time.Millisecond).UTC(), Express: i%3 == 0,
	}
	o.TotalCents = o.UnitPriceCents * int64(o.Quantity)
	if i%4 == 0 {
		note := "gift wrap"
		o.Note = &note
	}
	return o
}

func sameOrder(a, b orders.OrderPlaced) bool {
	if (a.Note == nil) != (b.Note == nil) || (a.Note != nil && *a.Note != *b.Note) {
		return false
	}
	a.Note, b.Note = nil, nil
	return a.PlacedAt.Equal(b.PlacedAt) && a.OrderID == b.OrderID && a.CustomerID == b.CustomerID &&
		a.SKU == b.SKU && a.Quantity == b.Quantity && a.UnitPriceCents == b.UnitPriceCents &&
		a.TotalCents == b.TotalCents && a.Currency == b.Currency && a.Express == b.Express
}
