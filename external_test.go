package tasker_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tasker-go/tasker"
)

const externalMixedYAML = `
name: mixed
namespace_name: ext
version: 1.0.0
steps:
  - name: prepare
    handler: {callable: ext.prepare}
  - name: score
    handler:
      callable: ext.score
      method: compute
      initialization:
        factor: 3
    dependencies: [prepare]
  - name: report
    handler: {callable: ext.report}
    dependencies: [score]
`

const externalSingleYAML = `
name: foreign
namespace_name: ext
version: 1.0.0
steps:
  - name: only
    handler: {callable: ext.foreign}
    retry: {max_attempts: 3, backoff: linear, backoff_base_ms: 10}
`

// openExternalEngine opens an engine like openEngine, registers the
// external callables, then starts it.
func openExternalEngine(t *testing.T, o engineOptions, external ...string) (*tasker.Engine, string) {
	t.Helper()
	o.noStart = true
	eng, path := openEngine(t, o)
	for _, c := range external {
		eng.HandleExternal(c)
	}
	if err := eng.Start(context.Background()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	return eng, path
}

// foreignPoller drives the external channel as a process in another
// language would: it polls, calls handle, and completes the event unless
// handle returns false. It stops when the test ends.
func foreignPoller(t *testing.T, ch *tasker.ExternalChannel, handle func(ev *tasker.ExternalEvent) (tasker.ExternalResult, bool)) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			ev, err := ch.PollWait(ctx, 50*time.Millisecond)
			if errors.Is(err, tasker.ErrExternalClosed) {
				time.Sleep(10 * time.Millisecond) // not running (yet, or any more)
				continue
			}
			if err != nil {
				return
			}
			if ev == nil {
				continue
			}
			if r, ok := handle(ev); ok {
				if err := ch.Complete(ev.EventID, r); err != nil {
					t.Errorf("Complete %s: %v", ev.StepName, err)
				}
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}

// TestExternalMixedWorkflow runs Go → external → Go: the external step gets
// its full context and the Go step's result, and the last Go step reads the
// external step's result.
func TestExternalMixedWorkflow(t *testing.T) {
	t.Parallel()
	eng, _ := openExternalEngine(t, engineOptions{
		templates: []string{externalMixedYAML},
		handlers: map[string]tasker.HandlerFunc{
			"ext.prepare": func(_ context.Context, s *tasker.StepContext) (any, error) {
				var in struct{ Amount int }
				if err := s.DecodeContext(&in); err != nil {
					return nil, err
				}
				return map[string]int{"base": in.Amount * 2}, nil
			},
			"ext.report": func(_ context.Context, s *tasker.StepContext) (any, error) {
				var score struct{ Score int }
				if err := s.DependencyResult("score", &score); err != nil {
					return nil, err
				}
				return fmt.Sprintf("score is %d", score.Score), nil
			},
		},
	}, "ext.score")
	ch := eng.External()
	events := make(chan *tasker.ExternalEvent, 1)
	foreignPoller(t, ch, func(ev *tasker.ExternalEvent) (tasker.ExternalResult, bool) {
		events <- ev
		var prep struct{ Base int }
		var init struct{ Factor int }
		if err := json.Unmarshal(ev.DependencyResults["prepare"], &prep); err != nil {
			return tasker.ExternalResult{Message: err.Error(), Permanent: true}, true
		}
		if err := json.Unmarshal(ev.HandlerInitialization, &init); err != nil {
			return tasker.ExternalResult{Message: err.Error(), Permanent: true}, true
		}
		v, _ := json.Marshal(map[string]int{"score": prep.Base * init.Factor})
		return tasker.ExternalResult{Success: true, Value: v}, true
	})

	task, steps := runTask(t, eng, tasker.TaskRequest{Namespace: "ext", Name: "mixed", Context: map[string]int{"amount": 7}})
	wantTask(t, task, "complete", "all_complete")
	wantResult(t, steps, "prepare", map[string]int{"base": 14})
	wantResult(t, steps, "score", map[string]int{"score": 42})
	wantResult(t, steps, "report", "score is 42")
	wantStep(t, steps, "score", "complete", 1)

	ev := <-events
	if ev.TaskUUID != task.UUID || ev.StepUUID != steps["score"].UUID || ev.StepName != "score" || ev.Namespace != "ext" ||
		ev.TaskName != "mixed" || ev.TaskVersion != "1.0.0" || ev.Callable != "ext.score" || ev.Method != "compute" ||
		ev.Attempt != 1 || ev.MaxAttempts != steps["score"].MaxAttempts || string(ev.TaskContext) != `{"amount":7}` ||
		len(ev.DependencyResults) != 1 || !ev.Deadline.After(ev.CreatedAt) {
		t.Errorf("event lacks the step's context: %+v", ev)
	}
	// The event was completed once; its id is not reusable.
	err := ch.Complete(ev.EventID, tasker.ExternalResult{Success: true})
	if !errors.Is(err, tasker.ErrAlreadyCompleted) {
		t.Errorf("second Complete = %v, want ErrAlreadyCompleted", err)
	}
	if err := ch.Complete("not-an-event", tasker.ExternalResult{Success: true}); !errors.Is(err, tasker.ErrUnknownEvent) {
		t.Errorf("Complete(unknown) = %v, want ErrUnknownEvent", err)
	}
	if st := ch.Stats(); st.Completions != 1 || st.RefusedCompletes != 2 || st.Pending+st.Polled != 0 {
		t.Errorf("stats %+v", st)
	}
	found := false
	for _, s := range eng.ChannelStats() {
		found = found || s.Name == "worker.external"
	}
	if !found {
		t.Error("ChannelStats does not list worker.external")
	}
}

// TestExternalFailureOutcomes: a retryable failure is retried and the next
// attempt succeeds; a permanent failure is final.
func TestExternalFailureOutcomes(t *testing.T) {
	t.Parallel()
	t.Run("retried", func(t *testing.T) {
		t.Parallel()
		eng, _ := openExternalEngine(t, engineOptions{templates: []string{externalSingleYAML}}, "ext.foreign")
		foreignPoller(t, eng.External(), func(ev *tasker.ExternalEvent) (tasker.ExternalResult, bool) {
			if ev.Attempt == 1 {
				return tasker.ExternalResult{Message: "remote service warming up"}, true
			}
			return tasker.ExternalResult{Success: true, Value: json.RawMessage(fmt.Sprintf(`{"attempt":%d}`, ev.Attempt))}, true
		})
		task, steps := runTask(t, eng, tasker.TaskRequest{Namespace: "ext", Name: "foreign"})
		wantTask(t, task, "complete", "all_complete")
		s := wantStep(t, steps, "only", "complete", 2)
		wantResult(t, steps, "only", map[string]int{"attempt": 2})
		wantError(t, s, "handler_error", true, "warming up")
	})
	t.Run("permanent", func(t *testing.T) {
		t.Parallel()
		eng, _ := openExternalEngine(t, engineOptions{templates: []string{externalSingleYAML}}, "ext.foreign")
		foreignPoller(t, eng.External(), func(*tasker.ExternalEvent) (tasker.ExternalResult, bool) {
			return tasker.ExternalResult{Message: "account closed", Permanent: true}, true
		})
		task, steps := runTask(t, eng, tasker.TaskRequest{Namespace: "ext", Name: "foreign"})
		wantTask(t, task, "blocked_by_failures", "blocked_by_failures")
		s := wantStep(t, steps, "only", "error", 1)
		wantError(t, s, "permanent_error", false, "account closed")
	})
}

// TestExternalTimeoutRetried: a poller that takes an event and never
// completes it makes the step fail as external_timeout; the retry is
// completed by a poller that behaves.
func TestExternalTimeoutRetried(t *testing.T) {
	t.Parallel()
	eng, _ := openExternalEngine(t, engineOptions{
		cfg:       tasker.Config{ExternalCompletionTimeout: 200 * time.Millisecond},
		templates: []string{externalSingleYAML},
	}, "ext.foreign")
	var mu sync.Mutex
	var abandoned string
	foreignPoller(t, eng.External(), func(ev *tasker.ExternalEvent) (tasker.ExternalResult, bool) {
		if ev.Attempt == 1 {
			mu.Lock()
			abandoned = ev.EventID
			mu.Unlock()
			return tasker.ExternalResult{}, false // the poller "crashed"
		}
		return tasker.ExternalResult{Success: true, Value: json.RawMessage(`"second time lucky"`)}, true
	})
	task, steps := runTask(t, eng, tasker.TaskRequest{Namespace: "ext", Name: "foreign"})
	wantTask(t, task, "complete", "all_complete")
	s := wantStep(t, steps, "only", "complete", 2)
	wantResult(t, steps, "only", "second time lucky")
	wantError(t, s, "external_timeout", true, "200ms")

	mu.Lock()
	late := abandoned
	mu.Unlock()
	if err := eng.External().Complete(late, tasker.ExternalResult{Success: true}); !errors.Is(err, tasker.ErrEventTimedOut) {
		t.Errorf("late Complete = %v, want ErrEventTimedOut", err)
	}
	if st := eng.External().Stats(); st.Timeouts != 1 || st.Completions != 1 {
		t.Errorf("stats %+v, want 1 timeout and 1 completion", st)
	}
}

// TestExternalStopReleases: a step handed to a poller when the engine stops
// is given back, not lost: its attempt is not counted and the next engine
// runs it. The stopped engine's channel refuses the late completion.
func TestExternalStopReleases(t *testing.T) {
	t.Parallel()
	eng, path := openExternalEngine(t, engineOptions{templates: []string{externalSingleYAML}}, "ext.foreign")
	ch := eng.External()
	task := createTask(t, eng, tasker.TaskRequest{Namespace: "ext", Name: "foreign"})
	ctx, cancel := context.WithTimeout(context.Background(), waitBudget)
	defer cancel()
	ev, err := ch.PollWait(ctx, 0)
	if err != nil || ev == nil {
		t.Fatalf("PollWait = %v, %v", ev, err)
	}
	if err := eng.Stop(ctx); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	s := stepsByName(t, eng, task.UUID)["only"]
	if s.State != "waiting_for_retry" && s.State != "enqueued" {
		t.Fatalf("step after Stop: %s, want it handed back", s.State)
	}
	if s.Attempts != 0 {
		t.Errorf("released step counts %d attempts, want 0", s.Attempts)
	}
	wantError(t, s, "worker_stopping", true)
	if err := ch.Complete(ev.EventID, tasker.ExternalResult{Success: true}); !errors.Is(err, tasker.ErrExternalClosed) {
		t.Errorf("Complete after Stop = %v, want ErrExternalClosed", err)
	}
	if _, ok := ch.Poll(); ok {
		t.Error("Poll after Stop handed out an event")
	}
	if st := ch.Stats(); st.Released != 1 {
		t.Errorf("stats %+v, want 1 released", st)
	}

	next, _ := openExternalEngine(t, engineOptions{path: path, templates: []string{externalSingleYAML}}, "ext.foreign")
	foreignPoller(t, next.External(), func(ev *tasker.ExternalEvent) (tasker.ExternalResult, bool) {
		return tasker.ExternalResult{Success: true, Value: json.RawMessage(fmt.Sprintf(`%d`, ev.Attempt))}, true
	})
	task = waitTask(t, next, task.UUID)
	wantTask(t, task, "complete", "all_complete")
	steps := stepsByName(t, next, task.UUID)
	wantStep(t, steps, "only", "complete", 1)
	wantResult(t, steps, "only", 1)
}

// TestExternalFastEvent: a completed external step publishes its fast
// domain event through the same post-handler callback as a Go step.
func TestExternalFastEvent(t *testing.T) {
	t.Parallel()
	const doc = `
name: announced
namespace_name: ext
version: 1.0.0
steps:
  - name: only
    handler: {callable: ext.foreign}
    publishes_events:
      - {name: foreign.done, delivery_mode: fast}
`
	eng, _ := openEngine(t, engineOptions{templates: []string{doc}, noStart: true})
	eng.HandleExternal("ext.foreign")
	got := make(chan tasker.DomainEvent, 1)
	eng.Subscribe("foreign.*", func(_ context.Context, ev tasker.DomainEvent) error {
		got <- ev
		return nil
	})
	if err := eng.Start(context.Background()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	foreignPoller(t, eng.External(), func(*tasker.ExternalEvent) (tasker.ExternalResult, bool) {
		return tasker.ExternalResult{Success: true, Value: json.RawMessage(`{"ok":true}`)}, true
	})
	task, _ := runTask(t, eng, tasker.TaskRequest{Namespace: "ext", Name: "announced"})
	wantTask(t, task, "complete", "all_complete")
	select {
	case ev := <-got:
		if ev.Name != "foreign.done" || ev.TaskUUID != task.UUID || ev.StepName != "only" || ev.DeliveryMode != "fast" ||
			string(ev.Payload) != `{"ok":true}` {
			t.Errorf("fast event %+v", ev)
		}
	case <-time.After(waitBudget):
		t.Fatal("no fast event for the external step")
	}
}

// TestExternalNotStarted: the channel of an engine that was never started
// hands out nothing and says why.
func TestExternalNotStarted(t *testing.T) {
	t.Parallel()
	eng, _ := openEngine(t, engineOptions{templates: []string{externalSingleYAML}, noStart: true})
	eng.HandleExternal("ext.foreign")
	ch := eng.External()
	if _, ok := ch.Poll(); ok {
		t.Error("Poll on a stopped engine handed out an event")
	}
	if _, err := ch.PollWait(context.Background(), time.Second); !errors.Is(err, tasker.ErrExternalClosed) {
		t.Errorf("PollWait = %v, want ErrExternalClosed", err)
	}
	if err := ch.Complete("x", tasker.ExternalResult{}); !errors.Is(err, tasker.ErrExternalClosed) {
		t.Errorf("Complete = %v, want ErrExternalClosed", err)
	}
	if st := ch.Stats(); st != (tasker.ExternalStats{}) {
		t.Errorf("Stats = %+v, want zeros", st)
	}
}

// TestExternalConfigValidation: negative settings are refused, naming the
// field.
func TestExternalConfigValidation(t *testing.T) {
	t.Parallel()
	cases := map[string]tasker.Config{
		"ExternalCapacity":              {ExternalCapacity: -1},
		"ExternalCompletionTimeout":     {ExternalCompletionTimeout: -time.Second},
		"ExternalStarvationThreshold":   {ExternalStarvationThreshold: -time.Second},
		"ExternalCompletionSendTimeout": {ExternalCompletionSendTimeout: -time.Second},
		"ExternalCallbackTimeout":       {ExternalCallbackTimeout: -time.Second},
	}
	for field, cfg := range cases {
		cfg.DatabaseURL = "sqlite://" + t.TempDir() + "/x.db"
		eng, err := tasker.Open(context.Background(), cfg)
		if err == nil {
			eng.Close()
			t.Errorf("Open with a negative %s succeeded", field)
			continue
		}
		if !strings.Contains(err.Error(), "Config."+field) {
			t.Errorf("Open with a negative %s: %v, want the field named", field, err)
		}
	}
}
