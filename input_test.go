package tasker_test

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tasker-go/tasker"
)

const ordersYAML = `
name: checkout
namespace_name: orders
version: 1.0.0
input_schema:
  type: object
  required: [order_id, amount]
  properties:
    order_id: {type: string}
    amount: {type: number, minimum: 0}
steps:
  - name: charge
    handler: {callable: orders.charge}
  - name: ship
    handler: {callable: orders.ship}
    dependencies: [charge]
`

const uniqueYAML = `
name: unique
namespace_name: orders
version: 1.0.0
identity_strategy: always_unique
steps:
  - name: only
    handler: {callable: orders.charge}
`

const keyedYAML = `
name: keyed
namespace_name: orders
version: 1.0.0
identity_strategy: caller_provided
steps:
  - name: only
    handler: {callable: orders.charge}
`

// TestCreateTaskRefusals checks every way CreateTask refuses a request and
// that a refused request stores nothing.
func TestCreateTaskRefusals(t *testing.T) {
	t.Parallel()
	eng, path := openEngine(t, engineOptions{
		templates: []string{ordersYAML, uniqueYAML, keyedYAML},
		noStart:   true, // nothing needs to run; rows stay where they are
	})
	ctx := context.Background()
	valid := map[string]any{"order_id": "A-1", "amount": 12.5}

	tests := []struct {
		name    string
		req     tasker.TaskRequest
		target  error
		message string
	}{
		{"unknown template", tasker.TaskRequest{Namespace: "orders", Name: "refund", Context: valid}, tasker.ErrTemplateNotFound, "orders/refund"},
		{"unknown version", tasker.TaskRequest{Namespace: "orders", Name: "checkout", Version: "9.9.9", Context: valid}, tasker.ErrTemplateNotFound, "9.9.9"},
		{"unknown namespace", tasker.TaskRequest{Namespace: "nope", Name: "checkout", Context: valid}, tasker.ErrTemplateNotFound, "nope"},
		{"array context", tasker.TaskRequest{Namespace: "orders", Name: "checkout", Context: []int{1, 2}}, tasker.ErrInvalidContext, "object"},
		{"string context", tasker.TaskRequest{Namespace: "orders", Name: "checkout", Context: `"just a string"`}, tasker.ErrInvalidContext, "object"},
		{"invalid JSON", tasker.TaskRequest{Namespace: "orders", Name: "checkout", Context: `{"order_id": `}, tasker.ErrInvalidContext, "JSON"},
		{"invalid raw JSON", tasker.TaskRequest{Namespace: "orders", Name: "checkout", Context: json.RawMessage(`{nope}`)}, tasker.ErrInvalidContext, "JSON"},
		{"unmarshalable", tasker.TaskRequest{Namespace: "orders", Name: "checkout", Context: map[string]any{"f": func() {}}}, tasker.ErrInvalidContext, "JSON"},
		{"missing field", tasker.TaskRequest{Namespace: "orders", Name: "checkout", Context: map[string]any{"order_id": "A-1"}}, tasker.ErrInvalidContext, "amount"},
		{"wrong type", tasker.TaskRequest{Namespace: "orders", Name: "checkout", Context: map[string]any{"order_id": 7, "amount": 1}}, tasker.ErrInvalidContext, "order_id"},
		{"below minimum", tasker.TaskRequest{Namespace: "orders", Name: "checkout", Context: map[string]any{"order_id": "A-1", "amount": -3}}, tasker.ErrInvalidContext, "amount"},
		{"nil context vs schema", tasker.TaskRequest{Namespace: "orders", Name: "checkout"}, tasker.ErrInvalidContext, "order_id"},
		{"key required", tasker.TaskRequest{Namespace: "orders", Name: "keyed"}, tasker.ErrIdempotencyKeyRequired, "idempotency key"},
	}
	for _, tc := range tests {
		task, err := eng.CreateTask(ctx, tc.req)
		if !errors.Is(err, tc.target) {
			t.Errorf("%s: CreateTask returned (%v, %v), want %v", tc.name, task, err, tc.target)
			continue
		}
		if !strings.Contains(err.Error(), tc.message) {
			t.Errorf("%s: error %q does not mention %q", tc.name, err, tc.message)
		}
		t.Logf("%s: %v", tc.name, err)
	}
	if n := countRows(t, path, `SELECT COUNT(*) FROM tasker_tasks`); n != 0 {
		t.Fatalf("refused requests stored %d tasks", n)
	}

	// A valid request after all that is stored alone, with its steps.
	first := createTask(t, eng, tasker.TaskRequest{Namespace: "orders", Name: "checkout", Context: valid})
	if first.State == "" || first.TotalSteps != 2 || first.Version != "1.0.0" {
		t.Fatalf("created task %+v", first)
	}
	if n := countRows(t, path, `SELECT COUNT(*) FROM tasker_tasks`); n != 1 {
		t.Fatalf("%d tasks stored, want 1", n)
	}
	if n := countRows(t, path, `SELECT COUNT(*) FROM tasker_steps`); n != 2 {
		t.Fatalf("%d steps stored, want 2", n)
	}

	// Identity: the strict default treats the same context, whatever its
	// key order or spacing, as the same task.
	_, err := eng.CreateTask(ctx, tasker.TaskRequest{Namespace: "orders", Name: "checkout",
		Context: json.RawMessage(` { "amount": 12.5,  "order_id": "A-1" } `)})
	if !errors.Is(err, tasker.ErrDuplicateTask) {
		t.Fatalf("same context in another key order: %v, want ErrDuplicateTask", err)
	}
	// An idempotency key is the identity whatever the strategy and context.
	keyed := tasker.TaskRequest{Namespace: "orders", Name: "unique", IdempotencyKey: "req-77", Context: map[string]int{"n": 1}}
	createTask(t, eng, keyed)
	keyed.Context = map[string]int{"n": 2}
	if _, err := eng.CreateTask(ctx, keyed); !errors.Is(err, tasker.ErrDuplicateTask) {
		t.Fatalf("repeated idempotency key: %v, want ErrDuplicateTask", err)
	}
	createTask(t, eng, tasker.TaskRequest{Namespace: "orders", Name: "keyed", IdempotencyKey: "k1"})
	if _, err := eng.CreateTask(ctx, tasker.TaskRequest{Namespace: "orders", Name: "keyed", IdempotencyKey: "k1"}); !errors.Is(err, tasker.ErrDuplicateTask) {
		t.Fatalf("repeated key on caller_provided: %v, want ErrDuplicateTask", err)
	}
	// always_unique accepts identical requests.
	same := tasker.TaskRequest{Namespace: "orders", Name: "unique", Context: map[string]int{"n": 1}}
	a, b := createTask(t, eng, same), createTask(t, eng, same)
	if a.UUID == b.UUID {
		t.Fatal("always_unique returned the same task twice")
	}
	if n := countRows(t, path, `SELECT COUNT(*) FROM tasker_tasks`); n != 5 {
		t.Fatalf("%d tasks stored, want 5", n)
	}
	if _, err := eng.GetTask(ctx, "00000000-0000-0000-0000-000000000000"); !errors.Is(err, tasker.ErrTaskNotFound) {
		t.Fatalf("GetTask of an unknown task: %v, want ErrTaskNotFound", err)
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := eng.WaitTask(wctx, "00000000-0000-0000-0000-000000000000"); !errors.Is(err, tasker.ErrTaskNotFound) {
		t.Fatalf("WaitTask of an unknown task: %v, want ErrTaskNotFound", err)
	}
}

// TestRegisterTemplate checks template registration: every problem is
// reported at once and nothing is stored, identical re-registration is a
// no-op, and a version cannot change.
func TestRegisterTemplate(t *testing.T) {
	t.Parallel()
	eng, path := openEngine(t, engineOptions{noStart: true})
	ctx := context.Background()

	bad := `
name: broken
namespace_name: orders
version: 1.0.0
steps:
  - name: first
    handler: {}
    retry: {max_attempts: -1}
  - name: second
    handler: {callable: orders.ship}
    dependencies: [missing_step]
  - name: loop_a
    handler: {callable: orders.ship}
    dependencies: [loop_b]
  - name: loop_b
    handler: {callable: orders.ship}
    dependencies: [loop_a]
`
	err := eng.RegisterTemplate(ctx, []byte(bad))
	if !errors.Is(err, tasker.ErrInvalidTemplate) {
		t.Fatalf("RegisterTemplate of a broken template: %v, want ErrInvalidTemplate", err)
	}
	t.Logf("problems:\n%v", err)
	for _, want := range []string{"callable", "max_attempts", "missing_step", "loop_a"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not report the %s problem:\n%v", want, err)
		}
	}
	if n := countRows(t, path, `SELECT COUNT(*) FROM tasker_templates`); n != 0 {
		t.Fatalf("an invalid template was stored (%d rows)", n)
	}
	if _, err := eng.CreateTask(ctx, tasker.TaskRequest{Namespace: "orders", Name: "broken"}); !errors.Is(err, tasker.ErrTemplateNotFound) {
		t.Fatalf("CreateTask from a refused template: %v, want ErrTemplateNotFound", err)
	}
	if err := eng.RegisterTemplate(ctx, []byte("name: [unterminated")); !errors.Is(err, tasker.ErrInvalidTemplate) {
		t.Fatalf("RegisterTemplate of invalid YAML: %v, want ErrInvalidTemplate", err)
	}

	if err := eng.RegisterTemplate(ctx, []byte(ordersYAML)); err != nil {
		t.Fatal(err)
	}
	if err := eng.RegisterTemplate(ctx, []byte(ordersYAML)); err != nil {
		t.Fatalf("re-registering identical content: %v", err)
	}
	changed := strings.Replace(ordersYAML, "dependencies: [charge]", "dependencies: []", 1)
	err = eng.RegisterTemplate(ctx, []byte(changed))
	if err == nil {
		t.Fatal("re-registering version 1.0.0 with different content was accepted")
	}
	if !strings.Contains(err.Error(), "1.0.0") {
		t.Errorf("conflict error does not name the version: %v", err)
	}
	if n := countRows(t, path, `SELECT COUNT(*) FROM tasker_templates`); n != 1 {
		t.Fatalf("%d templates stored, want 1", n)
	}
	// The original version is untouched, and a new version may be added.
	task := createTask(t, eng, tasker.TaskRequest{Namespace: "orders", Name: "checkout",
		Context: map[string]any{"order_id": "A", "amount": 1}})
	if steps := stepsByName(t, eng, task.UUID); len(steps["ship"].Dependencies) != 1 {
		t.Fatalf("ship depends on %v after a refused change", steps["ship"].Dependencies)
	}
	v2 := strings.Replace(changed, "version: 1.0.0", "version: 1.1.0", 1)
	if err := eng.RegisterTemplate(ctx, []byte(v2)); err != nil {
		t.Fatalf("registering a new version: %v", err)
	}
	latest := createTask(t, eng, tasker.TaskRequest{Namespace: "orders", Name: "checkout",
		Context: map[string]any{"order_id": "B", "amount": 1}})
	if latest.Version != "1.1.0" {
		t.Fatalf("an empty Version selected %s, want the highest, 1.1.0", latest.Version)
	}
}

// TestClosedEngine checks that an engine used after Close returns errors
// that say so, and does not panic.
func TestClosedEngine(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "tasker.db")
	ctx := context.Background()
	eng, err := tasker.Open(ctx, tasker.Config{DatabaseURL: "sqlite://" + path, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := eng.RegisterTemplate(ctx, []byte(uniqueYAML)); err != nil {
		t.Fatal(err)
	}
	eng.Handle("orders.charge", tasker.HandlerFunc(succeed))
	if err := eng.Start(ctx); err != nil {
		t.Fatal(err)
	}
	task := createTask(t, eng, tasker.TaskRequest{Namespace: "orders", Name: "unique"})
	if err := eng.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := eng.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	closedErr := func(op string, err error) {
		t.Helper()
		if err == nil {
			t.Errorf("%s on a closed engine succeeded", op)
			return
		}
		t.Logf("%s: %v", op, err)
		if !strings.Contains(err.Error(), "closed") {
			t.Errorf("%s on a closed engine: %q does not say the database is closed", op, err)
		}
	}
	_, err = eng.CreateTask(ctx, tasker.TaskRequest{Namespace: "orders", Name: "unique"})
	closedErr("CreateTask", err)
	_, err = eng.GetTask(ctx, task.UUID)
	closedErr("GetTask", err)
	_, err = eng.TaskSteps(ctx, task.UUID)
	closedErr("TaskSteps", err)
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err = eng.WaitTask(wctx, task.UUID)
	closedErr("WaitTask", err)
	_, err = eng.CancelTask(ctx, task.UUID)
	closedErr("CancelTask", err)
	closedErr("RegisterTemplate", eng.RegisterTemplate(ctx, []byte(ordersYAML)))
	if err := eng.Start(ctx); err == nil {
		t.Error("Start on a closed engine succeeded")
	}
}

// TestOpenConfig checks that Open refuses invalid configuration and names
// the field at fault.
func TestOpenConfig(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	url := "sqlite://" + filepath.Join(dir, "tasker.db")
	tests := []struct {
		name string
		cfg  tasker.Config
		want []string
	}{
		{"negative concurrency", tasker.Config{Concurrency: -1}, []string{"Concurrency"}},
		{"negative completion buffer", tasker.Config{CompletionBuffer: -5}, []string{"CompletionBuffer"}},
		{"negative lease", tasker.Config{StepLease: -time.Second}, []string{"StepLease"}},
		{"tiny lease", tasker.Config{StepLease: time.Millisecond}, []string{"StepLease"}},
		{"negative timeout", tasker.Config{DefaultStepTimeout: -time.Second}, []string{"DefaultStepTimeout"}},
		{"negative poll", tasker.Config{PollInterval: -time.Second}, []string{"PollInterval"}},
		{"jitter above 1", tasker.Config{RetryJitter: 1.5}, []string{"RetryJitter"}},
		{"unknown deployment mode", tasker.Config{DeploymentMode: "push"}, []string{"DeploymentMode", "push"}},
		{"event driven without notifications", tasker.Config{DeploymentMode: tasker.DeploymentEventDrivenOnly}, []string{"DeploymentMode", "sqlite"}},
		{"bad synchronous", tasker.Config{SQLiteSynchronous: "OFF"}, []string{"SQLiteSynchronous"}},
		{"negative busy timeout", tasker.Config{SQLiteBusyTimeout: -time.Second}, []string{"SQLiteBusyTimeout"}},
		{"several at once", tasker.Config{Concurrency: -1, PollInterval: -1}, []string{"Concurrency", "PollInterval"}},
		{"unknown scheme", tasker.Config{DatabaseURL: "mysql://localhost/tasker"}, []string{"DatabaseURL", "scheme"}},
		{"no scheme", tasker.Config{DatabaseURL: filepath.Join(dir, "x.db")}, []string{"DatabaseURL"}},
		{"sqlite without file", tasker.Config{DatabaseURL: "sqlite://"}, []string{"DatabaseURL"}},
		{"missing directory", tasker.Config{DatabaseURL: "sqlite://" + filepath.Join(dir, "no", "such", "dir", "x.db")}, []string{"directory", "no/such/dir"}},
	}
	for _, tc := range tests {
		cfg := tc.cfg
		if cfg.DatabaseURL == "" {
			cfg.DatabaseURL = url
		}
		eng, err := tasker.Open(context.Background(), cfg)
		if err == nil {
			eng.Close()
			t.Errorf("%s: Open accepted %+v", tc.name, tc.cfg)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q does not name %s", tc.name, err, w)
			}
		}
	}
	// A valid configuration with every field set opens.
	eng, err := tasker.Open(context.Background(), tasker.Config{DatabaseURL: url, Concurrency: 3, CompletionBuffer: 7,
		StepLease: time.Second, DefaultStepTimeout: time.Minute, PollInterval: time.Second, RetryJitter: -1,
		SQLiteSynchronous: "full", SQLiteBusyTimeout: time.Second, Namespaces: []string{"orders"}, Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("valid config refused: %v", err)
	}
	if err := eng.Close(); err != nil {
		t.Fatal(err)
	}
}
