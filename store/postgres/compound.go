package postgres

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strconv"

	"github.com/jackc/pgx/v5"

	"github.com/tasker-go/tasker/store"
)

// CompleteAndLoad sends the task locks, the completions and the read of
// the tasks' steps as one batch: one round trip where the separate calls
// take three or more. The statements still run one after another, so the
// locks are taken before the completions change anything and the steps
// are read after.
func (t *txExec) CompleteAndLoad(ctx context.Context, p store.CompleteAndLoadParams) (*store.CompleteAndLoadResult, error) {
	res := &store.CompleteAndLoadResult{
		Refused: make([]error, len(p.Completions)),
		Tasks:   make(map[string]*store.TaskRow, len(p.Tasks)),
		Steps:   make(map[string][]store.StepRow, len(p.Tasks)),
		Settled: make(map[string]bool),
	}
	if len(p.Tasks) == 0 && len(p.Completions) == 0 {
		return res, nil
	}
	// Without LimitSteps every task counts as small: max is never reached.
	most := int32(math.MaxInt32 - 1)
	if p.LimitSteps {
		most = int32(min(p.MaxSteps, math.MaxInt32-1))
		res.Large = make(map[string]bool)
	}
	// A task's size comes from the step_count it was created with; only a
	// task created before migration 0006 is counted, and the count stops at
	// most+1 rows, so telling a large task costs no more than reading a
	// small one. The bound is written into the statements, not passed: it
	// is fixed per orchestrator, and as a parameter it made PostgreSQL plan
	// the lock afresh on every execution (a LIMIT it cannot see is
	// estimated high, so the generic plan never looked as cheap as a
	// custom one: 0.25 ms of planning for a 0.03 ms lookup).
	bound := strconv.Itoa(int(most))
	size := `COALESCE(t.step_count, (SELECT count(*) FROM (SELECT 1 FROM tasker_steps c WHERE c.task_uuid = t.task_uuid LIMIT ` +
		bound + ` + 1) x))`
	lock := stmt{sql: `SELECT ` + taskCols + `, ` + size + ` > ` + bound + ` FROM tasker_tasks t
		WHERE task_uuid = ANY($1) ORDER BY task_uuid FOR UPDATE`, args: []any{p.Tasks}}
	// Each task's row and steps are probed through its key (LATERAL, not
	// flattened), so a plan cached while the tables were small stays an
	// index lookup as they grow (see moveSteps).
	read := stmt{sql: `SELECT l.* FROM unnest($1::text[]) AS k(id)
		JOIN LATERAL (SELECT t.task_uuid, ` + size + ` AS n FROM tasker_tasks t WHERE t.task_uuid = k.id OFFSET 0) t ON t.n <= ` + bound + `
		CROSS JOIN LATERAL (SELECT ` + stepCols + ` FROM tasker_steps s WHERE s.task_uuid = k.id OFFSET 0) l
		ORDER BY l.task_uuid, l.position`, args: []any{p.Tasks}}
	if len(p.Tasks) == 1 {
		// One task, the usual case at light load: statements with a plan
		// PostgreSQL caches (see moveStep).
		lock = stmt{sql: `SELECT ` + taskCols + `, ` + size + ` > ` + bound + ` FROM tasker_tasks t WHERE task_uuid = $1 FOR UPDATE`,
			args: []any{p.Tasks[0]}}
		// The size is checked on the task row before any step is read: as
		// a filter on the steps' scan, PostgreSQL read all 10,000 steps of
		// a large task to return none (13–19 ms).
		read = stmt{sql: `SELECT l.* FROM (SELECT t.task_uuid FROM tasker_tasks t WHERE t.task_uuid = $1 AND ` + size + ` <= ` + bound + ` OFFSET 0) t
			CROSS JOIN LATERAL (SELECT ` + stepCols + ` FROM tasker_steps s WHERE s.task_uuid = t.task_uuid OFFSET 0) l
			ORDER BY l.position`, args: []any{p.Tasks[0]}}
	}
	stmts := []stmt{lock}
	comps := store.StepsCompleteParams{Completions: p.Completions, Now: p.Now}
	var completes []stmt
	if len(p.Completions) > 0 {
		completes = completeStmts(comps, p.SettleSuccesses)
		stmts = append(stmts, completes...)
	}
	stmts = append(stmts, read)
	// Last, so that it sees what this batch did: whether the queues of the
	// claim that will end the transaction hold any unleased message (see
	// ClaimAndCommit). Visible or not: the claim runs later than p.Now,
	// and a message sent by a transaction that began after this one is
	// stamped visible after p.Now.
	if len(p.ClaimQueues) > 0 {
		stmts = append(stmts, stmt{sql: forQueues(p.ClaimQueues, `SELECT EXISTS (SELECT 1 FROM tasker_queue
			WHERE queue = ANY($1) AND lease_token IS NULL)`), args: []any{queuesArg(p.ClaimQueues)}})
	}
	br, err := t.tx.send(ctx, stmts...)
	if err != nil {
		return nil, fmt.Errorf("lock and complete: %w", mapErr(err))
	}
	defer br.Close()

	rows, err := br.Query()
	type locked struct {
		task  store.TaskRow
		large bool
	}
	tasks, err := collect(rows, mapErr(err), func(r pgx.Rows) (locked, error) {
		var l locked
		var err error
		l.task, err = scanTask(extraCol{r, &l.large})
		return l, err
	})
	if err != nil {
		return nil, fmt.Errorf("lock tasks: %w", err)
	}
	for i := range tasks {
		res.Tasks[tasks[i].task.UUID] = &tasks[i].task
		if tasks[i].large && p.LimitSteps {
			res.Large[tasks[i].task.UUID] = true
		}
	}
	if len(completes) > 0 {
		next := func() (pgx.Rows, error) {
			rows, err := br.Query()
			return rows, mapErr(err)
		}
		if err := t.completeResults(ctx, comps, p.SettleSuccesses, res.Settled, len(completes), next, res.Refused); err != nil {
			return nil, err
		}
	}
	rows, err = br.Query()
	steps, err := collect(rows, mapErr(err), func(r pgx.Rows) (store.StepRow, error) { return scanStep(r) })
	if err != nil {
		return nil, fmt.Errorf("read steps: %w", err)
	}
	for _, s := range steps {
		res.Steps[s.TaskUUID] = append(res.Steps[s.TaskUUID], s)
	}
	if len(p.ClaimQueues) > 0 {
		var backlog bool
		if err := br.QueryRow().Scan(&backlog); err != nil {
			return nil, fmt.Errorf("look for messages to claim: %w", mapErr(err))
		}
		t.idle, t.idleSends = nil, t.tx.sends
		if !backlog {
			t.idle = slices.Clone(p.ClaimQueues)
		}
	}
	for _, id := range p.Tasks {
		if res.Tasks[id] == nil {
			return nil, fmt.Errorf("task %s: %w", id, store.ErrNotFound)
		}
	}
	return res, nil
}

// extraCol scans a row that has one more column than a scan function
// reads, into extra.
type extraCol struct {
	pgx.Rows
	extra any
}

func (r extraCol) Scan(dest ...any) error { return r.Rows.Scan(append(dest, r.extra)...) }
