package postgres

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tasker-go/tasker/state"
	"github.com/tasker-go/tasker/store"
)

// querier is what a pool and a transaction have in common.
type querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// executor implements store.Executor over the read-only pool or a
// transaction. pgx prepares and caches every statement per connection.
type executor struct {
	q    querier
	inTx bool
	// schema names the notification channels (see channelName).
	schema string
	// instance is the payload of this driver's notifications.
	instance string
	// grown, in a transaction, counts the steps it inserts (analyze.go).
	grown *int64
	// settled, in a transaction, announces to other processes that tasks
	// were settled, once it has committed (see settledNotifier).
	settled func()
}

func (e *executor) exec(ctx context.Context, q string, args ...any) (pgconn.CommandTag, error) {
	tag, err := e.q.Exec(ctx, q, args...)
	return tag, mapErr(err)
}

// execLater runs a statement whose result nobody reads. In a transaction
// it is deferred and sent with the next statement or the commit (see
// pipeTx); what names it in the error that its failure causes.
func (e *executor) execLater(ctx context.Context, what, q string, args ...any) error {
	if p, ok := e.q.(*pipeTx); ok {
		p.queue(what, q, args...)
		return nil
	}
	if _, err := e.exec(ctx, q, args...); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

func (e *executor) query(ctx context.Context, q string, args ...any) (pgx.Rows, error) {
	rows, err := e.q.Query(ctx, q, args...)
	return rows, mapErr(err)
}

func (e *executor) queryRow(ctx context.Context, q string, args ...any) pgx.Row {
	return e.q.QueryRow(ctx, q, args...)
}

// collect reads every row of a query with scan and maps errors.
func collect[T any](rows pgx.Rows, err error, scan func(pgx.Rows) (T, error)) ([]T, error) {
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, mapErr(err)
		}
		out = append(out, v)
	}
	return out, mapErr(rows.Err())
}

// Times are stored as timestamptz (microseconds) and returned in UTC.
func orNow(t time.Time) time.Time {
	if t.IsZero() {
		return time.Now()
	}
	return t
}

func utcPtr(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}

// jsonArg passes JSON to a jsonb parameter; empty means SQL NULL.
func jsonArg(b json.RawMessage) any {
	if len(b) == 0 {
		return nil
	}
	return string(b)
}

// jsonText is an element of a text[] parameter that is cast to jsonb; nil
// means SQL NULL.
func jsonText(b json.RawMessage) *string {
	if len(b) == 0 {
		return nil
	}
	s := string(b)
	return &s
}

func rawOrNil(b []byte) json.RawMessage {
	if b == nil {
		return nil
	}
	return json.RawMessage(b)
}

func isTerminal(state string) bool {
	return state == "complete" || state == "error" || state == "cancelled" || state == "resolved_manually"
}

// args numbers query parameters as they are added.
type args []any

func (a *args) add(v any) string {
	*a = append(*a, v)
	return "$" + strconv.Itoa(len(*a))
}

// --- templates ---

func (e *executor) TemplateUpsert(ctx context.Context, p store.TemplateUpsertParams) (bool, error) {
	tag, err := e.exec(ctx, `INSERT INTO tasker_templates (namespace, name, version, content_hash, source, created_at)
		VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (namespace, name, version) DO NOTHING`,
		p.Namespace, p.Name, p.Version, p.ContentHash, p.Source, orNow(p.Now))
	if err != nil {
		return false, fmt.Errorf("insert template %s/%s/%s: %w", p.Namespace, p.Name, p.Version, err)
	}
	if tag.RowsAffected() == 1 {
		return true, nil
	}
	// A separate statement, so that it sees a version committed by a
	// concurrent registration that the insert waited for.
	var hash string
	if err := e.queryRow(ctx, `SELECT content_hash FROM tasker_templates WHERE namespace = $1 AND name = $2 AND version = $3`,
		p.Namespace, p.Name, p.Version).Scan(&hash); err != nil {
		return false, fmt.Errorf("read template %s/%s/%s: %w", p.Namespace, p.Name, p.Version, mapErr(err))
	}
	if hash != p.ContentHash {
		return false, fmt.Errorf("%s/%s/%s: %w", p.Namespace, p.Name, p.Version, store.ErrTemplateConflict)
	}
	return false, nil
}

const templateCols = `namespace, name, version, content_hash, source, created_at`

func scanTemplate(row pgx.Row) (store.TemplateRow, error) {
	var r store.TemplateRow
	err := row.Scan(&r.Namespace, &r.Name, &r.Version, &r.ContentHash, &r.Source, &r.CreatedAt)
	r.CreatedAt = r.CreatedAt.UTC()
	return r, err
}

func (e *executor) TemplateGet(ctx context.Context, p store.TemplateGetParams) (*store.TemplateRow, error) {
	r, err := scanTemplate(e.queryRow(ctx, `SELECT `+templateCols+` FROM tasker_templates
		WHERE namespace = $1 AND name = $2 AND version = $3`, p.Namespace, p.Name, p.Version))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("template %s/%s/%s: %w", p.Namespace, p.Name, p.Version, store.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("read template %s/%s/%s: %w", p.Namespace, p.Name, p.Version, mapErr(err))
	}
	return &r, nil
}

func (e *executor) TemplateList(ctx context.Context, p store.TemplateListParams) ([]store.TemplateRow, error) {
	var a args
	q := `SELECT ` + templateCols + ` FROM tasker_templates WHERE true`
	if p.Namespace != "" {
		q += ` AND namespace = ` + a.add(p.Namespace)
	}
	if p.Name != "" {
		q += ` AND name = ` + a.add(p.Name)
	}
	q += ` ORDER BY namespace, name, created_at`
	rows, err := e.query(ctx, q, a...)
	out, err := collect(rows, err, func(r pgx.Rows) (store.TemplateRow, error) { return scanTemplate(r) })
	if err != nil {
		return nil, fmt.Errorf("list templates: %w", err)
	}
	return out, nil
}

// --- tasks ---

const taskCols = `task_uuid, namespace, name, version, state, context, COALESCE(identity_hash, ''), initiator,
	source_system, reason, tags, priority, created_at, updated_at, completed_at`

func scanTask(row pgx.Row) (store.TaskRow, error) {
	var r store.TaskRow
	var ctxJSON []byte
	if err := row.Scan(&r.UUID, &r.Namespace, &r.Name, &r.Version, &r.State, &ctxJSON, &r.IdentityHash, &r.Initiator,
		&r.SourceSystem, &r.Reason, &r.Tags, &r.Priority, &r.CreatedAt, &r.UpdatedAt, &r.CompletedAt); err != nil {
		return r, err
	}
	r.Context = json.RawMessage(ctxJSON)
	if len(r.Tags) == 0 {
		r.Tags = nil
	}
	r.CreatedAt, r.UpdatedAt, r.CompletedAt = r.CreatedAt.UTC(), r.UpdatedAt.UTC(), utcPtr(r.CompletedAt)
	return r, nil
}

func (e *executor) TaskInsert(ctx context.Context, p store.TaskInsertParams) error {
	now := orNow(p.Now)
	var identity any
	if p.IdentityHash != "" {
		identity = p.IdentityHash
	}
	tags := p.Tags
	if tags == nil {
		tags = []string{}
	}
	// ON CONFLICT instead of a unique violation keeps the transaction
	// usable after a duplicate, as it is on SQLite. A conflicting insert
	// that is not committed yet is waited for.
	var stepCount any
	if p.StepCount > 0 {
		stepCount = p.StepCount
	}
	const insert = `INSERT INTO tasker_tasks (task_uuid, namespace, name, version, state, context, identity_hash,
		initiator, source_system, reason, tags, priority, created_at, updated_at, step_count)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13, $14)
		ON CONFLICT (identity_hash) DO NOTHING`
	args := []any{p.UUID, p.Namespace, p.Name, p.Version, p.State, jsonArg(p.Context), identity,
		p.Initiator, p.SourceSystem, p.Reason, tags, p.Priority, now, stepCount}
	if identity == nil {
		// Nothing can collide (a new UUID, no identity), so nothing needs
		// the answer now: the insert goes with the task's other writes.
		return e.execLater(ctx, "insert task "+p.UUID, insert, args...)
	}
	tag, err := e.exec(ctx, insert, args...)
	if err != nil {
		return fmt.Errorf("insert task %s: %w", p.UUID, err)
	}
	if tag.RowsAffected() != 1 {
		return fmt.Errorf("insert task: %w", store.ErrDuplicateIdentity)
	}
	return nil
}

func (e *executor) TaskGet(ctx context.Context, p store.TaskGetParams) (*store.TaskRow, error) {
	q := `SELECT ` + taskCols + ` FROM tasker_tasks WHERE task_uuid = $1`
	if p.ForUpdate && e.inTx {
		q += ` FOR UPDATE`
	}
	r, err := scanTask(e.queryRow(ctx, q, p.UUID))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("task %s: %w", p.UUID, store.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("read task %s: %w", p.UUID, mapErr(err))
	}
	return &r, nil
}

// taskFilter is the WHERE clause (after "WHERE true") of a task listing
// by namespace, name and states; empty ones do not filter.
func taskFilter(a *args, namespace, name string, states []string) string {
	var q string
	if namespace != "" {
		q += ` AND namespace = ` + a.add(namespace)
	}
	if name != "" {
		q += ` AND name = ` + a.add(name)
	}
	if len(states) > 0 {
		q += ` AND state = ANY(` + a.add(states) + `)`
	}
	return q
}

func (e *executor) TaskStates(ctx context.Context, p store.TaskStatesParams) (map[string]string, error) {
	out := make(map[string]string, len(p.UUIDs))
	if len(p.UUIDs) == 0 {
		return out, nil
	}
	rows, err := e.query(ctx, `SELECT task_uuid, state FROM tasker_tasks WHERE task_uuid = ANY($1)`, p.UUIDs)
	if err != nil {
		return nil, fmt.Errorf("read task states: %w", mapErr(err))
	}
	defer rows.Close()
	if out, err = store.ScanTaskStates(rows, len(p.UUIDs)); err != nil {
		return nil, fmt.Errorf("read task states: %w", mapErr(err))
	}
	return out, nil
}

func (e *executor) TaskList(ctx context.Context, p store.TaskListParams) ([]store.TaskRow, error) {
	limit := p.Limit
	if limit <= 0 {
		limit = 100
	}
	var a args
	q := `SELECT ` + taskCols + ` FROM tasker_tasks WHERE true` + taskFilter(&a, p.Namespace, p.Name, p.States)
	q += ` ORDER BY created_at DESC, task_uuid LIMIT ` + a.add(limit)
	rows, err := e.query(ctx, q, a...)
	out, err := collect(rows, err, func(r pgx.Rows) (store.TaskRow, error) { return scanTask(r) })
	if err != nil {
		return nil, fmt.Errorf("list tasks: %w", err)
	}
	return out, nil
}

func (e *executor) TaskTransition(ctx context.Context, p store.TaskTransitionParams) error {
	p.Now = orNow(p.Now)
	if pt, ok := e.q.(*pipeTx); ok && e.settled != nil && state.TaskState(p.Final()).Settled() {
		pt.afterCommit = e.settled
	}
	if pt, ok := e.q.(*pipeTx); ok && p.Deferred {
		pt.queueSet(newTaskMoves(p))
		return nil
	}
	final := p.Final()
	var completed *time.Time
	if isTerminal(final) {
		completed = &p.Now
	}
	if err := e.taskUpdate(ctx, `UPDATE tasker_tasks SET state = $1, updated_at = $2, completed_at = $3
		WHERE task_uuid = $4 AND state = $5`, p, final, p.Now, completed); err != nil {
		return err
	}
	// A statement of its own: it sees every history row committed before
	// this transaction locked the task, and no writer can add one until it
	// ends. The path's rows take the next sort keys in order.
	h := taskPathHistoryStmt(p)
	return e.execLater(ctx, h.what, h.sql, h.args...)
}

// taskUpdate runs a task transition's UPDATE now and checks that it
// matched.
func (e *executor) taskUpdate(ctx context.Context, update string, p store.TaskTransitionParams, final string, now time.Time, completed *time.Time) error {
	tag, err := e.exec(ctx, update, final, now, completed, p.UUID, p.From)
	if err != nil {
		return fmt.Errorf("task %s %s→%s: %w", p.UUID, p.From, final, err)
	}
	if tag.RowsAffected() != 1 {
		if _, err := e.TaskGet(ctx, store.TaskGetParams{UUID: p.UUID}); err != nil {
			return err
		}
		return fmt.Errorf("task %s %s→%s: %w", p.UUID, p.From, p.To, store.ErrStateConflict)
	}
	return nil
}

func (e *executor) TaskTransitions(ctx context.Context, p store.TaskTransitionsParams) ([]store.TransitionRow, error) {
	return e.transitions(ctx, `SELECT task_uuid, from_state, to_state, event, metadata, sort_key, created_at
		FROM tasker_task_transitions WHERE task_uuid = $1 ORDER BY sort_key`, p.UUID)
}

func (e *executor) transitions(ctx context.Context, q, id string) ([]store.TransitionRow, error) {
	rows, err := e.query(ctx, q, id)
	out, err := collect(rows, err, func(rows pgx.Rows) (store.TransitionRow, error) {
		var r store.TransitionRow
		var md []byte
		err := rows.Scan(&r.EntityUUID, &r.From, &r.To, &r.Event, &md, &r.SortKey, &r.CreatedAt)
		r.Metadata, r.CreatedAt = rawOrNil(md), r.CreatedAt.UTC()
		return r, err
	})
	if err != nil {
		return nil, fmt.Errorf("read history of %s: %w", id, err)
	}
	return out, nil
}

// --- steps ---

func (e *executor) StepsInsert(ctx context.Context, p store.StepsInsertParams) error {
	if err := p.CheckEdges(); err != nil {
		return err
	}
	now := orNow(p.Now)
	n := len(p.Steps)
	ids, names, callables := make([]string, n), make([]string, n), make([]string, n)
	positions, maxAttempts := make([]int64, n), make([]int64, n)
	retryable := make([]bool, n)
	parentsOf := make(map[string]int64, n)
	for _, ed := range p.Edges {
		parentsOf[ed.To]++
	}
	parents := make([]int64, n)
	for i, s := range p.Steps {
		ids[i], names[i], callables[i] = s.UUID, s.Name, s.Callable
		positions[i], maxAttempts[i], retryable[i] = int64(s.Position), int64(s.MaxAttempts), s.Retryable
		parents[i] = parentsOf[s.UUID]
	}
	if e.grown != nil {
		*e.grown += int64(n)
	}
	if n > 0 {
		if err := e.execLater(ctx, "insert steps of task "+p.TaskUUID, `INSERT INTO tasker_steps (step_uuid, task_uuid, name, namespace, position, callable, state,
				max_attempts, retryable, parents, created_at, updated_at)
			SELECT s.step_uuid, $1, s.name, $2, s.position, s.callable, 'pending', s.max_attempts, s.retryable, s.parents, $3, $3
			FROM unnest($4::text[], $5::text[], $6::int[], $7::text[], $8::int[], $9::bool[], $10::int[])
				AS s(step_uuid, name, position, callable, max_attempts, retryable, parents)`,
			p.TaskUUID, p.Namespace, now, ids, names, positions, callables, maxAttempts, retryable, parents); err != nil {
			return err
		}
	}
	if len(p.Edges) > 0 {
		from, to := make([]string, len(p.Edges)), make([]string, len(p.Edges))
		for i, ed := range p.Edges {
			from[i], to[i] = ed.From, ed.To
		}
		if err := e.execLater(ctx, "insert edges of task "+p.TaskUUID, `INSERT INTO tasker_step_edges (task_uuid, from_step_uuid, to_step_uuid)
			SELECT $1, e.from_step, e.to_step FROM unnest($2::text[], $3::text[]) AS e(from_step, to_step)`,
			p.TaskUUID, from, to); err != nil {
			return err
		}
	}
	return nil
}

const stepCols = `s.step_uuid, s.task_uuid, s.name, s.namespace, s.position, s.callable, s.state, s.attempts, s.max_attempts,
	s.retryable, s.result, s.error, s.next_retry_at, s.last_attempted_at, s.created_at, s.updated_at, s.completed_at,
	ARRAY(SELECT from_step_uuid FROM tasker_step_edges WHERE to_step_uuid = s.step_uuid ORDER BY from_step_uuid)`

func scanStep(row pgx.Row) (store.StepRow, error) {
	var r store.StepRow
	var result, errJSON []byte
	if err := row.Scan(&r.UUID, &r.TaskUUID, &r.Name, &r.Namespace, &r.Position, &r.Callable, &r.State, &r.Attempts,
		&r.MaxAttempts, &r.Retryable, &result, &errJSON, &r.NextRetryAt, &r.LastAttemptedAt, &r.CreatedAt, &r.UpdatedAt,
		&r.CompletedAt, &r.Parents); err != nil {
		return r, err
	}
	r.Result, r.Error = rawOrNil(result), rawOrNil(errJSON)
	r.NextRetryAt, r.LastAttemptedAt, r.CompletedAt = utcPtr(r.NextRetryAt), utcPtr(r.LastAttemptedAt), utcPtr(r.CompletedAt)
	r.CreatedAt, r.UpdatedAt = r.CreatedAt.UTC(), r.UpdatedAt.UTC()
	if len(r.Parents) == 0 {
		r.Parents = nil
	}
	return r, nil
}

func (e *executor) StepGet(ctx context.Context, p store.StepGetParams) (*store.StepRow, error) {
	r, err := scanStep(e.queryRow(ctx, `SELECT `+stepCols+` FROM tasker_steps s WHERE s.step_uuid = $1`, p.UUID))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("step %s: %w", p.UUID, store.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("read step %s: %w", p.UUID, mapErr(err))
	}
	return &r, nil
}

func (e *executor) StepsForTask(ctx context.Context, p store.StepsForTaskParams) ([]store.StepRow, error) {
	rows, err := e.query(ctx, `SELECT `+stepCols+` FROM tasker_steps s WHERE s.task_uuid = $1 ORDER BY s.position`, p.TaskUUID)
	out, err := collect(rows, err, func(r pgx.Rows) (store.StepRow, error) { return scanStep(r) })
	if err != nil {
		return nil, fmt.Errorf("read steps of task %s: %w", p.TaskUUID, err)
	}
	return out, nil
}

func (e *executor) StepResults(ctx context.Context, p store.StepResultsParams) (map[string]json.RawMessage, error) {
	out := map[string]json.RawMessage{}
	if len(p.Names) == 0 {
		return out, nil
	}
	rows, err := e.query(ctx, `SELECT name, result FROM tasker_steps
		WHERE task_uuid = $1 AND result IS NOT NULL AND name = ANY($2)`, p.TaskUUID, p.Names)
	type named struct {
		name   string
		result []byte
	}
	results, err := collect(rows, err, func(r pgx.Rows) (named, error) {
		var n named
		err := r.Scan(&n.name, &n.result)
		return n, err
	})
	if err != nil {
		return nil, fmt.Errorf("read results of task %s: %w", p.TaskUUID, err)
	}
	for _, n := range results {
		out[n.name] = json.RawMessage(n.result)
	}
	return out, nil
}

func (e *executor) StepTransition(ctx context.Context, p store.StepTransitionParams) error {
	now := orNow(p.Now)
	var a args
	set := []string{"state = " + a.add(p.To), "updated_at = " + a.add(now)}
	if isTerminal(p.To) {
		set = append(set, "completed_at = "+a.add(now))
	} else {
		set = append(set, "completed_at = NULL")
	}
	if p.SetResult {
		set = append(set, "result = "+a.add(jsonArg(p.Result))+"::jsonb")
	}
	if p.SetError {
		set = append(set, "error = "+a.add(jsonArg(p.Error))+"::jsonb")
	}
	if p.SetNextRetryAt {
		set = append(set, "next_retry_at = "+a.add(p.NextRetryAt))
	}
	if p.ResetAttempts {
		set = append(set, "attempts = 0")
	} else if p.DecrementAttempts {
		set = append(set, "attempts = GREATEST(attempts - 1, 0)")
	}
	q := `UPDATE tasker_steps SET ` + strings.Join(set, ", ") + ` WHERE step_uuid = ` + a.add(p.UUID) + ` AND state = ` + a.add(p.From)
	if pt, ok := e.q.(*pipeTx); ok && p.Deferred {
		p.Now = now
		pt.queueSet(newStepMoves(p))
		return nil
	}
	tag, err := e.exec(ctx, q, a...)
	if err != nil {
		return fmt.Errorf("step %s %s→%s: %w", p.UUID, p.From, p.To, err)
	}
	if tag.RowsAffected() != 1 {
		if _, err := e.StepGet(ctx, store.StepGetParams{UUID: p.UUID}); err != nil {
			return err
		}
		return fmt.Errorf("step %s %s→%s: %w", p.UUID, p.From, p.To, store.ErrStateConflict)
	}
	return e.stepHistory(ctx, stepHistoryRow{step: p.UUID, from: p.From, to: p.To, event: p.Event, metadata: p.Metadata, at: now})
}

// stepHistory records transitions of distinct steps (see stepHistoryStmts).
func (e *executor) stepHistory(ctx context.Context, hs ...stepHistoryRow) error {
	if len(hs) == 0 {
		return nil
	}
	for _, h := range stepHistoryStmts(hs) {
		if err := e.execLater(ctx, h.what, h.sql, h.args...); err != nil {
			return err
		}
	}
	return nil
}

func (e *executor) StepTransitions(ctx context.Context, p store.StepTransitionsParams) ([]store.TransitionRow, error) {
	return e.transitions(ctx, `SELECT step_uuid, from_state, to_state, event, metadata, sort_key, created_at
		FROM tasker_step_transitions WHERE step_uuid = $1 ORDER BY sort_key`, p.UUID)
}

func (e *executor) StepsDueForRetry(ctx context.Context, p store.StepsDueForRetryParams) ([]string, error) {
	limit := p.Limit
	if limit <= 0 {
		limit = 100
	}
	rows, err := e.query(ctx, `SELECT DISTINCT task_uuid FROM tasker_steps
		WHERE state = 'waiting_for_retry' AND (next_retry_at IS NULL OR next_retry_at <= $1)
		AND task_uuid NOT IN (SELECT task_uuid FROM tasker_tasks WHERE state IN ('complete', 'error', 'cancelled', 'resolved_manually', 'blocked_by_failures')) LIMIT $2`, orNow(p.Now), limit)
	out, err := collect(rows, err, func(r pgx.Rows) (string, error) {
		var id string
		err := r.Scan(&id)
		return id, err
	})
	if err != nil {
		return nil, fmt.Errorf("find retries due: %w", err)
	}
	return out, nil
}

// --- queues ---

func (e *executor) QueueSend(ctx context.Context, p store.QueueSendParams) error {
	if len(p.Messages) == 0 {
		return nil
	}
	now := orNow(p.Now)
	at := make([]time.Time, len(p.Messages))
	for i := range at {
		at[i] = now
	}
	set := &queueSends{e: e, msgs: slices.Clone(p.Messages), at: at}
	if pt, ok := e.q.(*pipeTx); ok {
		pt.queueSet(set)
		return nil
	}
	for _, d := range set.statements() {
		if err := e.execLater(ctx, d.what, d.sql, d.args...); err != nil {
			return err
		}
	}
	return nil
}

const msgCols = `id, queue, task_uuid, step_uuid, payload, COALESCE(lease_token, ''), COALESCE(lease_owner, ''), read_count,
	enqueued_at, lease_expires_at`

func scanMsg(row pgx.Row, extra ...any) (store.QueueMessage, error) {
	var m store.QueueMessage
	var payload []byte
	err := row.Scan(append([]any{&m.ID, &m.Queue, &m.TaskUUID, &m.StepUUID, &payload, &m.LeaseToken, &m.LeaseOwner,
		&m.ReadCount, &m.EnqueuedAt, &m.LeaseUntil}, extra...)...)
	m.Payload, m.EnqueuedAt, m.LeaseUntil = rawOrNil(payload), m.EnqueuedAt.UTC(), utcPtr(m.LeaseUntil)
	return m, err
}

// newToken is the SQL for a fresh lease token: 32 random hex digits.
const newToken = `replace(gen_random_uuid()::text, '-', '')`

// forQueues adapts a claim statement written for "queue = ANY($1)" to
// the queues claimed from: with a single queue it compares with "=", so
// that PostgreSQL walks the ready index in claim order and stops at the
// limit; with an array it sorts every ready message of the queues first
// (2ms for 10,000 queued messages, against 40µs).
func forQueues(queues []string, q string) string {
	if len(queues) == 1 {
		return strings.Replace(q, "queue = ANY($1)", "queue = $1", 1)
	}
	return q
}

// queuesArg is $1 of a statement adapted by forQueues.
func queuesArg(queues []string) any {
	if len(queues) == 1 {
		return queues[0]
	}
	return queues
}

func (e *executor) QueueClaim(ctx context.Context, p store.QueueClaimParams) ([]store.QueueMessage, error) {
	if len(p.Queues) == 0 || p.Limit <= 0 {
		return nil, nil
	}
	now := orNow(p.Now)
	cond := `lease_token IS NULL`
	if p.IncludeExpired {
		cond = `(lease_token IS NULL OR lease_expires_at < $2)`
	}
	// SKIP LOCKED: a message another consumer is taking right now is left
	// to it. A message leased (and committed) since this statement's
	// snapshot is re-checked against the condition and dropped.
	rows, err := e.query(ctx, forQueues(p.Queues, `WITH picked AS (
			SELECT id FROM tasker_queue
			WHERE queue = ANY($1) AND visible_at <= $2 AND `+cond+`
			ORDER BY priority DESC, id LIMIT $3
			FOR UPDATE SKIP LOCKED
		), leased AS (
			UPDATE tasker_queue q SET lease_token = `+newToken+`, lease_owner = $4, lease_expires_at = $5,
				read_count = q.read_count + 1
			FROM picked WHERE q.id = picked.id
			RETURNING q.*
		)
		SELECT `+msgCols+` FROM leased ORDER BY priority DESC, id`), queuesArg(p.Queues), now, p.Limit, p.Owner, now.Add(p.Lease))
	out, err := collect(rows, err, func(r pgx.Rows) (store.QueueMessage, error) { return scanMsg(r) })
	if err != nil {
		return nil, fmt.Errorf("claim from %v: %w", p.Queues, err)
	}
	return out, nil
}

func (e *executor) QueueExtend(ctx context.Context, p store.QueueExtendParams) error {
	tag, err := e.exec(ctx, `UPDATE tasker_queue SET lease_expires_at = $1 WHERE id = $2 AND lease_token = $3`,
		orNow(p.Now).Add(p.Lease), p.ID, p.Token)
	if err != nil {
		return fmt.Errorf("extend lease of message %d: %w", p.ID, err)
	}
	if tag.RowsAffected() != 1 {
		return fmt.Errorf("extend lease of message %d: %w", p.ID, store.ErrLeaseLost)
	}
	return nil
}

func (e *executor) QueueDelete(ctx context.Context, p store.QueueDeleteParams) error {
	if p.Token == "" {
		if _, err := e.exec(ctx, `DELETE FROM tasker_queue WHERE id = $1`, p.ID); err != nil {
			return fmt.Errorf("delete message %d: %w", p.ID, err)
		}
		return nil
	}
	var tag pgconn.CommandTag
	var err error
	if p.ExpiredBefore.IsZero() {
		tag, err = e.exec(ctx, `DELETE FROM tasker_queue WHERE id = $1 AND lease_token = $2`, p.ID, p.Token)
	} else {
		// Re-checked on the newest row version: a lease renewed by a
		// concurrent QueueExtend is not taken.
		tag, err = e.exec(ctx, `DELETE FROM tasker_queue WHERE id = $1 AND lease_token = $2 AND lease_expires_at < $3`,
			p.ID, p.Token, p.ExpiredBefore)
	}
	if err != nil {
		return fmt.Errorf("delete message %d: %w", p.ID, err)
	}
	if tag.RowsAffected() != 1 {
		return fmt.Errorf("delete message %d: %w", p.ID, store.ErrLeaseLost)
	}
	return nil
}

func (e *executor) QueueDeleteForSteps(ctx context.Context, p store.QueueDeleteForStepsParams) (int, error) {
	if len(p.StepUUIDs) == 0 {
		return 0, nil
	}
	tag, err := e.exec(ctx, `DELETE FROM tasker_queue WHERE step_uuid = ANY($1)`, p.StepUUIDs)
	if err != nil {
		return 0, fmt.Errorf("delete messages of steps: %w", err)
	}
	return int(tag.RowsAffected()), nil
}

func (e *executor) QueueExpired(ctx context.Context, p store.QueueExpiredParams) ([]store.QueueMessage, error) {
	limit := p.Limit
	if limit <= 0 {
		limit = 100
	}
	var a args
	q := `SELECT ` + msgCols + ` FROM tasker_queue WHERE lease_token IS NOT NULL AND lease_expires_at < ` + a.add(orNow(p.Now))
	if len(p.Queues) > 0 {
		q += ` AND queue = ANY(` + a.add(p.Queues) + `)`
	}
	q += ` ORDER BY lease_expires_at, id LIMIT ` + a.add(limit)
	rows, err := e.query(ctx, q, a...)
	out, err := collect(rows, err, func(r pgx.Rows) (store.QueueMessage, error) { return scanMsg(r) })
	if err != nil {
		return nil, fmt.Errorf("find expired leases: %w", err)
	}
	return out, nil
}

func (e *executor) QueueDepth(ctx context.Context, p store.QueueDepthParams) ([]store.QueueDepthRow, error) {
	rows, err := e.query(ctx, `SELECT queue, count(*) FILTER (WHERE lease_token IS NULL),
		count(*) FILTER (WHERE lease_token IS NOT NULL), min(enqueued_at) FROM tasker_queue GROUP BY queue ORDER BY queue`)
	out, err := collect(rows, err, func(rows pgx.Rows) (store.QueueDepthRow, error) {
		var r store.QueueDepthRow
		err := rows.Scan(&r.Queue, &r.Visible, &r.Leased, &r.OldestEnqueued)
		r.OldestEnqueued = r.OldestEnqueued.UTC()
		return r, err
	})
	if err != nil {
		return nil, fmt.Errorf("queue depth: %w", err)
	}
	return out, nil
}

// --- compound step operations ---

// claimSteps leases messages, moves their steps enqueued → in_progress and
// drops the messages that stand for no work, in one statement. Several
// messages for one step (a redelivery) start it once, through the first.
// A step that left "enqueued" since the snapshot (cancelled, or started
// through another message by a concurrent claimer) is re-checked on its
// newest version by the UPDATE and skipped.
//
// The statement also records each start in the step's history, so that a
// claim is one statement (one round trip, and atomic without a
// transaction around it). Its sort key is the step's last one plus one as
// of the statement's snapshot. Every history writer holds the step's row
// lock, which the UPDATE takes here; a step whose history grew after the
// snapshot was changed after it too, and the UPDATE only goes ahead when
// the newest version is still "enqueued" — which for a step enqueued
// again after the snapshot means a message committed after the snapshot,
// which this claim cannot have picked. Were that reasoning ever wrong, the
// unique (step_uuid, sort_key) key would fail the claim, not misorder the
// history.
const claimSteps = `WITH picked AS (
		SELECT id, step_uuid, priority FROM tasker_queue
		WHERE queue = ANY($1) AND visible_at <= $2 AND lease_token IS NULL
		ORDER BY priority DESC, id LIMIT $3
		FOR UPDATE SKIP LOCKED
	), first AS (
		SELECT DISTINCT ON (step_uuid) id, step_uuid FROM picked ORDER BY step_uuid, priority DESC, id
	), moved AS (
		UPDATE tasker_steps s SET state = 'in_progress', attempts = s.attempts + 1, last_attempted_at = $2, updated_at = $2
		FROM first f WHERE s.step_uuid = f.step_uuid AND s.state = 'enqueued'
		RETURNING f.id AS message_id, s.step_uuid, s.task_uuid, s.name, s.namespace, s.callable, s.attempts, s.max_attempts
	), leased AS (
		UPDATE tasker_queue q SET lease_token = ` + newToken + `, lease_owner = $4, lease_expires_at = $5,
			read_count = q.read_count + 1
		FROM moved WHERE q.id = moved.message_id
		RETURNING q.*
	), dropped AS (
		DELETE FROM tasker_queue WHERE id IN (SELECT id FROM picked) AND id NOT IN (SELECT message_id FROM moved)
	), history AS (
		INSERT INTO tasker_step_transitions (step_uuid, from_state, to_state, event, metadata, sort_key, created_at)
		SELECT m.step_uuid, 'enqueued', 'in_progress', 'start', jsonb_build_object('worker', $4::text, 'attempt', m.attempts),
			(SELECT COALESCE(MAX(t.sort_key), 0) FROM tasker_step_transitions t WHERE t.step_uuid = m.step_uuid) + 1, $2
		FROM moved m
	)
	SELECT l.id, l.queue, l.task_uuid, l.step_uuid, l.payload, l.lease_token, l.lease_owner, l.read_count,
		l.enqueued_at, l.lease_expires_at,
		m.name, m.namespace, m.callable, m.attempts, m.max_attempts, t.name, t.version, t.context
	FROM leased l JOIN moved m ON m.message_id = l.id JOIN tasker_tasks t ON t.task_uuid = m.task_uuid
	ORDER BY l.priority DESC, l.id`

func (e *executor) StepsClaim(ctx context.Context, p store.StepsClaimParams) ([]store.ClaimedStep, error) {
	if len(p.Queues) == 0 || p.Limit <= 0 {
		return nil, nil
	}
	var started []store.ClaimedStep
	if len(p.Start) > 0 {
		p.Now = orNow(p.Now)
		start := e.startStmt(p)
		rows, err := e.query(ctx, start.sql, start.args...)
		if started, err = start.read(rows, err); err != nil {
			return nil, err
		}
	}
	s := claimStmt(p)
	rows, err := e.query(ctx, s.sql, s.args...)
	claimed, err := collectClaimed(p, rows, err)
	if err != nil {
		return nil, err
	}
	return append(started, claimed...), nil
}

// startSteps starts p.Start directly, or enqueues them when a claim would
// take older messages first (see store.StepsClaimParams.Start), in one
// statement: the guarded update of the steps, their messages (leased, or
// not), their history, and the notification of the queues when they were
// enqueued. Its one row carries the guard (which fails the statement with
// TK409 unless every step was in its From state), the notifications and
// the started steps as JSON. Every part is in that row's select list, so
// it runs whether or not any step was started.
const startSteps = `WITH backlog AS MATERIALIZED (
		SELECT EXISTS (SELECT 1 FROM tasker_queue WHERE queue = ANY($1) AND visible_at <= $2 AND lease_token IS NULL) AS b
	), cand AS (
		SELECT c.*, NOT (SELECT b FROM backlog) AS direct
		FROM unnest($5::text[], $6::text[], $7::text[], $8::text[], $9::int[], $10::text[])
			WITH ORDINALITY AS c(step_uuid, task_uuid, from_state, queue, priority, token, ord)
	), began AS (
		UPDATE tasker_steps s SET state = CASE WHEN c.direct THEN 'in_progress' ELSE 'enqueued' END,
			attempts = s.attempts + CASE WHEN c.direct THEN 1 ELSE 0 END,
			last_attempted_at = CASE WHEN c.direct THEN $2 ELSE s.last_attempted_at END,
			updated_at = $2, completed_at = NULL, next_retry_at = NULL
		FROM cand c WHERE s.step_uuid = c.step_uuid AND s.state = c.from_state
		RETURNING c.ord, c.direct, c.from_state, c.queue, c.priority, c.token, s.step_uuid, s.task_uuid, s.name, s.namespace,
			s.callable, s.attempts, s.max_attempts
	), sent AS (
		INSERT INTO tasker_queue (queue, task_uuid, step_uuid, priority, visible_at, enqueued_at, lease_token, lease_owner,
			lease_expires_at, read_count)
		SELECT b.queue, b.task_uuid, b.step_uuid, b.priority, $2, $2, CASE WHEN b.direct THEN b.token END,
			CASE WHEN b.direct THEN $3 END, CASE WHEN b.direct THEN $4::timestamptz END, CASE WHEN b.direct THEN 1 ELSE 0 END
		FROM began b ORDER BY b.ord
		RETURNING id, step_uuid
	), history AS (
		INSERT INTO tasker_step_transitions (step_uuid, from_state, to_state, event, metadata, sort_key, created_at)
		SELECT b.step_uuid, v.from_state, v.to_state, v.event, v.metadata, k.k + v.n, $2
		FROM began b
		CROSS JOIN LATERAL (SELECT COALESCE(MAX(t.sort_key), 0) AS k FROM tasker_step_transitions t WHERE t.step_uuid = b.step_uuid) k
		CROSS JOIN LATERAL (VALUES (1, b.from_state, 'enqueued', 'enqueue', NULL::jsonb),
			(2, 'enqueued', 'in_progress', 'start', jsonb_build_object('worker', $3::text, 'attempt', b.attempts)))
			AS v(n, from_state, to_state, event, metadata)
		WHERE v.n = 1 OR b.direct
	)
	SELECT (SELECT count(*) FROM (SELECT tasker_expect_count((SELECT count(*) FROM began), cardinality($5::text[]), 'start steps')) g),
		(SELECT count(pg_notify(ch, $12)) FROM unnest($11::text[]) AS ch WHERE (SELECT b FROM backlog)),
		(SELECT json_agg(json_build_object('step', b.step_uuid, 'id', m.id, 'name', b.name, 'namespace', b.namespace,
			'callable', b.callable, 'attempts', b.attempts, 'max', b.max_attempts) ORDER BY b.ord)
		 FROM began b JOIN sent m ON m.step_uuid = b.step_uuid WHERE b.direct)`

// startQuery is the statement of a direct start with the reader of its
// row.
type startQuery struct {
	stmt
	read func(pgx.Rows, error) ([]store.ClaimedStep, error)
}

// startStmt is the statement that starts p.Start for a claim (see
// startSteps); claimStmt then claims only what is left of p.Limit.
func (e *executor) startStmt(p store.StepsClaimParams) startQuery {
	n := len(p.Start)
	steps, tasks, from, queues, tokens := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	prio := make([]int32, n)
	var notify []string
	for i, st := range p.Start {
		steps[i], tasks[i], from[i], queues[i], prio[i] = st.UUID, st.TaskUUID, st.From, st.Queue, int32(st.Priority)
		tokens[i] = store.NewLeaseToken()
		if !slices.Contains(notify, st.Queue) {
			notify = append(notify, st.Queue)
		}
	}
	until := p.Now.Add(p.Lease)
	read := func(rows pgx.Rows, err error) ([]store.ClaimedStep, error) {
		if err != nil {
			return nil, fmt.Errorf("start steps: %w", mapErr(err))
		}
		defer rows.Close()
		var guard, notified int64
		var raw []byte
		if !rows.Next() {
			if err := rows.Err(); err != nil {
				return nil, fmt.Errorf("start steps: %w", mapErr(err))
			}
			return nil, fmt.Errorf("start steps: no result row")
		}
		if err := rows.Scan(&guard, &notified, &raw); err != nil {
			return nil, fmt.Errorf("start steps: %w", mapErr(err))
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("start steps: %w", mapErr(err))
		}
		if raw == nil {
			return nil, nil // enqueued behind the backlog
		}
		var got []struct {
			Step, Name, Namespace, Callable string
			ID                              int64
			Attempts, Max                   int
		}
		if err := json.Unmarshal(raw, &got); err != nil {
			return nil, fmt.Errorf("start steps: %w", err)
		}
		out := make([]store.ClaimedStep, 0, len(got))
		for _, g := range got {
			i := slices.Index(steps, g.Step)
			if i < 0 {
				return nil, fmt.Errorf("start steps: step %s was not asked for", g.Step)
			}
			st := p.Start[i]
			out = append(out, store.ClaimedStep{StepUUID: g.Step, TaskUUID: st.TaskUUID, StepName: g.Name, Namespace: g.Namespace,
				TaskName: st.TaskName, Version: st.Version, Callable: g.Callable, Attempt: g.Attempts, MaxAttempts: g.Max,
				TaskContext: bytes.Clone(st.TaskContext),
				Message: store.QueueMessage{ID: g.ID, Queue: st.Queue, TaskUUID: st.TaskUUID, StepUUID: g.Step, LeaseToken: tokens[i],
					LeaseOwner: p.Owner, ReadCount: 1, EnqueuedAt: p.Now.UTC(), LeaseUntil: utcPtr(&until)}})
		}
		return out, nil
	}
	return startQuery{stmt: stmt{sql: forQueues(p.Queues, startSteps), args: []any{queuesArg(p.Queues), p.Now, p.Owner, until,
		steps, tasks, from, queues, prio, tokens, e.queueChannels(notify), e.instance}}, read: read}
}

// claimStmt is the statement that claims p's steps.
func claimStmt(p store.StepsClaimParams) stmt {
	now := orNow(p.Now)
	if len(p.Start) > 0 {
		// After startStmt: the steps it started are leased messages of
		// the claim's queues now, and count against the Limit.
		steps := make([]string, len(p.Start))
		for i, st := range p.Start {
			steps[i] = st.UUID
		}
		return stmt{sql: forQueues(p.Queues, strings.Replace(claimSteps, "LIMIT $3", `LIMIT GREATEST($3 - (SELECT count(*)
			FROM tasker_queue WHERE step_uuid = ANY($6::text[]) AND lease_owner = $4 AND lease_token IS NOT NULL), 0)`, 1)),
			args: []any{queuesArg(p.Queues), now, p.Limit, p.Owner, now.Add(p.Lease), steps}}
	}
	return stmt{sql: forQueues(p.Queues, claimSteps), args: []any{queuesArg(p.Queues), now, p.Limit, p.Owner, now.Add(p.Lease)}}
}

// collectClaimed reads the steps a claimStmt claimed.
func collectClaimed(p store.StepsClaimParams, rows pgx.Rows, err error) ([]store.ClaimedStep, error) {
	out, err := collect(rows, err, func(r pgx.Rows) (store.ClaimedStep, error) {
		var c store.ClaimedStep
		var ctxJSON []byte
		m, err := scanMsg(r, &c.StepName, &c.Namespace, &c.Callable, &c.Attempt, &c.MaxAttempts, &c.TaskName, &c.Version, &ctxJSON)
		c.Message, c.StepUUID, c.TaskUUID, c.TaskContext = m, m.StepUUID, m.TaskUUID, json.RawMessage(ctxJSON)
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("claim steps from %v: %w", p.Queues, err)
	}
	return out, nil
}

// completeSteps applies a batch of completions in one statement. A
// completion applies only if its message lease still matches (the message
// row is locked, so a concurrent rescuer cannot take it meanwhile) and its
// step is in_progress on the same attempt; only then is its message
// deleted. A refused completion leaves the message in place, or its step
// would be stranded in_progress with nothing to rescue it. Of several
// completions for one step, the first that holds its lease is applied.
const completeSteps = `WITH c AS (
		SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::int[], $5::bool[], $6::text[], $7::text[])
			WITH ORDINALITY AS c(message_id, token, step_uuid, attempt, success, result, error, ord)
	), leased AS (
		SELECT c.ord FROM c JOIN tasker_queue q ON q.id = c.message_id AND q.lease_token = c.token
		ORDER BY q.id FOR UPDATE OF q
	), first AS (
		SELECT DISTINCT ON (c.step_uuid) c.* FROM c JOIN leased USING (ord) ORDER BY c.step_uuid, c.ord
	), moved AS (
		UPDATE tasker_steps s SET
			state = CASE WHEN NOT f.success THEN 'enqueued_as_error_for_orchestration' WHEN $9 THEN 'complete'
				ELSE 'enqueued_for_orchestration' END,
			completed_at = CASE WHEN f.success AND $9 THEN $8 ELSE s.completed_at END,
			result = f.result::jsonb, error = COALESCE(f.error::jsonb, s.error), updated_at = $8
		FROM first f WHERE s.step_uuid = f.step_uuid AND s.state = 'in_progress' AND s.attempts = f.attempt
		RETURNING f.ord, f.message_id
	), removed AS (
		DELETE FROM tasker_queue WHERE id IN (SELECT message_id FROM moved)
	)
	SELECT c.ord, l.ord IS NOT NULL, m.ord IS NOT NULL
	FROM c LEFT JOIN leased l USING (ord) LEFT JOIN moved m USING (ord) ORDER BY c.ord`

// completeStep is completeSteps for one completion (see moveStep for why
// a single row gets a statement of its own); its one row reads the same.
const completeStep = `WITH leased AS (
		SELECT q.id FROM tasker_queue q WHERE q.id = $1 AND q.lease_token = $2 FOR UPDATE
	), moved AS (
		UPDATE tasker_steps s SET
			state = CASE WHEN NOT $5::bool THEN 'enqueued_as_error_for_orchestration' WHEN $9::bool THEN 'complete'
				ELSE 'enqueued_for_orchestration' END,
			completed_at = CASE WHEN $5::bool AND $9::bool THEN $8::timestamptz ELSE s.completed_at END,
			result = $6::text::jsonb, error = COALESCE($7::text::jsonb, s.error), updated_at = $8::timestamptz
		WHERE s.step_uuid = $3 AND s.state = 'in_progress' AND s.attempts = $4 AND EXISTS (SELECT 1 FROM leased)
		RETURNING 1
	), removed AS (
		DELETE FROM tasker_queue WHERE id = $1 AND EXISTS (SELECT 1 FROM moved)
	)
	SELECT 1::bigint, EXISTS (SELECT 1 FROM leased), EXISTS (SELECT 1 FROM moved)`

// completeStmts are the statements that apply p's completions: one per
// completion up to rowwise of them (see rowwise), else one for all.
func completeStmts(p store.StepsCompleteParams, settle bool) []stmt {
	n := len(p.Completions)
	if n <= 1 || n > rowwise {
		return []stmt{completeStmt(p, settle)}
	}
	out := make([]stmt, n)
	for i := range p.Completions {
		out[i] = completeStmt(store.StepsCompleteParams{Completions: p.Completions[i : i+1], Now: p.Now}, settle)
	}
	return out
}

// completeStmt is the statement that applies p's completions.
func completeStmt(p store.StepsCompleteParams, settle bool) stmt {
	args := completeArgs(p, settle)
	if len(p.Completions) != 1 {
		return stmt{sql: completeSteps, args: args}
	}
	one := make([]any, len(args))
	for i, a := range args {
		switch v := a.(type) {
		case []int64:
			one[i] = v[0]
		case []string:
			one[i] = v[0]
		case []bool:
			one[i] = v[0]
		case []*string:
			one[i] = v[0]
		default:
			one[i] = a
		}
	}
	return stmt{sql: completeStep, args: one}
}

func (e *executor) StepsComplete(ctx context.Context, p store.StepsCompleteParams) ([]error, error) {
	out := make([]error, len(p.Completions))
	if len(p.Completions) == 0 {
		return out, nil
	}
	st := completeStmt(p, false)
	rows, err := e.query(ctx, st.sql, st.args...)
	if err := e.completeOutcomes(ctx, p, false, nil, rows, err, out); err != nil {
		return nil, err
	}
	return out, nil
}

// completeArgs are completeSteps' arguments for p.
func completeArgs(p store.StepsCompleteParams, settle bool) []any {
	now := orNow(p.Now)
	n := len(p.Completions)
	ids, tokens, steps := make([]int64, n), make([]string, n), make([]string, n)
	attempts, success := make([]int64, n), make([]bool, n)
	results, errs := make([]*string, n), make([]*string, n)
	for i, c := range p.Completions {
		ids[i], tokens[i], steps[i], attempts[i], success[i] = c.MessageID, c.LeaseToken, c.StepUUID, int64(c.Attempt), c.Success
		// A success keeps the previous failure in the error column: it is
		// the step's last failure, which operators want to see even after a
		// retry succeeded. A failure clears the result.
		if c.Success {
			results[i] = jsonText(c.Result)
		} else {
			errs[i] = jsonText(c.Error)
		}
	}
	return []any{ids, tokens, steps, attempts, success, results, errs, now, settle}
}

// completeOutcomes reads completeSteps' rows into out (one entry per
// completion: nil or why it was refused) and records the history of the
// applied ones.
func (e *executor) completeOutcomes(ctx context.Context, p store.StepsCompleteParams, settle bool, settled map[string]bool,
	rows pgx.Rows, err error, out []error) error {
	return e.completeResults(ctx, p, settle, settled, 1, func() (pgx.Rows, error) { return rows, err }, out)
}

// completeResults is completeOutcomes for the results of the statements
// of completeStmts (stmts of them), read in turn from next.
func (e *executor) completeResults(ctx context.Context, p store.StepsCompleteParams, settle bool, settled map[string]bool,
	stmts int, next func() (pgx.Rows, error), out []error) error {
	type outcome struct {
		ord           int64
		leased, moved bool
	}
	var outcomes []outcome
	for k := range stmts {
		rows, err := next()
		got, err := collect(rows, err, func(r pgx.Rows) (outcome, error) {
			var o outcome
			err := r.Scan(&o.ord, &o.leased, &o.moved)
			// A statement of one completion numbers it 1: it is the k-th.
			o.ord += int64(k)
			return o, err
		})
		if err != nil {
			return fmt.Errorf("complete %d steps: %w", len(p.Completions), err)
		}
		outcomes = append(outcomes, got...)
	}
	now := orNow(p.Now)
	var hs []stepHistoryRow
	for _, o := range outcomes {
		i := int(o.ord) - 1
		c := p.Completions[i]
		switch {
		case !o.leased:
			out[i] = fmt.Errorf("complete step %s attempt %d: %w", c.StepUUID, c.Attempt, store.ErrLeaseLost)
		case !o.moved:
			out[i] = fmt.Errorf("complete step %s attempt %d: step is no longer in progress: %w", c.StepUUID, c.Attempt, store.ErrLeaseLost)
		default:
			to, event := "enqueued_for_orchestration", "succeed"
			if !c.Success {
				to, event = "enqueued_as_error_for_orchestration", "fail_attempt"
			}
			hs = append(hs, stepHistoryRow{step: c.StepUUID, from: "in_progress", to: to, event: event, metadata: c.Metadata, at: now})
			if c.Success && settle {
				hs = append(hs, stepHistoryRow{step: c.StepUUID, from: to, to: "complete", event: "complete", at: now, hop: 2})
				if settled != nil {
					settled[c.StepUUID] = true
				}
			}
		}
	}
	return e.stepHistory(ctx, hs...)
}

// --- durable events ---

// EventsInsert appends events. Event writers take a transaction-scoped
// advisory lock first, so sequence numbers are handed out in commit order:
// a transaction that inserts events later also commits later.
func (e *executor) EventsInsert(ctx context.Context, p store.EventsInsertParams) error {
	if len(p.Events) == 0 {
		return nil
	}
	if _, err := e.exec(ctx, `SELECT pg_advisory_xact_lock(hashtext(current_schema() || ':tasker_events'))`); err != nil {
		return fmt.Errorf("insert events: lock: %w", err)
	}
	now := orNow(p.Now)
	n := len(p.Events)
	ids, names, tasks, steps := make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	payloads := make([]*string, n)
	for i, ev := range p.Events {
		ids[i], names[i], tasks[i], steps[i], payloads[i] = ev.EventID, ev.Name, ev.TaskUUID, ev.StepUUID, jsonText(ev.Payload)
	}
	if _, err := e.exec(ctx, `WITH inserted AS (
			INSERT INTO tasker_events (event_id, name, task_uuid, step_uuid, payload, created_at)
			SELECT m.event_id, m.name, m.task_uuid, m.step_uuid, m.payload::jsonb, $1
			FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
				WITH ORDINALITY AS m(event_id, name, task_uuid, step_uuid, payload, ord)
			ORDER BY m.ord
		)
		SELECT pg_notify($7, $8)`, now, ids, names, tasks, steps, payloads, channelName(e.schema, store.EventsTopic), e.instance); err != nil {
		return fmt.Errorf("insert events: %w", err)
	}
	return nil
}

func (e *executor) EventsAfter(ctx context.Context, p store.EventsAfterParams) ([]store.EventRow, error) {
	limit := p.Limit
	if limit <= 0 {
		limit = 100
	}
	rows, err := e.query(ctx, `SELECT seq, event_id, name, task_uuid, step_uuid, payload, created_at FROM tasker_events
		WHERE seq > $1 ORDER BY seq LIMIT $2`, p.After, limit)
	out, err := collect(rows, err, func(r pgx.Rows) (store.EventRow, error) {
		var ev store.EventRow
		var payload []byte
		err := r.Scan(&ev.Seq, &ev.EventID, &ev.Name, &ev.TaskUUID, &ev.StepUUID, &payload, &ev.CreatedAt)
		ev.Payload, ev.CreatedAt = rawOrNil(payload), ev.CreatedAt.UTC()
		return ev, err
	})
	if err != nil {
		return nil, fmt.Errorf("read events after %d: %w", p.After, err)
	}
	return out, nil
}

func (e *executor) EventsPrune(ctx context.Context, p store.EventsPruneParams) (int, error) {
	tag, err := e.exec(ctx, `DELETE FROM tasker_events WHERE created_at < $1 AND ($2 = 0 OR seq <= $2)`, p.Before, p.UpTo)
	if err != nil {
		return 0, fmt.Errorf("prune events: %w", err)
	}
	return int(tag.RowsAffected()), nil
}

func (e *executor) EventCursorGet(ctx context.Context, p store.EventCursorGetParams) (int64, error) {
	var pos int64
	err := e.queryRow(ctx, `SELECT position FROM tasker_event_cursors WHERE subscription = $1`, p.Subscription).Scan(&pos)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read cursor of %s: %w", p.Subscription, mapErr(err))
	}
	return pos, nil
}

func (e *executor) EventCursorSet(ctx context.Context, p store.EventCursorSetParams) error {
	if _, err := e.exec(ctx, `INSERT INTO tasker_event_cursors (subscription, position, updated_at) VALUES ($1, $2, $3)
		ON CONFLICT (subscription) DO UPDATE SET position = GREATEST(tasker_event_cursors.position, excluded.position),
		updated_at = excluded.updated_at`, p.Subscription, p.Position, orNow(p.Now)); err != nil {
		return fmt.Errorf("store cursor of %s: %w", p.Subscription, err)
	}
	return nil
}

func (e *executor) EventCursors(ctx context.Context) ([]store.EventCursor, error) {
	rows, err := e.query(ctx, `SELECT subscription, position, updated_at FROM tasker_event_cursors ORDER BY subscription`)
	out, err := collect(rows, err, func(r pgx.Rows) (store.EventCursor, error) {
		var c store.EventCursor
		err := r.Scan(&c.Subscription, &c.Position, &c.UpdatedAt)
		c.UpdatedAt = c.UpdatedAt.UTC()
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("read event cursors: %w", err)
	}
	return out, nil
}
