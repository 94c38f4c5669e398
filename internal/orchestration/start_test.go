package orchestration

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/tasker-go/tasker/state"
	"github.com/tasker-go/tasker/store"
	"github.com/tasker-go/tasker/store/storetest"
)

func (h *harness) workerClaim(limit int) store.StepsClaimParams {
	return store.StepsClaimParams{Queues: []string{store.WorkerQueue(testNS)}, Limit: limit, Lease: 30 * time.Second, Owner: "worker-test"}
}

func (h *harness) historyOf(id string) [][3]string {
	h.t.Helper()
	var out [][3]string
	for _, r := range h.stepHistory(id) {
		out = append(out, [3]string{r.From, r.To, r.Event})
	}
	return out
}

// A transaction that ends with a claim for a worker, over a store that can
// start steps, hands the steps it made ready straight to the worker: they
// leave it in_progress under a leased message, with the history an enqueue
// and a claim would have written, and nothing is left in the queue to wake
// anyone for.
func TestDirectStartLeavesWhatAClaimWould(t *testing.T) {
	for _, direct := range []bool{true, false} {
		name := map[bool]string{true: "direct", false: "through the queue"}[direct]
		t.Run(name, func(t *testing.T) {
			h := newHarness(t)
			h.orch.noDirectStart = !direct
			task, _, _, claimed, err := h.orch.CreateTaskAndClaim(h.ctx,
				CreateTaskParams{Namespace: testNS, Name: "flow", Context: json.RawMessage(`{"order_id": 5}`)}, h.workerClaim(3))
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, c := range claimed {
				names = append(names, c.StepName)
				m := c.Message
				if m.ID == 0 || m.LeaseToken == "" || m.LeaseOwner != "worker-test" || m.ReadCount != 1 ||
					m.Queue != store.WorkerQueue(testNS) || m.StepUUID != c.StepUUID || m.TaskUUID != task.UUID {
					t.Errorf("step %s message = %+v", c.StepName, m)
				}
				if want := h.clock.Now().Add(30 * time.Second); m.LeaseUntil == nil || !m.LeaseUntil.Equal(want) {
					t.Errorf("step %s lease until %v, want %v", c.StepName, m.LeaseUntil, want)
				}
				if c.TaskName != "flow" || c.Version != "1.0.0" || c.Attempt != 1 || c.Callable != "shop."+c.StepName ||
					string(c.TaskContext) != `{"order_id": 5}` {
					t.Errorf("claimed %+v", c)
				}
				if got, want := h.historyOf(c.StepUUID), [][3]string{
					{"pending", "enqueued", "enqueue"}, {"enqueued", "in_progress", "start"}}; !slices.Equal(got, want) {
					t.Errorf("step %s history %v, want %v", c.StepName, got, want)
				}
			}
			slices.Sort(names)
			if !slices.Equal(names, []string{"a", "c"}) {
				t.Fatalf("claimed %v, want [a c]", names)
			}
			if v, l := h.queued(); v != 0 || l != 2 {
				t.Errorf("queue holds %d visible and %d leased messages, want 0 and 2", v, l)
			}
			h.wantStates(task.UUID, state.TaskStepsInProcess, map[string]state.StepState{
				"a": state.StepInProgress, "b": state.StepPending, "c": state.StepInProgress})

			// a's success makes b ready, which goes to the worker in the
			// completing transaction.
			a := claimed[slices.IndexFunc(claimed, func(c store.ClaimedStep) bool { return c.StepName == "a" })]
			refused, next, err := h.orch.CompleteAndClaim(h.ctx, []store.StepCompletion{successOf(a, `1`)}, h.workerClaim(1))
			if err != nil || refused[0] != nil {
				t.Fatalf("CompleteAndClaim: %v %v", err, refused)
			}
			if len(next) != 1 || next[0].StepName != "b" || next[0].Message.LeaseOwner != "worker-test" {
				t.Fatalf("claimed after a: %+v, want b", next)
			}
			if v, l := h.queued(); v != 0 || l != 2 {
				t.Errorf("after a: queue holds %d visible and %d leased messages, want 0 and 2", v, l)
			}
			c := claimed[slices.IndexFunc(claimed, func(c store.ClaimedStep) bool { return c.StepName == "c" })]
			h.complete(successOf(next[0], `2`), successOf(c, `3`))
			h.wantStates(task.UUID, state.TaskComplete, map[string]state.StepState{
				"a": state.StepComplete, "b": state.StepComplete, "c": state.StepComplete})
			if v, l := h.queued(); v != 0 || l != 0 {
				t.Errorf("after the task: queue holds %d visible and %d leased messages", v, l)
			}
		})
	}
}

// With older messages waiting in the worker's queue, steps a transaction
// makes ready are enqueued behind them and its claim takes the older ones
// first, as without direct starts; a claim's Limit bounds what it starts.
func TestDirectStartDefersToBacklog(t *testing.T) {
	h := newHarness(t)
	older := h.create("unique", `{}`) // enqueued, nobody claims it
	h.clock.Advance(time.Second)
	newer, _, _, claimed, err := h.orch.CreateTaskAndClaim(h.ctx, CreateTaskParams{Namespace: testNS, Name: "unique"}, h.workerClaim(1))
	if err != nil {
		t.Fatal(err)
	}
	if len(claimed) != 1 || claimed[0].TaskUUID != older.UUID {
		t.Fatalf("claimed %+v, want the older task's step", claimed)
	}
	if st := h.step(newer.UUID, "only").State; st != string(state.StepEnqueued) {
		t.Errorf("newer task's step is %s, want enqueued behind the backlog", st)
	}
	if v, l := h.queued(); v != 1 || l != 1 {
		t.Errorf("queue holds %d visible and %d leased messages, want 1 and 1", v, l)
	}

	// An empty queue again, and a claim for one step: of flow's two ready
	// steps one is started, the other enqueued, and the worker is woken
	// for it.
	h2 := newHarness(t)
	task, _, _, claimed, err := h2.orch.CreateTaskAndClaim(h2.ctx,
		CreateTaskParams{Namespace: testNS, Name: "flow", Context: json.RawMessage(`{"order_id": 1}`)}, h2.workerClaim(1))
	if err != nil {
		t.Fatal(err)
	}
	if len(claimed) != 1 {
		t.Fatalf("claimed %d steps with a Limit of 1", len(claimed))
	}
	if v, l := h2.queued(); v != 1 || l != 1 {
		t.Errorf("queue holds %d visible and %d leased messages, want 1 and 1", v, l)
	}
	states := map[string]int{}
	for _, s := range h2.steps(task.UUID) {
		states[s.State]++
	}
	if states["in_progress"] != 1 || states["enqueued"] != 1 {
		t.Errorf("step states %v, want one in_progress and one enqueued", states)
	}
	enq, _ := h2.notes.snapshot()
	if !slices.ContainsFunc(enq, func(ns []string) bool { return slices.Contains(ns, testNS) }) {
		t.Errorf("no wake-up for the enqueued step: %v", enq)
	}
}

// TestClaimedKeepsWakeForEnqueuedStarts pins the wake-up rule after a
// transaction's claim: a claim that got fewer steps than it asked for
// emptied its queues or found them empty, so the worker is not woken for
// the steps the transaction enqueued, unless a step the claim was to start
// is not among what it returned: the claim enqueued it behind a backlog
// and may not have searched for it (store.CompleteAndLoadParams.ClaimQueues).
func TestClaimedKeepsWakeForEnqueuedStarts(t *testing.T) {
	o := &Orchestrator{}
	claim := store.StepsClaimParams{Queues: []string{store.WorkerQueue("shop")}, Limit: 5}
	for _, tc := range []struct {
		name     string
		direct   []string
		claimed  []string
		wantWake bool
	}{
		{"nothing to start, claim short", nil, []string{"x"}, false},
		{"every start returned", []string{"a", "b"}, []string{"a", "b"}, false},
		{"a start not returned", []string{"a", "b"}, []string{"a"}, true},
		{"no start returned", []string{"a"}, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			eff := newEffects()
			eff.namespaces["shop"] = struct{}{}
			eff.direct = tc.direct
			var claimed []store.ClaimedStep
			for _, id := range tc.claimed {
				claimed = append(claimed, store.ClaimedStep{StepUUID: id})
			}
			o.claimed(claim, claimed, eff)
			if _, wake := eff.namespaces["shop"]; wake != tc.wantWake {
				t.Errorf("worker woken for shop: %v, want %v", wake, tc.wantWake)
			}
		})
	}
}

// A caller that gives up while its CreateTask is committing (an HTTP
// client that disconnects) does not split the outcome: the task is
// created, and the steps its transaction claimed for the worker are
// returned to it to run, not left leased with nobody running them until
// their leases expire and an attempt is counted against them.
func TestCreateAnswersAfterCallerGivesUp(t *testing.T) {
	h := newHarness(t)
	d := storetest.NewHeldAnswer(h.d)
	orch := New(d, h.orch.Templates(), h.notes, Config{Owner: "orch-test", JitterFraction: -1, Now: h.clock.Now})
	ctx, giveUp := context.WithCancel(h.ctx)
	go func() {
		<-d.Committed
		giveUp()
		close(d.Answer)
	}()
	task, _, _, claimed, err := orch.CreateTaskAndClaim(ctx, CreateTaskParams{Namespace: testNS, Name: "unique"}, h.workerClaim(1))
	if err != nil {
		t.Fatalf("CreateTaskAndClaim = %v; the task and its claim were committed", err)
	}
	if len(claimed) != 1 || claimed[0].TaskUUID != task.UUID {
		t.Fatalf("claimed %+v, want the new task's step", claimed)
	}
	if s := h.step(task.UUID, "only"); s.State != "in_progress" || s.Attempts != 1 {
		t.Errorf("step %s, attempt %d; want in_progress on attempt 1", s.State, s.Attempts)
	}
}

// A caller that gives up while the transaction's work is still being done
// gets its error; the transaction is rolled back and its claim never sent.
// A deadline is reported as a deadline (the API answers 503 to that, and
// nothing to a client that went away).
func TestOrchestrationGivesUpBeforeCommit(t *testing.T) {
	for _, how := range []string{"cancelled", "deadline"} {
		t.Run(how, func(t *testing.T) {
			h := newHarness(t)
			d := storetest.NewHeldAnswer(h.d)
			close(d.Answer)
			orch := New(d, h.orch.Templates(), h.notes, Config{Owner: "orch-test", JitterFraction: -1, Now: h.clock.Now})
			ctx, cancel := context.WithCancel(h.ctx)
			want := context.Canceled
			if how == "deadline" {
				ctx, cancel = context.WithTimeout(h.ctx, 20*time.Millisecond)
				want = context.DeadlineExceeded
			}
			defer cancel()
			taskUUID := "given-up-task"
			eff := newEffects()
			_, err := orch.inTxClaim(ctx, h.workerClaim(1), h.clock.Now(), eff, func(tx store.Tx) error {
				if err := tx.TaskInsert(ctx, store.TaskInsertParams{UUID: taskUUID, Namespace: testNS, Name: "unique",
					Version: "1.0.0", State: "pending", Context: json.RawMessage(`{}`), Now: h.clock.Now()}); err != nil {
					return err
				}
				if how == "cancelled" {
					cancel()
				}
				<-ctx.Done()
				return nil
			})
			if !errors.Is(err, want) {
				t.Errorf("inTxClaim = %v, want %v", err, want)
			}
			if n := d.Claims(); n != 0 {
				t.Errorf("%d claims sent after the caller gave up, want 0", n)
			}
			if eff.direct != nil {
				t.Errorf("direct starts %v kept after the rollback", eff.direct)
			}
			if got, err := h.d.Reader().TaskGet(h.ctx, store.TaskGetParams{UUID: taskUUID}); err == nil && got != nil {
				t.Errorf("task %s exists after the rollback", taskUUID)
			}
		})
	}
}

// A deadline that passes while the transaction waits to begin (here for
// SQLite's writer) is reported as a deadline, not as the cancellation of
// the transaction's own context that the driver sees.
func TestOrchestrationDeadlineBeforeBegin(t *testing.T) {
	h := newHarness(t)
	hold, err := h.d.Begin(h.ctx) // holds the writer
	if err != nil {
		t.Fatal(err)
	}
	defer hold.Rollback()
	ctx, cancel := context.WithTimeout(h.ctx, 50*time.Millisecond)
	defer cancel()
	ran := false
	_, err = h.orch.inTxClaim(ctx, h.workerClaim(1), h.clock.Now(), newEffects(), func(store.Tx) error {
		ran = true
		return nil
	})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("inTxClaim = %v, want context.DeadlineExceeded", err)
	}
	if ran {
		t.Error("the transaction's work ran although it never began")
	}
}
