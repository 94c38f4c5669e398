package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/tasker-go/tasker"
)

// engine is one side of the comparison, opened on a fresh database for
// one run. Every handler reports to the recorder; every committed
// workflow completion is reported by the engine from in-process signals.
type engine interface {
	// submit starts one workflow and returns its key once the submission
	// has committed.
	submit(ctx context.Context, s shape) (string, error)
	// submitMany queues n workflows, before start, the fastest way the
	// engine offers.
	submitMany(ctx context.Context, s shape, n int) error
	start(ctx context.Context) error
	// drain waits until the n workflows queued by submitMany are done.
	drain(ctx context.Context, n int) error
	close(ctx context.Context) error
}

// engineConfig is what both engines are given alike.
type engineConfig struct {
	url     string // "postgres://…" or a SQLite file path
	sqlite  bool
	workers int
	pool    int
	shapes  []shape
	rec     *recorder
}

func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
}

// taskerEngine runs Tasker through its public API. A workflow's committed
// completion is seen by WaitTask, which the engine wakes from the commit
// that settles the task.
type taskerEngine struct {
	eng *tasker.Engine
	rec *recorder
	cfg engineConfig

	// Burn-down bookkeeping: the order in which terminal steps' handlers
	// returned, and a channel closed when burnTarget of them have.
	mu          sync.Mutex
	ended       []string
	burnTarget  int
	burnReached chan struct{}
}

func taskerURL(cfg engineConfig) string {
	if cfg.sqlite {
		return "sqlite://" + cfg.url
	}
	return cfg.url
}

// migrateTasker opens and closes an engine so that the measured engine
// finds its schema in place.
func migrateTasker(ctx context.Context, cfg engineConfig) error {
	eng, err := tasker.Open(ctx, tasker.Config{DatabaseURL: taskerURL(cfg), Logger: quietLogger(), PostgresMaxConns: cfg.pool})
	if err != nil {
		return fmt.Errorf("open tasker: %w", err)
	}
	return eng.Close()
}

func openTasker(ctx context.Context, cfg engineConfig) (*taskerEngine, error) {
	eng, err := tasker.Open(ctx, tasker.Config{
		DatabaseURL:      taskerURL(cfg),
		Logger:           quietLogger(),
		Concurrency:      cfg.workers,
		PostgresMaxConns: cfg.pool,
	})
	if err != nil {
		return nil, fmt.Errorf("open tasker: %w", err)
	}
	t := &taskerEngine{eng: eng, rec: cfg.rec, cfg: cfg, burnReached: make(chan struct{})}
	terminal := map[string]string{}
	for _, s := range cfg.shapes {
		if err := eng.RegisterTemplate(ctx, []byte(s.yaml())); err != nil {
			eng.Close()
			return nil, fmt.Errorf("register %s: %w", s.name, err)
		}
		terminal[s.name] = s.terminal()
	}
	eng.Handle("bench.noop", tasker.HandlerFunc(func(_ context.Context, s *tasker.StepContext) (any, error) {
		n := stepNode(s.StepName)
		t.rec.started(s.TaskUUID, n, time.Now())
		t.rec.ended(s.TaskUUID, n, time.Now())
		if s.StepName == terminal[s.TaskName] {
			t.mu.Lock()
			t.ended = append(t.ended, s.TaskUUID)
			if len(t.ended) == t.burnTarget {
				close(t.burnReached)
			}
			t.mu.Unlock()
		}
		return 1, nil
	}))
	return t, nil
}

func stepNode(name string) node {
	switch {
	case name == "root":
		return nodeRoot
	case name == "join":
		return nodeJoin
	case strings.HasPrefix(name, "c"):
		return nodeChild
	}
	return nodeChain
}

func (t *taskerEngine) start(ctx context.Context) error { return t.eng.Start(ctx) }

func (t *taskerEngine) submit(ctx context.Context, s shape) (string, error) {
	task, err := t.eng.CreateTask(ctx, tasker.TaskRequest{Namespace: "bench", Name: s.name})
	if err != nil {
		return "", err
	}
	t.rec.submitted(task.UUID, time.Now())
	go func() {
		done, err := t.eng.WaitTask(ctx, task.UUID)
		if err == nil && done.State != "complete" {
			err = fmt.Errorf("task %s ended %s", task.UUID, done.State)
		}
		t.rec.finish(task.UUID, time.Now(), err)
	}()
	return task.UUID, nil
}

// submitMany creates the tasks in batches of 1,000 with CreateTasks (one
// transaction per batch), as River's side inserts its first jobs.
func (t *taskerEngine) submitMany(ctx context.Context, s shape, n int) error {
	t.mu.Lock()
	t.burnTarget = n
	t.mu.Unlock()
	for done := 0; done < n; {
		size := min(n-done, tasker.MaxCreateBatch)
		reqs := make([]tasker.TaskRequest, size)
		for i := range reqs {
			reqs[i] = tasker.TaskRequest{Namespace: "bench", Name: s.name}
		}
		if _, err := t.eng.CreateTasks(ctx, reqs); err != nil {
			return err
		}
		done += size
	}
	return nil
}

// drain waits, without touching the database, until the handler of every
// task's last step has returned, then waits with WaitTask for the tasks
// whose last handlers returned last, so that it returns once every
// completion has committed while adding a negligible number of reads to
// the measured transactions.
func (t *taskerEngine) drain(ctx context.Context, n int) error {
	select {
	case <-t.burnReached:
	case <-ctx.Done():
		t.mu.Lock()
		got := len(t.ended)
		t.mu.Unlock()
		return fmt.Errorf("%d of %d tasks reached their last step: %w", got, n, context.Cause(ctx))
	}
	t.mu.Lock()
	last := t.ended[max(0, len(t.ended)-2*t.cfg.workers):]
	t.mu.Unlock()
	for _, id := range last {
		done, err := t.eng.WaitTask(ctx, id)
		if err != nil {
			return err
		}
		if done.State != "complete" {
			return fmt.Errorf("task %s ended %s", id, done.State)
		}
	}
	return nil
}

func (t *taskerEngine) close(ctx context.Context) error {
	stopped := make(chan error, 1)
	go func() { stopped <- t.eng.Close() }()
	select {
	case err := <-stopped:
		return err
	case <-ctx.Done():
		return fmt.Errorf("close tasker: %w", context.Cause(ctx))
	}
}
