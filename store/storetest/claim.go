package storetest

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/tasker-go/tasker/store"
)

func testStepsClaim(s *suite) {
	taskCtx := json.RawMessage(`{"customer": {"id": 7, "tier": "gold"}}`)
	task := s.newTask(store.TaskInsertParams{Namespace: "billing", Name: "invoice", Version: "1.2.0", Context: taskCtx})
	a, b := uuid.NewString(), uuid.NewString()
	s.tx(func(tx store.Tx) error {
		return tx.StepsInsert(s.ctx, store.StepsInsertParams{
			TaskUUID: task, Namespace: "billing", Now: t0,
			Steps: []store.StepInsert{
				{UUID: a, Name: "charge", Position: 0, Callable: "billing.Charge", MaxAttempts: 3, Retryable: true},
				{UUID: b, Name: "notify", Position: 1, Callable: "billing.Notify", MaxAttempts: 5, Retryable: false},
			},
		})
	})
	s.enqueueSteps(task, "billing", []string{a, b}, at(time.Second))

	claimed := s.claimSteps("billing", 10, "worker-1", at(2*time.Second))
	if len(claimed) != 2 {
		s.t.Fatalf("claimed %d steps, want 2", len(claimed))
	}
	tokens := map[string]bool{}
	for i, w := range []struct {
		uuid, name, callable string
		max                  int
	}{{a, "charge", "billing.Charge", 3}, {b, "notify", "billing.Notify", 5}} {
		c := claimed[i]
		what := fmt.Sprintf("claimed[%d]", i)
		if c.StepUUID != w.uuid || c.TaskUUID != task || c.StepName != w.name || c.Namespace != "billing" ||
			c.TaskName != "invoice" || c.Version != "1.2.0" || c.Callable != w.callable || c.Attempt != 1 || c.MaxAttempts != w.max {
			s.t.Errorf("%s = %+v", what, c)
		}
		s.wantJSON(what+" TaskContext", c.TaskContext, taskCtx)
		m := c.Message
		if m.ID == 0 || m.StepUUID != w.uuid || m.TaskUUID != task || m.Queue != store.WorkerQueue("billing") ||
			m.LeaseOwner != "worker-1" || m.ReadCount != 1 {
			s.t.Errorf("%s message = %+v", what, m)
		}
		if m.LeaseToken == "" || tokens[m.LeaseToken] {
			s.t.Errorf("%s lease token %q: want a fresh, unique token", what, m.LeaseToken)
		}
		tokens[m.LeaseToken] = true
		s.wantTimePtr(what+" LeaseUntil", m.LeaseUntil, ptr(at(32*time.Second)))

		st := s.step(w.uuid)
		if st.State != "in_progress" || st.Attempts != 1 {
			s.t.Errorf("step %s after claim: state %q attempts %d, want in_progress 1", w.name, st.State, st.Attempts)
		}
		s.wantTimePtr("LastAttemptedAt", st.LastAttemptedAt, ptr(at(2*time.Second)))
		s.wantTime("UpdatedAt", st.UpdatedAt, at(2*time.Second))
		h := s.stepHistory(w.uuid)
		s.wantTransitions("step "+w.name+" history", w.uuid, h, [][3]string{
			{"pending", "enqueued", "enqueue"},
			{"enqueued", "in_progress", "start"},
		})
		if len(h) == 2 {
			s.wantJSON("step "+w.name+" start history Metadata", h[1].Metadata, json.RawMessage(`{"worker": "worker-1", "attempt": 1}`))
			s.wantTime("step "+w.name+" start history CreatedAt", h[1].CreatedAt, at(2*time.Second))
			if h[1].SortKey != h[0].SortKey+1 {
				s.t.Errorf("step %s start history sort key %d after %d, want the next", w.name, h[1].SortKey, h[0].SortKey)
			}
		}
	}
	s.wantDepth(store.WorkerQueue("billing"), at(2*time.Second), 0, 2)
	if more := s.claimSteps("billing", 10, "worker-2", at(3*time.Second)); len(more) != 0 {
		s.t.Errorf("claimed %d steps that are already leased", len(more))
	}
	if other := s.claimSteps("shipping", 10, "worker-2", at(3*time.Second)); len(other) != 0 {
		s.t.Errorf("claimed %d steps from another namespace's queue", len(other))
	}

	// A failed attempt comes back through retry; the next claim is attempt 2.
	errs := s.complete(at(4*time.Second), store.StepCompletion{
		MessageID: claimed[0].Message.ID, LeaseToken: claimed[0].Message.LeaseToken, TaskUUID: task, StepUUID: a,
		Attempt: 1, Error: json.RawMessage(`{"message": "card declined", "type": "handler_error", "retryable": true}`),
	})
	s.wantErr("completion", errs[0], nil)
	s.tx(func(tx store.Tx) error {
		if err := tx.StepTransition(s.ctx, store.StepTransitionParams{UUID: a, From: "enqueued_as_error_for_orchestration", To: "waiting_for_retry", Event: "schedule_retry", Now: at(5 * time.Second)}); err != nil {
			return err
		}
		return tx.StepTransition(s.ctx, store.StepTransitionParams{UUID: a, From: "waiting_for_retry", To: "pending", Event: "e", Now: at(5 * time.Second)})
	})
	s.enqueueSteps(task, "billing", []string{a}, at(6*time.Second))
	retry := s.claimSteps("billing", 10, "worker-2", at(7*time.Second))
	if len(retry) != 1 || retry[0].StepUUID != a || retry[0].Attempt != 2 || retry[0].Message.LeaseOwner != "worker-2" {
		s.t.Fatalf("retry claim = %+v, want step charge attempt 2", retry)
	}
	if st := s.step(a); st.State != "in_progress" || st.Attempts != 2 {
		s.t.Errorf("after the retry claim: state %q attempts %d, want in_progress 2", st.State, st.Attempts)
	}
}

// complete runs StepsComplete in a committed transaction and returns the
// per-completion errors.
func (s *suite) complete(now time.Time, cs ...store.StepCompletion) []error {
	s.t.Helper()
	var errs []error
	s.tx(func(tx store.Tx) error {
		var err error
		errs, err = tx.StepsComplete(s.ctx, store.StepsCompleteParams{Completions: cs, Now: now})
		return err
	})
	if len(errs) != len(cs) {
		s.t.Fatalf("StepsComplete returned %d errors for %d completions", len(errs), len(cs))
	}
	return errs
}

func testStepsClaimSkipsStale(s *suite) {
	task := s.newTask(store.TaskInsertParams{})
	ids := s.newSteps(task, "ns", "cancelled", "live", "twice")
	cancelled, live, twice := ids[0], ids[1], ids[2]
	s.enqueueSteps(task, "ns", ids, at(time.Second))
	s.tx(func(tx store.Tx) error {
		if err := tx.StepTransition(s.ctx, store.StepTransitionParams{UUID: cancelled, From: "enqueued", To: "cancelled", Event: "cancel", Now: at(2 * time.Second)}); err != nil {
			return err
		}
		// A second message for a step (a redelivery): only one may run it.
		return tx.QueueSend(s.ctx, store.QueueSendParams{Now: at(2 * time.Second), Messages: []store.QueueMessageInsert{
			{Queue: store.WorkerQueue("ns"), TaskUUID: task, StepUUID: twice},
		}})
	})

	claimed := s.claimSteps("ns", 10, "w", at(3*time.Second))
	var got []string
	for _, c := range claimed {
		got = append(got, c.StepUUID)
	}
	s.wantSet("claimed steps", got, []string{live, twice})

	if st := s.step(cancelled); st.State != "cancelled" || st.Attempts != 0 {
		s.t.Errorf("cancelled step after claim: state %q attempts %d, want cancelled 0", st.State, st.Attempts)
	}
	s.wantTransitions("cancelled step history", cancelled, s.stepHistory(cancelled), [][3]string{
		{"pending", "enqueued", "enqueue"}, {"enqueued", "cancelled", "cancel"},
	})
	if st := s.step(twice); st.State != "in_progress" || st.Attempts != 1 {
		s.t.Errorf("step with two messages: state %q attempts %d, want in_progress 1", st.State, st.Attempts)
	}
	// The stale messages are gone; only the two live leases remain.
	s.wantDepth(store.WorkerQueue("ns"), at(3*time.Second), 0, 2)
	if again := s.claimSteps("ns", 10, "w", at(time.Hour)); len(again) != 0 {
		s.t.Errorf("claimed %d more steps", len(again))
	}
}

func testStepsComplete(s *suite) {
	task := s.newTask(store.TaskInsertParams{})
	ids := s.newSteps(task, "ns", "ok", "fails")
	s.enqueueSteps(task, "ns", ids, at(time.Second))
	claimed := s.claimSteps("ns", 10, "w", at(2*time.Second))
	if len(claimed) != 2 {
		s.t.Fatalf("claimed %d steps, want 2", len(claimed))
	}
	byStep := map[string]store.ClaimedStep{}
	for _, c := range claimed {
		byStep[c.StepUUID] = c
	}
	okC, failC := byStep[ids[0]], byStep[ids[1]]
	result := json.RawMessage(`{"charged": 12.5, "currency": "EUR"}`)
	failure := json.RawMessage(`{"message": "timeout", "type": "timeout", "retryable": true, "attempt": 1}`)

	errs := s.complete(at(3*time.Second),
		store.StepCompletion{
			MessageID: okC.Message.ID, LeaseToken: okC.Message.LeaseToken, TaskUUID: task, StepUUID: ids[0], Attempt: 1,
			Success: true, Result: result, Metadata: json.RawMessage(`{"duration_ms": 12, "worker": "w"}`),
		},
		store.StepCompletion{
			MessageID: failC.Message.ID, LeaseToken: failC.Message.LeaseToken, TaskUUID: task, StepUUID: ids[1], Attempt: 1,
			Error: failure, Metadata: json.RawMessage(`{"duration_ms": 30000}`),
		},
	)
	s.wantErr("success completion", errs[0], nil)
	s.wantErr("failure completion", errs[1], nil)

	ok := s.step(ids[0])
	if ok.State != "enqueued_for_orchestration" || ok.Attempts != 1 {
		s.t.Errorf("succeeded step: state %q attempts %d, want enqueued_for_orchestration 1", ok.State, ok.Attempts)
	}
	s.wantJSON("succeeded step Result", ok.Result, result)
	s.wantTime("succeeded step UpdatedAt", ok.UpdatedAt, at(3*time.Second))
	h := s.stepHistory(ids[0])
	s.wantTransitions("succeeded step history", ids[0], h, [][3]string{
		{"pending", "enqueued", "enqueue"}, {"enqueued", "in_progress", "start"}, {"in_progress", "enqueued_for_orchestration", "succeed"},
	})
	if len(h) == 3 {
		s.wantJSON("completion history Metadata", h[2].Metadata, json.RawMessage(`{"duration_ms": 12, "worker": "w"}`))
		s.wantTime("completion history CreatedAt", h[2].CreatedAt, at(3*time.Second))
	}

	failed := s.step(ids[1])
	if failed.State != "enqueued_as_error_for_orchestration" || failed.Attempts != 1 {
		s.t.Errorf("failed step: state %q attempts %d, want enqueued_as_error_for_orchestration 1", failed.State, failed.Attempts)
	}
	s.wantJSON("failed step Error", failed.Error, failure)
	if failed.Result != nil {
		s.t.Errorf("failed step Result = %s, want unset", failed.Result)
	}
	s.wantTransitions("failed step history", ids[1], s.stepHistory(ids[1]), [][3]string{
		{"pending", "enqueued", "enqueue"}, {"enqueued", "in_progress", "start"}, {"in_progress", "enqueued_as_error_for_orchestration", "fail_attempt"},
	})

	s.wantDepth(store.WorkerQueue("ns"), at(3*time.Second), 0, 0)

	// The same completion delivered again finds no lease and changes nothing.
	errs = s.complete(at(4*time.Second), store.StepCompletion{
		MessageID: okC.Message.ID, LeaseToken: okC.Message.LeaseToken, TaskUUID: task, StepUUID: ids[0], Attempt: 1,
		Success: true, Result: json.RawMessage(`{"second": true}`),
	})
	s.wantErr("replayed completion", errs[0], store.ErrLeaseLost)
	if again := s.step(ids[0]); again.State != "enqueued_for_orchestration" || !again.UpdatedAt.Equal(at(3*time.Second)) {
		s.t.Errorf("replayed completion changed the step: %+v", again)
	} else {
		s.wantJSON("Result after a replayed completion", again.Result, result)
	}
	if h := s.stepHistory(ids[0]); len(h) != 3 {
		s.t.Errorf("replayed completion wrote history: %d rows, want 3", len(h))
	}
}

// testStepsCompleteRefused checks that a completion whose lease or attempt
// does not match is refused on its own: other completions in the same call
// still apply, and the refused step and its message are left as they were.
func testStepsCompleteRefused(s *suite) {
	task := s.newTask(store.TaskInsertParams{})
	ids := s.newSteps(task, "ns", "good", "wrong_token", "wrong_attempt", "taken_over")
	s.enqueueSteps(task, "ns", ids, at(time.Second))
	claimed := s.claimSteps("ns", 10, "w1", at(2*time.Second))
	if len(claimed) != 4 {
		s.t.Fatalf("claimed %d steps, want 4", len(claimed))
	}
	c := map[string]store.ClaimedStep{}
	for _, cl := range claimed {
		c[cl.StepUUID] = cl
	}
	good, wrongToken, wrongAttempt, takenOver := c[ids[0]], c[ids[1]], c[ids[2]], c[ids[3]]

	// The lease of taken_over expires and a rescuer takes its message.
	var rescued []store.QueueMessage
	s.tx(func(tx store.Tx) error {
		if err := tx.QueueExtend(s.ctx, store.QueueExtendParams{ID: good.Message.ID, Token: good.Message.LeaseToken, Lease: time.Hour, Now: at(10 * time.Second)}); err != nil {
			return err
		}
		if err := tx.QueueExtend(s.ctx, store.QueueExtendParams{ID: wrongToken.Message.ID, Token: wrongToken.Message.LeaseToken, Lease: time.Hour, Now: at(10 * time.Second)}); err != nil {
			return err
		}
		if err := tx.QueueExtend(s.ctx, store.QueueExtendParams{ID: wrongAttempt.Message.ID, Token: wrongAttempt.Message.LeaseToken, Lease: time.Hour, Now: at(10 * time.Second)}); err != nil {
			return err
		}
		var err error
		rescued, err = tx.QueueClaim(s.ctx, store.QueueClaimParams{
			Queues: []string{store.WorkerQueue("ns")}, Limit: 10, Lease: time.Minute, Owner: "rescuer", IncludeExpired: true, Now: at(time.Minute),
		})
		return err
	})
	if len(rescued) != 1 || rescued[0].ID != takenOver.Message.ID {
		s.t.Fatalf("rescuer took %+v, want only the message of taken_over", rescued)
	}

	completion := func(cl store.ClaimedStep, token string, attempt int) store.StepCompletion {
		return store.StepCompletion{
			MessageID: cl.Message.ID, LeaseToken: token, TaskUUID: task, StepUUID: cl.StepUUID, Attempt: attempt,
			Success: true, Result: json.RawMessage(`{"from": "` + cl.StepName + `"}`),
		}
	}
	errs := s.complete(at(2*time.Minute),
		completion(wrongToken, good.Message.LeaseToken, 1),
		completion(good, good.Message.LeaseToken, 1),
		completion(wrongAttempt, wrongAttempt.Message.LeaseToken, 2),
		completion(takenOver, takenOver.Message.LeaseToken, 1),
	)
	for i, want := range []error{store.ErrLeaseLost, nil, store.ErrLeaseLost, store.ErrLeaseLost} {
		s.wantErr(fmt.Sprintf("completion %d", i), errs[i], want)
	}

	if st := s.step(good.StepUUID); st.State != "enqueued_for_orchestration" {
		s.t.Errorf("the valid completion in the batch was not applied: state %q", st.State)
	}
	for _, cl := range []store.ClaimedStep{wrongToken, wrongAttempt, takenOver} {
		st := s.step(cl.StepUUID)
		if st.State != "in_progress" || st.Attempts != 1 || st.Result != nil || !st.UpdatedAt.Equal(at(2*time.Second)) {
			s.t.Errorf("refused completion of %s changed the step: state %q attempts %d result %s updated %v",
				cl.StepName, st.State, st.Attempts, st.Result, st.UpdatedAt)
		}
		if h := s.stepHistory(cl.StepUUID); len(h) != 2 {
			s.t.Errorf("refused completion of %s wrote history: %d rows, want 2", cl.StepName, len(h))
		}
	}
	// The refused messages are still leased by their holders: wrong_token
	// and wrong_attempt by w1 (their completions can still be retried
	// correctly), taken_over by the rescuer.
	s.wantDepth(store.WorkerQueue("ns"), at(2*time.Minute), 0, 3)
	for _, cl := range []store.ClaimedStep{wrongToken, wrongAttempt} {
		err := s.try(func(tx store.Tx) error {
			return tx.QueueExtend(s.ctx, store.QueueExtendParams{ID: cl.Message.ID, Token: cl.Message.LeaseToken, Lease: time.Hour, Now: at(2 * time.Minute)})
		})
		if err != nil {
			s.t.Errorf("lease of %s after its refused completion: %v", cl.StepName, err)
		}
	}

	errs = s.complete(at(3*time.Minute),
		completion(wrongToken, wrongToken.Message.LeaseToken, 1),
		completion(wrongAttempt, wrongAttempt.Message.LeaseToken, 1),
	)
	if err := errors.Join(errs...); err != nil {
		s.t.Errorf("corrected completions: %v", err)
	}
	for _, cl := range []store.ClaimedStep{wrongToken, wrongAttempt} {
		st := s.step(cl.StepUUID)
		if st.State != "enqueued_for_orchestration" {
			s.t.Errorf("corrected completion of %s: state %q", cl.StepName, st.State)
		}
		s.wantJSON("corrected completion Result", st.Result, json.RawMessage(`{"from": "`+cl.StepName+`"}`))
	}
	s.wantDepth(store.WorkerQueue("ns"), at(3*time.Minute), 0, 1)
}

// testCompleteAndLoad: the compound start of an orchestration transaction
// locks the tasks, applies the completions (refusing a stale lease) and
// returns the tasks and their steps as the completions left them.
func testCompleteAndLoad(s *suite) {
	task := s.newTask(store.TaskInsertParams{State: "steps_in_process"})
	other := s.newTask(store.TaskInsertParams{State: "steps_in_process"})
	ids := s.newSteps(task, "ns", "a", "b", "c")
	otherIDs := s.newSteps(other, "ns", "x")
	s.enqueueSteps(task, "ns", ids[:2], at(time.Second))
	claimed := s.claimSteps("ns", 10, "w", at(2*time.Second))
	if len(claimed) != 2 {
		s.t.Fatalf("claimed %d steps, want 2", len(claimed))
	}
	byStep := map[string]store.ClaimedStep{}
	for _, c := range claimed {
		byStep[c.StepUUID] = c
	}
	a, b := byStep[ids[0]], byStep[ids[1]]
	var res *store.CompleteAndLoadResult
	s.tx(func(tx store.Tx) error {
		var err error
		res, err = store.CompleteAndLoad(s.ctx, tx, store.CompleteAndLoadParams{
			Tasks: []string{task, other},
			Completions: []store.StepCompletion{
				{MessageID: a.Message.ID, LeaseToken: a.Message.LeaseToken, TaskUUID: task, StepUUID: ids[0], Attempt: 1,
					Success: true, Result: json.RawMessage(`{"n": 1}`)},
				{MessageID: b.Message.ID, LeaseToken: "not-the-lease", TaskUUID: task, StepUUID: ids[1], Attempt: 1, Success: true},
			},
			Now: at(3 * time.Second),
		})
		return err
	})
	if len(res.Refused) != 2 {
		s.t.Fatalf("Refused has %d entries, want 2", len(res.Refused))
	}
	s.wantErr("completion holding the lease", res.Refused[0], nil)
	s.wantErr("completion with a stale lease", res.Refused[1], store.ErrLeaseLost)
	if res.Tasks[task] == nil || res.Tasks[other] == nil || res.Tasks[task].State != "steps_in_process" {
		s.t.Fatalf("Tasks = %+v, want both tasks", res.Tasks)
	}
	var names, states []string
	for _, st := range res.Steps[task] {
		names, states = append(names, st.Name), append(states, st.State)
	}
	s.wantStrings("loaded step names", names, []string{"a", "b", "c"})
	s.wantStrings("loaded step states", states, []string{"enqueued_for_orchestration", "in_progress", "pending"})
	if len(res.Steps[other]) != 1 || res.Steps[other][0].UUID != otherIDs[0] {
		s.t.Errorf("steps of the other task = %+v", res.Steps[other])
	}
	s.wantTransitions("completed step history", ids[0], s.stepHistory(ids[0]), [][3]string{
		{"pending", "enqueued", "enqueue"}, {"enqueued", "in_progress", "start"}, {"in_progress", "enqueued_for_orchestration", "succeed"},
	})

	err := s.try(func(tx store.Tx) error {
		_, err := store.CompleteAndLoad(s.ctx, tx, store.CompleteAndLoadParams{Tasks: []string{"00000000-0000-0000-0000-000000000000"}})
		return err
	})
	s.wantErr("load of a missing task", err, store.ErrNotFound)
	if len(res.Settled) != 0 {
		s.t.Errorf("Settled = %v without SettleSuccesses, want none", res.Settled)
	}

	// SettleSuccesses: a driver may move a success straight to complete,
	// with both transitions in its history; a failure is never settled.
	s.enqueueSteps(task, "ns", ids[2:], at(4*time.Second))
	claimed = append(s.claimSteps("ns", 10, "w", at(5*time.Second)), b)
	byStep = map[string]store.ClaimedStep{}
	for _, c := range claimed {
		byStep[c.StepUUID] = c
	}
	b, c := byStep[ids[1]], byStep[ids[2]]
	s.tx(func(tx store.Tx) error {
		var err error
		res, err = store.CompleteAndLoad(s.ctx, tx, store.CompleteAndLoadParams{
			Tasks: []string{task}, SettleSuccesses: true, Now: at(6 * time.Second),
			Completions: []store.StepCompletion{
				{MessageID: b.Message.ID, LeaseToken: b.Message.LeaseToken, TaskUUID: task, StepUUID: ids[1], Attempt: 1,
					Success: false, Error: json.RawMessage(`{"message":"no"}`)},
				{MessageID: c.Message.ID, LeaseToken: c.Message.LeaseToken, TaskUUID: task, StepUUID: ids[2], Attempt: 1,
					Success: true, Result: json.RawMessage(`{"n": 3}`)},
			},
		})
		return err
	})
	s.wantErr("settled success", res.Refused[1], nil)
	s.wantErr("failure next to a settled success", res.Refused[0], nil)
	if res.Settled[ids[1]] {
		s.t.Error("a failure was reported settled")
	}
	got := s.step(ids[2])
	if res.Settled[ids[2]] {
		if got.State != "complete" || got.CompletedAt == nil || string(got.Result) != `{"n": 3}` {
			s.t.Errorf("settled step: %s completed_at %v result %s, want complete with both", got.State, got.CompletedAt, got.Result)
		}
		s.wantTransitions("settled step history", ids[2], s.stepHistory(ids[2]), [][3]string{
			{"pending", "enqueued", "enqueue"}, {"enqueued", "in_progress", "start"},
			{"in_progress", "enqueued_for_orchestration", "succeed"}, {"enqueued_for_orchestration", "complete", "complete"},
		})
	} else if got.State != "enqueued_for_orchestration" {
		s.t.Errorf("unsettled success left in %s, want enqueued_for_orchestration", got.State)
	}
	if st := s.step(ids[1]).State; st != "enqueued_as_error_for_orchestration" {
		s.t.Errorf("failure left in %s, want enqueued_as_error_for_orchestration", st)
	}
	for _, st := range res.Steps[task] {
		if st.UUID == ids[2] && st.State != got.State {
			s.t.Errorf("loaded state of the settled step %s, stored %s", st.State, got.State)
		}
	}
}

// testStepsCompleteLargeBatch completes more steps in one call than a
// driver may write one statement each for: successes (settled or not),
// failures, a stale lease and a second completion of one step, each with
// the history its outcome calls for and nothing for the refused ones.
func testStepsCompleteLargeBatch(s *suite) {
	for _, settle := range []bool{false, true} {
		task := s.newTask(store.TaskInsertParams{})
		names := make([]string, 14)
		for i := range names {
			names[i] = fmt.Sprintf("s%02d", i)
		}
		ids := s.newSteps(task, "ns", names...)
		s.enqueueSteps(task, "ns", ids, at(time.Second))
		claimed := s.claimSteps("ns", len(ids), "w", at(2*time.Second))
		if len(claimed) != len(ids) {
			s.t.Fatalf("claimed %d steps, want %d", len(claimed), len(ids))
		}
		byStep := map[string]store.ClaimedStep{}
		for _, c := range claimed {
			byStep[c.StepUUID] = c
		}
		var comps []store.StepCompletion
		for i, id := range ids {
			c := byStep[id]
			comp := store.StepCompletion{MessageID: c.Message.ID, LeaseToken: c.Message.LeaseToken, TaskUUID: task, StepUUID: id,
				Attempt: 1, Metadata: json.RawMessage(fmt.Sprintf(`{"i": %d}`, i))}
			switch i % 3 {
			case 0, 1:
				comp.Success, comp.Result = true, json.RawMessage(fmt.Sprintf(`{"n": %d}`, i))
			case 2:
				comp.Error = json.RawMessage(`{"message": "no"}`)
			}
			if i == 4 {
				comp.LeaseToken = "stale"
			}
			comps = append(comps, comp)
		}
		// A second completion of step 0, after the first: refused.
		dup := comps[0]
		dup.Metadata = json.RawMessage(`{"dup": true}`)
		comps = append(comps, dup)

		var refused []error
		var settled map[string]bool
		s.tx(func(tx store.Tx) error {
			res, err := store.CompleteAndLoad(s.ctx, tx, store.CompleteAndLoadParams{
				Tasks: []string{task}, Completions: comps, SettleSuccesses: settle, Now: at(3 * time.Second)})
			if err == nil {
				refused, settled = res.Refused, res.Settled
			}
			return err
		})
		if len(refused) != len(comps) {
			s.t.Fatalf("settle %v: Refused has %d entries, want %d", settle, len(refused), len(comps))
		}
		for i, id := range ids {
			what := fmt.Sprintf("settle %v, step %d", settle, i)
			h := s.stepHistory(id)
			want := [][3]string{{"pending", "enqueued", "enqueue"}, {"enqueued", "in_progress", "start"}}
			switch {
			case i == 4:
				s.wantErr(what+" with a stale lease", refused[i], store.ErrLeaseLost)
				if st := s.step(id).State; st != "in_progress" {
					s.t.Errorf("%s: refused step left %s, want in_progress", what, st)
				}
			case i%3 == 2:
				s.wantErr(what, refused[i], nil)
				want = append(want, [3]string{"in_progress", "enqueued_as_error_for_orchestration", "fail_attempt"})
			default:
				s.wantErr(what, refused[i], nil)
				want = append(want, [3]string{"in_progress", "enqueued_for_orchestration", "succeed"})
				if settle {
					want = append(want, [3]string{"enqueued_for_orchestration", "complete", "complete"})
				}
				if settled[id] != settle {
					s.t.Errorf("%s: settled %v, want %v", what, settled[id], settle)
				}
			}
			s.wantTransitions(what+" history", id, h, want)
			if len(h) >= 3 && i != 4 {
				s.wantJSON(what+" completion Metadata", h[2].Metadata, json.RawMessage(fmt.Sprintf(`{"i": %d}`, i)))
				s.wantTime(what+" completion CreatedAt", h[2].CreatedAt, at(3*time.Second))
				for k, row := range h {
					if row.SortKey != k+1 {
						s.t.Errorf("%s: history row %d has sort key %d", what, k, row.SortKey)
					}
				}
			}
			if len(h) == 4 && h[3].Metadata != nil {
				s.t.Errorf("%s: settling row Metadata = %s, want none", what, h[3].Metadata)
			}
		}
		s.wantErr(fmt.Sprintf("settle %v, second completion of one step", settle), refused[len(comps)-1], store.ErrLeaseLost)
	}
}
