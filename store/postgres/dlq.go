package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

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
	bound := func(t time.Time) time.Time {
		if t.IsZero() {
			return time.Unix(0, 0) // no time is before it
		}
		return t
	}
	rows, err := e.query(ctx, `SELECT `+taskCols+`, last FROM (SELECT t.*, GREATEST(t.updated_at,
			(SELECT MAX(s.updated_at) FROM tasker_steps s WHERE s.task_uuid = t.task_uuid)) AS last
		FROM tasker_tasks t WHERE t.state = ANY($1)) x
		WHERE last < $2 OR created_at < $3 ORDER BY last, task_uuid LIMIT $4`,
		p.States, bound(p.InactiveBefore), bound(p.CreatedBefore), limit)
	out, err := collect(rows, err, func(r pgx.Rows) (store.StaleTask, error) {
		var last time.Time
		row, err := scanTask(scanPlus{r, &last})
		return store.StaleTask{Task: row, LastActivityAt: last.UTC()}, err
	})
	if err != nil {
		return nil, fmt.Errorf("find stale tasks: %w", err)
	}
	return out, nil
}

// scanPlus scans a row that has one extra column after the ones the
// wrapped scan function knows about.
type scanPlus struct {
	row   pgx.Row
	extra *time.Time
}

func (s scanPlus) Scan(dest ...any) error { return s.row.Scan(append(dest, s.extra)...) }

// --- dead-letter queue ---

const dlqCols = `id, kind, task_uuid, step_uuid, namespace, task_name, reason, original_state, snapshot, status,
	resolved_by, resolution_note, created_at, updated_at, resolved_at`

func scanDLQ(row pgx.Row) (store.DLQRow, error) {
	var r store.DLQRow
	var snap []byte
	if err := row.Scan(&r.ID, &r.Kind, &r.TaskUUID, &r.StepUUID, &r.Namespace, &r.TaskName, &r.Reason, &r.OriginalState,
		&snap, &r.Status, &r.ResolvedBy, &r.ResolutionNote, &r.CreatedAt, &r.UpdatedAt, &r.ResolvedAt); err != nil {
		return r, err
	}
	r.Snapshot = snap
	r.CreatedAt, r.UpdatedAt, r.ResolvedAt = r.CreatedAt.UTC(), r.UpdatedAt.UTC(), utcPtr(r.ResolvedAt)
	return r, nil
}

func (e *executor) DLQInsert(ctx context.Context, p store.DLQInsertParams) (int64, error) {
	snap := p.Snapshot
	if len(snap) == 0 {
		snap = []byte("{}")
	}
	now := orNow(p.Now)
	var id int64
	err := e.queryRow(ctx, `INSERT INTO tasker_dlq (kind, task_uuid, step_uuid, namespace, task_name, reason, original_state,
		snapshot, status, created_at, updated_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,'pending',$9,$9) RETURNING id`,
		p.Kind, p.TaskUUID, p.StepUUID, p.Namespace, p.TaskName, p.Reason, p.OriginalState, jsonArg(snap), now).Scan(&id)
	if err != nil {
		return 0, fmt.Errorf("insert dlq entry for task %s: %w", p.TaskUUID, mapErr(err))
	}
	return id, nil
}

func (e *executor) DLQGet(ctx context.Context, p store.DLQGetParams) (*store.DLQRow, error) {
	q := `SELECT ` + dlqCols + ` FROM tasker_dlq WHERE id = $1`
	if p.ForUpdate && e.inTx {
		q += ` FOR UPDATE`
	}
	r, err := scanDLQ(e.queryRow(ctx, q, p.ID))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("dlq entry %d: %w", p.ID, store.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("read dlq entry %d: %w", p.ID, mapErr(err))
	}
	return &r, nil
}

func (e *executor) DLQList(ctx context.Context, p store.DLQListParams) ([]store.DLQRow, error) {
	limit := p.Limit
	if limit <= 0 {
		limit = 100
	}
	var a args
	q := `SELECT ` + dlqCols + ` FROM tasker_dlq WHERE true`
	if p.Namespace != "" {
		q += ` AND namespace = ` + a.add(p.Namespace)
	}
	if p.Kind != "" {
		q += ` AND kind = ` + a.add(p.Kind)
	}
	if p.TaskUUID != "" {
		q += ` AND task_uuid = ` + a.add(p.TaskUUID)
	}
	if len(p.Statuses) > 0 {
		q += ` AND status = ANY(` + a.add(p.Statuses) + `)`
	}
	q += ` ORDER BY id DESC LIMIT ` + a.add(limit)
	rows, err := e.query(ctx, q, a...)
	out, err := collect(rows, err, func(r pgx.Rows) (store.DLQRow, error) { return scanDLQ(r) })
	if err != nil {
		return nil, fmt.Errorf("list dlq entries: %w", err)
	}
	return out, nil
}

func (e *executor) DLQUpdate(ctx context.Context, p store.DLQUpdateParams) error {
	now := orNow(p.Now)
	var resolved *time.Time
	if p.Status != store.DLQPending {
		resolved = &now
	}
	tag, err := e.exec(ctx, `UPDATE tasker_dlq SET status = $1, resolved_by = $2, resolution_note = $3, updated_at = $4,
		resolved_at = $5 WHERE id = $6 AND ($7 = '' OR status = $7)`,
		p.Status, p.ResolvedBy, p.Note, now, resolved, p.ID, p.From)
	if err != nil {
		return fmt.Errorf("update dlq entry %d: %w", p.ID, err)
	}
	if tag.RowsAffected() != 1 {
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
	out, err := collect(rows, err, func(r pgx.Rows) (store.DLQStatRow, error) {
		var s store.DLQStatRow
		err := r.Scan(&s.Kind, &s.Status, &s.Reason, &s.Count)
		return s, err
	})
	if err != nil {
		return nil, fmt.Errorf("dlq stats: %w", err)
	}
	return out, nil
}
