package store

import (
	"encoding/json"
	"time"
)

// DLQ entry kinds.
const (
	// DLQKindTask is a task the staleness sweeper moved to error.
	DLQKindTask = "task"
	// DLQKindMessage is an orchestration queue message that failed
	// processing too many times and was taken out of its queue.
	DLQKindMessage = "message"
)

// DLQ resolution statuses.
const (
	DLQPending           = "pending"
	DLQManuallyResolved  = "manually_resolved"
	DLQPermanentlyFailed = "permanently_failed"
	DLQCancelled         = "cancelled"
)

// ValidDLQStatus reports whether s is one of the DLQ resolution statuses.
func ValidDLQStatus(s string) bool {
	switch s {
	case DLQPending, DLQManuallyResolved, DLQPermanentlyFailed, DLQCancelled:
		return true
	}
	return false
}

// TasksStaleParams finds tasks in one of States that may be stale: their
// last activity (the later of the task's own last change and its steps'
// last change) is before InactiveBefore, or they were created before
// CreatedBefore. Either bound may be zero (not used). The oldest activity
// comes first, at most Limit rows (default 100).
type TasksStaleParams struct {
	States         []string
	InactiveBefore time.Time
	CreatedBefore  time.Time
	Limit          int
}

// StaleTask is a candidate for the staleness sweeper.
type StaleTask struct {
	Task TaskRow
	// LastActivityAt is the later of the task's updated_at and the
	// latest updated_at of its steps.
	LastActivityAt time.Time
}

// DLQInsertParams records a dead-letter entry in status pending and returns
// its id.
type DLQInsertParams struct {
	Kind          string
	TaskUUID      string
	StepUUID      string
	Namespace     string
	TaskName      string
	Reason        string
	OriginalState string
	Snapshot      json.RawMessage
	Now           time.Time
}

// DLQRow is a stored dead-letter entry.
type DLQRow struct {
	ID             int64
	Kind           string
	TaskUUID       string
	StepUUID       string
	Namespace      string
	TaskName       string
	Reason         string
	OriginalState  string
	Snapshot       json.RawMessage
	Status         string
	ResolvedBy     string
	ResolutionNote string
	CreatedAt      time.Time
	UpdatedAt      time.Time
	ResolvedAt     *time.Time
}

// DLQGetParams addresses one entry; ForUpdate locks it until the
// transaction ends.
type DLQGetParams struct {
	ID        int64
	ForUpdate bool
}

// DLQListParams filters entries; empty fields match everything. Newest
// first, at most Limit (default 100).
type DLQListParams struct {
	Statuses  []string
	Namespace string
	Kind      string
	TaskUUID  string
	Limit     int
}

// DLQUpdateParams sets an entry's resolution. With From set, only if the
// entry is in that status (else ErrStateConflict). ResolvedAt becomes Now
// for any status but pending, and is cleared for pending.
type DLQUpdateParams struct {
	ID         int64
	From       string
	Status     string
	ResolvedBy string
	Note       string
	Now        time.Time
}

// DLQStatsParams has no filters yet; it exists so that some can be added.
type DLQStatsParams struct{}

// DLQStatRow counts the entries of one kind, status and reason.
type DLQStatRow struct {
	Kind, Status, Reason string
	Count                int
}
