package tasker

import (
	"context"
	"errors"
	"fmt"

	"github.com/tasker-go/tasker/internal/orchestration"
	"github.com/tasker-go/tasker/store"
)

// BatchError is returned by CreateTasks when a request of the batch is
// refused; it names the request's position, and errors.Is sees through it
// to the reason (ErrDuplicateTask, ErrTemplateNotFound, ErrInvalidContext…).
type BatchError = orchestration.BatchError

// MaxCreateBatch is the most requests CreateTasks takes at once.
const MaxCreateBatch = 1000

// CreateTasks creates many tasks in one transaction: all of them, or, if
// any request is refused, none (the error is a *BatchError naming the
// first refused request). Submitting many tasks this way costs one commit
// instead of one per task. The tasks are returned in request order.
func (e *Engine) CreateTasks(ctx context.Context, reqs []TaskRequest) ([]*Task, error) {
	if len(reqs) == 0 {
		return nil, nil
	}
	if len(reqs) > MaxCreateBatch {
		return nil, fmt.Errorf("create tasks: %d requests, at most %d per batch", len(reqs), MaxCreateBatch)
	}
	ps := make([]orchestration.CreateTaskParams, len(reqs))
	for i, req := range reqs {
		p, err := createParams(req)
		if err != nil {
			return nil, &BatchError{Index: i, Err: err}
		}
		ps[i] = p
	}
	var created []orchestration.CreatedTask
	err := e.createWithClaim(ctx, func(claim store.StepsClaimParams) ([]store.ClaimedStep, error) {
		var claimed []store.ClaimedStep
		var err error
		created, claimed, err = e.orch.CreateTasks(ctx, ps, claim)
		return claimed, err
	})
	if err != nil {
		var be *BatchError
		if errors.As(err, &be) {
			return nil, err
		}
		return nil, fmt.Errorf("create tasks: %w", err)
	}
	return tasksFrom(created), nil
}

// createMany writes the tasks of ps in one transaction, for CreateTask
// calls that share it (see createQueue): a refused request (bad input, an
// identity already taken) gets its error at its position in refused, and
// the others are created. Any other failure fails the transaction.
func (e *Engine) createMany(ctx context.Context, ps []orchestration.CreateTaskParams) (_ []*Task, refused []error, err error) {
	var created []orchestration.CreatedTask
	err = e.createWithClaim(ctx, func(claim store.StepsClaimParams) ([]store.ClaimedStep, error) {
		var claimed []store.ClaimedStep
		var err error
		created, refused, claimed, err = e.orch.CreateTasksEach(ctx, ps, claim)
		return claimed, err
	})
	if err != nil {
		return nil, nil, err
	}
	return tasksFrom(created), refused, nil
}

// tasksFrom turns created tasks into Tasks, in order; a request that
// created none (refused, see createMany) gets nil.
func tasksFrom(created []orchestration.CreatedTask) []*Task {
	out := make([]*Task, len(created))
	for i, c := range created {
		if c.Task != nil {
			out[i] = taskFrom(c.Task, c.Summary)
		}
	}
	return out
}
