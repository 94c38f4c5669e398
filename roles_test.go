package tasker_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tasker-go/tasker"
)

// TestRolesSplitAcrossEngines runs the worker and the orchestrator as two
// engines on one database: the worker-only engine records results without
// processing them, and the orchestrator-only engine, once started, moves
// the task on.
func TestRolesSplitAcrossEngines(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "tasker.db")
	client, _ := openEngine(t, engineOptions{path: path, noStart: true, templates: []string{linearYAML}})
	openEngine(t, engineOptions{path: path, cfg: tasker.Config{Roles: []tasker.Role{tasker.RoleWorker}},
		handlers: map[string]tasker.HandlerFunc{"math.op": mathOp}})
	task := createTask(t, client, tasker.TaskRequest{Namespace: "math", Name: "linear_math", Context: map[string]int{"even_number": 2}})

	eventually(t, "s1's result to be recorded", func() bool {
		return stepsByName(t, client, task.UUID)["s1"].State == "enqueued_for_orchestration"
	})
	// Nothing processes the result while no orchestrator runs.
	time.Sleep(300 * time.Millisecond)
	steps := stepsByName(t, client, task.UUID)
	if steps["s1"].State != "enqueued_for_orchestration" || steps["s2"].State != "pending" {
		t.Fatalf("with only a worker running: s1 %s, s2 %s; want enqueued_for_orchestration and pending",
			steps["s1"].State, steps["s2"].State)
	}

	orch, _ := openEngine(t, engineOptions{path: path, cfg: tasker.Config{Roles: []tasker.Role{tasker.RoleOrchestrator}}})
	done := waitTask(t, orch, task.UUID)
	if done.State != "complete" {
		dumpTask(t, orch, task.UUID)
		t.Fatalf("task %s, want complete", done.State)
	}
	wantResult(t, stepsByName(t, orch, task.UUID), "s4", expectedSquares(2))
}

func TestRolesRejectsUnknownRole(t *testing.T) {
	t.Parallel()
	_, err := tasker.Open(context.Background(), tasker.Config{
		DatabaseURL: "sqlite://" + filepath.Join(t.TempDir(), "tasker.db"),
		Roles:       []tasker.Role{tasker.RoleWorker, "scheduler"},
	})
	if err == nil || !strings.Contains(err.Error(), "Config.Roles") || !strings.Contains(err.Error(), `"scheduler"`) {
		t.Fatalf("Open with an unknown role: %v, want an error naming Config.Roles and the role", err)
	}
}
