package orchestration

import (
	"context"
	"fmt"
	"time"

	"github.com/tasker-go/tasker/state"
	"github.com/tasker-go/tasker/store"
	"github.com/tasker-go/tasker/template"
)

// IncrementalThreshold is the number of steps above which a task's results
// are processed incrementally: instead of reading every step of the task
// and evaluating all of them, an orchestration transaction reads the steps
// whose results it applies, the steps those results may have made ready
// (their children, and steps waiting for a retry), and which states the
// rest are in, and enqueues the ready ones with one statement. The outcome is
// the same as a full evaluation's; the cost per batch of results no longer
// grows with the size of the task. A negative value turns it off. An
// Orchestrator reads it once, in New.
//
// Creating and cancelling a task, and operators' step actions, still read
// the whole task: they happen once per task, not once per result.
var IncrementalThreshold = 256

// large reports whether a task with n steps is processed incrementally.
func (o *Orchestrator) large(n int) bool {
	return o.incrementalAbove >= 0 && n > o.incrementalAbove
}

// processLargeTask is processLockedTask for a large task: it reads only
// the steps whose results it applies, then evaluates incrementally.
func (o *Orchestrator) processLargeTask(ctx context.Context, tx store.Tx, task *store.TaskRow, t *template.Template,
	resultSteps map[string]bool, now time.Time, eff *effects) error {
	ids := sortedKeys(resultSteps)
	// A success the store settled while recording it has nothing left to
	// apply unless its outcome is published (see applyResults): only the
	// other results' rows are read. In a large fan-out of steps that
	// publish nothing, that is none, and a round trip per batch saved.
	read := ids
	if o.cfg.Events == nil || !publishesEvents(t) {
		read = nil
		for _, id := range ids {
			if !eff.settled[id] {
				read = append(read, id)
			}
		}
	}
	if len(read) > 0 {
		steps, err := tx.StepsGet(ctx, store.StepsGetParams{TaskUUID: task.UUID, UUIDs: read})
		if err != nil {
			return err
		}
		if err := o.applyResults(ctx, tx, task, t, steps, resultSteps, now, eff); err != nil {
			return err
		}
	}
	return o.evaluateLarge(ctx, tx, task, ids, now, eff)
}

// evaluateLarge is evaluate for a large task after the steps in changed
// got their results: it decides readiness among the steps those results
// may have made ready, and the task's state from the states its steps are
// in, with the same outcome as evaluate over every step. That holds because, after every
// evaluation of an active task, no pending step is ready: a step becomes
// ready only when a parent completes (a child of a changed step) or when
// its backoff ends (a step waiting for retry, all of which are read).
func (o *Orchestrator) evaluateLarge(ctx context.Context, tx store.Tx, task *store.TaskRow, changed []string,
	now time.Time, eff *effects) error {
	cur := state.TaskState(task.State)
	// As evaluate: a settled task moves only when an operator acts, and
	// operators' actions take the full path.
	if cur.Settled() {
		return nil
	}
	progress, err := tx.TaskProgress(ctx, store.TaskProgressParams{TaskUUID: task.UUID, Steps: changed})
	if err != nil {
		return err
	}
	sum := EvaluateProgress(progress, now)
	// One statement per state the ready steps leave, in the order
	// evaluate would enqueue them within that state.
	from := map[string]string{}
	for _, c := range progress.Candidates {
		from[c.UUID] = c.State
	}
	groups := map[string][]string{}
	var order []string
	for _, id := range sum.Ready {
		st := from[id]
		if groups[st] == nil {
			order = append(order, st)
		}
		groups[st] = append(groups[st], id)
	}
	for _, st := range order {
		if err := tx.StepsEnqueue(ctx, store.StepsEnqueueParams{TaskUUID: task.UUID, Steps: groups[st], From: st,
			Queue: store.WorkerQueue(task.Namespace), Priority: task.Priority, Now: now}); err != nil {
			return fmt.Errorf("enqueue steps of task %s: %w", task.UUID, err)
		}
	}
	enqueued := len(sum.Ready) > 0
	if enqueued {
		eff.namespaces[task.Namespace] = struct{}{}
	}
	return o.settle(ctx, tx, task, cur, sum, enqueued, now, eff)
}

// EvaluateProgress is Evaluate for a task known by the states its steps
// are in and the steps that may be ready (see store.TaskProgress). Its
// Status, Ready, PendingRetries and EarliestRetry are Evaluate's; its
// counts only say which are zero; Steps holds the candidates only.
func EvaluateProgress(p *store.TaskProgress, now time.Time) Summary {
	// Each state present counts as one step: the decisions made from a
	// Summary only ask whether a count is zero and whether every step is
	// complete, and both answers are the same as with the real counts.
	sum := Summary{Steps: make(map[string]StepReadiness, len(p.Candidates))}
	for _, st := range p.States {
		sum.Total++
		switch s := state.StepState(st); {
		case s.Satisfied():
			sum.Complete++
		case s == state.StepError:
			sum.Errored++
		case s == state.StepCancelled:
			sum.Cancelled++
		case s.InFlight():
			sum.InFlight++
		}
	}
	for i := range p.Candidates {
		c := &p.Candidates[i]
		v := viewOf(c.StepRow)
		r := StepReadiness{DependenciesSatisfied: c.DependenciesSatisfied}
		var waitingOn []string
		if !r.DependenciesSatisfied {
			waitingOn = []string{"a parent"}
		}
		sum.judgeWaiting(&v, &r, waitingOn, now)
		sum.Steps[c.UUID] = r
	}
	sum.setStatus()
	return sum
}

// publishesEvents reports whether any step of t publishes domain events.
func publishesEvents(t *template.Template) bool {
	for i := range t.Steps {
		if len(t.Steps[i].PublishesEvents) > 0 {
			return true
		}
	}
	return false
}
