package storetest

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/tasker-go/tasker/store"
)

// The Incremental cases join the suite here, beside the DAG they share.
func init() {
	cases = append(cases, []struct {
		name string
		run  func(s *suite)
	}{
		{"StepsCountAndGet", testStepsCountAndGet},
		{"TaskProgress", testTaskProgress},
		{"TaskProgressWideJoin", testTaskProgressWideJoin},
		{"TaskProgressOneParent", testTaskProgressOneParent},
		{"StepsInsertEdgesIntoItsSteps", testStepsInsertEdgesIntoItsSteps},
		{"StepsEnqueue", testStepsEnqueue},
		{"StepsEnqueueConflict", testStepsEnqueueConflict},
		{"StepsEnqueueMany", testStepsEnqueueMany},
		{"CompleteAndLoadLimitSteps", testCompleteAndLoadLimitSteps},
	}...)
}

// dag inserts steps with the given parents (by name; map order is not
// used: names lists the steps in position order) and returns their UUIDs
// by name.
func (s *suite) dag(task string, names []string, parents map[string][]string) map[string]string {
	s.t.Helper()
	ids := map[string]string{}
	p := store.StepsInsertParams{TaskUUID: task, Namespace: "ns", Now: t0}
	for i, n := range names {
		ids[n] = uuid.NewString()
		p.Steps = append(p.Steps, store.StepInsert{UUID: ids[n], Name: n, Position: i, Callable: "h." + n,
			MaxAttempts: 3, Retryable: true})
	}
	for _, n := range names {
		for _, par := range parents[n] {
			p.Edges = append(p.Edges, store.Edge{From: ids[par], To: ids[n]})
		}
	}
	s.tx(func(tx store.Tx) error { return tx.StepsInsert(s.ctx, p) })
	return ids
}

// setState moves a step through transitions to st without the queue.
func (s *suite) setState(id string, path ...string) {
	s.t.Helper()
	s.tx(func(tx store.Tx) error {
		for i := 1; i < len(path); i++ {
			p := store.StepTransitionParams{UUID: id, From: path[i-1], To: path[i], Event: "test", Now: at(time.Second)}
			if path[i] == "waiting_for_retry" {
				p.SetNextRetryAt, p.NextRetryAt = true, ptr(at(time.Hour))
			}
			if err := tx.StepTransition(s.ctx, p); err != nil {
				return err
			}
		}
		return nil
	})
}

func testStepsCountAndGet(s *suite) {
	task := s.newTask(store.TaskInsertParams{})
	other := s.newTask(store.TaskInsertParams{})
	ids := s.newSteps(task, "ns", "a", "b", "c", "d")
	otherIDs := s.newSteps(other, "ns", "x")
	for _, c := range []struct{ limit, want int }{{0, 4}, {2, 2}, {4, 4}, {5, 4}} {
		n, err := s.r().StepsCount(s.ctx, store.StepsCountParams{TaskUUID: task, Limit: c.limit})
		if err != nil || n != c.want {
			s.t.Errorf("StepsCount limit %d = %d, %v; want %d", c.limit, n, err, c.want)
		}
	}
	var rows []store.StepRow
	s.tx(func(tx store.Tx) error {
		var err error
		rows, err = tx.StepsGet(s.ctx, store.StepsGetParams{TaskUUID: task, UUIDs: []string{ids[3], ids[1], otherIDs[0], uuid.NewString()}})
		return err
	})
	var names []string
	for _, r := range rows {
		names = append(names, r.Name)
		if r.TaskUUID != task || r.State != "pending" || r.MaxAttempts != 3 || !r.Retryable || r.Result != nil {
			s.t.Errorf("StepsGet row %+v", r)
		}
	}
	s.wantStrings("StepsGet names (position order, other task left out)", names, []string{"b", "d"})
}

// testTaskProgress: the states present, and the candidates that may be ready
// with whether their parents are all done.
func testTaskProgress(s *suite) {
	task := s.newTask(store.TaskInsertParams{State: "steps_in_process"})
	// root → b, c; b, c → join; root → e; lone waits for a retry.
	ids := s.dag(task, []string{"root", "b", "c", "join", "e", "lone"}, map[string][]string{
		"b": {"root"}, "c": {"root"}, "join": {"b", "c"}, "e": {"root"},
	})
	s.setState(ids["root"], "pending", "enqueued", "in_progress", "enqueued_for_orchestration", "complete")
	s.setState(ids["b"], "pending", "enqueued", "in_progress", "enqueued_for_orchestration", "complete")
	s.setState(ids["e"], "pending", "enqueued")
	s.setState(ids["lone"], "pending", "enqueued", "in_progress", "enqueued_as_error_for_orchestration", "waiting_for_retry")

	progress := func(changed ...string) *store.TaskProgress {
		var p *store.TaskProgress
		s.tx(func(tx store.Tx) error {
			var err error
			p, err = tx.TaskProgress(s.ctx, store.TaskProgressParams{TaskUUID: task, Steps: changed})
			return err
		})
		return p
	}
	p := progress(ids["b"])
	s.wantSet("States", p.States, []string{"complete", "pending", "enqueued", "waiting_for_retry"})
	got := func(p *store.TaskProgress) []string {
		var out []string
		for _, c := range p.Candidates {
			out = append(out, fmt.Sprintf("%s:%s:%v", c.Name, c.State, c.DependenciesSatisfied))
		}
		return out
	}
	// b's child join waits for c; lone waits for its retry.
	s.wantStrings("candidates after b", got(p), []string{"join:pending:false", "lone:waiting_for_retry:true"})
	for _, c := range p.Candidates {
		if c.Name == "lone" && (c.NextRetryAt == nil || !c.NextRetryAt.Equal(at(time.Hour)) || c.Attempts != 0 || c.MaxAttempts != 3) {
			s.t.Errorf("lone candidate = %+v", c.StepRow)
		}
	}
	// root's children: b (done, not a candidate), c (ready), e (enqueued).
	s.wantStrings("candidates after root", got(progress(ids["root"])),
		[]string{"c:pending:true", "lone:waiting_for_retry:true"})
	s.setState(ids["c"], "pending", "enqueued", "in_progress", "enqueued_for_orchestration", "complete")
	s.wantStrings("candidates after c", got(progress(ids["c"])),
		[]string{"join:pending:true", "lone:waiting_for_retry:true"})
	s.wantStrings("candidates with nothing changed", got(progress()), []string{"lone:waiting_for_retry:true"})
}

// testTaskProgressWideJoin: a join with many parents (past the size at
// which a driver may check them from the task's unfinished steps instead)
// waits while any parent is unfinished, whatever its state, and is ready
// once every parent is complete or resolved; an unfinished step of the
// task that is not its parent does not hold it.
func testTaskProgressWideJoin(s *suite) {
	const wide = 70
	task := s.newTask(store.TaskInsertParams{State: "steps_in_process"})
	names := []string{"side"}
	var parents []string
	for i := range wide {
		parents = append(parents, fmt.Sprintf("p%02d", i))
	}
	names = append(append(names, parents...), "join")
	ids := s.dag(task, names, map[string][]string{"join": parents})
	progress := func(changed ...string) string {
		var p *store.TaskProgress
		s.tx(func(tx store.Tx) error {
			var err error
			p, err = tx.TaskProgress(s.ctx, store.TaskProgressParams{TaskUUID: task, Steps: changed})
			return err
		})
		for _, c := range p.Candidates {
			if c.Name == "join" {
				return fmt.Sprintf("%s:%v", c.State, c.DependenciesSatisfied)
			}
		}
		return "not a candidate"
	}
	done := []string{"pending", "enqueued", "in_progress", "enqueued_for_orchestration", "complete"}
	for _, p := range parents[1:] {
		s.setState(ids[p], done...)
	}
	// The one unfinished parent is the oldest; it holds the join in each
	// state a parent can be in short of done.
	first := ids[parents[0]]
	for _, path := range [][]string{
		{"pending"},
		{"pending", "enqueued", "in_progress"},
		{"in_progress", "enqueued_as_error_for_orchestration", "error"},
	} {
		if len(path) > 1 {
			s.setState(first, path...)
		}
		if got := progress(ids[parents[1]]); got != "pending:false" {
			s.t.Errorf("join with parent p00 %s: %s, want pending:false", path[len(path)-1], got)
		}
	}
	s.setState(first, "error", "resolved_manually")
	if got := progress(ids[parents[1]]); got != "pending:true" {
		s.t.Errorf("join with every parent done, one resolved by hand, and an unrelated step pending: %s, want pending:true", got)
	}
}

// testTaskProgressOneParent: a step with one parent, found through the
// parent that changed, waits for that parent in every state short of done
// (a driver may check such a step through that parent alone), and is
// ready once it is complete or resolved; a step that also has a parent
// that did not change is held by that one.
func testTaskProgressOneParent(s *suite) {
	task := s.newTask(store.TaskInsertParams{State: "steps_in_process"})
	// root → kid; root, other → pair.
	ids := s.dag(task, []string{"root", "other", "kid", "pair"}, map[string][]string{
		"kid": {"root"}, "pair": {"root", "other"},
	})
	progress := func() string {
		var p *store.TaskProgress
		s.tx(func(tx store.Tx) error {
			var err error
			p, err = tx.TaskProgress(s.ctx, store.TaskProgressParams{TaskUUID: task, Steps: []string{ids["root"]}})
			return err
		})
		var out []string
		for _, c := range p.Candidates {
			out = append(out, fmt.Sprintf("%s:%v", c.Name, c.DependenciesSatisfied))
		}
		return fmt.Sprint(out)
	}
	root := ids["root"]
	for _, path := range [][]string{
		{"pending"},
		{"pending", "enqueued", "in_progress"},
		{"in_progress", "enqueued_as_error_for_orchestration", "waiting_for_retry"},
		{"waiting_for_retry", "enqueued", "in_progress", "enqueued_as_error_for_orchestration", "error"},
	} {
		if len(path) > 1 {
			s.setState(root, path...)
		}
		// root, itself a changed step, is a candidate while it may run.
		want := "[kid:false pair:false]"
		if st := path[len(path)-1]; st == "pending" || st == "waiting_for_retry" {
			want = "[root:true kid:false pair:false]"
		}
		if got := progress(); got != want {
			s.t.Errorf("root %s: candidates %s, want %s", path[len(path)-1], got, want)
		}
	}
	s.setState(root, "error", "resolved_manually")
	if got := progress(); got != "[kid:true pair:false]" {
		s.t.Errorf("root resolved by hand: candidates %s, want [kid:true pair:false]", got)
	}
	s.setState(ids["other"], "pending", "enqueued", "in_progress", "enqueued_for_orchestration", "complete")
	if got := progress(); got != "[kid:true pair:true]" {
		s.t.Errorf("both parents done: candidates %s, want [kid:true pair:true]", got)
	}
}

// testStepsInsertEdgesIntoItsSteps: an edge may come from a step stored
// earlier, but it must lead into a step of the same insert; one that
// leads into an earlier step is refused, naming it, and nothing of that
// insert is stored.
func testStepsInsertEdgesIntoItsSteps(s *suite) {
	task := s.newTask(store.TaskInsertParams{State: "steps_in_process"})
	ids := s.dag(task, []string{"a", "x"}, map[string][]string{"x": {"a"}})
	b, c := uuid.NewString(), uuid.NewString()
	err := s.try(func(tx store.Tx) error {
		return tx.StepsInsert(s.ctx, store.StepsInsertParams{TaskUUID: task, Namespace: "ns", Now: t0,
			Steps: []store.StepInsert{{UUID: b, Name: "b", Position: 2, Callable: "h.b", MaxAttempts: 1}},
			Edges: []store.Edge{{From: b, To: ids["x"]}}})
	})
	if err == nil || !strings.Contains(err.Error(), ids["x"]) {
		s.t.Errorf("edge into a step stored earlier: err = %v, want a refusal naming %s", err, ids["x"])
	}
	if _, err := s.r().StepGet(s.ctx, store.StepGetParams{UUID: b}); !errors.Is(err, store.ErrNotFound) {
		s.t.Errorf("step of the refused insert: StepGet err = %v, want not found", err)
	}
	// From an earlier step into a new one is fine.
	s.tx(func(tx store.Tx) error {
		return tx.StepsInsert(s.ctx, store.StepsInsertParams{TaskUUID: task, Namespace: "ns", Now: t0,
			Steps: []store.StepInsert{{UUID: c, Name: "c", Position: 3, Callable: "h.c", MaxAttempts: 1}},
			Edges: []store.Edge{{From: ids["a"], To: c}}})
	})
	if got := s.step(c).Parents; len(got) != 1 || got[0] != ids["a"] {
		s.t.Errorf("parents of a step inserted after its parent = %v, want [%s]", got, ids["a"])
	}
}

func testStepsEnqueue(s *suite) {
	task := s.newTask(store.TaskInsertParams{State: "steps_in_process"})
	ids := s.newSteps(task, "ns", "a", "b", "c", "d")
	s.setState(ids[3], "pending", "enqueued", "in_progress", "enqueued_as_error_for_orchestration", "waiting_for_retry")
	now := at(time.Minute)
	s.tx(func(tx store.Tx) error {
		if err := tx.StepsEnqueue(s.ctx, store.StepsEnqueueParams{TaskUUID: task, Steps: []string{ids[2], ids[0]}, From: "pending",
			Queue: store.WorkerQueue("ns"), Priority: 5, Now: now}); err != nil {
			return err
		}
		return tx.StepsEnqueue(s.ctx, store.StepsEnqueueParams{TaskUUID: task, Steps: []string{ids[3]}, From: "waiting_for_retry",
			Queue: store.WorkerQueue("ns"), Priority: 5, Now: now})
	})
	for i, want := range []string{"enqueued", "pending", "enqueued", "enqueued"} {
		st := s.step(ids[i])
		if st.State != want || st.NextRetryAt != nil || st.CompletedAt != nil {
			s.t.Errorf("step %d: state %s next_retry_at %v completed_at %v, want %s and no times", i, st.State, st.NextRetryAt, st.CompletedAt, want)
		}
	}
	s.wantTransitions("enqueued step history", ids[2], s.stepHistory(ids[2]), [][3]string{{"pending", "enqueued", "enqueue"}})
	h := s.stepHistory(ids[3])
	if last := h[len(h)-1]; last.From != "waiting_for_retry" || last.To != "enqueued" || last.Event != "enqueue" || last.SortKey != len(h) {
		s.t.Errorf("retried step's last history row = %+v (of %d)", last, len(h))
	}
	s.wantDepth(store.WorkerQueue("ns"), now, 3, 0)
	claimed := s.claimSteps("ns", 10, "w", now)
	var order []string
	for _, c := range claimed {
		order = append(order, c.StepUUID)
		if c.Message.Payload != nil && string(c.Message.Payload) != "null" {
			var v any
			if json.Unmarshal(c.Message.Payload, &v) == nil && v != nil {
				s.t.Errorf("message payload = %s, want none", c.Message.Payload)
			}
		}
	}
	s.wantStrings("claim order follows Steps", order, []string{ids[2], ids[0], ids[3]})
}

// testStepsEnqueueMany: an enqueue of more steps than a driver may write
// a statement each for moves them all (from pending, and from a retry,
// clearing its time), records each one's history after what it already
// had, sends their messages in the order given (claimed in that order,
// after a message sent before them and before one sent after them), and
// is refused whole when one step is not in the From state.
func testStepsEnqueueMany(s *suite) {
	const n = 10
	task := s.newTask(store.TaskInsertParams{State: "steps_in_process"})
	names := make([]string, 2*n)
	for i := range names {
		names[i] = fmt.Sprintf("s%02d", i)
	}
	ids := s.newSteps(task, "ns", names...)
	var pending, retried []string
	for i := len(ids) - 1; i >= 0; i-- { // not in position order
		if i%2 == 0 {
			pending = append(pending, ids[i])
		} else {
			retried = append(retried, ids[i])
		}
	}
	for _, id := range retried {
		s.setState(id, "pending", "enqueued", "in_progress", "enqueued_as_error_for_orchestration", "waiting_for_retry")
	}
	other := s.newTask(store.TaskInsertParams{State: "steps_in_process"})
	otherIDs := s.newSteps(other, "ns", names...)
	s.setState(otherIDs[5], "pending", "enqueued")
	err := s.try(func(tx store.Tx) error {
		return tx.StepsEnqueue(s.ctx, store.StepsEnqueueParams{TaskUUID: other, Steps: otherIDs, From: "pending",
			Queue: store.WorkerQueue("ns"), Now: at(time.Minute)})
	})
	s.wantErr("enqueue of many steps, one in another state", err, store.ErrStateConflict)
	if st := s.step(otherIDs[0]); st.State != "pending" || len(s.stepHistory(otherIDs[0])) != 0 {
		s.t.Errorf("step left %s with %d history rows after the refused enqueue, want pending and none", st.State, len(s.stepHistory(otherIDs[0])))
	}
	s.wantDepth(store.WorkerQueue("ns"), at(time.Minute), 0, 0)

	now := at(2 * time.Minute)
	// A step of the other task is sent the small way before them, and one
	// after (both moved to enqueued first, so that nothing in between
	// makes a driver send what it has deferred).
	before, after := otherIDs[0], otherIDs[1]
	send := func(tx store.Tx, step string) error {
		return tx.QueueSend(s.ctx, store.QueueSendParams{Now: now, Messages: []store.QueueMessageInsert{
			{Queue: store.WorkerQueue("ns"), TaskUUID: other, StepUUID: step, Priority: 7}}})
	}
	s.tx(func(tx store.Tx) error {
		for _, id := range []string{before, after} {
			if err := tx.StepTransition(s.ctx, store.StepTransitionParams{UUID: id, From: "pending", To: "enqueued",
				Event: "enqueue", Now: now}); err != nil {
				return err
			}
		}
		if err := send(tx, before); err != nil {
			return err
		}
		if err := tx.StepsEnqueue(s.ctx, store.StepsEnqueueParams{TaskUUID: task, Steps: pending, From: "pending",
			Queue: store.WorkerQueue("ns"), Priority: 7, Now: now}); err != nil {
			return err
		}
		if err := tx.StepsEnqueue(s.ctx, store.StepsEnqueueParams{TaskUUID: task, Steps: retried, From: "waiting_for_retry",
			Queue: store.WorkerQueue("ns"), Priority: 7, Now: now}); err != nil {
			return err
		}
		return send(tx, after)
	})
	for i, id := range ids {
		st := s.step(id)
		if st.State != "enqueued" || st.NextRetryAt != nil || st.CompletedAt != nil || !st.UpdatedAt.Equal(now) {
			s.t.Errorf("step %d: state %s next_retry_at %v completed_at %v updated_at %v, want enqueued at %v",
				i, st.State, st.NextRetryAt, st.CompletedAt, st.UpdatedAt, now)
		}
		h := s.stepHistory(id)
		want, from := 1, "pending"
		if i%2 == 1 {
			want, from = 5, "waiting_for_retry"
		}
		if len(h) != want {
			s.t.Errorf("step %d has %d history rows, want %d", i, len(h), want)
			continue
		}
		last := h[len(h)-1]
		if last.From != from || last.To != "enqueued" || last.Event != "enqueue" || last.SortKey != want ||
			last.Metadata != nil || !last.CreatedAt.Equal(now) {
			s.t.Errorf("step %d: last history row %+v, want %s → enqueued, sort key %d, no metadata, at %v", i, last, from, want, now)
		}
	}
	s.wantDepth(store.WorkerQueue("ns"), now, 2*n+2, 0)
	claimed := s.claimSteps("ns", 4*n, "w", now)
	var order []string
	for _, c := range claimed {
		order = append(order, c.StepUUID)
		if c.StepUUID != before && c.StepUUID != after && (c.Message.Payload != nil || !c.Message.EnqueuedAt.Equal(now) ||
			c.Message.TaskUUID != task || c.Message.Queue != store.WorkerQueue("ns")) {
			s.t.Errorf("message of step %s = %+v, want task %s's, no payload, enqueued at %v", c.StepUUID, c.Message, task, now)
		}
	}
	s.wantStrings("claim order follows the sends", order, append(append(append([]string{before}, pending...), retried...), after))
}

// testStepsEnqueueConflict: one step not in From fails the transaction
// with a state conflict and changes nothing.
func testStepsEnqueueConflict(s *suite) {
	task := s.newTask(store.TaskInsertParams{State: "steps_in_process"})
	ids := s.newSteps(task, "ns", "a", "b")
	s.setState(ids[1], "pending", "enqueued")
	err := s.try(func(tx store.Tx) error {
		return tx.StepsEnqueue(s.ctx, store.StepsEnqueueParams{TaskUUID: task, Steps: ids, From: "pending",
			Queue: store.WorkerQueue("ns"), Now: at(time.Minute)})
	})
	s.wantErr("enqueue of a step in another state", err, store.ErrStateConflict)
	if st := s.step(ids[0]); st.State != "pending" {
		s.t.Errorf("step a is %s after the failed enqueue, want pending", st.State)
	}
	if h := s.stepHistory(ids[0]); len(h) != 0 {
		s.t.Errorf("step a has %d history rows after the failed enqueue, want 0", len(h))
	}
}

// testCompleteAndLoadLimitSteps: with LimitSteps, a task with more than
// MaxSteps steps is locked but its steps are not read.
// Tasks inserted with and without a StepCount are told apart alike.
func testCompleteAndLoadLimitSteps(s *suite) {
	for _, counted := range []bool{false, true} {
		count := func(n int) int {
			if counted {
				return n
			}
			return 0
		}
		small := s.newTask(store.TaskInsertParams{State: "steps_in_process", StepCount: count(2)})
		big := s.newTask(store.TaskInsertParams{State: "steps_in_process", StepCount: count(3)})
		s.newSteps(small, "ns", "a", "b")
		s.newSteps(big, "ns", "a", "b", "c")
		var res *store.CompleteAndLoadResult
		s.tx(func(tx store.Tx) error {
			var err error
			res, err = store.CompleteAndLoad(s.ctx, tx, store.CompleteAndLoadParams{Tasks: []string{small, big},
				LimitSteps: true, MaxSteps: 2, Now: at(time.Second)})
			return err
		})
		if res.Tasks[small] == nil || res.Tasks[big] == nil {
			s.t.Fatalf("StepCount given %v: Tasks = %v, want both", counted, res.Tasks)
		}
		if len(res.Steps[small]) != 2 || len(res.Steps[big]) != 0 || res.Large[small] || !res.Large[big] {
			s.t.Errorf("StepCount given %v: steps small %d big %d, large %v; want 2, 0 and only the big task large",
				counted, len(res.Steps[small]), len(res.Steps[big]), res.Large)
		}
		// Without LimitSteps every task's steps are read.
		s.tx(func(tx store.Tx) error {
			var err error
			res, err = store.CompleteAndLoad(s.ctx, tx, store.CompleteAndLoadParams{Tasks: []string{small, big}, Now: at(time.Second)})
			return err
		})
		if len(res.Steps[small]) != 2 || len(res.Steps[big]) != 3 || res.Large[big] {
			s.t.Errorf("StepCount given %v, no LimitSteps: steps small %d big %d, large %v; want 2, 3, none large",
				counted, len(res.Steps[small]), len(res.Steps[big]), res.Large)
		}
	}
}
