package config

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tasker-go/tasker"
	"github.com/tasker-go/tasker/internal/auth"
)

// env returns a LookupEnv over a fixed map, so tests do not touch the
// process environment and can run in parallel.
func env(vars map[string]string) func(string) (string, bool) {
	return func(name string) (string, bool) {
		v, ok := vars[name]
		return v, ok
	}
}

func writeFile(t *testing.T, doc string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tasker.toml")
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestDefaults(t *testing.T) {
	t.Parallel()
	c, err := Load(Options{LookupEnv: env(nil)})
	if err != nil {
		t.Fatalf("Load with nothing configured: %v", err)
	}
	if !bytes.Equal(c.TOML(), Default().TOML()) {
		t.Errorf("Load with nothing configured differs from Default:\n%s", c.TOML())
	}
	if got := c.Worker.MaxConcurrentHandlers; got != 10 {
		t.Errorf("worker.max_concurrent_handlers = %d, want 10", got)
	}
	if got := c.API.Addr; got != "127.0.0.1:8080" {
		t.Errorf("api.addr = %q, want 127.0.0.1:8080", got)
	}
	if got := c.Source("worker.max_concurrent_handlers"); got != "default" {
		t.Errorf("Source = %q, want default", got)
	}
}

// TestEngineMapsEveryField fails when tasker.Config gains a field that the
// configuration does not set.
func TestEngineMapsEveryField(t *testing.T) {
	t.Parallel()
	c := Default()
	c.Worker.Namespaces = []string{"math"} // empty by default
	ec := c.Engine()
	v := reflect.ValueOf(ec)
	for i := range v.NumField() {
		name := v.Type().Field(i).Name
		if name == "Logger" { // set by the caller
			continue
		}
		if v.Field(i).IsZero() {
			t.Errorf("Engine() leaves tasker.Config.%s unset: map it to a configuration key", name)
		}
	}
	ec.DatabaseURL = "sqlite://" + filepath.Join(t.TempDir(), "tasker.db")
	eng, err := tasker.Open(t.Context(), ec)
	if err != nil {
		t.Fatalf("Open refuses the default configuration: %v", err)
	}
	eng.Close()
}

func TestEngineDisablesWithZero(t *testing.T) {
	t.Parallel()
	c := Default()
	c.Orchestration.RetryJitter = 0
	c.Orchestration.StalenessInterval = 0
	c.Orchestration.MaxResultReads = 0
	ec := c.Engine()
	if ec.RetryJitter >= 0 || ec.StalenessInterval >= 0 || ec.MaxResultReads >= 0 {
		t.Errorf("zero in the file must disable (negative in tasker.Config): jitter %g, staleness %s, reads %d",
			ec.RetryJitter, ec.StalenessInterval, ec.MaxResultReads)
	}
}

func TestFile(t *testing.T) {
	t.Parallel()
	path := writeFile(t, `
[store]
database_url = "postgres://app@db:5432/tasker"

[worker]
max_concurrent_handlers = 32
namespaces = ["math", "orders"]
default_step_timeout = "90s"

[auth]
enabled = true

[[auth.api_keys]]
name = "ops"
hash = "`+auth.HashAPIKey("tsk_test")+`"
permissions = ["tasks:*"]
`)
	c, err := Load(Options{File: path, LookupEnv: env(nil)})
	if err != nil {
		t.Fatal(err)
	}
	if c.Store.DatabaseURL != "postgres://app@db:5432/tasker" || c.Worker.MaxConcurrentHandlers != 32 ||
		c.Worker.DefaultStepTimeout != 90*time.Second || !reflect.DeepEqual(c.Worker.Namespaces, []string{"math", "orders"}) {
		t.Errorf("file values not applied: %+v", c.Worker)
	}
	if len(c.Auth.APIKeys) != 1 || c.Auth.APIKeys[0].Name != "ops" || !c.Auth.Enabled {
		t.Errorf("auth not applied: %+v", c.Auth)
	}
	if c.Worker.CompletionBuffer != 100 {
		t.Errorf("a key the file does not set lost its default: completion_buffer = %d", c.Worker.CompletionBuffer)
	}
	if got, want := c.Source("worker.max_concurrent_handlers"), path+":6"; got != want {
		t.Errorf("Source = %q, want %q", got, want)
	}
}

func TestPrecedence(t *testing.T) {
	t.Parallel()
	path := writeFile(t, "[worker]\nmax_concurrent_handlers = 2\ncompletion_buffer = 20\ndrain_timeout = \"2s\"\n"+
		"[orchestration]\npoll_interval = \"2s\"\n")
	c, err := Load(Options{
		File: path,
		LookupEnv: env(map[string]string{
			"TASKER_WORKER_MAX_CONCURRENT_HANDLERS": "3",
			"TASKER_WORKER_COMPLETION_BUFFER":       "30",
			// An alias is read when the canonical name is not set...
			"TASKER_POLL_INTERVAL": "3s",
			// ...and loses to it when it is.
			"TASKER_DRAIN_TIMEOUT":        "9s",
			"TASKER_WORKER_DRAIN_TIMEOUT": "3s",
			// Empty counts as unset.
			"TASKER_WORKER_EXTERNAL_CAPACITY": "",
		}),
		Overrides: []Override{{Key: "worker.max_concurrent_handlers", Value: "4", Source: "--concurrency"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		key        string
		got, want  any
		wantSource string
	}{
		{"worker.max_concurrent_handlers", c.Worker.MaxConcurrentHandlers, 4, "--concurrency"},
		{"worker.completion_buffer", c.Worker.CompletionBuffer, 30, "TASKER_WORKER_COMPLETION_BUFFER"},
		{"orchestration.poll_interval", c.Orchestration.PollInterval, 3 * time.Second, "TASKER_POLL_INTERVAL"},
		{"worker.drain_timeout", c.Worker.DrainTimeout, 3 * time.Second, "TASKER_WORKER_DRAIN_TIMEOUT"},
		{"worker.external_capacity", c.Worker.ExternalCapacity, 100, "default"},
	} {
		if tc.got != tc.want || c.Source(tc.key) != tc.wantSource {
			t.Errorf("%s = %v from %s, want %v from %s", tc.key, tc.got, c.Source(tc.key), tc.want, tc.wantSource)
		}
	}
}

func TestEnvironmentLists(t *testing.T) {
	t.Parallel()
	c, err := Load(Options{LookupEnv: env(map[string]string{
		"TASKER_WORKER_ROLES":  "worker",
		"TASKER_NAMESPACES":    "math, orders,",
		"TASKER_AUTH_ENABLED":  "true",
		"TASKER_AUTH_API_KEYS": `[{"name":"ci","hash":"` + auth.HashAPIKey("tsk_ci") + `","permissions":["tasks:read"]}]`,
	})})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c.Worker.Roles, []string{"worker"}) || !reflect.DeepEqual(c.Worker.Namespaces, []string{"math", "orders"}) {
		t.Errorf("roles %q, namespaces %q", c.Worker.Roles, c.Worker.Namespaces)
	}
	if len(c.Auth.APIKeys) != 1 || c.Auth.APIKeys[0].Name != "ci" {
		t.Errorf("api keys from the environment: %+v", c.Auth.APIKeys)
	}
}

func TestUnknownKeys(t *testing.T) {
	t.Parallel()
	path := writeFile(t, "[worker]\nmax_concurrent_handlers = 3\nmax_concurent_handlers = 4\n\n[metrics]\nenabled = true\n"+
		"[[auth.api_keys]]\nname = \"a\"\nhash = \"h\"\nsecret = \"s\"\n")
	_, err := Load(Options{File: path, LookupEnv: env(nil)})
	if err == nil {
		t.Fatal("unknown keys were accepted")
	}
	for _, want := range []string{
		path + `:3: unknown key "worker.max_concurent_handlers"`,
		path + `:5: unknown key "metrics"`,
		path + `:10: unknown key "auth.api_keys.secret"`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not contain %q:\n%v", want, err)
		}
	}
}

func TestBadValues(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		file string
		env  map[string]string
		want []string // each must appear in the error
	}{
		{name: "duration that does not parse", file: "[orchestration]\n\npoll_interval = \"soon\"\n",
			want: []string{":3: orchestration.poll_interval", "soon"}},
		{name: "duration without a unit", file: "[orchestration]\npoll_interval = 500\n",
			want: []string{":2: orchestration.poll_interval must be a duration string"}},
		{name: "negative count", file: "[worker]\nmax_concurrent_handlers = -1\n",
			want: []string{":2: worker.max_concurrent_handlers must be at least 1, got -1"}},
		{name: "wrong type", file: "[worker]\ncompletion_buffer = \"lots\"\n",
			want: []string{":2: worker.completion_buffer"}},
		{name: "unknown deployment mode", file: "[worker]\ndeployment_mode = \"carrier_pigeon\"\n",
			want: []string{":2: worker.deployment_mode must be hybrid, polling_only or event_driven_only", "carrier_pigeon"}},
		{name: "bad database URL", file: "[store]\ndatabase_url = \"mysql://root:pw@db/x\"\n",
			want: []string{":2: store.database_url", "unsupported scheme"}},
		{name: "bad addr", file: "[api]\naddr = \"8080\"\n",
			want: []string{":2: api.addr must be host:port"}},
		{name: "bad log format", file: "[logging]\nformat = \"xml\"\n",
			want: []string{":2: logging.format must be text or json"}},
		{name: "auth without credentials", file: "[auth]\nenabled = true\n",
			want: []string{":2: auth.enabled: auth is enabled but no api_keys"}},
		{name: "bad API key hash", file: "[auth]\nenabled = true\n\n[[auth.api_keys]]\nname = \"ops\"\nhash = \"md5:00\"\n",
			want: []string{":4: auth.api_keys[0].hash: must start with \"sha256:\""}},
		{name: "bad duration in env", env: map[string]string{"TASKER_WORKER_DRAIN_TIMEOUT": "forever"},
			want: []string{"TASKER_WORKER_DRAIN_TIMEOUT: worker.drain_timeout: \"forever\" is not a duration"}},
		{name: "negative count in env", env: map[string]string{"TASKER_CONCURRENCY": "-4"},
			want: []string{"TASKER_CONCURRENCY: worker.max_concurrent_handlers must be at least 1, got -4"}},
		{name: "unknown role in env", env: map[string]string{"TASKER_WORKER_ROLES": "worker,cook"},
			want: []string{"TASKER_WORKER_ROLES: worker.roles has unknown role \"cook\""}},
		{name: "bad bool in env", env: map[string]string{"TASKER_API_PUBLIC_HEALTH": "sometimes"},
			want: []string{"TASKER_API_PUBLIC_HEALTH: api.public_health: \"sometimes\" is not true or false"}},
		{name: "every problem at once", file: "[events]\nfast_buffer = 0\nretention = \"-1h\"\n",
			want: []string{":2: events.fast_buffer", ":3: events.retention must be positive"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			opts := Options{LookupEnv: env(tc.env)}
			if tc.file != "" {
				opts.File = writeFile(t, tc.file)
			}
			_, err := Load(opts)
			if err == nil {
				t.Fatal("Load accepted the bad value")
			}
			for _, want := range tc.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error does not contain %q:\n%v", want, err)
				}
			}
			if tc.file != "" && !strings.Contains(err.Error(), opts.File) {
				t.Errorf("error does not name the file:\n%v", err)
			}
		})
	}
}

func TestRedacted(t *testing.T) {
	t.Parallel()
	c, err := Load(Options{LookupEnv: env(map[string]string{
		"TASKER_DATABASE_URL":      "postgres://app:hunter2@db:5432/tasker?sslmode=disable",
		"TASKER_AUTH_JWT_JWKS_URL": "https://svc:jwks-secret@idp.example/keys",
		"TASKER_AUTH_API_KEYS":     `[{"name":"ops","hash":"deadbeefhash","permissions":["*"]}]`,
	})})
	if err != nil {
		t.Fatal(err)
	}
	out := string(c.Redacted().TOML())
	for _, secret := range []string{"hunter2", "jwks-secret", "deadbeefhash"} {
		if strings.Contains(out, secret) {
			t.Errorf("redacted output shows %q:\n%s", secret, out)
		}
	}
	for _, want := range []string{"postgres://app:xxxxx@db:5432/tasker", `name = "ops"`, "# TASKER_DATABASE_URL"} {
		if !strings.Contains(out, want) {
			t.Errorf("redacted output lacks %q:\n%s", want, out)
		}
	}
	if c.Store.DatabaseURL != "postgres://app:hunter2@db:5432/tasker?sslmode=disable" || c.Auth.APIKeys[0].Hash != "deadbeefhash" {
		t.Error("Redacted changed the configuration it was called on")
	}
}

// TestTOMLRoundTrip: what config show prints (unredacted) reads back as the
// same configuration.
func TestTOMLRoundTrip(t *testing.T) {
	t.Parallel()
	c, err := Load(Options{LookupEnv: env(map[string]string{
		"TASKER_WORKER_NAMESPACES":          "math",
		"TASKER_ORCHESTRATION_RETRY_JITTER": "0",
		"TASKER_AUTH_JWT_PUBLIC_KEY_PEM":    "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
		"TASKER_AUTH_API_KEYS":              `[{"name":"a","hash":"h1","permissions":["tasks:*"]},{"name":"b \"q\"","hash":"h2","permissions":[]}]`,
	})})
	if err != nil {
		t.Fatal(err)
	}
	path := writeFile(t, string(c.TOML()))
	back, err := Load(Options{File: path, LookupEnv: env(nil)})
	if err != nil {
		t.Fatalf("printed configuration does not load: %v\n%s", err, c.TOML())
	}
	back.sources, c.sources = nil, nil
	if !reflect.DeepEqual(back, c) {
		t.Errorf("round trip changed the configuration:\n%+v\n%+v", back, c)
	}
}

// TestExampleUpToDate fails when config/tasker.example.toml is not what
// Example prints; regenerate it with
// go run ./cmd/tasker config example > config/tasker.example.toml
func TestExampleUpToDate(t *testing.T) {
	t.Parallel()
	path := filepath.Join("..", "..", "config", "tasker.example.toml")
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, Example()) {
		t.Fatalf("%s is out of date: run\n\tgo run ./cmd/tasker config example > config/tasker.example.toml", path)
	}
	c, err := Load(Options{File: path, LookupEnv: env(nil)})
	if err != nil {
		t.Fatalf("the example does not load: %v", err)
	}
	if !bytes.Equal(Default().TOML(), func() []byte { c.sources = nil; return c.TOML() }()) {
		t.Errorf("the example does not hold the defaults")
	}
	for _, f := range fields() {
		if keyDocs[f.key] == "" {
			t.Errorf("key %s has no documentation in keyDocs", f.key)
		}
		if !strings.Contains(string(got), f.env) {
			t.Errorf("the example does not name %s", f.env)
		}
	}
}

// TestCompletionLinger: the key reaches the engine's config; 0 in the
// file disables it (the engine's negative) and a negative value is refused.
func TestCompletionLinger(t *testing.T) {
	t.Parallel()
	c, err := Load(Options{})
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Engine().CompletionLinger; got != 2*time.Millisecond {
		t.Errorf("default completion_linger reaches the engine as %s, want 2ms", got)
	}
	c, err = Load(Options{LookupEnv: env(map[string]string{"TASKER_WORKER_COMPLETION_LINGER": "0s"})})
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Engine().CompletionLinger; got >= 0 {
		t.Errorf("completion_linger = 0 reaches the engine as %s, want a negative value (disabled)", got)
	}
	_, err = Load(Options{LookupEnv: env(map[string]string{"TASKER_WORKER_COMPLETION_LINGER": "-1ms"})})
	if err == nil || !strings.Contains(err.Error(), "worker.completion_linger") {
		t.Errorf("negative completion_linger: err = %v, want an error naming worker.completion_linger", err)
	}
}
