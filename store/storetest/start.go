package storetest

import (
	"encoding/json"
	"errors"
	"time"

	"github.com/google/uuid"

	"github.com/tasker-go/tasker/store"
)

// testStepsStart covers store.StepStarter, for the drivers that have it:
// what QueueReady counts as claimable, what StepsStart leaves behind (the
// state, history and leased message of an enqueue plus a claim), and its
// refusal of a step that left its From state.
func testStepsStart(s *suite) {
	probe, err := s.d.Begin(s.ctx)
	if err != nil {
		s.t.Fatal(err)
	}
	_, ok := probe.(store.StepStarter)
	_ = probe.Rollback()
	if !ok {
		s.t.Skipf("%s transactions do not start steps directly", s.d.Name())
	}
	task := s.newTask(store.TaskInsertParams{Namespace: "billing", Name: "invoice", Version: "1.2.0"})
	a, b, later := uuid.NewString(), uuid.NewString(), uuid.NewString()
	s.tx(func(tx store.Tx) error {
		return tx.StepsInsert(s.ctx, store.StepsInsertParams{TaskUUID: task, Namespace: "billing", Now: t0,
			Steps: []store.StepInsert{
				{UUID: a, Name: "charge", Position: 0, Callable: "billing.Charge", MaxAttempts: 3},
				{UUID: b, Name: "notify", Position: 1, Callable: "billing.Notify", MaxAttempts: 5},
				{UUID: later, Name: "later", Position: 2, Callable: "billing.Later", MaxAttempts: 1},
			}})
	})
	queue := store.WorkerQueue("billing")
	ready := func(now time.Time) bool {
		s.t.Helper()
		var got bool
		s.tx(func(tx store.Tx) error {
			var err error
			got, err = tx.(store.StepStarter).QueueReady(s.ctx, store.QueueReadyParams{Queues: []string{queue}, Now: now})
			return err
		})
		return got
	}
	if ready(at(time.Second)) {
		s.t.Errorf("QueueReady on an empty queue = true")
	}
	// A message not yet visible is not claimable; once visible it is.
	s.tx(func(tx store.Tx) error {
		return tx.QueueSend(s.ctx, store.QueueSendParams{Now: t0, Messages: []store.QueueMessageInsert{
			{Queue: queue, TaskUUID: task, StepUUID: later, VisibleAt: at(time.Minute)}}})
	})
	if ready(at(time.Second)) {
		s.t.Errorf("QueueReady counts a message that is not visible yet")
	}
	if !ready(at(2 * time.Minute)) {
		s.t.Errorf("QueueReady misses a visible, unleased message")
	}
	if other := func() bool {
		var got bool
		s.tx(func(tx store.Tx) error {
			var err error
			got, err = tx.(store.StepStarter).QueueReady(s.ctx,
				store.QueueReadyParams{Queues: []string{store.WorkerQueue("shipping")}, Now: at(2 * time.Minute)})
			return err
		})
		return got
	}(); other {
		s.t.Errorf("QueueReady counts another queue's message")
	}

	var started []store.ClaimedStep
	s.tx(func(tx store.Tx) error {
		var err error
		started, err = tx.(store.StepStarter).StepsStart(s.ctx, store.StepsStartParams{Owner: "worker-1", Lease: 30 * time.Second,
			Now: at(2 * time.Second), Steps: []store.StepStart{
				{UUID: a, TaskUUID: task, From: "pending", Queue: queue, Priority: 4},
				{UUID: b, TaskUUID: task, From: "pending", Queue: queue},
			}})
		return err
	})
	if len(started) != 2 {
		s.t.Fatalf("started %d steps, want 2", len(started))
	}
	for i, w := range []struct{ uuid, name, callable string }{{a, "charge", "billing.Charge"}, {b, "notify", "billing.Notify"}} {
		c := started[i]
		if c.StepUUID != w.uuid || c.TaskUUID != task || c.StepName != w.name || c.Callable != w.callable || c.Attempt != 1 ||
			c.Namespace != "billing" {
			s.t.Errorf("started[%d] = %+v", i, c)
		}
		m := c.Message
		if m.ID == 0 || m.StepUUID != w.uuid || m.Queue != queue || m.LeaseOwner != "worker-1" || m.LeaseToken == "" || m.ReadCount != 1 {
			s.t.Errorf("started[%d] message = %+v", i, m)
		}
		s.wantTimePtr(w.name+" LeaseUntil", m.LeaseUntil, ptr(at(32*time.Second)))
		st := s.step(w.uuid)
		if st.State != "in_progress" || st.Attempts != 1 {
			s.t.Errorf("step %s: state %q attempts %d, want in_progress 1", w.name, st.State, st.Attempts)
		}
		s.wantTimePtr(w.name+" LastAttemptedAt", st.LastAttemptedAt, ptr(at(2*time.Second)))
		h := s.stepHistory(w.uuid)
		s.wantTransitions("step "+w.name+" history", w.uuid, h, [][3]string{
			{"pending", "enqueued", "enqueue"},
			{"enqueued", "in_progress", "start"},
		})
		if len(h) == 2 {
			s.wantJSON(w.name+" start metadata", h[1].Metadata, json.RawMessage(`{"worker": "worker-1", "attempt": 1}`))
			if h[1].SortKey != h[0].SortKey+1 {
				s.t.Errorf("step %s start sort key %d after %d, want the next", w.name, h[1].SortKey, h[0].SortKey)
			}
		}
	}
	if started[0].Message.ID == started[1].Message.ID || started[0].Message.LeaseToken == started[1].Message.LeaseToken {
		s.t.Errorf("two started steps share a message or token: %+v / %+v", started[0].Message, started[1].Message)
	}
	// Leased: another worker's claim does not take them (nor the later
	// message, not visible yet, which the depth counts as unleased).
	if got := s.claimSteps("billing", 10, "worker-2", at(3*time.Second)); len(got) != 0 {
		s.t.Errorf("another worker claimed %d started steps", len(got))
	}
	s.wantDepth(queue, at(3*time.Second), 1, 2)
	// The lease is what a claim's would be: the completion it carries is
	// accepted.
	var refused []error
	s.tx(func(tx store.Tx) error {
		var err error
		refused, err = tx.StepsComplete(s.ctx, store.StepsCompleteParams{Now: at(4 * time.Second), Completions: []store.StepCompletion{{
			MessageID: started[0].Message.ID, LeaseToken: started[0].Message.LeaseToken, TaskUUID: task, StepUUID: a,
			Attempt: 1, Success: true, Result: json.RawMessage(`{"ok": true}`)}}})
		return err
	})
	if len(refused) != 1 || refused[0] != nil {
		s.t.Errorf("completion of a started step refused: %v", refused)
	}

	// A step no longer in its From state is refused, and the refusal
	// rolls back the whole call.
	err = store.InTx(s.ctx, s.d, func(tx store.Tx) error {
		_, err := tx.(store.StepStarter).StepsStart(s.ctx, store.StepsStartParams{Owner: "worker-1", Lease: time.Minute, Now: at(5 * time.Second),
			Steps: []store.StepStart{{UUID: later, TaskUUID: task, From: "pending", Queue: queue},
				{UUID: b, TaskUUID: task, From: "pending", Queue: queue}}})
		return err
	})
	if !errors.Is(err, store.ErrStateConflict) {
		s.t.Errorf("StepsStart of a step already in progress: %v, want ErrStateConflict", err)
	}
	if st := s.step(later); st.State != "pending" || st.Attempts != 0 {
		s.t.Errorf("refused call left step later %s with %d attempts, want pending with 0", st.State, st.Attempts)
	}
}
