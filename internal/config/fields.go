package config

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tasker-go/tasker/internal/auth"
)

type kind int

const (
	kindString kind = iota
	kindBool
	kindInt
	kindFloat
	kindDuration
	kindStrings
	kindAPIKeys
)

// field is one configuration key, found by walking Config's struct tags so
// that the file, the environment, the example and `config show` cannot
// disagree about which keys exist.
type field struct {
	key     string   // "worker.max_concurrent_handlers"
	path    []string // {"worker", "max_concurrent_handlers"}
	env     string   // "TASKER_WORKER_MAX_CONCURRENT_HANDLERS"
	aliases []string // older variable names, read when env is unset
	index   []int    // reflect field index from Config
	kind    kind
}

// envAliases are the variables tasker serve read before the configuration
// file existed; they keep working.
var envAliases = map[string][]string{
	"store.database_url":             {"TASKER_DATABASE_URL"},
	"store.postgres_schema":          {"TASKER_POSTGRES_SCHEMA"},
	"worker.roles":                   {"TASKER_ROLES"},
	"worker.namespaces":              {"TASKER_NAMESPACES"},
	"worker.max_concurrent_handlers": {"TASKER_CONCURRENCY"},
	"orchestration.step_lease":       {"TASKER_STEP_LEASE"},
	"orchestration.poll_interval":    {"TASKER_POLL_INTERVAL"},
	"worker.deployment_mode":         {"TASKER_DEPLOYMENT_MODE"},
	"worker.drain_timeout":           {"TASKER_DRAIN_TIMEOUT"},
}

var (
	durationType = reflect.TypeFor[time.Duration]()
	apiKeysType  = reflect.TypeFor[[]auth.APIKeyConfig]()
	fieldsOnce   = sync.OnceValue(collectFields)
)

func fields() []field { return fieldsOnce() }

// EnvNames returns the environment variables that set key: its
// TASKER_<SECTION>_<KEY> name, then any older name still read.
func EnvNames(key string) []string {
	f, ok := fieldByKey(key)
	if !ok {
		return nil
	}
	return append([]string{f.env}, f.aliases...)
}

func fieldByKey(key string) (field, bool) {
	for _, f := range fields() {
		if f.key == key {
			return f, true
		}
	}
	return field{}, false
}

func collectFields() []field {
	var out []field
	var walk func(t reflect.Type, path []string, index []int)
	walk = func(t reflect.Type, path []string, index []int) {
		for i := range t.NumField() {
			sf := t.Field(i)
			name := sf.Tag.Get("toml")
			if !sf.IsExported() || name == "" || name == "-" {
				continue
			}
			p := append(append([]string(nil), path...), name)
			idx := append(append([]int(nil), index...), i)
			k, leaf := kindOf(sf.Type)
			if !leaf {
				walk(sf.Type, p, idx)
				continue
			}
			key := strings.Join(p, ".")
			out = append(out, field{
				key: key, path: p, index: idx, kind: k,
				env:     "TASKER_" + strings.ToUpper(strings.Join(p, "_")),
				aliases: envAliases[key],
			})
		}
	}
	walk(reflect.TypeFor[Config](), nil, nil)
	return out
}

func kindOf(t reflect.Type) (kind, bool) {
	switch {
	case t == durationType:
		return kindDuration, true
	case t == apiKeysType:
		return kindAPIKeys, true
	}
	switch t.Kind() {
	case reflect.String:
		return kindString, true
	case reflect.Bool:
		return kindBool, true
	case reflect.Int, reflect.Int64:
		return kindInt, true
	case reflect.Float64:
		return kindFloat, true
	case reflect.Slice:
		if t.Elem().Kind() == reflect.String {
			return kindStrings, true
		}
	case reflect.Struct:
		return 0, false
	}
	panic(fmt.Sprintf("config: no kind for %s", t))
}

func (c *Config) value(f field) reflect.Value {
	return reflect.ValueOf(c).Elem().FieldByIndex(f.index)
}

// set parses s as the value of f and records source as its origin.
func (c *Config) set(f field, s, source string) error {
	v := c.value(f)
	bad := func(want string) error {
		return fmt.Errorf("%s: %s: %q is not %s", source, f.key, s, want)
	}
	switch f.kind {
	case kindString:
		v.SetString(s)
	case kindBool:
		b, err := strconv.ParseBool(strings.TrimSpace(s))
		if err != nil {
			return bad("true or false")
		}
		v.SetBool(b)
	case kindInt:
		n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
		if err != nil || v.OverflowInt(n) {
			return bad("an integer")
		}
		v.SetInt(n)
	case kindFloat:
		x, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
		if err != nil {
			return bad("a number")
		}
		v.SetFloat(x)
	case kindDuration:
		d, err := time.ParseDuration(strings.TrimSpace(s))
		if err != nil {
			return bad(`a duration such as "500ms" or "5m"`)
		}
		v.SetInt(int64(d))
	case kindStrings:
		items := []string{}
		for _, item := range strings.Split(s, ",") {
			if item = strings.TrimSpace(item); item != "" {
				items = append(items, item)
			}
		}
		v.Set(reflect.ValueOf(items))
	case kindAPIKeys:
		var keys []auth.APIKeyConfig
		dec := json.NewDecoder(strings.NewReader(s))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&keys); err != nil {
			return fmt.Errorf("%s: %s: want a JSON array of {\"name\", \"hash\", \"permissions\"}: %v", source, f.key, err)
		}
		if keys == nil {
			keys = []auth.APIKeyConfig{}
		}
		v.Set(reflect.ValueOf(keys))
	}
	c.sources[f.key] = source
	return nil
}

// keyLines finds the line on which each key is set in a TOML document. It
// understands what a configuration file uses (tables, arrays of tables,
// dotted keys); the decoder has already accepted the document.
func keyLines(doc string) map[string]int {
	lines := map[string]int{}
	var table []string
	for i, line := range strings.Split(doc, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
			continue
		case strings.HasPrefix(line, "[[") || strings.HasPrefix(line, "["):
			name := strings.Trim(line, "[] ")
			if j := strings.Index(name, "]"); j >= 0 {
				name = name[:j]
			}
			table = splitKey(name)
			key := strings.Join(table, ".")
			if _, ok := lines[key]; !ok {
				lines[key] = i + 1
			}
		default:
			eq := strings.Index(line, "=")
			if eq < 0 {
				continue
			}
			key := strings.Join(append(append([]string(nil), table...), splitKey(line[:eq])...), ".")
			if _, ok := lines[key]; !ok {
				lines[key] = i + 1
			}
		}
	}
	return lines
}

// splitKey splits a dotted TOML key, removing quotes around its parts.
func splitKey(s string) []string {
	parts := strings.Split(s, ".")
	for i, p := range parts {
		parts[i] = strings.Trim(strings.TrimSpace(p), `"'`)
	}
	return parts
}

// formatDuration writes a duration the way people write it: "5m" rather
// than "5m0s".
func formatDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
