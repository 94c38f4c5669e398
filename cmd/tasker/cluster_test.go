package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tasker-go/tasker"
	"github.com/tasker-go/tasker/examples"
	"github.com/tasker-go/tasker/store/postgres/pgtest"
)

// The cluster tests run `tasker serve` processes against one PostgreSQL
// schema. Each process is this test binary, re-executed: TestMain sees
// serveChildEnv and runs the real main, so the children parse their
// configuration from TASKER_* variables and handle signals exactly as the
// tasker command does.
const serveChildEnv = "TASKER_TEST_SERVE_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(serveChildEnv) == "1" {
		main()
	}
	os.Exit(m.Run())
}

// clusterTasks is how many diamond tasks each cluster scenario runs: fewer
// under the race detector, which makes the five child processes several
// times slower.
func clusterTasks() int {
	if raceEnabled {
		return 300
	}
	return 1000
}

// clusterLease is the children's step lease: short, so that work held by a
// killed process is rescued within seconds.
const clusterLease = 2 * time.Second

// syncBuffer is a bytes.Buffer safe for a child's output and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// serveProc is one `tasker serve` child.
type serveProc struct {
	role   string
	cmd    *exec.Cmd
	out    *syncBuffer
	exited chan struct{}
}

func (p *serveProc) alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// cluster is a PostgreSQL schema, a client engine on it (never started)
// and the serve processes working on it.
type cluster struct {
	t      *testing.T
	url    string
	schema string
	db     *pgxpool.Pool
	client *tasker.Engine

	mu    sync.Mutex
	procs []*serveProc
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("runs several tasker processes")
	}
	if runtime.GOOS == "windows" {
		t.Skip("needs SIGKILL and SIGTERM")
	}
	url := pgtest.URL(t)
	c := &cluster{t: t, url: url, schema: pgtest.Schema(t, url)}
	ctx := context.Background()
	eng, err := tasker.Open(ctx, tasker.Config{DatabaseURL: url, PostgresSchema: c.schema,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatalf("open the client engine: %v", err)
	}
	t.Cleanup(func() { eng.Close() })
	// The client registers the templates first, so the children find them.
	if err := examples.Register(ctx, eng); err != nil {
		t.Fatal(err)
	}
	c.client = eng
	pc, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	pc.MaxConns = 2
	pc.ConnConfig.RuntimeParams["search_path"] = c.schema
	c.db, err = pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.db.Close)
	t.Cleanup(c.stopAll)
	return c
}

// start runs a serve child with the given roles and waits until it is up.
func (c *cluster) start(role string, extraEnv ...string) *serveProc {
	c.t.Helper()
	cmd := exec.Command(os.Args[0], "serve")
	cmd.Env = append(os.Environ(), serveChildEnv+"=1",
		"TASKER_DATABASE_URL="+c.url, "TASKER_POSTGRES_SCHEMA="+c.schema, "TASKER_ROLES="+role,
		"TASKER_STEP_LEASE="+clusterLease.String(), "TASKER_POLL_INTERVAL=100ms",
		"TASKER_CONCURRENCY=16", "TASKER_DRAIN_TIMEOUT=20s", "TASKER_API_ADDR=127.0.0.1:0")
	cmd.Env = append(cmd.Env, extraEnv...)
	p := &serveProc{role: role, cmd: cmd, out: &syncBuffer{}, exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	go func() {
		_ = cmd.Wait()
		close(p.exited)
	}()
	c.mu.Lock()
	c.procs = append(c.procs, p)
	c.mu.Unlock()
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(p.out.String(), "tasker serve started") {
		if !p.alive() {
			c.t.Fatalf("serve --roles %s exited during start-up (%v):\n%s", role, cmd.ProcessState, p.out.String())
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("serve --roles %s did not start within a minute:\n%s", role, p.out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return p
}

// kill ends a child with SIGKILL and waits for it.
func (c *cluster) kill(p *serveProc) {
	c.t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		c.t.Fatalf("kill %s: %v", p.role, err)
	}
	<-p.exited
}

// stopAll ends every child still running and reports what any child
// printed that points at a bug.
func (c *cluster) stopAll() {
	c.mu.Lock()
	procs := c.procs
	c.mu.Unlock()
	for _, p := range procs {
		if p.alive() {
			_ = p.cmd.Process.Signal(syscall.SIGKILL)
		}
		<-p.exited
		out := p.out.String()
		for _, bad := range []string{"DATA RACE", "panic:", "applied twice"} {
			if strings.Contains(out, bad) {
				c.t.Errorf("serve --roles %s printed %q:\n%s", p.role, bad, out)
				break
			}
		}
	}
}

// diamondTask is a created diamond task and the value its last step must
// return: even_number¹⁰.
type diamondTask struct {
	uuid string
	want int64
}

func (c *cluster) createDiamonds(n int) []diamondTask {
	c.t.Helper()
	out := make([]diamondTask, n)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	const creators = 8
	for g := range creators {
		wg.Go(func() {
			for i := g; i < n; i += creators {
				base := int64(2 + 2*(i%4))
				task, err := c.client.CreateTask(context.Background(), tasker.TaskRequest{
					Namespace: "math", Name: "diamond_workflow", Context: map[string]any{"even_number": base, "seq": i}})
				if err != nil {
					errs <- err
					return
				}
				want := int64(1)
				for range 10 {
					want *= base
				}
				out[i] = diamondTask{uuid: task.UUID, want: want}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		c.t.Fatalf("create task: %v", err)
	}
	return out
}

func (c *cluster) count(sql string, args ...any) int {
	c.t.Helper()
	var n int
	if err := c.db.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		c.t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// describe renders the rows of a diagnostic query, one per line.
func (c *cluster) describe(sql string) string {
	rows, err := c.db.Query(context.Background(), sql)
	if err != nil {
		return err.Error()
	}
	defer rows.Close()
	var b strings.Builder
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			return err.Error()
		}
		fmt.Fprintln(&b, vals...)
	}
	return b.String()
}

// completedSteps is the number of complete steps in the schema.
func (c *cluster) completedSteps() int {
	return c.count(`SELECT count(*) FROM tasker_steps WHERE state = 'complete'`)
}

// waitUntil polls cond until it holds, failing after budget.
func (c *cluster) waitUntil(what string, budget time.Duration, cond func() bool) {
	c.t.Helper()
	deadline := time.Now().Add(budget)
	for !cond() {
		if time.Now().After(deadline) {
			c.t.Fatalf("timed out after %s waiting for %s (%d steps complete)", budget, what, c.completedSteps())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitComplete waits until every task settled, failing fast on a task that
// settled other than complete.
func (c *cluster) waitComplete(tasks []diamondTask, budget time.Duration) {
	c.t.Helper()
	c.waitUntil("every task to complete", budget, func() bool {
		if bad := c.count(`SELECT count(*) FROM tasker_tasks WHERE state IN ('error', 'blocked_by_failures', 'cancelled')`); bad > 0 {
			c.t.Fatalf("%d tasks ended without completing; their steps:\n%s", bad, c.describe(
				`SELECT t.state, s.name, s.state, s.attempts, coalesce(s.error::text, '') FROM tasker_tasks t
				JOIN tasker_steps s ON s.task_uuid = t.task_uuid
				WHERE t.state IN ('error', 'blocked_by_failures', 'cancelled') AND s.state <> 'complete' LIMIT 10`))
		}
		return c.count(`SELECT count(*) FROM tasker_tasks WHERE state = 'complete'`) == len(tasks)
	})
}

// verify checks what every cluster scenario must leave behind.
func (c *cluster) verify(tasks []diamondTask) {
	c.t.Helper()
	ctx := context.Background()
	want := make(map[string]int64, len(tasks))
	for _, tk := range tasks {
		want[tk.uuid] = tk.want
	}
	// Every task is complete and its last step returned base¹⁰.
	rows, err := c.db.Query(ctx, `SELECT t.task_uuid, t.state, coalesce(s.result::text, '')
		FROM tasker_tasks t JOIN tasker_steps s ON s.task_uuid = t.task_uuid AND s.name = 'diamond_end'`)
	if err != nil {
		c.t.Fatal(err)
	}
	seen := 0
	for rows.Next() {
		var id, st, result string
		if err := rows.Scan(&id, &st, &result); err != nil {
			c.t.Fatal(err)
		}
		w, ok := want[id]
		if !ok {
			continue
		}
		seen++
		if st != "complete" || result != fmt.Sprint(w) {
			c.t.Errorf("task %s: state %s, diamond_end result %q, want complete with %d", id, st, result, w)
		}
	}
	rows.Close()
	if seen != len(tasks) {
		c.t.Errorf("found %d of %d tasks", seen, len(tasks))
	}
	for _, check := range []struct{ what, sql string }{
		{"steps not complete", `SELECT count(*) FROM tasker_steps WHERE state <> 'complete'`},
		{"steps with attempts outside 1..max_attempts",
			`SELECT count(*) FROM tasker_steps WHERE attempts < 1 OR attempts > max_attempts`},
		{"steps in_progress without a live lease", `SELECT count(*) FROM tasker_steps s WHERE s.state = 'in_progress'
			AND NOT EXISTS (SELECT 1 FROM tasker_queue q WHERE q.step_uuid = s.step_uuid AND q.lease_expires_at > now())`},
		// A result applied twice would show as a second success, a second
		// completion, or more successes than claims.
		{"steps whose history does not show exactly one applied result", `SELECT count(*) FROM (
			SELECT s.step_uuid,
				count(*) FILTER (WHERE tr.to_state = 'in_progress') AS claims,
				count(*) FILTER (WHERE tr.from_state = 'in_progress' AND tr.to_state = 'enqueued_for_orchestration') AS successes,
				count(*) FILTER (WHERE tr.to_state = 'complete') AS completions
			FROM tasker_steps s JOIN tasker_step_transitions tr ON tr.step_uuid = s.step_uuid
			GROUP BY s.step_uuid, s.attempts
			HAVING count(*) FILTER (WHERE tr.from_state = 'in_progress' AND tr.to_state = 'enqueued_for_orchestration') <> 1
				OR count(*) FILTER (WHERE tr.to_state = 'complete') <> 1
				OR count(*) FILTER (WHERE tr.to_state = 'in_progress') < s.attempts) x`},
		{"tasks completed more than once", `SELECT count(*) FROM (SELECT task_uuid FROM tasker_task_transitions
			WHERE to_state = 'complete' GROUP BY task_uuid HAVING count(*) <> 1) x`},
	} {
		if n := c.count(check.sql); n != 0 {
			c.t.Errorf("%d %s", n, check.what)
		}
	}
	// Every message stands for work not yet recorded; once everything is
	// recorded, the queues are empty.
	deadline := time.Now().Add(10 * time.Second)
	for c.count(`SELECT count(*) FROM tasker_queue`) != 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if n := c.count(`SELECT count(*) FROM tasker_queue`); n != 0 {
		c.t.Errorf("%d queue messages left after every task completed", n)
	}
	c.t.Logf("%d tasks complete; %d attempts were rescued after their lease expired, %d steps took more than one attempt",
		len(tasks),
		c.count(`SELECT count(*) FROM tasker_step_transitions WHERE from_state = 'in_progress' AND to_state = 'enqueued_as_error_for_orchestration'`),
		c.count(`SELECT count(*) FROM tasker_steps WHERE attempts > 1`))
}

// startCluster runs two orchestrator-only and three worker-only processes.
func (c *cluster) startCluster() (orchestrators, workers []*serveProc) {
	for range 2 {
		orchestrators = append(orchestrators, c.start("orchestrator"))
	}
	for range 3 {
		workers = append(workers, c.start("worker"))
	}
	return orchestrators, workers
}

// TestClusterDiamonds: two orchestrators and three workers, as separate
// processes, run the diamond tasks a client created.
func TestClusterDiamonds(t *testing.T) {
	c := newCluster(t)
	c.startCluster()
	start := time.Now()
	tasks := c.createDiamonds(clusterTasks())
	c.waitComplete(tasks, 2*time.Minute)
	t.Logf("%d diamond tasks created and completed in %s", len(tasks), time.Since(start).Round(time.Millisecond))
	c.verify(tasks)
}

// TestClusterWorkerKilled SIGKILLs a worker at a random moment, three
// times, restarting it each time.
func TestClusterWorkerKilled(t *testing.T) {
	c := newCluster(t)
	_, workers := c.startCluster()
	tasks := c.createDiamonds(clusterTasks())
	total := 4 * len(tasks)
	for k := 1; k <= 3; k++ {
		c.waitUntil("progress before a kill", time.Minute, func() bool { return c.completedSteps() >= k*total/5 })
		time.Sleep(time.Duration(rand.IntN(300)) * time.Millisecond)
		i := rand.IntN(len(workers))
		inFlight := c.count(`SELECT count(*) FROM tasker_steps WHERE state = 'in_progress'`)
		c.kill(workers[i])
		t.Logf("killed worker %d at %d of %d steps complete, %d steps in progress cluster-wide", i, c.completedSteps(), total, inFlight)
		workers[i] = c.start("worker")
	}
	c.waitComplete(tasks, 2*time.Minute)
	c.verify(tasks)
}

// TestClusterOrchestratorKilled SIGKILLs one of the two orchestrators: the
// other takes over, including the results the dead one had leased.
func TestClusterOrchestratorKilled(t *testing.T) {
	c := newCluster(t)
	orchestrators, _ := c.startCluster()
	tasks := c.createDiamonds(clusterTasks())
	total := 4 * len(tasks)
	c.waitUntil("progress before the kill", time.Minute, func() bool { return c.completedSteps() >= total/4 })
	time.Sleep(time.Duration(rand.IntN(300)) * time.Millisecond)
	c.kill(orchestrators[0])
	t.Logf("killed an orchestrator at %d of %d steps complete", c.completedSteps(), total)
	c.waitComplete(tasks, 2*time.Minute)
	c.verify(tasks)
}

// TestClusterServerRestart restarts the PostgreSQL server mid-run. It
// restarts a whole server, which other tests may share, so it runs only
// when asked (TASKER_TEST_PG_RESTART=1), as root, with pg_ctlcluster. The
// server restarted is TASKER_TEST_PG_CLUSTER ("VERSION NAME", default
// "15 main"), which must be the one TASKER_TEST_DATABASE_URL points at.
func TestClusterServerRestart(t *testing.T) {
	if os.Getenv("TASKER_TEST_PG_RESTART") != "1" {
		t.Skip("restarts the PostgreSQL server; set TASKER_TEST_PG_RESTART=1 to run")
	}
	if os.Geteuid() != 0 {
		t.Skip("pg_ctlcluster needs root")
	}
	c := newCluster(t)
	c.startCluster()
	tasks := c.createDiamonds(clusterTasks())
	total := 4 * len(tasks)
	c.waitUntil("progress before the restart", time.Minute, func() bool { return c.completedSteps() >= total/4 })
	pgCluster := strings.Fields(os.Getenv("TASKER_TEST_PG_CLUSTER"))
	if len(pgCluster) != 2 {
		pgCluster = []string{"15", "main"}
	}
	out, err := exec.Command("pg_ctlcluster", "--skip-systemctl-redirect", pgCluster[0], pgCluster[1], "restart").CombinedOutput()
	if err != nil {
		t.Fatalf("restart PostgreSQL: %v\n%s", err, out)
	}
	c.db.Reset()
	t.Logf("restarted PostgreSQL at %d of %d steps complete", c.completedSteps(), total)
	c.waitComplete(tasks, 2*time.Minute)
	c.verify(tasks)
}

// slowSquareYAML is a one-step workflow whose handler takes 1.5s, so that a
// SIGTERM finds handlers in flight.
const slowSquareYAML = `
name: slow_square
namespace_name: math
version: 1.0.0
identity_strategy: always_unique
steps:
  - name: slow_square
    handler:
      callable: math.square
      initialization: {delay_ms: 1500}
`

// TestServeGracefulStop sends SIGTERM to a worker while its handlers run:
// they finish, their results are recorded, and the process exits 0.
func TestServeGracefulStop(t *testing.T) {
	c := newCluster(t)
	ctx := context.Background()
	if err := c.client.RegisterTemplate(ctx, []byte(slowSquareYAML)); err != nil {
		t.Fatal(err)
	}
	c.start("orchestrator")
	w := c.start("worker")
	const n = 8
	ids := make([]string, n)
	for i := range ids {
		task, err := c.client.CreateTask(ctx, tasker.TaskRequest{Namespace: "math", Name: "slow_square",
			Context: map[string]any{"even_number": 2 + 2*i}})
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = task.UUID
	}
	c.waitUntil("every step to be claimed", 30*time.Second, func() bool {
		return c.count(`SELECT count(*) FROM tasker_steps WHERE state = 'in_progress'`) == n
	})
	if err := w.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-w.exited:
	case <-time.After(30 * time.Second):
		t.Fatalf("the worker did not exit within 30s of SIGTERM:\n%s", w.out.String())
	}
	if code := w.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("the worker exited %d after SIGTERM, want 0:\n%s", code, w.out.String())
	}
	if !strings.Contains(w.out.String(), "tasker serve stopped") {
		t.Errorf("the worker did not log its stop:\n%s", w.out.String())
	}
	// Every handler that was running finished: its result is recorded and
	// no step needs its lease rescued or another attempt. No worker is
	// left, so a step that lost its result would never finish: the wait
	// is bounded, and says which step it was.
	for _, id := range ids {
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		task, err := c.client.WaitTask(wctx, id)
		cancel()
		if err != nil {
			steps, _ := c.client.TaskSteps(ctx, id)
			t.Fatalf("task %s did not finish after the worker stopped (%v); its steps: %+v\nworker output:\n%s",
				id, err, steps, w.out.String())
		}
		steps, err := c.client.TaskSteps(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if task.State != "complete" || steps[0].Attempts != 1 || steps[0].Error != nil {
			t.Errorf("task %s: %s after %d attempts (error %+v), want complete after 1", id, task.State, steps[0].Attempts, steps[0].Error)
		}
	}
}
