package tasker_test

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/tasker-go/tasker"
	"github.com/tasker-go/tasker/store/postgres/pgtest"
)

// chainYAML squares a number four times, each step reading its parent's
// result. Its steps retry quickly: a handler whose read of a parent's
// result is cut off by a lost connection fails retryably.
const chainYAML = `
name: chain
namespace_name: chain
version: 1.0.0
steps:
  - name: s1
    handler: {callable: chain.square}
    retry: {max_attempts: 5, backoff_base_ms: 20}
  - name: s2
    handler: {callable: chain.square, initialization: {input: s1}}
    dependencies: [s1]
    retry: {max_attempts: 5, backoff_base_ms: 20}
  - name: s3
    handler: {callable: chain.square, initialization: {input: s2}}
    dependencies: [s2]
    retry: {max_attempts: 5, backoff_base_ms: 20}
  - name: s4
    handler: {callable: chain.square, initialization: {input: s3}}
    dependencies: [s3]
    retry: {max_attempts: 5, backoff_base_ms: 20}
`

// chainSquare squares the task's "n", or its input step's result. Only a
// result that is missing for good is a permanent failure.
func chainSquare(_ context.Context, s *tasker.StepContext) (any, error) {
	var cfg struct {
		Input string `json:"input"`
	}
	if err := s.HandlerConfig(&cfg); err != nil {
		return nil, tasker.Permanent(err)
	}
	var v int64
	if cfg.Input == "" {
		var c struct {
			N int64 `json:"n"`
		}
		if err := s.DecodeContext(&c); err != nil {
			return nil, tasker.Permanent(err)
		}
		v = c.N
	} else if err := s.DependencyResult(cfg.Input, &v); err != nil {
		if errors.Is(err, tasker.ErrNoDependencyResult) {
			return nil, tasker.Permanent(err)
		}
		return nil, err
	}
	return v * v, nil
}

// pgCluster is a PostgreSQL schema shared by several engines, as separate
// processes would share it. Its sessions carry an application_name of
// their own, so a test can cut exactly its connections.
type pgCluster struct {
	base, url, schema, app string
}

func newPGCluster(t *testing.T) *pgCluster {
	t.Helper()
	base := pgtest.URL(t)
	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("parse %s: %v", base, err)
	}
	app := "tasker_test_" + strings.ReplaceAll(uuid.NewString(), "-", "")[:12]
	q := u.Query()
	q.Set("application_name", app)
	u.RawQuery = q.Encode()
	return &pgCluster{base: base, url: u.String(), schema: pgtest.Schema(t, base), app: app}
}

// open opens an engine on the cluster's schema; start makes it run the
// orchestrator and a worker for chainSquare, otherwise it is only a client.
func (c *pgCluster) open(t *testing.T, cfg tasker.Config, start bool) *tasker.Engine {
	t.Helper()
	cfg.DatabaseURL, cfg.PostgresSchema = c.url, c.schema
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	ctx := context.Background()
	eng, err := tasker.Open(ctx, cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := eng.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	if err := eng.RegisterTemplate(ctx, []byte(chainYAML)); err != nil {
		t.Fatalf("RegisterTemplate: %v", err)
	}
	if start {
		eng.Handle("chain.square", tasker.HandlerFunc(chainSquare))
		if err := eng.Start(ctx); err != nil {
			t.Fatalf("Start: %v", err)
		}
	}
	return eng
}

// cut terminates every session of the cluster's engines (pools and
// listeners) and returns how many it ended.
func (c *pgCluster) cut(t *testing.T) int {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), c.base)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var n int
	if err := conn.QueryRow(t.Context(), `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name LIKE $1 || '%'`,
		c.app).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// listenerUp reports whether the cluster has a listener session.
func (c *pgCluster) listenerUp(t *testing.T) bool {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), c.base)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var n int
	if err := conn.QueryRow(t.Context(), `SELECT count(*) FROM pg_stat_activity
		WHERE datname = current_database() AND application_name = $1`, c.app+"_listener").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n > 0
}

func createChain(t *testing.T, eng *tasker.Engine, key string) *tasker.Task {
	t.Helper()
	return createTask(t, eng, tasker.TaskRequest{Namespace: "chain", Name: "chain",
		Context: map[string]int{"n": 6}, IdempotencyKey: key})
}

// retrying calls f until it succeeds, for up to 10s: a client whose
// sessions were cut sees errors until its pool has replaced them.
func retrying(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func wantChainComplete(t *testing.T, eng *tasker.Engine, task *tasker.Task) {
	t.Helper()
	wantTask(t, task, "complete", "all_complete")
	var steps []tasker.Step
	retrying(t, "TaskSteps", func() (err error) {
		steps, err = eng.TaskSteps(t.Context(), task.UUID)
		return err
	})
	for _, s := range steps {
		if s.Name == "s4" {
			if got := resultValue[int64](t, s); got != 2821109907456 {
				t.Errorf("task %s: s4 = %d, want 2821109907456", task.UUID, got)
			}
		}
	}
}

// TestPostgresEventDrivenPicksUpOtherProcessesWork creates tasks through a
// client engine while another engine, in event_driven_only mode, runs
// them. Its queue pollers run only every 30s, so tasks that complete one
// after another well within that were picked up through notifications.
func TestPostgresEventDrivenPicksUpOtherProcessesWork(t *testing.T) {
	t.Parallel()
	c := newPGCluster(t)
	c.open(t, tasker.Config{DeploymentMode: tasker.DeploymentEventDrivenOnly, PollInterval: 10 * time.Second}, true)
	client := c.open(t, tasker.Config{DeploymentMode: tasker.DeploymentEventDrivenOnly}, false)
	eventually(t, "the listener to connect", func() bool { return c.listenerUp(t) })

	start := time.Now()
	const tasks = 5
	for i := range tasks {
		task := createChain(t, client, "event-driven-"+string(rune('a'+i)))
		wantChainComplete(t, client, waitTask(t, client, task.UUID))
	}
	// Five tasks in sequence, each waiting for the 30s safety poll, would
	// take minutes; a generous bound still tells the two apart.
	if elapsed := time.Since(start); elapsed > 10*time.Second {
		t.Errorf("%d tasks took %s: work was found by polling, not notifications", tasks, elapsed)
	}
}

// TestPostgresEventDrivenListensToNamespacesAddedLater registers the
// template that gives a running event_driven_only engine a new namespace
// after Start: the engine subscribes to it, so the client's tasks are
// picked up through notifications too.
func TestPostgresEventDrivenListensToNamespacesAddedLater(t *testing.T) {
	t.Parallel()
	c := newPGCluster(t)
	ctx := context.Background()
	runner, err := tasker.Open(ctx, tasker.Config{DatabaseURL: c.url, PostgresSchema: c.schema,
		DeploymentMode: tasker.DeploymentEventDrivenOnly, PollInterval: 10 * time.Second, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { runner.Close() })
	runner.Handle("chain.square", tasker.HandlerFunc(chainSquare))
	if err := runner.Start(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the listener to connect", func() bool { return c.listenerUp(t) })
	if err := runner.RegisterTemplate(ctx, []byte(chainYAML)); err != nil {
		t.Fatal(err)
	}
	client := c.open(t, tasker.Config{}, false)
	start := time.Now()
	for i := range 3 {
		task := createChain(t, client, "later-"+string(rune('a'+i)))
		wantChainComplete(t, client, waitTask(t, client, task.UUID))
	}
	if elapsed := time.Since(start); elapsed > 10*time.Second {
		t.Errorf("3 tasks took %s: the new namespace was found by polling, not notifications", elapsed)
	}
}

// TestPostgresSurvivesLostConnections cuts every database session of a
// running engine (its pools and its listener) in the middle of a run,
// twice: the pools reconnect, the listener subscribes again and catches
// up, and every task completes without a restart.
func TestPostgresSurvivesLostConnections(t *testing.T) {
	t.Parallel()
	for _, mode := range []tasker.DeploymentMode{tasker.DeploymentHybrid, tasker.DeploymentEventDrivenOnly} {
		t.Run(string(mode), func(t *testing.T) {
			t.Parallel()
			c := newPGCluster(t)
			// StepLease bounds how long a step whose completion was cut
			// off waits for its rescue.
			c.open(t, tasker.Config{DeploymentMode: mode, PollInterval: 100 * time.Millisecond, StepLease: time.Second}, true)
			client := c.open(t, tasker.Config{DeploymentMode: mode}, false)
			eventually(t, "the listener to connect", func() bool { return c.listenerUp(t) })

			var created []*tasker.Task
			create := func(key string) {
				retrying(t, "CreateTask", func() error {
					task, err := client.CreateTask(t.Context(), tasker.TaskRequest{Namespace: "chain", Name: "chain",
						Context: map[string]int{"n": 6}, IdempotencyKey: key})
					if err == nil {
						created = append(created, task)
					}
					return err
				})
			}
			for round := range 3 {
				for i := range 10 {
					create(string(rune('a'+round)) + "-" + string(rune('a'+i)))
				}
				if round < 2 {
					if n := c.cut(t); n == 0 {
						t.Fatalf("round %d: no session to cut", round)
					}
				}
			}
			eventually(t, "the listener to reconnect", func() bool { return c.listenerUp(t) })
			// A task created after the cuts: in event_driven_only mode it
			// completes only if the listener subscribed again.
			create("after")
			for _, task := range created {
				ctx, cancel := context.WithTimeout(t.Context(), waitBudget)
				var settled *tasker.Task
				retrying(t, "WaitTask", func() (err error) {
					settled, err = client.WaitTask(ctx, task.UUID)
					return err
				})
				cancel()
				wantChainComplete(t, client, settled)
			}
		})
	}
}
