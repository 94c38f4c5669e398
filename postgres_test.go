package tasker_test

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tasker-go/tasker"
	"github.com/tasker-go/tasker/store/postgres/pgtest"
)

// storeOpeners open an engine on each store, by store name.
var storeOpeners = map[string]func(t *testing.T, o engineOptions) *tasker.Engine{
	"sqlite": func(t *testing.T, o engineOptions) *tasker.Engine {
		eng, _ := openEngine(t, o)
		return eng
	},
	"postgres": openPostgresEngine,
}

// openPostgresEngine is openEngine on PostgreSQL: the engine works in a
// schema of its own on the test database, dropped when the test ends. It
// skips the test when PostgreSQL is unreachable (see pgtest).
func openPostgresEngine(t *testing.T, o engineOptions) *tasker.Engine {
	t.Helper()
	url := pgtest.URL(t)
	cfg := o.cfg
	cfg.DatabaseURL = url
	cfg.PostgresSchema = pgtest.Schema(t, url)
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
	if err := eng.Start(ctx); err != nil {
		t.Fatalf("Start: %v", err)
	}
	return eng
}

// resultValue decodes a step's result. PostgreSQL stores JSON as jsonb,
// which keeps the value but not the spelling, so results compare by value.
func resultValue[T any](t *testing.T, s tasker.Step) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(s.Result, &v); err != nil {
		t.Fatalf("step %s: result %s: %v", s.Name, s.Result, err)
	}
	return v
}

// TestPostgresLinearWorkflow runs 20 four-step squaring tasks at once on
// PostgreSQL: 6^(2^4) each.
func TestPostgresLinearWorkflow(t *testing.T) {
	t.Parallel()
	eng := openPostgresEngine(t, engineOptions{
		templates: []string{linearYAML},
		handlers:  map[string]tasker.HandlerFunc{"math.op": mathOp},
	})
	const tasks = 20
	ctx, cancel := context.WithTimeout(context.Background(), waitBudget)
	defer cancel()
	// Created and awaited from 20 goroutines at once; checked afterwards,
	// because only the test's goroutine may stop it.
	settled := make([]*tasker.Task, tasks)
	var wg sync.WaitGroup
	for i := range tasks {
		wg.Go(func() {
			// Same context each time: the idempotency key keeps the
			// template's strict identity from folding them into one task.
			task, err := eng.CreateTask(ctx, tasker.TaskRequest{Namespace: "math", Name: "linear_math",
				Context: map[string]int{"even_number": 6}, IdempotencyKey: "linear-" + strconv.Itoa(i)})
			if err != nil {
				t.Errorf("CreateTask %d: %v", i, err)
				return
			}
			if settled[i], err = eng.WaitTask(ctx, task.UUID); err != nil {
				t.Errorf("WaitTask %s: %v", task.UUID, err)
			}
		})
	}
	wg.Wait()
	_, err := eng.CreateTask(ctx, tasker.TaskRequest{Namespace: "math", Name: "linear_math",
		Context: map[string]int{"even_number": 6}, IdempotencyKey: "linear-0"})
	if !errors.Is(err, tasker.ErrDuplicateTask) {
		t.Errorf("CreateTask with a used idempotency key: %v, want ErrDuplicateTask", err)
	}
	for _, task := range settled {
		if task == nil {
			continue
		}
		wantTask(t, task, "complete", "all_complete")
		steps := stepsByName(t, eng, task.UUID)
		for _, name := range []string{"s1", "s2", "s3", "s4"} {
			wantStep(t, steps, name, "complete", 1)
		}
		if got := resultValue[int64](t, steps["s4"]); got != 2821109907456 {
			t.Errorf("task %s: s4 = %d, want 2821109907456", task.UUID, got)
		}
	}
}

// TestPostgresRetryThenSuccess has a step fail twice and succeed on its third
// attempt, after its backoff.
func TestPostgresRetryThenSuccess(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var seen []int
	eng := openPostgresEngine(t, engineOptions{
		cfg: tasker.Config{RetryJitter: -1},
		templates: []string{singleStep("flaky", "fail.flaky",
			"retry: {max_attempts: 3, backoff: linear, backoff_base_ms: 20}")},
		handlers: map[string]tasker.HandlerFunc{
			"fail.flaky": func(_ context.Context, s *tasker.StepContext) (any, error) {
				mu.Lock()
				seen = append(seen, s.Attempt)
				mu.Unlock()
				if s.Attempt < 3 {
					return nil, errFlaky
				}
				return map[string]int{"attempt": s.Attempt}, nil
			},
		},
	})
	task, steps := runTask(t, eng, tasker.TaskRequest{Namespace: "fail", Name: "flaky"})
	wantTask(t, task, "complete", "all_complete")
	s := wantStep(t, steps, "only", "complete", 3)
	if got := resultValue[map[string]int](t, s); got["attempt"] != 3 {
		t.Errorf("result %s, want attempt 3", s.Result)
	}
	wantError(t, s, "handler_error", true, errFlaky.Error())
	mu.Lock()
	if !slices.Equal(seen, []int{1, 2, 3}) {
		t.Errorf("handler saw attempts %v, want [1 2 3]", seen)
	}
	mu.Unlock()
	var retries int
	for _, tr := range stepTransitions(t, eng, s.UUID) {
		if tr.To == "waiting_for_retry" {
			retries++
		}
	}
	if retries != 2 {
		t.Errorf("%d retries recorded, want 2", retries)
	}
}

// TestPostgresCancelTask cancels a task while its first step runs: the
// running and the waiting steps end cancelled, and the running handler's
// late result changes nothing.
func TestPostgresCancelTask(t *testing.T) {
	t.Parallel()
	started := make(chan struct{})
	finish := make(chan struct{})
	returned := make(chan struct{})
	eng := openPostgresEngine(t, engineOptions{
		templates: []string{`
name: cancellable
namespace_name: ops
version: 1.0.0
steps:
  - name: slow
    handler: {callable: ops.slow}
  - name: after
    handler: {callable: ops.later}
    dependencies: [slow]
`},
		handlers: map[string]tasker.HandlerFunc{
			"ops.slow": func(context.Context, *tasker.StepContext) (any, error) {
				close(started)
				<-finish
				defer close(returned)
				return "late result", nil
			},
			"ops.later": succeed,
		},
	})
	ctx := context.Background()
	task := createTask(t, eng, tasker.TaskRequest{Namespace: "ops", Name: "cancellable"})
	<-started
	cancelled, err := eng.CancelTask(ctx, task.UUID)
	if err != nil {
		t.Fatalf("CancelTask: %v", err)
	}
	if cancelled.State != "cancelled" {
		t.Fatalf("CancelTask returned state %q", cancelled.State)
	}
	if got := waitTask(t, eng, task.UUID); got.State != "cancelled" {
		t.Fatalf("WaitTask returned state %q, want cancelled", got.State)
	}

	close(finish)
	<-returned
	stopCtx, cancel := context.WithTimeout(ctx, waitBudget)
	defer cancel()
	if err := eng.Stop(stopCtx); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	got, err := eng.GetTask(ctx, task.UUID)
	if err != nil {
		t.Fatal(err)
	}
	if got.State != "cancelled" {
		t.Fatalf("after the late result: task state %q", got.State)
	}
	steps := stepsByName(t, eng, task.UUID)
	if slow := wantStep(t, steps, "slow", "cancelled", 1); len(slow.Result) != 0 {
		t.Errorf("cancelled step took the late result %s", slow.Result)
	}
	wantStep(t, steps, "after", "cancelled", 0)
}

// TestPostgresConfigValidation checks that Open names the PostgreSQL field
// that is wrong, before connecting to anything.
func TestPostgresConfigValidation(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		cfg   tasker.Config
		field string
	}{
		{tasker.Config{PostgresSchema: "Tasker"}, "Config.PostgresSchema"},
		{tasker.Config{PostgresSchema: "pg_tasker"}, "Config.PostgresSchema"},
		{tasker.Config{PostgresSchema: "a;b"}, "Config.PostgresSchema"},
		{tasker.Config{PostgresMaxConns: -1}, "Config.PostgresMaxConns"},
	} {
		c.cfg.DatabaseURL = "postgres://postgres@127.0.0.1:1/postgres"
		eng, err := tasker.Open(context.Background(), c.cfg)
		if err == nil {
			eng.Close()
			t.Errorf("Open(%+v) succeeded, want an error naming %s", c.cfg, c.field)
			continue
		}
		if !strings.Contains(err.Error(), c.field) {
			t.Errorf("Open(%+v) = %v, want an error naming %s", c.cfg, err, c.field)
		}
	}
}
