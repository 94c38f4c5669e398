package tasker_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tasker-go/tasker"
)

// TestCancelTask cancels a task while its first step runs: every step that
// had not finished is cancelled, WaitTask returns the cancelled task, a
// second cancel is refused, and the running handler's late result changes
// nothing.
func TestCancelTask(t *testing.T) {
	t.Parallel()
	started := make(chan struct{})
	finish := make(chan struct{})
	var returned atomic.Bool
	var laterRuns atomic.Int32
	eng, _ := openEngine(t, engineOptions{
		templates: []string{`
name: cancellable
namespace_name: ops
version: 1.0.0
steps:
  - name: slow
    handler: {callable: ops.slow}
  - name: fast
    handler: {callable: ops.later}
  - name: after
    handler: {callable: ops.later}
    dependencies: [slow]
`},
		handlers: map[string]tasker.HandlerFunc{
			// ops.slow ignores cancellation, as a handler blocked in a
			// call without a context would, and returns a result late.
			"ops.slow": func(context.Context, *tasker.StepContext) (any, error) {
				close(started)
				<-finish
				returned.Store(true)
				return "late result", nil
			},
			"ops.later": func(ctx context.Context, s *tasker.StepContext) (any, error) {
				laterRuns.Add(1)
				return succeed(ctx, s)
			},
		},
	})
	ctx := context.Background()
	task := createTask(t, eng, tasker.TaskRequest{Namespace: "ops", Name: "cancellable"})
	<-started
	eventually(t, "fast to complete", func() bool { return stepsByName(t, eng, task.UUID)["fast"].State == "complete" })

	waited := make(chan *tasker.Task, 1)
	go func() {
		wctx, cancel := context.WithTimeout(ctx, waitBudget)
		defer cancel()
		got, err := eng.WaitTask(wctx, task.UUID)
		if err != nil {
			t.Errorf("WaitTask: %v", err)
		}
		waited <- got
	}()

	cancelled, err := eng.CancelTask(ctx, task.UUID)
	if err != nil {
		t.Fatalf("CancelTask: %v", err)
	}
	if cancelled.State != "cancelled" {
		t.Fatalf("CancelTask returned state %q", cancelled.State)
	}
	if got := <-waited; got == nil || got.State != "cancelled" {
		t.Fatalf("WaitTask returned %+v, want the cancelled task", got)
	}
	if _, err := eng.CancelTask(ctx, task.UUID); !errors.Is(err, tasker.ErrTaskFinished) {
		t.Fatalf("second CancelTask: %v, want ErrTaskFinished", err)
	}
	if _, err := eng.CancelTask(ctx, "00000000-0000-0000-0000-000000000000"); !errors.Is(err, tasker.ErrTaskNotFound) {
		t.Fatalf("CancelTask of an unknown task: %v, want ErrTaskNotFound", err)
	}

	// Let the slow handler return, then stop the engine so that its result
	// has certainly been offered to the store.
	close(finish)
	eventually(t, "the slow handler to return", returned.Load)
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
	slow := wantStep(t, steps, "slow", "cancelled", 1)
	if len(slow.Result) != 0 {
		t.Errorf("cancelled step took the late result %s", slow.Result)
	}
	wantStep(t, steps, "fast", "complete", 1)
	wantStep(t, steps, "after", "cancelled", 0)
	if n := laterRuns.Load(); n != 1 {
		t.Errorf("ops.later ran %d times, want 1 (only fast)", n)
	}
	trs := stepTransitions(t, eng, slow.UUID)
	if last := trs[len(trs)-1]; last.From != "in_progress" || last.To != "cancelled" {
		t.Errorf("slow step history ends with %+v, want in_progress → cancelled", last)
	}
	tts := taskTransitions(t, eng, task.UUID)
	if last := tts[len(tts)-1]; last.To != "cancelled" || last.Event != "cancel" {
		t.Errorf("task history ends with %+v", last)
	}
}

const manualYAML = `
name: manual
namespace_name: ops
version: 1.0.0
steps:
  - name: fix_me
    handler: {callable: ops.broken}
    retry: {max_attempts: 2, backoff: linear, backoff_base_ms: 10}
  - name: child
    handler: {callable: ops.child}
    dependencies: [fix_me]
  - name: grandchild
    handler: {callable: ops.child}
    dependencies: [child]
`

// TestManualStepActions fixes a blocked task in each of the three ways an
// operator can, and checks that the task then completes and that history
// records who did what and why.
func TestManualStepActions(t *testing.T) {
	t.Parallel()
	var healed atomic.Bool
	type seen struct {
		value any
		err   error
	}
	seenByTask := make(chan seen, 10)
	eng, _ := openEngine(t, engineOptions{
		templates: []string{manualYAML},
		handlers: map[string]tasker.HandlerFunc{
			"ops.broken": func(context.Context, *tasker.StepContext) (any, error) {
				if healed.Load() {
					return map[string]string{"fixed": "yes"}, nil
				}
				return nil, errFlaky
			},
			// ops.child reports what it read from fix_me.
			"ops.child": func(_ context.Context, s *tasker.StepContext) (any, error) {
				var v any
				err := s.DependencyResult("fix_me", &v)
				if s.StepName == "child" {
					seenByTask <- seen{v, err}
				}
				return map[string]any{"from_fix_me": v}, nil
			},
		},
	})
	ctx := context.Background()

	blocked := func(t *testing.T, context string) (*tasker.Task, tasker.Step) {
		t.Helper()
		task, steps := runTask(t, eng, tasker.TaskRequest{Namespace: "ops", Name: "manual", Context: map[string]string{"case": context}})
		wantTask(t, task, "blocked_by_failures", "blocked_by_failures")
		wantStep(t, steps, "child", "pending", 0)
		return task, wantStep(t, steps, "fix_me", "error", 2)
	}
	// checkHistory asserts that the action is recorded with actor and
	// reason, and that the task left blocked_by_failures through resume.
	checkHistory := func(t *testing.T, task *tasker.Task, step tasker.Step, action string) {
		t.Helper()
		var found bool
		for _, tr := range stepTransitions(t, eng, step.UUID) {
			if tr.Event != action {
				continue
			}
			found = true
			md := metadata(t, tr)
			if md["actor"] != "alice" || md["reason"] != "ticket OPS-1" || md["action"] != action {
				t.Errorf("%s recorded with metadata %s", action, tr.Metadata)
			}
		}
		if !found {
			t.Errorf("no %s transition in the step's history", action)
		}
		var resumed bool
		for _, tr := range taskTransitions(t, eng, task.UUID) {
			resumed = resumed || (tr.From == "blocked_by_failures" && tr.Event == "resume")
		}
		if !resumed {
			t.Errorf("task history has no resume from blocked_by_failures: %+v", taskTransitions(t, eng, task.UUID))
		}
	}

	// These subtests share the handlers' switch and channel, so they run
	// one after the other.
	t.Run("reset_for_retry", func(t *testing.T) {
		task, step := blocked(t, "reset")
		healed.Store(true)
		defer healed.Store(false)
		got, err := eng.ApplyStepAction(ctx, tasker.StepActionRequest{TaskUUID: task.UUID, StepUUID: step.UUID,
			Action: tasker.ResetForRetry, Actor: "alice", Reason: "ticket OPS-1"})
		if err != nil {
			t.Fatalf("reset_for_retry: %v", err)
		}
		if got.State == "error" {
			t.Fatalf("step still in error after reset: %+v", got)
		}
		task = waitTask(t, eng, task.UUID)
		wantTask(t, task, "complete", "all_complete")
		steps := stepsByName(t, eng, task.UUID)
		wantStep(t, steps, "fix_me", "complete", 1) // attempts restart from zero
		wantResult(t, steps, "fix_me", map[string]string{"fixed": "yes"})
		if s := <-seenByTask; s.err != nil {
			t.Errorf("child could not read fix_me: %v", s.err)
		}
		checkHistory(t, task, step, "reset_for_retry")
	})

	t.Run("resolve_manually", func(t *testing.T) {
		task, step := blocked(t, "resolve")
		steps := stepsByName(t, eng, task.UUID)

		// Actions the states do not allow are refused and change nothing.
		_, err := eng.ApplyStepAction(ctx, tasker.StepActionRequest{TaskUUID: task.UUID, StepUUID: steps["child"].UUID,
			Action: tasker.ResetForRetry, Actor: "alice", Reason: "wrong step"})
		if !errors.Is(err, tasker.ErrIllegalTransition) {
			t.Fatalf("reset_for_retry on a pending step: %v, want ErrIllegalTransition", err)
		}
		_, err = eng.ApplyStepAction(ctx, tasker.StepActionRequest{TaskUUID: task.UUID, StepUUID: step.UUID,
			Action: "delete_everything"})
		if err == nil {
			t.Fatal("unknown action accepted")
		}
		_, err = eng.ApplyStepAction(ctx, tasker.StepActionRequest{TaskUUID: task.UUID, StepUUID: "00000000-0000-0000-0000-000000000000",
			Action: tasker.ResolveManually})
		if !errors.Is(err, tasker.ErrStepNotFound) {
			t.Fatalf("action on an unknown step: %v, want ErrStepNotFound", err)
		}
		if got, _ := eng.GetTask(ctx, task.UUID); got.State != "blocked_by_failures" {
			t.Fatalf("refused actions moved the task to %s", got.State)
		}

		got, err := eng.ApplyStepAction(ctx, tasker.StepActionRequest{TaskUUID: task.UUID, StepUUID: step.UUID,
			Action: tasker.ResolveManually, Actor: "alice", Reason: "ticket OPS-1"})
		if err != nil {
			t.Fatalf("resolve_manually: %v", err)
		}
		if got.State != "resolved_manually" {
			t.Fatalf("step state %q after resolve_manually", got.State)
		}
		task = waitTask(t, eng, task.UUID)
		wantTask(t, task, "complete", "all_complete")
		steps = stepsByName(t, eng, task.UUID)
		wantStep(t, steps, "fix_me", "resolved_manually", 2)
		wantStep(t, steps, "child", "complete", 1)
		wantStep(t, steps, "grandchild", "complete", 1)
		// A step resolved without a result has none to read.
		if s := <-seenByTask; !errors.Is(s.err, tasker.ErrNoDependencyResult) {
			t.Errorf("child reading a resolved step without result: %v, want ErrNoDependencyResult", s.err)
		}
		checkHistory(t, task, step, "resolve_manually")

		_, err = eng.ApplyStepAction(ctx, tasker.StepActionRequest{TaskUUID: task.UUID, StepUUID: step.UUID,
			Action: tasker.ResetForRetry})
		if !errors.Is(err, tasker.ErrTaskFinished) {
			t.Fatalf("action on a complete task: %v, want ErrTaskFinished", err)
		}
	})

	t.Run("complete_manually", func(t *testing.T) {
		task, step := blocked(t, "complete")
		result := map[string]any{"fixed": "by hand", "amount": 42}
		got, err := eng.ApplyStepAction(ctx, tasker.StepActionRequest{TaskUUID: task.UUID, StepUUID: step.UUID,
			Action: tasker.CompleteManually, Result: result, Actor: "alice", Reason: "ticket OPS-1"})
		if err != nil {
			t.Fatalf("complete_manually: %v", err)
		}
		if got.State != "complete" {
			t.Fatalf("step state %q after complete_manually", got.State)
		}
		task = waitTask(t, eng, task.UUID)
		wantTask(t, task, "complete", "all_complete")
		steps := stepsByName(t, eng, task.UUID)
		wantResult(t, steps, "fix_me", result)
		s := <-seenByTask
		if s.err != nil {
			t.Fatalf("child could not read the manual result: %v", s.err)
		}
		wantResult(t, steps, "child", map[string]any{"from_fix_me": result})
		wantResult(t, steps, "grandchild", map[string]any{"from_fix_me": result})
		checkHistory(t, task, step, "complete_manually")
	})
}

// TestCancelBlockedTask checks that a task settled in blocked_by_failures
// can still be cancelled, which cancels its pending steps too.
func TestCancelBlockedTask(t *testing.T) {
	t.Parallel()
	eng, _ := openEngine(t, engineOptions{
		templates: []string{manualYAML},
		handlers: map[string]tasker.HandlerFunc{
			"ops.broken": alwaysFail,
			"ops.child":  succeed,
		},
	})
	task, _ := runTask(t, eng, tasker.TaskRequest{Namespace: "ops", Name: "manual"})
	wantTask(t, task, "blocked_by_failures", "blocked_by_failures")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	got, err := eng.CancelTask(ctx, task.UUID)
	if err != nil {
		t.Fatalf("CancelTask: %v", err)
	}
	if got.State != "cancelled" {
		t.Fatalf("state %q", got.State)
	}
	steps := stepsByName(t, eng, task.UUID)
	wantStep(t, steps, "fix_me", "error", 2)
	wantStep(t, steps, "child", "cancelled", 0)
	wantStep(t, steps, "grandchild", "cancelled", 0)
}

// TestCancelDuringBackoff cancels a task whose step waits out a retry
// backoff: the retry never runs.
func TestCancelDuringBackoff(t *testing.T) {
	t.Parallel()
	var runs atomic.Int32
	eng, _ := openEngine(t, engineOptions{
		templates: []string{singleStep("backoff", "ops.retry_later", "retry: {max_attempts: 3}")},
		handlers: map[string]tasker.HandlerFunc{
			"ops.retry_later": func(context.Context, *tasker.StepContext) (any, error) {
				runs.Add(1)
				return nil, tasker.RetryAfter(errFlaky, 300*time.Millisecond)
			},
		},
	})
	ctx := context.Background()
	task := createTask(t, eng, tasker.TaskRequest{Namespace: "fail", Name: "backoff"})
	eventually(t, "the step to wait for its retry", func() bool {
		return stepsByName(t, eng, task.UUID)["only"].State == "waiting_for_retry"
	})
	got, err := eng.CancelTask(ctx, task.UUID)
	if err != nil {
		t.Fatalf("CancelTask: %v", err)
	}
	t.Logf("cancelled task: execution status %q", got.ExecutionStatus)
	time.Sleep(600 * time.Millisecond) // past the backoff: the armed timer fires and must do nothing
	got, err = eng.GetTask(ctx, task.UUID)
	if err != nil {
		t.Fatal(err)
	}
	if got.State != "cancelled" {
		t.Fatalf("task %s after its retry timer fired", got.State)
	}
	wantStep(t, stepsByName(t, eng, task.UUID), "only", "cancelled", 1)
	if n := runs.Load(); n != 1 {
		t.Fatalf("handler ran %d times, want 1", n)
	}
	_, err = eng.ApplyStepAction(ctx, tasker.StepActionRequest{TaskUUID: task.UUID,
		StepUUID: stepsByName(t, eng, task.UUID)["only"].UUID, Action: tasker.ResetForRetry})
	if !errors.Is(err, tasker.ErrTaskFinished) {
		t.Fatalf("reset_for_retry on a cancelled task: %v, want ErrTaskFinished", err)
	}
	if _, err := eng.TaskSteps(ctx, "00000000-0000-0000-0000-000000000000"); !errors.Is(err, tasker.ErrTaskNotFound) {
		t.Fatalf("TaskSteps of an unknown task: %v, want ErrTaskNotFound", err)
	}
}
