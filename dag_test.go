package tasker_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"

	"github.com/tasker-go/tasker"
)

// mathOp is the handler of the DAG tests. Its handler.initialization says
// what to compute: op (square, add or mul) over the results of the named
// ancestor steps, or over the context's even_number when inputs is empty.
func mathOp(_ context.Context, s *tasker.StepContext) (any, error) {
	var cfg struct {
		Op     string   `json:"op"`
		Inputs []string `json:"inputs"`
	}
	if err := s.HandlerConfig(&cfg); err != nil {
		return nil, tasker.Permanent(err)
	}
	var in []int64
	if len(cfg.Inputs) == 0 {
		var c struct {
			Even *int64 `json:"even_number"`
		}
		if err := s.DecodeContext(&c); err != nil {
			return nil, tasker.Permanent(err)
		}
		if c.Even == nil {
			return nil, tasker.Permanent(errors.New("context has no even_number"))
		}
		in = append(in, *c.Even)
	}
	for _, name := range cfg.Inputs {
		var v int64
		if err := s.DependencyResult(name, &v); err != nil {
			return nil, tasker.Permanent(err)
		}
		in = append(in, v)
	}
	switch cfg.Op {
	case "square":
		if len(in) != 1 {
			return nil, tasker.Permanent(fmt.Errorf("square takes one input, got %d", len(in)))
		}
		return in[0] * in[0], nil
	case "add":
		var sum int64
		for _, v := range in {
			sum += v
		}
		return sum, nil
	case "mul":
		prod := int64(1)
		for _, v := range in {
			prod *= v
		}
		return prod, nil
	}
	return nil, tasker.Permanent(fmt.Errorf("unknown op %q", cfg.Op))
}

const linearYAML = `
name: linear_math
namespace_name: math
version: 1.0.0
description: four squares in a row
steps:
  - name: s1
    handler: {callable: math.op, initialization: {op: square}}
  - name: s2
    handler: {callable: math.op, initialization: {op: square, inputs: [s1]}}
    dependencies: [s1]
  - name: s3
    handler: {callable: math.op, initialization: {op: square, inputs: [s2]}}
    dependencies: [s2]
  - name: s4
    handler: {callable: math.op, initialization: {op: square, inputs: [s3]}}
    dependencies: [s3]
`

const diamondYAML = `
name: diamond_math
namespace_name: math
version: 1.0.0
steps:
  - name: start
    handler: {callable: math.op, initialization: {op: square}}
  - name: left
    handler: {callable: math.op, initialization: {op: square, inputs: [start]}}
    dependencies: [start]
  - name: right
    handler: {callable: math.op, initialization: {op: add, inputs: [start, start]}}
    dependencies: [start]
  - name: end
    handler: {callable: math.op, initialization: {op: mul, inputs: [left, right]}}
    dependencies: [left, right]
`

const treeYAML = `
name: tree_math
namespace_name: math
version: 1.0.0
steps:
  - name: root
    handler: {callable: math.op, initialization: {op: square}}
  - name: b1
    handler: {callable: math.op, initialization: {op: square, inputs: [root]}}
    dependencies: [root]
  - name: b2
    handler: {callable: math.op, initialization: {op: add, inputs: [root, root]}}
    dependencies: [root]
  - name: l1
    handler: {callable: math.op, initialization: {op: square, inputs: [b1]}}
    dependencies: [b1]
  - name: l2
    handler: {callable: math.op, initialization: {op: add, inputs: [b1, root]}}
    dependencies: [b1]
  - name: l3
    handler: {callable: math.op, initialization: {op: square, inputs: [b2]}}
    dependencies: [b2]
  - name: l4
    handler: {callable: math.op, initialization: {op: mul, inputs: [b2, root]}}
    dependencies: [b2]
  - name: merge
    handler: {callable: math.op, initialization: {op: add, inputs: [l1, l2, l3, l4]}}
    dependencies: [l1, l2, l3, l4]
`

// mixedYAML is a DAG whose analyze step reads two ancestors that are not
// siblings (right, through validate, and its parent transform), and whose
// finalize step reads a distant ancestor (init).
const mixedYAML = `
name: mixed_math
namespace_name: math
version: 1.0.0
steps:
  - name: init
    handler: {callable: math.op, initialization: {op: square}}
  - name: left
    handler: {callable: math.op, initialization: {op: square, inputs: [init]}}
    dependencies: [init]
  - name: right
    handler: {callable: math.op, initialization: {op: add, inputs: [init, init]}}
    dependencies: [init]
  - name: validate
    handler: {callable: math.op, initialization: {op: add, inputs: [left, right]}}
    dependencies: [left, right]
  - name: transform
    handler: {callable: math.probe, initialization: {op: square, inputs: [left]}}
    dependencies: [left]
  - name: analyze
    handler: {callable: math.op, initialization: {op: add, inputs: [right, transform]}}
    dependencies: [validate, transform]
  - name: finalize
    handler: {callable: math.op, initialization: {op: add, inputs: [analyze, init]}}
    dependencies: [analyze]
`

// checkParentsFirst asserts that no step started before all its parents
// had finished.
func checkParentsFirst(t *testing.T, eng *tasker.Engine, steps map[string]tasker.Step) {
	t.Helper()
	for _, s := range steps {
		var started bool
		for _, tr := range stepTransitions(t, eng, s.UUID) {
			if tr.To != "in_progress" {
				continue
			}
			started = true
			for _, p := range s.Dependencies {
				parent := steps[p]
				if parent.CompletedAt == nil || tr.CreatedAt.Before(*parent.CompletedAt) {
					t.Errorf("step %s started at %s, before its parent %s completed (%v)", s.Name, tr.CreatedAt, p, parent.CompletedAt)
				}
			}
		}
		if !started {
			t.Errorf("step %s has no in_progress transition", s.Name)
		}
	}
}

func TestWorkflowShapes(t *testing.T) {
	t.Parallel()
	var probeMu sync.Mutex
	var probeErr error
	eng, _ := openEngine(t, engineOptions{
		templates: []string{linearYAML, diamondYAML, treeYAML, mixedYAML},
		handlers: map[string]tasker.HandlerFunc{
			"math.op": mathOp,
			// math.probe also tries to read a step that is not its ancestor.
			"math.probe": func(ctx context.Context, s *tasker.StepContext) (any, error) {
				var v int64
				err := s.DependencyResult("right", &v)
				probeMu.Lock()
				probeErr = err
				probeMu.Unlock()
				return mathOp(ctx, s)
			},
		},
	})
	tests := []struct {
		name string
		even int64
		want map[string]int64
	}{
		{"linear_math", 6, map[string]int64{"s1": 36, "s2": 1296, "s3": 1679616, "s4": 2821109907456}},
		{"diamond_math", 2, map[string]int64{"start": 4, "left": 16, "right": 8, "end": 128}},
		{"tree_math", 2, map[string]int64{"root": 4, "b1": 16, "b2": 8, "l1": 256, "l2": 20, "l3": 64, "l4": 32, "merge": 372}},
		{"mixed_math", 2, map[string]int64{"init": 4, "left": 16, "right": 8, "validate": 24, "transform": 256, "analyze": 264, "finalize": 268}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			task, steps := runTask(t, eng, tasker.TaskRequest{Namespace: "math", Name: tc.name,
				Context: map[string]int64{"even_number": tc.even}})
			wantTask(t, task, "complete", "all_complete")
			if task.TotalSteps != len(tc.want) || task.CompletedSteps != len(tc.want) || task.CompletionPercentage != 100 {
				t.Errorf("counts: total %d complete %d (%.0f%%), want %d", task.TotalSteps, task.CompletedSteps, task.CompletionPercentage, len(tc.want))
			}
			if task.CompletedAt == nil {
				t.Error("complete task has no CompletedAt")
			}
			for name, v := range tc.want {
				wantStep(t, steps, name, "complete", 1)
				wantResult(t, steps, name, v)
				if steps[name].Error != nil {
					t.Errorf("step %s: error %+v on a clean run", name, steps[name].Error)
				}
			}
			checkParentsFirst(t, eng, steps)
		})
	}
	t.Run("non-ancestor", func(t *testing.T) {
		t.Parallel()
		_, steps := runTask(t, eng, tasker.TaskRequest{Namespace: "math", Name: "mixed_math",
			Context: map[string]int64{"even_number": 4}})
		wantStep(t, steps, "transform", "complete", 1)
		probeMu.Lock()
		defer probeMu.Unlock()
		if !errors.Is(probeErr, tasker.ErrNoDependencyResult) {
			t.Fatalf("DependencyResult of a non-ancestor: got %v, want ErrNoDependencyResult", probeErr)
		}
	})
}

// TestTaskHistory checks the recorded lifecycle of a simple task.
func TestTaskHistory(t *testing.T) {
	t.Parallel()
	eng, _ := openEngine(t, engineOptions{
		templates: []string{linearYAML},
		handlers:  map[string]tasker.HandlerFunc{"math.op": mathOp},
	})
	task, steps := runTask(t, eng, tasker.TaskRequest{Namespace: "math", Name: "linear_math",
		Context: map[string]int{"even_number": 2}, Initiator: "tests", SourceSystem: "go test", Reason: "history", Tags: []string{"a", "b"}})
	wantTask(t, task, "complete", "all_complete")
	if task.Initiator != "tests" || task.SourceSystem != "go test" || task.Reason != "history" || len(task.Tags) != 2 {
		t.Errorf("request fields not kept: %+v", task)
	}
	trs := taskTransitions(t, eng, task.UUID)
	if len(trs) == 0 || trs[0].From != "pending" || trs[len(trs)-1].To != "complete" {
		t.Fatalf("task history %+v: want pending … complete", trs)
	}
	for i := 1; i < len(trs); i++ {
		if trs[i].From != trs[i-1].To || trs[i].SortKey <= trs[i-1].SortKey {
			t.Fatalf("task history is not a chain at %d: %+v", i, trs)
		}
	}
	var path []string
	for _, tr := range stepTransitions(t, eng, steps["s2"].UUID) {
		path = append(path, tr.To)
	}
	want := []string{"enqueued", "in_progress", "enqueued_for_orchestration", "complete"}
	if fmt.Sprint(path) != fmt.Sprint(want) {
		t.Fatalf("step s2 history %v, want %v", path, want)
	}
}

// TestMessageIDsReused runs a chain on a SQLite queue table without
// AUTOINCREMENT, where a message inserted after the newest was deleted
// gets that message's ID again. That is what happens to each step here: the
// transaction that completes s1 deletes its message and claims s2 under
// the same ID for the same worker. The worker keeps leases by token, so it
// must not take the completion of s1 for the end of s2's lease.
func TestMessageIDsReused(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "tasker.db")
	pre, _ := openEngine(t, engineOptions{path: path, noStart: true})
	if err := pre.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`CREATE TABLE q (
			id INTEGER PRIMARY KEY, queue TEXT NOT NULL, task_uuid TEXT NOT NULL, step_uuid TEXT NOT NULL DEFAULT '',
			payload TEXT, priority INTEGER NOT NULL DEFAULT 0, visible_at INTEGER NOT NULL, lease_token TEXT,
			lease_owner TEXT, lease_expires_at INTEGER, read_count INTEGER NOT NULL DEFAULT 0, enqueued_at INTEGER NOT NULL);
		DROP TABLE tasker_queue;
		ALTER TABLE q RENAME TO tasker_queue;
		CREATE INDEX tasker_queue_ready ON tasker_queue (queue, priority DESC, id) WHERE lease_token IS NULL;
		CREATE INDEX tasker_queue_leased ON tasker_queue (lease_expires_at) WHERE lease_token IS NOT NULL;
		CREATE INDEX tasker_queue_step ON tasker_queue (step_uuid);`); err != nil {
		t.Fatal(err)
	}
	db.Close()

	eng, _ := openEngine(t, engineOptions{path: path, templates: []string{linearYAML},
		handlers: map[string]tasker.HandlerFunc{"math.op": mathOp}})
	for i := range 3 {
		task, steps := runTask(t, eng, tasker.TaskRequest{Namespace: "math", Name: "linear_math",
			Context: map[string]int{"even_number": 2, "run": i}})
		wantTask(t, task, "complete", "all_complete")
		for _, name := range []string{"s1", "s2", "s3", "s4"} {
			wantStep(t, steps, name, "complete", 1)
		}
		wantResult(t, steps, "s4", expectedSquares(2))
	}
}
