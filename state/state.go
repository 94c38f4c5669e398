// Package state holds the task and step state machines.
//
// Both machines are pure: a transition is a lookup in a table keyed by the
// current state and an event. Storage applies a transition as a
// compare-and-set on the current state and writes a history row, so two
// actors that race on the same transition cannot both win.
package state

import (
	"errors"
	"fmt"
)

// TaskState is the lifecycle state of a task. The string values are stored
// in the database and reported by the API.
type TaskState string

// Task states.
const (
	TaskPending                TaskState = "pending"
	TaskInitializing           TaskState = "initializing"
	TaskEnqueuingSteps         TaskState = "enqueuing_steps"
	TaskStepsInProcess         TaskState = "steps_in_process"
	TaskEvaluatingResults      TaskState = "evaluating_results"
	TaskWaitingForDependencies TaskState = "waiting_for_dependencies"
	TaskWaitingForRetry        TaskState = "waiting_for_retry"
	TaskBlockedByFailures      TaskState = "blocked_by_failures"
	TaskComplete               TaskState = "complete"
	TaskError                  TaskState = "error"
	TaskCancelled              TaskState = "cancelled"
	TaskResolvedManually       TaskState = "resolved_manually"
)

// TaskStates lists every task state in lifecycle order.
var TaskStates = []TaskState{
	TaskPending, TaskInitializing, TaskEnqueuingSteps, TaskStepsInProcess,
	TaskEvaluatingResults, TaskWaitingForDependencies, TaskWaitingForRetry,
	TaskBlockedByFailures, TaskComplete, TaskError, TaskCancelled, TaskResolvedManually,
}

// Terminal reports whether no further work happens on a task in state s
// without an operator's intervention.
func (s TaskState) Terminal() bool {
	switch s {
	case TaskComplete, TaskError, TaskCancelled, TaskResolvedManually:
		return true
	}
	return false
}

// Settled reports whether a task in state s is waiting for nobody but an
// operator: a terminal state, or blocked_by_failures.
func (s TaskState) Settled() bool { return s.Terminal() || s == TaskBlockedByFailures }

// Valid reports whether s is one of the task states.
func (s TaskState) Valid() bool {
	for _, v := range TaskStates {
		if v == s {
			return true
		}
	}
	return false
}

// StepState is the lifecycle state of a workflow step.
type StepState string

// Step states.
const (
	StepPending                         StepState = "pending"
	StepEnqueued                        StepState = "enqueued"
	StepInProgress                      StepState = "in_progress"
	StepEnqueuedForOrchestration        StepState = "enqueued_for_orchestration"
	StepEnqueuedAsErrorForOrchestration StepState = "enqueued_as_error_for_orchestration"
	StepWaitingForRetry                 StepState = "waiting_for_retry"
	StepComplete                        StepState = "complete"
	StepError                           StepState = "error"
	StepCancelled                       StepState = "cancelled"
	StepResolvedManually                StepState = "resolved_manually"
)

// StepStates lists every step state in lifecycle order.
var StepStates = []StepState{
	StepPending, StepEnqueued, StepInProgress, StepEnqueuedForOrchestration,
	StepEnqueuedAsErrorForOrchestration, StepWaitingForRetry, StepComplete,
	StepError, StepCancelled, StepResolvedManually,
}

// Terminal reports whether a step in state s will not run again without an
// operator's intervention.
func (s StepState) Terminal() bool {
	switch s {
	case StepComplete, StepError, StepCancelled, StepResolvedManually:
		return true
	}
	return false
}

// Satisfied reports whether a step in state s satisfies its children's
// dependency on it.
func (s StepState) Satisfied() bool { return s == StepComplete || s == StepResolvedManually }

// InFlight reports whether a step in state s is owned by a worker or waiting
// for the orchestrator to process its result.
func (s StepState) InFlight() bool {
	switch s {
	case StepEnqueued, StepInProgress, StepEnqueuedForOrchestration, StepEnqueuedAsErrorForOrchestration:
		return true
	}
	return false
}

// Valid reports whether s is one of the step states.
func (s StepState) Valid() bool {
	for _, v := range StepStates {
		if v == s {
			return true
		}
	}
	return false
}

// TaskEvent is something that happens to a task and may move it.
type TaskEvent string

// Task events.
const (
	TaskEventStart           TaskEvent = "start"              // pending → initializing
	TaskEventReadyStepsFound TaskEvent = "ready_steps_found"  // → enqueuing_steps
	TaskEventStepsEnqueued   TaskEvent = "steps_enqueued"     // enqueuing_steps → steps_in_process
	TaskEventEnqueueFailed   TaskEvent = "enqueue_failed"     // enqueuing_steps → error
	TaskEventResultsReceived TaskEvent = "results_received"   // a step result needs evaluation
	TaskEventAllComplete     TaskEvent = "all_complete"       // → complete
	TaskEventAwaitDeps       TaskEvent = "await_dependencies" // → waiting_for_dependencies
	TaskEventAwaitRetry      TaskEvent = "await_retry"        // → waiting_for_retry
	TaskEventStillProcessing TaskEvent = "still_processing"   // evaluating_results → steps_in_process
	TaskEventBlocked         TaskEvent = "blocked"            // → blocked_by_failures
	TaskEventFail            TaskEvent = "fail"               // → error
	TaskEventCancel          TaskEvent = "cancel"             // any non-terminal → cancelled
	TaskEventResolveManually TaskEvent = "resolve_manually"   // blocked/error → resolved_manually
	TaskEventResume          TaskEvent = "resume"             // blocked/error → evaluating_results after an operator fixed steps
	TaskEventStale           TaskEvent = "stale"              // any unsettled state → error, by the staleness sweeper
)

// StepEvent is something that happens to a step and may move it.
type StepEvent string

// Step events.
const (
	StepEventEnqueue          StepEvent = "enqueue"           // pending|waiting_for_retry → enqueued
	StepEventStart            StepEvent = "start"             // enqueued → in_progress (a worker claimed it)
	StepEventSucceed          StepEvent = "succeed"           // in_progress → enqueued_for_orchestration
	StepEventFailAttempt      StepEvent = "fail_attempt"      // in_progress → enqueued_as_error_for_orchestration
	StepEventComplete         StepEvent = "complete"          // enqueued_for_orchestration → complete
	StepEventScheduleRetry    StepEvent = "schedule_retry"    // enqueued_as_error_for_orchestration → waiting_for_retry
	StepEventFail             StepEvent = "fail"              // enqueued_as_error_for_orchestration → error
	StepEventCancel           StepEvent = "cancel"            // any non-terminal → cancelled
	StepEventResetForRetry    StepEvent = "reset_for_retry"   // error → pending, attempts cleared
	StepEventResolveManually  StepEvent = "resolve_manually"  // pending|waiting_for_retry|error → resolved_manually
	StepEventCompleteManually StepEvent = "complete_manually" // pending|waiting_for_retry|error → complete
)

// ErrIllegalTransition is matched by every *TransitionError.
var ErrIllegalTransition = errors.New("illegal state transition")

// TransitionError reports an event that is not allowed in the current state.
type TransitionError struct {
	Machine string // "task" or "step"
	From    string
	Event   string
}

func (e *TransitionError) Error() string {
	return fmt.Sprintf("%s: %s cannot %s from state %q", ErrIllegalTransition, e.Machine, e.Event, e.From)
}

// Is makes errors.Is(err, ErrIllegalTransition) true.
func (e *TransitionError) Is(target error) bool { return target == ErrIllegalTransition }

type taskKey struct {
	from TaskState
	ev   TaskEvent
}

type stepKey struct {
	from StepState
	ev   StepEvent
}

var taskTable = func() map[taskKey]TaskState {
	m := map[taskKey]TaskState{
		{TaskPending, TaskEventStart}: TaskInitializing,

		{TaskInitializing, TaskEventReadyStepsFound}: TaskEnqueuingSteps,
		{TaskInitializing, TaskEventAllComplete}:     TaskComplete, // a template with no steps
		{TaskInitializing, TaskEventAwaitDeps}:       TaskWaitingForDependencies,
		{TaskInitializing, TaskEventFail}:            TaskError,

		{TaskEnqueuingSteps, TaskEventStepsEnqueued}: TaskStepsInProcess,
		{TaskEnqueuingSteps, TaskEventEnqueueFailed}: TaskError,

		{TaskStepsInProcess, TaskEventResultsReceived}:         TaskEvaluatingResults,
		{TaskWaitingForDependencies, TaskEventResultsReceived}: TaskEvaluatingResults,
		{TaskWaitingForRetry, TaskEventResultsReceived}:        TaskEvaluatingResults,
		{TaskWaitingForRetry, TaskEventReadyStepsFound}:        TaskEnqueuingSteps,
		{TaskWaitingForDependencies, TaskEventReadyStepsFound}: TaskEnqueuingSteps,

		{TaskEvaluatingResults, TaskEventReadyStepsFound}: TaskEnqueuingSteps,
		{TaskEvaluatingResults, TaskEventAllComplete}:     TaskComplete,
		{TaskEvaluatingResults, TaskEventAwaitDeps}:       TaskWaitingForDependencies,
		{TaskEvaluatingResults, TaskEventAwaitRetry}:      TaskWaitingForRetry,
		{TaskEvaluatingResults, TaskEventStillProcessing}: TaskStepsInProcess,
		{TaskEvaluatingResults, TaskEventBlocked}:         TaskBlockedByFailures,
		{TaskEvaluatingResults, TaskEventFail}:            TaskError,

		{TaskBlockedByFailures, TaskEventFail}:            TaskError,
		{TaskBlockedByFailures, TaskEventResume}:          TaskEvaluatingResults,
		{TaskBlockedByFailures, TaskEventResolveManually}: TaskResolvedManually,
		{TaskError, TaskEventResume}:                      TaskEvaluatingResults,
		{TaskError, TaskEventResolveManually}:             TaskResolvedManually,
	}
	for _, s := range TaskStates {
		if !s.Terminal() {
			m[taskKey{s, TaskEventCancel}] = TaskCancelled
		}
		if !s.Settled() {
			m[taskKey{s, TaskEventStale}] = TaskError
		}
	}
	return m
}()

var stepTable = func() map[stepKey]StepState {
	m := map[stepKey]StepState{
		{StepPending, StepEventEnqueue}:         StepEnqueued,
		{StepWaitingForRetry, StepEventEnqueue}: StepEnqueued,
		{StepEnqueued, StepEventStart}:          StepInProgress,

		{StepInProgress, StepEventSucceed}:     StepEnqueuedForOrchestration,
		{StepInProgress, StepEventFailAttempt}: StepEnqueuedAsErrorForOrchestration,

		{StepEnqueuedForOrchestration, StepEventComplete}:             StepComplete,
		{StepEnqueuedAsErrorForOrchestration, StepEventScheduleRetry}: StepWaitingForRetry,
		{StepEnqueuedAsErrorForOrchestration, StepEventFail}:          StepError,

		{StepError, StepEventResetForRetry}: StepPending,
	}
	for _, s := range []StepState{StepPending, StepWaitingForRetry, StepError} {
		m[stepKey{s, StepEventResolveManually}] = StepResolvedManually
		m[stepKey{s, StepEventCompleteManually}] = StepComplete
	}
	for _, s := range StepStates {
		if !s.Terminal() {
			m[stepKey{s, StepEventCancel}] = StepCancelled
		}
	}
	return m
}()

// NextTask returns the state a task in state from moves to on ev, or a
// *TransitionError when ev is not allowed there.
func NextTask(from TaskState, ev TaskEvent) (TaskState, error) {
	if to, ok := taskTable[taskKey{from, ev}]; ok {
		return to, nil
	}
	return "", &TransitionError{Machine: "task", From: string(from), Event: string(ev)}
}

// NextStep returns the state a step in state from moves to on ev, or a
// *TransitionError when ev is not allowed there.
func NextStep(from StepState, ev StepEvent) (StepState, error) {
	if to, ok := stepTable[stepKey{from, ev}]; ok {
		return to, nil
	}
	return "", &TransitionError{Machine: "step", From: string(from), Event: string(ev)}
}

// TaskEvents lists every task event.
var TaskEvents = []TaskEvent{
	TaskEventStart, TaskEventReadyStepsFound, TaskEventStepsEnqueued, TaskEventEnqueueFailed,
	TaskEventResultsReceived, TaskEventAllComplete, TaskEventAwaitDeps, TaskEventAwaitRetry,
	TaskEventStillProcessing, TaskEventBlocked, TaskEventFail, TaskEventCancel,
	TaskEventResolveManually, TaskEventResume, TaskEventStale,
}

// StepEvents lists every step event.
var StepEvents = []StepEvent{
	StepEventEnqueue, StepEventStart, StepEventSucceed, StepEventFailAttempt, StepEventComplete,
	StepEventScheduleRetry, StepEventFail, StepEventCancel, StepEventResetForRetry,
	StepEventResolveManually, StepEventCompleteManually,
}
