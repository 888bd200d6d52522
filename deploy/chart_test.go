package deploy

import (
	"bytes"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/lint/support"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"

	"github.com/sagapipe/sagapipe/service"
)

// distrolessNonrootUID is the user of the image's base,
// gcr.io/distroless/static-debian12:nonroot (USER nonroot in the Dockerfile).
const distrolessNonrootUID = 65532

// The value sets the chart is rendered and linted with.
var (
	minimalValues = `
config:
  brokers: [kafka-0.kafka:9092]
  registry:
    url: http://schema-registry:8081
`
	productionValues = `
replicaCount: 3
inboxPartitions: 6
image:
  repository: registry.internal/shop/orchestrator
  tag: "1.4.2"
config:
  brokers: [b-1.kafka:9096, b-2.kafka:9096, b-3.kafka:9096]
  registry:
    url: https://schema-registry.internal
    username: sagapipe
  tls:
    enabled: true
    ca_file: /etc/sagapipe/tls/ca.crt
  sasl:
    mechanism: SCRAM-SHA-512
    username: sagapipe
  shutdown_grace: 1m30s
  session_timeout: 30s
  transaction_timeout: 60s
  closed_retention: 72h
secrets:
  saslPassword:
    existingSecret: kafka-credentials
  registryPassword:
    existingSecret: registry-credentials
    key: registry-password
  apiToken:
    existingSecret: sagapipe-api
tls:
  existingSecret: kafka-ca
otel:
  endpoint: http://otel-collector.observability:4318
  protocol: http/protobuf
  serviceName: shop-orchestrator
serviceMonitor:
  enabled: true
  labels:
    release: prometheus
extraEnv:
  - name: SAGAPIPE_ORDERS_STEP_TIMEOUT
    value: 10s
  - name: OTEL_TRACES_SAMPLER
    value: parentbased_traceidratio
persistence:
  storageClassName: fast-ssd
  size: 5Gi
imagePullSecrets: [registry-pull]
`
	// A team's own main (no subcommand), no volume claim, topics made
	// elsewhere, another port.
	ephemeralValues = `
args: []
config:
  brokers: [kafka:9092]
  registry:
    url: http://schema-registry:8081
  http_addr: "0.0.0.0:9000"
  shutdown_grace: 2.5s
persistence:
  enabled: false
topics:
  enabled: false
podDisruptionBudget:
  enabled: false
`
	valueSets = []struct{ name, values string }{
		{"minimal", minimalValues},
		{"production", productionValues},
		{"ephemeral", ephemeralValues},
	}
)

func TestChartLints(t *testing.T) {
	for _, set := range valueSets {
		t.Run(set.name, func(t *testing.T) {
			vals, err := chartutil.ReadValues([]byte(set.values))
			if err != nil {
				t.Fatal(err)
			}
			lint := action.NewLint()
			lint.Namespace = namespace
			kv, err := chartutil.ParseKubeVersion(kubeVersion)
			if err != nil {
				t.Fatal(err)
			}
			lint.KubeVersion = kv
			lint.Strict = true
			res := lint.Run([]string{chartDir}, vals.AsMap())
			for _, err := range res.Errors {
				t.Errorf("lint: %v", err)
			}
			for _, msg := range res.Messages {
				if msg.Severity >= support.WarningSev {
					t.Errorf("lint: %s", msg)
				}
			}
		})
	}
}

func TestChartRendersValidObjects(t *testing.T) {
	for _, set := range valueSets {
		t.Run(set.name, func(t *testing.T) {
			m := mustRender(t, set.values)
			checkRelease(t, m, set.values)
		})
	}
}

// checkRelease holds a rendered release to what matters when it runs.
func checkRelease(t *testing.T, m *manifests, values string) {
	t.Helper()
	var v struct {
		ReplicaCount    *int32 `json:"replicaCount"`
		InboxPartitions *int   `json:"inboxPartitions"`
	}
	if err := yaml.Unmarshal([]byte(values), &v); err != nil {
		t.Fatal(err)
	}
	wantReplicas, wantPartitions := int32(1), 3
	if v.ReplicaCount != nil {
		wantReplicas = *v.ReplicaCount
	}
	if v.InboxPartitions != nil {
		wantPartitions = *v.InboxPartitions
	}
	if m.secrets != 0 {
		t.Errorf("the chart rendered %d Secret(s): it must only reference existing ones", m.secrets)
	}

	sts := only(t, "StatefulSet", m.statefulSets)
	if sts.Spec.Replicas == nil || *sts.Spec.Replicas != wantReplicas {
		t.Errorf("replicas %v, want %d", sts.Spec.Replicas, wantReplicas)
	}
	if int(*sts.Spec.Replicas) > wantPartitions {
		t.Errorf("replicas %d > inbox partitions %d rendered", *sts.Spec.Replicas, wantPartitions)
	}
	pod := sts.Spec.Template
	c := only(t, "container in the StatefulSet", pod.Spec.Containers)
	cfg := loadServiceConfig(t, m, "StatefulSet "+sts.Name, pod.Spec, c)

	// The port the service listens on is the one probed and exposed.
	_, port, err := splitHostPort(cfg.HTTPAddr)
	if err != nil {
		t.Fatal(err)
	}
	httpPort := containerPort(t, c, "http")
	if strconv.Itoa(int(httpPort)) != port {
		t.Errorf("container port http %d, but the service listens on %s", httpPort, cfg.HTTPAddr)
	}
	checkProbe(t, "liveness", c.LivenessProbe, "/healthz")
	checkProbe(t, "readiness", c.ReadinessProbe, "/readyz")

	// The kubelet's SIGKILL comes after the service's own graceful shutdown.
	grace := cfg.ShutdownGrace
	if pod.Spec.TerminationGracePeriodSeconds == nil {
		t.Fatal("no terminationGracePeriodSeconds: the default 30 s is not above every shutdown_grace")
	}
	if tgps := time.Duration(*pod.Spec.TerminationGracePeriodSeconds) * time.Second; tgps <= grace {
		t.Errorf("terminationGracePeriodSeconds %v is not above shutdown_grace %v", tgps, grace)
	}

	checkPodSecurity(t, "StatefulSet "+sts.Name, pod.Spec)
	checkWritable(t, "StatefulSet "+sts.Name, pod.Spec, c, cfg.StateDir, "/tmp")
	stateVolume := mountedVolume(t, c, cfg.StateDir)
	switch {
	case slices.ContainsFunc(sts.Spec.VolumeClaimTemplates, func(p corev1.PersistentVolumeClaim) bool { return p.Name == stateVolume }):
		if slices.ContainsFunc(pod.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == stateVolume }) {
			t.Errorf("volume %s is both a pod volume and a volumeClaimTemplate", stateVolume)
		}
	case !slices.ContainsFunc(pod.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == stateVolume && v.EmptyDir != nil }):
		t.Errorf("state_dir %s is on volume %s, neither a volumeClaimTemplate nor an emptyDir", cfg.StateDir, stateVolume)
	}

	// Selectors: the Services and the PodDisruptionBudget select the
	// service's pods, and only them.
	podLabels := labels.Set(pod.Labels)
	var jobPodLabels labels.Set
	if len(m.jobs) > 0 {
		jobPodLabels = labels.Set(m.jobs[0].Spec.Template.Labels)
	}
	selects := func(what string, sel labels.Selector) {
		t.Helper()
		if sel.Empty() || !sel.Matches(podLabels) {
			t.Errorf("%s does not select the service's pods %v", what, podLabels)
		}
		if jobPodLabels != nil && sel.Matches(jobPodLabels) {
			t.Errorf("%s selects the topics Job's pod too", what)
		}
	}
	if len(m.services) != 2 {
		t.Fatalf("want the Service and the StatefulSet's headless Service, rendered %d Services", len(m.services))
	}
	var headless bool
	for _, s := range m.services {
		selects("Service "+s.Name, labels.SelectorFromSet(s.Spec.Selector))
		if s.Spec.ClusterIP == corev1.ClusterIPNone && s.Name == sts.Spec.ServiceName {
			headless = true
		}
		for _, p := range s.Spec.Ports {
			if p.TargetPort.String() != "http" && p.TargetPort.IntValue() != int(httpPort) {
				t.Errorf("Service %s targets %s, not the container's http port", s.Name, p.TargetPort.String())
			}
		}
	}
	if !headless {
		t.Errorf("no headless Service named %q, the StatefulSet's serviceName", sts.Spec.ServiceName)
	}
	for _, pdb := range m.pdbs {
		sel, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector)
		if err != nil {
			t.Fatal(err)
		}
		selects("PodDisruptionBudget "+pdb.Name, sel)
		if pdb.Spec.MaxUnavailable == nil && pdb.Spec.MinAvailable == nil {
			t.Errorf("PodDisruptionBudget %s bounds nothing", pdb.Name)
		}
	}
	for _, sm := range m.serviceMonitors {
		sel, err := metav1.LabelSelectorAsSelector(&sm.Spec.Selector)
		if err != nil {
			t.Fatal(err)
		}
		var scraped []string
		for _, s := range m.services {
			if sel.Matches(labels.Set(s.Labels)) {
				scraped = append(scraped, s.Name)
			}
		}
		if len(scraped) != 1 {
			t.Errorf("ServiceMonitor %s selects Services %v, want exactly one (each pod scraped once)", sm.Name, scraped)
		}
		ep := only(t, "ServiceMonitor endpoint", sm.Spec.Endpoints)
		if ep.Port != "http" || ep.Path != "/metrics" {
			t.Errorf("ServiceMonitor scrapes port %q path %q, want http /metrics", ep.Port, ep.Path)
		}
	}

	// The topics Job: a hook before install and upgrade, with the same
	// configuration, creating inboxPartitions partitions.
	for _, job := range m.jobs {
		hook := m.hooks["Job/"+job.Name]
		if hook["helm.sh/hook"] != "pre-install,pre-upgrade" {
			t.Errorf("Job %s hook %q, want pre-install,pre-upgrade", job.Name, hook["helm.sh/hook"])
		}
		jc := only(t, "container in the topics Job", job.Spec.Template.Spec.Containers)
		if got := strings.Join(jc.Args, " "); !strings.HasPrefix(got, "topics ensure ") || !strings.Contains(got, "--partitions "+strconv.Itoa(wantPartitions)+" ") {
			t.Errorf("topics Job args %q, want topics ensure --partitions %d ...", got, wantPartitions)
		}
		if job.Spec.Template.Spec.RestartPolicy != corev1.RestartPolicyNever && job.Spec.Template.Spec.RestartPolicy != corev1.RestartPolicyOnFailure {
			t.Errorf("Job %s restartPolicy %q", job.Name, job.Spec.Template.Spec.RestartPolicy)
		}
		jobCfg := loadServiceConfig(t, m, "Job "+job.Name, job.Spec.Template.Spec, jc)
		// The Job needs neither the state directory nor the API token.
		jobCfg.StateDir, cfg.StateDir = "", ""
		jobCfg.APIToken, cfg.APIToken = "", ""
		if jobCfg.LogValue().String() != cfg.LogValue().String() {
			t.Errorf("the topics Job's configuration differs from the service's:\n%v\n%v", jobCfg.LogValue(), cfg.LogValue())
		}
		checkPodSecurity(t, "Job "+job.Name, job.Spec.Template.Spec)
		checkWritable(t, "Job "+job.Name, job.Spec.Template.Spec, jc, "/tmp")
		cmName := configMapOf(t, job.Spec.Template.Spec, jc)
		cmHook := m.hooks["ConfigMap/"+cmName]
		if cmHook["helm.sh/hook"] != hook["helm.sh/hook"] {
			t.Errorf("the Job's ConfigMap %s is not a hook of the same events (%q): it would not exist when the Job runs", cmName, cmHook["helm.sh/hook"])
		}
		jw, _ := strconv.Atoi(hook["helm.sh/hook-weight"])
		cw, _ := strconv.Atoi(cmHook["helm.sh/hook-weight"])
		if cw >= jw {
			t.Errorf("the Job's ConfigMap has hook weight %d, not below the Job's %d", cw, jw)
		}
	}
}

// loadServiceConfig loads the configuration a container gets (its
// ConfigMap file through SAGAPIPE_CONFIG and its environment, secrets as
// placeholders) with the service's own LoadConfig, which refuses unknown
// keys and invalid settings. It also checks that the container sets no
// variable the service does not read and puts no secret in plain text.
func loadServiceConfig(t *testing.T, m *manifests, where string, pod corev1.PodSpec, c corev1.Container) service.Config {
	t.Helper()
	dir := t.TempDir()
	env := map[string]string{}
	for _, e := range c.Env {
		checkEnvName(t, where, e.Name)
		secretName := strings.Contains(e.Name, "PASSWORD") || strings.Contains(e.Name, "TOKEN")
		switch {
		case e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil:
			env[e.Name] = "from-secret-" + e.ValueFrom.SecretKeyRef.Name
		case secretName:
			t.Errorf("%s: %s is not from a Secret (secretKeyRef)", where, e.Name)
		default:
			env[e.Name] = e.Value
		}
	}
	cmName := configMapOf(t, pod, c)
	configMount := ""
	for _, vm := range c.VolumeMounts {
		if volumeByName(pod, vm.Name).ConfigMap != nil {
			configMount = vm.MountPath
		}
	}
	if want := configMount + "/config.yaml"; env[service.ConfigFileEnv] != want {
		t.Fatalf("%s: %s=%q, want the mounted ConfigMap's file %s", where, service.ConfigFileEnv, env[service.ConfigFileEnv], want)
	}
	text := m.configMap(t, cmName).Data["config.yaml"]
	var file map[string]any
	if err := yaml.Unmarshal([]byte(text), &file); err != nil {
		t.Fatalf("%s: config.yaml: %v", where, err)
	}
	for _, secret := range []string{"api_token", "registry.password", "sasl.password"} {
		if lookupPath(file, secret) != nil {
			t.Errorf("%s: config.yaml holds %s: secrets belong in a Secret", where, secret)
		}
	}
	// TLS files are read from the mounted Secret: put stand-ins where the
	// file says, under the Secret's mount.
	tlsMount := ""
	for _, vm := range c.VolumeMounts {
		if volumeByName(pod, vm.Name).Secret != nil {
			tlsMount = vm.MountPath
		}
	}
	for _, key := range []string{"tls.ca_file", "tls.cert_file", "tls.key_file"} {
		path, _ := lookupPath(file, key).(string)
		if path == "" {
			continue
		}
		if tlsMount == "" || !strings.HasPrefix(path, tlsMount+"/") {
			t.Errorf("%s: %s %s is not in a mounted Secret", where, key, path)
			continue
		}
		standIn := filepath.Join(dir, strings.TrimPrefix(path, tlsMount))
		if err := os.MkdirAll(filepath.Dir(standIn), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(standIn, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		text = strings.ReplaceAll(text, path, standIn)
	}
	configFile := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(configFile, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	env[service.ConfigFileEnv] = configFile
	var stderr bytes.Buffer
	cfg, err := service.LoadConfig("orchestrator run", nil, func(k string) (string, bool) { v, ok := env[k]; return v, ok }, &stderr)
	if err != nil {
		t.Fatalf("%s: the service refuses the rendered configuration:\n%v\n%s\n--- config.yaml\n%s", where, err, stderr.String(), text)
	}
	return cfg
}

func checkProbe(t *testing.T, what string, p *corev1.Probe, path string) {
	t.Helper()
	switch {
	case p == nil:
		t.Errorf("no %s probe", what)
	case p.HTTPGet == nil:
		t.Errorf("%s probe is not an HTTP GET", what)
	case p.HTTPGet.Path != path || p.HTTPGet.Port.String() != "http":
		t.Errorf("%s probe GET %s on port %s, want %s on the http port", what, p.HTTPGet.Path, p.HTTPGet.Port.String(), path)
	}
}

func checkPodSecurity(t *testing.T, where string, pod corev1.PodSpec) {
	t.Helper()
	psc := pod.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser != distrolessNonrootUID {
		t.Errorf("%s: pod securityContext must run as non-root user %d (the image's), got %+v", where, distrolessNonrootUID, psc)
	}
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Errorf("%s: the service account token is mounted; the service never calls the Kubernetes API", where)
	}
	for _, c := range pod.Containers {
		sc := c.SecurityContext
		switch {
		case sc == nil:
			t.Errorf("%s/%s: no securityContext", where, c.Name)
		case sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem:
			t.Errorf("%s/%s: root filesystem not read-only", where, c.Name)
		case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
			t.Errorf("%s/%s: privilege escalation allowed", where, c.Name)
		case sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0:
			t.Errorf("%s/%s: capabilities %+v, want drop ALL, add none", where, c.Name, sc.Capabilities)
		case sc.Privileged != nil && *sc.Privileged:
			t.Errorf("%s/%s: privileged", where, c.Name)
		}
	}
}

// checkWritable checks that each path is on a writable volume (the root
// filesystem is read-only).
func checkWritable(t *testing.T, where string, pod corev1.PodSpec, c corev1.Container, paths ...string) {
	t.Helper()
	for _, path := range paths {
		found := false
		for _, vm := range c.VolumeMounts {
			if (path == vm.MountPath || strings.HasPrefix(path, vm.MountPath+"/")) && !vm.ReadOnly {
				v := volumeByName(pod, vm.Name)
				if v.ConfigMap != nil || v.Secret != nil {
					t.Errorf("%s: %s is on read-only volume %s", where, path, vm.Name)
				}
				found = true
			}
		}
		if !found {
			t.Errorf("%s: %s is on the read-only root filesystem: mount a writable volume there", where, path)
		}
	}
}

func mountedVolume(t *testing.T, c corev1.Container, path string) string {
	t.Helper()
	for _, vm := range c.VolumeMounts {
		if path == vm.MountPath || strings.HasPrefix(path, vm.MountPath+"/") {
			return vm.Name
		}
	}
	t.Fatalf("%s is not on a volume", path)
	return ""
}

func volumeByName(pod corev1.PodSpec, name string) corev1.Volume {
	for _, v := range pod.Volumes {
		if v.Name == name {
			return v
		}
	}
	return corev1.Volume{Name: name} // a volumeClaimTemplate
}

func configMapOf(t *testing.T, pod corev1.PodSpec, c corev1.Container) string {
	t.Helper()
	for _, vm := range c.VolumeMounts {
		if v := volumeByName(pod, vm.Name); v.ConfigMap != nil {
			return v.ConfigMap.Name
		}
	}
	t.Fatalf("container %s mounts no ConfigMap", c.Name)
	return ""
}

func containerPort(t *testing.T, c corev1.Container, name string) int32 {
	t.Helper()
	for _, p := range c.Ports {
		if p.Name == name {
			return p.ContainerPort
		}
	}
	t.Fatalf("container %s has no port %q", c.Name, name)
	return 0
}

func lookupPath(m map[string]any, dotted string) any {
	var cur any = m
	for _, k := range strings.Split(dotted, ".") {
		mm, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = mm[k]
	}
	return cur
}

func splitHostPort(addr string) (string, string, error) {
	i := strings.LastIndex(addr, ":")
	if i < 0 {
		return "", "", strconv.ErrSyntax
	}
	return addr[:i], addr[i+1:], nil
}

func TestTerminationGraceIsAboveShutdownGrace(t *testing.T) {
	tests := []struct {
		name, grace string
		margin      int
		want        int64
	}{
		{name: "default", want: 45},
		{name: "seconds", grace: "30s", want: 45},
		{name: "minutes and seconds", grace: "1m30s", want: 105},
		{name: "fraction rounds up", grace: "2.5s", want: 18},
		{name: "milliseconds", grace: "500ms", want: 16},
		{name: "hours", grace: "1h", want: 3615},
		{name: "zero is the default", grace: "0", want: 45},
		{name: "margin", grace: "10s", margin: 5, want: 15},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			values := minimalValues
			if tt.grace != "" {
				values = valuesWith(values, "config:\n  shutdown_grace: \""+tt.grace+"\"\n")
			}
			if tt.margin != 0 {
				values = valuesWith(values, "terminationGracePeriodMargin: "+strconv.Itoa(tt.margin)+"\n")
			}
			m := mustRender(t, values)
			sts := only(t, "StatefulSet", m.statefulSets)
			got := *sts.Spec.Template.Spec.TerminationGracePeriodSeconds
			if got != tt.want {
				t.Errorf("terminationGracePeriodSeconds %d, want %d", got, tt.want)
			}
			cfg := loadServiceConfig(t, m, "StatefulSet", sts.Spec.Template.Spec, sts.Spec.Template.Spec.Containers[0])
			if secs := int64(math.Ceil(cfg.ShutdownGrace.Seconds())); got <= secs {
				t.Errorf("terminationGracePeriodSeconds %d not above the service's shutdown_grace %v", got, cfg.ShutdownGrace)
			}
		})
	}
}

func TestChartRefusesBadValues(t *testing.T) {
	tests := []struct {
		name, values, wantErr string
	}{
		{"replicas beyond the inbox partitions", "replicaCount: 4\n", "replicaCount 4 > inboxPartitions 3"},
		{"replicas beyond raised partitions", "replicaCount: 7\ninboxPartitions: 6\n", "replicaCount 7 > inboxPartitions 6"},
		{"no brokers", "config:\n  brokers: []\n", "config.brokers: required"},
		{"no registry", "config:\n  registry:\n    url: \"\"\n", "config.registry.url: required"},
		{"SASL password in values", "config:\n  sasl:\n    mechanism: SCRAM-SHA-256\n    username: u\n    password: hunter2\n", "config.sasl.password: secret values never go in values"},
		{"registry password in values", "config:\n  registry:\n    password: hunter2\n", "config.registry.password: secret values never go in values"},
		{"API token in values", "config:\n  api_token: hunter2\n", "config.api_token: secret values never go in values"},
		{"SASL without its Secret", "config:\n  sasl:\n    mechanism: SCRAM-SHA-256\n    username: u\n", "secrets.saslPassword.existingSecret"},
		{"registry user without its Secret", "config:\n  registry:\n    username: u\n", "secrets.registryPassword.existingSecret"},
		{"TLS file without its Secret", "config:\n  tls:\n    enabled: true\n    ca_file: /etc/sagapipe/tls/ca.crt\n", "tls.existingSecret"},
		{"state_dir in config", "config:\n  state_dir: /data\n", "config.state_dir: set by the chart"},
		{"grace without a unit", "config:\n  shutdown_grace: 30\n", "config.shutdown_grace: 30 has no unit"},
		{"grace not a duration", "config:\n  shutdown_grace: thirty seconds\n", `config.shutdown_grace: "thirty seconds" is not a Go duration`},
		{"negative grace", "config:\n  shutdown_grace: -5s\n", "is not a Go duration"},
		{"no margin", "terminationGracePeriodMargin: 0\n", "terminationGracePeriodMargin: 0 must be at least 1"},
		{"loopback http_addr", "config:\n  http_addr: 127.0.0.1:8080\n", "loopback address"},
		{"http_addr without port", "config:\n  http_addr: localhost\n", "is not [host]:port"},
		{"grace through extraEnv", "extraEnv:\n  - name: SAGAPIPE_SHUTDOWN_GRACE\n    value: 2m\n", "extraEnv: SAGAPIPE_SHUTDOWN_GRACE is set by the chart"},
		{"secret through extraEnv", "extraEnv:\n  - name: SAGAPIPE_API_TOKEN\n    value: hunter2\n", "extraEnv: SAGAPIPE_API_TOKEN is set by the chart"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := render(t, valuesWith(minimalValues, tt.values))
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestChartDefaults(t *testing.T) {
	m := mustRender(t, minimalValues)
	if len(m.serviceMonitors) != 0 {
		t.Error("a ServiceMonitor by default: it needs the Prometheus Operator's CRD, so it is opt-in")
	}
	if len(m.pdbs) != 1 || len(m.jobs) != 1 {
		t.Errorf("by default want a PodDisruptionBudget and the topics Job, got %d and %d", len(m.pdbs), len(m.jobs))
	}
	sts := only(t, "StatefulSet", m.statefulSets)
	if len(sts.Spec.VolumeClaimTemplates) != 1 {
		t.Error("by default state_dir must be on a volume claim per instance")
	}
	// Static membership under the pod's name: a pod killed and restarted
	// takes its partitions back at once (the chaos kill storm's setting).
	c := only(t, "container in the StatefulSet", sts.Spec.Template.Spec.Containers)
	var instance *corev1.EnvVar
	for i := range c.Env {
		if c.Env[i].Name == "SAGAPIPE_INSTANCE_ID" {
			instance = &c.Env[i]
		}
	}
	if instance == nil || instance.ValueFrom == nil || instance.ValueFrom.FieldRef == nil || instance.ValueFrom.FieldRef.FieldPath != "metadata.name" {
		t.Errorf("SAGAPIPE_INSTANCE_ID = %+v, want the pod's name (static membership) by default", instance)
	}
	if !strings.Contains(m.notes, "no API token") && !strings.Contains(m.notes, "No API token") {
		t.Errorf("NOTES.txt does not warn about the open API:\n%s", m.notes)
	}
}

// Secret values never appear in the chart's defaults: every value whose
// name says password, token or secret is empty, or names a Secret or key.
func TestChartValuesHoldNoSecrets(t *testing.T) {
	values := chartValues(t)
	secretish := regexp.MustCompile(`(?i)password|token|secret`)
	for path, v := range leaves(values, "") {
		last := path[strings.LastIndex(path, ".")+1:]
		if !secretish.MatchString(last) || last == "existingSecret" || last == "imagePullSecrets" {
			continue
		}
		if v != nil && v != "" {
			t.Errorf("values.yaml %s = %v: no secret values in the chart's defaults", path, v)
		}
	}
}

// Every value of values.yaml is documented in the chart's README.
func TestChartREADMEDocumentsEveryValue(t *testing.T) {
	values := chartValues(t)
	readme, err := os.ReadFile(filepath.Join(chartDir, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	for path := range leaves(values, "") {
		if !strings.Contains(string(readme), "`"+path+"`") {
			t.Errorf("README.md does not document `%s`", path)
		}
	}
}

// chartValues reads the chart's values.yaml.
func chartValues(t *testing.T) map[string]any {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(chartDir, "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var values map[string]any
	if err := yaml.Unmarshal(raw, &values); err != nil {
		t.Fatal(err)
	}
	return values
}

// leaves maps the dotted path of every value that is not a non-empty map.
func leaves(m map[string]any, prefix string) map[string]any {
	out := map[string]any{}
	for k, v := range m {
		path := prefix + k
		if sub, ok := v.(map[string]any); ok && len(sub) > 0 {
			for p, lv := range leaves(sub, path+".") {
				out[p] = lv
			}
			continue
		}
		out[path] = v
	}
	return out
}
