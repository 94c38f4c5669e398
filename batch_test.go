package tasker_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/tasker-go/tasker"
)

// TestCreateTasks: a batch of tasks is created in one transaction and runs
// to the right results; a batch with a refused request (a duplicate within
// the batch, an unknown template) stores none of its tasks and names the
// request; on SQLite and PostgreSQL.
func TestCreateTasks(t *testing.T) {
	t.Parallel()
	for _, store := range []string{"sqlite", "postgres"} {
		t.Run(store, func(t *testing.T) {
			t.Parallel()
			o := engineOptions{templates: []string{linearYAML}, handlers: map[string]tasker.HandlerFunc{"math.op": mathOp}}
			var eng *tasker.Engine
			if store == "sqlite" {
				eng, _ = openEngine(t, o)
			} else {
				eng = openPostgresEngine(t, o)
			}
			ctx := context.Background()
			req := func(n int64) tasker.TaskRequest {
				return tasker.TaskRequest{Namespace: "math", Name: "linear_math", Context: map[string]any{"even_number": n, "batch": store}}
			}

			var reqs []tasker.TaskRequest
			for n := int64(2); n < 22; n += 2 {
				reqs = append(reqs, req(n))
			}
			tasks, err := eng.CreateTasks(ctx, reqs)
			if err != nil {
				t.Fatalf("CreateTasks: %v", err)
			}
			if len(tasks) != len(reqs) {
				t.Fatalf("%d tasks for %d requests", len(tasks), len(reqs))
			}
			for i, task := range tasks {
				n := int64(2 + 2*i)
				done := waitTask(t, eng, task.UUID)
				if done.State != "complete" {
					dumpTask(t, eng, task.UUID)
					t.Fatalf("task %d ended %s", i, done.State)
				}
				want := n * n
				for range 3 {
					want *= want
				}
				if got := string(stepsByName(t, eng, task.UUID)["s4"].Result); got != fmt.Sprint(want) {
					t.Errorf("task %d (n=%d): s4 = %s, want %d", i, n, got, want)
				}
			}

			// A duplicate inside the batch refuses the whole batch.
			dup := []tasker.TaskRequest{req(100), req(102), req(100)}
			_, err = eng.CreateTasks(ctx, dup)
			var be *tasker.BatchError
			if !errors.As(err, &be) || be.Index != 2 || !errors.Is(err, tasker.ErrDuplicateTask) {
				t.Fatalf("batch with a duplicate: err = %v, want a BatchError at index 2 wrapping ErrDuplicateTask", err)
			}
			// A stored task duplicates one of the batch.
			_, err = eng.CreateTasks(ctx, []tasker.TaskRequest{req(104), req(2)})
			if !errors.As(err, &be) || be.Index != 1 || !errors.Is(err, tasker.ErrDuplicateTask) {
				t.Fatalf("batch duplicating a stored task: err = %v, want a BatchError at index 1", err)
			}
			// An unknown template is refused before anything is written.
			bad := tasker.TaskRequest{Namespace: "math", Name: "no_such_template"}
			_, err = eng.CreateTasks(ctx, []tasker.TaskRequest{req(106), bad})
			if !errors.As(err, &be) || be.Index != 1 || !errors.Is(err, tasker.ErrTemplateNotFound) {
				t.Fatalf("batch with an unknown template: err = %v, want a BatchError at index 1 wrapping ErrTemplateNotFound", err)
			}
			// Nothing of the refused batches was stored: their good requests
			// are not duplicates now.
			again, err := eng.CreateTasks(ctx, []tasker.TaskRequest{req(100), req(102), req(104), req(106)})
			if err != nil {
				t.Fatalf("the refused batches left tasks behind: %v", err)
			}
			for _, task := range again {
				if done := waitTask(t, eng, task.UUID); done.State != "complete" {
					t.Errorf("task %s ended %s", task.UUID, done.State)
				}
			}

			if got, err := eng.CreateTasks(ctx, nil); err != nil || len(got) != 0 {
				t.Errorf("empty batch: %v, %v", got, err)
			}
			if _, err := eng.CreateTasks(ctx, make([]tasker.TaskRequest, tasker.MaxCreateBatch+1)); err == nil {
				t.Error("an oversized batch was accepted")
			}
		})
	}
}
