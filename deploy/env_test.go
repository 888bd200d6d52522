package deploy

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// The service's environment, read from its source rather than copied here,
// so that a variable the deployment files set but the service does not read
// (a typo, a setting renamed or removed) fails the tests.

var (
	envOnce                 sync.Once
	sagapipeEnv, otelEnv    map[string]bool
	envErr                  error
	sagapipeLiteral         = regexp.MustCompile(`^SAGAPIPE_[A-Z0-9_]+$`)
	otelName                = regexp.MustCompile(`\bOTEL_[A-Z0-9_]*[A-Z0-9](_\*)?`)
	sagapipeEnvPackageDirs  = []string{"../cmd/orchestrator", "../service"}
	observabilityPackageDir = "../observability"
)

// knownEnv returns the SAGAPIPE_* variables `orchestrator` reads (the string
// literals of its packages: each setting's variable, SAGAPIPE_CONFIG,
// SAGAPIPE_ORDERS_STEP_TIMEOUT) and the OTEL_* variables its observability
// setup documents and reads.
func knownEnv(t *testing.T) (sagapipe, otel map[string]bool) {
	t.Helper()
	envOnce.Do(func() {
		sagapipeEnv, envErr = sagapipeLiterals(sagapipeEnvPackageDirs)
		if envErr == nil {
			otelEnv, envErr = otelNames(observabilityPackageDir)
		}
	})
	if envErr != nil {
		t.Fatal(envErr)
	}
	for _, want := range []string{"SAGAPIPE_BROKERS", "SAGAPIPE_CONFIG", "SAGAPIPE_SASL_PASSWORD"} {
		if !sagapipeEnv[want] {
			t.Fatalf("%s not found in %v: has the configuration moved? update sagapipeEnvPackageDirs", want, sagapipeEnvPackageDirs)
		}
	}
	if !otelEnv["OTEL_EXPORTER_OTLP_ENDPOINT"] {
		t.Fatalf("OTEL_EXPORTER_OTLP_ENDPOINT not found in %s", observabilityPackageDir)
	}
	return sagapipeEnv, otelEnv
}

// checkEnvName reports a variable that the service does not read.
func checkEnvName(t *testing.T, where, name string) {
	t.Helper()
	sagapipe, otel := knownEnv(t)
	switch {
	case strings.HasPrefix(name, "SAGAPIPE_"):
		if !sagapipe[name] {
			t.Errorf("%s sets %s, which the service does not read (orchestrator run -h lists its variables)", where, name)
		}
	case strings.HasPrefix(name, "OTEL_"):
		if !otel[name] && !otelWildcard(otel, name) {
			t.Errorf("%s sets %s, which the observability setup does not read", where, name)
		}
	default:
		t.Errorf("%s sets %s: neither a SAGAPIPE_ nor an OTEL_ variable", where, name)
	}
}

func sagapipeLiterals(dirs []string) (map[string]bool, error) {
	names := map[string]bool{}
	for _, dir := range dirs {
		files, err := goSources(dir)
		if err != nil {
			return nil, err
		}
		fset := token.NewFileSet()
		for _, file := range files {
			f, err := parser.ParseFile(fset, file, nil, parser.SkipObjectResolution)
			if err != nil {
				return nil, err
			}
			ast.Inspect(f, func(n ast.Node) bool {
				if lit, ok := n.(*ast.BasicLit); ok && lit.Kind == token.STRING {
					if s, err := strconv.Unquote(lit.Value); err == nil && sagapipeLiteral.MatchString(s) {
						names[s] = true
					}
				}
				return true
			})
		}
	}
	return names, nil
}

// otelNames are the OTEL_* names in the observability package's source,
// comments included: its setup documents each variable it honours there.
func otelNames(dir string) (map[string]bool, error) {
	files, err := goSources(dir)
	if err != nil {
		return nil, err
	}
	names := map[string]bool{}
	for _, file := range files {
		src, err := os.ReadFile(file)
		if err != nil {
			return nil, err
		}
		for _, n := range otelName.FindAllString(string(src), -1) {
			names[n] = true
		}
	}
	return names, nil
}

func goSources(dir string) ([]string, error) {
	all, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		return nil, err
	}
	var files []string
	for _, f := range all {
		if !strings.HasSuffix(f, "_test.go") {
			files = append(files, f)
		}
	}
	if len(files) == 0 {
		return nil, os.ErrNotExist
	}
	return files, nil
}

// otelWildcard: a documented family such as OTEL_BSP_* covers its members.
func otelWildcard(otel map[string]bool, name string) bool {
	for known := range otel {
		if prefix, ok := strings.CutSuffix(known, "*"); ok && strings.HasPrefix(name, prefix) {
			return true
		}
	}
	return false
}
