package orchestration

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tasker-go/tasker/state"
)

var evalNow = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

func evalAt(d time.Duration) *time.Time {
	v := evalNow.Add(d)
	return &v
}

// stepView builds a StepView whose UUID is its name, with a retry policy of
// three retryable attempts unless the test says otherwise.
func stepView(name string, st state.StepState, parents ...string) StepView {
	return StepView{UUID: name, Name: name, State: st, MaxAttempts: 3, Retryable: true, Parents: parents}
}

func edited(s StepView, edit func(*StepView)) StepView {
	edit(&s)
	return s
}

func TestEvaluateStepReadiness(t *testing.T) {
	t.Parallel()
	type want struct {
		ready, depsOK, eligible bool
		reason                  []string // substrings of BlockedReason; nil: must be empty
	}
	tests := []struct {
		name   string
		steps  []StepView
		target string
		want   want
	}{
		{
			name:   "root pending is ready",
			steps:  []StepView{stepView("a", state.StepPending)},
			target: "a",
			want:   want{ready: true, depsOK: true, eligible: true},
		},
		{
			name:   "pending with every parent complete is ready",
			steps:  []StepView{stepView("p1", state.StepComplete), stepView("p2", state.StepComplete), stepView("c", state.StepPending, "p1", "p2")},
			target: "c",
			want:   want{ready: true, depsOK: true, eligible: true},
		},
		{
			name:   "pending with a parent resolved manually is ready",
			steps:  []StepView{stepView("p1", state.StepComplete), stepView("p2", state.StepResolvedManually), stepView("c", state.StepPending, "p1", "p2")},
			target: "c",
			want:   want{ready: true, depsOK: true, eligible: true},
		},
		{
			name:   "parent still pending blocks and is named with its state",
			steps:  []StepView{stepView("p1", state.StepComplete), stepView("load", state.StepPending), stepView("c", state.StepPending, "p1", "load")},
			target: "c",
			want:   want{eligible: true, reason: []string{"load (pending)"}},
		},
		{
			name:   "parent in progress blocks",
			steps:  []StepView{stepView("fetch", state.StepInProgress), stepView("c", state.StepPending, "fetch")},
			target: "c",
			want:   want{eligible: true, reason: []string{"fetch (in_progress)"}},
		},
		{
			name:   "parent in error blocks",
			steps:  []StepView{stepView("charge", state.StepError), stepView("c", state.StepPending, "charge")},
			target: "c",
			want:   want{eligible: true, reason: []string{"charge (error)"}},
		},
		{
			name: "every unsatisfied parent is named",
			steps: []StepView{stepView("x", state.StepWaitingForRetry), stepView("y", state.StepCancelled), stepView("z", state.StepComplete),
				stepView("c", state.StepPending, "x", "y", "z")},
			target: "c",
			want:   want{eligible: true, reason: []string{"x (waiting_for_retry)", "y (cancelled)"}},
		},
		{
			name: "waiting for retry with backoff not elapsed is not ready",
			steps: []StepView{edited(stepView("a", state.StepWaitingForRetry), func(s *StepView) {
				s.Attempts, s.NextRetryAt = 1, evalAt(time.Second)
			})},
			target: "a",
			want:   want{depsOK: true, eligible: true, reason: []string{"backing off"}},
		},
		{
			name: "waiting for retry with backoff elapsed is ready",
			steps: []StepView{edited(stepView("a", state.StepWaitingForRetry), func(s *StepView) {
				s.Attempts, s.NextRetryAt = 1, evalAt(-time.Millisecond)
			})},
			target: "a",
			want:   want{ready: true, depsOK: true, eligible: true},
		},
		{
			name: "backoff ending exactly now is ready",
			steps: []StepView{edited(stepView("a", state.StepWaitingForRetry), func(s *StepView) {
				s.Attempts, s.NextRetryAt = 1, evalAt(0)
			})},
			target: "a",
			want:   want{ready: true, depsOK: true, eligible: true},
		},
		{
			name: "waiting for retry without a retry time is ready",
			steps: []StepView{edited(stepView("a", state.StepWaitingForRetry), func(s *StepView) {
				s.Attempts = 1
			})},
			target: "a",
			want:   want{ready: true, depsOK: true, eligible: true},
		},
		{
			name: "no attempt yet is eligible even when not retryable",
			steps: []StepView{edited(stepView("a", state.StepPending), func(s *StepView) {
				s.Retryable, s.MaxAttempts = false, 1
			})},
			target: "a",
			want:   want{ready: true, depsOK: true, eligible: true},
		},
		{
			name: "no attempt yet is eligible even with max_attempts 0",
			steps: []StepView{edited(stepView("a", state.StepPending), func(s *StepView) {
				s.MaxAttempts = 0
			})},
			target: "a",
			want:   want{ready: true, depsOK: true, eligible: true},
		},
		{
			name: "retryable with attempts left is eligible",
			steps: []StepView{edited(stepView("a", state.StepWaitingForRetry), func(s *StepView) {
				s.Attempts, s.MaxAttempts = 2, 3
			})},
			target: "a",
			want:   want{ready: true, depsOK: true, eligible: true},
		},
		{
			name: "not retryable after an attempt is not eligible",
			steps: []StepView{edited(stepView("a", state.StepWaitingForRetry), func(s *StepView) {
				s.Attempts, s.Retryable = 1, false
			})},
			target: "a",
			want:   want{depsOK: true, reason: []string{"no attempts left", "1 of 3"}},
		},
		{
			name: "exhausted attempts are not eligible",
			steps: []StepView{edited(stepView("a", state.StepWaitingForRetry), func(s *StepView) {
				s.Attempts, s.MaxAttempts = 3, 3
			})},
			target: "a",
			want:   want{depsOK: true, reason: []string{"no attempts left", "3 of 3"}},
		},
		{
			name: "permanent error explains itself",
			steps: []StepView{edited(stepView("a", state.StepError), func(s *StepView) {
				s.Attempts, s.Retryable = 1, false
			})},
			target: "a",
			want:   want{depsOK: true, reason: []string{"failed permanently"}},
		},
		{
			name: "error after exhausting retries says so",
			steps: []StepView{edited(stepView("a", state.StepError), func(s *StepView) {
				s.Attempts, s.MaxAttempts = 3, 3
			})},
			target: "a",
			want:   want{depsOK: true, reason: []string{"exhausted its 3 attempts"}},
		},
		{
			name:   "complete step is not ready and has no reason",
			steps:  []StepView{edited(stepView("a", state.StepComplete), func(s *StepView) { s.Attempts = 1 })},
			target: "a",
			want:   want{depsOK: true, eligible: true},
		},
		{
			name:   "running step is not ready and has no reason",
			steps:  []StepView{edited(stepView("a", state.StepEnqueued), func(s *StepView) { s.Attempts = 0 })},
			target: "a",
			want:   want{depsOK: true, eligible: true},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sum := Evaluate(tc.steps, evalNow)
			r, ok := sum.Steps[tc.target]
			if !ok {
				t.Fatalf("no readiness for %s", tc.target)
			}
			if r.Ready != tc.want.ready || r.DependenciesSatisfied != tc.want.depsOK || r.RetryEligible != tc.want.eligible {
				t.Errorf("Ready, DependenciesSatisfied, RetryEligible = %v, %v, %v; want %v, %v, %v",
					r.Ready, r.DependenciesSatisfied, r.RetryEligible, tc.want.ready, tc.want.depsOK, tc.want.eligible)
			}
			if got := slices.Contains(sum.Ready, tc.target); got != tc.want.ready {
				t.Errorf("Summary.Ready %v contains %s = %v, want %v", sum.Ready, tc.target, got, tc.want.ready)
			}
			if tc.want.reason == nil && r.BlockedReason != "" {
				t.Errorf("BlockedReason = %q, want empty", r.BlockedReason)
			}
			for _, sub := range tc.want.reason {
				if !strings.Contains(r.BlockedReason, sub) {
					t.Errorf("BlockedReason = %q, want it to mention %q", r.BlockedReason, sub)
				}
			}
		})
	}
}

func TestEvaluatePendingRetries(t *testing.T) {
	t.Parallel()
	retrying := func(name string, next time.Duration) StepView {
		return edited(stepView(name, state.StepWaitingForRetry), func(s *StepView) { s.Attempts, s.NextRetryAt = 1, evalAt(next) })
	}
	steps := []StepView{
		retrying("late", 30*time.Second),
		retrying("soon", 2*time.Second),
		// due is ready, not pending; spent has no attempt left, so it is
		// never retried and does not count.
		retrying("due", -time.Second),
		edited(retrying("spent", time.Second), func(s *StepView) { s.Attempts = 3 }),
		retrying("mid", 10*time.Second),
	}
	sum := Evaluate(steps, evalNow)
	if sum.PendingRetries != 3 {
		t.Errorf("PendingRetries = %d, want 3 (late, soon, mid)", sum.PendingRetries)
	}
	if sum.EarliestRetry == nil || !sum.EarliestRetry.Equal(*evalAt(2 * time.Second)) {
		t.Errorf("EarliestRetry = %v, want %v", sum.EarliestRetry, evalAt(2*time.Second))
	}
	if !slices.Equal(sum.Ready, []string{"due"}) {
		t.Errorf("Ready = %v, want [due]", sum.Ready)
	}
	// EarliestRetry is a copy: changing it must not move a step's retry.
	*sum.EarliestRetry = evalNow
	if !steps[1].NextRetryAt.Equal(*evalAt(2 * time.Second)) {
		t.Error("changing Summary.EarliestRetry changed the step's NextRetryAt")
	}

	none := Evaluate([]StepView{stepView("a", state.StepPending)}, evalNow)
	if none.PendingRetries != 0 || none.EarliestRetry != nil {
		t.Errorf("without retries: PendingRetries, EarliestRetry = %d, %v; want 0, nil", none.PendingRetries, none.EarliestRetry)
	}
}

func TestEvaluateCounts(t *testing.T) {
	t.Parallel()
	steps := []StepView{
		stepView("c1", state.StepComplete),
		stepView("c2", state.StepResolvedManually),
		stepView("e", state.StepError),
		stepView("x", state.StepCancelled),
		stepView("q", state.StepEnqueued),
		stepView("r", state.StepInProgress),
		stepView("o", state.StepEnqueuedForOrchestration),
		stepView("oe", state.StepEnqueuedAsErrorForOrchestration),
		stepView("p", state.StepPending, "e"),
	}
	sum := Evaluate(steps, evalNow)
	if sum.Total != 9 || sum.Complete != 2 || sum.Errored != 1 || sum.Cancelled != 1 || sum.InFlight != 4 {
		t.Errorf("Total, Complete, Errored, Cancelled, InFlight = %d, %d, %d, %d, %d; want 9, 2, 1, 1, 4",
			sum.Total, sum.Complete, sum.Errored, sum.Cancelled, sum.InFlight)
	}
	if sum.AllComplete() {
		t.Error("AllComplete with unfinished steps")
	}
	if len(sum.Ready) != 0 {
		t.Errorf("Ready = %v, want none", sum.Ready)
	}
}

// TestEvaluateStatusPrecedence pins the order in which execution statuses
// win: each case holds the conditions for two statuses and expects the
// higher one. Pairs that cannot hold together are left out: all_complete
// means every step is complete, so it excludes an errored, a ready and a
// running step, and it excludes waiting_for_dependencies by definition.
func TestEvaluateStatusPrecedence(t *testing.T) {
	t.Parallel()
	errored := stepView("dead", state.StepError)
	ready := stepView("next", state.StepPending)
	running := stepView("busy", state.StepInProgress)
	waiting := stepView("child", state.StepPending, "busy") // waits on the running step
	blockedChild := stepView("orphan", state.StepPending, "dead")
	tests := []struct {
		name  string
		steps []StepView
		want  ExecutionStatus
	}{
		{"blocked_by_failures beats has_ready_steps", []StepView{errored, ready}, StatusBlockedByFailures},
		{"blocked_by_failures beats processing", []StepView{errored, running}, StatusBlockedByFailures},
		{"blocked_by_failures beats waiting_for_dependencies", []StepView{errored, blockedChild}, StatusBlockedByFailures},
		{"has_ready_steps beats processing", []StepView{ready, running}, StatusHasReadySteps},
		{"has_ready_steps beats waiting_for_dependencies", []StepView{ready, running, waiting}, StatusHasReadySteps},
		{"processing beats waiting_for_dependencies", []StepView{running, waiting}, StatusProcessing},
		{"all_complete alone", []StepView{stepView("a", state.StepComplete), stepView("b", state.StepResolvedManually, "a")}, StatusAllComplete},
		{"no steps is all_complete", nil, StatusAllComplete},
		{"waiting_for_dependencies alone", []StepView{edited(stepView("a", state.StepWaitingForRetry), func(s *StepView) {
			s.Attempts, s.NextRetryAt = 1, evalAt(time.Minute)
		}), stepView("b", state.StepPending, "a")}, StatusWaitingForDependencies},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := Evaluate(tc.steps, evalNow).Status; got != tc.want {
				t.Errorf("Status = %s, want %s", got, tc.want)
			}
		})
	}
}

// TestEvaluateDeadStepsDoNotLookBusy is the case that once made tasks with
// dead steps look busy forever: three independent roots, one complete, one
// failed permanently, one failed after using up its retries.
func TestEvaluateDeadStepsDoNotLookBusy(t *testing.T) {
	t.Parallel()
	done := edited(stepView("done", state.StepComplete), func(s *StepView) { s.Attempts = 1 })
	permanent := edited(stepView("permanent", state.StepError), func(s *StepView) { s.Attempts, s.Retryable = 1, false })
	exhausted := edited(stepView("exhausted", state.StepError), func(s *StepView) { s.Attempts, s.MaxAttempts = 3, 3 })

	sum := Evaluate([]StepView{done, permanent, exhausted}, evalNow)
	if sum.Status != StatusBlockedByFailures {
		t.Errorf("Status = %s, want %s", sum.Status, StatusBlockedByFailures)
	}
	if sum.CanProgress() {
		t.Errorf("CanProgress = true with nothing ready, running or retrying (Ready %v, InFlight %d, PendingRetries %d)",
			sum.Ready, sum.InFlight, sum.PendingRetries)
	}
	if len(sum.Ready) != 0 {
		t.Errorf("Ready = %v, want none", sum.Ready)
	}

	// A fourth root still waiting out its backoff keeps the task moving,
	// while the status already reports the failures.
	retrying := edited(stepView("retrying", state.StepWaitingForRetry), func(s *StepView) {
		s.Attempts, s.NextRetryAt = 1, evalAt(5*time.Second)
	})
	sum = Evaluate([]StepView{done, permanent, exhausted, retrying}, evalNow)
	if sum.Status != StatusBlockedByFailures {
		t.Errorf("with a retrying root: Status = %s, want %s", sum.Status, StatusBlockedByFailures)
	}
	if !sum.CanProgress() {
		t.Error("with a retrying root: CanProgress = false, want true")
	}
	if sum.PendingRetries != 1 {
		t.Errorf("with a retrying root: PendingRetries = %d, want 1", sum.PendingRetries)
	}

	// Once its backoff is over it is ready, and still the status says
	// blocked_by_failures, never has_ready_steps.
	sum = Evaluate([]StepView{done, permanent, exhausted, retrying}, evalNow.Add(time.Minute))
	if sum.Status != StatusBlockedByFailures || !sum.CanProgress() || !slices.Equal(sum.Ready, []string{"retrying"}) {
		t.Errorf("after the backoff: Status %s, CanProgress %v, Ready %v; want %s, true, [retrying]",
			sum.Status, sum.CanProgress(), sum.Ready, StatusBlockedByFailures)
	}
}

func TestJoinWords(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   []string
		want string
	}{
		{nil, ""},
		{[]string{"a"}, "a"},
		{[]string{"a", "b"}, "a and b"},
		{[]string{"a", "b", "c"}, "a, b and c"},
	}
	for _, tc := range tests {
		if got := joinWords(tc.in); got != tc.want {
			t.Errorf("joinWords(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
