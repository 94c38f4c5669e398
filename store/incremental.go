package store

import (
	"context"
	"time"
)

// Incremental is the set of operations that let an orchestrator work on a
// task with thousands of steps without reading all of them in every
// transaction: it reads the steps a batch of results touched, the steps
// those results may have made ready, and which states the rest are in,
// and it enqueues many steps in one statement.
type Incremental interface {
	StepsCount(ctx context.Context, p StepsCountParams) (int, error)
	StepsGet(ctx context.Context, p StepsGetParams) ([]StepRow, error)
	TaskProgress(ctx context.Context, p TaskProgressParams) (*TaskProgress, error)
	StepsEnqueue(ctx context.Context, p StepsEnqueueParams) error
}

// StepsCountParams counts a task's steps, stopping at Limit (no bound when
// Limit is 0), so that telling a large task from a small one costs at most
// Limit index entries.
type StepsCountParams struct {
	TaskUUID string
	Limit    int
}

// StepsGetParams reads the named steps of a task, ordered by position,
// without their Result, Error and Parents. Unknown UUIDs and steps of
// other tasks are left out.
type StepsGetParams struct {
	TaskUUID string
	UUIDs    []string
}

// TaskProgressParams asks what a task's readiness depends on after the
// results of Steps were applied in the same transaction.
type TaskProgressParams struct {
	TaskUUID string
	// Steps are the steps whose results were just applied.
	Steps []string
}

// TaskProgress is what readiness needs to know about a large task.
type TaskProgress struct {
	// States are the states that at least one of the task's steps is in,
	// in no particular order. Which states occur is all that deciding the
	// task's next state needs (any step in error, any in flight, all
	// complete), and unlike counts it is found without visiting every
	// step.
	States []string
	// Candidates are the steps that may be ready: every step in state
	// pending or waiting_for_retry that is one of Steps, a child of one of
	// Steps, or (for waiting_for_retry) any step of the task. Ordered by
	// position; Result, Error and Parents are left empty.
	Candidates []ProgressStep
}

// ProgressStep is a step that may be ready.
type ProgressStep struct {
	StepRow
	// DependenciesSatisfied is true when every parent of the step is
	// complete or resolved manually.
	DependenciesSatisfied bool
}

// StepsEnqueueParams moves Steps of one task from state From to enqueued
// (clearing next_retry_at), records a history row with event "enqueue" for
// each, and sends one message per step, in the order of Steps, to Queue
// with Priority. It fails with ErrStateConflict if any step is not in
// From; inside a transaction that failure may surface at the next
// statement or at commit, as TaskTransitionParams.Deferred describes, so
// call it only while holding the task's row lock.
type StepsEnqueueParams struct {
	TaskUUID string
	Steps    []string
	From     string
	Queue    string
	Priority int
	Now      time.Time
}
