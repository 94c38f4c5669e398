package config

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// sectionDocs describe the tables, keyDocs every key; the example file is
// written from them and the test checks that none is missing.
var sectionDocs = map[string]string{
	"store":         "The database holding tasks, steps, queues and events.",
	"orchestration": "The orchestrator: result processing, retries, lease rescue and the staleness sweeper.",
	"worker":        "What this process runs, and the worker's handler pipeline.",
	"events":        "Domain events published by steps.",
	"api":           "The HTTP API of tasker serve.",
	"auth":          "Authentication of API requests. Disabled by default: every request is allowed.",
	"auth.jwt":      "JWT bearer tokens (RS256 or ES256). Set one of public_key_file, public_key_pem or jwks_url.",
	"logging":       "Logs, written to stderr.",
}

var keyDocs = map[string]string{
	"store.database_url":        `sqlite://FILE (relative to the working directory), sqlite:///ABSOLUTE/PATH, or postgres://user:password@host:5432/db?sslmode=disable.`,
	"store.postgres_schema":     "PostgreSQL schema holding Tasker's tables; created and migrated at start. Processes sharing a schema share their tasks.",
	"store.postgres_max_conns":  "Size of each of the PostgreSQL driver's two connection pools.",
	"store.sqlite_synchronous":  "SQLite synchronous pragma: NORMAL survives process crashes, FULL also power loss.",
	"store.sqlite_busy_timeout": "How long SQLite waits for another process's lock.",

	"orchestration.poll_interval":                "How often to look for work no in-process signal announced: other processes' work, due retries, expired leases.",
	"orchestration.step_lease":                   "How long a claimed step stays owned without a heartbeat; a dead worker's step is retried after it. At least 100ms.",
	"orchestration.retry_jitter":                 "Retry delays are spread by up to ± this fraction (0 to 1; 0 disables jitter).",
	"orchestration.staleness_interval":           "How often the staleness sweeper moves stuck tasks to the dead-letter queue (0 disables the sweeper).",
	"orchestration.max_task_duration":            "Age past which a task is stale, for templates whose lifecycle sets no max_duration_minutes (0: no limit).",
	"orchestration.max_steps_in_process":         "Time without progress in steps_in_process past which a task is stale (0: no limit).",
	"orchestration.max_waiting_for_dependencies": "Time without progress in waiting_for_dependencies past which a task is stale (0: no limit).",
	"orchestration.max_waiting_for_retry":        "Time without progress in waiting_for_retry past which a task is stale (0: no limit).",
	"orchestration.max_result_reads":             "Reads of a queued step result that keeps failing before it is dead-lettered (0: never).",

	"worker.roles":                            `What this process runs: "orchestrator", "worker", or both.`,
	"worker.namespaces":                       "Namespaces the worker claims steps from; empty means every namespace with a template whose handlers this process has.",
	"worker.deployment_mode":                  "How work from other processes is noticed: hybrid (PostgreSQL notifications plus polling), polling_only, or event_driven_only (PostgreSQL only).",
	"worker.max_concurrent_handlers":          "Step handlers running at once in this process.",
	"worker.completion_buffer":                "Capacity of the worker's completion channel.",
	"worker.prefetch":                         "Most steps claimed beyond max_concurrent_handlers that wait for a free handler, so claims come in fewer, larger transactions; the depth used follows handler speed (max_concurrent_handlers while handlers are as slow as a claim, up to this when much faster); 0 disables it.",
	"worker.completion_linger":                "How long a batch of results may wait for a still-running step of the same task, so siblings are processed together; 0 disables it.",
	"worker.default_step_timeout":             "Attempt timeout for steps whose template sets no timeout_seconds.",
	"worker.drain_timeout":                    "On SIGINT/SIGTERM, how long handlers in flight may finish before the process exits.",
	"worker.external_capacity":                "Steps of external (non-Go) handlers waiting for a poller at once.",
	"worker.external_completion_timeout":      "An external step not completed within this fails as a retryable external_timeout.",
	"worker.external_starvation_threshold":    "Age past which an uncompleted external step is logged and counted as starved.",
	"worker.external_completion_send_timeout": "How long an external completion waits for room in a full completion channel.",
	"worker.external_callback_timeout":        "Bound on publishing an external step's fast domain events.",

	"events.retention":         "How long delivered durable domain events are kept.",
	"events.fast_buffer":       "Capacity of the in-process bus for fast events; events beyond it are dropped and counted.",
	"events.publisher_timeout": "Bound on one call of a custom event publisher.",
	"events.delivery_timeout":  "Bound on one call of a subscriber.",

	"api.addr":           "Address the HTTP API listens on, host:port.",
	"api.templates":      "Directories whose task templates (*.yml, *.yaml, recursively) are registered at start.",
	"api.max_body_bytes": "Largest request body accepted; larger ones are refused with 413.",
	"api.max_queue_depth": "Task creation answers 503 with Retry-After while more steps than this wait in the queues (0: no limit; " +
		"critically saturated channels always do).",
	"api.public_health":  "Serve /health/* without credentials when auth is enabled.",
	"api.public_metrics": "Serve /metrics without credentials when auth is enabled.",

	"auth.enabled":                       "Require credentials (X-API-Key header or Authorization: Bearer token) on every API request.",
	"auth.jwt.public_key_file":           "PEM file holding the public key (or certificate) that verifies tokens.",
	"auth.jwt.public_key_pem":            "The public key (or certificate) itself, PEM-encoded.",
	"auth.jwt.jwks_url":                  "https URL (http only for localhost) of a JWKS document holding the signing keys; a token's kid picks its key.",
	"auth.jwt.issuer":                    `Value a token's "iss" must have; required when tokens are accepted.`,
	"auth.jwt.audience":                  `Value a token's "aud" must include; required when tokens are accepted.`,
	"auth.jwt.algorithms":                "Signature algorithms accepted: RS256, ES256.",
	"auth.jwt.permissions_claim":         "Claim holding the token's permissions: a list of resource:action strings, or one space-separated string.",
	"auth.jwt.jwks_cache_ttl":            "How long a fetched JWKS is used before it is fetched again.",
	"auth.jwt.jwks_min_refresh_interval": `How often at most a token with an unknown "kid" makes the JWKS be fetched again.`,
	"auth.jwt.leeway":                    `Clock skew tolerated when checking "exp" and "nbf" (at most 5m).`,
	"auth.api_keys":                      "API keys: a name, the hash of the secret (from `tasker auth create-key`) and permissions such as tasks:create, tasks:* or *. In the environment, a JSON array.",
	"logging.level":                      "debug, info, warn or error.",
	"logging.format":                     "text or json.",
}

// Example returns the commented example configuration: every key, set to
// its default, with its meaning and its environment variable.
func Example() []byte {
	var b bytes.Buffer
	b.WriteString(`# Tasker configuration (tasker serve --config FILE, or TASKER_CONFIG=FILE).
#
# Every key below is set to its default and may be left out. Each can also be
# set by the environment variable named above it; the precedence is
# command-line flag > environment > this file > default. Durations are
# strings such as "500ms", "30s", "5m" or "24h".
#
# Generated by "tasker config example"; do not edit by hand.

`)
	Default().encode(&b, true)
	return b.Bytes()
}

// TOML returns the configuration as a TOML document. Values that do not
// come from the defaults are followed by a comment naming their source.
// Print Redacted().TOML() rather than TOML() where people can read it.
func (c *Config) TOML() []byte {
	var b bytes.Buffer
	c.encode(&b, false)
	return b.Bytes()
}

func (c *Config) encode(b *bytes.Buffer, docs bool) {
	table := ""
	for _, f := range fields() {
		if f.kind == kindAPIKeys {
			c.encodeAPIKeys(b, f, docs)
			continue
		}
		t := strings.Join(f.path[:len(f.path)-1], ".")
		if t != table {
			table = t
			if !docs && b.Len() > 0 {
				b.WriteString("\n")
			}
			if docs {
				comment(b, sectionDocs[t])
			}
			fmt.Fprintf(b, "[%s]\n", t)
		}
		if docs {
			comment(b, keyDocs[f.key]+" Env: "+envNames(f)+".")
		}
		fmt.Fprintf(b, "%s = %s", f.path[len(f.path)-1], c.format(f))
		if src, ok := c.sources[f.key]; ok && !docs {
			fmt.Fprintf(b, " # %s", src)
		}
		b.WriteString("\n")
		if docs {
			b.WriteString("\n")
		}
	}
}

func (c *Config) encodeAPIKeys(b *bytes.Buffer, f field, docs bool) {
	keys := c.Auth.APIKeys
	if !docs {
		b.WriteString("\n")
	}
	if docs {
		comment(b, keyDocs[f.key]+" Env: "+envNames(f)+".")
	}
	if len(keys) == 0 {
		b.WriteString("# [[auth.api_keys]]\n# name = \"ops\"\n# hash = \"sha256:...\"\n# permissions = [\"tasks:*\", \"steps:*\", \"dlq:*\"]\n\n")
		return
	}
	for i, k := range keys {
		if i > 0 {
			b.WriteString("\n")
		}
		b.WriteString("[[auth.api_keys]]")
		if src, ok := c.sources[f.key]; ok && !docs {
			fmt.Fprintf(b, " # %s", src)
		}
		fmt.Fprintf(b, "\nname = %s\nhash = %s\npermissions = %s\n", quote(k.Name), quote(k.Hash), stringList(k.Permissions))
	}
}

func envNames(f field) string {
	return strings.Join(append([]string{f.env}, f.aliases...), " (or ") + strings.Repeat(")", len(f.aliases))
}

func (c *Config) format(f field) string {
	v := c.value(f)
	switch f.kind {
	case kindString:
		return quote(v.String())
	case kindBool:
		return strconv.FormatBool(v.Bool())
	case kindInt:
		return strconv.FormatInt(v.Int(), 10)
	case kindFloat:
		s := strconv.FormatFloat(v.Float(), 'f', -1, 64)
		if !strings.ContainsAny(s, ".eE") {
			s += ".0"
		}
		return s
	case kindDuration:
		return quote(formatDuration(time.Duration(v.Int())))
	case kindStrings:
		return stringList(v.Interface().([]string))
	}
	panic("config: cannot format " + f.key)
}

// quote writes a TOML basic string: JSON's escapes are a subset of TOML's.
func quote(s string) string {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s) // a string always encodes
	return strings.TrimSuffix(b.String(), "\n")
}

func stringList(items []string) string {
	q := make([]string, len(items))
	for i, s := range items {
		q[i] = quote(s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// comment writes text as comment lines of at most about 78 characters.
func comment(b *bytes.Buffer, text string) {
	line := "#"
	for _, word := range strings.Fields(text) {
		if len(line)+1+len(word) > 78 && line != "#" {
			b.WriteString(line + "\n")
			line = "#"
		}
		line += " " + word
	}
	b.WriteString(line + "\n")
}
