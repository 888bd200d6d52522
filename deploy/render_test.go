package deploy

import (
	"fmt"
	"slices"
	"testing"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/releaseutil"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

const (
	chartDir    = "helm/sagapipe"
	releaseName = "shop"
	namespace   = "sagas"
	// kubeVersion is the oldest the chart declares (Chart.yaml kubeVersion).
	kubeVersion = "v1.27.0"
)

// manifests is a rendered release: every object decoded strictly into its
// Kubernetes API type, so that an unknown or misplaced field is an error.
type manifests struct {
	statefulSets    []*appsv1.StatefulSet
	services        []*corev1.Service
	configMaps      []*corev1.ConfigMap
	jobs            []*batchv1.Job
	pdbs            []*policyv1.PodDisruptionBudget
	serviceMonitors []*serviceMonitor
	secrets         int
	notes           string
	// hookOf maps "Kind/name" of each hook object to its hook annotations.
	hooks map[string]map[string]string
	text  string // the whole rendered text, hooks included
}

// serviceMonitor is the part of the Prometheus Operator's ServiceMonitor
// (monitoring.coreos.com/v1) that the chart writes, with the CRD's field
// names; strict decoding refuses any other field.
type serviceMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Selector  metav1.LabelSelector `json:"selector"`
		Endpoints []struct {
			Port          string `json:"port"`
			Path          string `json:"path"`
			Interval      string `json:"interval"`
			ScrapeTimeout string `json:"scrapeTimeout"`
		} `json:"endpoints"`
	} `json:"spec"`
}

// render renders the chart as `helm template` does (client only, hooks
// included) with the given values, written as YAML.
func render(t *testing.T, values string) (*manifests, error) {
	t.Helper()
	chrt, err := loader.Load(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	vals, err := chartutil.ReadValues([]byte(values))
	if err != nil {
		t.Fatalf("test values: %v", err)
	}
	install := action.NewInstall(&action.Configuration{Log: func(string, ...any) {}})
	install.DryRun = true
	install.ClientOnly = true
	install.Replace = true
	install.ReleaseName = releaseName
	install.Namespace = namespace
	kv, err := chartutil.ParseKubeVersion(kubeVersion)
	if err != nil {
		t.Fatal(err)
	}
	install.KubeVersion = kv
	rel, err := install.Run(chrt, vals.AsMap())
	if err != nil {
		return nil, err
	}
	m := &manifests{notes: rel.Info.Notes, hooks: map[string]map[string]string{}}
	docs := []string{rel.Manifest}
	for _, h := range rel.Hooks {
		docs = append(docs, h.Manifest)
	}
	var all []string
	for _, doc := range docs {
		for _, part := range releaseutil.SplitManifests(doc) {
			all = append(all, part)
		}
	}
	slices.Sort(all) // SplitManifests returns a map
	for _, doc := range all {
		m.text += "---\n" + doc + "\n"
		if err := m.add(doc); err != nil {
			t.Fatalf("%v\n%s", err, doc)
		}
	}
	return m, nil
}

func (m *manifests) add(doc string) error {
	var head struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name        string            `json:"name"`
			Annotations map[string]string `json:"annotations"`
		} `json:"metadata"`
	}
	if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
		return err
	}
	if hook := head.Metadata.Annotations["helm.sh/hook"]; hook != "" {
		m.hooks[head.Kind+"/"+head.Metadata.Name] = head.Metadata.Annotations
	}
	strict := func(into any) error {
		if err := yaml.UnmarshalStrict([]byte(doc), into); err != nil {
			return fmt.Errorf("%s %s %s does not match its API schema: %w", head.APIVersion, head.Kind, head.Metadata.Name, err)
		}
		return nil
	}
	switch head.APIVersion + "/" + head.Kind {
	case "apps/v1/StatefulSet":
		o := new(appsv1.StatefulSet)
		m.statefulSets = append(m.statefulSets, o)
		return strict(o)
	case "v1/Service":
		o := new(corev1.Service)
		m.services = append(m.services, o)
		return strict(o)
	case "v1/ConfigMap":
		o := new(corev1.ConfigMap)
		m.configMaps = append(m.configMaps, o)
		return strict(o)
	case "batch/v1/Job":
		o := new(batchv1.Job)
		m.jobs = append(m.jobs, o)
		return strict(o)
	case "policy/v1/PodDisruptionBudget":
		o := new(policyv1.PodDisruptionBudget)
		m.pdbs = append(m.pdbs, o)
		return strict(o)
	case "monitoring.coreos.com/v1/ServiceMonitor":
		o := new(serviceMonitor)
		m.serviceMonitors = append(m.serviceMonitors, o)
		return strict(o)
	case "v1/Secret":
		m.secrets++
		return strict(new(corev1.Secret))
	}
	return fmt.Errorf("unexpected object %s %s: add its API type to the test", head.APIVersion, head.Kind)
}

func (m *manifests) configMap(t *testing.T, name string) *corev1.ConfigMap {
	t.Helper()
	for _, c := range m.configMaps {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no ConfigMap %s", name)
	return nil
}

// only returns the one object of a list, failing otherwise.
func only[T any](t *testing.T, what string, list []T) T {
	t.Helper()
	if len(list) != 1 {
		t.Fatalf("want one %s, rendered %d", what, len(list))
	}
	return list[0]
}

// mustRender renders values that must be valid.
func mustRender(t *testing.T, values string) *manifests {
	t.Helper()
	m, err := render(t, values)
	if err != nil {
		t.Fatalf("rendering failed: %v", err)
	}
	return m
}

// valuesWith joins YAML value fragments (each a complete YAML document).
func valuesWith(fragments ...string) string {
	merged := map[string]any{}
	for _, f := range fragments {
		v, err := chartutil.ReadValues([]byte(f))
		if err != nil {
			panic(err)
		}
		merged = chartutil.CoalesceTables(v.AsMap(), merged)
	}
	out, err := yaml.Marshal(merged)
	if err != nil {
		panic(err)
	}
	return string(out)
}
