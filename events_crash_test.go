package tasker_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tasker-go/tasker"
)

// The durable-event crash test runs its first engine in a child process
// (this test binary, re-executed) so that it can be killed with SIGKILL
// while its subscribers still owe deliveries.
const (
	eventCrashChildEnv = "TASKER_EVENT_CRASH_CHILD"
	eventCrashDirEnv   = "TASKER_EVENT_CRASH_DIR"
	eventCrashTasks    = 20
	// auditAcks and ordersAcks are how many events the child's "audit"
	// and "order.*#0" subscriptions acknowledge before they block.
	auditAcks  = 25
	ordersAcks = 7
)

// eventCrashYAML publishes three durable events per task: two under
// "order." and one outside it.
const eventCrashYAML = `
name: event_crash
namespace_name: evc
version: 1.0.0
identity_strategy: always_unique
steps:
  - name: s1
    handler: {callable: evc.work}
    publishes_events:
      - {name: order.started}
  - name: s2
    handler: {callable: evc.work}
    dependencies: [s1]
    publishes_events:
      - {name: order.finished}
      - {name: audit.recorded}
`

func evcWork(_ context.Context, s *tasker.StepContext) (any, error) {
	return map[string]string{"step": s.StepName}, nil
}

// appendLine appends a line to a file; what a killed process wrote this
// way is kept.
func appendLine(path, line string) error {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	_, err = f.WriteString(line + "\n")
	return errors.Join(err, f.Close())
}

func readLines(t testing.TB, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Fields(string(b))
}

// ackThenBlock acknowledges the first n events it receives, writing their
// IDs to path, and then never acknowledges another.
func ackThenBlock(path string, n int) func(ctx context.Context, ev tasker.DomainEvent) error {
	var mu sync.Mutex
	acked := 0
	return func(ctx context.Context, ev tasker.DomainEvent) error {
		mu.Lock()
		if acked < n {
			acked++
			err := appendLine(path, ev.ID)
			mu.Unlock()
			return err
		}
		mu.Unlock()
		<-ctx.Done()
		return ctx.Err()
	}
}

// eventCrashChild is the child's side: subscribe, run the tasks, wait
// until every result is committed and the subscriptions have stored the
// progress they will ever make, tell the parent, and wait to be killed.
// "order.*#0" and "order.*#1" relay events as they are committed; "audit"
// subscribes once all are, and so finds them in one batch.
func eventCrashChild(t *testing.T) {
	dir := os.Getenv(eventCrashDirEnv)
	ctx := context.Background()
	eng, err := tasker.Open(ctx, tasker.Config{DatabaseURL: "sqlite://" + filepath.Join(dir, "tasker.db"),
		PollInterval: 50 * time.Millisecond, EventDeliveryTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := eng.RegisterTemplate(ctx, []byte(eventCrashYAML)); err != nil {
		t.Fatal(err)
	}
	eng.Handle("evc.work", tasker.HandlerFunc(evcWork))
	eng.Subscribe("order.*", ackThenBlock(filepath.Join(dir, "orders.acked"), ordersAcks)) // order.*#0
	eng.Subscribe("order.*", func(ctx context.Context, _ tasker.DomainEvent) error {       // order.*#1
		<-ctx.Done() // never acknowledges
		return ctx.Err()
	})
	if err := eng.Start(ctx); err != nil {
		t.Fatal(err)
	}
	for range eventCrashTasks {
		task, err := eng.CreateTask(ctx, tasker.TaskRequest{Namespace: "evc", Name: "event_crash"})
		if err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithTimeout(ctx, waitBudget)
		task, err = eng.WaitTask(wctx, task.UUID)
		cancel()
		if err != nil || task.State != "complete" {
			t.Fatalf("task %v: %v", task, err)
		}
	}
	// Every outcome is committed. "audit" subscribes only now, so that it
	// reads every event in one batch and gets stuck in the middle of it.
	if err := eng.SubscribeDurable("audit", "*", ackThenBlock(filepath.Join(dir, "audit.acked"), auditAcks)); err != nil {
		t.Fatal(err)
	}
	// Wait for the blocked subscriptions to store what they acknowledged
	// before the event they are stuck on.
	all, err := eng.Events(ctx, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	var orders []tasker.DomainEvent
	for _, ev := range all {
		if strings.HasPrefix(ev.Name, "order.") {
			orders = append(orders, ev)
		}
	}
	want := map[string]int64{"audit": all[auditAcks-1].Seq, "order.*#0": orders[ordersAcks-1].Seq, "order.*#1": 0}
	// Half the parent's budget, so that the parent reports why.
	deadline := time.Now().Add(waitBudget / 2)
	for {
		stored := map[string]int64{}
		for _, s := range eng.EventStats(ctx).Subscriptions {
			stored[s.Name] = s.Cursor
		}
		if len(stored) == len(want) && stored["audit"] == want["audit"] && stored["order.*#0"] == want["order.*#0"] &&
			stored["order.*#1"] == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stored cursors %v, want %v: acknowledged events would be delivered again after a crash", stored, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := appendLine(filepath.Join(dir, "ready"), "ready"); err != nil {
		t.Fatal(err)
	}
	// Wait to be killed; give up eventually so that an orphan cannot linger.
	time.Sleep(time.Minute)
	t.Fatal("event crash child was not killed")
}

// TestEventCrashRecovery kills a process whose durable subscribers owe
// deliveries — one acknowledged some events and is stuck, one
// acknowledged none — and checks that a new engine subscribing in the same
// order delivers every event the dead process owed, in commit order, and
// none it had acknowledged. It covers an explicit subscription name
// (SubscribeDurable) and Subscribe's pattern#n names.
func TestEventCrashRecovery(t *testing.T) {
	if os.Getenv(eventCrashChildEnv) == "1" {
		eventCrashChild(t)
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
	cmd := exec.Command(os.Args[0], "-test.run=^TestEventCrashRecovery$", "-test.count=1")
	cmd.Env = append(os.Environ(), eventCrashChildEnv+"=1", eventCrashDirEnv+"="+dir)
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
	eventually(t, "the child to commit every outcome and store its subscriptions' progress", func() bool {
		select {
		case <-exited:
			t.Fatalf("the child exited on its own:\n%s", out.String())
		default:
		}
		return len(readLines(t, filepath.Join(dir, "ready"))) > 0
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

	// A new engine on the same file, subscribing in the same order.
	eng, _ := openEngine(t, engineOptions{path: filepath.Join(dir, "tasker.db"), noStart: true,
		templates: []string{eventCrashYAML}})
	all := stream(t, eng)
	if len(all) != 3*eventCrashTasks {
		t.Fatalf("the stream has %d events, want %d", len(all), 3*eventCrashTasks)
	}
	var orders []tasker.DomainEvent
	for _, ev := range all {
		if strings.HasPrefix(ev.Name, "order.") {
			orders = append(orders, ev)
		}
	}
	if got := readLines(t, filepath.Join(dir, "audit.acked")); !slices.Equal(got, eventIDs(all[:auditAcks])) {
		t.Fatalf("before the kill audit acknowledged %d events, not the first %d", len(got), auditAcks)
	}
	if got := readLines(t, filepath.Join(dir, "orders.acked")); !slices.Equal(got, eventIDs(orders[:ordersAcks])) {
		t.Fatalf("before the kill order.*#0 acknowledged %d events, not the first %d", len(got), ordersAcks)
	}

	audit, orders0, orders1 := &eventLog{}, &eventLog{}, &eventLog{}
	if err := eng.SubscribeDurable("audit", "*", audit.handle); err != nil {
		t.Fatal(err)
	}
	eng.Subscribe("order.*", orders0.handle)
	eng.Subscribe("order.*", orders1.handle)
	if err := eng.Start(context.Background()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	for _, c := range []struct {
		name string
		log  *eventLog
		want []tasker.DomainEvent
	}{
		{"audit", audit, all[auditAcks:]},
		{"order.*#0", orders0, orders[ordersAcks:]},
		{"order.*#1", orders1, orders},
	} {
		eventually(t, c.name+" to receive what it was owed", func() bool { d, _ := c.log.counts(); return d >= len(c.want) })
		// Delivery is in commit order, so an acknowledged event delivered
		// again would come first, before the count was reached.
		c.log.mu.Lock()
		got := eventIDs(c.log.durable)
		c.log.mu.Unlock()
		if !slices.Equal(got, eventIDs(c.want)) {
			t.Errorf("after the restart %s received %d events; want exactly the %d it had not acknowledged, in order",
				c.name, len(got), len(c.want))
		}
	}
	for _, s := range eng.EventStats(context.Background()).Subscriptions {
		eventually(t, "the cursor of "+s.Name+" to reach the end", func() bool {
			for _, s2 := range eng.EventStats(context.Background()).Subscriptions {
				if s2.Name == s.Name {
					return s2.Cursor == all[len(all)-1].Seq
				}
			}
			return false
		})
	}
	// Each delivered event is as written: payload and identity intact.
	for _, ev := range audit.durable {
		var res map[string]string
		if err := json.Unmarshal(ev.Payload, &res); err != nil || res["step"] != ev.StepName {
			t.Errorf("event %s payload %s, want the result of step %s", ev.ID, ev.Payload, ev.StepName)
		}
	}
}
