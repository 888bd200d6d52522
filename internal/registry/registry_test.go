package registry_test

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/riferrei/srclient"
	"go.uber.org/goleak"

	"github.com/sagapipe/sagapipe/internal/registry"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func start(t *testing.T, opts ...registry.Option) (*registry.Registry, *srclient.SchemaRegistryClient) {
	t.Helper()
	reg, err := registry.New(opts...)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(reg)
	t.Cleanup(func() {
		srv.Close()
		if err := reg.Close(); err != nil {
			t.Error(err)
		}
	})
	c := srclient.NewSchemaRegistryClient(srv.URL)
	c.CachingEnabled(false)
	return reg, c
}

func record(fields string) string {
	return `{"type":"record","name":"Order","namespace":"shop","fields":[` + fields + `]}`
}

const (
	fID     = `{"name":"id","type":"string"}`
	fAmount = `{"name":"amount","type":"int"}`
)

var allLevels = []srclient.CompatibilityLevel{
	srclient.None, srclient.Backward, srclient.BackwardTransitive, srclient.Forward,
	srclient.ForwardTransitive, srclient.Full, srclient.FullTransitive,
}

// levels builds the verdict of each level from the two directions; for two
// versions a transitive level means what its plain one does.
func levels(backward, forward bool) map[srclient.CompatibilityLevel]bool {
	return map[srclient.CompatibilityLevel]bool{
		srclient.None:     true,
		srclient.Backward: backward, srclient.BackwardTransitive: backward,
		srclient.Forward: forward, srclient.ForwardTransitive: forward,
		srclient.Full: backward && forward, srclient.FullTransitive: backward && forward,
	}
}

func TestCompatibilityMatrix(t *testing.T) {
	tests := []struct {
		name     string
		versions []string // registered in order; the last is the one checked
		want     map[srclient.CompatibilityLevel]bool
		field    string // named in the 409 message when refused
	}{
		{
			name:     "add field with default",
			versions: []string{record(fID + "," + fAmount), record(fID + "," + fAmount + `,{"name":"note","type":"string","default":""}`)},
			want:     levels(true, true),
		},
		{
			name:     "add field without default",
			versions: []string{record(fID + "," + fAmount), record(fID + "," + fAmount + `,{"name":"note","type":"string"}`)},
			want:     levels(false, true),
			field:    "note",
		},
		{
			name:     "remove field with default",
			versions: []string{record(fID + "," + fAmount + `,{"name":"note","type":"string","default":""}`), record(fID + "," + fAmount)},
			want:     levels(true, true),
		},
		{
			name:     "remove field without default",
			versions: []string{record(fID + "," + fAmount + `,{"name":"note","type":"string"}`), record(fID + "," + fAmount)},
			want:     levels(true, false),
			field:    "note",
		},
		{
			// Aliases are read by the reader only: the new schema reads old
			// data, the old schema finds no "amount" in new data.
			name:     "rename with alias",
			versions: []string{record(fID + "," + fAmount), record(fID + `,{"name":"total","type":"int","aliases":["amount"]}`)},
			want:     levels(true, false),
			field:    "amount",
		},
		{
			name:     "type promotion int to long",
			versions: []string{record(fID + "," + fAmount), record(fID + `,{"name":"amount","type":"long"}`)},
			want:     levels(true, false),
		},
		{
			name: "enum symbol added",
			versions: []string{
				record(fID + `,{"name":"status","type":{"type":"enum","name":"Status","symbols":["NEW","PAID"]}}`),
				record(fID + `,{"name":"status","type":{"type":"enum","name":"Status","symbols":["NEW","PAID","SHIPPED"]}}`),
			},
			want:  levels(true, false),
			field: "SHIPPED",
		},
		{
			name: "enum symbol removed",
			versions: []string{
				record(fID + `,{"name":"status","type":{"type":"enum","name":"Status","symbols":["NEW","PAID","SHIPPED"]}}`),
				record(fID + `,{"name":"status","type":{"type":"enum","name":"Status","symbols":["NEW","PAID"]}}`),
			},
			want:  levels(false, true),
			field: "SHIPPED",
		},
		{
			name: "union widened",
			versions: []string{
				record(fID + `,{"name":"note","type":["null","string"],"default":null}`),
				record(fID + `,{"name":"note","type":["null","string","long"],"default":null}`),
			},
			want: levels(true, false),
		},
		{
			// v3 reads v2 (which has note) but not v1 (which has none and
			// v3's note has no default): only transitive levels see v1.
			name: "transitive: v3 compatible with v2 but not v1",
			versions: []string{
				record(fID),
				record(fID + `,{"name":"note","type":"string","default":""}`),
				record(fID + `,{"name":"note","type":"string"}`),
			},
			want: map[srclient.CompatibilityLevel]bool{
				srclient.None: true, srclient.Backward: true, srclient.BackwardTransitive: false,
				srclient.Forward: true, srclient.ForwardTransitive: true,
				srclient.Full: true, srclient.FullTransitive: false,
			},
			field: "note",
		},
	}
	for _, tt := range tests {
		for _, level := range allLevels {
			t.Run(tt.name+"/"+string(level), func(t *testing.T) {
				_, c := start(t)
				const subject = "orders-value"
				if _, err := c.ChangeSubjectCompatibilityLevel(subject, level); err != nil {
					t.Fatal(err)
				}
				last := len(tt.versions) - 1
				for i, v := range tt.versions[:last] {
					if _, err := c.CreateSchema(subject, v, srclient.Avro); err != nil {
						t.Fatalf("registering v%d: %v", i+1, err)
					}
				}
				want := tt.want[level]

				got, err := c.IsSchemaCompatible(subject, tt.versions[last], "latest", srclient.Avro)
				if err != nil {
					t.Fatal(err)
				}
				if lastOnly := got; len(tt.versions) == 2 && lastOnly != want {
					t.Errorf("POST /compatibility/.../versions/latest = %v, want %v", got, want)
				}

				_, err = c.CreateSchema(subject, tt.versions[last], srclient.Avro)
				if want && err != nil {
					t.Fatalf("register: %v, want accepted", err)
				}
				if !want {
					var se srclient.Error
					if !errors.As(err, &se) || se.Code != http.StatusConflict {
						t.Fatalf("register: %v, want a 409 refusal", err)
					}
					if tt.field != "" && !strings.Contains(se.Message, tt.field) {
						t.Errorf("409 message %q does not name %q", se.Message, tt.field)
					}
				}
			})
		}
	}
}

func TestDefaultLevelIsFullTransitive(t *testing.T) {
	_, c := start(t)
	got, err := c.GetGlobalCompatibilityLevel()
	if err != nil {
		t.Fatal(err)
	}
	if *got != srclient.FullTransitive {
		t.Fatalf("global level %s, want FULL_TRANSITIVE", *got)
	}
	if _, err := c.CreateSchema("s-value", record(fID), srclient.Avro); err != nil {
		t.Fatal(err)
	}
	// A field without a default breaks BACKWARD, so FULL_TRANSITIVE refuses it.
	if _, err := c.CreateSchema("s-value", record(fID+","+fAmount), srclient.Avro); err == nil {
		t.Fatal("incompatible schema registered under the default level")
	}
}

func TestGlobalConfigApplies(t *testing.T) {
	_, c := start(t)
	if _, err := c.CreateSchema("s-value", record(fID), srclient.Avro); err != nil {
		t.Fatal(err)
	}
	// srclient has no call for PUT /config; speak REST directly.
	req, _ := http.NewRequest(http.MethodPut, c.GetSchemaRegistryURL()+"/config", strings.NewReader(`{"compatibility":"NONE"}`))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("PUT /config: %s", resp.Status)
	}
	if _, err := c.CreateSchema("s-value", record(fAmount), srclient.Avro); err != nil {
		t.Fatalf("global NONE did not allow an unrelated schema: %v", err)
	}
	// A subject level overrides the global one.
	if _, err := c.ChangeSubjectCompatibilityLevel("s-value", srclient.Backward); err != nil {
		t.Fatal(err)
	}
	// Reading {amount} data with {id, amount} needs a default for id.
	if _, err := c.CreateSchema("s-value", record(fID+","+fAmount), srclient.Avro); err == nil {
		t.Fatal("subject BACKWARD level did not override global NONE")
	}
}

func TestCompatibilityVerboseAndVersion(t *testing.T) {
	_, c := start(t)
	if _, err := c.ChangeSubjectCompatibilityLevel("s-value", srclient.None); err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{record(fID), record(fID + "," + fAmount)} {
		if _, err := c.CreateSchema("s-value", v, srclient.Avro); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.ChangeSubjectCompatibilityLevel("s-value", srclient.Backward); err != nil {
		t.Fatal(err)
	}
	candidate := record(fID + "," + fAmount)
	// Against version 2 (same fields) it is compatible; against version 1
	// the reader's amount has no default.
	if ok, err := c.IsSchemaCompatible("s-value", candidate, "2", srclient.Avro); err != nil || !ok {
		t.Fatalf("against v2: %v %v, want compatible", ok, err)
	}
	if ok, err := c.IsSchemaCompatible("s-value", candidate, "1", srclient.Avro); err != nil || ok {
		t.Fatalf("against v1: %v %v, want incompatible", ok, err)
	}
	body := `{"schema":` + jsonString(candidate) + `}`
	resp, err := http.Post(c.GetSchemaRegistryURL()+"/compatibility/subjects/s-value/versions/1?verbose=true",
		"application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	buf, _ := io.ReadAll(resp.Body)
	if !strings.Contains(string(buf), `"is_compatible":false`) || !strings.Contains(string(buf), "amount") {
		t.Fatalf("verbose answer %s does not say incompatible and name the field", buf)
	}
}

func TestInvalidSchemaIsRefused(t *testing.T) {
	_, c := start(t)
	_, err := c.CreateSchema("s-value", `{"type":"record","name":"X","fields":[{"name":"a","type":"nope"}]}`, srclient.Avro)
	var se srclient.Error
	if !errors.As(err, &se) || se.Code != 42201 {
		t.Fatalf("got %v, want error_code 42201", err)
	}
}

func TestDataDirSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	reg, err := registry.New(registry.WithDataDir(dir))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(reg)
	c := srclient.NewSchemaRegistryClient(srv.URL)
	c.CachingEnabled(false)
	if _, err := c.ChangeSubjectCompatibilityLevel("b-value", srclient.None); err != nil {
		t.Fatal(err)
	}
	a, err := c.CreateSchema("a-value", record(fID), srclient.Avro)
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.CreateSchema("b-value", record(fAmount), srclient.Avro)
	if err != nil {
		t.Fatal(err)
	}
	srv.Close()
	if err := reg.Close(); err != nil {
		t.Fatal(err)
	}
	// A crash mid-append leaves a torn line; it must not stop the restart.
	f, err := os.OpenFile(filepath.Join(dir, "registry.journal"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = f.WriteString(`{"method":"POST","pa`)
	f.Close()

	_, c2 := start(t, registry.WithDataDir(dir))
	for _, want := range []*srclient.Schema{a, b} {
		got, err := c2.GetSchema(want.ID())
		if err != nil {
			t.Fatalf("schema %d after restart: %v", want.ID(), err)
		}
		if got.Schema() != want.Schema() {
			t.Fatalf("schema %d after restart is %s, want %s", want.ID(), got.Schema(), want.Schema())
		}
	}
	lvl, err := c2.GetCompatibilityLevel("b-value", false)
	if err != nil || *lvl != srclient.None {
		t.Fatalf("subject level after restart: %v %v, want NONE", lvl, err)
	}
	next, err := c2.CreateSchema("c-value", record(fID+","+fAmount), srclient.Avro)
	if err != nil {
		t.Fatal(err)
	}
	if next.ID() == a.ID() || next.ID() == b.ID() {
		t.Fatalf("new schema reused ID %d after restart", next.ID())
	}
}

func jsonString(s string) string {
	return `"` + strings.ReplaceAll(strings.ReplaceAll(s, `\`, `\\`), `"`, `\"`) + `"`
}
