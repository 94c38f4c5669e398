package orchestration

import (
	"fmt"
	"testing"

	"github.com/tasker-go/tasker/state"
)

// evaluateTargets are the states evaluate can settle a task in.
var evaluateTargets = []state.TaskState{
	state.TaskComplete, state.TaskStepsInProcess, state.TaskWaitingForRetry,
	state.TaskBlockedByFailures, state.TaskWaitingForDependencies,
}

// impossibleTaskEvents says why the orchestrator never asks taskEvents for
// a combination, or "" when it can. The reasons follow evaluate:
//
//   - enqueued is true only when ready steps were enqueued, and then the
//     target is steps_in_process (enqueued steps are in flight);
//   - a task is stored in pending only until CreateTask evaluates it, in
//     the same transaction, and a new task has no step running, retrying or
//     failed (pending → waiting_for_dependencies cannot happen either, as
//     every DAG has a ready root, but its path is legal and stays tested);
//   - initializing, enqueuing_steps and evaluating_results are passed
//     through inside one transaction and never stored, so evaluate never
//     starts from them. They are still checked below where the path is
//     defined, because taskEvents documents no exception for them, except
//     enqueuing_steps, for which it returns no path at all.
func impossibleTaskEvents(cur, target state.TaskState, enqueued bool) string {
	switch {
	case enqueued && target != state.TaskStepsInProcess:
		return "enqueued steps are in flight, so the target is steps_in_process"
	case cur == state.TaskEnqueuingSteps:
		return "enqueuing_steps is never stored; taskEvents returns no path from it"
	case cur == state.TaskPending || cur == state.TaskInitializing:
		switch {
		case target == state.TaskStepsInProcess && !enqueued:
			return "a new task has nothing in flight unless it enqueued its roots"
		case target == state.TaskWaitingForRetry:
			return "a new task has no step waiting for retry"
		case target == state.TaskBlockedByFailures:
			return "a new task has no failed step"
		}
	}
	return ""
}

func TestTaskEventsPathsAreLegal(t *testing.T) {
	t.Parallel()
	var starts []state.TaskState
	for _, s := range state.TaskStates {
		if !s.Terminal() || s == state.TaskError {
			starts = append(starts, s)
		}
	}
	tested := 0
	for _, cur := range starts {
		for _, target := range evaluateTargets {
			for _, enqueued := range []bool{false, true} {
				name := fmt.Sprintf("%s_to_%s_enqueued=%v", cur, target, enqueued)
				if why := impossibleTaskEvents(cur, target, enqueued); why != "" {
					continue
				}
				tested++
				t.Run(name, func(t *testing.T) {
					evs := taskEvents(cur, target, enqueued)
					if cur == target {
						if len(evs) != 0 {
							t.Fatalf("taskEvents = %v, want no events when the task is already in %s", evs, target)
						}
						return
					}
					if len(evs) == 0 {
						t.Fatalf("taskEvents = [], want a path from %s to %s", cur, target)
					}
					from := cur
					for i, ev := range evs {
						to, err := state.NextTask(from, ev)
						if err != nil {
							t.Fatalf("event %d of %v: %v", i, evs, err)
						}
						from = to
					}
					if from != target {
						t.Fatalf("taskEvents = %v ends in %s, want %s", evs, from, target)
					}
					if enqueued && !containsEvent(evs, state.TaskEventStepsEnqueued) {
						t.Errorf("taskEvents = %v: steps were enqueued but the path does not record it", evs)
					}
				})
			}
		}
	}
	if tested < 40 {
		t.Fatalf("only %d combinations tested; the enumeration lost cases", tested)
	}
}

// TestTaskEventsFromSettledStatesResume checks that a task an operator
// fixes leaves blocked_by_failures and error through resume, the only way
// out of those states toward more work.
func TestTaskEventsFromSettledStatesResume(t *testing.T) {
	t.Parallel()
	for _, cur := range []state.TaskState{state.TaskBlockedByFailures, state.TaskError} {
		evs := taskEvents(cur, state.TaskStepsInProcess, true)
		if len(evs) == 0 || evs[0] != state.TaskEventResume {
			t.Errorf("taskEvents(%s, steps_in_process, true) = %v, want it to start with resume", cur, evs)
		}
	}
}

func containsEvent(evs []state.TaskEvent, ev state.TaskEvent) bool {
	for _, e := range evs {
		if e == ev {
			return true
		}
	}
	return false
}
