package storetest

import (
	"context"
	"encoding/json"
	"time"

	"github.com/tasker-go/tasker/store"
)

// testInTxClaim: a claim that ends a transaction (store.InTxClaim, which
// a driver may send together with its COMMIT) sees the transaction's own
// writes, commits them with the claim, claims alone when the transaction
// wrote nothing, claims nothing for a zero limit, and on failure leaves
// nothing of the transaction behind.
func testInTxClaim(s *suite) {
	task := s.newTask(store.TaskInsertParams{Namespace: "ship", Name: "order", Version: "1.0.0"})
	ids := s.newSteps(task, "ship", "pack", "label", "post", "notify")
	pack, label, post, notify := ids[0], ids[1], ids[2], ids[3]
	claim := func(limit int, now time.Time) store.StepsClaimParams {
		return store.StepsClaimParams{Queues: []string{store.WorkerQueue("ship")}, Limit: limit,
			Lease: 30 * time.Second, Owner: "w-commit", Now: now}
	}
	enqueue := func(tx store.Tx, id string, now time.Time) error {
		if err := tx.StepTransition(s.ctx, store.StepTransitionParams{
			UUID: id, From: "pending", To: "enqueued", Event: "enqueue", Now: now}); err != nil {
			return err
		}
		return tx.QueueSend(s.ctx, store.QueueSendParams{Now: now, Messages: []store.QueueMessageInsert{
			{Queue: store.WorkerQueue("ship"), TaskUUID: task, StepUUID: id, Payload: json.RawMessage(`{}`)}}})
	}

	// The transaction's own enqueue is claimed by its closing claim.
	got, err := store.InTxClaim(s.ctx, s.d, func(tx store.Tx) (store.StepsClaimParams, error) {
		return claim(5, at(time.Second)), enqueue(tx, pack, at(time.Second))
	})
	if err != nil {
		s.t.Fatalf("enqueue and claim: %v", err)
	}
	if len(got) != 1 || got[0].StepUUID != pack || got[0].Attempt != 1 || got[0].Message.LeaseToken == "" {
		s.t.Fatalf("claimed %+v, want the one step the transaction enqueued", got)
	}
	if st := s.step(pack); st.State != "in_progress" || st.Attempts != 1 {
		s.t.Errorf("claimed step after commit: %s attempts %d, want in_progress 1", st.State, st.Attempts)
	}
	s.wantTransitions("claimed step history", pack, s.stepHistory(pack), [][3]string{
		{"pending", "enqueued", "enqueue"}, {"enqueued", "in_progress", "start"}})
	s.wantDepth(store.WorkerQueue("ship"), at(time.Second), 0, 1)

	// A transaction that wrote nothing claims what is ready.
	s.enqueueSteps(task, "ship", []string{label}, at(2*time.Second))
	got, err = store.InTxClaim(s.ctx, s.d, func(store.Tx) (store.StepsClaimParams, error) {
		return claim(5, at(3*time.Second)), nil
	})
	if err != nil || len(got) != 1 || got[0].StepUUID != label {
		s.t.Fatalf("claim alone: %+v, %v; want the step enqueued before", got, err)
	}
	if st := s.step(label); st.State != "in_progress" {
		s.t.Errorf("step claimed alone is %s, want in_progress", st.State)
	}

	// A zero limit commits the writes and claims nothing.
	got, err = store.InTxClaim(s.ctx, s.d, func(tx store.Tx) (store.StepsClaimParams, error) {
		return claim(0, at(4*time.Second)), enqueue(tx, post, at(4*time.Second))
	})
	if err != nil || len(got) != 0 {
		s.t.Fatalf("zero-limit claim: %+v, %v; want nothing claimed, no error", got, err)
	}
	if st := s.step(post); st.State != "enqueued" {
		s.t.Errorf("step enqueued by a transaction that claimed nothing is %s, want enqueued (committed)", st.State)
	}

	// The claim fails (its context ends after the transaction's writes):
	// the writes are rolled back with it.
	ctx, cancel := context.WithCancel(s.ctx)
	_, err = store.InTxClaim(ctx, s.d, func(tx store.Tx) (store.StepsClaimParams, error) {
		err := enqueue(tx, notify, at(5*time.Second))
		cancel()
		return claim(5, at(5*time.Second)), err
	})
	if err == nil {
		s.t.Fatal("claim with a cancelled context succeeded")
	}
	if st := s.step(notify); st.State != "pending" {
		s.t.Errorf("step enqueued by a failed claim's transaction is %s, want pending (rolled back)", st.State)
	}
	if st := s.step(post); st.State != "enqueued" {
		s.t.Errorf("step enqueued earlier is %s after a failed claim, want enqueued", st.State)
	}
	s.wantDepth(store.WorkerQueue("ship"), at(5*time.Second), 1, 2)
}

// testCancelledTx: a transaction whose context ends before its COMMIT
// commits nothing, whether the next call is a statement or the COMMIT.
func testCancelledTx(s *suite) {
	task := s.newTask(store.TaskInsertParams{Namespace: "ship", Name: "order", Version: "1.0.0"})
	ids := s.newSteps(task, "ship", "pack", "label")
	for i, last := range []string{"statement", "commit"} {
		ctx, cancel := context.WithCancel(s.ctx)
		tx, err := s.d.Begin(ctx)
		if err != nil {
			s.t.Fatal(err)
		}
		if err := tx.StepTransition(ctx, store.StepTransitionParams{UUID: ids[i], From: "pending", To: "enqueued",
			Event: "enqueue", Now: at(time.Second)}); err != nil {
			s.t.Fatal(err)
		}
		cancel()
		if last == "statement" {
			err = tx.StepTransition(ctx, store.StepTransitionParams{UUID: ids[1-i], From: "pending", To: "enqueued",
				Event: "enqueue", Now: at(time.Second)})
			if err == nil {
				s.t.Errorf("a statement with an ended context succeeded")
			}
			_ = tx.Rollback()
		} else if err := tx.Commit(); err == nil {
			s.t.Errorf("a commit with an ended context succeeded")
		}
		if st := s.step(ids[i]); st.State != "pending" {
			s.t.Errorf("cancelled before the %s: step is %s, want pending (nothing committed)", last, st.State)
		}
	}
	// The connection the cancelled transactions used is usable again.
	if err := store.InTx(s.ctx, s.d, func(tx store.Tx) error {
		return tx.StepTransition(s.ctx, store.StepTransitionParams{UUID: ids[0], From: "pending", To: "enqueued",
			Event: "enqueue", Now: at(2 * time.Second)})
	}); err != nil {
		s.t.Fatalf("transaction after the cancelled ones: %v", err)
	}
	if st := s.step(ids[0]); st.State != "enqueued" {
		s.t.Errorf("step is %s after a committed enqueue, want enqueued", st.State)
	}
}
