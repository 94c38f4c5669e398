package sqlite

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/tasker-go/tasker/store"
)

// TaskPage lists tasks newest first after an optional cursor.
func (d *Driver) TaskPage(ctx context.Context, p store.TaskPageParams) ([]store.TaskRow, error) {
	limit := p.Limit
	if limit <= 0 {
		limit = 50
	}
	q := `SELECT ` + taskCols + ` FROM tasker_tasks WHERE 1 = 1`
	var args []any
	if p.Namespace != "" {
		q += ` AND namespace = ?`
		args = append(args, p.Namespace)
	}
	if p.Name != "" {
		q += ` AND name = ?`
		args = append(args, p.Name)
	}
	if len(p.States) > 0 {
		q += ` AND state IN (` + placeholders(len(p.States)) + `)`
		args = append(args, strArgs(p.States)...)
	}
	if !p.CreatedAfter.IsZero() {
		q += ` AND created_at > ?`
		args = append(args, ts(p.CreatedAfter))
	}
	if !p.CreatedBefore.IsZero() {
		q += ` AND created_at < ?`
		args = append(args, ts(p.CreatedBefore))
	}
	if p.After != nil {
		q += ` AND (created_at < ? OR (created_at = ? AND task_uuid < ?))`
		at := ts(p.After.CreatedAt)
		args = append(args, at, at, p.After.UUID)
	}
	q += ` ORDER BY created_at DESC, task_uuid DESC LIMIT ?`
	args = append(args, limit)
	rows, err := d.reader.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("page tasks: %w", mapErr(err))
	}
	defer rows.Close()
	var out []store.TaskRow
	for rows.Next() {
		r, err := scanTask(rows)
		if err != nil {
			return nil, fmt.Errorf("page tasks: %w", mapErr(err))
		}
		out = append(out, *r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("page tasks: %w", mapErr(err))
	}
	return out, nil
}

// StateCounts counts tasks and steps per namespace and state.
func (d *Driver) StateCounts(ctx context.Context, _ store.StateCountsParams) ([]store.StateCountRow, error) {
	rows, err := d.reader.QueryContext(ctx, `
		SELECT 'task', namespace, state, count(*) FROM tasker_tasks GROUP BY namespace, state
		UNION ALL
		SELECT 'step', namespace, state, count(*) FROM tasker_steps GROUP BY namespace, state
		ORDER BY 1, 2, 3`)
	if err != nil {
		return nil, fmt.Errorf("count states: %w", mapErr(err))
	}
	defer rows.Close()
	var out []store.StateCountRow
	for rows.Next() {
		var r store.StateCountRow
		if err := rows.Scan(&r.Kind, &r.Namespace, &r.State, &r.Count); err != nil {
			return nil, fmt.Errorf("count states: %w", mapErr(err))
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("count states: %w", mapErr(err))
	}
	return out, nil
}

// Ping runs a trivial query on the read pool. The writer is left alone: its
// single connection is busy whenever a transaction runs, which says nothing
// about the database's health.
func (d *Driver) Ping(ctx context.Context) error {
	var one int
	if err := d.reader.QueryRowContext(ctx, `SELECT 1`).Scan(&one); err != nil {
		return fmt.Errorf("sqlite: ping: %w", mapErr(err))
	}
	return nil
}

// PoolStats describes the writer and reader pools.
func (d *Driver) PoolStats() []store.PoolStatsRow {
	row := func(name string, db *sql.DB) store.PoolStatsRow {
		s := db.Stats()
		return store.PoolStatsRow{Pool: name, MaxOpen: s.MaxOpenConnections, Open: s.OpenConnections, InUse: s.InUse,
			Idle: s.Idle, WaitCount: s.WaitCount, WaitDuration: s.WaitDuration}
	}
	return []store.PoolStatsRow{row("writer", d.writer), row("reader", d.reader)}
}
