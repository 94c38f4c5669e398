package postgres

import (
	"context"
	"fmt"

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
	}
	if len(p.Tasks) == 0 && len(p.Completions) == 0 {
		return res, nil
	}
	stmts := []stmt{{sql: `SELECT ` + taskCols + ` FROM tasker_tasks WHERE task_uuid = ANY($1) ORDER BY task_uuid FOR UPDATE`,
		args: []any{p.Tasks}}}
	if len(p.Completions) > 0 {
		stmts = append(stmts, stmt{sql: completeSteps, args: completeArgs(store.StepsCompleteParams{Completions: p.Completions, Now: p.Now})})
	}
	if p.LimitSteps {
		// The counts stop at MaxSteps+1 rows per task, so telling a large
		// task costs no more than reading a small one.
		res.Large = make(map[string]bool)
		stmts = append(stmts, stmt{sql: `SELECT t.id FROM unnest($1::text[]) AS t(id)
			WHERE (SELECT count(*) FROM (SELECT 1 FROM tasker_steps c WHERE c.task_uuid = t.id LIMIT $2) x) >= $2`,
			args: []any{p.Tasks, p.MaxSteps + 1}})
		stmts = append(stmts, stmt{sql: `WITH small AS (SELECT t.id FROM unnest($1::text[]) AS t(id)
				WHERE (SELECT count(*) FROM (SELECT 1 FROM tasker_steps c WHERE c.task_uuid = t.id LIMIT $2) x) < $2)
			SELECT ` + stepCols + ` FROM tasker_steps s JOIN small ON s.task_uuid = small.id
			ORDER BY s.task_uuid, s.position`, args: []any{p.Tasks, p.MaxSteps + 1}})
	} else {
		stmts = append(stmts, stmt{sql: `SELECT ` + stepCols + ` FROM tasker_steps s WHERE s.task_uuid = ANY($1)
			ORDER BY s.task_uuid, s.position`, args: []any{p.Tasks}})
	}
	br, err := t.tx.send(ctx, stmts...)
	if err != nil {
		return nil, fmt.Errorf("lock and complete: %w", mapErr(err))
	}
	defer br.Close()

	rows, err := br.Query()
	tasks, err := collect(rows, mapErr(err), func(r pgx.Rows) (store.TaskRow, error) { return scanTask(r) })
	if err != nil {
		return nil, fmt.Errorf("lock tasks: %w", err)
	}
	for i := range tasks {
		res.Tasks[tasks[i].UUID] = &tasks[i]
	}
	if len(p.Completions) > 0 {
		rows, err := br.Query()
		if err := t.completeOutcomes(ctx, store.StepsCompleteParams{Completions: p.Completions, Now: p.Now}, rows, mapErr(err), res.Refused); err != nil {
			return nil, err
		}
	}
	if p.LimitSteps {
		rows, err := br.Query()
		large, err := collect(rows, mapErr(err), scanString)
		if err != nil {
			return nil, fmt.Errorf("count steps: %w", err)
		}
		for _, id := range large {
			res.Large[id] = true
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
	for _, id := range p.Tasks {
		if res.Tasks[id] == nil {
			return nil, fmt.Errorf("task %s: %w", id, store.ErrNotFound)
		}
	}
	return res, nil
}
