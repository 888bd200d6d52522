package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hamba/avro/v2"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/dlq"
	"github.com/sagapipe/sagapipe/schema"
	"github.com/sagapipe/sagapipe/service"
)

// filterFlags select dead-letter records.
type filterFlags struct {
	originTopic, key, class string
}

func (f *filterFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.originTopic, "origin-topic", "", "only records that failed on this topic")
	fs.StringVar(&f.key, "key", "", "only records with this key")
	fs.StringVar(&f.class, "class", "", "only records of this error class (poison, exhausted, predecessor_dead_lettered)")
}

func (f *filterFlags) filter() (dlq.Filter, error) {
	switch dlq.Class(f.class) {
	case "", dlq.ClassPoison, dlq.ClassExhausted, dlq.ClassPredecessorDeadLettered:
	default:
		return dlq.Filter{}, fmt.Errorf("--class %q: want poison, exhausted or predecessor_dead_lettered", f.class)
	}
	return dlq.Filter{OriginTopic: f.originTopic, Key: f.key, Class: dlq.Class(f.class)}, nil
}

const dlqUsage = `usage: orchestrator dlq <list|show|replay> <dlq-topic> [args] [flags]

  list   <dlq-topic>                       a table of the dead-letter records
  show   <dlq-topic> <partition> <offset>  one record: every header and the decoded value
  replay <dlq-topic>                       republish to the original topics (resumable; --dry-run)
  release <dlq-topic> <key>                unpark a key held back in sequenced mode
`

func runDLQ(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, dlqUsage)
		return 2
	}
	switch args[0] {
	case "list":
		return dlqList(ctx, args[1:], stdout, stderr)
	case "show":
		return dlqShow(ctx, args[1:], stdout, stderr)
	case "replay":
		return dlqReplay(ctx, args[1:], stdout, stderr)
	case "release":
		return dlqRelease(ctx, args[1:], stdout, stderr)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, dlqUsage)
		return 0
	}
	fmt.Fprintf(stderr, "orchestrator dlq: unknown command %q\n\n%s", args[0], dlqUsage)
	return 2
}

func dlqList(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("dlq list", flag.ContinueOnError)
	var cf clusterFlags
	var ff filterFlags
	cf.register(fs)
	ff.register(fs)
	pos, code := parseInterspersed(fs, args, 1, stderr)
	if code >= 0 {
		return code
	}
	filter, err := ff.filter()
	if err != nil {
		fmt.Fprintf(stderr, "orchestrator dlq list: %v\n", err)
		return 2
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DLQ\tORIGIN\tKEY\tCLASS\tATTEMPTS\tAGE\tERROR")
	now := time.Now()
	n := 0
	err = dlq.List(ctx, dlq.ListConfig{ClientOptions: cf.opts, Topic: pos[0], Filter: filter}, func(e dlq.Entry, err error) error {
		r := e.Record
		if err != nil {
			fmt.Fprintf(tw, "%d@%d\t?\t%q\t?\t?\t?\t%v\n", r.Partition, r.Offset, r.Key, err)
			return nil
		}
		age := "?"
		if !e.LastFailedAt.IsZero() {
			age = now.Sub(e.LastFailedAt).Round(time.Second).String()
		}
		fmt.Fprintf(tw, "%d@%d\t%s/%d@%d\t%q\t%s\t%d\t%s\t%s\n", r.Partition, r.Offset, e.OriginTopic, e.OriginPartition,
			e.OriginOffset, r.Key, e.Class, e.Attempts, age, oneLine(e.Message, 80))
		n++
		return nil
	})
	tw.Flush()
	if err != nil {
		fmt.Fprintf(stderr, "orchestrator dlq list: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "%d record(s)\n", n)
	return 0
}

func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		return s[:n-1] + "…"
	}
	return s
}

func dlqShow(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("dlq show", flag.ContinueOnError)
	var cf clusterFlags
	cf.register(fs)
	pos, code := parseInterspersed(fs, args, 3, stderr)
	if code >= 0 {
		return code
	}
	partition, perr := strconv.ParseInt(pos[1], 10, 32)
	offset, oerr := strconv.ParseInt(pos[2], 10, 64)
	if perr != nil || oerr != nil || partition < 0 || offset < 0 {
		fmt.Fprintf(stderr, "orchestrator dlq show: partition %q and offset %q must be non-negative integers\n", pos[1], pos[2])
		return 2
	}
	rec, err := fetchOne(ctx, cf.opts, pos[0], int32(partition), offset)
	if err != nil {
		fmt.Fprintf(stderr, "orchestrator dlq show: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "record %s/%d@%d  key %q  timestamp %s\n\nheaders:\n", rec.Topic, rec.Partition, rec.Offset, rec.Key,
		rec.Timestamp.UTC().Format(time.RFC3339Nano))
	for _, h := range rec.Headers {
		fmt.Fprintf(stdout, "  %s: %s\n", h.Key, h.Value)
	}
	fmt.Fprintln(stdout, "\nvalue:")
	decoded, derr := decodeValue(ctx, cf.cfg, rec.Value)
	if derr != nil {
		fmt.Fprintf(stdout, "  (does not decode: %v)\n  raw %d bytes: %q\n", derr, len(rec.Value), rec.Value)
		return 0
	}
	fmt.Fprintf(stdout, "%s\n", decoded)
	return 0
}

// fetchOne reads the record at topic/partition@offset.
func fetchOne(ctx context.Context, opts []kgo.Opt, topic string, partition int32, offset int64) (*kgo.Record, error) {
	cl, err := kgo.NewClient(append(slices.Clone(opts),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: {partition: kgo.NewOffset().At(offset)}}))...)
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	for {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			return nil, fmt.Errorf("no record at %s/%d@%d within 15s (is the offset past the end?)", topic, partition, offset)
		}
		if err := fs.Err0(); err != nil {
			return nil, err
		}
		for _, r := range fs.Records() {
			if r.Offset == offset {
				return r, nil
			}
			if r.Offset > offset {
				return nil, fmt.Errorf("no record at %s/%d@%d (the next is at %d: a transaction marker or compacted away)", topic, partition, offset, r.Offset)
			}
		}
	}
}

// decodeValue decodes a Confluent-framed Avro value through the registry
// into indented JSON.
func decodeValue(ctx context.Context, cfg service.Config, value []byte) ([]byte, error) {
	id, payload, err := schema.SplitFrame(value)
	if err != nil {
		return nil, err
	}
	serde, err := cfg.Serde()
	if err != nil {
		return nil, err
	}
	writer, err := serde.SchemaByID(ctx, id)
	if err != nil {
		return nil, err
	}
	var v any
	if err := avro.Unmarshal(writer, payload, &v); err != nil {
		return nil, fmt.Errorf("schema %d: %w", id, err)
	}
	out, err := json.MarshalIndent(v, "  ", "  ")
	if err != nil {
		return nil, err
	}
	return append([]byte("  "), out...), nil
}

func dlqReplay(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("dlq replay", flag.ContinueOnError)
	var cf clusterFlags
	var ff filterFlags
	cf.register(fs)
	ff.register(fs)
	dryRun := fs.Bool("dry-run", false, "count what would be replayed; republish nothing")
	group := fs.String("group", "", "consumer group that keeps the replay's progress (default sagapipe.dlq-replay.<dlq-topic>)")
	pos, code := parseInterspersed(fs, args, 1, stderr)
	if code >= 0 {
		return code
	}
	filter, err := ff.filter()
	if err != nil {
		fmt.Fprintf(stderr, "orchestrator dlq replay: %v\n", err)
		return 2
	}
	lastShown := time.Time{}
	progress := func(done, total int64) {
		if time.Since(lastShown) < 200*time.Millisecond && done < total {
			return
		}
		lastShown = time.Now()
		fmt.Fprintf(stderr, "\rreplay %s %d/%d", bar(done, total, 30), done, total)
		if done >= total {
			fmt.Fprintln(stderr)
		}
	}
	stats, err := dlq.Replay(ctx, dlq.ReplayConfig{ClientOptions: cf.opts, Topic: pos[0], Filter: filter,
		Group: *group, DryRun: *dryRun, Progress: progress})
	if err != nil {
		fmt.Fprintf(stderr, "\norchestrator dlq replay: %v\n", err)
		return 1
	}
	verb := "replayed"
	if *dryRun {
		verb = "would replay"
	}
	fmt.Fprintf(stdout, "%s %d record(s), skipped %d by the filter\n", verb, stats.Replayed, stats.Skipped)
	return 0
}

func bar(done, total int64, width int) string {
	filled := width
	if total > 0 {
		filled = int(done * int64(width) / total)
	}
	return "[" + strings.Repeat("#", filled) + strings.Repeat(".", width-filled) + "]"
}

func dlqRelease(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("dlq release", flag.ContinueOnError)
	var cf clusterFlags
	cf.register(fs)
	originTopic := fs.String("origin-topic", "", "release the key on this origin topic only")
	pos, code := parseInterspersed(fs, args, 2, stderr)
	if code >= 0 {
		return code
	}
	n, err := dlq.Release(ctx, dlq.ReleaseConfig{ClientOptions: cf.opts, Topic: pos[0], Key: pos[1], OriginTopic: *originTopic})
	if err != nil {
		fmt.Fprintf(stderr, "orchestrator dlq release: %v\n", err)
		return 1
	}
	if n == 0 {
		fmt.Fprintf(stdout, "key %q is not parked in %s: nothing to release\n", pos[1], pos[0])
		return 0
	}
	fmt.Fprintf(stdout, "released key %q in %d partition(s); its consumers let its next records through\n", pos[1], n)
	return 0
}
