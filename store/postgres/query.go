package postgres

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tasker-go/tasker/store"
)

// TaskPage lists tasks newest first after an optional cursor.
func (d *Driver) TaskPage(ctx context.Context, p store.TaskPageParams) ([]store.TaskRow, error) {
	limit := p.Limit
	if limit <= 0 {
		limit = 50
	}
	var a args
	q := `SELECT ` + taskCols + ` FROM tasker_tasks WHERE true` + taskFilter(&a, p.Namespace, p.Name, p.States)
	if !p.CreatedAfter.IsZero() {
		q += ` AND created_at > ` + a.add(p.CreatedAfter)
	}
	if !p.CreatedBefore.IsZero() {
		q += ` AND created_at < ` + a.add(p.CreatedBefore)
	}
	if p.After != nil {
		at := a.add(p.After.CreatedAt)
		q += ` AND (created_at < ` + at + ` OR (created_at = ` + at + ` AND task_uuid < ` + a.add(p.After.UUID) + `))`
	}
	q += ` ORDER BY created_at DESC, task_uuid DESC LIMIT ` + a.add(limit)
	rows, err := d.reader.Query(ctx, q, a...)
	out, err := collect(rows, mapErr(err), func(r pgx.Rows) (store.TaskRow, error) { return scanTask(r) })
	if err != nil {
		return nil, fmt.Errorf("page tasks: %w", mapErr(err))
	}
	return out, nil
}

// StateCounts counts tasks and steps per namespace and state.
func (d *Driver) StateCounts(ctx context.Context, _ store.StateCountsParams) ([]store.StateCountRow, error) {
	rows, err := d.reader.Query(ctx, `
		SELECT 'task', namespace, state, count(*) FROM tasker_tasks GROUP BY namespace, state
		UNION ALL
		SELECT 'step', namespace, state, count(*) FROM tasker_steps GROUP BY namespace, state
		ORDER BY 1, 2, 3`)
	out, err := collect(rows, mapErr(err), func(r pgx.Rows) (store.StateCountRow, error) {
		var c store.StateCountRow
		err := r.Scan(&c.Kind, &c.Namespace, &c.State, &c.Count)
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("count states: %w", mapErr(err))
	}
	return out, nil
}

// Ping runs a trivial query on the read pool.
func (d *Driver) Ping(ctx context.Context) error {
	var one int
	if err := d.reader.QueryRow(ctx, `SELECT 1`).Scan(&one); err != nil {
		return fmt.Errorf("postgres: ping: %w", mapErr(err))
	}
	return nil
}

// PoolStats describes the transaction ("writer") and read pools.
func (d *Driver) PoolStats() []store.PoolStatsRow {
	row := func(name string, p *pgxpool.Pool) store.PoolStatsRow {
		s := p.Stat()
		return store.PoolStatsRow{Pool: name, MaxOpen: int(s.MaxConns()), Open: int(s.TotalConns()),
			InUse: int(s.AcquiredConns()), Idle: int(s.IdleConns()), WaitCount: s.EmptyAcquireCount(),
			WaitDuration: s.EmptyAcquireWaitTime()}
	}
	return []store.PoolStatsRow{row("writer", d.pool), row("reader", d.reader)}
}
