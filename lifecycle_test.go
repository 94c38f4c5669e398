package tasker_test

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tasker-go/tasker"
)

// TestClientEngine uses a second engine on the same database that is never
// started: it creates, reads and waits for tasks that the first engine runs.
func TestClientEngine(t *testing.T) {
	t.Parallel()
	runner, path := openEngine(t, engineOptions{
		cfg:       tasker.Config{PollInterval: 100 * time.Millisecond},
		templates: []string{linearYAML},
		handlers:  map[string]tasker.HandlerFunc{"math.op": mathOp},
	})
	client, _ := openEngine(t, engineOptions{path: path, noStart: true})
	ctx := context.Background()

	created := time.Now()
	task, err := client.CreateTask(ctx, tasker.TaskRequest{Namespace: "math", Name: "linear_math",
		Context: map[string]int{"even_number": 6}})
	if err != nil {
		t.Fatalf("client CreateTask: %v", err)
	}
	if task.TotalSteps != 4 {
		t.Fatalf("client sees %d steps", task.TotalSteps)
	}
	task = waitTask(t, client, task.UUID)
	wantTask(t, task, "complete", "all_complete")
	steps := stepsByName(t, client, task.UUID)
	wantResult(t, steps, "s4", int64(2821109907456))

	// The runner learned of the task only by polling; it must have done so
	// within a few poll intervals, not at some much later sweep.
	first := stepTransitions(t, client, steps["s1"].UUID)
	for _, tr := range first {
		if tr.To == "in_progress" {
			lag := tr.CreatedAt.Sub(created)
			t.Logf("runner claimed the client's first step after %s", lag)
			if lag > 3*time.Second {
				t.Errorf("runner took %s to notice work created by another engine (PollInterval 100ms)", lag)
			}
		}
	}
	// Both engines see the same task.
	same, err := runner.GetTask(ctx, task.UUID)
	if err != nil || same.State != "complete" {
		t.Fatalf("runner GetTask: %+v, %v", same, err)
	}
	// Further tasks from the client run too.
	other, err := client.CreateTask(ctx, tasker.TaskRequest{Namespace: "math", Name: "linear_math",
		Context: map[string]int{"even_number": 2}})
	if err != nil {
		t.Fatal(err)
	}
	if got := waitTask(t, client, other.UUID); got.State != "complete" {
		t.Fatalf("second task %s", got.State)
	}
}

const drainYAML = `
name: drain
namespace_name: life
version: 1.0.0
steps:
  - name: a
    handler: {callable: life.slow}
  - name: b
    handler: {callable: life.slow}
  - name: c
    handler: {callable: life.slow}
  - name: after
    handler: {callable: life.ok}
    dependencies: [a, b, c]
`

// TestGracefulStop stops an engine while handlers run: with a budget that
// suffices, they finish and their results are stored; with one that does
// not, their steps are handed back and a later engine finishes the task.
func TestGracefulStop(t *testing.T) {
	t.Parallel()
	t.Run("within budget", func(t *testing.T) {
		t.Parallel()
		var started, finished atomic.Int32
		eng, path := openEngine(t, engineOptions{
			cfg:       tasker.Config{Concurrency: 4},
			templates: []string{drainYAML},
			handlers: map[string]tasker.HandlerFunc{
				"life.slow": func(ctx context.Context, s *tasker.StepContext) (any, error) {
					started.Add(1)
					defer finished.Add(1)
					select {
					case <-time.After(400 * time.Millisecond):
						return s.StepName + " finished", nil
					case <-ctx.Done():
						return nil, ctx.Err()
					}
				},
				"life.ok": succeed,
			},
		})
		task := createTask(t, eng, tasker.TaskRequest{Namespace: "life", Name: "drain"})
		eventually(t, "three handlers to start", func() bool { return started.Load() == 3 })
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := eng.Stop(ctx); err != nil {
			t.Fatalf("Stop: %v", err)
		}
		if n := finished.Load(); n != 3 {
			t.Fatalf("Stop returned with %d of 3 handlers finished", n)
		}
		steps := stepsByName(t, eng, task.UUID)
		for _, name := range []string{"a", "b", "c"} {
			wantStep(t, steps, name, "complete", 1)
			wantResult(t, steps, name, name+" finished")
		}
		// The stopped worker claimed nothing more; the next engine runs the
		// rest.
		if s := steps["after"]; s.Attempts != 0 {
			t.Fatalf("step after ran during shutdown: %+v", s)
		}
		next, _ := openEngine(t, engineOptions{path: path, templates: []string{drainYAML},
			handlers: map[string]tasker.HandlerFunc{"life.slow": alwaysFail, "life.ok": succeed}})
		task = waitTask(t, next, task.UUID)
		wantTask(t, task, "complete", "all_complete")
		wantStep(t, stepsByName(t, next, task.UUID), "after", "complete", 1)
	})

	t.Run("past budget", func(t *testing.T) {
		t.Parallel()
		var started atomic.Int32
		eng, path := openEngine(t, engineOptions{
			cfg:       tasker.Config{Concurrency: 4},
			templates: []string{drainYAML},
			handlers: map[string]tasker.HandlerFunc{
				"life.slow": func(ctx context.Context, _ *tasker.StepContext) (any, error) {
					started.Add(1)
					<-ctx.Done()
					return nil, ctx.Err()
				},
				"life.ok": succeed,
			},
		})
		task := createTask(t, eng, tasker.TaskRequest{Namespace: "life", Name: "drain"})
		eventually(t, "three handlers to start", func() bool { return started.Load() == 3 })
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		err := eng.Stop(ctx)
		if err == nil {
			t.Fatal("Stop past its budget returned nil")
		}
		t.Logf("Stop: %v", err)
		steps := stepsByName(t, eng, task.UUID)
		// An interrupted attempt is given back: the step is runnable again
		// at once with its attempt uncounted. One whose result was not
		// written stays in_progress until its lease hands it back.
		wantAttempts := map[string]int{}
		for _, name := range []string{"a", "b", "c"} {
			s := steps[name]
			t.Logf("step %s after interrupted stop: %s attempts %d, error %+v", name, s.State, s.Attempts, s.Error)
			switch s.State {
			case "waiting_for_retry", "enqueued":
				wantError(t, s, "worker_stopping", true)
				if s.Attempts != 0 {
					t.Errorf("released step %s counts %d attempts, want 0", name, s.Attempts)
				}
				wantAttempts[name] = 1
			case "in_progress":
				wantAttempts[name] = 2
			default:
				t.Errorf("interrupted step %s is %s", name, s.State)
			}
		}
		next, _ := openEngine(t, engineOptions{path: path, templates: []string{drainYAML},
			handlers: map[string]tasker.HandlerFunc{"life.slow": succeed, "life.ok": succeed}})
		task = waitTask(t, next, task.UUID)
		wantTask(t, task, "complete", "all_complete")
		steps = stepsByName(t, next, task.UUID)
		for _, name := range []string{"a", "b", "c"} {
			if s := steps[name]; s.State != "complete" || s.Attempts != wantAttempts[name] {
				t.Errorf("step %s: %s after %d attempts, want complete after %d", name, s.State, s.Attempts, wantAttempts[name])
			}
		}
	})
}

// TestStartStop checks the engine's lifecycle calls.
func TestStartStop(t *testing.T) {
	t.Parallel()
	eng, _ := openEngine(t, engineOptions{templates: []string{linearYAML}, handlers: map[string]tasker.HandlerFunc{"math.op": mathOp}})
	ctx := context.Background()
	if err := eng.Start(ctx); err == nil || !strings.Contains(err.Error(), "started") {
		t.Fatalf("second Start: %v", err)
	}
	if err := eng.Stop(ctx); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if err := eng.Stop(ctx); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	// A stopped engine can be started again and runs tasks.
	if err := eng.Start(ctx); err != nil {
		t.Fatalf("Start after Stop: %v", err)
	}
	task, steps := runTask(t, eng, tasker.TaskRequest{Namespace: "math", Name: "linear_math", Context: map[string]int{"even_number": 2}})
	wantTask(t, task, "complete", "all_complete")
	wantResult(t, steps, "s4", 65536)
}
