package tasker_test

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tasker-go/tasker"
)

// TestStepContext checks what a handler is told about its step.
func TestStepContext(t *testing.T) {
	t.Parallel()
	got := make(chan tasker.StepContext, 1)
	var cfgSeen, ctxSeen map[string]any
	eng, _ := openEngine(t, engineOptions{
		templates: []string{`
name: introspect
namespace_name: api
version: 2.1.0
steps:
  - name: look
    handler:
      callable: api.look
      method: inspect
      initialization: {region: eu, limits: {max: 3}}
    retry: {max_attempts: 4}
  - name: bare
    handler: {callable: api.bare}
`},
		handlers: map[string]tasker.HandlerFunc{
			"api.look": func(_ context.Context, s *tasker.StepContext) (any, error) {
				if err := s.HandlerConfig(&cfgSeen); err != nil {
					return nil, err
				}
				if err := s.DecodeContext(&ctxSeen); err != nil {
					return nil, err
				}
				if !json.Valid(s.Context()) {
					return nil, errors.New("Context() is not JSON")
				}
				got <- *s
				return nil, nil
			},
			// A step without initialization leaves the target untouched.
			"api.bare": func(_ context.Context, s *tasker.StepContext) (any, error) {
				v := map[string]string{"kept": "yes"}
				if err := s.HandlerConfig(&v); err != nil {
					return nil, err
				}
				return v, nil
			},
		},
	})
	task, steps := runTask(t, eng, tasker.TaskRequest{Namespace: "api", Name: "introspect",
		Context: map[string]any{"customer": "c-9", "items": []int{1, 2}}})
	wantTask(t, task, "complete", "all_complete")
	s := <-got
	look := steps["look"]
	if s.TaskUUID != task.UUID || s.StepUUID != look.UUID || s.StepName != "look" || s.Namespace != "api" ||
		s.TaskName != "introspect" || s.TaskVersion != "2.1.0" || s.Attempt != 1 || s.MaxAttempts != 4 || s.Method != "inspect" {
		t.Errorf("StepContext %+v does not describe task %s step %s", s, task.UUID, look.UUID)
	}
	if cfgSeen["region"] != "eu" || cfgSeen["limits"].(map[string]any)["max"] != float64(3) {
		t.Errorf("HandlerConfig gave %v", cfgSeen)
	}
	if ctxSeen["customer"] != "c-9" {
		t.Errorf("DecodeContext gave %v", ctxSeen)
	}
	wantResult(t, steps, "look", nil) // a nil value is stored as JSON null
	wantResult(t, steps, "bare", map[string]string{"kept": "yes"})
	if look.Callable != "api.look" || look.MaxAttempts != 4 || !look.Retryable {
		t.Errorf("step look reported as %+v", look)
	}
}

// TestRetryAfter checks that RetryAfter delays a retry beyond the step's
// own backoff.
func TestRetryAfter(t *testing.T) {
	t.Parallel()
	eng, _ := openEngine(t, engineOptions{
		cfg:       tasker.Config{RetryJitter: -1},
		templates: []string{singleStep("later", "fail.later", "retry: {max_attempts: 2, backoff: linear, backoff_base_ms: 10}")},
		handlers: map[string]tasker.HandlerFunc{
			"fail.later": func(_ context.Context, s *tasker.StepContext) (any, error) {
				if s.Attempt == 1 {
					return nil, tasker.RetryAfter(errors.New("rate limited"), 300*time.Millisecond)
				}
				return "ok", nil
			},
		},
	})
	task, steps := runTask(t, eng, tasker.TaskRequest{Namespace: "fail", Name: "later"})
	wantTask(t, task, "complete", "all_complete")
	s := wantStep(t, steps, "only", "complete", 2)
	trs := stepTransitions(t, eng, s.UUID)
	for i, tr := range trs {
		if tr.To != "waiting_for_retry" {
			continue
		}
		if md := metadata(t, tr); md["backoff_ms"] != float64(300) {
			t.Errorf("retry scheduled with backoff %v, want 300ms", md["backoff_ms"])
		}
		if gap := trs[i+1].CreatedAt.Sub(tr.CreatedAt); gap < 300*time.Millisecond {
			t.Errorf("retried after %s, before the 300ms RetryAfter", gap)
		}
	}
}

// TestPriority checks that higher-priority tasks are claimed first.
func TestPriority(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var order []string
	eng, _ := openEngine(t, engineOptions{
		// Without prefetch: a step claimed ahead of its turn has left the
		// queue, so a higher-priority step claimed later runs after it.
		cfg:       tasker.Config{Concurrency: 1, Prefetch: -1},
		templates: []string{singleStep("prio", "api.record", "")},
		handlers: map[string]tasker.HandlerFunc{
			"api.record": func(_ context.Context, s *tasker.StepContext) (any, error) {
				var c struct{ Label string }
				if err := s.DecodeContext(&c); err != nil {
					return nil, err
				}
				mu.Lock()
				order = append(order, c.Label)
				mu.Unlock()
				return nil, nil
			},
		},
		noStart: true,
	})
	var ids []string
	for _, p := range []struct {
		label    string
		priority int
	}{{"low", 0}, {"high", 10}, {"negative", -5}, {"mid", 5}} {
		task := createTask(t, eng, tasker.TaskRequest{Namespace: "fail", Name: "prio", Priority: p.priority,
			Context: map[string]string{"Label": p.label}})
		ids = append(ids, task.UUID)
	}
	if err := eng.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		waitTask(t, eng, id)
	}
	mu.Lock()
	defer mu.Unlock()
	if want := []string{"high", "mid", "low", "negative"}; !slices.Equal(order, want) {
		t.Fatalf("ran in order %v, want %v", order, want)
	}
}

// TestTemplatesAfterStart registers a template of a new namespace, and its
// handler, on a running engine; its tasks run.
func TestTemplatesAfterStart(t *testing.T) {
	t.Parallel()
	eng, _ := openEngine(t, engineOptions{templates: []string{linearYAML}, handlers: map[string]tasker.HandlerFunc{"math.op": mathOp}})
	if err := eng.RegisterTemplate(context.Background(), []byte(singleStep("late", "late.ok", ""))); err != nil {
		t.Fatal(err)
	}
	eng.Handle("late.ok", tasker.HandlerFunc(succeed))
	task, steps := runTask(t, eng, tasker.TaskRequest{Namespace: "fail", Name: "late"})
	wantTask(t, task, "complete", "all_complete")
	wantResult(t, steps, "only", "only done")
}

// TestNamespaces checks that an engine limited to some namespaces leaves
// the others' steps to other engines.
func TestNamespaces(t *testing.T) {
	t.Parallel()
	other := singleStep("elsewhere", "api.elsewhere", "")
	limited, path := openEngine(t, engineOptions{
		cfg:       tasker.Config{Namespaces: []string{"math"}},
		templates: []string{linearYAML, other},
		handlers:  map[string]tasker.HandlerFunc{"math.op": mathOp, "api.elsewhere": succeed},
	})
	outside := createTask(t, limited, tasker.TaskRequest{Namespace: "fail", Name: "elsewhere"})
	inside, _ := runTask(t, limited, tasker.TaskRequest{Namespace: "math", Name: "linear_math", Context: map[string]int{"even_number": 2}})
	wantTask(t, inside, "complete", "all_complete")
	// By the time a whole four-step task has run, the other namespace's
	// single step would have been claimed if the engine listened to it.
	if s := stepsByName(t, limited, outside.UUID)["only"]; s.Attempts != 0 {
		t.Fatalf("an engine limited to math ran a step of namespace fail: %+v", s)
	}
	openEngine(t, engineOptions{path: path, cfg: tasker.Config{Namespaces: []string{"fail"}},
		handlers: map[string]tasker.HandlerFunc{"api.elsewhere": succeed}})
	wantTask(t, waitTask(t, limited, outside.UUID), "complete", "all_complete")
}

// TestDefaultStepTimeout checks that Config.DefaultStepTimeout bounds steps
// whose template sets no timeout_seconds.
func TestDefaultStepTimeout(t *testing.T) {
	t.Parallel()
	eng, _ := openEngine(t, engineOptions{
		cfg:       tasker.Config{DefaultStepTimeout: 300 * time.Millisecond},
		templates: []string{singleStep("hang", "api.hang", "retry: {max_attempts: 1}")},
		handlers: map[string]tasker.HandlerFunc{
			"api.hang": func(ctx context.Context, _ *tasker.StepContext) (any, error) {
				<-ctx.Done()
				return nil, ctx.Err()
			},
		},
	})
	task, steps := runTask(t, eng, tasker.TaskRequest{Namespace: "fail", Name: "hang"})
	wantTask(t, task, "blocked_by_failures", "blocked_by_failures")
	wantError(t, wantStep(t, steps, "only", "error", 1), "timeout", true)
}

// TestConcurrencyLimit checks that no more than Config.Concurrency
// handlers run at once.
func TestConcurrencyLimit(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	running, peak := 0, 0
	eng, _ := openEngine(t, engineOptions{
		cfg: tasker.Config{Concurrency: 2},
		templates: []string{`
name: wide
namespace_name: api
version: 1.0.0
identity_strategy: always_unique
steps:
  - {name: a, handler: {callable: api.busy}}
  - {name: b, handler: {callable: api.busy}}
  - {name: c, handler: {callable: api.busy}}
  - {name: d, handler: {callable: api.busy}}
  - {name: e, handler: {callable: api.busy}}
  - {name: f, handler: {callable: api.busy}}
`},
		handlers: map[string]tasker.HandlerFunc{
			"api.busy": func(context.Context, *tasker.StepContext) (any, error) {
				mu.Lock()
				running++
				peak = max(peak, running)
				mu.Unlock()
				time.Sleep(50 * time.Millisecond)
				mu.Lock()
				running--
				mu.Unlock()
				return nil, nil
			},
		},
	})
	a := createTask(t, eng, tasker.TaskRequest{Namespace: "api", Name: "wide"})
	b := createTask(t, eng, tasker.TaskRequest{Namespace: "api", Name: "wide"})
	wantTask(t, waitTask(t, eng, a.UUID), "complete", "all_complete")
	wantTask(t, waitTask(t, eng, b.UUID), "complete", "all_complete")
	mu.Lock()
	defer mu.Unlock()
	if peak != 2 {
		t.Fatalf("at most %d handlers ran at once, want exactly Concurrency (2)", peak)
	}
}

// TestLeaseOutlivedByHeartbeat runs a step for longer than its lease: the
// worker's heartbeat (every third of the lease) keeps the lease, so the
// step runs once. The lease is 2s, not less: under the race detector and
// a loaded machine, a 1s lease was once lost to a heartbeat that could not
// run for over a second.
func TestLeaseOutlivedByHeartbeat(t *testing.T) {
	t.Parallel()
	eng, _ := openEngine(t, engineOptions{
		cfg:       tasker.Config{StepLease: 2 * time.Second, PollInterval: 50 * time.Millisecond},
		templates: []string{singleStep("long", "api.long", "")},
		handlers: map[string]tasker.HandlerFunc{
			"api.long": func(ctx context.Context, _ *tasker.StepContext) (any, error) {
				select {
				case <-time.After(3500 * time.Millisecond):
					return "survived", nil
				case <-ctx.Done():
					return nil, context.Cause(ctx)
				}
			},
		},
	})
	task, steps := runTask(t, eng, tasker.TaskRequest{Namespace: "fail", Name: "long"})
	wantTask(t, task, "complete", "all_complete")
	wantStep(t, steps, "only", "complete", 1)
	wantResult(t, steps, "only", "survived")
}
