package postgres_test

import (
	"encoding/json"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/tasker-go/tasker/store"
)

// TestClaimSearchSkippedOnEmptyQueues pins CompleteAndLoadParams.ClaimQueues
// on PostgreSQL: a transaction that found its claim's queues without an
// unleased message starts the steps it was given but does not search the
// queues; one that found a backlog, sent to the queues after looking, or
// claims from other queues than it looked at searches them as before. A
// backlog that appears between the look and the claim makes the start
// enqueue its steps, which the claim then does not return (the
// orchestrator wakes the worker for them).
func TestClaimSearchSkippedOnEmptyQueues(t *testing.T) {
	t.Parallel()
	d := openMigrated(t)
	ctx := t.Context()
	queue, other := store.WorkerQueue("ns"), store.WorkerQueue("other")
	task := uuid.NewString()
	ids := map[string]string{}
	var inserts []store.StepInsert
	for i, name := range []string{"a", "b", "c", "d", "e", "f", "g", "h"} {
		ids[name] = uuid.NewString()
		inserts = append(inserts, store.StepInsert{UUID: ids[name], Name: name, Position: i, Callable: "ns.step", MaxAttempts: 1})
	}
	now := time.Now()
	insertTask(t, d, task, inserts, now)
	enqueueTo := func(tx store.Tx, q, name string, at time.Time) error {
		if err := tx.StepTransition(ctx, store.StepTransitionParams{UUID: ids[name], From: "pending", To: "enqueued",
			Event: "enqueue", Now: now}); err != nil {
			return err
		}
		return tx.QueueSend(ctx, store.QueueSendParams{Now: now, Messages: []store.QueueMessageInsert{
			{Queue: q, TaskUUID: task, StepUUID: ids[name], VisibleAt: at}}})
	}
	enqueue := func(tx store.Tx, name string, at time.Time) error { return enqueueTo(tx, queue, name, at) }
	enqueueNow := func(name string) {
		t.Helper()
		if err := store.InTx(ctx, d, func(tx store.Tx) error { return enqueue(tx, name, time.Time{}) }); err != nil {
			t.Fatal(err)
		}
	}
	// hop is an orchestration transaction: it locks the task and looks at
	// the queues h.look, then h.between runs (outside it), then it sends
	// h.send (if any) and ends with a claim on h.claim (default: the
	// queues looked at) at h.at (default: now) that starts h.start (if
	// any).
	type hop struct {
		look, claim []string
		between     func()
		send, start string
		at          time.Time
	}
	run := func(h hop) []string {
		t.Helper()
		if h.claim == nil {
			h.claim = h.look
		}
		if h.at.IsZero() {
			h.at = now
		}
		tx, err := d.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback()
		if _, err := store.CompleteAndLoad(ctx, tx, store.CompleteAndLoadParams{Tasks: []string{task}, Now: now,
			ClaimQueues: h.look}); err != nil {
			t.Fatal(err)
		}
		if h.between != nil {
			h.between()
		}
		if h.send != "" {
			if err := enqueue(tx, h.send, time.Time{}); err != nil {
				t.Fatal(err)
			}
		}
		p := store.StepsClaimParams{Queues: h.claim, Limit: 5, Lease: 30 * time.Second, Owner: "worker-1", Now: h.at}
		if h.start != "" {
			p.Start = []store.StepStart{{UUID: ids[h.start], TaskUUID: task, From: "pending", Queue: queue, Name: h.start,
				Namespace: "ns", Callable: "ns.step", MaxAttempts: 1, TaskName: "t", Version: "1", TaskContext: json.RawMessage(`{}`)}}
		}
		claimed, err := tx.(store.ClaimCommitter).ClaimAndCommit(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, c := range claimed {
			for n, id := range ids {
				if id == c.StepUUID {
					names = append(names, n)
				}
			}
		}
		slices.Sort(names)
		return names
	}
	stepState := func(name string) string {
		t.Helper()
		st, err := d.Reader().StepGet(ctx, store.StepGetParams{UUID: ids[name]})
		if err != nil {
			t.Fatal(err)
		}
		return st.State
	}
	wantStates := func(state string, names ...string) {
		t.Helper()
		for _, n := range names {
			if s := stepState(n); s != state {
				t.Errorf("%s is %s, want %s", n, s, state)
			}
		}
	}
	one, both := []string{queue}, []string{queue, other}

	// Empty when looked at: a starts.
	if got := run(hop{look: one, start: "a"}); !slices.Equal(got, []string{"a"}) {
		t.Errorf("queues empty: claimed %v, want [a]", got)
	}
	// Empty when looked at, but b arrives before the claim: the start
	// finds a backlog and enqueues c behind it, and nothing searches the
	// queues for either (a claim that searched would return both).
	if got := run(hop{look: one, between: func() { enqueueNow("b") }, start: "c"}); len(got) != 0 {
		t.Errorf("backlog after the look: claimed %v, want none", got)
	}
	wantStates("enqueued", "b", "c")
	// A backlog when looked at: the claim searches and takes b and c, then
	// d, which the start enqueued behind them.
	if got := run(hop{look: one, start: "d"}); !slices.Equal(got, []string{"b", "c", "d"}) {
		t.Errorf("with a backlog: claimed %v, want [b c d]", got)
	}
	// Empty when looked at, but the transaction then sends e: searched.
	if got := run(hop{look: one, send: "e", start: "f"}); !slices.Equal(got, []string{"e", "f"}) {
		t.Errorf("after a send of its own: claimed %v, want [e f]", got)
	}
	// Nothing to start, empty when looked at: g, committed meanwhile to the
	// other queue, is not searched for.
	enqueueOther := func() {
		if err := store.InTx(ctx, d, func(tx store.Tx) error { return enqueueTo(tx, other, "g", time.Time{}) }); err != nil {
			t.Error(err)
		}
	}
	if got := run(hop{look: both, between: enqueueOther}); len(got) != 0 {
		t.Errorf("nothing to start, g after the look: claimed %v, want none", got)
	}
	wantStates("enqueued", "g")
	// Looked at one queue (empty), claims from two: searched, g is found.
	if got := run(hop{look: one, claim: both}); !slices.Equal(got, []string{"g"}) {
		t.Errorf("claim on other queues than looked at: claimed %v, want [g]", got)
	}
	// A message not visible when the transaction began is still a backlog
	// to the look: the claim, later, may find it visible.
	if err := store.InTx(ctx, d, func(tx store.Tx) error { return enqueue(tx, "h", now.Add(time.Second)) }); err != nil {
		t.Fatal(err)
	}
	if got := run(hop{look: both, at: now.Add(2 * time.Second)}); !slices.Equal(got, []string{"h"}) {
		t.Errorf("message visible by the claim's time: claimed %v, want [h]", got)
	}
}

// TestClaimSearchAfterLargeEnqueue: an enqueue of many steps (one
// statement of its own, not a queue send) counts as a send to its queue,
// so the claim that ends the transaction searches the queue it looked at
// empty, and takes the steps; the queue's listeners are signalled at
// commit.
func TestClaimSearchAfterLargeEnqueue(t *testing.T) {
	t.Parallel()
	d := openMigrated(t)
	ctx := t.Context()
	queue := store.WorkerQueue("ns")
	rec := newRecorder()
	listen(t, d, rec.params(queue))
	rec.await(t, "the subscription", func(_ []string, c int) bool { return c == 1 })
	task := uuid.NewString()
	var ids []string
	var inserts []store.StepInsert
	for i := range 12 {
		ids = append(ids, uuid.NewString())
		inserts = append(inserts, store.StepInsert{UUID: ids[i], Name: "s" + strconv.Itoa(i), Position: i, Callable: "ns.step", MaxAttempts: 1})
	}
	now := time.Now()
	insertTask(t, d, task, inserts, now)
	tx, err := d.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if _, err := store.CompleteAndLoad(ctx, tx, store.CompleteAndLoadParams{Tasks: []string{task}, Now: now,
		ClaimQueues: []string{queue}}); err != nil {
		t.Fatal(err)
	}
	if err := tx.StepsEnqueue(ctx, store.StepsEnqueueParams{TaskUUID: task, Steps: ids, From: "pending", Queue: queue, Now: now}); err != nil {
		t.Fatal(err)
	}
	claimed, err := tx.(store.ClaimCommitter).ClaimAndCommit(ctx, store.StepsClaimParams{Queues: []string{queue}, Limit: 20,
		Lease: 30 * time.Second, Owner: "worker-1", Now: now})
	if err != nil {
		t.Fatal(err)
	}
	if len(claimed) != len(ids) {
		t.Errorf("claimed %d steps after enqueueing %d in the same transaction, want all", len(claimed), len(ids))
	}
	rec.await(t, "the queue's signal", func(topics []string, _ int) bool { return slices.Contains(topics, queue) })
}

// insertTask stores a task of namespace ns in_progress with steps.
func insertTask(t *testing.T, d store.Driver, task string, steps []store.StepInsert, now time.Time) {
	t.Helper()
	ctx := t.Context()
	if err := store.InTx(ctx, d, func(tx store.Tx) error {
		if err := tx.TaskInsert(ctx, store.TaskInsertParams{UUID: task, Namespace: "ns", Name: "t", Version: "1",
			State: "in_progress", Context: json.RawMessage(`{}`), Now: now}); err != nil {
			return err
		}
		return tx.StepsInsert(ctx, store.StepsInsertParams{TaskUUID: task, Namespace: "ns", Now: now, Steps: steps})
	}); err != nil {
		t.Fatal(err)
	}
}
