package examples_test

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tasker-go/tasker"
	"github.com/tasker-go/tasker/examples"
)

func openEngine(t *testing.T) *tasker.Engine {
	t.Helper()
	ctx := context.Background()
	eng, err := tasker.Open(ctx, tasker.Config{DatabaseURL: "sqlite://" + filepath.Join(t.TempDir(), "x.db")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := eng.Close(); err != nil {
			t.Errorf("close engine: %v", err)
		}
	})
	if err := examples.Register(ctx, eng); err != nil {
		t.Fatal(err)
	}
	if err := eng.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return eng
}

func TestWorkflows(t *testing.T) {
	t.Parallel()
	for _, w := range examples.Workflows() {
		t.Run(w.Name, func(t *testing.T) {
			t.Parallel()
			eng := openEngine(t)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			task, err := eng.CreateTask(ctx, tasker.TaskRequest{Namespace: w.Namespace, Name: w.Name, Version: w.Version, Context: w.Context})
			if err != nil {
				t.Fatal(err)
			}
			task, err = eng.WaitTask(ctx, task.UUID)
			if err != nil {
				t.Fatal(err)
			}
			steps, err := eng.TaskSteps(ctx, task.UUID)
			if err != nil {
				t.Fatal(err)
			}
			if task.State != w.ExpectState {
				t.Errorf("task state %s, want %s", task.State, w.ExpectState)
			}
			got := map[string]tasker.Step{}
			for _, s := range steps {
				got[s.Name] = s
			}
			for name, want := range w.ExpectResults {
				wantJSON, err := json.Marshal(want)
				if err != nil {
					t.Fatal(err)
				}
				if string(got[name].Result) != string(wantJSON) {
					t.Errorf("step %s: result %s, want %s", name, got[name].Result, wantJSON)
				}
			}
			for name, want := range w.ExpectAttempts {
				if got[name].Attempts != want {
					t.Errorf("step %s: %d attempts, want %d", name, got[name].Attempts, want)
				}
			}
			for name, want := range w.ExpectStepStates {
				if got[name].State != want {
					t.Errorf("step %s: state %s, want %s", name, got[name].State, want)
				}
			}
			if err := w.Verify(task, steps); err != nil {
				t.Errorf("Verify: %v", err)
			}
			if t.Failed() {
				for _, s := range steps {
					t.Logf("%s: %s attempts=%d result=%s error=%+v", s.Name, s.State, s.Attempts, s.Result, s.Error)
				}
			}
		})
	}
}

// TestPermanentFailureIsNotRetried checks what the failing step reports:
// its error says why, and it is marked permanent.
func TestPermanentFailureIsNotRetried(t *testing.T) {
	t.Parallel()
	eng := openEngine(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	task, err := eng.CreateTask(ctx, tasker.TaskRequest{Namespace: "demo", Name: "permanent_failure_workflow",
		Context: map[string]any{"even_number": 6, "divisor": 0}})
	if err != nil {
		t.Fatal(err)
	}
	if task, err = eng.WaitTask(ctx, task.UUID); err != nil {
		t.Fatal(err)
	}
	steps, err := eng.TaskSteps(ctx, task.UUID)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range steps {
		if s.Name != "divide" {
			continue
		}
		if s.Error == nil || s.Error.Retryable || s.Error.Type != "permanent_error" {
			t.Fatalf("divide error = %+v, want a non-retryable permanent_error", s.Error)
		}
		if want := `cannot divide 36 by zero`; !strings.Contains(s.Error.Message, want) {
			t.Errorf("divide error message %q does not contain %q", s.Error.Message, want)
		}
		return
	}
	t.Fatal("no divide step")
}

// TestBadInputFailsPermanently feeds the math handlers contexts they must
// refuse; each task blocks after one attempt with a message naming the
// problem.
func TestBadInputFailsPermanently(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string
		context any
		want    string
	}{
		{"missing field", map[string]any{"odd_number": 3}, `task context has no "even_number" field`},
		{"not an integer", map[string]any{"even_number": 6.5}, `must be a 64-bit integer, got 6.5`},
		{"overflow", map[string]any{"even_number": 1 << 20}, `does not fit in a 64-bit integer`},
	}
	eng := openEngine(t)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			task, err := eng.CreateTask(ctx, tasker.TaskRequest{Namespace: "math", Name: "linear_workflow", Context: c.context})
			if err != nil {
				t.Fatal(err)
			}
			if task, err = eng.WaitTask(ctx, task.UUID); err != nil {
				t.Fatal(err)
			}
			if task.State != "blocked_by_failures" {
				t.Fatalf("task state %s, want blocked_by_failures", task.State)
			}
			steps, err := eng.TaskSteps(ctx, task.UUID)
			if err != nil {
				t.Fatal(err)
			}
			var failed *tasker.Step
			for i := range steps {
				if steps[i].State == "error" {
					failed = &steps[i]
				}
			}
			if failed == nil || failed.Error == nil {
				t.Fatalf("no failed step with an error in %+v", steps)
			}
			if failed.Attempts != 1 || !strings.Contains(failed.Error.Message, c.want) {
				t.Errorf("step %s: %d attempts, error %q; want 1 attempt and an error containing %q",
					failed.Name, failed.Attempts, failed.Error.Message, c.want)
			}
		})
	}
}

func TestVerifyReportsMismatches(t *testing.T) {
	t.Parallel()
	w := examples.Workflow{
		ExpectState:      "complete",
		ExpectResults:    map[string]any{"a": int64(9007199254740993)},
		ExpectAttempts:   map[string]int{"a": 1},
		ExpectStepStates: map[string]string{"b": "complete"},
	}
	task := &tasker.Task{State: "complete"}
	ok := []tasker.Step{{Name: "a", State: "complete", Attempts: 1, Result: json.RawMessage("9007199254740993")}, {Name: "b", State: "complete"}}
	if err := w.Verify(task, ok); err != nil {
		t.Fatalf("Verify of matching steps: %v", err)
	}
	// 9007199254740992 is the same float64 as 9007199254740993; Verify must
	// still tell them apart.
	bad := []tasker.Step{{Name: "a", State: "complete", Attempts: 2, Result: json.RawMessage("9007199254740992")}}
	err := w.Verify(&tasker.Task{State: "blocked_by_failures"}, bad)
	if err == nil {
		t.Fatal("Verify of mismatching steps returned nil")
	}
	for _, want := range []string{"task state is blocked_by_failures", "result is 9007199254740992", "2 attempts", "step b: no such step"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Verify error %q does not mention %q", err, want)
		}
	}
	var joined interface{ Unwrap() []error }
	if !errors.As(err, &joined) || len(joined.Unwrap()) != 4 {
		t.Errorf("Verify error should list 4 mismatches, got %v", err)
	}
}
