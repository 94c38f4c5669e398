package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/tasker-go/tasker/store"
)

// --- staleness ---

func (e *executor) TasksStale(ctx context.Context, p store.TasksStaleParams) ([]store.StaleTask, error) {
	if len(p.States) == 0 {
		return nil, nil
	}
	limit := p.Limit
	if limit <= 0 {
		limit = 100
	}
	bound := func(t time.Time) int64 {
		if t.IsZero() {
			return 0 // no time is before it
		}
		return ts(t)
	}
	q := `SELECT ` + taskCols + `, last FROM (SELECT *, MAX(updated_at, COALESCE(
			(SELECT MAX(s.updated_at) FROM tasker_steps s WHERE s.task_uuid = t.task_uuid), 0)) AS last
		FROM tasker_tasks t WHERE state IN (` + placeholders(len(p.States)) + `))
		WHERE last < ? OR created_at < ? ORDER BY last, task_uuid LIMIT ?`
	args := append(strArgs(p.States), bound(p.InactiveBefore), bound(p.CreatedBefore), limit)
	rows, err := e.query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("find stale tasks: %w", err)
	}
	defer rows.Close()
	var out []store.StaleTask
	for rows.Next() {
		var last int64
		r, err := scanTask(scanPlus{rows, &last})
		if err != nil {
			return nil, fmt.Errorf("find stale tasks: %w", mapErr(err))
		}
		out = append(out, store.StaleTask{Task: *r, LastActivityAt: fromTS(last)})
	}
	return out, mapErr(rows.Err())
}

// scanPlus scans a row that has extra columns after the ones the wrapped
// scan function knows about.
type scanPlus struct {
	rows  *sql.Rows
	extra *int64
}

func (s scanPlus) Scan(dest ...any) error { return s.rows.Scan(append(dest, s.extra)...) }

// --- dead-letter queue ---

const dlqCols = `id, kind, task_uuid, step_uuid, namespace, task_name, reason, original_state, snapshot, status,
	resolved_by, resolution_note, created_at, updated_at, resolved_at`

func scanDLQ(sc interface{ Scan(...any) error }) (*store.DLQRow, error) {
	var r store.DLQRow
	var snap string
	var created, updated int64
	var resolved sql.NullInt64
	if err := sc.Scan(&r.ID, &r.Kind, &r.TaskUUID, &r.StepUUID, &r.Namespace, &r.TaskName, &r.Reason, &r.OriginalState,
		&snap, &r.Status, &r.ResolvedBy, &r.ResolutionNote, &created, &updated, &resolved); err != nil {
		return nil, err
	}
	r.Snapshot = []byte(snap)
	r.CreatedAt, r.UpdatedAt, r.ResolvedAt = fromTS(created), fromTS(updated), fromNullTS(resolved)
	return &r, nil
}

func (e *executor) DLQInsert(ctx context.Context, p store.DLQInsertParams) (int64, error) {
	snap := string(p.Snapshot)
	if snap == "" {
		snap = "{}"
	}
	now := tsOrNow(p.Now)
	var id int64
	err := e.queryRow(ctx, `INSERT INTO tasker_dlq (kind, task_uuid, step_uuid, namespace, task_name, reason, original_state,
		snapshot, status, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,'pending',?,?) RETURNING id`,
		p.Kind, p.TaskUUID, p.StepUUID, p.Namespace, p.TaskName, p.Reason, p.OriginalState, snap, now, now).Scan(&id)
	if err != nil {
		return 0, fmt.Errorf("insert dlq entry for task %s: %w", p.TaskUUID, mapErr(err))
	}
	return id, nil
}

func (e *executor) DLQGet(ctx context.Context, p store.DLQGetParams) (*store.DLQRow, error) {
	// The write transaction already holds the database's only write lock.
	r, err := scanDLQ(e.queryRow(ctx, `SELECT `+dlqCols+` FROM tasker_dlq WHERE id = ?`, p.ID))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("dlq entry %d: %w", p.ID, store.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("read dlq entry %d: %w", p.ID, mapErr(err))
	}
	return r, nil
}

func (e *executor) DLQList(ctx context.Context, p store.DLQListParams) ([]store.DLQRow, error) {
	limit := p.Limit
	if limit <= 0 {
		limit = 100
	}
	q := `SELECT ` + dlqCols + ` FROM tasker_dlq WHERE (? = '' OR namespace = ?) AND (? = '' OR kind = ?)
		AND (? = '' OR task_uuid = ?)`
	args := []any{p.Namespace, p.Namespace, p.Kind, p.Kind, p.TaskUUID, p.TaskUUID}
	if len(p.Statuses) > 0 {
		q += ` AND status IN (` + placeholders(len(p.Statuses)) + `)`
		args = append(args, strArgs(p.Statuses)...)
	}
	q += ` ORDER BY id DESC LIMIT ?`
	args = append(args, limit)
	rows, err := e.query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list dlq entries: %w", err)
	}
	defer rows.Close()
	var out []store.DLQRow
	for rows.Next() {
		r, err := scanDLQ(rows)
		if err != nil {
			return nil, fmt.Errorf("list dlq entries: %w", mapErr(err))
		}
		out = append(out, *r)
	}
	return out, mapErr(rows.Err())
}

func (e *executor) DLQUpdate(ctx context.Context, p store.DLQUpdateParams) error {
	now := tsOrNow(p.Now)
	var resolved any
	if p.Status != store.DLQPending {
		resolved = now
	}
	res, err := e.exec(ctx, `UPDATE tasker_dlq SET status = ?, resolved_by = ?, resolution_note = ?, updated_at = ?,
		resolved_at = ? WHERE id = ? AND (? = '' OR status = ?)`,
		p.Status, p.ResolvedBy, p.Note, now, resolved, p.ID, p.From, p.From)
	if err != nil {
		return fmt.Errorf("update dlq entry %d: %w", p.ID, err)
	}
	if n, _ := res.RowsAffected(); n != 1 {
		if _, err := e.DLQGet(ctx, store.DLQGetParams{ID: p.ID}); err != nil {
			return err
		}
		return fmt.Errorf("dlq entry %d is not %s: %w", p.ID, p.From, store.ErrStateConflict)
	}
	return nil
}

func (e *executor) DLQStats(ctx context.Context, _ store.DLQStatsParams) ([]store.DLQStatRow, error) {
	rows, err := e.query(ctx, `SELECT kind, status, reason, count(*) FROM tasker_dlq
		GROUP BY kind, status, reason ORDER BY kind, status, reason`)
	if err != nil {
		return nil, fmt.Errorf("dlq stats: %w", err)
	}
	defer rows.Close()
	var out []store.DLQStatRow
	for rows.Next() {
		var r store.DLQStatRow
		if err := rows.Scan(&r.Kind, &r.Status, &r.Reason, &r.Count); err != nil {
			return nil, fmt.Errorf("dlq stats: %w", mapErr(err))
		}
		out = append(out, r)
	}
	return out, mapErr(rows.Err())
}
