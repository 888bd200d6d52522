package service

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"
	"go.yaml.in/yaml/v3"

	"github.com/sagapipe/sagapipe/schema"
)

// Config is the service's configuration. The zero value of each field is
// its default, named on the field.
type Config struct {
	// Brokers are the Kafka bootstrap brokers, host:port (required).
	Brokers []string `yaml:"brokers"`
	// Registry is the Schema Registry (URL required).
	Registry RegistryConfig `yaml:"registry"`
	// TLS to the brokers (default off).
	TLS TLSConfig `yaml:"tls"`
	// SASL to the brokers (default none).
	SASL SASLConfig `yaml:"sasl"`
	// GroupPrefix names each saga's consumer group "<prefix>.<saga>"
	// (default "sagapipe").
	GroupPrefix string `yaml:"group_prefix"`
	// TransactionalIDPrefix starts each instance's transactional IDs,
	// which get the saga, host name and process ID appended (default the
	// group prefix).
	TransactionalIDPrefix string `yaml:"transactional_id_prefix"`
	// InstanceID, when set, makes this instance a static member of its
	// consumer groups (group.instance.id): restarted with the same ID, it
	// takes its partitions back at once instead of waiting for the group
	// to drop its killed predecessor. One per running instance, stable
	// across its restarts: a StatefulSet's pod name (default none: dynamic
	// membership, where a killed instance's partitions move after
	// session_timeout).
	InstanceID string `yaml:"instance_id"`
	// HTTPAddr is where /healthz, /readyz, /metrics and /api listen
	// (default ":8080").
	HTTPAddr string `yaml:"http_addr"`
	// APIToken, when set, is the bearer token every /api call requires,
	// and the token the web console's login asks for (default none: both
	// open).
	APIToken string `yaml:"api_token"`
	// JaegerUIURL, when set, is the Jaeger UI the web console links trace
	// IDs to (<url>/trace/<id>), e.g. http://jaeger:16686 (default none).
	JaegerUIURL string `yaml:"jaeger_ui_url"`
	// ShutdownGrace bounds a graceful shutdown (default 30s).
	ShutdownGrace time.Duration `yaml:"shutdown_grace"`
	// SessionTimeout is how long the group waits for a silent instance
	// before moving its partitions to the others (default kgo's 45s).
	SessionTimeout time.Duration `yaml:"session_timeout"`
	// TransactionTimeout is how long the broker lets a transaction of a
	// crashed instance block its partitions before aborting it (default
	// kgo's 40s). Together they bound recovery after a kill.
	TransactionTimeout time.Duration `yaml:"transaction_timeout"`
	// StateDir keeps the local state stores (one per owned partition) across
	// restarts, so that a restart reads only the snapshots written since
	// (default: a temporary directory, restored from the state topic at
	// every start). One per running instance. See saga.WithStateDir.
	StateDir string `yaml:"state_dir"`
	// ClosedRetention is how long a finished saga's closed marker is kept
	// (default 7 days; negative: forever). See saga.WithClosedRetention.
	ClosedRetention time.Duration `yaml:"closed_retention"`
	// StateRebuild rebuilds the snapshots of the assigned partitions from
	// the journal: the fix for a snapshot that cannot be decoded.
	StateRebuild bool `yaml:"state_rebuild"`
	// LogLevel is debug, info (default), warn or error.
	LogLevel string `yaml:"log_level"`
}

// RegistryConfig reaches the Schema Registry.
type RegistryConfig struct {
	URL      string `yaml:"url"`
	Username string `yaml:"username"`
	Password string `yaml:"password"`
}

// TLSConfig is TLS to the brokers.
type TLSConfig struct {
	Enabled bool `yaml:"enabled"`
	// CAFile verifies the brokers (default the system's roots).
	CAFile string `yaml:"ca_file"`
	// CertFile and KeyFile are a client certificate (mutual TLS).
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ServerName overrides the name verified (default the broker's host).
	ServerName string `yaml:"server_name"`
	// InsecureSkipVerify turns verification off: tests only.
	InsecureSkipVerify bool `yaml:"insecure_skip_verify"`
}

// SASLConfig is SASL authentication to the brokers.
type SASLConfig struct {
	// Mechanism is PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (empty: none).
	Mechanism string `yaml:"mechanism"`
	Username  string `yaml:"username"`
	Password  string `yaml:"password"`
}

// The SASL mechanisms.
const (
	SASLPlain       = "PLAIN"
	SASLScramSHA256 = "SCRAM-SHA-256"
	SASLScramSHA512 = "SCRAM-SHA-512"
)

// withDefaults fills what is unset.
func (c Config) withDefaults() Config {
	if c.GroupPrefix == "" {
		c.GroupPrefix = "sagapipe"
	}
	if c.TransactionalIDPrefix == "" {
		c.TransactionalIDPrefix = c.GroupPrefix
	}
	if c.HTTPAddr == "" {
		c.HTTPAddr = ":8080"
	}
	if c.ShutdownGrace == 0 {
		c.ShutdownGrace = 30 * time.Second
	}
	if c.LogLevel == "" {
		c.LogLevel = "info"
	}
	return c
}

// Validate reports every problem at once, naming the setting; it never
// repeats a secret.
func (c Config) Validate() error { return c.validate(true) }

// validate is Validate; needRegistry false lets registry.url be unset (a
// command that never reaches the registry).
func (c Config) validate(needRegistry bool) error {
	c = c.withDefaults()
	var errs []error
	bad := func(setting, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", setting, fmt.Sprintf(format, a...)))
	}
	if len(c.Brokers) == 0 {
		bad("brokers", "required (flag --brokers, env SAGAPIPE_BROKERS), e.g. kafka-1:9092,kafka-2:9092")
	}
	for _, b := range c.Brokers {
		if _, port, err := net.SplitHostPort(b); err != nil || port == "" {
			bad("brokers", "%q is not host:port", b)
		}
	}
	switch u, err := url.Parse(c.Registry.URL); {
	case c.Registry.URL == "":
		if needRegistry {
			bad("registry.url", "required (flag --registry-url, env SAGAPIPE_REGISTRY_URL), e.g. http://schema-registry:8081")
		}
	case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
		bad("registry.url", "want an http:// or https:// URL")
	case u.User != nil:
		bad("registry.url", "holds credentials; set registry.username and registry.password instead")
	}
	if (c.Registry.Username == "") != (c.Registry.Password == "") {
		bad("registry.username/password", "set both or neither")
	}
	switch c.SASL.Mechanism {
	case "":
		if c.SASL.Username != "" || c.SASL.Password != "" {
			bad("sasl.mechanism", "credentials are set but no mechanism; want %s, %s or %s", SASLPlain, SASLScramSHA256, SASLScramSHA512)
		}
	case SASLPlain, SASLScramSHA256, SASLScramSHA512:
		if c.SASL.Username == "" || c.SASL.Password == "" {
			bad("sasl.username/password", "both are required with %s", c.SASL.Mechanism)
		}
		if c.SASL.Mechanism == SASLPlain && !c.TLS.Enabled {
			bad("sasl.mechanism", "PLAIN sends the password in the clear; enable tls")
		}
	default:
		bad("sasl.mechanism", "%q is not one of %s, %s, %s", c.SASL.Mechanism, SASLPlain, SASLScramSHA256, SASLScramSHA512)
	}
	if !c.TLS.Enabled && (c.TLS.CAFile != "" || c.TLS.CertFile != "" || c.TLS.KeyFile != "") {
		bad("tls.enabled", "TLS files are set but TLS is off; set tls.enabled (--tls)")
	}
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		bad("tls.cert_file/key_file", "set both or neither")
	}
	for setting, file := range map[string]string{"tls.ca_file": c.TLS.CAFile, "tls.cert_file": c.TLS.CertFile, "tls.key_file": c.TLS.KeyFile} {
		if file != "" {
			if _, err := os.Stat(file); err != nil {
				bad(setting, "%v", err)
			}
		}
	}
	if _, _, err := net.SplitHostPort(c.HTTPAddr); err != nil {
		bad("http_addr", "%q is not [host]:port", c.HTTPAddr)
	}
	if c.JaegerUIURL != "" {
		if u, err := url.Parse(c.JaegerUIURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			bad("jaeger_ui_url", "want an http:// or https:// URL, e.g. http://jaeger:16686")
		}
	}
	for _, d := range []struct {
		setting string
		value   time.Duration
	}{{"shutdown_grace", c.ShutdownGrace}, {"session_timeout", c.SessionTimeout}, {"transaction_timeout", c.TransactionTimeout}} {
		if d.value < 0 {
			bad(d.setting, "%v is negative", d.value)
		}
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.LogLevel)); err != nil {
		bad("log_level", "%q is not debug, info, warn or error", c.LogLevel)
	}
	for _, prefix := range []struct{ setting, value string }{{"group_prefix", c.GroupPrefix}, {"transactional_id_prefix", c.TransactionalIDPrefix}, {"instance_id", c.InstanceID}} {
		if strings.ContainsAny(prefix.value, " \t\n/") {
			bad(prefix.setting, "%q holds spaces or slashes", prefix.value)
		}
	}
	slices.SortFunc(errs, func(a, b error) int { return strings.Compare(a.Error(), b.Error()) })
	return errors.Join(errs...)
}

// ClientOptions are the kgo options that reach the brokers: seed brokers,
// TLS and SASL.
func (c Config) ClientOptions() ([]kgo.Opt, error) {
	opts, err := c.connOptions()
	if err != nil {
		return nil, err
	}
	return append([]kgo.Opt{kgo.SeedBrokers(c.Brokers...)}, opts...), nil
}

// connOptions are TLS and SASL.
func (c Config) connOptions() ([]kgo.Opt, error) {
	var opts []kgo.Opt
	if c.TLS.Enabled {
		tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: c.TLS.ServerName, InsecureSkipVerify: c.TLS.InsecureSkipVerify} // opt-in, documented as tests only
		if c.TLS.CAFile != "" {
			pem, err := os.ReadFile(c.TLS.CAFile)
			if err != nil {
				return nil, fmt.Errorf("tls.ca_file: %w", err)
			}
			tc.RootCAs = x509.NewCertPool()
			if !tc.RootCAs.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("tls.ca_file: %s holds no PEM certificate", c.TLS.CAFile)
			}
		}
		if c.TLS.CertFile != "" {
			cert, err := tls.LoadX509KeyPair(c.TLS.CertFile, c.TLS.KeyFile)
			if err != nil {
				return nil, fmt.Errorf("tls.cert_file/key_file: %w", err)
			}
			tc.Certificates = []tls.Certificate{cert}
		}
		opts = append(opts, kgo.DialTLSConfig(tc))
	}
	switch c.SASL.Mechanism {
	case SASLPlain:
		opts = append(opts, kgo.SASL(plain.Auth{User: c.SASL.Username, Pass: c.SASL.Password}.AsMechanism()))
	case SASLScramSHA256:
		opts = append(opts, kgo.SASL(scram.Auth{User: c.SASL.Username, Pass: c.SASL.Password}.AsSha256Mechanism()))
	case SASLScramSHA512:
		opts = append(opts, kgo.SASL(scram.Auth{User: c.SASL.Username, Pass: c.SASL.Password}.AsSha512Mechanism()))
	}
	return opts, nil
}

// LogValue is the configuration with its secrets redacted: what the
// service logs at start.
func (c Config) LogValue() slog.Value {
	redact := func(s string) string {
		if s == "" {
			return ""
		}
		return "[redacted]"
	}
	return slog.GroupValue(
		slog.String("brokers", strings.Join(c.Brokers, ",")),
		slog.String("registry_url", c.Registry.URL),
		slog.String("registry_username", c.Registry.Username),
		slog.String("registry_password", redact(c.Registry.Password)),
		slog.Bool("tls", c.TLS.Enabled),
		slog.String("sasl_mechanism", c.SASL.Mechanism),
		slog.String("sasl_username", c.SASL.Username),
		slog.String("sasl_password", redact(c.SASL.Password)),
		slog.String("group_prefix", c.GroupPrefix),
		slog.String("transactional_id_prefix", c.TransactionalIDPrefix),
		slog.String("instance_id", c.InstanceID),
		slog.String("http_addr", c.HTTPAddr),
		slog.String("api_token", redact(c.APIToken)),
		slog.String("jaeger_ui_url", c.JaegerUIURL),
		slog.String("shutdown_grace", c.ShutdownGrace.String()), // "30s", not nanoseconds in JSON
		slog.String("session_timeout", c.SessionTimeout.String()),
		slog.String("transaction_timeout", c.TransactionTimeout.String()),
		slog.String("state_dir", c.StateDir),
		slog.String("closed_retention", c.ClosedRetention.String()),
		slog.Bool("state_rebuild", c.StateRebuild),
		slog.String("log_level", c.LogLevel),
	)
}

// setting is one configuration value: its YAML path, environment variable
// and flag.
type setting struct {
	path, env, flag, usage string
	secret                 bool
	value                  value
}

// value sets a setting from its text, whether it came from the file, the
// environment or the flag.
type value interface {
	set(c *Config, v string) error
}

// setter is a value whose flag takes an argument (--brokers k:9092).
type setter func(c *Config, v string) error

func (f setter) set(c *Config, v string) error { return f(c, v) }

// boolValue is a value whose flag is boolean, as the flag package's own
// are: --tls alone turns it on, --tls=false off.
type boolValue func(c *Config, v string) error

func (f boolValue) set(c *Config, v string) error { return f(c, v) }

func str(f func(c *Config) *string) setter {
	return func(c *Config, v string) error { *f(c) = v; return nil }
}

func boolean(f func(c *Config) *bool) boolValue {
	return func(c *Config, v string) error {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return fmt.Errorf("%q is not true or false", v)
		}
		*f(c) = b
		return nil
	}
}

func duration(f func(c *Config) *time.Duration) setter {
	return func(c *Config, v string) error {
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("%q is not a duration such as 30s", v)
		}
		*f(c) = d
		return nil
	}
}

var settings = []setting{
	{"brokers", "SAGAPIPE_BROKERS", "brokers", "comma-separated Kafka bootstrap brokers (required)", false,
		setter(func(c *Config, v string) error {
			c.Brokers = nil
			for _, b := range strings.Split(v, ",") {
				if b = strings.TrimSpace(b); b != "" {
					c.Brokers = append(c.Brokers, b)
				}
			}
			return nil
		})},
	{"registry.url", "SAGAPIPE_REGISTRY_URL", "registry-url", "Schema Registry URL (required)", false, str(func(c *Config) *string { return &c.Registry.URL })},
	{"registry.username", "SAGAPIPE_REGISTRY_USERNAME", "registry-username", "Schema Registry basic-auth user", false, str(func(c *Config) *string { return &c.Registry.Username })},
	{"registry.password", "SAGAPIPE_REGISTRY_PASSWORD", "registry-password", "Schema Registry basic-auth password (prefer the environment)", true, str(func(c *Config) *string { return &c.Registry.Password })},
	{"tls.enabled", "SAGAPIPE_TLS_ENABLED", "tls", "TLS to the brokers", false, boolean(func(c *Config) *bool { return &c.TLS.Enabled })},
	{"tls.ca_file", "SAGAPIPE_TLS_CA_FILE", "tls-ca-file", "PEM CA bundle that verifies the brokers (default the system's)", false, str(func(c *Config) *string { return &c.TLS.CAFile })},
	{"tls.cert_file", "SAGAPIPE_TLS_CERT_FILE", "tls-cert-file", "PEM client certificate (mutual TLS)", false, str(func(c *Config) *string { return &c.TLS.CertFile })},
	{"tls.key_file", "SAGAPIPE_TLS_KEY_FILE", "tls-key-file", "PEM client key (mutual TLS)", false, str(func(c *Config) *string { return &c.TLS.KeyFile })},
	{"tls.server_name", "SAGAPIPE_TLS_SERVER_NAME", "tls-server-name", "name to verify in the brokers' certificates (default the broker host)", false, str(func(c *Config) *string { return &c.TLS.ServerName })},
	{"tls.insecure_skip_verify", "SAGAPIPE_TLS_INSECURE_SKIP_VERIFY", "tls-insecure-skip-verify", "do not verify the brokers' certificates (tests only)", false, boolean(func(c *Config) *bool { return &c.TLS.InsecureSkipVerify })},
	{"sasl.mechanism", "SAGAPIPE_SASL_MECHANISM", "sasl-mechanism", "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512", false, str(func(c *Config) *string { return &c.SASL.Mechanism })},
	{"sasl.username", "SAGAPIPE_SASL_USERNAME", "sasl-username", "SASL user", false, str(func(c *Config) *string { return &c.SASL.Username })},
	{"sasl.password", "SAGAPIPE_SASL_PASSWORD", "sasl-password", "SASL password (prefer the environment)", true, str(func(c *Config) *string { return &c.SASL.Password })},
	{"group_prefix", "SAGAPIPE_GROUP_PREFIX", "group-prefix", `consumer groups are "<prefix>.<saga>" (default sagapipe)`, false, str(func(c *Config) *string { return &c.GroupPrefix })},
	{"transactional_id_prefix", "SAGAPIPE_TRANSACTIONAL_ID_PREFIX", "transactional-id-prefix", "start of each instance's transactional IDs (default the group prefix)", false, str(func(c *Config) *string { return &c.TransactionalIDPrefix })},
	{"instance_id", "SAGAPIPE_INSTANCE_ID", "instance-id", "static group membership: this instance's ID, stable across its restarts (e.g. the pod name); default dynamic membership", false, str(func(c *Config) *string { return &c.InstanceID })},
	{"http_addr", "SAGAPIPE_HTTP_ADDR", "http-addr", "address of the HTTP API, probes and /metrics (default :8080)", false, str(func(c *Config) *string { return &c.HTTPAddr })},
	{"api_token", "SAGAPIPE_API_TOKEN", "api-token", "bearer token required by every /api call, and by the web console's login (prefer the environment)", true, str(func(c *Config) *string { return &c.APIToken })},
	{"jaeger_ui_url", "SAGAPIPE_JAEGER_UI_URL", "jaeger-ui-url", "Jaeger UI the web console links traces to (<url>/trace/<id>), e.g. http://jaeger:16686", false, str(func(c *Config) *string { return &c.JaegerUIURL })},
	{"shutdown_grace", "SAGAPIPE_SHUTDOWN_GRACE", "shutdown-grace", "how long a graceful shutdown may take (default 30s)", false,
		duration(func(c *Config) *time.Duration { return &c.ShutdownGrace })},
	{"session_timeout", "SAGAPIPE_SESSION_TIMEOUT", "session-timeout", "how long the group waits for a silent instance (default 45s)", false,
		duration(func(c *Config) *time.Duration { return &c.SessionTimeout })},
	{"transaction_timeout", "SAGAPIPE_TRANSACTION_TIMEOUT", "transaction-timeout", "how long a crashed instance's open transaction may block its partitions (default 40s)", false,
		duration(func(c *Config) *time.Duration { return &c.TransactionTimeout })},
	{"state_dir", "SAGAPIPE_STATE_DIR", "state-dir", "directory of the local state stores, kept across restarts; one per instance (default a temporary directory)", false,
		str(func(c *Config) *string { return &c.StateDir })},
	{"closed_retention", "SAGAPIPE_CLOSED_RETENTION", "closed-retention", "how long a finished saga's closed marker is kept, ignoring late replies and duplicate starts (default 168h; negative: forever)", false,
		duration(func(c *Config) *time.Duration { return &c.ClosedRetention })},
	{"state_rebuild", "SAGAPIPE_STATE_REBUILD", "rebuild-state", "rebuild the snapshots of the assigned partitions from the journal (the fix for an undecodable snapshot)", false,
		boolean(func(c *Config) *bool { return &c.StateRebuild })},
	{"log_level", "SAGAPIPE_LOG_LEVEL", "log-level", "debug, info, warn or error (default info)", false, str(func(c *Config) *string { return &c.LogLevel })},
}

// ConfigFileEnv names the environment variable of the YAML file, like --config.
const ConfigFileEnv = "SAGAPIPE_CONFIG"

// LoadConfig reads the configuration: defaults, then the YAML file named by
// --config or SAGAPIPE_CONFIG, then SAGAPIPE_* environment variables, then
// flags; each overrides the one before. Every problem (unknown YAML keys,
// unparsable values, invalid settings) is reported at once, by setting
// name, never with a secret's value. A -h prints the flags and returns
// flag.ErrHelp.
func LoadConfig(name string, args []string, lookupEnv func(string) (string, bool), stderr io.Writer) (Config, error) {
	cfg, _, err := loadConfig(name, args, lookupEnv, stderr, nil, true)
	return cfg, err
}

// loadConfig is LoadConfig with extra flags of a command registered on the
// same flag set (their values are read after it returns); the positional
// arguments are returned, and refused unless extra is set.
func loadConfig(name string, args []string, lookupEnv func(string) (string, bool), stderr io.Writer, extra func(*flag.FlagSet), needRegistry bool) (Config, []string, error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	resolve := registerSettings(fs, lookupEnv, Config{}, func(setting) bool { return true })
	if extra != nil {
		// The command's own flags go on a set of their own first, so that
		// one the service defines too is named rather than a panic.
		own := flag.NewFlagSet(name, flag.ContinueOnError)
		extra(own)
		var clash []string
		own.VisitAll(func(f *flag.Flag) {
			if fs.Lookup(f.Name) != nil {
				clash = append(clash, "--"+f.Name)
				return
			}
			fs.Var(f.Value, f.Name, f.Usage)
		})
		if len(clash) > 0 {
			return Config{}, nil, fmt.Errorf("flags %v are the service's own: give the main's flags other names", clash)
		}
	}
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: %s [flags]\n\nEach setting comes from, last one winning: its default, the YAML file, the environment, the flag.\n\n", name)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return Config{}, nil, err
	}
	if fs.NArg() > 0 && extra == nil {
		return Config{}, nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	cfg, errs := resolve()
	if err := cfg.validate(needRegistry); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return Config{}, nil, errors.Join(errs...)
	}
	return cfg.withDefaults(), fs.Args(), nil
}

// ClusterFlags registers on fs, for an operator command of its own, --config
// and the settings that reach the cluster: brokers, registry.*, tls.* and
// sasl.*, with the service's flags, SAGAPIPE_* variables and YAML keys (one
// configuration file serves both). After fs.Parse, the returned function
// resolves them over defaults as LoadConfig does and validates them; use
// Config.ClientOptions and Config.Serde to connect.
func ClusterFlags(fs *flag.FlagSet, lookupEnv func(string) (string, bool), defaults Config) func() (Config, error) {
	cluster := func(s setting) bool {
		return s.path == "brokers" || strings.HasPrefix(s.path, "registry.") || strings.HasPrefix(s.path, "tls.") || strings.HasPrefix(s.path, "sasl.")
	}
	resolve := registerSettings(fs, lookupEnv, defaults, cluster)
	return func() (Config, error) {
		cfg, errs := resolve()
		if err := cfg.validate(false); err != nil {
			errs = append(errs, err)
		}
		return cfg.withDefaults(), errors.Join(errs...)
	}
}

// registerSettings registers --config and the flags of the settings that
// pass only; the returned function, called after Parse, applies over base
// the YAML file, the environment and the flags.
func registerSettings(fs *flag.FlagSet, lookupEnv func(string) (string, bool), base Config, only func(setting) bool) func() (Config, []error) {
	configFile := fs.String("config", "", "YAML configuration file (env "+ConfigFileEnv+")")
	flagValues := map[string]*flagText{}
	for _, s := range settings {
		if only(s) {
			v := &flagText{}
			flagValues[s.flag] = v
			usage := fmt.Sprintf("%s (env %s, YAML %s)", s.usage, s.env, s.path)
			if _, ok := s.value.(boolValue); ok {
				fs.Var(v, s.flag, usage) // --tls alone, or --tls=false
			} else {
				fs.StringVar(&v.text, s.flag, "", usage)
			}
		}
	}
	return func() (Config, []error) {
		cfg := base
		var errs []error
		file := *configFile
		if file == "" {
			file, _ = lookupEnv(ConfigFileEnv)
		}
		if file != "" {
			if err := loadYAML(file, &cfg); err != nil {
				errs = append(errs, err)
			}
		}
		for _, s := range settings {
			if v, ok := lookupEnv(s.env); ok && only(s) {
				if err := s.value.set(&cfg, v); err != nil {
					errs = append(errs, fmt.Errorf("%s (env %s): %w", s.path, s.env, redactErr(s, err)))
				}
			}
		}
		fs.Visit(func(f *flag.Flag) {
			for _, s := range settings {
				if s.flag == f.Name && only(s) {
					if err := s.value.set(&cfg, flagValues[s.flag].text); err != nil {
						errs = append(errs, fmt.Errorf("%s (--%s): %w", s.path, s.flag, redactErr(s, err)))
					}
				}
			}
		})
		return cfg, errs
	}
}

// flagText is a setting's flag: the text given, applied after the file
// and the environment once the flags are parsed.
type flagText struct{ text string }

func (f *flagText) String() string {
	if f == nil {
		return ""
	}
	return f.text
}

func (f *flagText) Set(v string) error { f.text = v; return nil }

// IsBoolFlag makes the flag of a boolean setting (the only ones
// registered with fs.Var) a flag that needs no value.
func (f *flagText) IsBoolFlag() bool { return true }

// Serde is a registry client as the service's: subjects named by record
// (a saga's inbox carries many event types), basic auth when set.
func (c Config) Serde() (*schema.Serde, error) {
	opts := []schema.Opt{schema.WithSubjectNameStrategy(schema.RecordNameStrategy)}
	if c.Registry.Username != "" {
		opts = append(opts, schema.WithBasicAuth(c.Registry.Username, c.Registry.Password))
	}
	serde, err := schema.NewSerde(c.Registry.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("registry.url: %w", err)
	}
	return serde, nil
}

func redactErr(s setting, err error) error {
	if s.secret {
		return errors.New("invalid value (not shown: it is a secret)")
	}
	return err
}

func loadYAML(file string, cfg *Config) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(cfg); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("config file %s: %w", file, err)
	}
	return nil
}
