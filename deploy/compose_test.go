package deploy

import (
	"bytes"
	"cmp"
	"encoding/json"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"

	"github.com/sagapipe/sagapipe/service"
)

// The Compose stack's services built from the repository's Dockerfile, with
// the `orchestrator` subcommand each runs.
var orchestratorServices = map[string]string{"topics": "topics", "orchestrator": "run", "participants": "participants"}

// loadCompose loads compose.yaml with the Compose specification's loader,
// which validates it against the specification's schema, resolves the
// anchors and interpolates ${VAR:-default} (with an empty environment).
func loadCompose(t *testing.T) *types.Project {
	t.Helper()
	file, err := filepath.Abs("compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	project, err := loader.LoadWithContext(t.Context(), types.ConfigDetails{
		WorkingDir:  filepath.Dir(file),
		ConfigFiles: []types.ConfigFile{{Filename: file}},
		Environment: types.Mapping{},
	}, func(o *loader.Options) { o.SetProjectName("sagapipe", true) })
	if err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	return project
}

func composeService(t *testing.T, p *types.Project, name string) types.ServiceConfig {
	t.Helper()
	s, err := p.GetService(name)
	if err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	return s
}

func env(s types.ServiceConfig) map[string]string {
	out := map[string]string{}
	for k, v := range s.Environment {
		if v != nil {
			out[k] = *v
		}
	}
	return out
}

func TestComposeImagesArePinned(t *testing.T) {
	p := loadCompose(t)
	pinned := regexp.MustCompile(`^[a-z0-9./-]+:[0-9][0-9A-Za-z.+-]*$`)
	var images []string
	for name, s := range p.Services {
		if s.Build != nil {
			continue
		}
		if !pinned.MatchString(s.Image) {
			t.Errorf("service %s: image %q is not pinned to a version tag", name, s.Image)
		}
		images = append(images, s.Image[:strings.LastIndex(s.Image, ":")])
	}
	for _, want := range []string{"apache/kafka", "confluentinc/cp-schema-registry", "jaegertracing/all-in-one"} {
		if !slices.Contains(images, want) {
			t.Errorf("no service runs %s", want)
		}
	}
}

func TestComposeBuildsTheOrchestratorFromTheDockerfile(t *testing.T) {
	p := loadCompose(t)
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	known := cliCommands(t)
	var image string
	for name, sub := range orchestratorServices {
		s := composeService(t, p, name)
		if s.Build == nil || filepath.Clean(s.Build.Context) != root || s.Build.Dockerfile != "Dockerfile" {
			t.Errorf("service %s is not built from the repository's Dockerfile: %+v", name, s.Build)
			continue
		}
		if _, err := os.Stat(filepath.Join(s.Build.Context, s.Build.Dockerfile)); err != nil {
			t.Error(err)
		}
		if image == "" {
			image = s.Image
		} else if s.Image != image {
			t.Errorf("service %s builds image %q, the others %q: one image serves all", name, s.Image, image)
		}
		if len(s.Command) == 0 || s.Command[0] != sub {
			t.Errorf("service %s runs %q, want `orchestrator %s`", name, s.Command, sub)
		}
		if !known[s.Command[0]] {
			t.Errorf("service %s runs `orchestrator %s`, which the CLI does not have", name, s.Command[0])
		}
		if len(s.Entrypoint) != 0 {
			t.Errorf("service %s overrides the image's entrypoint", name)
		}
	}
	if topics := composeService(t, p, "topics"); !slices.Equal(topics.Command[:2], []string{"topics", "ensure"}) {
		t.Errorf("topics runs %q, want topics ensure", topics.Command)
	}
}

// The sagapipe containers set only variables the service reads, and their
// configuration is one the service's own LoadConfig accepts.
func TestComposeEnvironmentIsTheServices(t *testing.T) {
	p := loadCompose(t)
	for name := range orchestratorServices {
		s := composeService(t, p, name)
		vars := env(s)
		for k := range s.Environment {
			checkEnvName(t, "compose service "+name, k)
		}
		var stderr bytes.Buffer
		if _, err := service.LoadConfig("orchestrator run", nil, func(k string) (string, bool) { v, ok := vars[k]; return v, ok }, &stderr); err != nil {
			t.Errorf("compose service %s: the service refuses its configuration: %v\n%s", name, err, stderr.String())
		}
	}
}

// The addresses the orchestrator is given are those the other services
// listen on and advertise.
func TestComposeWiring(t *testing.T) {
	p := loadCompose(t)
	orch := composeService(t, p, "orchestrator")
	vars := env(orch)

	kafka := env(composeService(t, p, "kafka"))
	advertised := map[string]bool{}
	for _, l := range strings.Split(kafka["KAFKA_ADVERTISED_LISTENERS"], ",") {
		if u, err := url.Parse(l); err == nil {
			advertised[u.Host] = true
		}
	}
	for _, b := range strings.Split(vars["SAGAPIPE_BROKERS"], ",") {
		if !advertised[b] {
			t.Errorf("SAGAPIPE_BROKERS %s is not a listener kafka advertises (%s)", b, kafka["KAFKA_ADVERTISED_LISTENERS"])
		}
		host, _, _ := net.SplitHostPort(b)
		composeService(t, p, host)
	}
	roles := strings.Split(kafka["KAFKA_PROCESS_ROLES"], ",")
	if !slices.Contains(roles, "broker") || !slices.Contains(roles, "controller") {
		t.Errorf("kafka is not a KRaft broker and controller: KAFKA_PROCESS_ROLES=%q", kafka["KAFKA_PROCESS_ROLES"])
	}
	// Every saga batch is a Kafka transaction: with one broker the
	// transaction log must have one replica, or no transaction begins.
	for _, k := range []string{"KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"} {
		if kafka[k] != "1" {
			t.Errorf("kafka %s=%q, want 1 on a single broker", k, kafka[k])
		}
	}

	registry, err := url.Parse(vars["SAGAPIPE_REGISTRY_URL"])
	if err != nil {
		t.Fatal(err)
	}
	sr := env(composeService(t, p, registry.Hostname()))
	if listeners := sr["SCHEMA_REGISTRY_LISTENERS"]; !strings.HasSuffix(listeners, ":"+registry.Port()) {
		t.Errorf("SAGAPIPE_REGISTRY_URL %s, but the registry listens on %s", registry, listeners)
	}

	// Traces go to Jaeger's OTLP/HTTP port (http/protobuf is the service's
	// default protocol).
	otlp, err := url.Parse(vars["OTEL_EXPORTER_OTLP_ENDPOINT"])
	if err != nil || otlp.Host == "" {
		t.Fatalf("the orchestrator exports no traces: OTEL_EXPORTER_OTLP_ENDPOINT=%q", vars["OTEL_EXPORTER_OTLP_ENDPOINT"])
	}
	jaeger := composeService(t, p, otlp.Hostname())
	if !strings.HasPrefix(jaeger.Image, "jaegertracing/") {
		t.Errorf("OTEL_EXPORTER_OTLP_ENDPOINT %s is not Jaeger", otlp)
	}
	if proto := vars["OTEL_EXPORTER_OTLP_PROTOCOL"]; otlp.Port() != "4318" || (proto != "" && proto != "http/protobuf") {
		t.Errorf("OTLP endpoint %s with protocol %q: want Jaeger's OTLP/HTTP port 4318", otlp, proto)
	}
	if !publishes(jaeger, 16686) {
		t.Error("jaeger does not publish its UI, port 16686")
	}

	// The API and probes are published on the port the service listens on.
	_, port, err := net.SplitHostPort(cmp.Or(vars["SAGAPIPE_HTTP_ADDR"], ":8080"))
	if err != nil {
		t.Fatal(err)
	}
	p2, _ := strconv.Atoi(port)
	if !publishes(orch, uint32(p2)) {
		t.Errorf("orchestrator does not publish its HTTP port %s", port)
	}
	for name, s := range p.Services {
		for _, pc := range s.Ports {
			if pc.HostIP != "127.0.0.1" {
				t.Errorf("service %s publishes %d on %q: bind to 127.0.0.1 on a laptop", name, pc.Target, pc.HostIP)
			}
		}
	}

	// Docker's SIGKILL comes after the service's graceful shutdown, and
	// state_dir is kept on a volume.
	grace := 30 * time.Second
	if v := vars["SAGAPIPE_SHUTDOWN_GRACE"]; v != "" {
		if grace, err = time.ParseDuration(v); err != nil {
			t.Fatal(err)
		}
	}
	if orch.StopGracePeriod == nil || time.Duration(*orch.StopGracePeriod) <= grace {
		t.Errorf("orchestrator stop_grace_period %v is not above shutdown_grace %v (Docker's default is 10s)", orch.StopGracePeriod, grace)
	}
	stateDir := vars["SAGAPIPE_STATE_DIR"]
	if !slices.ContainsFunc(orch.Volumes, func(v types.ServiceVolumeConfig) bool {
		return v.Type == types.VolumeTypeVolume && (stateDir == v.Target || strings.HasPrefix(stateDir, v.Target+"/"))
	}) {
		t.Errorf("SAGAPIPE_STATE_DIR %q is not on a named volume", stateDir)
	}
}

// The stack comes up in order: each dependency waits for health or
// completion, and every health condition has a health check to meet.
func TestComposeStartOrder(t *testing.T) {
	p := loadCompose(t)
	want := map[string]map[string]string{
		"schema-registry": {"kafka": types.ServiceConditionHealthy},
		"topics":          {"kafka": types.ServiceConditionHealthy},
		"orchestrator":    {"topics": types.ServiceConditionCompletedSuccessfully, "schema-registry": types.ServiceConditionHealthy, "jaeger": types.ServiceConditionStarted},
		"participants":    {"topics": types.ServiceConditionCompletedSuccessfully, "schema-registry": types.ServiceConditionHealthy},
		"load":            {"orchestrator": types.ServiceConditionStarted, "participants": types.ServiceConditionStarted},
	}
	for name, deps := range want {
		s := composeService(t, p, name)
		for dep, cond := range deps {
			if got := s.DependsOn[dep].Condition; got != cond {
				t.Errorf("%s depends on %s with condition %q, want %q", name, dep, got, cond)
			}
		}
	}
	for name, s := range p.Services {
		for dep, d := range s.DependsOn {
			if d.Condition == types.ServiceConditionHealthy {
				if hc := composeService(t, p, dep).HealthCheck; hc == nil || hc.Disable || len(hc.Test) == 0 {
					t.Errorf("%s waits for %s to be healthy, which has no health check", name, dep)
				}
			}
		}
	}
}

// The load job waits for /readyz, then starts orders sagas through the
// API with every field the start event requires.
func TestComposeLoadStartsOrders(t *testing.T) {
	p := loadCompose(t)
	load := composeService(t, p, "load")
	script := strings.Join(load.Command, "\n")
	for _, want := range []string{"/readyz", "/api/sagas/orders?id="} {
		if !strings.Contains(script, want) {
			t.Errorf("the load script does not call %s", want)
		}
	}
	if env(load)["LOAD_ORDERS"] != "100" {
		t.Errorf("LOAD_ORDERS defaults to %q, want 100", env(load)["LOAD_ORDERS"])
	}
	raw, err := os.ReadFile("../examples/orders/schemas/order_placed.avsc")
	if err != nil {
		t.Fatal(err)
	}
	var schema struct {
		Fields []struct {
			Name    string          `json:"name"`
			Default json.RawMessage `json:"default"`
		} `json:"fields"`
	}
	if err := json.Unmarshal(raw, &schema); err != nil {
		t.Fatal(err)
	}
	for _, f := range schema.Fields {
		if f.Default == nil && !strings.Contains(script, `\"`+f.Name+`\"`) {
			t.Errorf("the load script's order has no %q, which OrderPlaced requires", f.Name)
		}
	}
}

func publishes(s types.ServiceConfig, target uint32) bool {
	return slices.ContainsFunc(s.Ports, func(p types.ServicePortConfig) bool { return p.Target == target && p.Published != "" })
}

// cliCommands are the subcommands in the orchestrator's command table
// (cmd/orchestrator/main.go).
func cliCommands(t *testing.T) map[string]bool {
	t.Helper()
	src, err := os.ReadFile("../cmd/orchestrator/main.go")
	if err != nil {
		t.Fatal(err)
	}
	known := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^\s*\{"([a-z-]+)", "`).FindAllStringSubmatch(string(src), -1) {
		known[m[1]] = true
	}
	if !known["run"] {
		t.Fatal("no `run` in cmd/orchestrator/main.go's command table: has it moved?")
	}
	return known
}
