package service_test

import (
	"bytes"
	"context"
	"flag"
	"io"
	"strings"
	"testing"

	"github.com/sagapipe/sagapipe/service"
)

// A main's own flags are parsed with the service's, for the service and
// for "topics ensure"; without them they are refused as before.
func TestMainFlagsAreParsedWithTheServices(t *testing.T) {
	var region string
	var verbose bool
	own := func(fs *flag.FlagSet) {
		fs.StringVar(&region, "region", "eu", "the region this instance serves")
		fs.BoolVar(&verbose, "verbose", false, "say more")
	}
	tests := []struct {
		name       string
		flags      func(*flag.FlagSet)
		args       []string
		wantCode   int
		wantStderr []string
		notStderr  []string
		wantRegion string
	}{
		{
			name:  "the main's flags, then the configuration's problems",
			flags: own, args: []string{"--region", "us", "--verbose"},
			wantCode: 2, wantStderr: []string{"brokers: required"}, notStderr: []string{"not defined"}, wantRegion: "us",
		},
		{
			name:  "topics ensure takes them too",
			flags: own, args: []string{"topics", "ensure", "--partitions", "6", "--region", "ap"},
			wantCode: 2, wantStderr: []string{"brokers: required"}, notStderr: []string{"not defined"}, wantRegion: "ap",
		},
		{
			name:  "-h lists them with the service's",
			flags: own, args: []string{"-h"},
			wantCode: 0, wantStderr: []string{"-region", "-brokers", "-tls"}, wantRegion: "eu",
		},
		{
			name:  "positional arguments are still refused",
			flags: own, args: []string{"--brokers", "k:9092", "--registry-url", "http://r:8081", "extra"},
			wantCode: 2, wantStderr: []string{`unexpected arguments ["extra"]`}, wantRegion: "eu",
		},
		{
			name:  "a flag named like the service's is named",
			flags: func(fs *flag.FlagSet) { fs.String("brokers", "", "mine") }, args: nil,
			wantCode: 2, wantStderr: []string{"[--brokers] are the service's own"},
		},
		{
			name:     "without them, unknown flags are refused",
			args:     []string{"--region", "us"},
			wantCode: 2, wantStderr: []string{"flag provided but not defined: -region"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			region, verbose = "", false
			var stderr bytes.Buffer
			code := service.CommandWithFlags(context.Background(), "shop", tc.args, io.Discard, &stderr, tc.flags)
			if code != tc.wantCode {
				t.Errorf("exit code %d, want %d; stderr:\n%s", code, tc.wantCode, stderr.String())
			}
			for _, w := range tc.wantStderr {
				if !strings.Contains(stderr.String(), w) {
					t.Errorf("stderr does not say %q:\n%s", w, stderr.String())
				}
			}
			for _, w := range tc.notStderr {
				if strings.Contains(stderr.String(), w) {
					t.Errorf("stderr says %q:\n%s", w, stderr.String())
				}
			}
			if region != tc.wantRegion {
				t.Errorf("--region is %q, want %q", region, tc.wantRegion)
			}
		})
	}
}

// The boolean settings are boolean flags: --tls alone turns TLS on, and
// the flag still wins over the environment and the file.
func TestBooleanSettingsAreBooleanFlags(t *testing.T) {
	base := []string{"--brokers", "k:9092", "--registry-url", "http://r:8081"}
	tests := []struct {
		name        string
		args        []string
		env         map[string]string
		wantTLS     bool
		wantRebuild bool
		wantErr     string
	}{
		{name: "off by default"},
		{name: "--tls alone", args: []string{"--tls"}, wantTLS: true},
		{name: "--tls=true", args: []string{"--tls=true"}, wantTLS: true},
		{name: "--tls=false wins over the environment", args: []string{"--tls=false"}, env: map[string]string{"SAGAPIPE_TLS_ENABLED": "true"}},
		{name: "the environment alone", env: map[string]string{"SAGAPIPE_TLS_ENABLED": "true"}, wantTLS: true},
		{name: "--rebuild-state alone", args: []string{"--rebuild-state"}, wantRebuild: true},
		{name: "--tls=maybe", args: []string{"--tls=maybe"}, wantErr: `tls.enabled (--tls): "maybe" is not true or false`},
		{name: "a value after a boolean flag is an argument", args: []string{"--tls", "true"}, wantErr: `unexpected arguments ["true"]`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := service.LoadConfig("test", append(append([]string(nil), base...), tc.args...), env(tc.env), io.Discard)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one saying %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cfg.TLS.Enabled != tc.wantTLS || cfg.StateRebuild != tc.wantRebuild {
				t.Errorf("tls.enabled %v, state_rebuild %v; want %v, %v", cfg.TLS.Enabled, cfg.StateRebuild, tc.wantTLS, tc.wantRebuild)
			}
		})
	}
}
