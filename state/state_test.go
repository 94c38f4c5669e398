package state_test

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/tasker-go/tasker/state"
)

// The expectations below are written out by hand on purpose. They are the
// specification the table in state.go must match; deriving them from that
// table would only prove the table agrees with itself.

type taskTransition struct {
	from state.TaskState
	ev   state.TaskEvent
	to   state.TaskState
}

type stepTransition struct {
	from state.StepState
	ev   state.StepEvent
	to   state.StepState
}

// legalTaskTransitions is every transition the task machine allows.
var legalTaskTransitions = []taskTransition{
	{"pending", "start", "initializing"},
	{"pending", "cancel", "cancelled"},
	{"pending", "stale", "error"},

	{"initializing", "ready_steps_found", "enqueuing_steps"},
	{"initializing", "all_complete", "complete"},
	{"initializing", "await_dependencies", "waiting_for_dependencies"},
	{"initializing", "fail", "error"},
	{"initializing", "cancel", "cancelled"},
	{"initializing", "stale", "error"},

	{"enqueuing_steps", "steps_enqueued", "steps_in_process"},
	{"enqueuing_steps", "enqueue_failed", "error"},
	{"enqueuing_steps", "cancel", "cancelled"},
	{"enqueuing_steps", "stale", "error"},

	{"steps_in_process", "results_received", "evaluating_results"},
	{"steps_in_process", "cancel", "cancelled"},
	{"steps_in_process", "stale", "error"},

	{"evaluating_results", "ready_steps_found", "enqueuing_steps"},
	{"evaluating_results", "all_complete", "complete"},
	{"evaluating_results", "await_dependencies", "waiting_for_dependencies"},
	{"evaluating_results", "await_retry", "waiting_for_retry"},
	{"evaluating_results", "still_processing", "steps_in_process"},
	{"evaluating_results", "blocked", "blocked_by_failures"},
	{"evaluating_results", "fail", "error"},
	{"evaluating_results", "cancel", "cancelled"},
	{"evaluating_results", "stale", "error"},

	{"waiting_for_dependencies", "results_received", "evaluating_results"},
	{"waiting_for_dependencies", "ready_steps_found", "enqueuing_steps"},
	{"waiting_for_dependencies", "cancel", "cancelled"},
	{"waiting_for_dependencies", "stale", "error"},

	{"waiting_for_retry", "results_received", "evaluating_results"},
	{"waiting_for_retry", "ready_steps_found", "enqueuing_steps"},
	{"waiting_for_retry", "cancel", "cancelled"},
	{"waiting_for_retry", "stale", "error"},

	{"blocked_by_failures", "resume", "evaluating_results"},
	{"blocked_by_failures", "resolve_manually", "resolved_manually"},
	{"blocked_by_failures", "fail", "error"},
	{"blocked_by_failures", "cancel", "cancelled"},

	{"error", "resume", "evaluating_results"},
	{"error", "resolve_manually", "resolved_manually"},
}

// legalStepTransitions is every transition the step machine allows.
var legalStepTransitions = []stepTransition{
	{"pending", "enqueue", "enqueued"},
	{"pending", "resolve_manually", "resolved_manually"},
	{"pending", "complete_manually", "complete"},
	{"pending", "cancel", "cancelled"},

	{"enqueued", "start", "in_progress"},
	{"enqueued", "cancel", "cancelled"},

	{"in_progress", "succeed", "enqueued_for_orchestration"},
	{"in_progress", "fail_attempt", "enqueued_as_error_for_orchestration"},
	{"in_progress", "cancel", "cancelled"},

	{"enqueued_for_orchestration", "complete", "complete"},
	{"enqueued_for_orchestration", "cancel", "cancelled"},

	{"enqueued_as_error_for_orchestration", "schedule_retry", "waiting_for_retry"},
	{"enqueued_as_error_for_orchestration", "fail", "error"},
	{"enqueued_as_error_for_orchestration", "cancel", "cancelled"},

	{"waiting_for_retry", "enqueue", "enqueued"},
	{"waiting_for_retry", "resolve_manually", "resolved_manually"},
	{"waiting_for_retry", "complete_manually", "complete"},
	{"waiting_for_retry", "cancel", "cancelled"},

	{"error", "reset_for_retry", "pending"},
	{"error", "resolve_manually", "resolved_manually"},
	{"error", "complete_manually", "complete"},
}

var (
	wantTaskStates = strings.Fields(`pending initializing enqueuing_steps steps_in_process
		evaluating_results waiting_for_dependencies waiting_for_retry blocked_by_failures
		complete error cancelled resolved_manually`)
	wantStepStates = strings.Fields(`pending enqueued in_progress enqueued_for_orchestration
		enqueued_as_error_for_orchestration waiting_for_retry complete error cancelled
		resolved_manually`)
	wantTaskEvents = strings.Fields(`start ready_steps_found steps_enqueued enqueue_failed
		results_received all_complete await_dependencies await_retry still_processing blocked
		fail cancel resolve_manually resume stale`)
	wantStepEvents = strings.Fields(`enqueue start succeed fail_attempt complete schedule_retry
		fail cancel reset_for_retry resolve_manually complete_manually`)
)

func asStrings[S ~string](in []S) []string {
	out := make([]string, len(in))
	for i, s := range in {
		out[i] = string(s)
	}
	return out
}

func TestStateAndEventValues(t *testing.T) {
	t.Parallel()
	// State values are stored in the database and reported by the API, so
	// their spelling and the lifecycle order of the lists are both contract.
	if got := asStrings(state.TaskStates); !slices.Equal(got, wantTaskStates) {
		t.Errorf("TaskStates = %q, want %q", got, wantTaskStates)
	}
	if got := asStrings(state.StepStates); !slices.Equal(got, wantStepStates) {
		t.Errorf("StepStates = %q, want %q", got, wantStepStates)
	}
	// Event values land in transition history rows.
	if got := asStrings(state.TaskEvents); !slices.Equal(got, wantTaskEvents) {
		t.Errorf("TaskEvents = %q, want %q", got, wantTaskEvents)
	}
	if got := asStrings(state.StepEvents); !slices.Equal(got, wantStepEvents) {
		t.Errorf("StepEvents = %q, want %q", got, wantStepEvents)
	}

	// Each named constant must carry its own spelling, not just appear in
	// the list.
	taskConstants := []state.TaskState{
		state.TaskPending, state.TaskInitializing, state.TaskEnqueuingSteps,
		state.TaskStepsInProcess, state.TaskEvaluatingResults, state.TaskWaitingForDependencies,
		state.TaskWaitingForRetry, state.TaskBlockedByFailures, state.TaskComplete,
		state.TaskError, state.TaskCancelled, state.TaskResolvedManually,
	}
	if got := asStrings(taskConstants); !slices.Equal(got, wantTaskStates) {
		t.Errorf("task state constants = %q, want %q", got, wantTaskStates)
	}
	stepConstants := []state.StepState{
		state.StepPending, state.StepEnqueued, state.StepInProgress,
		state.StepEnqueuedForOrchestration, state.StepEnqueuedAsErrorForOrchestration,
		state.StepWaitingForRetry, state.StepComplete, state.StepError, state.StepCancelled,
		state.StepResolvedManually,
	}
	if got := asStrings(stepConstants); !slices.Equal(got, wantStepStates) {
		t.Errorf("step state constants = %q, want %q", got, wantStepStates)
	}
}

func TestLegalTaskTransitions(t *testing.T) {
	t.Parallel()
	for _, tt := range legalTaskTransitions {
		t.Run(string(tt.from)+"/"+string(tt.ev), func(t *testing.T) {
			t.Parallel()
			got, err := state.NextTask(tt.from, tt.ev)
			if err != nil {
				t.Fatalf("NextTask(%q, %q): unexpected error %v", tt.from, tt.ev, err)
			}
			if got != tt.to {
				t.Errorf("NextTask(%q, %q) = %q, want %q", tt.from, tt.ev, got, tt.to)
			}
		})
	}
}

func TestLegalStepTransitions(t *testing.T) {
	t.Parallel()
	for _, tt := range legalStepTransitions {
		t.Run(string(tt.from)+"/"+string(tt.ev), func(t *testing.T) {
			t.Parallel()
			got, err := state.NextStep(tt.from, tt.ev)
			if err != nil {
				t.Fatalf("NextStep(%q, %q): unexpected error %v", tt.from, tt.ev, err)
			}
			if got != tt.to {
				t.Errorf("NextStep(%q, %q) = %q, want %q", tt.from, tt.ev, got, tt.to)
			}
		})
	}
}

// checkIllegal asserts that err reports an illegal transition of the named
// machine and that its message lets an operator see what was attempted.
func checkIllegal(t *testing.T, err error, machine, from, ev string) {
	t.Helper()
	if err == nil {
		t.Errorf("%s %q on %q: allowed, want illegal", machine, ev, from)
		return
	}
	if !errors.Is(err, state.ErrIllegalTransition) {
		t.Errorf("%s %q on %q: error %v does not match ErrIllegalTransition", machine, ev, from, err)
	}
	var te *state.TransitionError
	if !errors.As(err, &te) {
		t.Fatalf("%s %q on %q: error %T is not a *TransitionError", machine, ev, from, err)
	}
	if te.Machine != machine || te.From != from || te.Event != ev {
		t.Errorf("TransitionError = {%q %q %q}, want {%q %q %q}",
			te.Machine, te.From, te.Event, machine, from, ev)
	}
	msg := err.Error()
	for _, part := range []string{machine, ev, `"` + from + `"`} {
		if !strings.Contains(msg, part) {
			t.Errorf("error message %q does not mention %s", msg, part)
		}
	}
}

func TestTaskCrossProduct(t *testing.T) {
	t.Parallel()
	legal := map[[2]string]string{}
	for _, tt := range legalTaskTransitions {
		key := [2]string{string(tt.from), string(tt.ev)}
		if _, dup := legal[key]; dup {
			t.Fatalf("expectation table lists %v twice", key)
		}
		legal[key] = string(tt.to)
	}
	seen := 0
	for _, from := range state.TaskStates {
		for _, ev := range state.TaskEvents {
			got, err := state.NextTask(from, ev)
			if want, ok := legal[[2]string{string(from), string(ev)}]; ok {
				seen++
				if err != nil || string(got) != want {
					t.Errorf("NextTask(%q, %q) = %q, %v; want %q", from, ev, got, err, want)
				}
				continue
			}
			if got != "" {
				t.Errorf("NextTask(%q, %q) returned state %q with an illegal transition", from, ev, got)
			}
			checkIllegal(t, err, "task", string(from), string(ev))
		}
	}
	// Every expectation must name a real state and event, or the cross
	// product above would silently skip it.
	if seen != len(legal) {
		t.Errorf("cross product covered %d of %d expected transitions", seen, len(legal))
	}
}

func TestStepCrossProduct(t *testing.T) {
	t.Parallel()
	legal := map[[2]string]string{}
	for _, tt := range legalStepTransitions {
		key := [2]string{string(tt.from), string(tt.ev)}
		if _, dup := legal[key]; dup {
			t.Fatalf("expectation table lists %v twice", key)
		}
		legal[key] = string(tt.to)
	}
	seen := 0
	for _, from := range state.StepStates {
		for _, ev := range state.StepEvents {
			got, err := state.NextStep(from, ev)
			if want, ok := legal[[2]string{string(from), string(ev)}]; ok {
				seen++
				if err != nil || string(got) != want {
					t.Errorf("NextStep(%q, %q) = %q, %v; want %q", from, ev, got, err, want)
				}
				continue
			}
			if got != "" {
				t.Errorf("NextStep(%q, %q) returned state %q with an illegal transition", from, ev, got)
			}
			checkIllegal(t, err, "step", string(from), string(ev))
		}
	}
	if seen != len(legal) {
		t.Errorf("cross product covered %d of %d expected transitions", seen, len(legal))
	}
}

func TestUnknownStatesAndEventsAreIllegal(t *testing.T) {
	t.Parallel()
	_, err := state.NextTask("done", state.TaskEventStart)
	checkIllegal(t, err, "task", "done", "start")
	_, err = state.NextTask(state.TaskPending, "begin")
	checkIllegal(t, err, "task", "pending", "begin")
	_, err = state.NextStep("", state.StepEventEnqueue)
	checkIllegal(t, err, "step", "", "enqueue")
	_, err = state.NextStep(state.StepPending, "Enqueue")
	checkIllegal(t, err, "step", "pending", "Enqueue")
}

func TestTerminalStatesAcceptOnlyOperatorEvents(t *testing.T) {
	t.Parallel()
	// The only way out of a terminal state is an operator's decision.
	wantTask := map[state.TaskState][]state.TaskEvent{
		state.TaskComplete:         nil,
		state.TaskCancelled:        nil,
		state.TaskResolvedManually: nil,
		state.TaskError:            {state.TaskEventResolveManually, state.TaskEventResume},
	}
	var terminalTasks []state.TaskState
	for _, s := range state.TaskStates {
		if !s.Terminal() {
			continue
		}
		terminalTasks = append(terminalTasks, s)
		var accepted []state.TaskEvent
		for _, ev := range state.TaskEvents {
			if _, err := state.NextTask(s, ev); err == nil {
				accepted = append(accepted, ev)
			}
		}
		if want := wantTask[s]; !slices.Equal(accepted, want) {
			t.Errorf("terminal task state %q accepts %q, want %q", s, accepted, want)
		}
	}
	if len(terminalTasks) != len(wantTask) {
		t.Errorf("terminal task states = %q, want the %d keys of %v", terminalTasks, len(wantTask), wantTask)
	}

	wantStep := map[state.StepState][]state.StepEvent{
		state.StepComplete:         nil,
		state.StepCancelled:        nil,
		state.StepResolvedManually: nil,
		state.StepError: {
			state.StepEventResetForRetry, state.StepEventResolveManually, state.StepEventCompleteManually,
		},
	}
	var terminalSteps []state.StepState
	for _, s := range state.StepStates {
		if !s.Terminal() {
			continue
		}
		terminalSteps = append(terminalSteps, s)
		var accepted []state.StepEvent
		for _, ev := range state.StepEvents {
			if _, err := state.NextStep(s, ev); err == nil {
				accepted = append(accepted, ev)
			}
		}
		if want := wantStep[s]; !slices.Equal(accepted, want) {
			t.Errorf("terminal step state %q accepts %q, want %q", s, accepted, want)
		}
	}
	if len(terminalSteps) != len(wantStep) {
		t.Errorf("terminal step states = %q, want the %d keys of %v", terminalSteps, len(wantStep), wantStep)
	}
}

func TestBlockedByFailuresHasAWayOut(t *testing.T) {
	t.Parallel()
	// blocked_by_failures is not terminal: an operator can resume it after
	// fixing steps, settle it by hand, give up on it, or cancel it.
	want := map[state.TaskEvent]state.TaskState{
		state.TaskEventResume:          state.TaskEvaluatingResults,
		state.TaskEventResolveManually: state.TaskResolvedManually,
		state.TaskEventFail:            state.TaskError,
		state.TaskEventCancel:          state.TaskCancelled,
	}
	for _, ev := range state.TaskEvents {
		got, err := state.NextTask(state.TaskBlockedByFailures, ev)
		to, ok := want[ev]
		switch {
		case ok && (err != nil || got != to):
			t.Errorf("blocked_by_failures on %q = %q, %v; want %q", ev, got, err, to)
		case !ok && err == nil:
			t.Errorf("blocked_by_failures accepts %q (→ %q), want illegal", ev, got)
		}
	}
}

func TestCancel(t *testing.T) {
	t.Parallel()
	for _, s := range state.TaskStates {
		got, err := state.NextTask(s, state.TaskEventCancel)
		if s.Terminal() {
			if err == nil {
				t.Errorf("task %q: cancel allowed from a terminal state (→ %q)", s, got)
			}
			continue
		}
		if err != nil || got != state.TaskCancelled {
			t.Errorf("task %q: cancel = %q, %v; want cancelled", s, got, err)
		}
	}
	for _, s := range state.StepStates {
		got, err := state.NextStep(s, state.StepEventCancel)
		if s.Terminal() {
			if err == nil {
				t.Errorf("step %q: cancel allowed from a terminal state (→ %q)", s, got)
			}
			continue
		}
		if err != nil || got != state.StepCancelled {
			t.Errorf("step %q: cancel = %q, %v; want cancelled", s, got, err)
		}
	}
}

func TestTaskPredicates(t *testing.T) {
	t.Parallel()
	tests := []struct {
		s                 state.TaskState
		terminal, settled bool
	}{
		{"pending", false, false},
		{"initializing", false, false},
		{"enqueuing_steps", false, false},
		{"steps_in_process", false, false},
		{"evaluating_results", false, false},
		{"waiting_for_dependencies", false, false},
		{"waiting_for_retry", false, false},
		{"blocked_by_failures", false, true},
		{"complete", true, true},
		{"error", true, true},
		{"cancelled", true, true},
		{"resolved_manually", true, true},
	}
	if len(tests) != len(state.TaskStates) {
		t.Fatalf("table covers %d task states, there are %d", len(tests), len(state.TaskStates))
	}
	for _, tt := range tests {
		if !tt.s.Valid() {
			t.Errorf("%q.Valid() = false", tt.s)
		}
		if got := tt.s.Terminal(); got != tt.terminal {
			t.Errorf("%q.Terminal() = %v, want %v", tt.s, got, tt.terminal)
		}
		if got := tt.s.Settled(); got != tt.settled {
			t.Errorf("%q.Settled() = %v, want %v", tt.s, got, tt.settled)
		}
	}
}

func TestStepPredicates(t *testing.T) {
	t.Parallel()
	tests := []struct {
		s                             state.StepState
		terminal, satisfied, inFlight bool
	}{
		{"pending", false, false, false},
		{"enqueued", false, false, true},
		{"in_progress", false, false, true},
		{"enqueued_for_orchestration", false, false, true},
		{"enqueued_as_error_for_orchestration", false, false, true},
		{"waiting_for_retry", false, false, false},
		{"complete", true, true, false},
		{"error", true, false, false},
		{"cancelled", true, false, false},
		{"resolved_manually", true, true, false},
	}
	if len(tests) != len(state.StepStates) {
		t.Fatalf("table covers %d step states, there are %d", len(tests), len(state.StepStates))
	}
	for _, tt := range tests {
		if !tt.s.Valid() {
			t.Errorf("%q.Valid() = false", tt.s)
		}
		if got := tt.s.Terminal(); got != tt.terminal {
			t.Errorf("%q.Terminal() = %v, want %v", tt.s, got, tt.terminal)
		}
		if got := tt.s.Satisfied(); got != tt.satisfied {
			t.Errorf("%q.Satisfied() = %v, want %v", tt.s, got, tt.satisfied)
		}
		if got := tt.s.InFlight(); got != tt.inFlight {
			t.Errorf("%q.InFlight() = %v, want %v", tt.s, got, tt.inFlight)
		}
	}
}

func TestValidRejectsUnknownStrings(t *testing.T) {
	t.Parallel()
	for _, s := range []string{
		"", " ", "Pending", "PENDING", " pending", "pending ", "done", "completed", "canceled",
		"failed", "running", "resolved-manually", "blocked",
	} {
		if state.TaskState(s).Valid() {
			t.Errorf("TaskState(%q).Valid() = true", s)
		}
		if state.StepState(s).Valid() {
			t.Errorf("StepState(%q).Valid() = true", s)
		}
	}
	// States of one machine are not states of the other.
	for _, s := range []string{"initializing", "enqueuing_steps", "steps_in_process",
		"evaluating_results", "waiting_for_dependencies", "blocked_by_failures"} {
		if state.StepState(s).Valid() {
			t.Errorf("StepState(%q).Valid() = true; it is a task state only", s)
		}
	}
	for _, s := range []string{"enqueued", "in_progress", "enqueued_for_orchestration",
		"enqueued_as_error_for_orchestration"} {
		if state.TaskState(s).Valid() {
			t.Errorf("TaskState(%q).Valid() = true; it is a step state only", s)
		}
	}
}

// TestEveryTaskStateCanFinish walks the task machine: every state must be
// reachable from pending, and from every state a terminal one must be
// reachable, so no task can be stranded by the table.
func TestEveryTaskStateCanFinish(t *testing.T) {
	t.Parallel()
	next := func(s state.TaskState) []state.TaskState {
		var out []state.TaskState
		for _, ev := range state.TaskEvents {
			if to, err := state.NextTask(s, ev); err == nil {
				out = append(out, to)
			}
		}
		return out
	}
	reach := func(from state.TaskState) map[state.TaskState]bool {
		seen := map[state.TaskState]bool{from: true}
		queue := []state.TaskState{from}
		for len(queue) > 0 {
			s := queue[0]
			queue = queue[1:]
			for _, to := range next(s) {
				if !seen[to] {
					seen[to] = true
					queue = append(queue, to)
				}
			}
		}
		return seen
	}
	fromPending := reach(state.TaskPending)
	for _, s := range state.TaskStates {
		if !fromPending[s] {
			t.Errorf("task state %q is unreachable from pending", s)
		}
		if !reach(s)[state.TaskComplete] && !s.Terminal() {
			t.Errorf("task state %q can never reach complete", s)
		}
	}
}

// TestEveryStepStateCanFinish does the same for the step machine.
func TestEveryStepStateCanFinish(t *testing.T) {
	t.Parallel()
	reach := func(from state.StepState) map[state.StepState]bool {
		seen := map[state.StepState]bool{from: true}
		queue := []state.StepState{from}
		for len(queue) > 0 {
			s := queue[0]
			queue = queue[1:]
			for _, ev := range state.StepEvents {
				if to, err := state.NextStep(s, ev); err == nil && !seen[to] {
					seen[to] = true
					queue = append(queue, to)
				}
			}
		}
		return seen
	}
	fromPending := reach(state.StepPending)
	for _, s := range state.StepStates {
		if !fromPending[s] {
			t.Errorf("step state %q is unreachable from pending", s)
		}
		if !s.Terminal() && !reach(s)[state.StepComplete] {
			t.Errorf("step state %q can never reach complete", s)
		}
	}
}
