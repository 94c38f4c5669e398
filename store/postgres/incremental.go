package postgres

import (
	"context"
	"fmt"
	"strconv"

	"github.com/jackc/pgx/v5"

	"github.com/tasker-go/tasker/store"
)

// stepColsBare are stepCols without payloads and parents.
const stepColsBare = `s.step_uuid, s.task_uuid, s.name, s.namespace, s.position, s.callable, s.state, s.attempts, s.max_attempts,
	s.retryable, NULL::jsonb, NULL::jsonb, s.next_retry_at, s.last_attempted_at, s.created_at, s.updated_at, s.completed_at,
	NULL::text[]`

func (e *executor) StepsCount(ctx context.Context, p store.StepsCountParams) (int, error) {
	var n int
	var err error
	if p.Limit > 0 {
		err = e.queryRow(ctx, `SELECT count(*) FROM (SELECT 1 FROM tasker_steps WHERE task_uuid = $1 LIMIT $2) x`,
			p.TaskUUID, p.Limit).Scan(&n)
	} else {
		err = e.queryRow(ctx, `SELECT count(*) FROM tasker_steps WHERE task_uuid = $1`, p.TaskUUID).Scan(&n)
	}
	if err != nil {
		return 0, fmt.Errorf("count steps of task %s: %w", p.TaskUUID, mapErr(err))
	}
	return n, nil
}

func (e *executor) StepsGet(ctx context.Context, p store.StepsGetParams) ([]store.StepRow, error) {
	if len(p.UUIDs) == 0 {
		return nil, nil
	}
	// Each step by its key (LATERAL, not flattened): with statistics that
	// know a task holds 10,000 steps, the planner otherwise reads all of
	// them through the task's index and filters, 19 ms a call.
	rows, err := e.query(ctx, `SELECT `+stepColsBare+` FROM (SELECT DISTINCT unnest($1::text[]) AS id) k
		CROSS JOIN LATERAL (SELECT * FROM tasker_steps x WHERE x.step_uuid = k.id OFFSET 0) s
		WHERE s.task_uuid = $2 ORDER BY s.position`, p.UUIDs, p.TaskUUID)
	out, err := collect(rows, err, func(r pgx.Rows) (store.StepRow, error) { return scanStep(r) })
	if err != nil {
		return nil, fmt.Errorf("read %d steps of task %s: %w", len(p.UUIDs), p.TaskUUID, err)
	}
	return out, nil
}

// progressCandidates finds the steps that may be ready. Each is looked up
// by its key (OFFSET 0 keeps the planner from scanning the task's steps by
// state instead, which it prefers on tables it has no statistics for and
// which is quadratic when ten thousand children become ready). A step
// with one parent (its parents column), found through the edge from a
// step in $2, has that step as its only parent: it is checked by key,
// and nothing else is read. Another step with few parents has them
// checked in turn, stopping at the first that is not done. A step with
// many (a fan-in of 64 or more) is checked the other way round, from the
// task's steps that are not done (every step state but complete and
// resolved_manually) through the (task_uuid, state) index: while its
// parents run, the first such step is one of them, and once they are all
// done that index holds only a few entries, where walking every parent
// of a 10,000-way join took 40 ms. That index plan needs statistics that
// know the table's size (see analyze.go).
const progressCandidates = `WITH found AS (
		SELECT unnest($2::text[]) AS step_uuid, NULL::text AS via
		UNION ALL SELECT e.to_step_uuid, e.from_step_uuid FROM tasker_step_edges e WHERE e.from_step_uuid = ANY($2)
		UNION ALL SELECT w.step_uuid, NULL FROM tasker_steps w WHERE w.task_uuid = $1 AND w.state = 'waiting_for_retry'
	), ids AS (
		SELECT step_uuid, min(via) AS via FROM found GROUP BY step_uuid
	)
	SELECT ` + stepColsBare + `, blocker.x IS NULL
	FROM ids CROSS JOIN LATERAL (SELECT * FROM tasker_steps s WHERE s.step_uuid = ids.step_uuid OFFSET 0) s
	LEFT JOIN LATERAL (
		SELECT CASE WHEN s.parents = 1 AND ids.via IS NOT NULL
		THEN (SELECT 1 FROM tasker_steps p WHERE p.step_uuid = ids.via AND p.state NOT IN ('complete', 'resolved_manually'))
		WHEN (SELECT count(*) FROM (SELECT 1 FROM tasker_step_edges e WHERE e.to_step_uuid = s.step_uuid LIMIT 64) n) < 64
		THEN (SELECT 1 FROM tasker_step_edges e JOIN tasker_steps p ON p.step_uuid = e.from_step_uuid
			WHERE e.to_step_uuid = s.step_uuid AND p.state NOT IN ('complete', 'resolved_manually')
			ORDER BY e.from_step_uuid DESC LIMIT 1)
		ELSE (SELECT 1 FROM (SELECT p.step_uuid FROM tasker_steps p WHERE p.task_uuid = s.task_uuid
				AND p.state = ANY('{pending,enqueued,in_progress,enqueued_for_orchestration,enqueued_as_error_for_orchestration,waiting_for_retry,error,cancelled}')
				AND p.step_uuid <> s.step_uuid OFFSET 0) p
			CROSS JOIN LATERAL (SELECT 1 FROM tasker_step_edges e
				WHERE e.to_step_uuid = s.step_uuid AND e.from_step_uuid = p.step_uuid OFFSET 0) e
			LIMIT 1)
		END AS x
	) blocker ON true
	WHERE s.task_uuid = $1 AND s.state IN ('pending', 'waiting_for_retry')
	ORDER BY s.position`

// progressStates lists the states a task's steps are in by skipping
// through the (task_uuid, state) index: one probe per state present, not
// one row per step.
const progressStates = `WITH RECURSIVE st AS (
		(SELECT state FROM tasker_steps WHERE task_uuid = $1 ORDER BY state LIMIT 1)
		UNION ALL
		SELECT (SELECT s.state FROM tasker_steps s WHERE s.task_uuid = $1 AND s.state > st.state ORDER BY s.state LIMIT 1)
		FROM st WHERE st.state IS NOT NULL
	)
	SELECT state FROM st WHERE state IS NOT NULL`

func (e *executor) TaskProgress(ctx context.Context, p store.TaskProgressParams) (*store.TaskProgress, error) {
	ids := p.Steps
	if ids == nil {
		ids = []string{}
	}
	out := &store.TaskProgress{}
	rows, err := e.query(ctx, progressStates, p.TaskUUID)
	if out.States, err = collect(rows, err, scanString); err != nil {
		return nil, fmt.Errorf("read step states of task %s: %w", p.TaskUUID, err)
	}
	rows, err = e.query(ctx, progressCandidates, p.TaskUUID, ids)
	if out.Candidates, err = collectCandidates(rows, err); err != nil {
		return nil, fmt.Errorf("find ready steps of task %s: %w", p.TaskUUID, err)
	}
	return out, nil
}

// TaskProgress in a transaction sends both of its queries in one round
// trip.
func (t *txExec) TaskProgress(ctx context.Context, p store.TaskProgressParams) (*store.TaskProgress, error) {
	ids := p.Steps
	if ids == nil {
		ids = []string{}
	}
	br, err := t.tx.send(ctx, stmt{sql: progressStates, args: []any{p.TaskUUID}},
		stmt{sql: progressCandidates, args: []any{p.TaskUUID, ids}})
	if err != nil {
		return nil, fmt.Errorf("read progress of task %s: %w", p.TaskUUID, mapErr(err))
	}
	defer br.Close()
	out := &store.TaskProgress{}
	rows, err := br.Query()
	if out.States, err = collect(rows, mapErr(err), scanString); err != nil {
		return nil, fmt.Errorf("read step states of task %s: %w", p.TaskUUID, err)
	}
	rows, err = br.Query()
	if out.Candidates, err = collectCandidates(rows, mapErr(err)); err != nil {
		return nil, fmt.Errorf("find ready steps of task %s: %w", p.TaskUUID, err)
	}
	return out, nil
}

func scanString(r pgx.Rows) (string, error) {
	var s string
	err := r.Scan(&s)
	return s, err
}

func collectCandidates(rows pgx.Rows, err error) ([]store.ProgressStep, error) {
	return collect(rows, err, func(r pgx.Rows) (store.ProgressStep, error) {
		var c store.ProgressStep
		var result, errJSON []byte
		err := r.Scan(&c.UUID, &c.TaskUUID, &c.Name, &c.Namespace, &c.Position, &c.Callable, &c.State, &c.Attempts,
			&c.MaxAttempts, &c.Retryable, &result, &errJSON, &c.NextRetryAt, &c.LastAttemptedAt, &c.CreatedAt, &c.UpdatedAt,
			&c.CompletedAt, &c.Parents, &c.DependenciesSatisfied)
		c.NextRetryAt, c.LastAttemptedAt, c.CompletedAt = utcPtr(c.NextRetryAt), utcPtr(c.LastAttemptedAt), utcPtr(c.CompletedAt)
		c.CreatedAt, c.UpdatedAt, c.Parents = c.CreatedAt.UTC(), c.UpdatedAt.UTC(), nil
		return c, err
	})
}

// enqueueMany is StepsEnqueue for many steps, in one statement: the
// guarded update, each step's history row and its message (IDs in the
// order given), and the queue's notification. It names each step once,
// where the update, history and send statements of a few steps take
// arrays of every column for every row: for the 10,000 children a
// fan-out's root releases, that was seven arrays of 10,000 built, sent
// and unpacked twice over. Like every history writer it runs after the
// task's lock was taken: a step's earlier history is all committed and
// visible to its snapshot, so MAX+1 is the next sort key.
const enqueueMany = `WITH input AS (
		SELECT i.step_uuid, i.ord FROM unnest($2::text[]) WITH ORDINALITY AS i(step_uuid, ord)
	), u AS (
		UPDATE tasker_steps s SET state = 'enqueued', updated_at = $1, completed_at = NULL, next_retry_at = NULL
		FROM input i WHERE s.step_uuid = i.step_uuid AND s.task_uuid = $3 AND s.state = $4
		RETURNING s.step_uuid, i.ord
	), history AS (
		INSERT INTO tasker_step_transitions (step_uuid, from_state, to_state, event, metadata, sort_key, created_at)
		SELECT u.step_uuid, $4, 'enqueued', 'enqueue', NULL,
			(SELECT COALESCE(MAX(t.sort_key), 0) FROM tasker_step_transitions t WHERE t.step_uuid = u.step_uuid) + 1, $1
		FROM u
	), sent AS (
		INSERT INTO tasker_queue (queue, task_uuid, step_uuid, priority, visible_at, enqueued_at)
		SELECT $7, $3, u.step_uuid, $8, $1, $1 FROM u ORDER BY u.ord
	)
	SELECT tasker_expect_count((SELECT count(*) FROM u), $5, $6), pg_notify($9, $10)`

func (e *executor) StepsEnqueue(ctx context.Context, p store.StepsEnqueueParams) error {
	n := len(p.Steps)
	if n == 0 {
		return nil
	}
	now := orNow(p.Now)
	what := "enqueue " + strconv.Itoa(n) + " steps of task " + p.TaskUUID + " from " + p.From
	if n > rowwise {
		args := []any{now, p.Steps, p.TaskUUID, p.From, n, what, p.Queue, p.Priority, e.queueChannels([]string{p.Queue})[0], e.instance}
		if pt, ok := e.q.(*pipeTx); ok {
			pt.queueSending(what, enqueueMany, args...)
			return nil
		}
		return e.execLater(ctx, what, enqueueMany, args...)
	}
	const update = `UPDATE tasker_steps SET state = 'enqueued', updated_at = $1, completed_at = NULL, next_retry_at = NULL
		WHERE step_uuid = ANY($2) AND task_uuid = $3 AND state = $4`
	guard := `WITH u AS (` + update + ` RETURNING 1) SELECT tasker_expect_count((SELECT count(*) FROM u), $5, $6)`
	if err := e.execLater(ctx, what, guard, now, p.Steps, p.TaskUUID, p.From, n, what); err != nil {
		return err
	}
	hs := make([]stepHistoryRow, n)
	msgs := make([]store.QueueMessageInsert, n)
	for i, id := range p.Steps {
		hs[i] = stepHistoryRow{step: id, from: p.From, to: "enqueued", event: "enqueue", at: now}
		msgs[i] = store.QueueMessageInsert{Queue: p.Queue, TaskUUID: p.TaskUUID, StepUUID: id, Priority: p.Priority}
	}
	if err := e.stepHistory(ctx, hs...); err != nil {
		return err
	}
	return e.QueueSend(ctx, store.QueueSendParams{Messages: msgs, Now: now})
}
