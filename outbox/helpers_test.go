package outbox_test

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/goleak"

	"github.com/sagapipe/sagapipe/devstack"
	"github.com/sagapipe/sagapipe/internal/testkit"
	"github.com/sagapipe/sagapipe/outbox"
	"github.com/sagapipe/sagapipe/pipe"
	"github.com/sagapipe/sagapipe/schema"
)

func TestMain(m *testing.M) {
	if mode := childMode(); mode != "" {
		runChild(mode) // exits
	}
	goleak.VerifyTestMain(m)
}

// The accounts participant of these tests: Debit takes money from an
// account, and is answered with the balance.
const (
	commandsTopic = "accounts.commands"
	inboxTopic    = "transfers.inbox" // the saga's reply topic
	debitType     = "sagapipe.test.accounts.Debit"
	debitedType   = "sagapipe.test.accounts.Debited"
	effectsDDL    = `CREATE TABLE IF NOT EXISTS effects (
	id bigserial PRIMARY KEY, account text NOT NULL, cents bigint NOT NULL, command_id text NOT NULL)`
)

type Debit struct {
	Account string `avro:"account"`
	Cents   int64  `avro:"cents"`
}

type Debited struct {
	Account string `avro:"account"`
	Balance int64  `avro:"balance"`
}

const debitSchema = `{"type":"record","name":"Debit","namespace":"sagapipe.test.accounts","fields":[
	{"name":"account","type":"string"},{"name":"cents","type":"long"}]}`

const debitedSchema = `{"type":"record","name":"Debited","namespace":"sagapipe.test.accounts","fields":[
	{"name":"account","type":"string"},{"name":"balance","type":"long"}]}`

// codecs are the participant's codecs on a registry.
type codecs struct {
	debit   *schema.Codec[Debit]
	debited *schema.Codec[Debited]
}

func newCodecs(registryURL string) (codecs, error) {
	serde, err := schema.NewSerde(registryURL)
	if err != nil {
		return codecs{}, err
	}
	debit, err := schema.NewCodec[Debit](serde, debitSchema)
	if err != nil {
		return codecs{}, err
	}
	debited, err := schema.NewCodec[Debited](serde, debitedSchema)
	return codecs{debit: debit, debited: debited}, err
}

// debit is the participant's TxHandler: it applies the debit as a row of
// effects and answers with the balance. calls counts its calls.
func debit(c codecs, calls *int64, mu *sync.Mutex) outbox.TxHandler[Debit] {
	return func(ctx context.Context, tx pgx.Tx, cmd Debit, env schema.Envelope) (pipe.Reply, error) {
		if mu != nil {
			mu.Lock()
			*calls++
			mu.Unlock()
		}
		if _, err := tx.Exec(ctx, "INSERT INTO effects (account, cents, command_id) VALUES ($1, $2, $3)", cmd.Account, cmd.Cents, env.ID); err != nil {
			return pipe.Reply{}, err
		}
		var balance int64
		if err := tx.QueryRow(ctx, "SELECT 1000 - coalesce(sum(cents), 0) FROM effects WHERE account = $1", cmd.Account).Scan(&balance); err != nil {
			return pipe.Reply{}, err
		}
		return pipe.NewReply(c.debited, debitedType, Debited{Account: cmd.Account, Balance: balance}), nil
	}
}

// world is what a test runs on: the embedded Kafka and registry, a
// PostgreSQL server, and the participant's store and codecs.
type world struct {
	stack  *devstack.Stack
	pg     *testkit.Postgres
	pool   *pgxpool.Pool
	store  *outbox.Store
	codecs codecs
}

func newWorld(t *testing.T, storeOpts ...outbox.Opt) *world {
	t.Helper()
	ctx := context.Background()
	stack, err := devstack.Start(devstack.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stack.Close() })
	pg := testkit.StartPostgres(t)
	pool, err := pgxpool.New(ctx, pg.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if _, err := pool.Exec(ctx, effectsDDL); err != nil {
		t.Fatal(err)
	}
	store, err := outbox.New(ctx, pool, storeOpts...)
	if err != nil {
		t.Fatal(err)
	}
	c, err := newCodecs(stack.RegistryURL())
	if err != nil {
		t.Fatal(err)
	}
	w := &world{stack: stack, pg: pg, pool: pool, store: store, codecs: c}
	w.createTopics(t, commandsTopic, inboxTopic)
	return w
}

func (w *world) client(t *testing.T, opts ...kgo.Opt) *kgo.Client {
	t.Helper()
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(w.stack.KafkaAddrs()...)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cl
}

func (w *world) createTopics(t *testing.T, topics ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := kadm.NewClient(w.client(t)).CreateTopics(ctx, 1, 1, nil, topics...)
	if err == nil {
		err = resp.Error()
	}
	if err != nil {
		t.Fatal(err)
	}
}

// workerClientOpts are a stage worker's client options in group.
func workerClientOpts(brokers []string, group string) []kgo.Opt {
	return []kgo.Opt{kgo.SeedBrokers(brokers...),
		kgo.ConsumerGroup(group), kgo.ConsumeTopics(commandsTopic), kgo.DisableAutoCommit(),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.ProducerLinger(0),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		// A participant killed in a test must not hold its partitions
		// for kgo's default 45s.
		kgo.SessionTimeout(3 * time.Second), kgo.HeartbeatInterval(300 * time.Millisecond)}
}

// run runs fn in the background until the test ends, and fails the test
// when it returns an error.
func run(t *testing.T, name string, fn func(ctx context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := fn(ctx); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
}

// runParticipant runs a stage worker with the outbox handler h, and a
// relay, until the test ends.
func (w *world) runParticipant(t *testing.T, h pipe.Handler[Debit], opts ...pipe.StageOpt) {
	t.Helper()
	cl := w.client(t, workerClientOpts(w.stack.KafkaAddrs(), "accounts")...)
	worker, err := pipe.NewStageWorker(cl, w.codecs.debit, h, opts...)
	if err != nil {
		t.Fatal(err)
	}
	relay, err := outbox.NewRelay(w.store, cl, outbox.WithLogger(testLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	run(t, "stage worker", worker.Run)
	run(t, "relay", relay.Run)
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

// command is a Debit command of the saga "transfers", as the saga's
// runtime sends it.
func command(t *testing.T, c codecs, sagaID string, cmd Debit) (*kgo.Record, schema.Envelope) {
	t.Helper()
	value, err := c.debit.Encode(context.Background(), commandsTopic, &cmd)
	if err != nil {
		t.Fatal(err)
	}
	env := schema.NewEnvelope(debitType, "sagapipe-orchestrator", time.Now())
	env.SagaName, env.SagaID, env.SagaStep, env.CorrelationID = "transfers", sagaID, "debit", "corr-"+sagaID
	env.ReplyTo, env.IdempotencyKey = inboxTopic, sagaID+"/debit/do"
	env.TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	return &kgo.Record{Topic: commandsTopic, Key: []byte(sagaID), Value: value, Headers: env.Apply(nil)}, env
}

// resend is rec sent again by the saga: a new ce_id, the same
// idempotency key.
func resend(rec *kgo.Record) (*kgo.Record, string) {
	id := schema.NewID()
	return &kgo.Record{Topic: rec.Topic, Key: rec.Key, Value: rec.Value,
		Headers: schema.SetHeader(rec.Headers, schema.HeaderID, id)}, id
}

func produce(t *testing.T, cl *kgo.Client, recs ...*kgo.Record) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
}

func keyed(key string) func(*kgo.Record) bool {
	return func(r *kgo.Record) bool { return string(r.Key) == key }
}

// records counts the records in topic.
func records(t *testing.T, cl *kgo.Client, topic string) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ends, err := kadm.NewClient(cl).ListEndOffsets(ctx, topic)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	ends.Each(func(o kadm.ListedOffset) { n += o.Offset })
	return n
}

// count runs a COUNT query.
func count(t *testing.T, pool *pgxpool.Pool, query string, args ...any) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), query, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}

var errFailed = errors.New("the account service is down")
