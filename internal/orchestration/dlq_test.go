package orchestration

import (
	"encoding/json"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/tasker-go/tasker/state"
	"github.com/tasker-go/tasker/store"
)

// hangsTemplate: a → b, one attempt each, at most 5 minutes in
// steps_in_process without progress.
const hangsTemplate = `name: hangs
namespace_name: shop
version: 1.0.0
identity_strategy: always_unique
lifecycle:
  max_steps_in_process_minutes: 5
steps:
  - name: a
    handler: {callable: shop.a}
    retry: {max_attempts: 1}
  - name: b
    handler: {callable: shop.b}
    dependencies: [a]
`

func (h *harness) sweepStale(want int) {
	h.t.Helper()
	n, err := h.orch.SweepStale(h.ctx)
	if err != nil || n != want {
		h.t.Fatalf("SweepStale = %d, %v; want %d, nil", n, err, want)
	}
}

func (h *harness) dlq(p store.DLQListParams) []store.DLQRow {
	h.t.Helper()
	rows, err := h.d.Reader().DLQList(h.ctx, p)
	if err != nil {
		h.t.Fatal(err)
	}
	return rows
}

func TestStaleTaskIsDeadLetteredAndRedriven(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	if _, err := h.orch.Templates().Register(h.ctx, []byte(hangsTemplate)); err != nil {
		t.Fatalf("a template with lifecycle limits is accepted: %v", err)
	}
	task := h.create("hangs", `{}`)
	h.claim(10 * time.Minute) // a hangs in_progress

	h.clock.Advance(4 * time.Minute)
	h.sweepStale(0)
	h.clock.Advance(2 * time.Minute)
	h.sweepStale(1)
	h.wantStates(task.UUID, state.TaskError, map[string]state.StepState{"a": state.StepInProgress, "b": state.StepPending})
	if hist := h.taskHistory(task.UUID); hist[len(hist)-1] != "steps_in_process→error" {
		t.Errorf("task history %v, want it to end with steps_in_process→error", hist)
	}
	h.sweepStale(0) // settled now

	entries := h.dlq(store.DLQListParams{Statuses: []string{store.DLQPending}})
	if len(entries) != 1 {
		t.Fatalf("pending DLQ entries = %+v, want one", entries)
	}
	e := entries[0]
	if e.Kind != store.DLQKindTask || e.TaskUUID != task.UUID || e.Namespace != testNS || e.TaskName != "hangs" ||
		e.Reason != ReasonStepsInProcessTimeout || e.OriginalState != string(state.TaskStepsInProcess) {
		t.Errorf("DLQ entry = %+v", e)
	}
	var snap snapshot
	if err := json.Unmarshal(e.Snapshot, &snap); err != nil {
		t.Fatalf("snapshot %s: %v", e.Snapshot, err)
	}
	if snap.Task.UUID != task.UUID || snap.Task.State != "steps_in_process" || len(snap.Steps) != 2 ||
		snap.Steps[0].Name != "a" || snap.Steps[0].State != "in_progress" {
		t.Errorf("snapshot = %s", e.Snapshot)
	}

	// The worker never comes back: the lease rescuer fails the attempt,
	// and with one attempt allowed the step ends in error; the task stays
	// in error.
	h.clock.Advance(5 * time.Minute)
	if n, err := h.orch.RescueExpiredLeases(h.ctx); err != nil || n != 1 {
		t.Fatalf("RescueExpiredLeases = %d, %v; want 1, nil", n, err)
	}
	h.wantStates(task.UUID, state.TaskError, map[string]state.StepState{"a": state.StepError, "b": state.StepPending})

	got, err := h.orch.Redrive(h.ctx, RedriveParams{ID: e.ID, Actor: "alice", Reason: "upstream fixed"})
	if err != nil {
		t.Fatalf("Redrive: %v", err)
	}
	if got.Status != store.DLQManuallyResolved || got.ResolvedBy != "alice" || got.ResolutionNote != "upstream fixed" || got.ResolvedAt == nil {
		t.Errorf("entry after redrive = %+v", got)
	}
	h.wantStates(task.UUID, state.TaskStepsInProcess, map[string]state.StepState{"a": state.StepEnqueued, "b": state.StepPending})
	if a := h.step(task.UUID, "a"); a.Attempts != 0 {
		t.Errorf("a.Attempts = %d after redrive, want 0", a.Attempts)
	}
	hist := h.stepHistory(h.step(task.UUID, "a").UUID)
	reset := hist[len(hist)-2]
	if reset.Event != string(state.StepEventResetForRetry) || !jsonHas(reset.Metadata, "actor", "alice") {
		t.Errorf("a's reset history row = %+v (%s)", reset, reset.Metadata)
	}
	if _, err := h.orch.Redrive(h.ctx, RedriveParams{ID: e.ID}); !errors.Is(err, ErrDLQNotPending) {
		t.Errorf("second Redrive = %v, want ErrDLQNotPending", err)
	}

	h.complete(successOf(h.claimOne("a"), `"a"`))
	h.complete(successOf(h.claimOne("b"), `"b"`))
	h.wantStates(task.UUID, state.TaskComplete, map[string]state.StepState{"a": state.StepComplete, "b": state.StepComplete})
}

func jsonHas(raw json.RawMessage, key, want string) bool {
	var m map[string]any
	if json.Unmarshal(raw, &m) != nil {
		return false
	}
	return m[key] == want
}

func TestStaleLimitsFromConfig(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	task := h.create("retry", `{}`)
	h.complete(failureOf(h.claimOne("work"), retryableErr))
	h.wantStates(task.UUID, state.TaskWaitingForRetry, nil)

	// Nobody sweeps the due retry: the task makes no progress for the
	// default hour and is stale.
	h.clock.Advance(59 * time.Minute)
	h.sweepStale(0)
	h.clock.Advance(2 * time.Minute)
	h.sweepStale(1)
	e := h.dlq(store.DLQListParams{TaskUUID: task.UUID})
	if len(e) != 1 || e[0].Reason != ReasonWaitingForRetryTimeout || e[0].OriginalState != "waiting_for_retry" {
		t.Fatalf("DLQ entries = %+v", e)
	}

	// Redrive: the waiting step is due and is enqueued again.
	if _, err := h.orch.Redrive(h.ctx, RedriveParams{ID: e[0].ID, Actor: "bob"}); err != nil {
		t.Fatal(err)
	}
	h.wantStates(task.UUID, state.TaskStepsInProcess, map[string]state.StepState{"work": state.StepEnqueued})
	h.complete(successOf(h.claimOne("work"), `1`))
	h.wantStates(task.UUID, state.TaskComplete, nil)
}

func TestMaxDurationAndDisabledLimits(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.orch = New(h.d, h.orch.Templates(), h.notes, Config{Owner: "orch-test", JitterFraction: -1, Now: h.clock.Now,
		MaxTaskDuration: 10 * time.Minute, MaxStepsInProcess: -1, MaxWaitingForDependencies: -1, MaxWaitingForRetry: -1})
	task := h.create("flow", `{"order_id": 7}`)
	claims := h.claim(time.Hour)
	// Progress every few minutes does not help against the total duration.
	h.clock.Advance(6 * time.Minute)
	h.complete(successOf(claims["c"], `"c"`))
	h.sweepStale(0)
	h.clock.Advance(5 * time.Minute)
	h.sweepStale(1)
	e := h.dlq(store.DLQListParams{TaskUUID: task.UUID})
	if len(e) != 1 || e[0].Reason != ReasonMaxDuration {
		t.Fatalf("DLQ entries = %+v", e)
	}

	// Every limit disabled: nothing is ever stale.
	off := New(h.d, h.orch.Templates(), h.notes, Config{Owner: "orch-test", Now: h.clock.Now,
		MaxTaskDuration: -1, MaxStepsInProcess: -1, MaxWaitingForDependencies: -1, MaxWaitingForRetry: -1})
	h.create("flow", `{"order_id": 8}`)
	h.clock.Advance(1000 * time.Hour)
	if n, err := off.SweepStale(h.ctx); err != nil || n != 0 {
		t.Errorf("SweepStale with every limit disabled = %d, %v; want 0, nil", n, err)
	}
}

func TestPoisonResultMessageIsDeadLettered(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.orch = New(h.d, h.orch.Templates(), h.notes, Config{Owner: "orch-test", Now: h.clock.Now, MaxResultReads: 3})
	// A result for a task that does not exist can never be processed.
	ghost := uuid.NewString()
	if err := store.InTx(h.ctx, h.d, func(tx store.Tx) error {
		return tx.QueueSend(h.ctx, store.QueueSendParams{Now: h.clock.Now(), Messages: []store.QueueMessageInsert{
			{Queue: store.OrchestrationQueue, TaskUUID: ghost, StepUUID: "s1"}}})
	}); err != nil {
		t.Fatal(err)
	}
	for read := 1; read <= 3; read++ {
		if n, err := h.orch.processQueuedResults(h.ctx); err != nil || n != 1 {
			t.Fatalf("read %d: processQueuedResults = %d, %v; want 1, nil", read, n, err)
		}
		visible, leased := h.resultsQueued()
		if read < 3 && leased != 1 {
			t.Fatalf("after read %d: %d visible, %d leased; want the message leased until it comes back", read, visible, leased)
		}
		h.clock.Advance(time.Minute) // past the result lease
	}
	if n, err := h.orch.processQueuedResults(h.ctx); err != nil || n != 0 {
		t.Fatalf("after 3 reads: processQueuedResults = %d, %v; want the message gone", n, err)
	}
	e := h.dlq(store.DLQListParams{Kind: store.DLQKindMessage})
	if len(e) != 1 || e[0].TaskUUID != ghost || e[0].StepUUID != "s1" || e[0].Reason != ReasonPoisonOrchestrationResult ||
		!jsonHas(e[0].Snapshot, "queue", store.OrchestrationQueue) {
		t.Fatalf("DLQ entries = %+v", e)
	}

	// Redriving a message entry puts it back in the queue.
	if _, err := h.orch.Redrive(h.ctx, RedriveParams{ID: e[0].ID, Actor: "ops"}); err != nil {
		t.Fatal(err)
	}
	if visible, _ := h.resultsQueued(); visible != 1 {
		t.Errorf("after redrive: %d visible messages, want 1", visible)
	}
}

func TestUpdateDLQ(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	if _, err := h.orch.Templates().Register(h.ctx, []byte(hangsTemplate)); err != nil {
		t.Fatal(err)
	}
	task := h.create("hangs", `{}`)
	h.clock.Advance(10 * time.Minute)
	h.sweepStale(1)
	id := h.dlq(store.DLQListParams{})[0].ID

	if _, err := h.orch.UpdateDLQ(h.ctx, UpdateDLQParams{ID: id, Status: "gone"}); err == nil {
		t.Error("UpdateDLQ with an unknown status succeeded")
	}
	if _, err := h.orch.UpdateDLQ(h.ctx, UpdateDLQParams{ID: id + 1, Status: store.DLQCancelled}); !errors.Is(err, ErrDLQNotFound) {
		t.Errorf("UpdateDLQ of a missing entry = %v, want ErrDLQNotFound", err)
	}
	got, err := h.orch.UpdateDLQ(h.ctx, UpdateDLQParams{ID: id, Status: store.DLQPermanentlyFailed, Actor: "carol", Reason: "bad data"})
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != store.DLQPermanentlyFailed || got.ResolvedBy != "carol" || got.ResolutionNote != "bad data" {
		t.Errorf("entry = %+v", got)
	}
	if _, err := h.orch.Redrive(h.ctx, RedriveParams{ID: id}); !errors.Is(err, ErrDLQNotPending) {
		t.Errorf("Redrive of a resolved entry = %v, want ErrDLQNotPending", err)
	}
	h.wantStates(task.UUID, state.TaskError, nil) // only the entry changed
	stats, err := h.d.Reader().DLQStats(h.ctx, store.DLQStatsParams{})
	if err != nil {
		t.Fatal(err)
	}
	want := []store.DLQStatRow{{Kind: "task", Status: "permanently_failed", Reason: ReasonStepsInProcessTimeout, Count: 1}}
	if !slices.Equal(stats, want) {
		t.Errorf("stats = %+v, want %+v", stats, want)
	}
}

// resultsQueued returns the number of messages (visible, leased) in the
// orchestration queue.
func (h *harness) resultsQueued() (visible, leased int) {
	h.t.Helper()
	rows, err := h.d.Reader().QueueDepth(h.ctx, store.QueueDepthParams{Now: h.clock.Now()})
	if err != nil {
		h.t.Fatal(err)
	}
	for _, r := range rows {
		if r.Queue == store.OrchestrationQueue {
			return r.Visible, r.Leased
		}
	}
	return 0, 0
}
