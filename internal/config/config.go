// Package config reads the configuration of the tasker command: one TOML
// file, overridden by TASKER_* environment variables, overridden by
// command-line flags. The defaults live in Default and nowhere else; the
// commented example file (config/tasker.example.toml) is generated from
// them by Example.
package config

//go:generate sh -c "go run ../../cmd/tasker config example > ../../config/tasker.example.toml"

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/tasker-go/tasker"
	"github.com/tasker-go/tasker/internal/auth"
	"github.com/tasker-go/tasker/store/postgres"
)

// Config is the whole configuration. Each section is a TOML table of the
// same name; the keys, their defaults and their meaning are listed in the
// example file that Example prints.
type Config struct {
	Store         Store         `toml:"store"`
	Orchestration Orchestration `toml:"orchestration"`
	Worker        Worker        `toml:"worker"`
	Events        Events        `toml:"events"`
	API           API           `toml:"api"`
	Auth          auth.Config   `toml:"auth"`
	Logging       Logging       `toml:"logging"`

	// sources maps a key ("worker.max_concurrent_handlers") to where its
	// value came from ("tasker.toml:12", "TASKER_WORKER_…", "--concurrency");
	// a key that is absent kept its default.
	sources map[string]string
}

// Store configures the database.
type Store struct {
	DatabaseURL       string        `toml:"database_url"`
	PostgresSchema    string        `toml:"postgres_schema"`
	PostgresMaxConns  int           `toml:"postgres_max_conns"`
	SQLiteSynchronous string        `toml:"sqlite_synchronous"`
	SQLiteBusyTimeout time.Duration `toml:"sqlite_busy_timeout"`
}

// Orchestration configures the orchestrator's actors.
type Orchestration struct {
	PollInterval              time.Duration `toml:"poll_interval"`
	StepLease                 time.Duration `toml:"step_lease"`
	RetryJitter               float64       `toml:"retry_jitter"`
	StalenessInterval         time.Duration `toml:"staleness_interval"`
	MaxTaskDuration           time.Duration `toml:"max_task_duration"`
	MaxStepsInProcess         time.Duration `toml:"max_steps_in_process"`
	MaxWaitingForDependencies time.Duration `toml:"max_waiting_for_dependencies"`
	MaxWaitingForRetry        time.Duration `toml:"max_waiting_for_retry"`
	MaxResultReads            int           `toml:"max_result_reads"`
}

// Worker configures what a process runs and its handler pipeline.
type Worker struct {
	Roles                         []string      `toml:"roles"`
	Namespaces                    []string      `toml:"namespaces"`
	DeploymentMode                string        `toml:"deployment_mode"`
	MaxConcurrentHandlers         int           `toml:"max_concurrent_handlers"`
	CompletionBuffer              int           `toml:"completion_buffer"`
	CompletionLinger              time.Duration `toml:"completion_linger"`
	Prefetch                      int           `toml:"prefetch"`
	DefaultStepTimeout            time.Duration `toml:"default_step_timeout"`
	DrainTimeout                  time.Duration `toml:"drain_timeout"`
	ExternalCapacity              int           `toml:"external_capacity"`
	ExternalCompletionTimeout     time.Duration `toml:"external_completion_timeout"`
	ExternalStarvationThreshold   time.Duration `toml:"external_starvation_threshold"`
	ExternalCompletionSendTimeout time.Duration `toml:"external_completion_send_timeout"`
	ExternalCallbackTimeout       time.Duration `toml:"external_callback_timeout"`
}

// Events configures domain events.
type Events struct {
	Retention        time.Duration `toml:"retention"`
	FastBuffer       int           `toml:"fast_buffer"`
	PublisherTimeout time.Duration `toml:"publisher_timeout"`
	DeliveryTimeout  time.Duration `toml:"delivery_timeout"`
}

// API configures the HTTP server of tasker serve.
type API struct {
	Addr          string   `toml:"addr"`
	Templates     []string `toml:"templates"`
	MaxBodyBytes  int64    `toml:"max_body_bytes"`
	MaxQueueDepth int      `toml:"max_queue_depth"`
	PublicHealth  bool     `toml:"public_health"`
	PublicMetrics bool     `toml:"public_metrics"`
}

// Logging configures the logs written to stderr.
type Logging struct {
	Level  string `toml:"level"`
	Format string `toml:"format"`
}

// Default returns the default configuration: what a process runs with when
// nothing is configured.
func Default() *Config {
	return &Config{
		Store: Store{
			DatabaseURL:       "sqlite://tasker.db",
			PostgresSchema:    "tasker",
			PostgresMaxConns:  10,
			SQLiteSynchronous: "NORMAL",
			SQLiteBusyTimeout: 10 * time.Second,
		},
		Orchestration: Orchestration{
			PollInterval:              500 * time.Millisecond,
			StepLease:                 30 * time.Second,
			RetryJitter:               0.1,
			StalenessInterval:         time.Minute,
			MaxTaskDuration:           24 * time.Hour,
			MaxStepsInProcess:         time.Hour,
			MaxWaitingForDependencies: time.Hour,
			MaxWaitingForRetry:        time.Hour,
			MaxResultReads:            10,
		},
		Worker: Worker{
			Roles:                         []string{string(tasker.RoleOrchestrator), string(tasker.RoleWorker)},
			Namespaces:                    []string{},
			DeploymentMode:                string(tasker.DeploymentHybrid),
			MaxConcurrentHandlers:         10,
			CompletionBuffer:              100,
			CompletionLinger:              2 * time.Millisecond,
			Prefetch:                      80,
			DefaultStepTimeout:            5 * time.Minute,
			DrainTimeout:                  30 * time.Second,
			ExternalCapacity:              100,
			ExternalCompletionTimeout:     5 * time.Minute,
			ExternalStarvationThreshold:   10 * time.Second,
			ExternalCompletionSendTimeout: 10 * time.Second,
			ExternalCallbackTimeout:       30 * time.Second,
		},
		Events: Events{
			Retention:        72 * time.Hour,
			FastBuffer:       1024,
			PublisherTimeout: time.Second,
			DeliveryTimeout:  5 * time.Second,
		},
		API: API{
			Addr:          "127.0.0.1:8080",
			Templates:     []string{},
			MaxBodyBytes:  1 << 20,
			MaxQueueDepth: 0,
			PublicHealth:  true,
			PublicMetrics: true,
		},
		Auth: auth.Config{
			JWT: auth.JWTConfig{
				Algorithms:             []string{auth.RS256, auth.ES256},
				PermissionsClaim:       auth.DefaultPermissionsClaim,
				JWKSCacheTTL:           auth.DefaultJWKSCacheTTL,
				JWKSMinRefreshInterval: auth.DefaultJWKSMinRefreshInterval,
				Leeway:                 auth.DefaultLeeway,
			},
			APIKeys: []auth.APIKeyConfig{},
		},
		Logging: Logging{Level: "info", Format: "text"},
	}
}

// Override is a value given outside the file and the environment, such as
// a command-line flag.
type Override struct {
	// Key is the dotted key, "worker.max_concurrent_handlers".
	Key string
	// Value is parsed as the environment variable of the key would be:
	// durations as "500ms", lists comma-separated.
	Value string
	// Source names where the value came from in errors ("--concurrency").
	Source string
}

// Options says where Load reads from.
type Options struct {
	// File is the TOML file to read; "" reads none.
	File string
	// LookupEnv reads the environment; nil means os.LookupEnv.
	LookupEnv func(string) (string, bool)
	// Overrides win over the file and the environment, in order.
	Overrides []Override
}

// Load builds the effective configuration, each layer overriding the one
// before: the defaults, the file, the environment (TASKER_<SECTION>_<KEY>,
// and the older names of the serve flags' variables, such as
// TASKER_DATABASE_URL; an empty variable counts as unset), then the
// overrides. It reports every problem at once,
// each naming the key and where its value came from.
func Load(opts Options) (*Config, error) {
	lookup := opts.LookupEnv
	if lookup == nil {
		lookup = os.LookupEnv
	}
	c := Default()
	c.sources = map[string]string{}
	if opts.File != "" {
		if err := c.readFile(opts.File); err != nil {
			return nil, err
		}
	}
	var errs []error
	for _, f := range fields() {
		// The canonical name wins over an alias when both are set.
		names := append([]string{f.env}, f.aliases...)
		for _, name := range names {
			// An empty variable counts as unset, as a shell's VAR= usually
			// means.
			v, ok := lookup(name)
			if !ok || v == "" {
				continue
			}
			if err := c.set(f, v, name); err != nil {
				errs = append(errs, err)
			}
			break
		}
	}
	for _, o := range opts.Overrides {
		f, ok := fieldByKey(o.Key)
		if !ok {
			errs = append(errs, fmt.Errorf("%s: unknown configuration key %q", o.Source, o.Key))
			continue
		}
		if err := c.set(f, o.Value, o.Source); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// tomlErrorRE matches the decoder's errors that are not a toml.ParseError,
// such as a value of the wrong type, to say them in this package's form.
var tomlErrorRE = regexp.MustCompile(`^toml: line (\d+) \(last key "([^"]+)"\): (.*)$`)

// readFile decodes the file over c, refusing keys it does not know.
func (c *Config) readFile(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read config file: %w", err)
	}
	md, err := toml.Decode(string(data), c)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			if pe.LastKey != "" {
				return fmt.Errorf("%s:%d: %s: %s", path, pe.Position.Line, pe.LastKey, pe.Message)
			}
			return fmt.Errorf("%s:%d: %s", path, pe.Position.Line, pe.Message)
		}
		if m := tomlErrorRE.FindStringSubmatch(err.Error()); m != nil {
			return fmt.Errorf("%s:%s: %s: %s", path, m[1], m[2], m[3])
		}
		return fmt.Errorf("%s: %w", path, err)
	}
	lines := keyLines(string(data))
	where := func(key string) string {
		if n, ok := lines[key]; ok {
			return fmt.Sprintf("%s:%d", path, n)
		}
		return path
	}
	var errs []error
	for _, k := range md.Undecoded() {
		key := k.String()
		errs = append(errs, fmt.Errorf("%s: unknown key %q", where(key), key))
	}
	for _, f := range fields() {
		if !md.IsDefined(f.path...) {
			continue
		}
		c.sources[f.key] = where(f.key)
		if f.kind == kindDuration && md.Type(f.path...) != "String" {
			errs = append(errs, fmt.Errorf("%s: %s must be a duration string such as \"500ms\" or \"5m\"", where(f.key), f.key))
		}
	}
	return errors.Join(errs...)
}

// Source says where the value of key came from: a file and line, an
// environment variable, a flag, or "default".
func (c *Config) Source(key string) string {
	if s, ok := c.sources[key]; ok {
		return s
	}
	return "default"
}

// Validate checks every value and reports every problem, each naming the
// key and where its value came from.
func (c *Config) Validate() error {
	var errs []error
	check := func(ok bool, key, format string, args ...any) {
		if !ok {
			errs = append(errs, fmt.Errorf("%s: %s %s", c.Source(key), key, fmt.Sprintf(format, args...)))
		}
	}
	positive := func(key string, d time.Duration) {
		check(d > 0, key, "must be positive, got %s", formatDuration(d))
	}
	notNegative := func(key string, d time.Duration) {
		check(d >= 0, key, "must not be negative (0 means no limit), got %s", formatDuration(d))
	}
	atLeastOne := func(key string, n int) {
		check(n >= 1, key, "must be at least 1, got %d", n)
	}

	s := c.Store
	if err := checkDatabaseURL(s.DatabaseURL); err != nil {
		check(false, "store.database_url", "%v", err)
	}
	if err := postgres.CheckSchemaName(s.PostgresSchema); err != nil {
		check(false, "store.postgres_schema", "%v", err)
	}
	check(s.PostgresMaxConns >= 1 && s.PostgresMaxConns <= math.MaxInt32, "store.postgres_max_conns",
		"must be between 1 and %d, got %d", math.MaxInt32, s.PostgresMaxConns)
	switch strings.ToUpper(s.SQLiteSynchronous) {
	case "NORMAL", "FULL":
	default:
		check(false, "store.sqlite_synchronous", "must be NORMAL or FULL, got %q", s.SQLiteSynchronous)
	}
	positive("store.sqlite_busy_timeout", s.SQLiteBusyTimeout)

	o := c.Orchestration
	positive("orchestration.poll_interval", o.PollInterval)
	check(o.StepLease >= 100*time.Millisecond, "orchestration.step_lease", "must be at least 100ms, got %s", formatDuration(o.StepLease))
	check(o.RetryJitter >= 0 && o.RetryJitter <= 1, "orchestration.retry_jitter", "must be between 0 and 1, got %g", o.RetryJitter)
	notNegative("orchestration.staleness_interval", o.StalenessInterval)
	notNegative("orchestration.max_task_duration", o.MaxTaskDuration)
	notNegative("orchestration.max_steps_in_process", o.MaxStepsInProcess)
	notNegative("orchestration.max_waiting_for_dependencies", o.MaxWaitingForDependencies)
	notNegative("orchestration.max_waiting_for_retry", o.MaxWaitingForRetry)
	check(o.MaxResultReads >= 0, "orchestration.max_result_reads", "must not be negative (0 means never dead-letter), got %d", o.MaxResultReads)

	w := c.Worker
	check(len(w.Roles) > 0, "worker.roles", "must name at least one role (%s, %s)", tasker.RoleOrchestrator, tasker.RoleWorker)
	for _, r := range w.Roles {
		check(r == string(tasker.RoleOrchestrator) || r == string(tasker.RoleWorker), "worker.roles",
			"has unknown role %q (want %q or %q)", r, tasker.RoleOrchestrator, tasker.RoleWorker)
	}
	for _, ns := range w.Namespaces {
		check(ns != "", "worker.namespaces", "has an empty namespace")
	}
	switch tasker.DeploymentMode(w.DeploymentMode) {
	case tasker.DeploymentHybrid, tasker.DeploymentPollingOnly, tasker.DeploymentEventDrivenOnly:
	default:
		check(false, "worker.deployment_mode", "must be %s, %s or %s, got %q",
			tasker.DeploymentHybrid, tasker.DeploymentPollingOnly, tasker.DeploymentEventDrivenOnly, w.DeploymentMode)
	}
	atLeastOne("worker.max_concurrent_handlers", w.MaxConcurrentHandlers)
	atLeastOne("worker.completion_buffer", w.CompletionBuffer)
	check(w.CompletionLinger >= 0, "worker.completion_linger", "must not be negative (0 disables it), got %s", w.CompletionLinger)
	check(w.Prefetch >= 0, "worker.prefetch", "must not be negative (0 disables it), got %d", w.Prefetch)
	positive("worker.default_step_timeout", w.DefaultStepTimeout)
	positive("worker.drain_timeout", w.DrainTimeout)
	atLeastOne("worker.external_capacity", w.ExternalCapacity)
	positive("worker.external_completion_timeout", w.ExternalCompletionTimeout)
	positive("worker.external_starvation_threshold", w.ExternalStarvationThreshold)
	positive("worker.external_completion_send_timeout", w.ExternalCompletionSendTimeout)
	positive("worker.external_callback_timeout", w.ExternalCallbackTimeout)

	e := c.Events
	positive("events.retention", e.Retention)
	atLeastOne("events.fast_buffer", e.FastBuffer)
	positive("events.publisher_timeout", e.PublisherTimeout)
	positive("events.delivery_timeout", e.DeliveryTimeout)

	a := c.API
	if _, _, err := net.SplitHostPort(a.Addr); err != nil {
		check(false, "api.addr", "must be host:port, got %q", a.Addr)
	}
	for _, dir := range a.Templates {
		check(dir != "", "api.templates", "has an empty directory")
	}
	check(a.MaxBodyBytes >= 1, "api.max_body_bytes", "must be at least 1, got %d", a.MaxBodyBytes)
	check(a.MaxQueueDepth >= 0, "api.max_queue_depth", "must not be negative (0 means no limit), got %d", a.MaxQueueDepth)

	errs = append(errs, c.validateAuth()...)

	l := c.Logging
	if _, err := parseLevel(l.Level); err != nil {
		check(false, "logging.level", "%v", err)
	}
	check(l.Format == "text" || l.Format == "json", "logging.format", "must be text or json, got %q", l.Format)
	return errors.Join(errs...)
}

// validateAuth applies the auth package's own checks, whose errors name
// the key ("auth.api_keys[0].hash: …"), and adds where the value came from.
func (c *Config) validateAuth() []error {
	a := c.Auth
	a.Logger = slog.New(slog.DiscardHandler)
	_, err := auth.New(a)
	if err == nil {
		return nil
	}
	var errs []error
	for _, line := range strings.Split(err.Error(), "\n") {
		key, _, _ := strings.Cut(line, ":")
		if i := strings.IndexByte(key, '['); i >= 0 {
			key = key[:i]
		}
		src := c.Source(key)
		if _, ok := fieldByKey(key); !ok {
			src = c.authSource()
		}
		errs = append(errs, fmt.Errorf("%s: %s", src, line))
	}
	return errs
}

// authSource names where the auth settings came from when an error is
// about the section rather than one key.
func (c *Config) authSource() string {
	for _, f := range fields() {
		if strings.HasPrefix(f.key, "auth.") {
			if s, ok := c.sources[f.key]; ok {
				return s
			}
		}
	}
	return "default"
}

// checkDatabaseURL accepts the URLs tasker.Open accepts.
func checkDatabaseURL(raw string) error {
	switch {
	case strings.HasPrefix(raw, "sqlite://"):
		if strings.TrimPrefix(raw, "sqlite://") == "" {
			return fmt.Errorf("%q names no file", raw)
		}
		return nil
	case strings.HasPrefix(raw, "postgres://"), strings.HasPrefix(raw, "postgresql://"):
		if _, err := url.Parse(raw); err != nil {
			return fmt.Errorf("%s is not a valid URL", redactURL(raw))
		}
		return nil
	}
	return fmt.Errorf("%s: unsupported scheme (want sqlite:// or postgres://)", redactURL(raw))
}

// Engine returns the engine configuration. The caller sets Logger.
func (c *Config) Engine() tasker.Config {
	o, w, e, s := c.Orchestration, c.Worker, c.Events, c.Store
	roles := make([]tasker.Role, 0, len(w.Roles))
	for _, r := range w.Roles {
		roles = append(roles, tasker.Role(r))
	}
	return tasker.Config{
		DatabaseURL:                   s.DatabaseURL,
		Concurrency:                   w.MaxConcurrentHandlers,
		CompletionBuffer:              w.CompletionBuffer,
		CompletionLinger:              disabledIfZero(w.CompletionLinger),
		Prefetch:                      disabledIfZero(w.Prefetch),
		Namespaces:                    slices.Clone(w.Namespaces),
		StepLease:                     o.StepLease,
		DefaultStepTimeout:            w.DefaultStepTimeout,
		PollInterval:                  o.PollInterval,
		DeploymentMode:                tasker.DeploymentMode(w.DeploymentMode),
		RetryJitter:                   disabledIfZero(o.RetryJitter),
		ExternalCapacity:              w.ExternalCapacity,
		ExternalCompletionTimeout:     w.ExternalCompletionTimeout,
		ExternalStarvationThreshold:   w.ExternalStarvationThreshold,
		ExternalCompletionSendTimeout: w.ExternalCompletionSendTimeout,
		ExternalCallbackTimeout:       w.ExternalCallbackTimeout,
		EventRetention:                e.Retention,
		EventFastBuffer:               e.FastBuffer,
		EventPublisherTimeout:         e.PublisherTimeout,
		EventDeliveryTimeout:          e.DeliveryTimeout,
		SQLiteSynchronous:             strings.ToUpper(s.SQLiteSynchronous),
		SQLiteBusyTimeout:             s.SQLiteBusyTimeout,
		PostgresSchema:                s.PostgresSchema,
		PostgresMaxConns:              s.PostgresMaxConns,
		StalenessInterval:             disabledIfZero(o.StalenessInterval),
		MaxTaskDuration:               disabledIfZero(o.MaxTaskDuration),
		MaxStepsInProcess:             disabledIfZero(o.MaxStepsInProcess),
		MaxWaitingForDependencies:     disabledIfZero(o.MaxWaitingForDependencies),
		MaxWaitingForRetry:            disabledIfZero(o.MaxWaitingForRetry),
		MaxResultReads:                disabledIfZero(o.MaxResultReads),
		Roles:                         roles,
	}
}

// disabledIfZero translates "0 disables" (this file's convention) into the
// engine's, where zero selects the default and a negative value disables.
func disabledIfZero[T int | float64 | time.Duration](v T) T {
	if v == 0 {
		return -1
	}
	return v
}

// Logger returns a logger writing to w in the configured format and level.
func (c *Config) Logger(w io.Writer) *slog.Logger {
	level, _ := parseLevel(c.Logging.Level)
	opts := &slog.HandlerOptions{Level: level}
	if c.Logging.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func parseLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug, nil
	case "info":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("must be debug, info, warn or error, got %q", s)
}

// redacted replaces secrets in values shown to people.
const redacted = "xxxxx"

// Redacted returns a copy fit for printing and logging: the password of
// the database URL and of the JWKS URL, and the API key hashes, are
// replaced.
func (c *Config) Redacted() *Config {
	r := *c
	r.Store.DatabaseURL = redactURL(c.Store.DatabaseURL)
	r.Auth.JWT.JWKSURL = redactURL(c.Auth.JWT.JWKSURL)
	r.Auth.APIKeys = make([]auth.APIKeyConfig, len(c.Auth.APIKeys))
	for i, k := range c.Auth.APIKeys {
		r.Auth.APIKeys[i] = auth.APIKeyConfig{Name: k.Name, Hash: redacted, Permissions: slices.Clone(k.Permissions)}
	}
	return &r
}

// redactURL hides a URL's password; a URL that does not parse is reduced
// to its scheme, since the rest may hold one.
func redactURL(raw string) string {
	if raw == "" {
		return ""
	}
	u, err := url.Parse(raw)
	if err != nil {
		if i := strings.Index(raw, "://"); i >= 0 {
			return raw[:i] + "://(unparseable URL)"
		}
		return "(unparseable URL)"
	}
	return u.Redacted()
}
