package service_test

import (
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sagapipe/sagapipe/service"
)

func env(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// Defaults, then the YAML file, then the environment, then flags.
func TestConfigPrecedence(t *testing.T) {
	file := writeFile(t, "sagapipe.yaml", `
brokers: [yaml-1:9092, yaml-2:9092]
registry:
  url: http://yaml-registry:8081
group_prefix: from-yaml
http_addr: ":9000"
shutdown_grace: 45s
log_level: debug
`)
	cfg, err := service.LoadConfig("test", []string{"--config", file, "--http-addr", "127.0.0.1:7000"},
		env(map[string]string{"SAGAPIPE_GROUP_PREFIX": "from-env", "SAGAPIPE_HTTP_ADDR": ":8000"}), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][2]any{
		"brokers (yaml)":            {strings.Join(cfg.Brokers, ","), "yaml-1:9092,yaml-2:9092"},
		"registry (yaml)":           {cfg.Registry.URL, "http://yaml-registry:8081"},
		"group prefix (env > yaml)": {cfg.GroupPrefix, "from-env"},
		"http addr (flag > env)":    {cfg.HTTPAddr, "127.0.0.1:7000"},
		"grace (yaml)":              {cfg.ShutdownGrace, 45 * time.Second},
		"txn prefix (default)":      {cfg.TransactionalIDPrefix, "from-env"},
	}
	for name, gw := range want {
		if gw[0] != gw[1] {
			t.Errorf("%s = %v, want %v", name, gw[0], gw[1])
		}
	}
	// SAGAPIPE_CONFIG names the file like --config does.
	cfg, err = service.LoadConfig("test", nil, env(map[string]string{service.ConfigFileEnv: file}), io.Discard)
	if err != nil || cfg.GroupPrefix != "from-yaml" || cfg.HTTPAddr != ":9000" {
		t.Fatalf("from SAGAPIPE_CONFIG: %+v, %v", cfg, err)
	}
	// Defaults.
	cfg, err = service.LoadConfig("test", []string{"--brokers", "k:9092", "--registry-url", "http://r:8081"}, env(nil), io.Discard)
	if err != nil || cfg.GroupPrefix != "sagapipe" || cfg.HTTPAddr != ":8080" || cfg.ShutdownGrace != 30*time.Second || cfg.LogLevel != "info" {
		t.Fatalf("defaults: %+v, %v", cfg, err)
	}
}

// Every problem is listed, by setting, and no secret is repeated.
func TestConfigErrorsListEverythingAndNoSecret(t *testing.T) {
	const secret = "hunter2-very-secret"
	file := writeFile(t, "bad.yaml", "brokers: [k:9092]\nregistry:\n  url: http://r:8081\n  pasword: typo\n")
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want []string
	}{
		{
			name: "many problems at once",
			args: []string{"--brokers", "no-port", "--registry-url", "ftp://r", "--sasl-mechanism", "SCRAM-SHA-1",
				"--sasl-password", secret, "--shutdown-grace", "soon", "--log-level", "loud", "--tls-cert-file", "/nonexistent.pem"},
			want: []string{"brokers:", "registry.url:", "sasl.mechanism:", "shutdown_grace", "log_level:", "tls.cert_file", "tls.enabled:"},
		},
		{
			name: "nothing set",
			want: []string{"brokers: required", "registry.url: required"},
		},
		{
			name: "credentials in the registry URL",
			args: []string{"--brokers", "k:9092", "--registry-url", "http://user:" + secret + "@r:8081"},
			want: []string{"registry.url: holds credentials"},
		},
		{
			name: "SASL without a password, PLAIN without TLS",
			env:  map[string]string{"SAGAPIPE_BROKERS": "k:9092", "SAGAPIPE_REGISTRY_URL": "http://r:8081", "SAGAPIPE_SASL_MECHANISM": "PLAIN", "SAGAPIPE_SASL_USERNAME": "u"},
			want: []string{"sasl.username/password: both are required", "PLAIN sends the password in the clear"},
		},
		{
			name: "unknown YAML key",
			args: []string{"--config", file},
			want: []string{"pasword", "not found"},
		},
		{
			name: "bad boolean in the environment",
			env:  map[string]string{"SAGAPIPE_BROKERS": "k:9092", "SAGAPIPE_REGISTRY_URL": "http://r:8081", "SAGAPIPE_TLS_ENABLED": "maybe"},
			want: []string{"tls.enabled (env SAGAPIPE_TLS_ENABLED)"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := service.LoadConfig("test", tc.args, env(tc.env), io.Discard)
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not say %q:\n%v", w, err)
				}
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("the error shows a secret:\n%v", err)
			}
		})
	}
	if _, err := service.LoadConfig("test", []string{"-h"}, env(nil), io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("-h: %v", err)
	}
}
