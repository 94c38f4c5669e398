package storetest

import (
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/google/uuid"

	"github.com/tasker-go/tasker/store"
)

func testMigrateIdempotent(s *suite) {
	s.tx(func(tx store.Tx) error {
		_, err := tx.TemplateUpsert(s.ctx, store.TemplateUpsertParams{
			Namespace: "ns", Name: "t", Version: "1", ContentHash: "h", Source: []byte("x"), Now: t0,
		})
		return err
	})
	for i := range 2 {
		if err := s.d.Migrate(s.ctx); err != nil {
			s.t.Fatalf("Migrate call %d on a migrated database: %v", i+2, err)
		}
	}
	if _, err := s.r().TemplateGet(s.ctx, store.TemplateGetParams{Namespace: "ns", Name: "t", Version: "1"}); err != nil {
		s.t.Errorf("data written before a repeated Migrate is gone: %v", err)
	}
}

func testTemplateUpsert(s *suite) {
	p := store.TemplateUpsertParams{
		Namespace: "billing", Name: "invoice", Version: "1.0.0", ContentHash: "sha-1", Source: []byte("name: invoice\n"), Now: t0,
	}
	upsert := func(p store.TemplateUpsertParams) (bool, error) {
		var inserted bool
		err := s.try(func(tx store.Tx) error {
			var err error
			inserted, err = tx.TemplateUpsert(s.ctx, p)
			return err
		})
		return inserted, err
	}

	inserted, err := upsert(p)
	s.wantErr("first upsert", err, nil)
	if !inserted {
		s.t.Error("first upsert: inserted = false, want true")
	}

	again := p
	again.Now = at(time.Hour)
	inserted, err = upsert(again)
	s.wantErr("same content again", err, nil)
	if inserted {
		s.t.Error("same content again: inserted = true, want false")
	}

	changed := p
	changed.ContentHash, changed.Source = "sha-2", []byte("name: invoice\nsteps: []\n")
	inserted, err = upsert(changed)
	s.wantErr("different content, same version", err, store.ErrTemplateConflict)
	if inserted {
		s.t.Error("different content: inserted = true, want false")
	}

	got, err := s.r().TemplateGet(s.ctx, store.TemplateGetParams{Namespace: "billing", Name: "invoice", Version: "1.0.0"})
	if err != nil {
		s.t.Fatalf("TemplateGet: %v", err)
	}
	if got.ContentHash != "sha-1" || string(got.Source) != "name: invoice\n" {
		s.t.Errorf("stored version changed by later upserts: hash %q source %q", got.ContentHash, got.Source)
	}
	s.wantTime("CreatedAt", got.CreatedAt, t0)

	next := changed
	next.Version = "1.1.0"
	inserted, err = upsert(next)
	s.wantErr("new version", err, nil)
	if !inserted {
		s.t.Error("new version: inserted = false, want true")
	}
}

func testTemplateGet(s *suite) {
	src := []byte("name: invoice\nsteps:\n  - name: a\n")
	s.tx(func(tx store.Tx) error {
		_, err := tx.TemplateUpsert(s.ctx, store.TemplateUpsertParams{
			Namespace: "billing", Name: "invoice", Version: "2.0.0", ContentHash: "abc", Source: src, Now: at(time.Minute),
		})
		return err
	})
	got, err := s.r().TemplateGet(s.ctx, store.TemplateGetParams{Namespace: "billing", Name: "invoice", Version: "2.0.0"})
	if err != nil {
		s.t.Fatalf("TemplateGet: %v", err)
	}
	if got.Namespace != "billing" || got.Name != "invoice" || got.Version != "2.0.0" || got.ContentHash != "abc" ||
		string(got.Source) != string(src) {
		s.t.Errorf("TemplateGet = %+v", got)
	}
	s.wantTime("CreatedAt", got.CreatedAt, at(time.Minute))

	for _, p := range []store.TemplateGetParams{
		{Namespace: "billing", Name: "invoice", Version: "9.9.9"},
		{Namespace: "billing", Name: "refund", Version: "2.0.0"},
		{Namespace: "other", Name: "invoice", Version: "2.0.0"},
	} {
		_, err := s.r().TemplateGet(s.ctx, p)
		s.wantErr(fmt.Sprintf("TemplateGet %+v", p), err, store.ErrNotFound)
	}
}

func testTemplateList(s *suite) {
	keys := [][3]string{{"ns1", "a", "1"}, {"ns1", "a", "2"}, {"ns1", "b", "1"}, {"ns2", "a", "1"}}
	s.tx(func(tx store.Tx) error {
		for i, k := range keys {
			if _, err := tx.TemplateUpsert(s.ctx, store.TemplateUpsertParams{
				Namespace: k[0], Name: k[1], Version: k[2], ContentHash: "h", Source: []byte("s"), Now: at(time.Duration(i) * time.Second),
			}); err != nil {
				return err
			}
		}
		return nil
	})
	for _, c := range []struct {
		p    store.TemplateListParams
		want []string
	}{
		{store.TemplateListParams{}, []string{"ns1/a/1", "ns1/a/2", "ns1/b/1", "ns2/a/1"}},
		{store.TemplateListParams{Namespace: "ns1"}, []string{"ns1/a/1", "ns1/a/2", "ns1/b/1"}},
		{store.TemplateListParams{Name: "a"}, []string{"ns1/a/1", "ns1/a/2", "ns2/a/1"}},
		{store.TemplateListParams{Namespace: "ns1", Name: "a"}, []string{"ns1/a/1", "ns1/a/2"}},
		{store.TemplateListParams{Namespace: "ns3"}, nil},
	} {
		rows, err := s.r().TemplateList(s.ctx, c.p)
		if err != nil {
			s.t.Fatalf("TemplateList %+v: %v", c.p, err)
		}
		var got []string
		for _, r := range rows {
			got = append(got, r.Namespace+"/"+r.Name+"/"+r.Version)
		}
		s.wantSet(fmt.Sprintf("TemplateList %+v", c.p), got, c.want)
	}
}

func testTaskInsertGet(s *suite) {
	p := store.TaskInsertParams{
		UUID: uuid.NewString(), Namespace: "billing", Name: "invoice", Version: "1.2.3", State: "pending",
		Context:      json.RawMessage(`{"order": {"id": 42, "items": [1, 2.5, "x"]}, "note": "grüße", "ok": true, "none": null}`),
		IdentityHash: "identity-1", Initiator: "alice", SourceSystem: "crm", Reason: "monthly run",
		Tags: []string{"urgent", "eu"}, Priority: 7, Now: t0,
	}
	s.tx(func(tx store.Tx) error {
		if err := tx.TaskInsert(s.ctx, p); err != nil {
			return err
		}
		// A transaction reads its own writes.
		_, err := tx.TaskGet(s.ctx, store.TaskGetParams{UUID: p.UUID, ForUpdate: true})
		return err
	})

	got := s.task(p.UUID)
	if got.UUID != p.UUID || got.Namespace != p.Namespace || got.Name != p.Name || got.Version != p.Version ||
		got.State != p.State || got.IdentityHash != p.IdentityHash || got.Initiator != p.Initiator ||
		got.SourceSystem != p.SourceSystem || got.Reason != p.Reason || got.Priority != p.Priority {
		s.t.Errorf("TaskGet = %+v, want the inserted fields %+v", got, p)
	}
	s.wantJSON("Context", got.Context, p.Context)
	s.wantStrings("Tags", got.Tags, p.Tags)
	s.wantTime("CreatedAt", got.CreatedAt, t0)
	s.wantTime("UpdatedAt", got.UpdatedAt, t0)
	s.wantTimePtr("CompletedAt", got.CompletedAt, nil)

	bare := s.newTask(store.TaskInsertParams{Priority: -3, Now: at(time.Second)})
	b := s.task(bare)
	if len(b.Tags) != 0 || b.IdentityHash != "" || b.Priority != -3 {
		s.t.Errorf("task without tags or identity: Tags %q IdentityHash %q Priority %d", b.Tags, b.IdentityHash, b.Priority)
	}

	_, err := s.r().TaskGet(s.ctx, store.TaskGetParams{UUID: uuid.NewString()})
	s.wantErr("TaskGet unknown", err, store.ErrNotFound)
}

func testTaskIdentity(s *suite) {
	first := s.newTask(store.TaskInsertParams{IdentityHash: "same", Reason: "first"})

	dup := uuid.NewString()
	err := s.try(func(tx store.Tx) error {
		return tx.TaskInsert(s.ctx, store.TaskInsertParams{
			UUID: dup, Namespace: "ns", Name: "task", Version: "1.0.0", State: "pending",
			Context: json.RawMessage(`{}`), IdentityHash: "same", Reason: "second", Now: at(time.Second),
		})
	})
	s.wantErr("duplicate identity", err, store.ErrDuplicateIdentity)
	_, err = s.r().TaskGet(s.ctx, store.TaskGetParams{UUID: dup})
	s.wantErr("rejected duplicate", err, store.ErrNotFound)
	if got := s.task(first); got.Reason != "first" {
		s.t.Errorf("original task changed by the rejected duplicate: reason %q", got.Reason)
	}

	// Tasks without an identity never collide, with each other or with
	// tasks that have one.
	for range 3 {
		s.newTask(store.TaskInsertParams{})
	}
	s.newTask(store.TaskInsertParams{IdentityHash: "other"})
	rows, err := s.r().TaskList(s.ctx, store.TaskListParams{})
	if err != nil {
		s.t.Fatal(err)
	}
	if len(rows) != 5 {
		s.t.Errorf("%d tasks stored, want 5", len(rows))
	}
}

func testTaskList(s *suite) {
	mk := func(ns, name, state string, sec int) string {
		return s.newTask(store.TaskInsertParams{Namespace: ns, Name: name, State: state, Now: at(time.Duration(sec) * time.Second)})
	}
	t1 := mk("ns1", "alpha", "pending", 0)
	t2 := mk("ns1", "alpha", "complete", 1)
	t3 := mk("ns1", "beta", "pending", 2)
	t4 := mk("ns2", "alpha", "error", 3)
	t5 := mk("ns1", "alpha", "steps_in_process", 4)

	for _, c := range []struct {
		p    store.TaskListParams
		want []string
	}{
		{store.TaskListParams{}, []string{t5, t4, t3, t2, t1}},
		{store.TaskListParams{Namespace: "ns1"}, []string{t5, t3, t2, t1}},
		{store.TaskListParams{Name: "alpha"}, []string{t5, t4, t2, t1}},
		{store.TaskListParams{Namespace: "ns1", Name: "alpha"}, []string{t5, t2, t1}},
		{store.TaskListParams{States: []string{"pending"}}, []string{t3, t1}},
		{store.TaskListParams{States: []string{"complete", "error"}}, []string{t4, t2}},
		{store.TaskListParams{Namespace: "ns1", States: []string{"pending", "error"}}, []string{t3, t1}},
		{store.TaskListParams{Limit: 2}, []string{t5, t4}},
		{store.TaskListParams{Name: "alpha", Limit: 3}, []string{t5, t4, t2}},
		{store.TaskListParams{Namespace: "none"}, nil},
		{store.TaskListParams{States: []string{"cancelled"}}, nil},
	} {
		rows, err := s.r().TaskList(s.ctx, c.p)
		if err != nil {
			s.t.Fatalf("TaskList %+v: %v", c.p, err)
		}
		var got []string
		for _, r := range rows {
			got = append(got, r.UUID)
		}
		s.wantStrings(fmt.Sprintf("TaskList %+v (newest first)", c.p), got, c.want)
	}
}

func testTaskStates(s *suite) {
	a := s.newTask(store.TaskInsertParams{Namespace: "ns", Name: "a", State: "pending"})
	b := s.newTask(store.TaskInsertParams{Namespace: "ns", Name: "b", State: "complete"})
	c := s.newTask(store.TaskInsertParams{Namespace: "ns", Name: "c", State: "error"})
	for _, tc := range []struct {
		ids  []string
		want map[string]string
	}{
		{nil, map[string]string{}},
		{[]string{a}, map[string]string{a: "pending"}},
		{[]string{b, c, "no-such-task"}, map[string]string{b: "complete", c: "error"}},
		{[]string{a, b, c, a}, map[string]string{a: "pending", b: "complete", c: "error"}},
	} {
		got, err := s.r().TaskStates(s.ctx, store.TaskStatesParams{UUIDs: tc.ids})
		if err != nil {
			s.t.Fatalf("TaskStates %v: %v", tc.ids, err)
		}
		if fmt.Sprint(got) != fmt.Sprint(tc.want) {
			s.t.Errorf("TaskStates %v = %v, want %v", tc.ids, got, tc.want)
		}
	}
}

func testTaskListDefaultLimit(s *suite) {
	s.tx(func(tx store.Tx) error {
		for i := range 105 {
			if err := tx.TaskInsert(s.ctx, store.TaskInsertParams{
				UUID: uuid.NewString(), Namespace: "ns", Name: "task", Version: "1", State: "pending",
				Context: json.RawMessage(`{}`), Now: at(time.Duration(i) * time.Second),
			}); err != nil {
				return err
			}
		}
		return nil
	})
	rows, err := s.r().TaskList(s.ctx, store.TaskListParams{})
	if err != nil {
		s.t.Fatal(err)
	}
	if len(rows) != 100 {
		s.t.Fatalf("TaskList with Limit 0 returned %d rows, want 100", len(rows))
	}
	s.wantTime("newest task first", rows[0].CreatedAt, at(104*time.Second))
	s.wantTime("100th newest task last", rows[99].CreatedAt, at(5*time.Second))
}

func testTaskTransition(s *suite) {
	id := s.newTask(store.TaskInsertParams{})
	other := s.newTask(store.TaskInsertParams{})

	steps := []store.TaskTransitionParams{
		{UUID: id, From: "pending", To: "initializing", Event: "start", Metadata: json.RawMessage(`{"by": "test"}`), Now: at(1 * time.Second)},
		{UUID: id, From: "initializing", To: "enqueuing_steps", Event: "ready_steps_found", Now: at(2 * time.Second)},
		{UUID: id, From: "enqueuing_steps", To: "steps_in_process", Event: "steps_enqueued", Metadata: json.RawMessage(`{"n": 3}`), Now: at(3 * time.Second)},
	}
	for _, p := range steps {
		s.tx(func(tx store.Tx) error { return tx.TaskTransition(s.ctx, p) })
	}
	s.tx(func(tx store.Tx) error {
		return tx.TaskTransition(s.ctx, store.TaskTransitionParams{UUID: other, From: "pending", To: "cancelled", Event: "cancel", Now: at(4 * time.Second)})
	})

	got := s.task(id)
	if got.State != "steps_in_process" {
		s.t.Errorf("State = %q, want steps_in_process", got.State)
	}
	s.wantTime("CreatedAt", got.CreatedAt, t0)
	s.wantTime("UpdatedAt", got.UpdatedAt, at(3*time.Second))
	s.wantTimePtr("CompletedAt", got.CompletedAt, nil)

	h := s.taskHistory(id)
	s.wantTransitions("task history", id, h, [][3]string{
		{"pending", "initializing", "start"},
		{"initializing", "enqueuing_steps", "ready_steps_found"},
		{"enqueuing_steps", "steps_in_process", "steps_enqueued"},
	})
	if len(h) == len(steps) {
		for i, p := range steps {
			s.wantJSON(fmt.Sprintf("history row %d Metadata", i), h[i].Metadata, p.Metadata)
			s.wantTime(fmt.Sprintf("history row %d CreatedAt", i), h[i].CreatedAt, p.Now)
		}
	}
	// Sort keys count per task.
	s.wantTransitions("other task history", other, s.taskHistory(other), [][3]string{{"pending", "cancelled", "cancel"}})

	err := s.try(func(tx store.Tx) error {
		return tx.TaskTransition(s.ctx, store.TaskTransitionParams{UUID: id, From: "pending", To: "error", Event: "fail", Now: at(time.Minute)})
	})
	s.wantErr("transition from a stale state", err, store.ErrStateConflict)
	if got := s.task(id); got.State != "steps_in_process" || !got.UpdatedAt.Equal(at(3*time.Second)) || got.CompletedAt != nil {
		s.t.Errorf("refused transition changed the task: %+v", got)
	}
	if h := s.taskHistory(id); len(h) != 3 {
		s.t.Errorf("refused transition wrote history: %d rows, want 3", len(h))
	}

	err = s.try(func(tx store.Tx) error {
		return tx.TaskTransition(s.ctx, store.TaskTransitionParams{UUID: uuid.NewString(), From: "pending", To: "initializing", Event: "start", Now: t0})
	})
	s.wantErr("transition of an unknown task", err, store.ErrNotFound)
}

func testTaskTransitionCompletedAt(s *suite) {
	for i, to := range []string{"complete", "error", "cancelled", "resolved_manually"} {
		id := s.newTask(store.TaskInsertParams{State: "evaluating_results"})
		now := at(time.Duration(i+1) * time.Minute)
		s.tx(func(tx store.Tx) error {
			return tx.TaskTransition(s.ctx, store.TaskTransitionParams{UUID: id, From: "evaluating_results", To: to, Event: "e", Now: now})
		})
		s.wantTimePtr("CompletedAt after → "+to, s.task(id).CompletedAt, &now)
	}

	id := s.newTask(store.TaskInsertParams{State: "evaluating_results"})
	s.tx(func(tx store.Tx) error {
		return tx.TaskTransition(s.ctx, store.TaskTransitionParams{UUID: id, From: "evaluating_results", To: "blocked_by_failures", Event: "blocked", Now: at(time.Minute)})
	})
	s.wantTimePtr("CompletedAt after → blocked_by_failures", s.task(id).CompletedAt, nil)

	// A task that leaves a terminal state (an operator resumed it) is not
	// completed any more.
	s.tx(func(tx store.Tx) error {
		if err := tx.TaskTransition(s.ctx, store.TaskTransitionParams{UUID: id, From: "blocked_by_failures", To: "error", Event: "fail", Now: at(2 * time.Minute)}); err != nil {
			return err
		}
		return tx.TaskTransition(s.ctx, store.TaskTransitionParams{UUID: id, From: "error", To: "evaluating_results", Event: "resume", Now: at(3 * time.Minute)})
	})
	got := s.task(id)
	s.wantTimePtr("CompletedAt after resume", got.CompletedAt, nil)
	if h := s.taskHistory(id); !slices.EqualFunc(h, []string{"blocked_by_failures", "error", "evaluating_results"},
		func(r store.TransitionRow, to string) bool { return r.To == to }) {
		s.t.Errorf("history = %+v", h)
	}
}

// testTaskTransitionPath: a transition with further hops moves the task
// to the last state in one write and records every hop in order, after
// the history it already had; deferred or not; a stale From refuses the
// whole path.
func testTaskTransitionPath(s *suite) {
	for _, deferred := range []bool{false, true} {
		id := s.newTask(store.TaskInsertParams{})
		s.tx(func(tx store.Tx) error {
			return tx.TaskTransition(s.ctx, store.TaskTransitionParams{Deferred: deferred, UUID: id, From: "pending",
				To: "initializing", Event: "start", Now: at(time.Second),
				Then: []store.TaskHop{{To: "enqueuing_steps", Event: "ready_steps_found"}, {To: "steps_in_process", Event: "steps_enqueued"}}})
		})
		s.tx(func(tx store.Tx) error {
			return tx.TaskTransition(s.ctx, store.TaskTransitionParams{Deferred: deferred, UUID: id, From: "steps_in_process",
				To: "evaluating_results", Event: "results_received", Now: at(2 * time.Second),
				Then: []store.TaskHop{{To: "complete", Event: "all_complete"}}})
		})
		got := s.task(id)
		if got.State != "complete" {
			s.t.Errorf("deferred=%v: State = %q, want complete", deferred, got.State)
		}
		s.wantTimePtr("CompletedAt after a path ending in complete", got.CompletedAt, ptr(at(2*time.Second)))
		h := s.taskHistory(id)
		s.wantTransitions("path history", id, h, [][3]string{
			{"pending", "initializing", "start"},
			{"initializing", "enqueuing_steps", "ready_steps_found"},
			{"enqueuing_steps", "steps_in_process", "steps_enqueued"},
			{"steps_in_process", "evaluating_results", "results_received"},
			{"evaluating_results", "complete", "all_complete"},
		})
		for i, r := range h {
			if r.SortKey != i+1 {
				s.t.Errorf("history row %d has sort key %d, want %d", i, r.SortKey, i+1)
			}
		}
		err := s.try(func(tx store.Tx) error {
			return tx.TaskTransition(s.ctx, store.TaskTransitionParams{Deferred: deferred, UUID: id, From: "steps_in_process",
				To: "evaluating_results", Event: "results_received", Now: at(3 * time.Second),
				Then: []store.TaskHop{{To: "complete", Event: "all_complete"}}})
		})
		s.wantErr("path from a stale state", err, store.ErrStateConflict)
		if n := len(s.taskHistory(id)); n != 5 {
			s.t.Errorf("refused path left history: %d rows, want 5", n)
		}
	}
}
