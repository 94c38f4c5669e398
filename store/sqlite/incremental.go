package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"

	"github.com/tasker-go/tasker/store"
)

// jsonList passes a list of strings as one parameter, read back with
// json_each, so that a statement over thousands of steps stays one
// statement with a fixed text (and a cached prepared statement).
func jsonList(ss []string) string {
	if ss == nil {
		ss = []string{}
	}
	b, _ := json.Marshal(ss) // strings always marshal
	return string(b)
}

func (e *executor) StepsCount(ctx context.Context, p store.StepsCountParams) (int, error) {
	limit := p.Limit
	if limit <= 0 {
		limit = -1 // no limit in SQLite
	}
	var n int
	if err := e.queryRow(ctx, `SELECT count(*) FROM (SELECT 1 FROM tasker_steps WHERE task_uuid = ? LIMIT ?)`,
		p.TaskUUID, limit).Scan(&n); err != nil {
		return 0, fmt.Errorf("count steps of task %s: %w", p.TaskUUID, mapErr(err))
	}
	return n, nil
}

func (e *executor) StepsGet(ctx context.Context, p store.StepsGetParams) ([]store.StepRow, error) {
	if len(p.UUIDs) == 0 {
		return nil, nil
	}
	rows, err := e.query(ctx, `SELECT `+stepColsNoPayload+` FROM tasker_steps s
		WHERE s.step_uuid IN (SELECT value FROM json_each(?)) AND s.task_uuid = ? ORDER BY s.position`,
		jsonList(p.UUIDs), p.TaskUUID)
	if err != nil {
		return nil, fmt.Errorf("read %d steps of task %s: %w", len(p.UUIDs), p.TaskUUID, err)
	}
	defer rows.Close()
	var out []store.StepRow
	for rows.Next() {
		r, err := scanStep(rows)
		if err != nil {
			return nil, fmt.Errorf("read steps of task %s: %w", p.TaskUUID, mapErr(err))
		}
		out = append(out, *r)
	}
	return out, mapErr(rows.Err())
}

// progressCandidates finds the steps that may be ready, each looked up by
// its key (CROSS JOIN fixes the join order). A step's parents
// are checked newest first and the check stops at the first parent that
// is not done: in a fan-in, the parents enqueued last tend to finish last,
// so the join's check stays short while its parents complete.
var progressCandidates = `WITH ids AS (
		SELECT value AS step_uuid FROM json_each(?2)
		UNION SELECT e.to_step_uuid FROM tasker_step_edges e WHERE e.from_step_uuid IN (SELECT value FROM json_each(?2))
		UNION SELECT w.step_uuid FROM tasker_steps w WHERE w.task_uuid = ?1 AND w.state = 'waiting_for_retry'
	)
	SELECT ` + stepColsNoPayload + `,
		(SELECT 1 FROM tasker_step_edges e JOIN tasker_steps p ON p.step_uuid = e.from_step_uuid
			WHERE e.to_step_uuid = s.step_uuid AND p.state NOT IN ('complete', 'resolved_manually')
			ORDER BY e.from_step_uuid DESC LIMIT 1) IS NULL
	FROM ids CROSS JOIN tasker_steps s ON s.step_uuid = ids.step_uuid
	WHERE s.task_uuid = ?1 AND s.state IN ('pending', 'waiting_for_retry')
	ORDER BY s.position`

// progressStates lists the states a task's steps are in by skipping
// through the (task_uuid, state) index: one probe per state present, not
// one row per step.
const progressStates = `WITH RECURSIVE st(state) AS (
		SELECT (SELECT state FROM tasker_steps WHERE task_uuid = ?1 ORDER BY state LIMIT 1)
		UNION ALL
		SELECT (SELECT s.state FROM tasker_steps s WHERE s.task_uuid = ?1 AND s.state > st.state ORDER BY s.state LIMIT 1)
		FROM st WHERE st.state IS NOT NULL
	)
	SELECT state FROM st WHERE state IS NOT NULL`

func (e *executor) TaskProgress(ctx context.Context, p store.TaskProgressParams) (*store.TaskProgress, error) {
	out := &store.TaskProgress{}
	rows, err := e.query(ctx, progressStates, p.TaskUUID)
	if err != nil {
		return nil, fmt.Errorf("read step states of task %s: %w", p.TaskUUID, err)
	}
	for rows.Next() {
		var st string
		if err := rows.Scan(&st); err != nil {
			rows.Close()
			return nil, fmt.Errorf("read step states of task %s: %w", p.TaskUUID, mapErr(err))
		}
		out.States = append(out.States, st)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read step states of task %s: %w", p.TaskUUID, mapErr(err))
	}
	rows, err = e.query(ctx, progressCandidates, p.TaskUUID, jsonList(p.Steps))
	if err != nil {
		return nil, fmt.Errorf("find ready steps of task %s: %w", p.TaskUUID, err)
	}
	defer rows.Close()
	for rows.Next() {
		var ok sql.NullBool
		r, err := scanStep(rows, &ok)
		if err != nil {
			return nil, fmt.Errorf("find ready steps of task %s: %w", p.TaskUUID, mapErr(err))
		}
		out.Candidates = append(out.Candidates, store.ProgressStep{StepRow: *r, DependenciesSatisfied: ok.Bool})
	}
	return out, mapErr(rows.Err())
}

func (e *executor) StepsEnqueue(ctx context.Context, p store.StepsEnqueueParams) error {
	n := len(p.Steps)
	if n == 0 {
		return nil
	}
	now := tsOrNow(p.Now)
	ids := jsonList(p.Steps)
	what := fmt.Sprintf("enqueue %d steps of task %s from %s", n, p.TaskUUID, p.From)
	res, err := e.exec(ctx, `UPDATE tasker_steps SET state = 'enqueued', updated_at = ?, completed_at = NULL, next_retry_at = NULL
		WHERE step_uuid IN (SELECT value FROM json_each(?)) AND task_uuid = ? AND state = ?`, now, ids, p.TaskUUID, p.From)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if got, _ := res.RowsAffected(); got != int64(n) {
		return fmt.Errorf("%s: %d of %d matched: %w", what, got, n, store.ErrStateConflict)
	}
	if _, err := e.exec(ctx, `INSERT INTO tasker_step_transitions (step_uuid, from_state, to_state, event, metadata, sort_key, created_at)
		SELECT j.value, ?, 'enqueued', 'enqueue', NULL,
			(SELECT COALESCE(MAX(t.sort_key), 0) + 1 FROM tasker_step_transitions t WHERE t.step_uuid = j.value), ?
		FROM json_each(?) AS j`, p.From, now, ids); err != nil {
		return fmt.Errorf("%s: history: %w", what, err)
	}
	// Message IDs follow the order of Steps, which claims use to break
	// priority ties.
	if _, err := e.exec(ctx, `INSERT INTO tasker_queue (queue, task_uuid, step_uuid, payload, priority, visible_at, enqueued_at)
		SELECT ?, ?, j.value, NULL, ?, ?, ? FROM json_each(?) AS j ORDER BY j.key`,
		p.Queue, p.TaskUUID, p.Priority, now, now, ids); err != nil {
		return fmt.Errorf("%s: send to queue %s: %w", what, p.Queue, err)
	}
	return nil
}
