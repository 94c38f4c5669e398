package tasker

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tasker-go/tasker/store"
	"github.com/tasker-go/tasker/store/postgres/pgtest"
)

// countingReader counts TaskStates reads and the most tasks one read
// asked for.
type countingReader struct {
	store.Executor
	reads, most atomic.Int32
}

func (c *countingReader) TaskStates(ctx context.Context, p store.TaskStatesParams) (map[string]string, error) {
	c.reads.Add(1)
	for n := int32(len(p.UUIDs)); ; {
		m := c.most.Load()
		if n <= m || c.most.CompareAndSwap(m, n) {
			break
		}
	}
	return c.Executor.TaskStates(ctx, p)
}

type countingDriver struct {
	store.Driver
	r *countingReader
}

func (d countingDriver) Reader() store.Executor { return d.r }

const waitPollYAML = `
name: held
namespace_name: poll
version: 1.0.0
identity_strategy: always_unique
steps:
  - name: only
    handler: {callable: poll.held}
`

// TestWaitTaskPollsTogether: WaitTask calls on an engine that does not run
// the tasks (another engine on the same database does) learn that their
// tasks settled from the engine's poller, which reads the waited-for tasks
// together: a few reads for fifty waiters, not one per waiter per poll.
func TestWaitTaskPollsTogether(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "tasker.db")
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	client, err := Open(ctx, Config{DatabaseURL: "sqlite://" + path, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	counter := &countingReader{Executor: client.driver.Reader()}
	client.driver = countingDriver{Driver: client.driver, r: counter}
	if err := client.RegisterTemplate(ctx, []byte(waitPollYAML)); err != nil {
		t.Fatal(err)
	}

	runner, err := Open(ctx, Config{DatabaseURL: "sqlite://" + path, Logger: quiet, PollInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer runner.Close()
	release := make(chan struct{})
	var releaseOnce sync.Once
	defer releaseOnce.Do(func() { close(release) }) // before the engines close, should the test fail early
	runner.Handle("poll.held", heldUntil(release))
	if err := runner.Start(ctx); err != nil {
		t.Fatal(err)
	}

	const n = 50
	ids := make([]string, n)
	for i := range ids {
		task, err := client.CreateTask(ctx, TaskRequest{Namespace: "poll", Name: "held"})
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = task.UUID
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for _, id := range ids {
		wg.Go(func() {
			wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			defer cancel()
			done, err := client.WaitTask(wctx, id)
			if err == nil && done.State != "complete" {
				err = &taskStateError{state: done.State}
			}
			if err != nil {
				errs <- err
			}
		})
	}
	// Every waiter is scheduled, then read together with the others: the
	// waits are bounded, not timed, so that a loaded machine (which may
	// spread the waiters' starts over a few of the poller's ticks) only
	// makes the test slower.
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s (largest read %d tasks, %d reads)", what, counter.most.Load(), counter.reads.Load())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitFor("every waiter to be scheduled", func() bool {
		client.polls.mu.Lock()
		defer client.polls.mu.Unlock()
		return len(client.polls.tasks) == n
	})
	waitFor("a read of the waiters together", func() bool { return counter.most.Load() >= n/2 })
	// Then 0.6 s of polling, counted before the release: fifty waiters
	// polling on their own (every 250 ms by then) would read about 120
	// times.
	before := counter.reads.Load()
	time.Sleep(600 * time.Millisecond)
	reads := counter.reads.Load() - before
	releaseOnce.Do(func() { close(release) })
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("WaitTask: %v", err)
	}
	if reads == 0 || reads >= n/2 {
		t.Errorf("the poller read %d times for %d waiters over 0.6 s; want the waiters read together, a few times", reads, n)
	}
	client.polls.mu.Lock()
	left := len(client.polls.tasks)
	client.polls.mu.Unlock()
	if left != 0 {
		t.Errorf("%d tasks still scheduled after every WaitTask returned", left)
	}
}

// taskStateError reports a task that settled in an unexpected state.
type taskStateError struct{ state string }

func (e *taskStateError) Error() string { return "task ended " + e.state }

// TestWaitTaskWokenByOtherProcess (PostgreSQL): an engine waiting for
// tasks that another engine runs learns that they settled from the
// announcement the settling engine sends, not from its polls, which here
// are minutes apart: a started engine through its own listener, one never
// started (a client) through its poller's.
func TestWaitTaskWokenByOtherProcess(t *testing.T) {
	t.Parallel()
	for _, started := range []bool{true, false} {
		t.Run(fmt.Sprint("started=", started), func(t *testing.T) {
			t.Parallel()
			testWaitTaskWokenByOtherProcess(t, started)
		})
	}
}

func testWaitTaskWokenByOtherProcess(t *testing.T, started bool) {
	ctx := context.Background()
	url := pgtest.URL(t)
	schema := pgtest.Schema(t, url)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	open := func(cfg Config) *Engine {
		cfg.DatabaseURL, cfg.PostgresSchema, cfg.Logger = url, schema, quiet
		e, err := Open(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { e.Close() })
		return e
	}
	// The waiting engine handles nothing, so its wake-ups can only come
	// from the other engine; its own polls would come after the test's
	// deadline.
	waiter := open(Config{Roles: []Role{RoleOrchestrator}})
	waiter.polls.first, waiter.polls.most = 10*time.Minute, 10*time.Minute
	if err := waiter.RegisterTemplate(ctx, []byte(waitPollYAML)); err != nil {
		t.Fatal(err)
	}
	if started {
		if err := waiter.Start(ctx); err != nil {
			t.Fatal(err)
		}
	}
	runner := open(Config{PollInterval: 20 * time.Millisecond})
	release := make(chan struct{})
	var releaseOnce sync.Once
	defer releaseOnce.Do(func() { close(release) })
	runner.Handle("poll.held", heldUntil(release))
	if err := runner.Start(ctx); err != nil {
		t.Fatal(err)
	}

	var ids []string
	for range 3 {
		task, err := waiter.CreateTask(ctx, TaskRequest{Namespace: "poll", Name: "held"})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, task.UUID)
	}
	var wg sync.WaitGroup
	for _, id := range ids {
		wg.Go(func() {
			wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			defer cancel()
			done, err := waiter.WaitTask(wctx, id)
			if err != nil {
				t.Errorf("WaitTask %s: %v (the notification of its settling did not wake it)", id, err)
			} else if done.State != "complete" {
				t.Errorf("WaitTask %s: task ended %s", id, done.State)
			}
		})
	}
	// Every waiter has made its first read and waits for a signal.
	waitFor(t, func() bool {
		waiter.polls.mu.Lock()
		defer waiter.polls.mu.Unlock()
		return len(waiter.polls.tasks) == len(ids)
	})
	releaseOnce.Do(func() { close(release) })
	wg.Wait()
}

// heldUntil is a handler that returns once release is closed.
func heldUntil(release <-chan struct{}) Handler {
	return HandlerFunc(func(ctx context.Context, _ *StepContext) (any, error) {
		select {
		case <-release:
			return "done", nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	})
}
