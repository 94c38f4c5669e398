package storetest

import (
	"encoding/json"
	"time"

	"github.com/tasker-go/tasker/store"
)

func (s *suite) dlqInsert(p store.DLQInsertParams) int64 {
	s.t.Helper()
	var id int64
	s.tx(func(tx store.Tx) error {
		var err error
		id, err = tx.DLQInsert(s.ctx, p)
		return err
	})
	return id
}

func (s *suite) dlqList(p store.DLQListParams) []int64 {
	s.t.Helper()
	rows, err := s.r().DLQList(s.ctx, p)
	if err != nil {
		s.t.Fatalf("DLQList(%+v): %v", p, err)
	}
	ids := make([]int64, len(rows))
	for i, r := range rows {
		ids[i] = r.ID
	}
	return ids
}

func testTasksStale(s *suite) {
	// old: no activity since t0. busy: task untouched since t0 but a step
	// changed at +50m. fresh: created at +40m. done: old but settled.
	old := s.newTask(store.TaskInsertParams{State: "steps_in_process"})
	busy := s.newTask(store.TaskInsertParams{State: "steps_in_process"})
	busySteps := s.newSteps(busy, "ns", "a")
	s.enqueueSteps(busy, "ns", busySteps, at(50*time.Minute))
	fresh := s.newTask(store.TaskInsertParams{State: "waiting_for_retry", Now: at(40 * time.Minute)})
	s.newTask(store.TaskInsertParams{State: "complete"})

	active := []string{"steps_in_process", "waiting_for_retry", "waiting_for_dependencies"}
	find := func(p store.TasksStaleParams) []string {
		s.t.Helper()
		rows, err := s.r().TasksStale(s.ctx, p)
		if err != nil {
			s.t.Fatalf("TasksStale: %v", err)
		}
		var ids []string
		for _, r := range rows {
			ids = append(ids, r.Task.UUID)
			want := t0
			switch r.Task.UUID {
			case busy:
				want = at(50 * time.Minute)
			case fresh:
				want = at(40 * time.Minute)
			}
			s.wantTime("LastActivityAt of "+r.Task.UUID, r.LastActivityAt, want)
		}
		return ids
	}
	s.wantStrings("inactive before +30m", find(store.TasksStaleParams{States: active, InactiveBefore: at(30 * time.Minute)}), []string{old})
	s.wantStrings("inactive before +60m, oldest first",
		find(store.TasksStaleParams{States: active, InactiveBefore: at(60 * time.Minute)}), []string{old, fresh, busy})
	s.wantSet("created before +30m", find(store.TasksStaleParams{States: active, CreatedBefore: at(30 * time.Minute)}), []string{old, busy})
	s.wantStrings("limit", find(store.TasksStaleParams{States: active, InactiveBefore: at(60 * time.Minute), Limit: 1}), []string{old})
	s.wantStrings("other states", find(store.TasksStaleParams{States: []string{"pending"}, InactiveBefore: at(time.Hour)}), nil)
	s.wantStrings("no bounds", find(store.TasksStaleParams{States: active}), nil)
}

func testDLQInsertGet(s *suite) {
	snap := json.RawMessage(`{"task": {"state": "steps_in_process"}, "steps": [{"name": "a"}]}`)
	id := s.dlqInsert(store.DLQInsertParams{Kind: store.DLQKindTask, TaskUUID: "t1", Namespace: "ns", TaskName: "flow",
		Reason: "steps_in_process_timeout", OriginalState: "steps_in_process", Snapshot: snap, Now: at(time.Second)})
	msg := s.dlqInsert(store.DLQInsertParams{Kind: store.DLQKindMessage, TaskUUID: "t2", StepUUID: "s2",
		Reason: "poison_message", Now: at(2 * time.Second)})
	if id == 0 || msg <= id {
		s.t.Fatalf("ids = %d, %d: want positive and increasing", id, msg)
	}
	got, err := s.r().DLQGet(s.ctx, store.DLQGetParams{ID: id})
	if err != nil {
		s.t.Fatalf("DLQGet: %v", err)
	}
	if got.Kind != store.DLQKindTask || got.TaskUUID != "t1" || got.Namespace != "ns" || got.TaskName != "flow" ||
		got.Reason != "steps_in_process_timeout" || got.OriginalState != "steps_in_process" || got.Status != store.DLQPending {
		s.t.Errorf("DLQGet = %+v", got)
	}
	s.wantJSON("Snapshot", got.Snapshot, snap)
	s.wantTime("CreatedAt", got.CreatedAt, at(time.Second))
	s.wantTimePtr("ResolvedAt", got.ResolvedAt, nil)
	m, err := s.r().DLQGet(s.ctx, store.DLQGetParams{ID: msg})
	if err != nil {
		s.t.Fatalf("DLQGet: %v", err)
	}
	if m.StepUUID != "s2" {
		s.t.Errorf("StepUUID = %q, want s2", m.StepUUID)
	}
	s.wantJSON("empty snapshot", m.Snapshot, json.RawMessage(`{}`))
	_, err = s.r().DLQGet(s.ctx, store.DLQGetParams{ID: msg + 100})
	s.wantErr("DLQGet missing", err, store.ErrNotFound)
	s.tx(func(tx store.Tx) error {
		_, err := tx.DLQGet(s.ctx, store.DLQGetParams{ID: id, ForUpdate: true})
		return err
	})
}

func testDLQList(s *suite) {
	a := s.dlqInsert(store.DLQInsertParams{Kind: store.DLQKindTask, TaskUUID: "t1", Namespace: "ns1", Reason: "r", Now: at(1)})
	b := s.dlqInsert(store.DLQInsertParams{Kind: store.DLQKindTask, TaskUUID: "t2", Namespace: "ns2", Reason: "r", Now: at(2)})
	c := s.dlqInsert(store.DLQInsertParams{Kind: store.DLQKindMessage, TaskUUID: "t1", Namespace: "ns1", Reason: "r", Now: at(3)})
	s.tx(func(tx store.Tx) error {
		return tx.DLQUpdate(s.ctx, store.DLQUpdateParams{ID: b, Status: store.DLQCancelled, ResolvedBy: "op", Now: at(4)})
	})
	wantIDs := func(what string, got []int64, want ...int64) {
		s.t.Helper()
		if len(got) != len(want) {
			s.t.Errorf("%s: ids %v, want %v", what, got, want)
			return
		}
		for i := range got {
			if got[i] != want[i] {
				s.t.Errorf("%s: ids %v, want %v", what, got, want)
				return
			}
		}
	}
	wantIDs("all, newest first", s.dlqList(store.DLQListParams{}), c, b, a)
	wantIDs("pending", s.dlqList(store.DLQListParams{Statuses: []string{store.DLQPending}}), c, a)
	wantIDs("pending or cancelled", s.dlqList(store.DLQListParams{Statuses: []string{store.DLQPending, store.DLQCancelled}}), c, b, a)
	wantIDs("namespace", s.dlqList(store.DLQListParams{Namespace: "ns2"}), b)
	wantIDs("kind", s.dlqList(store.DLQListParams{Kind: store.DLQKindTask}), b, a)
	wantIDs("task", s.dlqList(store.DLQListParams{TaskUUID: "t1"}), c, a)
	wantIDs("limit", s.dlqList(store.DLQListParams{Limit: 2}), c, b)
}

func testDLQUpdate(s *suite) {
	id := s.dlqInsert(store.DLQInsertParams{Kind: store.DLQKindTask, TaskUUID: "t1", Reason: "r", Now: t0})
	s.tx(func(tx store.Tx) error {
		return tx.DLQUpdate(s.ctx, store.DLQUpdateParams{ID: id, From: store.DLQPending, Status: store.DLQManuallyResolved,
			ResolvedBy: "alice", Note: "fixed upstream", Now: at(time.Minute)})
	})
	got, err := s.r().DLQGet(s.ctx, store.DLQGetParams{ID: id})
	if err != nil {
		s.t.Fatalf("DLQGet: %v", err)
	}
	if got.Status != store.DLQManuallyResolved || got.ResolvedBy != "alice" || got.ResolutionNote != "fixed upstream" {
		s.t.Errorf("after update: %+v", got)
	}
	s.wantTime("UpdatedAt", got.UpdatedAt, at(time.Minute))
	s.wantTimePtr("ResolvedAt", got.ResolvedAt, ptr(at(time.Minute)))

	err = s.try(func(tx store.Tx) error {
		return tx.DLQUpdate(s.ctx, store.DLQUpdateParams{ID: id, From: store.DLQPending, Status: store.DLQCancelled, Now: at(2 * time.Minute)})
	})
	s.wantErr("update from the wrong status", err, store.ErrStateConflict)
	err = s.try(func(tx store.Tx) error {
		return tx.DLQUpdate(s.ctx, store.DLQUpdateParams{ID: id + 100, Status: store.DLQCancelled})
	})
	s.wantErr("update missing", err, store.ErrNotFound)

	// Back to pending clears the resolution time.
	s.tx(func(tx store.Tx) error {
		return tx.DLQUpdate(s.ctx, store.DLQUpdateParams{ID: id, Status: store.DLQPending, ResolvedBy: "bob", Now: at(3 * time.Minute)})
	})
	got, _ = s.r().DLQGet(s.ctx, store.DLQGetParams{ID: id})
	if got.Status != store.DLQPending || got.ResolvedBy != "bob" {
		s.t.Errorf("after reopening: %+v", got)
	}
	s.wantTimePtr("ResolvedAt after reopening", got.ResolvedAt, nil)
}

func testDLQStats(s *suite) {
	for i, r := range []struct{ kind, reason string }{
		{store.DLQKindTask, "stale"}, {store.DLQKindTask, "stale"}, {store.DLQKindTask, "too_long"}, {store.DLQKindMessage, "poison"},
	} {
		id := s.dlqInsert(store.DLQInsertParams{Kind: r.kind, TaskUUID: "t", Reason: r.reason, Now: at(time.Duration(i))})
		if i == 1 {
			s.tx(func(tx store.Tx) error {
				return tx.DLQUpdate(s.ctx, store.DLQUpdateParams{ID: id, Status: store.DLQPermanentlyFailed, Now: at(time.Minute)})
			})
		}
	}
	got, err := s.r().DLQStats(s.ctx, store.DLQStatsParams{})
	if err != nil {
		s.t.Fatalf("DLQStats: %v", err)
	}
	want := []store.DLQStatRow{
		{Kind: "message", Status: "pending", Reason: "poison", Count: 1},
		{Kind: "task", Status: "pending", Reason: "stale", Count: 1},
		{Kind: "task", Status: "pending", Reason: "too_long", Count: 1},
		{Kind: "task", Status: "permanently_failed", Reason: "stale", Count: 1},
	}
	if len(got) != len(want) {
		s.t.Fatalf("DLQStats = %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			s.t.Errorf("DLQStats[%d] = %+v, want %+v", i, got[i], want[i])
		}
	}
}

func testStepsDueForRetrySkipsSettled(s *suite) {
	waiting := func(taskState string) string {
		task := s.newTask(store.TaskInsertParams{State: taskState})
		ids := s.newSteps(task, "ns", "a")
		s.tx(func(tx store.Tx) error {
			return tx.StepTransition(s.ctx, store.StepTransitionParams{UUID: ids[0], From: "pending", To: "waiting_for_retry",
				Event: "schedule_retry", Now: t0, SetNextRetryAt: true, NextRetryAt: ptr(t0)})
		})
		return task
	}
	live := waiting("waiting_for_retry")
	for _, st := range []string{"error", "blocked_by_failures", "cancelled", "complete", "resolved_manually"} {
		waiting(st)
	}
	got, err := s.r().StepsDueForRetry(s.ctx, store.StepsDueForRetryParams{Now: at(time.Second), Limit: 100})
	if err != nil {
		s.t.Fatalf("StepsDueForRetry: %v", err)
	}
	s.wantStrings("due retries", got, []string{live})
}
