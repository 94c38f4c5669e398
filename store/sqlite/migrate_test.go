package sqlite

import (
	"context"
	"fmt"
	"io/fs"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tasker-go/tasker/store"
)

// TestHistoryKeysMigration upgrades a database holding history written
// under the first four migrations (rowid tables with an AUTOINCREMENT id)
// to keyed WITHOUT ROWID tables: every row survives in order, and new rows
// continue the sort keys.
func TestHistoryKeysMigration(t *testing.T) {
	ctx := t.Context()
	d, err := Open(ctx, Config{Path: filepath.Join(t.TempDir(), "old.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := d.writer.ExecContext(ctx, `CREATE TABLE tasker_migrations (
		version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	entries, err := fs.ReadDir(migrationFS, "migrations")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	for _, name := range names {
		v, _ := strconv.Atoi(strings.SplitN(name, "_", 2)[0])
		if v >= 5 {
			break
		}
		body, _ := migrationFS.ReadFile("migrations/" + name)
		if err := d.applyMigration(ctx, v, name, string(body)); err != nil {
			t.Fatal(err)
		}
	}

	// History under the old schema: two tasks, three steps, several
	// transitions each.
	base := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	var tasks, steps []string
	err = store.InTx(ctx, d, func(tx store.Tx) error {
		for i := range 2 {
			task := fmt.Sprintf("task-%d", i)
			tasks = append(tasks, task)
			if err := tx.TaskInsert(ctx, store.TaskInsertParams{UUID: task, Namespace: "ns", Name: "t", Version: "1.0.0",
				State: "pending", Context: []byte(`{}`), Now: base}); err != nil {
				return err
			}
			if err := tx.TaskTransition(ctx, store.TaskTransitionParams{UUID: task, From: "pending", To: "initializing",
				Event: "start", Now: base.Add(time.Second)}); err != nil {
				return err
			}
		}
		var ins []store.StepInsert
		for i := range 3 {
			id := fmt.Sprintf("step-%d", i)
			steps = append(steps, id)
			ins = append(ins, store.StepInsert{UUID: id, Name: id, Position: i, Callable: "c", MaxAttempts: 3, Retryable: true})
		}
		if err := tx.StepsInsert(ctx, store.StepsInsertParams{TaskUUID: tasks[0], Namespace: "ns", Steps: ins, Now: base}); err != nil {
			return err
		}
		for i, id := range steps {
			for j, tr := range [][2]string{{"pending", "enqueued"}, {"enqueued", "in_progress"}} {
				if err := tx.StepTransition(ctx, store.StepTransitionParams{UUID: id, From: tr[0], To: tr[1], Event: "e",
					Metadata: []byte(fmt.Sprintf(`{"n":%d}`, 10*i+j)), Now: base.Add(time.Duration(10*i+j) * time.Millisecond)}); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	read := func() (map[string][]store.TransitionRow, map[string][]store.TransitionRow) {
		st, ta := map[string][]store.TransitionRow{}, map[string][]store.TransitionRow{}
		for _, id := range steps {
			rows, err := d.Reader().StepTransitions(ctx, store.StepTransitionsParams{UUID: id})
			if err != nil {
				t.Fatal(err)
			}
			st[id] = rows
		}
		for _, id := range tasks {
			rows, err := d.Reader().TaskTransitions(ctx, store.TaskTransitionsParams{UUID: id})
			if err != nil {
				t.Fatal(err)
			}
			ta[id] = rows
		}
		return st, ta
	}
	stepsBefore, tasksBefore := read()
	if n := len(stepsBefore[steps[2]]); n != 2 {
		t.Fatalf("before the migration step %s has %d history rows, want 2", steps[2], n)
	}

	if err := d.Migrate(ctx); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	stepsAfter, tasksAfter := read()
	if !reflect.DeepEqual(stepsBefore, stepsAfter) || !reflect.DeepEqual(tasksBefore, tasksAfter) {
		t.Errorf("history changed by the migration:\nsteps before %+v\nsteps after  %+v\ntasks before %+v\ntasks after  %+v",
			stepsBefore, stepsAfter, tasksBefore, tasksAfter)
	}
	for _, table := range []string{"tasker_step_transitions", "tasker_task_transitions"} {
		var ddl string
		if err := d.reader.QueryRowContext(ctx, `SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?`, table).Scan(&ddl); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(ddl, "WITHOUT ROWID") || strings.Contains(ddl, "AUTOINCREMENT") {
			t.Errorf("%s after the migration: %s", table, ddl)
		}
	}

	// New history continues each entity's sort keys.
	err = store.InTx(ctx, d, func(tx store.Tx) error {
		return tx.StepTransition(context.Background(), store.StepTransitionParams{UUID: steps[1], From: "in_progress",
			To: "enqueued_for_orchestration", Event: "succeed", Now: base.Add(time.Minute)})
	})
	if err != nil {
		t.Fatal(err)
	}
	rows, err := d.Reader().StepTransitions(ctx, store.StepTransitionsParams{UUID: steps[1]})
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 3 || rows[2].SortKey != 3 || rows[2].To != "enqueued_for_orchestration" {
		t.Errorf("history of %s after a new transition: %+v, want a third row with sort key 3", steps[1], rows)
	}
}
