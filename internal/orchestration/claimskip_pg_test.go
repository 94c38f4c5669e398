package orchestration

import (
	"context"
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/tasker-go/tasker/store"
	"github.com/tasker-go/tasker/store/postgres"
	"github.com/tasker-go/tasker/store/postgres/pgtest"
)

// hookDriver is a store.Driver whose transactions run afterLoad once
// CompleteAndLoad has returned: between a completion's look at the
// claim's queues and its claim.
type hookDriver struct {
	store.Driver
	afterLoad func()
}

func (d *hookDriver) Begin(ctx context.Context) (store.Tx, error) {
	tx, err := d.Driver.Begin(ctx)
	if err != nil {
		return nil, err
	}
	return hookTx{Tx: tx, d: d}, nil
}

type hookTx struct {
	store.Tx
	d *hookDriver
}

func (t hookTx) CompleteAndLoad(ctx context.Context, p store.CompleteAndLoadParams) (*store.CompleteAndLoadResult, error) {
	res, err := store.CompleteAndLoad(ctx, t.Tx, p)
	if err == nil && t.d.afterLoad != nil {
		t.d.afterLoad()
	}
	return res, err
}

func (t hookTx) ClaimAndCommit(ctx context.Context, p store.StepsClaimParams) ([]store.ClaimedStep, error) {
	return t.Tx.(store.ClaimCommitter).ClaimAndCommit(ctx, p)
}

// TestCompleteAndClaimWakesForStartBehindLateBacklog runs a completion on
// PostgreSQL whose transaction finds the worker's queue empty (so its
// claim does not search it) and makes the next step ready. Alone, the
// claim starts that step and the worker is not woken. When another
// transaction enqueues a step between the look and the claim, the start
// enqueues the ready step behind it, the claim returns nothing, and the
// worker must be woken for both.
func TestCompleteAndClaimWakesForStartBehindLateBacklog(t *testing.T) {
	ctx := t.Context()
	url := pgtest.URL(t)
	pg, err := postgres.Open(ctx, postgres.Config{URL: url, Schema: pgtest.Schema(t, url)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pg.Close() })
	if err := pg.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	d := &hookDriver{Driver: pg}
	tmpls := NewTemplates(d)
	if _, err := tmpls.Register(ctx, []byte(`name: pair
namespace_name: shop
version: 1.0.0
identity_strategy: always_unique
steps:
  - name: first
    handler: {callable: shop.first}
  - name: second
    handler: {callable: shop.second}
    dependencies: [first]
`)); err != nil {
		t.Fatal(err)
	}
	notes := &recorder{}
	o := New(d, tmpls, notes, Config{Owner: "orch-test", JitterFraction: -1})
	queue := store.WorkerQueue(testNS)

	// complete creates a pair, claims its first step as a worker would and
	// completes it with a claim for that worker; it returns the steps the
	// claim took, the state of the second step and whether the worker was
	// woken for the namespace.
	complete := func() (claimed []string, second string, woken bool) {
		t.Helper()
		task, _, _, err := o.CreateTask(ctx, CreateTaskParams{Namespace: testNS, Name: "pair", Context: json.RawMessage(`{}`)})
		if err != nil {
			t.Fatal(err)
		}
		var firsts []store.ClaimedStep
		if err := store.InTx(ctx, pg, func(tx store.Tx) error {
			var err error
			firsts, err = tx.StepsClaim(ctx, store.StepsClaimParams{Queues: []string{queue}, Limit: 10, Lease: time.Minute, Owner: "worker-test"})
			return err
		}); err != nil {
			t.Fatal(err)
		}
		i := slices.IndexFunc(firsts, func(c store.ClaimedStep) bool { return c.TaskUUID == task.UUID })
		if i < 0 {
			t.Fatalf("first step of task %s not claimed: %+v", task.UUID, firsts)
		}
		c := firsts[i]
		before, _ := notes.snapshot()
		refused, got, err := o.CompleteAndClaim(ctx, []store.StepCompletion{{MessageID: c.Message.ID, LeaseToken: c.Message.LeaseToken,
			TaskUUID: c.TaskUUID, StepUUID: c.StepUUID, Attempt: c.Attempt, Success: true, Result: json.RawMessage(`1`)}},
			store.StepsClaimParams{Queues: []string{queue}, Limit: 5, Lease: time.Minute, Owner: "worker-test"})
		if err != nil || refused[0] != nil {
			t.Fatalf("CompleteAndClaim: %v, refused %v", err, refused)
		}
		after, _ := notes.snapshot()
		for _, ns := range after[len(before):] {
			woken = woken || slices.Contains(ns, testNS)
		}
		_, steps, _, err := o.TaskStatus(ctx, task.UUID)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range steps {
			if s.Name == "second" {
				second = s.State
				for _, g := range got {
					if g.StepUUID == s.UUID {
						claimed = append(claimed, s.Name)
					}
				}
			}
		}
		if len(got) != len(claimed) {
			t.Errorf("the claim took %d steps, %d of them the task's second: %+v", len(got), len(claimed), got)
		}
		return claimed, second, woken
	}

	claimed, second, woken := complete()
	if !slices.Equal(claimed, []string{"second"}) || second != "in_progress" || woken {
		t.Errorf("queue empty: claimed %v, second %s, worker woken %v; want [second], in_progress, not woken", claimed, second, woken)
	}

	// Another task's step is enqueued between the look and the claim.
	d.afterLoad = func() {
		d.afterLoad = nil
		other, otherStep := uuid.NewString(), uuid.NewString()
		if err := store.InTx(ctx, pg, func(tx store.Tx) error {
			if err := tx.TaskInsert(ctx, store.TaskInsertParams{UUID: other, Namespace: testNS, Name: "pair", Version: "1.0.0",
				State: "in_progress", Context: json.RawMessage(`{}`)}); err != nil {
				return err
			}
			if err := tx.StepsInsert(ctx, store.StepsInsertParams{TaskUUID: other, Namespace: testNS,
				Steps: []store.StepInsert{{UUID: otherStep, Name: "first", Callable: "shop.first", MaxAttempts: 1}}}); err != nil {
				return err
			}
			if err := tx.StepTransition(ctx, store.StepTransitionParams{UUID: otherStep, From: "pending", To: "enqueued", Event: "enqueue"}); err != nil {
				return err
			}
			return tx.QueueSend(ctx, store.QueueSendParams{Messages: []store.QueueMessageInsert{{Queue: queue, TaskUUID: other, StepUUID: otherStep}}})
		}); err != nil {
			t.Error(err)
		}
	}
	claimed, second, woken = complete()
	if len(claimed) != 0 || second != "enqueued" || !woken {
		t.Errorf("backlog after the look: claimed %v, second %s, worker woken %v; want none, enqueued, woken", claimed, second, woken)
	}
}
