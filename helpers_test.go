package tasker_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	_ "modernc.org/sqlite" // database/sql driver for reading the store directly

	"github.com/tasker-go/tasker"
)

// waitBudget bounds every wait in these tests. It is generous on purpose:
// the tests assert outcomes, not speed.
const waitBudget = 20 * time.Second

// engineOptions describes the engine a test needs.
type engineOptions struct {
	cfg       tasker.Config
	templates []string
	handlers  map[string]tasker.HandlerFunc
	// noStart leaves the engine unstarted (client mode).
	noStart bool
	// path reuses an existing database file instead of a fresh one.
	path string
}

// openEngine opens an engine on a SQLite file in t.TempDir() (or
// o.path), registers o's templates and handlers, starts it unless
// o.noStart, and closes it when the test ends. An unset PollInterval gets a
// small value so that tests run fast. StepLease keeps the engine's default
// unless a test needs otherwise: a short lease on a loaded machine (go test
// runs packages in parallel, and -race slows everything) expires under a
// stalled heartbeat and makes a healthy step run twice.
func openEngine(t testing.TB, o engineOptions) (*tasker.Engine, string) {
	t.Helper()
	path := o.path
	if path == "" {
		path = filepath.Join(t.TempDir(), "tasker.db")
	}
	cfg := o.cfg
	cfg.DatabaseURL = "sqlite://" + path
	if cfg.PollInterval == 0 {
		cfg.PollInterval = 50 * time.Millisecond
	}
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	ctx := context.Background()
	eng, err := tasker.Open(ctx, cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := eng.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	for _, doc := range o.templates {
		if err := eng.RegisterTemplate(ctx, []byte(doc)); err != nil {
			t.Fatalf("RegisterTemplate: %v", err)
		}
	}
	for name, h := range o.handlers {
		eng.Handle(name, h)
	}
	if !o.noStart {
		if err := eng.Start(ctx); err != nil {
			t.Fatalf("Start: %v", err)
		}
	}
	return eng, path
}

// testLogger sends warnings and errors to the test's output, so that they
// show up with -v or when the test fails.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

func createTask(t testing.TB, eng *tasker.Engine, req tasker.TaskRequest) *tasker.Task {
	t.Helper()
	task, err := eng.CreateTask(context.Background(), req)
	if err != nil {
		t.Fatalf("CreateTask %s/%s: %v", req.Namespace, req.Name, err)
	}
	return task
}

// waitTask waits for the task to settle (terminal or blocked_by_failures).
func waitTask(t testing.TB, eng *tasker.Engine, taskUUID string) *tasker.Task {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitBudget)
	defer cancel()
	task, err := eng.WaitTask(ctx, taskUUID)
	if err != nil {
		dumpTask(t, eng, taskUUID)
		t.Fatalf("WaitTask %s: %v", taskUUID, err)
	}
	return task
}

// runTask creates a task and waits for it to settle.
func runTask(t testing.TB, eng *tasker.Engine, req tasker.TaskRequest) (*tasker.Task, map[string]tasker.Step) {
	t.Helper()
	task := createTask(t, eng, req)
	task = waitTask(t, eng, task.UUID)
	return task, stepsByName(t, eng, task.UUID)
}

func stepsByName(t testing.TB, eng *tasker.Engine, taskUUID string) map[string]tasker.Step {
	t.Helper()
	steps, err := eng.TaskSteps(context.Background(), taskUUID)
	if err != nil {
		t.Fatalf("TaskSteps %s: %v", taskUUID, err)
	}
	out := make(map[string]tasker.Step, len(steps))
	for _, s := range steps {
		out[s.Name] = s
	}
	return out
}

func stepTransitions(t testing.TB, eng *tasker.Engine, stepUUID string) []tasker.Transition {
	t.Helper()
	tr, err := eng.StepTransitions(context.Background(), stepUUID)
	if err != nil {
		t.Fatalf("StepTransitions %s: %v", stepUUID, err)
	}
	return tr
}

func taskTransitions(t testing.TB, eng *tasker.Engine, taskUUID string) []tasker.Transition {
	t.Helper()
	tr, err := eng.TaskTransitions(context.Background(), taskUUID)
	if err != nil {
		t.Fatalf("TaskTransitions %s: %v", taskUUID, err)
	}
	return tr
}

// dumpTask logs a task and its steps, to explain a failure.
func dumpTask(t testing.TB, eng *tasker.Engine, taskUUID string) {
	t.Helper()
	ctx := context.Background()
	task, err := eng.GetTask(ctx, taskUUID)
	if err != nil {
		t.Logf("GetTask %s: %v", taskUUID, err)
		return
	}
	t.Logf("task %s: state=%s status=%s", task.UUID, task.State, task.ExecutionStatus)
	steps, _ := eng.TaskSteps(ctx, taskUUID)
	for _, s := range steps {
		t.Logf("  step %-10s state=%-36s attempts=%d/%d result=%s error=%+v blocked=%q",
			s.Name, s.State, s.Attempts, s.MaxAttempts, s.Result, s.Error, s.BlockedReason)
	}
}

// wantTask checks a settled task's state and execution status.
func wantTask(t testing.TB, task *tasker.Task, state, status string) {
	t.Helper()
	if task.State != state || task.ExecutionStatus != status {
		t.Fatalf("task %s: state %q, execution status %q; want %q, %q", task.UUID, task.State, task.ExecutionStatus, state, status)
	}
}

// wantStep checks a step's state and number of attempts.
func wantStep(t testing.TB, steps map[string]tasker.Step, name, state string, attempts int) tasker.Step {
	t.Helper()
	s, ok := steps[name]
	if !ok {
		t.Fatalf("no step %q", name)
	}
	if s.State != state || s.Attempts != attempts {
		t.Fatalf("step %s: state %q after %d attempts (error %+v); want %q after %d", name, s.State, s.Attempts, s.Error, state, attempts)
	}
	return s
}

// wantError checks a step's last error.
func wantError(t testing.TB, s tasker.Step, typ string, retryable bool, msgContains ...string) {
	t.Helper()
	if s.Error == nil {
		t.Fatalf("step %s: no error recorded, want type %s", s.Name, typ)
	}
	if s.Error.Type != typ || s.Error.Retryable != retryable {
		t.Fatalf("step %s: error type %q retryable %v (%q); want type %q retryable %v", s.Name, s.Error.Type, s.Error.Retryable, s.Error.Message, typ, retryable)
	}
	for _, m := range msgContains {
		if !strings.Contains(s.Error.Message, m) {
			t.Fatalf("step %s: error message %q does not contain %q", s.Name, s.Error.Message, m)
		}
	}
}

// wantResult checks a step's JSON result.
func wantResult(t testing.TB, steps map[string]tasker.Step, name string, want any) {
	t.Helper()
	b, err := json.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(steps[name].Result); got != string(b) {
		t.Fatalf("step %s: result %s, want %s", name, got, b)
	}
}

// metadata decodes a transition's metadata.
func metadata(t testing.TB, tr tasker.Transition) map[string]any {
	t.Helper()
	if len(tr.Metadata) == 0 {
		return nil
	}
	var m map[string]any
	if err := json.Unmarshal(tr.Metadata, &m); err != nil {
		t.Fatalf("transition %s→%s metadata %s: %v", tr.From, tr.To, tr.Metadata, err)
	}
	return m
}

// countRows counts rows of a table by reading the SQLite file directly,
// for the few assertions that have no public read (nothing stored).
func countRows(t testing.TB, path, query string, args ...any) int {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro&_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	if err := db.QueryRow(query, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}

// eventually polls cond until it holds or the wait budget runs out.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitBudget)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// errFlaky is what failing test handlers return.
var errFlaky = errors.New("flaky dependency is down")

// alwaysFail is a handler that fails retryably on every attempt.
func alwaysFail(context.Context, *tasker.StepContext) (any, error) {
	return nil, fmt.Errorf("attempt failed: %w", errFlaky)
}

// succeed is a handler that succeeds with its step name.
func succeed(_ context.Context, s *tasker.StepContext) (any, error) {
	return s.StepName + " done", nil
}
