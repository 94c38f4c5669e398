package tasker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/tasker-go/tasker/internal/orchestration"
	"github.com/tasker-go/tasker/store"
)

// Errors of the dead-letter queue; test with errors.Is.
var (
	// ErrDLQNotFound is returned for an unknown dead-letter entry id.
	ErrDLQNotFound = orchestration.ErrDLQNotFound
	// ErrDLQNotPending is returned when redriving an entry that is already
	// resolved.
	ErrDLQNotPending = orchestration.ErrDLQNotPending
	// ErrDLQTaskMoved is returned when redriving an entry whose task is no
	// longer in error (an operator settled it meanwhile).
	ErrDLQTaskMoved = orchestration.ErrDLQTaskMoved
)

// DLQStatus is the resolution status of a dead-letter entry.
type DLQStatus string

// Dead-letter resolution statuses. New entries are pending; a redrive marks
// its entry manually_resolved.
const (
	DLQPending           DLQStatus = store.DLQPending
	DLQManuallyResolved  DLQStatus = store.DLQManuallyResolved
	DLQPermanentlyFailed DLQStatus = store.DLQPermanentlyFailed
	DLQCancelled         DLQStatus = store.DLQCancelled
)

// Dead-letter entry kinds.
const (
	// DLQKindTask is a task the staleness sweeper moved to error.
	DLQKindTask = store.DLQKindTask
	// DLQKindMessage is a queued step result that failed processing
	// Config.MaxResultReads times and was taken out of the queue.
	DLQKindMessage = store.DLQKindMessage
)

// DLQEntry is a dead-letter entry.
type DLQEntry struct {
	ID       int64
	Kind     string // DLQKindTask or DLQKindMessage
	TaskUUID string
	StepUUID string // for a message entry
	// Namespace and TaskName identify the task's template.
	Namespace, TaskName string
	// Reason says what happened: which lifecycle limit a stale task
	// exceeded (max_duration_exceeded, steps_in_process_timeout,
	// waiting_for_dependencies_timeout, waiting_for_retry_timeout), or
	// poison_orchestration_message.
	Reason string
	// OriginalState is the task's state when it was dead-lettered.
	OriginalState string
	// Snapshot is JSON: the task and its steps as they were (for a task
	// entry), or the queue message and the last error (for a message).
	Snapshot json.RawMessage
	Status   DLQStatus
	// ResolvedBy and ResolutionNote record who changed the status last,
	// and why.
	ResolvedBy, ResolutionNote string
	CreatedAt, UpdatedAt       time.Time
	ResolvedAt                 *time.Time
}

func dlqEntryFrom(r *store.DLQRow) *DLQEntry {
	return &DLQEntry{ID: r.ID, Kind: r.Kind, TaskUUID: r.TaskUUID, StepUUID: r.StepUUID, Namespace: r.Namespace,
		TaskName: r.TaskName, Reason: r.Reason, OriginalState: r.OriginalState, Snapshot: r.Snapshot,
		Status: DLQStatus(r.Status), ResolvedBy: r.ResolvedBy, ResolutionNote: r.ResolutionNote,
		CreatedAt: r.CreatedAt, UpdatedAt: r.UpdatedAt, ResolvedAt: r.ResolvedAt}
}

// DLQFilter selects dead-letter entries; empty fields match everything.
type DLQFilter struct {
	Statuses  []DLQStatus
	Namespace string
	Kind      string
	TaskUUID  string
	// Limit bounds the result; default 100.
	Limit int
}

// ListDLQ returns dead-letter entries, newest first.
func (e *Engine) ListDLQ(ctx context.Context, f DLQFilter) ([]DLQEntry, error) {
	p := store.DLQListParams{Namespace: f.Namespace, Kind: f.Kind, TaskUUID: f.TaskUUID, Limit: f.Limit}
	for _, s := range f.Statuses {
		p.Statuses = append(p.Statuses, string(s))
	}
	rows, err := e.driver.Reader().DLQList(ctx, p)
	if err != nil {
		return nil, fmt.Errorf("list dead-letter entries: %w", err)
	}
	out := make([]DLQEntry, len(rows))
	for i := range rows {
		out[i] = *dlqEntryFrom(&rows[i])
	}
	return out, nil
}

// GetDLQ returns one dead-letter entry, or an error matching ErrDLQNotFound.
func (e *Engine) GetDLQ(ctx context.Context, id int64) (*DLQEntry, error) {
	r, err := e.driver.Reader().DLQGet(ctx, store.DLQGetParams{ID: id})
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("dead-letter entry %d: %w", id, ErrDLQNotFound)
	}
	if err != nil {
		return nil, err
	}
	return dlqEntryFrom(r), nil
}

// DLQUpdate is an operator's resolution of a dead-letter entry.
type DLQUpdate struct {
	ID     int64
	Status DLQStatus
	// Actor and Reason are recorded on the entry.
	Actor, Reason string
}

// UpdateDLQ sets a dead-letter entry's resolution status. It changes the
// entry only, never the task: to run the task again use RedriveDLQ; to
// settle it use ApplyStepAction or CancelTask.
func (e *Engine) UpdateDLQ(ctx context.Context, u DLQUpdate) (*DLQEntry, error) {
	r, err := e.orch.UpdateDLQ(ctx, orchestration.UpdateDLQParams{ID: u.ID, Status: string(u.Status), Actor: u.Actor, Reason: u.Reason})
	if err != nil {
		return nil, err
	}
	return dlqEntryFrom(r), nil
}

// DLQRedrive names a pending dead-letter entry to redrive.
type DLQRedrive struct {
	ID int64
	// Actor and Reason are recorded on the entry and in the history of
	// every step the redrive resets.
	Actor, Reason string
}

// RedriveDLQ gives a dead-lettered task another run, in one transaction:
// its steps in error go back to pending with their attempts reset, the
// task resumes and the steps that are ready are enqueued, and the entry
// becomes manually_resolved. Steps still held by a worker are left to it;
// if its lease expires they are retried under their retry policy. For a
// message entry the step result is queued again. It fails with
// ErrDLQNotPending for a resolved entry and ErrDLQTaskMoved when the task
// is no longer in error.
func (e *Engine) RedriveDLQ(ctx context.Context, r DLQRedrive) (*DLQEntry, error) {
	row, err := e.orch.Redrive(ctx, orchestration.RedriveParams{ID: r.ID, Actor: r.Actor, Reason: r.Reason})
	if err != nil {
		return nil, err
	}
	return dlqEntryFrom(row), nil
}

// DLQStat counts the dead-letter entries of one kind, status and reason.
type DLQStat struct {
	Kind   string
	Status DLQStatus
	Reason string
	Count  int
}

// DLQStats counts dead-letter entries per kind, status and reason.
func (e *Engine) DLQStats(ctx context.Context) ([]DLQStat, error) {
	rows, err := e.driver.Reader().DLQStats(ctx, store.DLQStatsParams{})
	if err != nil {
		return nil, fmt.Errorf("dead-letter stats: %w", err)
	}
	out := make([]DLQStat, len(rows))
	for i, r := range rows {
		out[i] = DLQStat{Kind: r.Kind, Status: DLQStatus(r.Status), Reason: r.Reason, Count: r.Count}
	}
	return out, nil
}
