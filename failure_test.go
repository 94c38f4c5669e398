package tasker_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tasker-go/tasker"
)

// singleStep returns a template in namespace "fail" with one step, "only",
// running callable; stepExtra is YAML for the step's other fields, one
// field per line.
func singleStep(name, callable, stepExtra string) string {
	return fmt.Sprintf(`
name: %s
namespace_name: fail
version: 1.0.0
steps:
  - name: only
    handler: {callable: %s}
    %s
`, name, callable, stepExtra)
}

// TestRetryThenSuccess checks that a step failing twice is retried after
// its backoff and completes on the third attempt. PollInterval is 5s, so
// prompt retries prove that the backoff timer, not the periodic sweep,
// drives them.
func TestRetryThenSuccess(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var seen []int
	eng, _ := openEngine(t, engineOptions{
		cfg: tasker.Config{PollInterval: 5 * time.Second, RetryJitter: -1},
		templates: []string{singleStep("flaky", "fail.flaky",
			"retry: {max_attempts: 3, backoff: linear, backoff_base_ms: 20}")},
		handlers: map[string]tasker.HandlerFunc{
			"fail.flaky": func(_ context.Context, s *tasker.StepContext) (any, error) {
				mu.Lock()
				seen = append(seen, s.Attempt)
				mu.Unlock()
				if s.MaxAttempts != 3 {
					return nil, tasker.Permanent(fmt.Errorf("MaxAttempts %d, want 3", s.MaxAttempts))
				}
				if s.Attempt < 3 {
					return nil, errFlaky
				}
				return map[string]int{"attempt": s.Attempt}, nil
			},
		},
	})
	start := time.Now()
	task, steps := runTask(t, eng, tasker.TaskRequest{Namespace: "fail", Name: "flaky"})
	elapsed := time.Since(start)
	wantTask(t, task, "complete", "all_complete")
	s := wantStep(t, steps, "only", "complete", 3)
	wantResult(t, steps, "only", map[string]int{"attempt": 3})
	// Error is the step's last failure, kept after the retry succeeded.
	wantError(t, s, "handler_error", true, errFlaky.Error())
	mu.Lock()
	if !slices.Equal(seen, []int{1, 2, 3}) {
		t.Errorf("handler saw attempts %v, want [1 2 3]", seen)
	}
	mu.Unlock()

	// Each waiting_for_retry is followed by the re-enqueue once its
	// backoff has passed: 20ms after attempt 1, 40ms after attempt 2
	// (linear, jitter off).
	trs := stepTransitions(t, eng, s.UUID)
	var retries, failures int
	for i, tr := range trs {
		if tr.To == "enqueued_as_error_for_orchestration" {
			// History keeps every failure, not only the last.
			failures++
			md := metadata(t, tr)
			e, _ := md["error"].(map[string]any)
			if e["type"] != "handler_error" {
				t.Errorf("failure %d recorded without its error: %s", failures, tr.Metadata)
			}
		}
		if tr.To != "waiting_for_retry" {
			continue
		}
		retries++
		md := metadata(t, tr)
		backoff := time.Duration(md["backoff_ms"].(float64)) * time.Millisecond
		if want := time.Duration(20*retries) * time.Millisecond; backoff != want {
			t.Errorf("retry %d: backoff %s, want %s", retries, backoff, want)
		}
		if i+1 >= len(trs) || trs[i+1].From != "waiting_for_retry" || trs[i+1].To != "enqueued" {
			t.Fatalf("retry %d: waiting_for_retry not followed by enqueued: %+v", retries, trs)
		}
		gap := trs[i+1].CreatedAt.Sub(tr.CreatedAt)
		t.Logf("retry %d: backoff %s, re-enqueued after %s", retries, backoff, gap)
		if gap < backoff {
			t.Errorf("retry %d re-enqueued after %s, before its %s backoff ended", retries, gap, backoff)
		}
		// The sweep runs every 5s; a timer-driven retry comes well before.
		if gap > 2*time.Second {
			t.Errorf("retry %d re-enqueued after %s: not driven by the backoff timer", retries, gap)
		}
	}
	if retries != 2 || failures != 2 {
		t.Errorf("%d retries and %d failures recorded, want 2 each: %+v", retries, failures, trs)
	}
	if elapsed > 4*time.Second {
		var hist []string
		for _, tr := range trs {
			hist = append(hist, fmt.Sprintf("%s→%s at +%s", tr.From, tr.To, tr.CreatedAt.Sub(start).Round(time.Millisecond)))
		}
		for _, tr := range taskTransitions(t, eng, task.UUID) {
			hist = append(hist, fmt.Sprintf("task %s→%s at +%s", tr.From, tr.To, tr.CreatedAt.Sub(start).Round(time.Millisecond)))
		}
		t.Errorf("task took %s with 60ms of backoff; history:\n%s", elapsed, strings.Join(hist, "\n"))
	}
}

// TestStepFailures covers each kind of failure a handler can produce and
// what the user sees of it.
func TestStepFailures(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	eng, _ := openEngine(t, engineOptions{
		templates: []string{
			singleStep("exhaust", "fail.always", "retry: {max_attempts: 3, backoff: linear, backoff_base_ms: 10}"),
			singleStep("permanent", "fail.permanent", "retry: {max_attempts: 3, backoff_base_ms: 10}"),
			singleStep("panic", "fail.panic", "retry: {max_attempts: 3, backoff_base_ms: 10}"),
			singleStep("timeout", "fail.slow", "timeout_seconds: 1\n    retry: {max_attempts: 1}"),
			singleStep("deaf", "fail.deaf", "timeout_seconds: 1\n    retry: {max_attempts: 1}"),
			singleStep("unknown", "nobody.home", "retry: {max_attempts: 3, backoff_base_ms: 10}"),
			singleStep("unserializable", "fail.func", "retry: {max_attempts: 3, backoff_base_ms: 10}"),
		},
		handlers: map[string]tasker.HandlerFunc{
			"fail.always": alwaysFail,
			"fail.permanent": func(context.Context, *tasker.StepContext) (any, error) {
				return nil, tasker.Permanent(errors.New("card declined"))
			},
			"fail.panic": func(context.Context, *tasker.StepContext) (any, error) {
				panic("boom-7f3a")
			},
			"fail.slow": func(ctx context.Context, _ *tasker.StepContext) (any, error) {
				<-ctx.Done()
				return nil, ctx.Err()
			},
			// fail.deaf ignores its context; the worker must not wait for it.
			"fail.deaf": func(context.Context, *tasker.StepContext) (any, error) {
				select {
				case <-release:
				case <-time.After(6 * time.Second):
				}
				return "too late", nil
			},
			"fail.func": func(context.Context, *tasker.StepContext) (any, error) {
				return func() {}, nil
			},
		},
	})
	t.Cleanup(func() { close(release) }) // runs before the engine closes

	tests := []struct {
		name      string
		attempts  int
		errType   string
		retryable bool
		msg       []string
	}{
		{"exhaust", 3, "handler_error", true, []string{errFlaky.Error()}},
		{"permanent", 1, "permanent_error", false, []string{"card declined"}},
		{"panic", 1, "panic", false, []string{"boom-7f3a"}},
		{"timeout", 1, "timeout", true, nil},
		{"deaf", 1, "timeout", true, nil},
		{"unknown", 1, "handler_not_found", false, []string{"nobody.home"}},
		{"unserializable", 1, "result_not_serializable", false, []string{"func()"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			task, steps := runTask(t, eng, tasker.TaskRequest{Namespace: "fail", Name: tc.name})
			wantTask(t, task, "blocked_by_failures", "blocked_by_failures")
			if task.FailedSteps != 1 || task.CompletedSteps != 0 {
				t.Errorf("counts: failed %d complete %d, want 1 and 0", task.FailedSteps, task.CompletedSteps)
			}
			s := wantStep(t, steps, "only", "error", tc.attempts)
			wantError(t, s, tc.errType, tc.retryable, tc.msg...)
			if s.Ready || s.BlockedReason == "" {
				t.Errorf("errored step: ready %v, blocked reason %q", s.Ready, s.BlockedReason)
			}
			if len(s.Result) != 0 {
				t.Errorf("failed step has result %s", s.Result)
			}
			trs := stepTransitions(t, eng, s.UUID)
			last := trs[len(trs)-1]
			if last.To != "error" {
				t.Fatalf("last step transition %+v, want → error", last)
			}
			t.Logf("error: %s (%s)", s.Error.Message, last.Metadata)
			tts := taskTransitions(t, eng, task.UUID)
			if got := tts[len(tts)-1].To; got != "blocked_by_failures" {
				t.Errorf("last task transition → %s", got)
			}
			switch tc.name {
			case "exhaust":
				if md := metadata(t, last); md["reason"] != "attempts exhausted (3 of 3)" {
					t.Errorf("exhausted step: reason %v", md["reason"])
				}
			case "timeout", "deaf":
				// The attempt ran for the step's timeout and no longer.
				var started time.Time
				for _, tr := range trs {
					switch tr.To {
					case "in_progress":
						started = tr.CreatedAt
					case "enqueued_as_error_for_orchestration":
						d := tr.CreatedAt.Sub(started)
						t.Logf("attempt lasted %s", d)
						if d < time.Second || d > 4*time.Second {
							t.Errorf("timed-out attempt lasted %s, want about 1s", d)
						}
					}
				}
			}
		})
	}
}

// TestMaxAttempts checks that max_attempts counts every attempt and that 0
// still allows the first one.
func TestMaxAttempts(t *testing.T) {
	t.Parallel()
	eng, _ := openEngine(t, engineOptions{
		templates: []string{`
name: attempts
namespace_name: fail
version: 1.0.0
steps:
  - name: zero
    handler: {callable: fail.always}
    retry: {max_attempts: 0, backoff_base_ms: 10}
  - name: one
    handler: {callable: fail.always}
    retry: {max_attempts: 1, backoff_base_ms: 10}
  - name: three
    handler: {callable: fail.always}
    retry: {max_attempts: 3, backoff: fibonacci, backoff_base_ms: 10}
  - name: never
    handler: {callable: fail.always}
    retry: {retryable: false, max_attempts: 5}
`},
		handlers: map[string]tasker.HandlerFunc{"fail.always": alwaysFail},
	})
	task, steps := runTask(t, eng, tasker.TaskRequest{Namespace: "fail", Name: "attempts"})
	wantTask(t, task, "blocked_by_failures", "blocked_by_failures")
	for name, want := range map[string]int{"zero": 1, "one": 1, "three": 3, "never": 1} {
		s := wantStep(t, steps, name, "error", want)
		wantError(t, s, "handler_error", true, errFlaky.Error())
	}
}

// TestIndependentBranches checks that a failed branch does not stop the
// others: every step that can still run does (retries included), the
// execution status reports blocked_by_failures as soon as a step fails, and
// the task state settles at blocked_by_failures only once nothing runs.
func TestIndependentBranches(t *testing.T) {
	t.Parallel()
	gate := make(chan struct{})
	var gateOnce sync.Once
	openGate := func() { gateOnce.Do(func() { close(gate) }) }
	eng, _ := openEngine(t, engineOptions{
		templates: []string{`
name: branches
namespace_name: fail
version: 1.0.0
steps:
  - name: good
    handler: {callable: br.gated}
  - name: good_child
    handler: {callable: br.ok}
    dependencies: [good]
  - name: bad
    handler: {callable: br.permanent}
  - name: bad_child
    handler: {callable: br.ok}
    dependencies: [bad]
  - name: flaky
    handler: {callable: br.flaky}
    retry: {max_attempts: 3, backoff: linear, backoff_base_ms: 30}
  - name: flaky_child
    handler: {callable: br.ok}
    dependencies: [flaky]
`},
		handlers: map[string]tasker.HandlerFunc{
			"br.gated": func(ctx context.Context, s *tasker.StepContext) (any, error) {
				select {
				case <-gate:
				case <-ctx.Done():
					return nil, ctx.Err()
				}
				return succeed(ctx, s)
			},
			"br.ok": succeed,
			"br.permanent": func(context.Context, *tasker.StepContext) (any, error) {
				return nil, tasker.Permanent(errors.New("bad branch"))
			},
			"br.flaky": func(ctx context.Context, s *tasker.StepContext) (any, error) {
				if s.Attempt < 3 {
					return nil, errFlaky
				}
				return succeed(ctx, s)
			},
		},
	})
	t.Cleanup(openGate)
	task := createTask(t, eng, tasker.TaskRequest{Namespace: "fail", Name: "branches"})

	// While "good" is held, the failure is visible in the execution status
	// but the task is still running, and WaitTask does not return.
	eventually(t, "bad to fail and flaky to finish", func() bool {
		steps := stepsByName(t, eng, task.UUID)
		return steps["bad"].State == "error" && steps["flaky_child"].State == "complete"
	})
	mid, err := eng.GetTask(context.Background(), task.UUID)
	if err != nil {
		t.Fatal(err)
	}
	if mid.ExecutionStatus != "blocked_by_failures" || mid.State == "blocked_by_failures" {
		t.Fatalf("mid-run: state %q, execution status %q; want a running task whose status is blocked_by_failures", mid.State, mid.ExecutionStatus)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	if got, err := eng.WaitTask(ctx, task.UUID); err == nil {
		t.Fatalf("WaitTask returned %s while a branch was still running", got.State)
	}
	cancel()

	openGate()
	task = waitTask(t, eng, task.UUID)
	wantTask(t, task, "blocked_by_failures", "blocked_by_failures")
	steps := stepsByName(t, eng, task.UUID)
	wantStep(t, steps, "good", "complete", 1)
	goodChild := wantStep(t, steps, "good_child", "complete", 1)
	wantError(t, wantStep(t, steps, "bad", "error", 1), "permanent_error", false, "bad branch")
	badChild := wantStep(t, steps, "bad_child", "pending", 0)
	wantStep(t, steps, "flaky", "complete", 3)
	wantStep(t, steps, "flaky_child", "complete", 1)
	if badChild.DependenciesSatisfied || badChild.Ready || badChild.BlockedReason == "" {
		t.Errorf("bad_child: satisfied %v ready %v reason %q", badChild.DependenciesSatisfied, badChild.Ready, badChild.BlockedReason)
	}
	t.Logf("bad_child blocked: %s", badChild.BlockedReason)
	tts := taskTransitions(t, eng, task.UUID)
	last := tts[len(tts)-1]
	if last.To != "blocked_by_failures" || last.CreatedAt.Before(*goodChild.CompletedAt) {
		t.Fatalf("task blocked at %s (%+v), before its last branch finished at %s", last.CreatedAt, last, goodChild.CompletedAt)
	}
	for _, tr := range tts[:len(tts)-1] {
		if tr.To == "blocked_by_failures" {
			t.Fatalf("task was blocked before its branches finished: %+v", tts)
		}
	}
}
