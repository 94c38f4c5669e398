package tasker_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/tasker-go/tasker"
)

const queryTemplate = `
name: pair
namespace_name: query
version: 1.0.0
description: Two steps in a chain.
identity_strategy: always_unique
steps:
  - name: first
    handler: {callable: query.ok}
  - name: second
    dependencies: [first]
    handler: {callable: query.ok}
    retry: {max_attempts: 2, backoff: linear, backoff_base_ms: 10}
`

// TestListTasksPages walks a filtered task list page by page.
func TestListTasksPages(t *testing.T) {
	t.Parallel()
	eng, _ := openEngine(t, engineOptions{templates: []string{queryTemplate}, noStart: true})
	ctx := context.Background()
	want := map[string]bool{}
	for range 7 {
		want[createTask(t, eng, tasker.TaskRequest{Namespace: "query", Name: "pair"}).UUID] = true
	}
	seen := map[string]bool{}
	cursor, pages := "", 0
	for {
		page, err := eng.ListTasks(ctx, tasker.TaskFilter{Namespace: "query", Limit: 3, Cursor: cursor})
		if err != nil {
			t.Fatalf("ListTasks: %v", err)
		}
		pages++
		for _, task := range page.Tasks {
			if seen[task.UUID] || !want[task.UUID] {
				t.Fatalf("page %d: unexpected or repeated task %s", pages, task.UUID)
			}
			seen[task.UUID] = true
			if task.TotalSteps != 2 {
				t.Errorf("task %s TotalSteps = %d, want 2", task.UUID, task.TotalSteps)
			}
		}
		if page.NextCursor == "" {
			break
		}
		cursor = page.NextCursor
	}
	if len(seen) != 7 || pages != 3 {
		t.Errorf("saw %d tasks in %d pages, want 7 in 3", len(seen), pages)
	}
	if _, err := eng.ListTasks(ctx, tasker.TaskFilter{Cursor: "not a cursor!"}); !errors.Is(err, tasker.ErrInvalidCursor) {
		t.Errorf("ListTasks with a bad cursor = %v, want ErrInvalidCursor", err)
	}
	page, err := eng.ListTasks(ctx, tasker.TaskFilter{States: []string{"complete"}})
	if err != nil || len(page.Tasks) != 0 {
		t.Errorf("ListTasks(complete) = %v, %v; want none", page, err)
	}
}

// TestTaskStepReadiness checks the single-step view of an unstarted engine:
// the root is ready, its child waits for it and says so.
func TestTaskStepReadiness(t *testing.T) {
	t.Parallel()
	eng, _ := openEngine(t, engineOptions{templates: []string{queryTemplate}, noStart: true})
	ctx := context.Background()
	task := createTask(t, eng, tasker.TaskRequest{Namespace: "query", Name: "pair"})
	steps := stepsByName(t, eng, task.UUID)
	second, err := eng.TaskStep(ctx, task.UUID, steps["second"].UUID)
	if err != nil {
		t.Fatalf("TaskStep: %v", err)
	}
	if second.DependenciesSatisfied || second.BlockedReason == "" {
		t.Errorf("second: DependenciesSatisfied=%v BlockedReason=%q; want false and a reason", second.DependenciesSatisfied, second.BlockedReason)
	}
	other := createTask(t, eng, tasker.TaskRequest{Namespace: "query", Name: "pair"})
	if _, err := eng.TaskStep(ctx, other.UUID, steps["second"].UUID); !errors.Is(err, tasker.ErrStepNotFound) {
		t.Errorf("TaskStep of another task's step = %v, want ErrStepNotFound", err)
	}
}

// TestTemplatesAndHealth covers the template catalogue, queue stats, state
// counts and the health check.
func TestTemplatesAndHealth(t *testing.T) {
	t.Parallel()
	eng, _ := openEngine(t, engineOptions{templates: []string{queryTemplate}, noStart: true})
	ctx := context.Background()
	list, err := eng.Templates(ctx, "")
	if err != nil || len(list) != 1 || list[0].Name != "pair" || len(list[0].Steps) != 2 {
		t.Fatalf("Templates = %+v, %v", list, err)
	}
	if s := list[0].Steps[1]; s.MaxAttempts != 2 || s.Backoff != "linear" || len(s.Dependencies) != 1 {
		t.Errorf("step second = %+v", s)
	}
	if _, err := eng.Template(ctx, "query", "nope", ""); !errors.Is(err, tasker.ErrTemplateNotFound) {
		t.Errorf("Template(unknown) = %v, want ErrTemplateNotFound", err)
	}
	createTask(t, eng, tasker.TaskRequest{Namespace: "query", Name: "pair"})
	qs, err := eng.QueueStats(ctx)
	if err != nil || len(qs) != 1 || qs[0].Queue != "worker_query" || qs[0].Visible != 1 {
		t.Errorf("QueueStats = %+v, %v; want one visible message in worker_query", qs, err)
	}
	counts, err := eng.StateCounts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int64{}
	for _, c := range counts {
		got[c.Kind+"/"+c.State] += c.Count
	}
	if got["step/enqueued"] != 1 || got["step/pending"] != 1 {
		t.Errorf("StateCounts = %v", got)
	}
	h := eng.CheckHealth(ctx)
	if ok, reasons := h.Ready(); !ok || h.Started || !h.MigrationsCurrent {
		t.Errorf("CheckHealth = %+v, ready %v %v", h, ok, reasons)
	}
	if len(eng.PoolStats()) == 0 {
		t.Error("PoolStats is empty")
	}
}

// TestOnStepFinished checks that the hook sees every attempt with its
// outcome.
func TestOnStepFinished(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var seen []tasker.StepFinished
	eng, _ := openEngine(t, engineOptions{templates: []string{queryTemplate}, noStart: true,
		handlers: map[string]tasker.HandlerFunc{"query.ok": succeed}})
	eng.OnStepFinished(func(f tasker.StepFinished) {
		mu.Lock()
		seen = append(seen, f)
		mu.Unlock()
	})
	if err := eng.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	task, _ := runTask(t, eng, tasker.TaskRequest{Namespace: "query", Name: "pair"})
	wantTask(t, task, "complete", "all_complete")
	eventually(t, "two finished steps", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen) == 2
	})
	mu.Lock()
	defer mu.Unlock()
	for _, f := range seen {
		if !f.Success || f.TaskUUID != task.UUID || f.Namespace != "query" || f.Duration < 0 || f.Duration > time.Minute {
			t.Errorf("StepFinished = %+v", f)
		}
	}
}
