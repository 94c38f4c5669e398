package storetest

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/tasker-go/tasker/store"
)

func testStepsInsert(s *suite) {
	task := s.newTask(store.TaskInsertParams{Namespace: "billing"})
	other := s.newTask(store.TaskInsertParams{Namespace: "billing"})
	a, b, c, d := uuid.NewString(), uuid.NewString(), uuid.NewString(), uuid.NewString()
	// Inserted out of position order: reads must order by position.
	s.tx(func(tx store.Tx) error {
		return tx.StepsInsert(s.ctx, store.StepsInsertParams{
			TaskUUID: task, Namespace: "billing", Now: at(time.Second),
			Steps: []store.StepInsert{
				{UUID: d, Name: "d", Position: 3, Callable: "h.D", MaxAttempts: 1, Retryable: false},
				{UUID: b, Name: "b", Position: 1, Callable: "h.B", MaxAttempts: 5, Retryable: true},
				{UUID: a, Name: "a", Position: 0, Callable: "h.A", MaxAttempts: 3, Retryable: true},
				{UUID: c, Name: "c", Position: 2, Callable: "h.C", MaxAttempts: 2, Retryable: false},
			},
			Edges: []store.Edge{{From: a, To: b}, {From: a, To: c}, {From: b, To: d}, {From: c, To: d}},
		})
	})
	s.newSteps(other, "billing", "a", "x")

	want := []struct {
		uuid, name, callable string
		maxAttempts          int
		retryable            bool
		parents              []string
	}{
		{a, "a", "h.A", 3, true, nil},
		{b, "b", "h.B", 5, true, []string{a}},
		{c, "c", "h.C", 2, false, []string{a}},
		{d, "d", "h.D", 1, false, []string{b, c}},
	}
	check := func(what string, got store.StepRow, i int) {
		w := want[i]
		if got.UUID != w.uuid || got.TaskUUID != task || got.Name != w.name || got.Namespace != "billing" ||
			got.Position != i || got.Callable != w.callable || got.MaxAttempts != w.maxAttempts || got.Retryable != w.retryable {
			s.t.Errorf("%s = %+v", what, got)
		}
		if got.State != "pending" || got.Attempts != 0 {
			s.t.Errorf("%s: state %q attempts %d, want pending with 0 attempts", what, got.State, got.Attempts)
		}
		if got.Result != nil || got.Error != nil || got.NextRetryAt != nil || got.LastAttemptedAt != nil || got.CompletedAt != nil {
			s.t.Errorf("%s: a new step has result %s error %s next_retry_at %v last_attempted_at %v completed_at %v",
				what, got.Result, got.Error, got.NextRetryAt, got.LastAttemptedAt, got.CompletedAt)
		}
		s.wantTime(what+" CreatedAt", got.CreatedAt, at(time.Second))
		s.wantTime(what+" UpdatedAt", got.UpdatedAt, at(time.Second))
		s.wantSet(what+" Parents", got.Parents, w.parents)
	}

	rows, err := s.r().StepsForTask(s.ctx, store.StepsForTaskParams{TaskUUID: task})
	if err != nil {
		s.t.Fatalf("StepsForTask: %v", err)
	}
	if len(rows) != len(want) {
		s.t.Fatalf("StepsForTask returned %d steps, want %d", len(rows), len(want))
	}
	for i, r := range rows {
		check(fmt.Sprintf("StepsForTask[%d]", i), r, i)
	}
	for i, w := range want {
		check("StepGet "+w.name, *s.step(w.uuid), i)
	}

	_, err = s.r().StepGet(s.ctx, store.StepGetParams{UUID: uuid.NewString()})
	s.wantErr("StepGet unknown", err, store.ErrNotFound)
	none, err := s.r().StepsForTask(s.ctx, store.StepsForTaskParams{TaskUUID: uuid.NewString()})
	if err != nil || len(none) != 0 {
		s.t.Errorf("StepsForTask of an unknown task = %d rows, %v; want none", len(none), err)
	}
}

func testStepResults(s *suite) {
	task := s.newTask(store.TaskInsertParams{})
	other := s.newTask(store.TaskInsertParams{})
	ids := s.newSteps(task, "ns", "a", "b", "c")
	otherIDs := s.newSteps(other, "ns", "a")
	setResult := func(id string, result string) {
		s.tx(func(tx store.Tx) error {
			return tx.StepTransition(s.ctx, store.StepTransitionParams{
				UUID: id, From: "pending", To: "complete", Event: "complete_manually", Now: at(time.Second),
				SetResult: true, Result: json.RawMessage(result),
			})
		})
	}
	setResult(ids[0], `{"total": 12.5}`)
	setResult(ids[1], `[1, 2, 3]`)
	setResult(otherIDs[0], `{"other": true}`)

	for _, c := range []struct {
		names []string
		want  map[string]string
	}{
		{[]string{"a", "c", "missing"}, map[string]string{"a": `{"total": 12.5}`}},
		{[]string{"a", "b"}, map[string]string{"a": `{"total": 12.5}`, "b": `[1,2,3]`}},
		{[]string{"b"}, map[string]string{"b": `[1,2,3]`}},
		{[]string{"c"}, nil},
		{nil, nil},
	} {
		got, err := s.r().StepResults(s.ctx, store.StepResultsParams{TaskUUID: task, Names: c.names})
		if err != nil {
			s.t.Fatalf("StepResults %q: %v", c.names, err)
		}
		if len(got) != len(c.want) {
			s.t.Errorf("StepResults %q = %d entries %v, want %d", c.names, len(got), got, len(c.want))
		}
		for name, w := range c.want {
			s.wantJSON(fmt.Sprintf("StepResults %q [%s]", c.names, name), got[name], json.RawMessage(w))
		}
	}
}

func testStepTransition(s *suite) {
	task := s.newTask(store.TaskInsertParams{})
	ids := s.newSteps(task, "ns", "a", "b")
	id := ids[0]

	s.tx(func(tx store.Tx) error {
		return tx.StepTransition(s.ctx, store.StepTransitionParams{
			UUID: id, From: "pending", To: "enqueued", Event: "enqueue", Metadata: json.RawMessage(`{"queue": "worker_ns"}`), Now: at(time.Second),
		})
	})
	got := s.step(id)
	if got.State != "enqueued" {
		s.t.Errorf("State = %q, want enqueued", got.State)
	}
	s.wantTime("UpdatedAt", got.UpdatedAt, at(time.Second))
	s.wantTime("CreatedAt", got.CreatedAt, t0)
	if s.step(ids[1]).State != "pending" {
		s.t.Error("a transition of one step moved its sibling")
	}

	err := s.try(func(tx store.Tx) error {
		return tx.StepTransition(s.ctx, store.StepTransitionParams{
			UUID: id, From: "pending", To: "enqueued", Event: "enqueue", Now: at(2 * time.Second),
			SetResult: true, Result: json.RawMessage(`{"x": 1}`),
		})
	})
	s.wantErr("step transition from a stale state", err, store.ErrStateConflict)
	if got := s.step(id); got.State != "enqueued" || got.Result != nil || !got.UpdatedAt.Equal(at(time.Second)) {
		s.t.Errorf("refused transition changed the step: %+v", got)
	}

	err = s.try(func(tx store.Tx) error {
		return tx.StepTransition(s.ctx, store.StepTransitionParams{UUID: uuid.NewString(), From: "pending", To: "enqueued", Event: "enqueue", Now: t0})
	})
	s.wantErr("transition of an unknown step", err, store.ErrNotFound)

	s.tx(func(tx store.Tx) error {
		return tx.StepTransition(s.ctx, store.StepTransitionParams{UUID: id, From: "enqueued", To: "cancelled", Event: "cancel", Now: at(3 * time.Second)})
	})
	h := s.stepHistory(id)
	s.wantTransitions("step history", id, h, [][3]string{{"pending", "enqueued", "enqueue"}, {"enqueued", "cancelled", "cancel"}})
	if len(h) == 2 {
		s.wantJSON("history row 0 Metadata", h[0].Metadata, json.RawMessage(`{"queue": "worker_ns"}`))
		s.wantJSON("history row 1 Metadata", h[1].Metadata, nil)
		s.wantTime("history row 0 CreatedAt", h[0].CreatedAt, at(time.Second))
		s.wantTime("history row 1 CreatedAt", h[1].CreatedAt, at(3*time.Second))
	}
	if h := s.stepHistory(ids[1]); len(h) != 0 {
		s.t.Errorf("untouched sibling has %d history rows", len(h))
	}
}

// testStepTransitionFields walks one step through a failed attempt, a retry
// and a manual reset, checking that each Set* flag writes (or clears) its
// field and that fields without their flag are left alone.
func testStepTransitionFields(s *suite) {
	task := s.newTask(store.TaskInsertParams{})
	id := s.newSteps(task, "ns", "a")[0]
	s.enqueueSteps(task, "ns", []string{id}, at(time.Second))
	if c := s.claimSteps("ns", 1, "w1", at(2*time.Second)); len(c) != 1 {
		s.t.Fatalf("claimed %d steps, want 1", len(c))
	}

	errJSON := json.RawMessage(`{"message": "boom", "type": "handler_error", "retryable": true}`)
	retryAt := at(time.Minute)
	move := func(p store.StepTransitionParams) *store.StepRow {
		s.t.Helper()
		p.UUID = id
		s.tx(func(tx store.Tx) error { return tx.StepTransition(s.ctx, p) })
		return s.step(id)
	}

	got := move(store.StepTransitionParams{
		From: "in_progress", To: "enqueued_as_error_for_orchestration", Event: "fail_attempt", Now: at(3 * time.Second),
		SetError: true, Error: errJSON,
		Result: json.RawMessage(`{"ignored": "SetResult is false"}`),
	})
	s.wantJSON("Error after SetError", got.Error, errJSON)
	if got.Result != nil {
		s.t.Errorf("Result = %s without SetResult, want unset", got.Result)
	}
	if got.Attempts != 1 {
		s.t.Errorf("Attempts = %d, want 1", got.Attempts)
	}

	got = move(store.StepTransitionParams{
		From: "enqueued_as_error_for_orchestration", To: "waiting_for_retry", Event: "schedule_retry", Now: at(4 * time.Second),
		SetNextRetryAt: true, NextRetryAt: &retryAt,
	})
	s.wantTimePtr("NextRetryAt after SetNextRetryAt", got.NextRetryAt, &retryAt)
	s.wantJSON("Error kept without SetError", got.Error, errJSON)

	got = move(store.StepTransitionParams{
		From: "waiting_for_retry", To: "enqueued", Event: "enqueue", Now: at(time.Minute),
		SetNextRetryAt: true, NextRetryAt: nil,
	})
	s.wantTimePtr("NextRetryAt after clearing", got.NextRetryAt, nil)

	got = move(store.StepTransitionParams{
		From: "enqueued", To: "error", Event: "fail", Now: at(2 * time.Minute),
		SetResult: true, Result: json.RawMessage(`{"partial": [1]}`),
		NextRetryAt: &retryAt,
	})
	s.wantJSON("Result after SetResult", got.Result, json.RawMessage(`{"partial": [1]}`))
	s.wantTimePtr("NextRetryAt without SetNextRetryAt", got.NextRetryAt, nil)
	if got.Attempts != 1 {
		s.t.Errorf("Attempts = %d without ResetAttempts, want 1", got.Attempts)
	}

	got = move(store.StepTransitionParams{
		From: "error", To: "pending", Event: "reset_for_retry", Now: at(3 * time.Minute),
		SetResult: true, Result: nil, SetError: true, Error: nil, ResetAttempts: true,
	})
	if got.State != "pending" || got.Attempts != 0 || got.Result != nil || got.Error != nil {
		s.t.Errorf("after reset: state %q attempts %d result %s error %s; want pending, 0, unset, unset",
			got.State, got.Attempts, got.Result, got.Error)
	}
	s.wantTime("UpdatedAt", got.UpdatedAt, at(3*time.Minute))
	s.wantTimePtr("LastAttemptedAt kept from the claim", got.LastAttemptedAt, ptr(at(2*time.Second)))

	s.wantTransitions("history", id, s.stepHistory(id), [][3]string{
		{"pending", "enqueued", "enqueue"},
		{"enqueued", "in_progress", "start"},
		{"in_progress", "enqueued_as_error_for_orchestration", "fail_attempt"},
		{"enqueued_as_error_for_orchestration", "waiting_for_retry", "schedule_retry"},
		{"waiting_for_retry", "enqueued", "enqueue"},
		{"enqueued", "error", "fail"},
		{"error", "pending", "reset_for_retry"},
	})
}

func testStepTransitionCompletedAt(s *suite) {
	task := s.newTask(store.TaskInsertParams{})
	terminal := []string{"complete", "error", "cancelled", "resolved_manually"}
	ids := s.newSteps(task, "ns", append(terminal, "retry")...)
	for i, to := range terminal {
		now := at(time.Duration(i+1) * time.Minute)
		s.tx(func(tx store.Tx) error {
			return tx.StepTransition(s.ctx, store.StepTransitionParams{UUID: ids[i], From: "pending", To: to, Event: "e", Now: now})
		})
		s.wantTimePtr("CompletedAt after → "+to, s.step(ids[i]).CompletedAt, &now)
	}
	s.tx(func(tx store.Tx) error {
		return tx.StepTransition(s.ctx, store.StepTransitionParams{UUID: ids[4], From: "pending", To: "waiting_for_retry", Event: "e", Now: t0})
	})
	s.wantTimePtr("CompletedAt after → waiting_for_retry", s.step(ids[4]).CompletedAt, nil)

	// Reset for retry: the step is running again, so no longer completed.
	s.tx(func(tx store.Tx) error {
		return tx.StepTransition(s.ctx, store.StepTransitionParams{UUID: ids[1], From: "error", To: "pending", Event: "reset_for_retry", Now: at(time.Hour)})
	})
	s.wantTimePtr("CompletedAt after error → pending", s.step(ids[1]).CompletedAt, nil)
}

func testStepsDueForRetry(s *suite) {
	// waiting puts a new task's steps into waiting_for_retry with the given
	// backoff deadlines (nil: no backoff).
	waiting := func(state string, next ...*time.Time) string {
		task := s.newTask(store.TaskInsertParams{})
		names := make([]string, len(next))
		for i := range next {
			names[i] = fmt.Sprintf("s%d", i)
		}
		ids := s.newSteps(task, "ns", names...)
		s.tx(func(tx store.Tx) error {
			for i, id := range ids {
				if err := tx.StepTransition(s.ctx, store.StepTransitionParams{
					UUID: id, From: "pending", To: state, Event: "schedule_retry", Now: t0,
					SetNextRetryAt: true, NextRetryAt: next[i],
				}); err != nil {
					return err
				}
			}
			return nil
		})
		return task
	}
	a := waiting("waiting_for_retry", ptr(at(10*time.Second)))
	b := waiting("waiting_for_retry", ptr(at(20*time.Second)))
	waiting("enqueued", ptr(t0)) // due time passed, but not waiting: never returned
	waiting("pending", ptr(t0))  // likewise
	waiting("error", ptr(t0))    // likewise
	d := waiting("waiting_for_retry", ptr(at(5*time.Second)), ptr(at(6*time.Second)))
	e := waiting("waiting_for_retry", nil) // no backoff: due at once

	for _, c := range []struct {
		now  time.Time
		want []string
	}{
		{at(4 * time.Second), []string{e}},
		{at(5 * time.Second), []string{d, e}},
		{at(10 * time.Second), []string{a, d, e}},
		{at(30 * time.Second), []string{a, b, d, e}},
	} {
		got, err := s.r().StepsDueForRetry(s.ctx, store.StepsDueForRetryParams{Now: c.now, Limit: 100})
		if err != nil {
			s.t.Fatalf("StepsDueForRetry: %v", err)
		}
		s.wantSet(fmt.Sprintf("tasks due at t0+%s (each once)", c.now.Sub(t0)), got, c.want)
	}

	got, err := s.r().StepsDueForRetry(s.ctx, store.StepsDueForRetryParams{Now: at(30 * time.Second), Limit: 2})
	if err != nil {
		s.t.Fatal(err)
	}
	if len(got) != 2 || got[0] == got[1] {
		s.t.Errorf("StepsDueForRetry with Limit 2 = %q, want 2 distinct tasks", got)
	}
}

// testStepTransitionDecrementAttempts checks that an attempt interrupted by a
// shutdown can be given back, and that attempts never go below zero.
func testStepTransitionDecrementAttempts(s *suite) {
	task := s.newTask(store.TaskInsertParams{})
	id := s.newSteps(task, "ns", "a")[0]
	s.enqueueSteps(task, "ns", []string{id}, at(time.Second))
	if c := s.claimSteps("ns", 1, "w1", at(2*time.Second)); len(c) != 1 {
		s.t.Fatalf("claimed %d steps, want 1", len(c))
	}
	move := func(p store.StepTransitionParams) *store.StepRow {
		s.t.Helper()
		p.UUID = id
		s.tx(func(tx store.Tx) error { return tx.StepTransition(s.ctx, p) })
		return s.step(id)
	}
	move(store.StepTransitionParams{From: "in_progress", To: "enqueued_as_error_for_orchestration", Event: "fail_attempt", Now: at(3 * time.Second)})
	got := move(store.StepTransitionParams{From: "enqueued_as_error_for_orchestration", To: "waiting_for_retry",
		Event: "schedule_retry", Now: at(4 * time.Second), DecrementAttempts: true})
	if got.Attempts != 0 {
		s.t.Errorf("Attempts after DecrementAttempts = %d, want 0", got.Attempts)
	}
	got = move(store.StepTransitionParams{From: "waiting_for_retry", To: "enqueued", Event: "enqueue", Now: at(5 * time.Second),
		DecrementAttempts: true})
	if got.Attempts != 0 {
		s.t.Errorf("Attempts after DecrementAttempts at zero = %d, want 0 (never negative)", got.Attempts)
	}
}

// testDeferredTransitions: a deferred transition is applied with its
// history like an immediate one, and one whose From is stale fails the
// transaction (at the latest at commit) with ErrStateConflict, taking the
// transaction's other writes with it.
func testDeferredTransitions(s *suite) {
	task := s.newTask(store.TaskInsertParams{State: "steps_in_process"})
	ids := s.newSteps(task, "ns", "a", "b")

	s.tx(func(tx store.Tx) error {
		if err := tx.StepTransition(s.ctx, store.StepTransitionParams{Deferred: true,
			UUID: ids[0], From: "pending", To: "enqueued", Event: "enqueue", Now: at(time.Second)}); err != nil {
			return err
		}
		if err := tx.StepTransition(s.ctx, store.StepTransitionParams{Deferred: true,
			UUID: ids[0], From: "enqueued", To: "cancelled", Event: "cancel", Now: at(time.Second)}); err != nil {
			return err
		}
		return tx.TaskTransition(s.ctx, store.TaskTransitionParams{Deferred: true,
			UUID: task, From: "steps_in_process", To: "cancelled", Event: "cancel", Now: at(time.Second)})
	})
	if got := s.step(ids[0]); got.State != "cancelled" || got.CompletedAt == nil {
		s.t.Errorf("after deferred transitions: step %+v, want cancelled with completed_at", got)
	}
	s.wantTransitions("deferred step history", ids[0], s.stepHistory(ids[0]),
		[][3]string{{"pending", "enqueued", "enqueue"}, {"enqueued", "cancelled", "cancel"}})
	if got := s.task(task); got.State != "cancelled" {
		s.t.Errorf("task state %q, want cancelled", got.State)
	}
	s.wantTransitions("deferred task history", task, s.taskHistory(task),
		[][3]string{{"steps_in_process", "cancelled", "cancel"}})

	err := s.try(func(tx store.Tx) error {
		if err := tx.StepTransition(s.ctx, store.StepTransitionParams{
			UUID: ids[1], From: "pending", To: "enqueued", Event: "enqueue", Now: at(2 * time.Second)}); err != nil {
			return err
		}
		return tx.StepTransition(s.ctx, store.StepTransitionParams{Deferred: true,
			UUID: ids[0], From: "pending", To: "enqueued", Event: "enqueue", Now: at(2 * time.Second)})
	})
	s.wantErr("deferred step transition from a stale state", err, store.ErrStateConflict)
	if got := s.step(ids[1]).State; got != "pending" {
		s.t.Errorf("the failed transaction's other write was kept: sibling step is %s", got)
	}
	if got := s.step(ids[0]).State; got != "cancelled" {
		s.t.Errorf("stale deferred transition changed the step to %s", got)
	}

	err = s.try(func(tx store.Tx) error {
		return tx.TaskTransition(s.ctx, store.TaskTransitionParams{Deferred: true,
			UUID: task, From: "steps_in_process", To: "complete", Event: "complete", Now: at(2 * time.Second)})
	})
	s.wantErr("deferred task transition from a stale state", err, store.ErrStateConflict)
	if n := len(s.taskHistory(task)); n != 1 {
		s.t.Errorf("refused deferred task transition left history: %d rows, want 1", n)
	}
}

// testDeferredInterleaved: many deferred transitions of several tasks and
// their steps, interleaved with queue messages and with a step moved twice,
// land as issued: every row in its final state, every history in order,
// the messages in the order sent. A stale one among them fails the whole
// transaction with ErrStateConflict naming the step, and nothing of it is
// kept.
func testDeferredInterleaved(s *suite) {
	tasks := []string{s.newTask(store.TaskInsertParams{State: "pending"}), s.newTask(store.TaskInsertParams{State: "pending"})}
	steps := [][]string{s.newSteps(tasks[0], "ns", "a", "b"), s.newSteps(tasks[1], "ns", "a", "b")}
	now := at(time.Second)
	s.tx(func(tx store.Tx) error {
		for i, task := range tasks {
			for _, id := range steps[i] {
				if err := tx.StepTransition(s.ctx, store.StepTransitionParams{Deferred: true,
					UUID: id, From: "pending", To: "enqueued", Event: "enqueue", Now: now}); err != nil {
					return err
				}
			}
			msgs := []store.QueueMessageInsert{{Queue: store.WorkerQueue("ns"), TaskUUID: task, StepUUID: steps[i][0]},
				{Queue: store.WorkerQueue("ns"), TaskUUID: task, StepUUID: steps[i][1]}}
			if err := tx.QueueSend(s.ctx, store.QueueSendParams{Messages: msgs, Now: now}); err != nil {
				return err
			}
			if err := tx.TaskTransition(s.ctx, store.TaskTransitionParams{Deferred: true, UUID: task, From: "pending",
				To: "initializing", Event: "start", Now: now, Then: []store.TaskHop{{To: "steps_in_process", Event: "steps_enqueued"}}}); err != nil {
				return err
			}
			// The first task's second step moves again, after other writes.
			if i == 0 {
				if err := tx.StepTransition(s.ctx, store.StepTransitionParams{Deferred: true,
					UUID: steps[0][1], From: "enqueued", To: "cancelled", Event: "cancel", Now: now}); err != nil {
					return err
				}
			}
		}
		return nil
	})
	for i, task := range tasks {
		if got := s.task(task).State; got != "steps_in_process" {
			s.t.Errorf("task %d state %q, want steps_in_process", i, got)
		}
		s.wantTransitions("interleaved task history", task, s.taskHistory(task),
			[][3]string{{"pending", "initializing", "start"}, {"initializing", "steps_in_process", "steps_enqueued"}})
	}
	s.wantTransitions("step moved twice", steps[0][1], s.stepHistory(steps[0][1]),
		[][3]string{{"pending", "enqueued", "enqueue"}, {"enqueued", "cancelled", "cancel"}})
	if got := s.step(steps[0][1]); got.State != "cancelled" || got.CompletedAt == nil {
		s.t.Errorf("step moved twice: %s completed_at %v, want cancelled with completed_at", got.State, got.CompletedAt)
	}
	for _, id := range []string{steps[0][0], steps[1][0], steps[1][1]} {
		if got := s.step(id).State; got != "enqueued" {
			s.t.Errorf("step %s is %s, want enqueued", id, got)
		}
	}
	claimed := s.claimSteps("ns", 10, "w", at(2*time.Second))
	var order []string
	for _, c := range claimed {
		order = append(order, c.StepUUID)
	}
	// The cancelled step's message is not claimed.
	if want := []string{steps[0][0], steps[1][0], steps[1][1]}; !slices.Equal(order, want) {
		s.t.Errorf("messages claimed in order %v, want the order sent %v", order, want)
	}

	// A stale transition among several: all or nothing.
	fresh := s.newSteps(tasks[1], "ns", "c", "d")
	err := s.try(func(tx store.Tx) error {
		for _, id := range fresh {
			if err := tx.StepTransition(s.ctx, store.StepTransitionParams{Deferred: true,
				UUID: id, From: "pending", To: "enqueued", Event: "enqueue", Now: now}); err != nil {
				return err
			}
		}
		if err := tx.StepTransition(s.ctx, store.StepTransitionParams{Deferred: true,
			UUID: steps[1][0], From: "pending", To: "enqueued", Event: "enqueue", Now: now}); err != nil {
			return err
		}
		return tx.TaskTransition(s.ctx, store.TaskTransitionParams{Deferred: true, UUID: tasks[1], From: "steps_in_process",
			To: "evaluating_results", Event: "results_received", Now: now})
	})
	s.wantErr("a stale transition among several", err, store.ErrStateConflict)
	if err != nil && !strings.Contains(err.Error(), steps[1][0]) {
		s.t.Errorf("conflict error %q does not name the stale step %s", err, steps[1][0])
	}
	for _, id := range fresh {
		if got := s.step(id); got.State != "pending" || len(s.stepHistory(id)) != 0 {
			s.t.Errorf("failed transaction kept a sibling's transition: %s with %d history rows", got.State, len(s.stepHistory(id)))
		}
	}
	if got := s.task(tasks[1]).State; got != "steps_in_process" {
		s.t.Errorf("failed transaction moved the task to %s", got)
	}

	// Many rows at once (a driver may write a large set with one statement
	// per kind): the same outcome, and a stale row among them still fails
	// everything, named.
	const many = 20
	var manyTasks, manySteps []string
	for range many {
		task := s.newTask(store.TaskInsertParams{State: "pending"})
		manyTasks = append(manyTasks, task)
		manySteps = append(manySteps, s.newSteps(task, "many", "only")[0])
	}
	moveAll := func(stale string) error {
		return s.try(func(tx store.Tx) error {
			for i, task := range manyTasks {
				if err := tx.StepTransition(s.ctx, store.StepTransitionParams{Deferred: true,
					UUID: manySteps[i], From: "pending", To: "enqueued", Event: "enqueue", Now: now}); err != nil {
					return err
				}
				if err := tx.QueueSend(s.ctx, store.QueueSendParams{Now: now, Messages: []store.QueueMessageInsert{
					{Queue: store.WorkerQueue("many"), TaskUUID: task, StepUUID: manySteps[i]}}}); err != nil {
					return err
				}
				if err := tx.TaskTransition(s.ctx, store.TaskTransitionParams{Deferred: true, UUID: task, From: "pending",
					To: "initializing", Event: "start", Now: now, Then: []store.TaskHop{{To: "steps_in_process", Event: "steps_enqueued"}}}); err != nil {
					return err
				}
			}
			if stale == "" {
				return nil
			}
			return tx.StepTransition(s.ctx, store.StepTransitionParams{Deferred: true,
				UUID: stale, From: "pending", To: "enqueued", Event: "enqueue", Now: now})
		})
	}
	err = moveAll(steps[1][1])
	s.wantErr("a stale transition among many", err, store.ErrStateConflict)
	if err != nil && !strings.Contains(err.Error(), steps[1][1]) {
		s.t.Errorf("conflict error %q does not name the stale step %s", err, steps[1][1])
	}
	if got := s.step(manySteps[3]).State; got != "pending" || s.task(manyTasks[3]).State != "pending" {
		s.t.Errorf("failed transaction of many kept a write: step %s", got)
	}
	if err := moveAll(""); err != nil {
		s.t.Fatalf("transitions of %d tasks: %v", many, err)
	}
	for i, task := range manyTasks {
		if got := s.step(manySteps[i]).State; got != "enqueued" {
			s.t.Errorf("step %d of many is %s, want enqueued", i, got)
		}
		s.wantTransitions("many: task history", task, s.taskHistory(task),
			[][3]string{{"pending", "initializing", "start"}, {"initializing", "steps_in_process", "steps_enqueued"}})
		s.wantTransitions("many: step history", manySteps[i], s.stepHistory(manySteps[i]),
			[][3]string{{"pending", "enqueued", "enqueue"}})
	}
	order = order[:0]
	for _, c := range s.claimSteps("many", 2*many, "w", at(2*time.Second)) {
		order = append(order, c.StepUUID)
	}
	if !slices.Equal(order, manySteps) {
		s.t.Errorf("many: messages claimed in order %v, want the order sent %v", order, manySteps)
	}
}
