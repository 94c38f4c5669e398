package orchestration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/tasker-go/tasker/state"
	"github.com/tasker-go/tasker/store"
	"github.com/tasker-go/tasker/template"
)

// Errors of the dead-letter queue that callers tell apart.
var (
	ErrDLQNotFound = errors.New("dead-letter entry not found")
	// ErrDLQNotPending is returned when a redrive addresses an entry that
	// is already resolved.
	ErrDLQNotPending = errors.New("dead-letter entry is not pending")
	// ErrDLQTaskMoved is returned when a redrive finds the task no longer
	// in error or blocked_by_failures: someone settled it meanwhile.
	ErrDLQTaskMoved = errors.New("task is no longer in error")
)

// DLQ reasons written by the engine. A stale task's reason names the limit
// it exceeded.
const (
	ReasonMaxDuration               = "max_duration_exceeded"
	ReasonStepsInProcessTimeout     = "steps_in_process_timeout"
	ReasonWaitingForDepsTimeout     = "waiting_for_dependencies_timeout"
	ReasonWaitingForRetryTimeout    = "waiting_for_retry_timeout"
	ReasonPoisonOrchestrationResult = "poison_orchestration_message"
)

// unsettledStates are the task states the staleness sweeper watches.
var unsettledStates = func() []string {
	var out []string
	for _, s := range state.TaskStates {
		if !s.Settled() {
			out = append(out, string(s))
		}
	}
	return out
}()

// limits are a template's effective staleness thresholds; zero disables one.
type limits struct {
	duration, inProcess, deps, retry time.Duration
}

func (o *Orchestrator) limitsFor(lc template.Lifecycle) limits {
	pick := func(minutes int, def time.Duration) time.Duration {
		if minutes > 0 {
			return time.Duration(minutes) * time.Minute
		}
		return max(def, 0)
	}
	return limits{
		duration:  pick(lc.MaxDurationMinutes, o.cfg.MaxTaskDuration),
		inProcess: pick(lc.MaxStepsInProcessMinutes, o.cfg.MaxStepsInProcess),
		deps:      pick(lc.MaxWaitingForDependenciesMinutes, o.cfg.MaxWaitingForDependencies),
		retry:     pick(lc.MaxWaitingForRetryMinutes, o.cfg.MaxWaitingForRetry),
	}
}

// forState is the threshold for time without progress in st, and the
// reason recorded when it is exceeded. States a task only passes through
// inside a transaction count as processing.
func (l limits) forState(st state.TaskState) (time.Duration, string) {
	switch st {
	case state.TaskWaitingForDependencies:
		return l.deps, ReasonWaitingForDepsTimeout
	case state.TaskWaitingForRetry:
		return l.retry, ReasonWaitingForRetryTimeout
	}
	return l.inProcess, ReasonStepsInProcessTimeout
}

// staleReason says why a task is stale at now, or "" if it is not.
func (l limits) staleReason(st state.TaskState, created, lastActivity, now time.Time) (string, string) {
	if l.duration > 0 && now.Sub(created) > l.duration {
		return ReasonMaxDuration, fmt.Sprintf("task has existed for %s (limit %s)", now.Sub(created).Round(time.Second), l.duration)
	}
	if lim, reason := l.forState(st); lim > 0 && now.Sub(lastActivity) > lim {
		return reason, fmt.Sprintf("no progress in state %s for %s (limit %s)", st, now.Sub(lastActivity).Round(time.Second), lim)
	}
	return "", ""
}

// floors are the smallest thresholds in use, over the configured defaults
// and every registered template, so that one query finds every candidate.
func (o *Orchestrator) floors(ctx context.Context) (inactive, duration time.Duration, err error) {
	rows, err := o.d.Reader().TemplateList(ctx, store.TemplateListParams{})
	if err != nil {
		return 0, 0, err
	}
	lower := func(cur *time.Duration, v time.Duration) {
		if v > 0 && (*cur == 0 || v < *cur) {
			*cur = v
		}
	}
	all := []limits{o.limitsFor(template.Lifecycle{})}
	for _, r := range rows {
		t, err := o.templates.Get(ctx, r.Namespace, r.Name, r.Version)
		if err != nil {
			return 0, 0, err
		}
		all = append(all, o.limitsFor(t.Lifecycle))
	}
	for _, l := range all {
		lower(&duration, l.duration)
		lower(&inactive, l.inProcess)
		lower(&inactive, l.deps)
		lower(&inactive, l.retry)
	}
	return inactive, duration, nil
}

// SweepStale finds tasks that exceeded their template's lifecycle limits
// (or the configured defaults), records each in the dead-letter queue and
// moves it to error. It returns how many tasks it dead-lettered.
func (o *Orchestrator) SweepStale(ctx context.Context) (int, error) {
	inactive, duration, err := o.floors(ctx)
	if err != nil {
		return 0, fmt.Errorf("staleness sweep: %w", err)
	}
	if inactive == 0 && duration == 0 {
		return 0, nil
	}
	now := o.cfg.Now()
	p := store.TasksStaleParams{States: unsettledStates, Limit: 200}
	if inactive > 0 {
		p.InactiveBefore = now.Add(-inactive)
	}
	if duration > 0 {
		p.CreatedBefore = now.Add(-duration)
	}
	cands, err := o.d.Reader().TasksStale(ctx, p)
	if err != nil {
		return 0, fmt.Errorf("staleness sweep: %w", err)
	}
	n := 0
	var errs []error
	for _, c := range cands {
		ok, err := o.deadLetterTask(ctx, c.Task.UUID)
		if err != nil {
			if ctx.Err() != nil {
				return n, err
			}
			errs = append(errs, fmt.Errorf("task %s: %w", c.Task.UUID, err))
			continue
		}
		if ok {
			n++
		}
	}
	return n, errors.Join(errs...)
}

// deadLetterTask re-checks a candidate under its row lock and, if it is
// still stale, writes its DLQ entry and moves it to error, in one
// transaction.
func (o *Orchestrator) deadLetterTask(ctx context.Context, taskUUID string) (bool, error) {
	now := o.cfg.Now()
	eff := newEffects()
	done := false
	err := store.InTx(ctx, o.d, func(tx store.Tx) error {
		task, err := tx.TaskGet(ctx, store.TaskGetParams{UUID: taskUUID, ForUpdate: true})
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		cur := state.TaskState(task.State)
		if cur.Settled() {
			return nil
		}
		steps, err := tx.StepsForTask(ctx, store.StepsForTaskParams{TaskUUID: taskUUID})
		if err != nil {
			return err
		}
		last := task.UpdatedAt
		for _, s := range steps {
			if s.UpdatedAt.After(last) {
				last = s.UpdatedAt
			}
		}
		t, err := o.templates.Get(ctx, task.Namespace, task.Name, task.Version)
		if err != nil {
			return err
		}
		reason, detail := o.limitsFor(t.Lifecycle).staleReason(cur, task.CreatedAt, last, now)
		if reason == "" {
			return nil // progressed since the candidate was read
		}
		snap, err := json.Marshal(snapshotOf(task, steps, detail, last))
		if err != nil {
			return err
		}
		id, err := tx.DLQInsert(ctx, store.DLQInsertParams{Kind: store.DLQKindTask, TaskUUID: task.UUID,
			Namespace: task.Namespace, TaskName: task.Name, Reason: reason, OriginalState: task.State,
			Snapshot: snap, Now: now})
		if err != nil {
			return err
		}
		if err := tx.TaskTransition(ctx, store.TaskTransitionParams{UUID: task.UUID, From: task.State,
			To: string(state.TaskError), Event: string(state.TaskEventStale), Now: now,
			Metadata: mustJSON(map[string]any{"reason": reason, "detail": detail, "dlq_entry": id, "by": o.cfg.Owner})}); err != nil {
			return err
		}
		eff.tasks[task.UUID] = state.TaskError
		o.log.Warn("task is stale; moved to error and recorded in the dead-letter queue", "task_uuid", task.UUID,
			"namespace", task.Namespace, "state", task.State, "reason", reason, "detail", detail, "dlq_entry", id)
		done = true
		return nil
	})
	if err != nil {
		return false, err
	}
	o.announce(eff)
	return done, nil
}

// snapshot is what a DLQ entry keeps of a task when it is dead-lettered.
type snapshot struct {
	Detail         string         `json:"detail"`
	LastActivityAt time.Time      `json:"last_activity_at"`
	Task           snapshotTask   `json:"task"`
	Steps          []snapshotStep `json:"steps"`
}

type snapshotTask struct {
	UUID      string          `json:"task_uuid"`
	Namespace string          `json:"namespace"`
	Name      string          `json:"name"`
	Version   string          `json:"version"`
	State     string          `json:"state"`
	Context   json.RawMessage `json:"context"`
	CreatedAt time.Time       `json:"created_at"`
	UpdatedAt time.Time       `json:"updated_at"`
}

type snapshotStep struct {
	UUID        string          `json:"step_uuid"`
	Name        string          `json:"name"`
	State       string          `json:"state"`
	Attempts    int             `json:"attempts"`
	MaxAttempts int             `json:"max_attempts"`
	Result      json.RawMessage `json:"result,omitempty"`
	Error       json.RawMessage `json:"error,omitempty"`
	NextRetryAt *time.Time      `json:"next_retry_at,omitempty"`
	UpdatedAt   time.Time       `json:"updated_at"`
}

func snapshotOf(task *store.TaskRow, steps []store.StepRow, detail string, last time.Time) snapshot {
	s := snapshot{Detail: detail, LastActivityAt: last, Task: snapshotTask{UUID: task.UUID, Namespace: task.Namespace,
		Name: task.Name, Version: task.Version, State: task.State, Context: task.Context, CreatedAt: task.CreatedAt,
		UpdatedAt: task.UpdatedAt}}
	for _, st := range steps {
		s.Steps = append(s.Steps, snapshotStep{UUID: st.UUID, Name: st.Name, State: st.State, Attempts: st.Attempts,
			MaxAttempts: st.MaxAttempts, Result: st.Result, Error: st.Error, NextRetryAt: st.NextRetryAt, UpdatedAt: st.UpdatedAt})
	}
	return s
}

// runStaleness is the staleness sweeper actor.
func (o *Orchestrator) runStaleness(ctx context.Context) {
	if o.cfg.StalenessInterval < 0 {
		return
	}
	tick := time.NewTicker(o.cfg.StalenessInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if _, err := o.SweepStale(ctx); err != nil && ctx.Err() == nil {
			o.log.Error("staleness sweep", "error", err)
		}
	}
}

// deadLetterMessages takes orchestration messages that failed processing
// and were read MaxResultReads times out of the queue into the dead-letter
// queue, so that they stop coming back.
func (o *Orchestrator) deadLetterMessages(ctx context.Context, msgs []store.QueueMessage, cause error) {
	if o.cfg.MaxResultReads < 0 {
		return
	}
	for _, m := range msgs {
		if m.ReadCount < o.cfg.MaxResultReads {
			continue
		}
		now := o.cfg.Now()
		var id int64
		err := store.InTx(ctx, o.d, func(tx store.Tx) error {
			var ns, name string
			if task, err := tx.TaskGet(ctx, store.TaskGetParams{UUID: m.TaskUUID}); err == nil {
				ns, name = task.Namespace, task.Name
			}
			snap := mustJSON(map[string]any{"queue": m.Queue, "message_id": m.ID, "payload": m.Payload,
				"read_count": m.ReadCount, "enqueued_at": m.EnqueuedAt, "error": cause.Error()})
			var err error
			id, err = tx.DLQInsert(ctx, store.DLQInsertParams{Kind: store.DLQKindMessage, TaskUUID: m.TaskUUID,
				StepUUID: m.StepUUID, Namespace: ns, TaskName: name, Reason: ReasonPoisonOrchestrationResult,
				Snapshot: snap, Now: now})
			if err != nil {
				return err
			}
			return tx.QueueDelete(ctx, store.QueueDeleteParams{ID: m.ID, Token: m.LeaseToken})
		})
		if err != nil {
			if ctx.Err() == nil {
				o.log.Error("dead-letter orchestration message", "task_uuid", m.TaskUUID, "step_uuid", m.StepUUID,
					"message_id", m.ID, "error", err)
			}
			continue
		}
		o.log.Error("orchestration message failed too often; moved to the dead-letter queue", "task_uuid", m.TaskUUID,
			"step_uuid", m.StepUUID, "message_id", m.ID, "reads", m.ReadCount, "dlq_entry", id, "error", cause)
	}
}

// RedriveParams names a DLQ entry to redrive and who does it, for the
// history.
type RedriveParams struct {
	ID            int64
	Actor, Reason string
}

// Redrive gives a dead-lettered task another chance, in one transaction:
// its steps in error go back to pending with their attempts reset, the
// task resumes (error → evaluating_results) and is evaluated, which
// enqueues the steps that are ready, and the entry is marked
// manually_resolved. Steps still in flight are left to their worker: a
// live lease finishes normally, an expired one is rescued under the step's
// retry policy. A message entry is sent back to the orchestration queue.
func (o *Orchestrator) Redrive(ctx context.Context, p RedriveParams) (*store.DLQRow, error) {
	now := o.cfg.Now()
	eff := newEffects()
	var out *store.DLQRow
	wake := false
	err := store.InTx(ctx, o.d, func(tx store.Tx) error {
		entry, err := tx.DLQGet(ctx, store.DLQGetParams{ID: p.ID, ForUpdate: true})
		if errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("redrive %d: %w", p.ID, ErrDLQNotFound)
		}
		if err != nil {
			return err
		}
		if entry.Status != store.DLQPending {
			return fmt.Errorf("redrive %d: %w (status %s)", p.ID, ErrDLQNotPending, entry.Status)
		}
		switch entry.Kind {
		case store.DLQKindMessage:
			if err := tx.QueueSend(ctx, store.QueueSendParams{Now: now, Messages: []store.QueueMessageInsert{{
				Queue: store.OrchestrationQueue, TaskUUID: entry.TaskUUID, StepUUID: entry.StepUUID}}}); err != nil {
				return err
			}
			wake = true
		default:
			if err := o.redriveTask(ctx, tx, entry, p, now, eff); err != nil {
				return err
			}
		}
		note := p.Reason
		if note == "" {
			note = "redriven"
		}
		if err := tx.DLQUpdate(ctx, store.DLQUpdateParams{ID: entry.ID, From: store.DLQPending,
			Status: store.DLQManuallyResolved, ResolvedBy: p.Actor, Note: note, Now: now}); err != nil {
			return err
		}
		out, err = tx.DLQGet(ctx, store.DLQGetParams{ID: entry.ID})
		return err
	})
	if err != nil {
		return nil, err
	}
	o.announce(eff)
	if wake {
		o.WakeResults()
	}
	return out, nil
}

func (o *Orchestrator) redriveTask(ctx context.Context, tx store.Tx, entry *store.DLQRow, p RedriveParams,
	now time.Time, eff *effects) error {
	task, err := tx.TaskGet(ctx, store.TaskGetParams{UUID: entry.TaskUUID, ForUpdate: true})
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("redrive %d: %w: %s", entry.ID, ErrTaskNotFound, entry.TaskUUID)
	}
	if err != nil {
		return err
	}
	if st := state.TaskState(task.State); st != state.TaskError && st != state.TaskBlockedByFailures {
		return fmt.Errorf("redrive %d: %w (task %s is %s)", entry.ID, ErrDLQTaskMoved, task.UUID, st)
	}
	steps, err := tx.StepsForTask(ctx, store.StepsForTaskParams{TaskUUID: task.UUID, WithoutPayloads: true})
	if err != nil {
		return err
	}
	md := mustJSON(map[string]any{"actor": p.Actor, "reason": p.Reason, "action": "dlq_redrive", "dlq_entry": entry.ID})
	for i := range steps {
		s := &steps[i]
		if s.State != string(state.StepError) {
			continue
		}
		if err := tx.StepTransition(ctx, store.StepTransitionParams{UUID: s.UUID, From: s.State,
			To: string(state.StepPending), Event: string(state.StepEventResetForRetry), Now: now, Metadata: md,
			ResetAttempts: true, SetNextRetryAt: true}); err != nil {
			return err
		}
		s.State, s.Attempts, s.NextRetryAt = string(state.StepPending), 0, nil
	}
	t, err := o.templates.Get(ctx, task.Namespace, task.Name, task.Version)
	if err != nil {
		return err
	}
	return o.evaluate(ctx, tx, task, steps, t, now, true, eff)
}

// UpdateDLQParams sets a DLQ entry's resolution by hand.
type UpdateDLQParams struct {
	ID            int64
	Status        string
	Actor, Reason string
}

// UpdateDLQ records an operator's resolution of an entry. It changes only
// the entry: the task stays as it is.
func (o *Orchestrator) UpdateDLQ(ctx context.Context, p UpdateDLQParams) (*store.DLQRow, error) {
	if !store.ValidDLQStatus(p.Status) {
		return nil, fmt.Errorf("update dlq entry %d: unknown status %q (want pending, manually_resolved, permanently_failed or cancelled)",
			p.ID, p.Status)
	}
	var out *store.DLQRow
	err := store.InTx(ctx, o.d, func(tx store.Tx) error {
		err := tx.DLQUpdate(ctx, store.DLQUpdateParams{ID: p.ID, Status: p.Status, ResolvedBy: p.Actor, Note: p.Reason,
			Now: o.cfg.Now()})
		if errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("update dlq entry %d: %w", p.ID, ErrDLQNotFound)
		}
		if err != nil {
			return err
		}
		out, err = tx.DLQGet(ctx, store.DLQGetParams{ID: p.ID})
		return err
	})
	return out, err
}
