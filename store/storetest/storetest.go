// Package storetest is the conformance suite that every store.Driver must
// pass. It talks to a driver only through the store interfaces, so the same
// cases run against SQLite, PostgreSQL and any later driver:
//
//	func TestConformance(t *testing.T) {
//		storetest.Run(t, func(t *testing.T) store.Driver { return openMigrated(t) })
//	}
//
// A behaviour fixed in one driver gets a case here, so the others are held to
// it too.
package storetest

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/tasker-go/tasker/store"
)

// Run runs the whole conformance suite. newDriver returns a fresh, migrated,
// empty driver per call (each subtest gets its own database so subtests can
// run in parallel); it should register its own cleanup with t.Cleanup.
func Run(t *testing.T, newDriver func(t *testing.T) store.Driver) {
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			// A generous bound, so that a driver that deadlocks fails its
			// case instead of hanging the whole test binary.
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
			defer cancel()
			c.run(&suite{t: t, ctx: ctx, d: newDriver(t)})
		})
	}
}

var cases = []struct {
	name string
	run  func(s *suite)
}{
	{"MigrateIdempotent", testMigrateIdempotent},

	{"TemplateUpsert", testTemplateUpsert},
	{"TemplateGet", testTemplateGet},
	{"TemplateList", testTemplateList},

	{"TaskInsertGet", testTaskInsertGet},
	{"TaskIdentity", testTaskIdentity},
	{"TaskList", testTaskList},
	{"TaskListDefaultLimit", testTaskListDefaultLimit},
	{"TaskStates", testTaskStates},
	{"TaskTransition", testTaskTransition},
	{"TaskTransitionCompletedAt", testTaskTransitionCompletedAt},
	{"TaskTransitionPath", testTaskTransitionPath},

	{"StepsInsert", testStepsInsert},
	{"StepResults", testStepResults},
	{"StepTransition", testStepTransition},
	{"StepTransitionFields", testStepTransitionFields},
	{"StepTransitionDecrementAttempts", testStepTransitionDecrementAttempts},
	{"StepTransitionCompletedAt", testStepTransitionCompletedAt},
	{"DeferredTransitions", testDeferredTransitions},
	{"DeferredInterleaved", testDeferredInterleaved},
	{"StepsDueForRetry", testStepsDueForRetry},

	{"QueueClaimOrder", testQueueClaimOrder},
	{"QueueVisibility", testQueueVisibility},
	{"QueueExpiredLeaseReclaim", testQueueExpiredLeaseReclaim},
	{"QueueExtend", testQueueExtend},
	{"QueueDelete", testQueueDelete},
	{"QueueDeleteForSteps", testQueueDeleteForSteps},
	{"QueueExpired", testQueueExpired},
	{"QueueDepth", testQueueDepth},

	{"StepsClaim", testStepsClaim},
	{"StepsClaimSkipsStaleMessages", testStepsClaimSkipsStale},
	{"InTxClaim", testInTxClaim},
	{"CancelledTx", testCancelledTx},
	{"StepsComplete", testStepsComplete},
	{"StepsCompleteLargeBatch", testStepsCompleteLargeBatch},
	{"StepsCompleteRefused", testStepsCompleteRefused},
	{"CompleteAndLoad", testCompleteAndLoad},
	{"StepsClaimStart", testStepsClaimStart},

	{"EventsInsertAfter", testEventsInsertAfter},
	{"EventsDefaultLimit", testEventsDefaultLimit},
	{"EventsCommitOrder", testEventsCommitOrder},
	{"EventsSeqNotReused", testEventsSeqNotReused},
	{"EventsPrune", testEventsPrune},
	{"EventCursors", testEventCursors},

	{"TasksStale", testTasksStale},
	{"StepsDueForRetrySkipsSettledTasks", testStepsDueForRetrySkipsSettled},
	{"DLQInsertGet", testDLQInsertGet},
	{"DLQList", testDLQList},
	{"DLQUpdate", testDLQUpdate},
	{"DLQStats", testDLQStats},

	{"TxRollback", testTxRollback},
	{"TxCommit", testTxCommit},
	{"ReaderIsReadOnly", testReaderIsReadOnly},

	{"ConcurrentStepsClaim", testConcurrentStepsClaim},
	{"ConcurrentTaskTransition", testConcurrentTaskTransition},
}

// t0 is the suite's clock. Every Now is t0 plus an offset, so stored times
// can be asserted exactly. It has whole microseconds, the precision every
// driver must keep.
var t0 = time.Date(2026, 1, 2, 3, 4, 5, 678000, time.UTC)

func at(d time.Duration) time.Time { return t0.Add(d) }

func ptr[T any](v T) *T { return &v }

// suite is one subtest's view of its own database.
type suite struct {
	t   *testing.T
	ctx context.Context
	d   store.Driver
}

// r is the driver's reader: assertions read committed state through it.
func (s *suite) r() store.Executor { return s.d.Reader() }

// tx runs fn in a committed transaction and fails the test on any error.
// No retry on store.ErrUnavailable: a driver must queue or wait for
// competing writers itself (busy timeout, row locks), not hand the caller a
// transient failure.
func (s *suite) tx(fn func(tx store.Tx) error) {
	s.t.Helper()
	if err := store.InTx(s.ctx, s.d, fn); err != nil {
		s.t.Fatalf("transaction: %v", err)
	}
}

// try runs fn in a transaction that commits only if fn succeeds, and returns
// fn's error. Operations expected to fail come last in fn, because some
// databases refuse further statements in a transaction after an error.
func (s *suite) try(fn func(tx store.Tx) error) error {
	return store.InTx(s.ctx, s.d, fn)
}

// newTask inserts a task, filling the fields p leaves empty, and returns its
// UUID.
func (s *suite) newTask(p store.TaskInsertParams) string {
	s.t.Helper()
	if p.UUID == "" {
		p.UUID = uuid.NewString()
	}
	if p.Namespace == "" {
		p.Namespace = "ns"
	}
	if p.Name == "" {
		p.Name = "task"
	}
	if p.Version == "" {
		p.Version = "1.0.0"
	}
	if p.State == "" {
		p.State = "pending"
	}
	if p.Context == nil {
		p.Context = json.RawMessage(`{}`)
	}
	if p.Now.IsZero() {
		p.Now = t0
	}
	s.tx(func(tx store.Tx) error { return tx.TaskInsert(s.ctx, p) })
	return p.UUID
}

// newSteps inserts independent steps named names (position = index) into
// task and returns their UUIDs in the same order.
func (s *suite) newSteps(task, namespace string, names ...string) []string {
	s.t.Helper()
	p := store.StepsInsertParams{TaskUUID: task, Namespace: namespace, Now: t0}
	ids := make([]string, len(names))
	for i, n := range names {
		ids[i] = uuid.NewString()
		p.Steps = append(p.Steps, store.StepInsert{
			UUID: ids[i], Name: n, Position: i, Callable: "handler." + n, MaxAttempts: 3, Retryable: true,
		})
	}
	s.tx(func(tx store.Tx) error { return tx.StepsInsert(s.ctx, p) })
	return ids
}

// enqueueSteps moves steps pending → enqueued and sends one message per step
// to the namespace's worker queue, in one transaction, as the enqueuer does.
func (s *suite) enqueueSteps(task, namespace string, steps []string, now time.Time) {
	s.t.Helper()
	s.tx(func(tx store.Tx) error {
		msgs := make([]store.QueueMessageInsert, 0, len(steps))
		for _, id := range steps {
			if err := tx.StepTransition(s.ctx, store.StepTransitionParams{
				UUID: id, From: "pending", To: "enqueued", Event: "enqueue", Now: now,
			}); err != nil {
				return err
			}
			msgs = append(msgs, store.QueueMessageInsert{
				Queue: store.WorkerQueue(namespace), TaskUUID: task, StepUUID: id,
				Payload: json.RawMessage(`{"step":"` + id + `"}`),
			})
		}
		return tx.QueueSend(s.ctx, store.QueueSendParams{Messages: msgs, Now: now})
	})
}

// claimSteps claims up to limit steps from a namespace's worker queue in a
// committed transaction.
func (s *suite) claimSteps(namespace string, limit int, owner string, now time.Time) []store.ClaimedStep {
	s.t.Helper()
	var out []store.ClaimedStep
	s.tx(func(tx store.Tx) error {
		var err error
		out, err = tx.StepsClaim(s.ctx, store.StepsClaimParams{
			Queues: []string{store.WorkerQueue(namespace)}, Limit: limit, Lease: 30 * time.Second, Owner: owner, Now: now,
		})
		return err
	})
	return out
}

func (s *suite) step(id string) *store.StepRow {
	s.t.Helper()
	st, err := s.r().StepGet(s.ctx, store.StepGetParams{UUID: id})
	if err != nil {
		s.t.Fatalf("StepGet %s: %v", id, err)
	}
	return st
}

func (s *suite) task(id string) *store.TaskRow {
	s.t.Helper()
	tk, err := s.r().TaskGet(s.ctx, store.TaskGetParams{UUID: id})
	if err != nil {
		s.t.Fatalf("TaskGet %s: %v", id, err)
	}
	return tk
}

func (s *suite) stepHistory(id string) []store.TransitionRow {
	s.t.Helper()
	h, err := s.r().StepTransitions(s.ctx, store.StepTransitionsParams{UUID: id})
	if err != nil {
		s.t.Fatalf("StepTransitions %s: %v", id, err)
	}
	return h
}

func (s *suite) taskHistory(id string) []store.TransitionRow {
	s.t.Helper()
	h, err := s.r().TaskTransitions(s.ctx, store.TaskTransitionsParams{UUID: id})
	if err != nil {
		s.t.Fatalf("TaskTransitions %s: %v", id, err)
	}
	return h
}

// depth returns the visible and leased counts of queue at now; a queue
// without messages counts as zero whether or not the driver lists it.
func (s *suite) depth(queue string, now time.Time) (visible, leased int) {
	s.t.Helper()
	rows, err := s.r().QueueDepth(s.ctx, store.QueueDepthParams{Now: now})
	if err != nil {
		s.t.Fatalf("QueueDepth: %v", err)
	}
	for _, r := range rows {
		if r.Queue == queue {
			return r.Visible, r.Leased
		}
	}
	return 0, 0
}

func (s *suite) wantDepth(queue string, now time.Time, visible, leased int) {
	s.t.Helper()
	v, l := s.depth(queue, now)
	if v != visible || l != leased {
		s.t.Errorf("queue %s depth: visible %d leased %d, want visible %d leased %d", queue, v, l, visible, leased)
	}
}

// wantErr fails unless err matches target (nil target: err must be nil).
func (s *suite) wantErr(what string, err, target error) {
	s.t.Helper()
	switch {
	case target == nil && err != nil:
		s.t.Errorf("%s: unexpected error %v", what, err)
	case target != nil && !errors.Is(err, target):
		s.t.Errorf("%s: error %v, want %v", what, err, target)
	}
}

func (s *suite) wantTime(what string, got, want time.Time) {
	s.t.Helper()
	if !got.Equal(want) {
		s.t.Errorf("%s = %v, want %v", what, got, want)
	}
}

// wantTimePtr compares optional times; want nil means the field must be unset.
func (s *suite) wantTimePtr(what string, got, want *time.Time) {
	s.t.Helper()
	switch {
	case want == nil && got != nil:
		s.t.Errorf("%s = %v, want unset", what, *got)
	case want != nil && got == nil:
		s.t.Errorf("%s unset, want %v", what, *want)
	case want != nil && !got.Equal(*want):
		s.t.Errorf("%s = %v, want %v", what, *got, *want)
	}
}

// wantJSON compares JSON by value, since a driver may store it in a
// normalising type (PostgreSQL jsonb reorders keys and drops whitespace).
// Absent and JSON null are the same.
func (s *suite) wantJSON(what string, got, want json.RawMessage) {
	s.t.Helper()
	g, err := decodeJSON(got)
	if err != nil {
		s.t.Errorf("%s: invalid JSON %q: %v", what, got, err)
		return
	}
	w, err := decodeJSON(want)
	if err != nil {
		s.t.Fatalf("%s: invalid expected JSON %q: %v", what, want, err)
	}
	if !reflect.DeepEqual(g, w) {
		s.t.Errorf("%s = %s, want %s", what, got, want)
	}
}

func decodeJSON(b json.RawMessage) (any, error) {
	if len(b) == 0 {
		return nil, nil
	}
	var v any
	err := json.Unmarshal(b, &v)
	return v, err
}

func (s *suite) wantStrings(what string, got, want []string) {
	s.t.Helper()
	if len(got) == 0 && len(want) == 0 {
		return
	}
	if !slices.Equal(got, want) {
		s.t.Errorf("%s = %q, want %q", what, got, want)
	}
}

// wantSet compares string collections ignoring order.
func (s *suite) wantSet(what string, got, want []string) {
	s.t.Helper()
	s.wantStrings(what, slices.Sorted(slices.Values(got)), slices.Sorted(slices.Values(want)))
}

// wantTransitions checks a history against the expected (from, to, event)
// triples, with sort keys 1..n.
func (s *suite) wantTransitions(what, entity string, got []store.TransitionRow, want [][3]string) {
	s.t.Helper()
	if len(got) != len(want) {
		s.t.Errorf("%s: %d history rows, want %d: %+v", what, len(got), len(want), got)
		return
	}
	for i, w := range want {
		g := got[i]
		if g.EntityUUID != entity || g.From != w[0] || g.To != w[1] || g.Event != w[2] || g.SortKey != i+1 {
			s.t.Errorf("%s row %d = {%s %s→%s %q sort_key %d}, want {%s %s→%s %q sort_key %d}",
				what, i, g.EntityUUID, g.From, g.To, g.Event, g.SortKey, entity, w[0], w[1], w[2], i+1)
		}
	}
}
