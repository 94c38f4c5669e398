package postgres_test

import (
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/tasker-go/tasker/store"
)

// TestClaimSearchSkippedOnEmptyQueues pins CompleteAndLoadParams.ClaimQueues
// on PostgreSQL: a transaction that found its claim's queues empty starts
// the steps it was given but does not search the queues; a transaction
// that found a backlog, or sent to the queues after looking,
// searches them as before. A backlog that appears between the look and the
// claim makes the start enqueue its steps, which the claim then does not
// return (the orchestrator wakes the worker for them).
func TestClaimSearchSkippedOnEmptyQueues(t *testing.T) {
	t.Parallel()
	d := openMigrated(t)
	ctx := t.Context()
	queue := store.WorkerQueue("ns")
	task := uuid.NewString()
	ids := map[string]string{}
	var inserts []store.StepInsert
	for i, name := range []string{"a", "b", "c", "d", "e", "f"} {
		ids[name] = uuid.NewString()
		inserts = append(inserts, store.StepInsert{UUID: ids[name], Name: name, Position: i, Callable: "ns.step", MaxAttempts: 1})
	}
	now := time.Now()
	if err := store.InTx(ctx, d, func(tx store.Tx) error {
		if err := tx.TaskInsert(ctx, store.TaskInsertParams{UUID: task, Namespace: "ns", Name: "t", Version: "1",
			State: "in_progress", Context: json.RawMessage(`{}`), Now: now}); err != nil {
			return err
		}
		return tx.StepsInsert(ctx, store.StepsInsertParams{TaskUUID: task, Namespace: "ns", Now: now, Steps: inserts})
	}); err != nil {
		t.Fatal(err)
	}
	enqueue := func(tx store.Tx, name string) error {
		if err := tx.StepTransition(ctx, store.StepTransitionParams{UUID: ids[name], From: "pending", To: "enqueued",
			Event: "enqueue", Now: now}); err != nil {
			return err
		}
		return tx.QueueSend(ctx, store.QueueSendParams{Now: now, Messages: []store.QueueMessageInsert{
			{Queue: queue, TaskUUID: task, StepUUID: ids[name]}}})
	}
	enqueueNow := func(name string) {
		t.Helper()
		if err := store.InTx(ctx, d, func(tx store.Tx) error { return enqueue(tx, name) }); err != nil {
			t.Fatal(err)
		}
	}
	// hop is an orchestration transaction: it locks the task and looks at
	// the claim's queues, then between runs (outside it), then it sends
	// send (if any) and ends with a claim that starts start.
	hop := func(between func(), send, start string) []string {
		t.Helper()
		tx, err := d.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback()
		if _, err := store.CompleteAndLoad(ctx, tx, store.CompleteAndLoadParams{Tasks: []string{task}, Now: now,
			ClaimQueues: []string{queue}}); err != nil {
			t.Fatal(err)
		}
		if between != nil {
			between()
		}
		if send != "" {
			if err := enqueue(tx, send); err != nil {
				t.Fatal(err)
			}
		}
		claimed, err := tx.(store.ClaimCommitter).ClaimAndCommit(ctx, store.StepsClaimParams{Queues: []string{queue},
			Limit: 5, Lease: 30 * time.Second, Owner: "worker-1", Now: now, Start: []store.StepStart{{
				UUID: ids[start], TaskUUID: task, From: "pending", Queue: queue, Name: start, Namespace: "ns",
				Callable: "ns.step", MaxAttempts: 1, TaskName: "t", Version: "1", TaskContext: json.RawMessage(`{}`)}}})
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

	// Empty when looked at: a starts.
	if got := hop(nil, "", "a"); !slices.Equal(got, []string{"a"}) {
		t.Errorf("queues empty: claimed %v, want [a]", got)
	}
	// Empty when looked at, but b arrives before the claim: the start
	// finds a backlog and enqueues c behind it, and nothing searches the
	// queues for either (a claim that searched would return both).
	if got := hop(func() { enqueueNow("b") }, "", "c"); len(got) != 0 {
		t.Errorf("backlog after the look: claimed %v, want none", got)
	}
	for _, n := range []string{"b", "c"} {
		if s := stepState(n); s != "enqueued" {
			t.Errorf("%s is %s, want enqueued (left for the claim loop)", n, s)
		}
	}
	// A backlog when looked at: the claim searches and takes b and c, then
	// d, which the start enqueued behind them.
	if got := hop(nil, "", "d"); !slices.Equal(got, []string{"b", "c", "d"}) {
		t.Errorf("with a backlog: claimed %v, want [b c d]", got)
	}
	// Empty when looked at, but the transaction then sends e: searched.
	if got := hop(nil, "e", "f"); !slices.Equal(got, []string{"e", "f"}) {
		t.Errorf("after a send of its own: claimed %v, want [e f]", got)
	}
}
