package tasker_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tasker-go/tasker"
)

const staleTemplate = `name: stuck
namespace_name: dlq
version: 1.0.0
identity_strategy: always_unique
steps:
  - name: hang
    handler: {callable: dlq.hang}
    retry: {max_attempts: 1}
    timeout_seconds: 120
  - name: after
    handler: {callable: dlq.after}
    dependencies: [hang]
`

// staleOptions: the first attempt of hang blocks until release is closed
// and then fails for good; later attempts succeed. A task without
// progress for 1s is stale.
func staleOptions(release <-chan struct{}, attempts *atomic.Int32) engineOptions {
	return engineOptions{
		cfg:       tasker.Config{StalenessInterval: 100 * time.Millisecond, MaxStepsInProcess: time.Second},
		templates: []string{staleTemplate},
		handlers: map[string]tasker.HandlerFunc{
			"dlq.hang": func(ctx context.Context, s *tasker.StepContext) (any, error) {
				if attempts.Add(1) == 1 {
					select {
					case <-release:
					case <-ctx.Done():
					}
					return nil, tasker.Permanent(errors.New("gave up"))
				}
				return "done", nil
			},
			"dlq.after": func(context.Context, *tasker.StepContext) (any, error) { return 2, nil },
		},
	}
}

// testStaleRedrive is "staleness → DLQ → redrive → complete" on one engine.
func testStaleRedrive(t *testing.T, eng *tasker.Engine, release chan struct{}, attempts *atomic.Int32) {
	ctx := context.Background()
	task := createTask(t, eng, tasker.TaskRequest{Namespace: "dlq", Name: "stuck"})
	settled := waitTask(t, eng, task.UUID)
	if settled.State != "error" {
		t.Fatalf("stuck task settled as %s, want error", settled.State)
	}
	entries, err := eng.ListDLQ(ctx, tasker.DLQFilter{Statuses: []tasker.DLQStatus{tasker.DLQPending}, Namespace: "dlq"})
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Fatalf("pending DLQ entries = %+v, want one", entries)
	}
	e := entries[0]
	if e.TaskUUID != task.UUID || e.Kind != tasker.DLQKindTask || e.Reason != "steps_in_process_timeout" ||
		e.OriginalState != "steps_in_process" || len(e.Snapshot) == 0 {
		t.Errorf("DLQ entry = %+v", e)
	}
	if got, err := eng.GetDLQ(ctx, e.ID); err != nil || got.ID != e.ID {
		t.Errorf("GetDLQ = %+v, %v", got, err)
	}
	if _, err := eng.GetDLQ(ctx, e.ID+1000); !errors.Is(err, tasker.ErrDLQNotFound) {
		t.Errorf("GetDLQ of a missing entry = %v, want ErrDLQNotFound", err)
	}

	// The hung attempt gives up: the step ends in error, the task stays
	// in error.
	close(release)
	deadline := time.Now().Add(waitBudget)
	for stepsByName(t, eng, task.UUID)["hang"].State != "error" {
		if time.Now().After(deadline) {
			dumpTask(t, eng, task.UUID)
			t.Fatal("hang never reached error")
		}
		time.Sleep(20 * time.Millisecond)
	}

	got, err := eng.RedriveDLQ(ctx, tasker.DLQRedrive{ID: e.ID, Actor: "ops", Reason: "retry after fix"})
	if err != nil {
		t.Fatalf("RedriveDLQ: %v", err)
	}
	if got.Status != tasker.DLQManuallyResolved || got.ResolvedBy != "ops" {
		t.Errorf("entry after redrive = %+v", got)
	}
	done := waitTask(t, eng, task.UUID)
	if done.State != "complete" {
		dumpTask(t, eng, task.UUID)
		t.Fatalf("redriven task settled as %s, want complete", done.State)
	}
	if n := attempts.Load(); n != 2 {
		t.Errorf("hang ran %d times, want 2", n)
	}
	if _, err := eng.RedriveDLQ(ctx, tasker.DLQRedrive{ID: e.ID}); !errors.Is(err, tasker.ErrDLQNotPending) {
		t.Errorf("second RedriveDLQ = %v, want ErrDLQNotPending", err)
	}
	stats, err := eng.DLQStats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := tasker.DLQStat{Kind: tasker.DLQKindTask, Status: tasker.DLQManuallyResolved, Reason: "steps_in_process_timeout", Count: 1}
	if len(stats) != 1 || stats[0] != want {
		t.Errorf("DLQStats = %+v, want [%+v]", stats, want)
	}
	if _, err := eng.UpdateDLQ(ctx, tasker.DLQUpdate{ID: e.ID, Status: tasker.DLQPermanentlyFailed, Actor: "ops"}); err != nil {
		t.Errorf("UpdateDLQ: %v", err)
	}
}

func TestStalenessDLQRedriveComplete(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	var attempts atomic.Int32
	eng, _ := openEngine(t, staleOptions(release, &attempts))
	testStaleRedrive(t, eng, release, &attempts)
}

func TestPostgresStalenessDLQRedriveComplete(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	var attempts atomic.Int32
	eng := openPostgresEngine(t, staleOptions(release, &attempts))
	testStaleRedrive(t, eng, release, &attempts)
}
