package postgres

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/tasker-go/tasker/store"
)

// A write set is a deferred write that later deferred writes of the same
// kind join, so that an orchestration transaction over many tasks sends
// one statement per kind of write (the tasks' transitions, the steps'
// transitions, the queue messages) instead of one per row.
//
// Joining moves a write earlier in the transaction than where it was
// issued: to the position of the set it joins. That is safe only across
// writes it commutes with, so pipeTx.queueSet walks back from the end of
// the pending list and stops at the first write that a set does not
// commute with; a set never takes two rows for the same entity, so the
// transitions of one step stay in the order they were issued.
type writeSet interface {
	// join adds next's rows to the set and reports true, or reports false
	// (leaving the set alone) if they cannot share its statements.
	join(next writeSet) bool
	// commutes reports whether the set's rows may be applied before d,
	// which was queued earlier.
	commutes(d *deferred) bool
	// statements renders the set, in order.
	statements() []deferred
}

// keyedRows are the rows of a set that takes at most one row per entity.
type keyedRows[T any] struct {
	key  func(T) string
	seen map[string]bool
	rows []T
}

func newKeyedRows[T any](key func(T) string, first T) keyedRows[T] {
	return keyedRows[T]{key: key, seen: map[string]bool{key(first): true}, rows: []T{first}}
}

// add appends next's rows unless one of them names an entity already in
// the set, in which case it adds none and reports false.
func (k *keyedRows[T]) add(next keyedRows[T]) bool {
	for _, r := range next.rows {
		if k.seen[k.key(r)] {
			return false
		}
	}
	for _, r := range next.rows {
		k.seen[k.key(r)] = true
		k.rows = append(k.rows, r)
	}
	return true
}

// stepMoves is a set of guarded step transitions (at most one per step)
// with their history rows.
type stepMoves struct {
	keyedRows[store.StepTransitionParams]
}

func newStepMoves(p store.StepTransitionParams) *stepMoves {
	p.Now = orNow(p.Now)
	return &stepMoves{newKeyedRows(func(p store.StepTransitionParams) string { return p.UUID }, p)}
}

func (s *stepMoves) join(next writeSet) bool {
	n, ok := next.(*stepMoves)
	return ok && s.add(n.keyedRows)
}

// commutes: steps' rows and history are written by nothing else that is
// deferred except plain history and inserts, which stay barriers.
func (s *stepMoves) commutes(d *deferred) bool {
	switch d.set.(type) {
	case *taskMoves, *queueSends:
		return true
	}
	return false
}

// moveSteps applies guarded step transitions: every row must match its
// step in its From state, or the statement fails (SQLSTATE TK409, see
// migration 0005) naming the transitions that did not match. The
// subquery that names them runs only on failure.
//
// Each row's step is found through its primary key in a LATERAL subquery
// that the planner may not flatten (OFFSET 0), then updated by ctid. A
// plain join with the unnested rows is planned once per connection, and a
// plan made while the table was nearly empty (a new database, minutes
// before autovacuum first analyzes it) hashes a sequential scan of the
// whole table, which it then keeps doing at any size: 3 ms a statement at
// 20,000 steps. This form is an index probe per row whatever the
// statistics say. moveTasks does the same for tasks.
const moveSteps = `WITH m AS (
		SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::bool[], $6::bool[], $7::text[],
			$8::bool[], $9::text[], $10::bool[], $11::timestamptz[], $12::int[])
			AS m(step_uuid, from_state, to_state, at, done, set_result, result, set_error, error, set_retry, next_retry_at, attempts_op)
	), u AS (
		UPDATE tasker_steps s SET state = m.to_state, updated_at = m.at,
			completed_at = CASE WHEN m.done THEN m.at END,
			result = CASE WHEN m.set_result THEN m.result::jsonb ELSE s.result END,
			error = CASE WHEN m.set_error THEN m.error::jsonb ELSE s.error END,
			next_retry_at = CASE WHEN m.set_retry THEN m.next_retry_at ELSE s.next_retry_at END,
			attempts = CASE m.attempts_op WHEN 1 THEN 0 WHEN 2 THEN GREATEST(s.attempts - 1, 0) ELSE s.attempts END
		FROM m JOIN LATERAL (SELECT x.ctid AS tid FROM tasker_steps x WHERE x.step_uuid = m.step_uuid OFFSET 0) r ON true
		WHERE s.ctid = r.tid AND s.state = m.from_state
		RETURNING s.step_uuid
	), n AS (SELECT count(*) AS n FROM u)
	SELECT tasker_expect_count(n.n, cardinality($1::text[]), CASE WHEN n.n = cardinality($1::text[]) THEN '' ELSE
		'step ' || (SELECT string_agg(m.step_uuid || ' ' || m.from_state || '→' || m.to_state, ', ') FROM m
			WHERE NOT EXISTS (SELECT 1 FROM u WHERE u.step_uuid = m.step_uuid)) END)
	FROM n`

func (s *stepMoves) statements() []deferred {
	n := len(s.rows)
	ids, from, to := make([]string, n), make([]string, n), make([]string, n)
	at, retryAt := make([]time.Time, n), make([]*time.Time, n)
	done, setResult, setError, setRetry := make([]bool, n), make([]bool, n), make([]bool, n), make([]bool, n)
	results, errs := make([]*string, n), make([]*string, n)
	attempts := make([]int32, n)
	hs := make([]stepHistoryRow, n)
	for i, p := range s.rows {
		ids[i], from[i], to[i], at[i], done[i] = p.UUID, p.From, p.To, p.Now, isTerminal(p.To)
		setResult[i], setError[i], setRetry[i] = p.SetResult, p.SetError, p.SetNextRetryAt
		if p.SetResult {
			results[i] = jsonText(p.Result)
		}
		if p.SetError {
			errs[i] = jsonText(p.Error)
		}
		if p.SetNextRetryAt {
			retryAt[i] = p.NextRetryAt
		}
		switch {
		case p.ResetAttempts:
			attempts[i] = 1
		case p.DecrementAttempts:
			attempts[i] = 2
		}
		hs[i] = stepHistoryRow{step: p.UUID, from: p.From, to: p.To, event: p.Event, metadata: p.Metadata, at: p.Now}
	}
	if n <= rowwise {
		var out []deferred
		for i := range n {
			what := "step " + ids[i] + " " + from[i] + "→" + to[i]
			out = append(out, deferred{what: what, sql: moveStep, args: []any{ids[i], from[i], to[i], at[i], done[i],
				setResult[i], results[i], setError[i], errs[i], setRetry[i], retryAt[i], attempts[i], what}})
		}
		return append(out, stepHistoryStmts(hs)...)
	}
	return append([]deferred{{what: fmt.Sprintf("transition of %d steps", n), sql: moveSteps,
		args: []any{ids, from, to, at, done, setResult, results, setError, errs, setRetry, retryAt, attempts}}},
		stepHistoryStmts(hs)...)
}

// rowwise is the size up to which a write set is sent as single-row
// statements. A statement driven by unnest is estimated at ten rows
// whatever it gets, so for a few rows PostgreSQL plans it afresh on every
// execution (0.3–1 ms here), where a cached single-row plan runs in tens
// of microseconds; above this size one set statement costs less.
const rowwise = 8

// moveStep is moveSteps for one step, the common case of a transaction
// that moves one task's step along. Its plan is an index lookup by
// primary key that PostgreSQL caches once per connection: an unnest of
// one row is estimated at ten, so the set form is planned afresh on every
// execution, which costs more than it runs.
const moveStep = `WITH u AS (
		UPDATE tasker_steps s SET state = $3, updated_at = $4, completed_at = CASE WHEN $5 THEN $4::timestamptz END,
			result = CASE WHEN $6 THEN $7::jsonb ELSE s.result END,
			error = CASE WHEN $8 THEN $9::jsonb ELSE s.error END,
			next_retry_at = CASE WHEN $10 THEN $11::timestamptz ELSE s.next_retry_at END,
			attempts = CASE $12::int WHEN 1 THEN 0 WHEN 2 THEN GREATEST(s.attempts - 1, 0) ELSE s.attempts END
		WHERE s.step_uuid = $1 AND s.state = $2
		RETURNING 1
	)
	SELECT tasker_expect_one((SELECT count(*) FROM u), $13)`

// taskMoves is a set of guarded task transitions (at most one per task,
// each possibly a path through several states) with their history rows.
type taskMoves struct {
	keyedRows[store.TaskTransitionParams]
}

func newTaskMoves(p store.TaskTransitionParams) *taskMoves {
	p.Now = orNow(p.Now)
	return &taskMoves{newKeyedRows(func(p store.TaskTransitionParams) string { return p.UUID }, p)}
}

func (s *taskMoves) join(next writeSet) bool {
	n, ok := next.(*taskMoves)
	return ok && s.add(n.keyedRows)
}

// commutes: a task's row and history are written by no other deferred
// write; step inserts reference the task row but do not change it.
func (s *taskMoves) commutes(d *deferred) bool {
	switch d.set.(type) {
	case *stepMoves, *queueSends:
		return true
	}
	return false
}

const moveTasks = `WITH m AS (
		SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::bool[])
			AS m(task_uuid, from_state, to_state, at, done)
	), u AS (
		UPDATE tasker_tasks t SET state = m.to_state, updated_at = m.at, completed_at = CASE WHEN m.done THEN m.at END
		FROM m JOIN LATERAL (SELECT x.ctid AS tid FROM tasker_tasks x WHERE x.task_uuid = m.task_uuid OFFSET 0) r ON true
		WHERE t.ctid = r.tid AND t.state = m.from_state
		RETURNING t.task_uuid
	), n AS (SELECT count(*) AS n FROM u)
	SELECT tasker_expect_count(n.n, cardinality($1::text[]), CASE WHEN n.n = cardinality($1::text[]) THEN '' ELSE
		'task ' || (SELECT string_agg(m.task_uuid || ' ' || m.from_state || '→' || m.to_state, ', ') FROM m
			WHERE NOT EXISTS (SELECT 1 FROM u WHERE u.task_uuid = m.task_uuid)) END)
	FROM n`

// taskHistory records task transitions; a task's rows are numbered by
// hop (1, 2, …) after its last recorded sort key. Every task appears in
// one path only, so MAX is read once per task before any row is added.
const taskHistory = `INSERT INTO tasker_task_transitions (task_uuid, from_state, to_state, event, metadata, sort_key, created_at)
	SELECT h.task_uuid, h.from_state, h.to_state, h.event, h.metadata::jsonb,
		(SELECT COALESCE(MAX(t.sort_key), 0) FROM tasker_task_transitions t WHERE t.task_uuid = h.task_uuid) + h.hop, h.at
	FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int[], $7::timestamptz[])
		AS h(task_uuid, from_state, to_state, event, metadata, hop, at)`

func (s *taskMoves) statements() []deferred {
	if len(s.rows) <= rowwise {
		var out []deferred
		for _, p := range s.rows {
			final := p.Final()
			what := "task " + p.UUID + " " + p.From + "→" + final
			out = append(out,
				deferred{what: what, sql: moveTask, args: []any{p.UUID, p.From, final, p.Now, isTerminal(final), what}},
				taskPathHistoryStmt(p))
		}
		return out
	}
	n := len(s.rows)
	ids, from, to := make([]string, n), make([]string, n), make([]string, n)
	at, done := make([]time.Time, n), make([]bool, n)
	var hTask, hFrom, hTo, hEvent []string
	var hMeta []*string
	var hHop []int32
	var hAt []time.Time
	for i, p := range s.rows {
		final := p.Final()
		ids[i], from[i], to[i], at[i], done[i] = p.UUID, p.From, final, p.Now, isTerminal(final)
		for j, h := range p.Path() {
			hTask, hFrom, hTo, hEvent = append(hTask, p.UUID), append(hFrom, h[0]), append(hTo, h[1]), append(hEvent, h[2])
			hMeta, hHop, hAt = append(hMeta, jsonText(p.Metadata)), append(hHop, int32(j+1)), append(hAt, p.Now)
		}
	}
	what := fmt.Sprintf("transition of %d tasks", n)
	return []deferred{
		{what: what, sql: moveTasks, args: []any{ids, from, to, at, done}},
		{what: "history of " + what, sql: taskHistory, args: []any{hTask, hFrom, hTo, hEvent, hMeta, hHop, hAt}},
	}
}

// taskPathHistoryStmt records the history of one task's transition (see
// taskPathHistory).
func taskPathHistoryStmt(p store.TaskTransitionParams) deferred {
	var from, to, events []string
	for _, h := range p.Path() {
		from, to, events = append(from, h[0]), append(to, h[1]), append(events, h[2])
	}
	return deferred{what: "history of task " + p.UUID + " " + p.From + "→" + p.Final(), sql: taskPathHistory,
		args: []any{p.UUID, jsonText(p.Metadata), p.Now, from, to, events}}
}

// moveTask and taskPathHistory are moveTasks and taskHistory for one task
// (see moveStep); the path's sort keys follow the task's last one, read
// once.
const moveTask = `WITH u AS (
		UPDATE tasker_tasks SET state = $3, updated_at = $4, completed_at = CASE WHEN $5 THEN $4::timestamptz END
		WHERE task_uuid = $1 AND state = $2
		RETURNING 1
	)
	SELECT tasker_expect_one((SELECT count(*) FROM u), $6)`

const taskPathHistory = `INSERT INTO tasker_task_transitions (task_uuid, from_state, to_state, event, metadata, sort_key, created_at)
	SELECT $1::text, h.from_state, h.to_state, h.event, $2::jsonb,
		(SELECT COALESCE(MAX(sort_key), 0) FROM tasker_task_transitions WHERE task_uuid = $1::text) + h.ord, $3::timestamptz
	FROM unnest($4::text[], $5::text[], $6::text[]) WITH ORDINALITY AS h(from_state, to_state, event, ord)`

// queueSends is a set of queue messages. Messages commute with every
// other deferred write but a statement that sends messages of its own (a
// large enqueue; nothing else deferred reads or changes the queue), and
// joined sets keep the order in which messages were sent, which claims
// use to break priority ties.
type queueSends struct {
	e    *executor
	msgs []store.QueueMessageInsert
	at   []time.Time
}

func (s *queueSends) join(next writeSet) bool {
	n, ok := next.(*queueSends)
	if !ok {
		return false
	}
	s.msgs, s.at = append(s.msgs, n.msgs...), append(s.at, n.at...)
	return true
}

func (s *queueSends) commutes(d *deferred) bool { return !d.sends }

// sendMessages inserts queue messages (IDs in the order given) and
// notifies each queue's channel once; PostgreSQL delivers the
// notifications when the rows become visible, at commit.
const sendMessages = `WITH sent AS (
		INSERT INTO tasker_queue (queue, task_uuid, step_uuid, payload, priority, visible_at, enqueued_at)
		SELECT m.queue, m.task_uuid, m.step_uuid, m.payload::jsonb, m.priority, m.visible_at, m.enqueued_at
		FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[], $6::timestamptz[], $7::timestamptz[])
			WITH ORDINALITY AS m(queue, task_uuid, step_uuid, payload, priority, visible_at, enqueued_at, ord)
		ORDER BY m.ord
	)
	SELECT pg_notify(c, $9) FROM unnest($8::text[]) AS c`

func (s *queueSends) statements() []deferred {
	n := len(s.msgs)
	queues, tasks, steps := make([]string, n), make([]string, n), make([]string, n)
	payloads := make([]*string, n)
	priorities := make([]int32, n)
	visible := make([]time.Time, n)
	for i, m := range s.msgs {
		queues[i], tasks[i], steps[i], payloads[i], priorities[i] = m.Queue, m.TaskUUID, m.StepUUID, jsonText(m.Payload), int32(m.Priority)
		visible[i] = s.at[i]
		if !m.VisibleAt.IsZero() {
			visible[i] = m.VisibleAt
		}
	}
	if n <= rowwise {
		// PostgreSQL delivers a channel's identical notifications of one
		// transaction once.
		out := make([]deferred, n)
		for i := range n {
			out[i] = deferred{what: "send to queue " + queues[i], sql: `WITH sent AS (
					INSERT INTO tasker_queue (queue, task_uuid, step_uuid, payload, priority, visible_at, enqueued_at)
					VALUES ($1, $2, $3, $4::text::jsonb, $5, $6, $7)
				)
				SELECT pg_notify($8, $9)`,
				args: []any{queues[i], tasks[i], steps[i], payloads[i], priorities[i], visible[i], s.at[i],
					s.e.queueChannels(queues[i : i+1])[0], s.e.instance}}
		}
		return out
	}
	return []deferred{{what: "send to queue " + queues[0], sql: sendMessages,
		args: []any{queues, tasks, steps, payloads, priorities, visible, s.at, s.e.queueChannels(queues), s.e.instance}}}
}

// stepHistoryRow is one step transition to record.
type stepHistoryRow struct {
	step, from, to, event string
	metadata              json.RawMessage
	at                    time.Time
	// hop numbers the rows of one step in one statement: 1, 2, …; 0 means 1.
	hop int32
}

// stepHistoryStmts records step transitions; several of one step carry
// hops 1, 2, … in order. They must run after the steps' rows were updated
// in the same transaction: then they see every history row committed
// before the row locks were taken, and no other writer can add one until
// the transaction ends, so MAX+hop is the next sort key. One row goes as
// a single-row statement, up to rowwise rows as one VALUES statement
// (stepHistoryValues), more as one unnest statement.
func stepHistoryStmts(hs []stepHistoryRow) []deferred {
	n := len(hs)
	if n == 1 {
		h := hs[0]
		return []deferred{{what: "step " + h.step + " history", sql: `INSERT INTO tasker_step_transitions
				(step_uuid, from_state, to_state, event, metadata, sort_key, created_at)
				SELECT $1::text, $2, $3, $4, $5::jsonb,
					(SELECT COALESCE(MAX(t.sort_key), 0) FROM tasker_step_transitions t WHERE t.step_uuid = $1::text) + 1, $6`,
			args: []any{h.step, h.from, h.to, h.event, jsonText(h.metadata), h.at}}}
	}
	if n <= rowwise {
		return []deferred{stepHistoryValues(hs)}
	}
	steps, from, to, events := make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	md := make([]*string, n)
	at := make([]time.Time, n)
	hops := make([]int32, n)
	for i, h := range hs {
		steps[i], from[i], to[i], events[i], md[i], at[i], hops[i] = h.step, h.from, h.to, h.event, jsonText(h.metadata), h.at, max(h.hop, 1)
	}
	return []deferred{{what: fmt.Sprintf("history of %d steps", n), sql: `INSERT INTO tasker_step_transitions (step_uuid, from_state, to_state, event, metadata, sort_key, created_at)
		SELECT h.step_uuid, h.from_state, h.to_state, h.event, h.metadata::jsonb,
			(SELECT COALESCE(MAX(t.sort_key), 0) FROM tasker_step_transitions t WHERE t.step_uuid = h.step_uuid) + h.hop, h.at
		FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[], $7::int[])
			AS h(step_uuid, from_state, to_state, event, metadata, at, hop)`,
		args: []any{steps, from, to, events, md, at, hops}}}
}

// stepHistoryValues is the set form of stepHistoryStmts for a few rows:
// a VALUES list of exactly len(hs) rows, whose row count the planner
// knows, so each size has one cached plan (an unnest is estimated at ten
// rows and planned afresh every time; see rowwise). It takes one
// statement where a row each took up to eight.
func stepHistoryValues(hs []stepHistoryRow) deferred {
	var b strings.Builder
	b.WriteString(`INSERT INTO tasker_step_transitions (step_uuid, from_state, to_state, event, metadata, sort_key, created_at)
		SELECT h.step_uuid, h.from_state, h.to_state, h.event, h.metadata,
			(SELECT COALESCE(MAX(t.sort_key), 0) FROM tasker_step_transitions t WHERE t.step_uuid = h.step_uuid) + h.hop, h.at
		FROM (VALUES `)
	args := make([]any, 0, 7*len(hs))
	for i, h := range hs {
		if i > 0 {
			b.WriteString(", ")
		}
		k := len(args)
		fmt.Fprintf(&b, "($%d::text, $%d::text, $%d::text, $%d::text, $%d::jsonb, $%d::timestamptz, $%d::int)", k+1, k+2, k+3, k+4, k+5, k+6, k+7)
		args = append(args, h.step, h.from, h.to, h.event, jsonText(h.metadata), h.at, max(h.hop, 1))
	}
	b.WriteString(`) AS h(step_uuid, from_state, to_state, event, metadata, at, hop)`)
	return deferred{what: fmt.Sprintf("history of %d steps", len(hs)), sql: b.String(), args: args}
}
