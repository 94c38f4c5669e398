package storetest

import (
	"encoding/json"
	"errors"
	"time"

	"github.com/google/uuid"

	"github.com/tasker-go/tasker/store"
)

// testStepsClaimStart covers StepsClaimParams.Start: steps a claim starts
// directly while its queues hold nothing older (the state, history and
// leased message an enqueue plus a claim leave), steps it enqueues behind
// a backlog and then claims in age order, and the refusal of a step that
// left its From state.
func testStepsClaimStart(s *suite) {
	taskCtx := json.RawMessage(`{"order": 12}`)
	task := s.newTask(store.TaskInsertParams{Namespace: "billing", Name: "invoice", Version: "1.2.0", Context: taskCtx})
	ids := map[string]string{}
	var inserts []store.StepInsert
	for i, name := range []string{"charge", "notify", "late", "old", "behind", "older", "next"} {
		ids[name] = uuid.NewString()
		inserts = append(inserts, store.StepInsert{UUID: ids[name], Name: name, Position: i, Callable: "billing." + name, MaxAttempts: 3})
	}
	s.tx(func(tx store.Tx) error {
		return tx.StepsInsert(s.ctx, store.StepsInsertParams{TaskUUID: task, Namespace: "billing", Now: t0, Steps: inserts})
	})
	queue := store.WorkerQueue("billing")
	start := func(names ...string) []store.StepStart {
		var out []store.StepStart
		for _, n := range names {
			out = append(out, store.StepStart{UUID: ids[n], TaskUUID: task, From: "pending", Queue: queue,
				Name: n, Namespace: "billing", Callable: "billing." + n, MaxAttempts: 3,
				TaskName: "invoice", Version: "1.2.0", TaskContext: taskCtx})
		}
		return out
	}
	claim := func(limit int, now time.Time, st []store.StepStart) []store.ClaimedStep {
		s.t.Helper()
		var out []store.ClaimedStep
		s.tx(func(tx store.Tx) error {
			var err error
			out, err = tx.StepsClaim(s.ctx, store.StepsClaimParams{Queues: []string{queue}, Limit: limit, Lease: 30 * time.Second,
				Owner: "worker-1", Now: now, Start: st})
			return err
		})
		return out
	}
	// A message that is not visible yet is no backlog.
	s.tx(func(tx store.Tx) error {
		if err := tx.StepTransition(s.ctx, store.StepTransitionParams{UUID: ids["late"], From: "pending", To: "enqueued",
			Event: "enqueue", Now: t0}); err != nil {
			return err
		}
		return tx.QueueSend(s.ctx, store.QueueSendParams{Now: t0, Messages: []store.QueueMessageInsert{
			{Queue: queue, TaskUUID: task, StepUUID: ids["late"], VisibleAt: at(time.Hour)}}})
	})

	got := claim(3, at(2*time.Second), start("charge", "notify"))
	if len(got) != 2 {
		s.t.Fatalf("started %d steps, want 2", len(got))
	}
	for i, name := range []string{"charge", "notify"} {
		c := got[i]
		if c.StepUUID != ids[name] || c.TaskUUID != task || c.StepName != name || c.Namespace != "billing" || c.TaskName != "invoice" ||
			c.Version != "1.2.0" || c.Callable != "billing."+name || c.Attempt != 1 || c.MaxAttempts != 3 {
			s.t.Errorf("started[%d] = %+v", i, c)
		}
		s.wantJSON(name+" TaskContext", c.TaskContext, taskCtx)
		m := c.Message
		if m.ID == 0 || m.StepUUID != ids[name] || m.TaskUUID != task || m.Queue != queue || m.LeaseOwner != "worker-1" ||
			len(m.LeaseToken) != 32 || m.ReadCount != 1 {
			s.t.Errorf("started[%d] message = %+v", i, m)
		}
		s.wantTimePtr(name+" LeaseUntil", m.LeaseUntil, ptr(at(32*time.Second)))
		st := s.step(ids[name])
		if st.State != "in_progress" || st.Attempts != 1 {
			s.t.Errorf("step %s: state %q attempts %d, want in_progress 1", name, st.State, st.Attempts)
		}
		s.wantTimePtr(name+" LastAttemptedAt", st.LastAttemptedAt, ptr(at(2*time.Second)))
		h := s.stepHistory(ids[name])
		s.wantTransitions("step "+name+" history", ids[name], h, [][3]string{
			{"pending", "enqueued", "enqueue"},
			{"enqueued", "in_progress", "start"},
		})
		if len(h) == 2 {
			s.wantJSON(name+" start metadata", h[1].Metadata, json.RawMessage(`{"worker": "worker-1", "attempt": 1}`))
			s.wantTime(name+" start history CreatedAt", h[1].CreatedAt, at(2*time.Second))
			if h[1].SortKey != h[0].SortKey+1 {
				s.t.Errorf("step %s start sort key %d after %d, want the next", name, h[1].SortKey, h[0].SortKey)
			}
		}
	}
	if got[0].Message.ID == got[1].Message.ID || got[0].Message.LeaseToken == got[1].Message.LeaseToken {
		s.t.Errorf("two started steps share a message or token: %+v / %+v", got[0].Message, got[1].Message)
	}
	s.wantDepth(queue, at(3*time.Second), 1, 2) // late waits, unleased
	if more := s.claimSteps("billing", 10, "worker-2", at(3*time.Second)); len(more) != 0 {
		s.t.Errorf("another worker claimed %d steps", len(more))
	}
	// The lease is a claim's: the completion it carries is accepted.
	var refused []error
	s.tx(func(tx store.Tx) error {
		var err error
		refused, err = tx.StepsComplete(s.ctx, store.StepsCompleteParams{Now: at(4 * time.Second), Completions: []store.StepCompletion{{
			MessageID: got[0].Message.ID, LeaseToken: got[0].Message.LeaseToken, TaskUUID: task, StepUUID: ids["charge"],
			Attempt: 1, Success: true, Result: json.RawMessage(`{"ok": true}`)}}})
		return err
	})
	if len(refused) != 1 || refused[0] != nil {
		s.t.Errorf("completion of a started step refused: %v", refused)
	}

	// Behind a backlog: the claim enqueues its Start steps and takes what
	// waits longest first (old), then, with room left, the new one.
	s.enqueueSteps(task, "billing", []string{ids["old"]}, at(5*time.Second))
	got = claim(1, at(6*time.Second), start("behind"))
	if len(got) != 1 || got[0].StepUUID != ids["old"] {
		s.t.Fatalf("claim behind a backlog took %+v, want step old", got)
	}
	if st := s.step(ids["behind"]); st.State != "enqueued" || st.Attempts != 0 {
		s.t.Errorf("step behind: %s with %d attempts, want enqueued with 0", st.State, st.Attempts)
	}
	s.wantTransitions("step behind history", ids["behind"], s.stepHistory(ids["behind"]), [][3]string{{"pending", "enqueued", "enqueue"}})
	s.enqueueSteps(task, "billing", []string{ids["older"]}, at(7*time.Second))
	got = claim(5, at(8*time.Second), start("next"))
	var names []string
	for _, c := range got {
		names = append(names, c.StepName)
	}
	if len(names) != 3 || names[0] != "behind" || names[1] != "older" || names[2] != "next" {
		s.t.Errorf("claim behind a backlog with room took %v, want [behind older next]", names)
	}

	// A Start step that is no longer pending fails the claim, which
	// changes nothing.
	err := store.InTx(s.ctx, s.d, func(tx store.Tx) error {
		_, err := tx.StepsClaim(s.ctx, store.StepsClaimParams{Queues: []string{queue}, Limit: 5, Lease: time.Minute, Owner: "worker-1",
			Now: at(9 * time.Second), Start: start("notify")})
		return err
	})
	if !errors.Is(err, store.ErrStateConflict) {
		s.t.Errorf("claim starting a step already in progress: %v, want ErrStateConflict", err)
	}
	if st := s.step(ids["notify"]); st.State != "in_progress" || st.Attempts != 1 {
		s.t.Errorf("refused claim left step notify %s with %d attempts", st.State, st.Attempts)
	}
}
