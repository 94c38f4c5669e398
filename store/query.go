package store

import (
	"context"
	"time"
)

// Querier is the read side that operators need beyond what the engine itself
// uses: paged, filtered task lists, counts for metrics, and the health of the
// database. Every Driver implements it; its reads run outside transactions.
type Querier interface {
	// TaskPage lists tasks newest first (created_at, then task_uuid, both
	// descending), filtered by p, starting after p.After.
	TaskPage(ctx context.Context, p TaskPageParams) ([]TaskRow, error)
	// StateCounts counts tasks and steps per namespace and state.
	StateCounts(ctx context.Context, p StateCountsParams) ([]StateCountRow, error)
	// Ping checks that the database answers a query.
	Ping(ctx context.Context) error
	// MigrationsCurrent reports whether every embedded migration is
	// applied. A database that was never migrated is not current; that is
	// not an error.
	MigrationsCurrent(ctx context.Context) (bool, error)
	// PoolStats describes the driver's connection pools.
	PoolStats() []PoolStatsRow
}

// TaskCursor is a position in the task order of TaskPage: the last row of
// the previous page.
type TaskCursor struct {
	CreatedAt time.Time
	UUID      string
}

// TaskPageParams filters and pages a task list. Empty fields match
// everything; Limit 0 means 50.
type TaskPageParams struct {
	Namespace, Name string
	States          []string
	// CreatedAfter and CreatedBefore bound created_at (exclusive); zero
	// values do not bound it.
	CreatedAfter, CreatedBefore time.Time
	// After, when set, returns only rows that sort after it.
	After *TaskCursor
	Limit int
}

// StateCountsParams selects what StateCounts counts (currently everything).
type StateCountsParams struct{}

// Kinds of StateCountRow.
const (
	CountKindTask = "task"
	CountKindStep = "step"
)

// StateCountRow is the number of tasks or steps (Kind) of one namespace in
// one state.
type StateCountRow struct {
	Kind, Namespace, State string
	Count                  int64
}

// PoolStatsRow describes one connection pool of a driver.
type PoolStatsRow struct {
	// Pool names the pool ("writer", "reader", …).
	Pool string
	// MaxOpen is the pool's limit (0: unlimited); Open the connections it
	// holds, InUse those lent out and Idle the rest.
	MaxOpen, Open, InUse, Idle int
	// WaitCount and WaitDuration total the waits for a free connection.
	WaitCount    int64
	WaitDuration time.Duration
}
