package tasker_test

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tasker-go/tasker"
)

// The crash test runs its first engine in a child process (this test
// binary, re-executed) so that it can be killed with SIGKILL mid-run.
const (
	crashChildEnv = "TASKER_CRASH_CHILD"
	crashDBEnv    = "TASKER_CRASH_DB"
	crashIDsEnv   = "TASKER_CRASH_IDS"
	crashTasks    = 30
)

// crashYAML is the linear squares workflow with short retry backoffs, so
// that a rescued step runs again soon after its lease expires.
const crashYAML = `
name: crash_math
namespace_name: math
version: 1.0.0
steps:
  - name: s1
    handler: {callable: math.op, initialization: {op: square}}
    retry: {max_attempts: 3, backoff_base_ms: 50}
  - name: s2
    handler: {callable: math.op, initialization: {op: square, inputs: [s1]}}
    dependencies: [s1]
    retry: {max_attempts: 3, backoff_base_ms: 50}
  - name: s3
    handler: {callable: math.op, initialization: {op: square, inputs: [s2]}}
    dependencies: [s2]
    retry: {max_attempts: 3, backoff_base_ms: 50}
  - name: s4
    handler: {callable: math.op, initialization: {op: square, inputs: [s3]}}
    dependencies: [s3]
    retry: {max_attempts: 3, backoff_base_ms: 50}
`

// slowMathOp is mathOp with a random 10–50ms of work, so that the child is
// killed while steps run. One first attempt in five fails with a 300ms
// RetryAfter, so that the child also dies with retries pending, whose
// timers die with it.
func slowMathOp(ctx context.Context, s *tasker.StepContext) (any, error) {
	time.Sleep(time.Duration(10+rand.IntN(41)) * time.Millisecond)
	if s.Attempt == 1 && rand.IntN(5) == 0 {
		return nil, tasker.RetryAfter(errFlaky, 300*time.Millisecond)
	}
	return mathOp(ctx, s)
}

// childCalls counts the child's handler calls (see childMathOp).
var childCalls atomic.Int64

// childMathOp is slowMathOp until the child has started half of all the
// steps; later calls hold their step until the process dies. However fast
// the child runs and however slowly the parent watches, the child is then
// killed with work unfinished and steps in progress.
func childMathOp(ctx context.Context, s *tasker.StepContext) (any, error) {
	if childCalls.Add(1) > 4*crashTasks/2 {
		<-ctx.Done()
		return nil, context.Cause(ctx)
	}
	return slowMathOp(ctx, s)
}

// crashChild is the child's side: open the engine, create the tasks, write
// their UUIDs for the parent, start, and run until killed.
func crashChild(t *testing.T) {
	ctx := context.Background()
	eng, err := tasker.Open(ctx, tasker.Config{DatabaseURL: "sqlite://" + os.Getenv(crashDBEnv),
		StepLease: time.Second, PollInterval: 50 * time.Millisecond, Concurrency: 4})
	if err != nil {
		t.Fatal(err)
	}
	if err := eng.RegisterTemplate(ctx, []byte(crashYAML)); err != nil {
		t.Fatal(err)
	}
	eng.Handle("math.op", tasker.HandlerFunc(childMathOp))
	ids := make([]string, 0, crashTasks)
	for i := range crashTasks {
		task, err := eng.CreateTask(ctx, tasker.TaskRequest{Namespace: "math", Name: "crash_math",
			Context: map[string]int{"even_number": 2 + i%6, "seq": i}})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, task.UUID)
	}
	b, _ := json.Marshal(ids)
	tmp := os.Getenv(crashIDsEnv) + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, os.Getenv(crashIDsEnv)); err != nil {
		t.Fatal(err)
	}
	if err := eng.Start(ctx); err != nil {
		t.Fatal(err)
	}
	// Wait to be killed; give up eventually so that an orphan cannot linger.
	time.Sleep(time.Minute)
	t.Fatal("crash child was not killed")
}

// expectedSquares is what s4 of the linear squares workflow returns.
func expectedSquares(n int64) int64 {
	for range 4 {
		n *= n
	}
	return n
}

// TestCrashRecovery kills an engine process mid-run and checks that a new
// engine on the same file finishes every task correctly, rescuing the steps
// the dead process had claimed.
func TestCrashRecovery(t *testing.T) {
	if os.Getenv(crashChildEnv) == "1" {
		crashChild(t)
		return
	}
	if testing.Short() {
		t.Skip("re-executes the test binary")
	}
	if runtime.GOOS == "windows" {
		t.Skip("needs SIGKILL")
	}
	t.Parallel()
	dir := t.TempDir()
	dbPath, idsPath := filepath.Join(dir, "tasker.db"), filepath.Join(dir, "ids.json")
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashRecovery$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashChildEnv+"=1", crashDBEnv+"="+dbPath, crashIDsEnv+"="+idsPath)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	childAlive := func() {
		select {
		case <-exited:
			t.Fatalf("the child exited on its own:\n%s", out.String())
		default:
		}
	}

	var ids []string
	eventually(t, "the child to create its tasks", func() bool {
		childAlive()
		b, err := os.ReadFile(idsPath)
		return err == nil && json.Unmarshal(b, &ids) == nil
	})
	if len(ids) != crashTasks {
		t.Fatalf("child created %d tasks, want %d", len(ids), crashTasks)
	}

	// Watch progress through a client engine and kill the child once some,
	// but not all, of the work is done.
	client, _ := openEngine(t, engineOptions{path: dbPath, noStart: true})
	const total = 4 * crashTasks
	completed := func() int {
		n := 0
		for _, id := range ids {
			task, err := client.GetTask(context.Background(), id)
			if err != nil {
				t.Fatalf("client GetTask: %v", err)
			}
			n += task.CompletedSteps
		}
		return n
	}
	var before int
	eventually(t, "the child to make progress", func() bool {
		childAlive()
		before = completed()
		return before >= total/5
	})
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-exited
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("the child was not killed by SIGKILL (%v):\n%s", cmd.ProcessState, out.String())
	}
	if strings.Contains(out.String(), "DATA RACE") || strings.Contains(out.String(), "--- FAIL") {
		t.Errorf("the child reported a problem before it was killed:\n%s", out.String())
	}

	// The dead process's state: what it finished and what it held, and the
	// rescues already in the history. A live process rescues its own steps
	// when its heartbeats stall past the lease (a loaded CI machine can do
	// that to a 1s lease); those rescues are not the recovery under test.
	atKill := map[string]bool{}
	rescuedBefore := map[string]int{}
	var done, retrying, selfRescued int
	for _, id := range ids {
		for _, s := range stepsByName(t, client, id) {
			rescuedBefore[s.UUID] = rescues(t, client, s.UUID)
			selfRescued += rescuedBefore[s.UUID]
			switch s.State {
			case "in_progress":
				atKill[s.UUID] = true
			case "waiting_for_retry":
				retrying++
			case "complete":
				done++
			}
		}
	}
	t.Logf("killed the child at %d of %d steps complete (%d seen before the kill); %d steps were in progress, %d waiting for a retry; the child had rescued %d of its own steps",
		done, total, before, len(atKill), retrying, selfRescued)
	defer func() {
		if t.Failed() {
			t.Logf("the child's output:\n%s", out.String())
		}
	}()
	if done == total {
		t.Fatalf("the child finished everything before it was killed; nothing was tested")
	}

	// A new engine on the same file finishes everything. Its own lease can
	// be longer: only the dead child's leases (1s) need to expire.
	eng, _ := openEngine(t, engineOptions{
		path:      dbPath,
		cfg:       tasker.Config{StepLease: 3 * time.Second, PollInterval: 100 * time.Millisecond},
		templates: []string{crashYAML},
		handlers:  map[string]tasker.HandlerFunc{"math.op": slowMathOp},
	})
	start := time.Now()
	rescued := 0
	var rescueRecord string
	for i, id := range ids {
		task := waitTask(t, eng, id)
		if task.State != "complete" {
			dumpTask(t, eng, id)
			t.Fatalf("task %d: state %s after recovery", i, task.State)
		}
		steps := stepsByName(t, eng, id)
		wantResult(t, steps, "s4", expectedSquares(int64(2+i%6)))
		for _, s := range steps {
			if s.Attempts < 1 || s.Attempts > s.MaxAttempts {
				t.Errorf("task %d step %s: %d attempts of at most %d", i, s.Name, s.Attempts, s.MaxAttempts)
			}
			// Rescued since the kill.
			wasRescued := rescues(t, eng, s.UUID, &rescueRecord) > rescuedBefore[s.UUID]
			if wasRescued {
				rescued++
			}
			// Every step the dead process held is rescued by lease expiry
			// and runs again; no other step needs to be.
			if atKill[s.UUID] && (!wasRescued || s.Attempts < 2) {
				t.Errorf("task %d step %s was in progress at the kill but shows no rescue (%d attempts)", i, s.Name, s.Attempts)
			}
			// The rescue is the step's last failure.
			if atKill[s.UUID] && (s.Error == nil || s.Error.Type != "lease_expired") {
				t.Errorf("task %d step %s: last error %+v, want lease_expired", i, s.Name, s.Error)
			}
			if !atKill[s.UUID] && wasRescued {
				t.Errorf("task %d step %s was rescued although it was not in progress at the kill", i, s.Name)
			}
		}
	}
	t.Logf("recovered all %d tasks in %s; %d steps were rescued from expired leases (history records a rescue as %s)",
		len(ids), time.Since(start).Round(time.Millisecond), rescued, rescueRecord)
}

// rescues counts the lease-expiry rescues in a step's history; record, if
// given, gets the last one's metadata.
func rescues(t *testing.T, eng *tasker.Engine, stepUUID string, record ...*string) int {
	t.Helper()
	n := 0
	for _, tr := range stepTransitions(t, eng, stepUUID) {
		if tr.To == "enqueued_as_error_for_orchestration" && metadata(t, tr)["rescued_by"] != nil {
			n++
			for _, r := range record {
				*r = string(tr.Metadata)
			}
		}
	}
	return n
}
