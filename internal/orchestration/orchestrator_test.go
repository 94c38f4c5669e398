package orchestration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tasker-go/tasker/state"
	"github.com/tasker-go/tasker/store"
	"github.com/tasker-go/tasker/store/sqlite"
)

const testNS = "shop"

// Templates used by the tests, all in namespace "shop".
var testTemplates = []string{
	// flow: a → b, plus an independent root c; strict identity and an
	// input schema.
	`name: flow
namespace_name: shop
version: 1.0.0
input_schema:
  type: object
  required: [order_id]
  properties:
    order_id: {type: integer}
steps:
  - name: a
    handler: {callable: shop.a}
  - name: b
    handler: {callable: shop.b}
    dependencies: [a]
  - name: c
    handler: {callable: shop.c}
`,
	`name: keyed
namespace_name: shop
version: 1.0.0
identity_strategy: caller_provided
steps:
  - name: only
    handler: {callable: shop.only}
`,
	`name: unique
namespace_name: shop
version: 1.0.0
identity_strategy: always_unique
steps:
  - name: only
    handler: {callable: shop.only}
`,
	// retry: one step, three attempts, exponential backoff from 1s.
	retryTemplate("retry", "retryable: true, max_attempts: 3, backoff: exponential, backoff_base_ms: 1000, max_backoff_ms: 30000"),
	retryTemplate("once0", "max_attempts: 0"),
	retryTemplate("once1", "max_attempts: 1"),
	retryTemplate("noretry", "retryable: false, max_attempts: 3"),
	retryTemplate("nowait", "max_attempts: 2, backoff: none"),
	// branches: doomed and flaky are independent roots; right waits for left.
	`name: branches
namespace_name: shop
version: 1.0.0
identity_strategy: always_unique
steps:
  - name: doomed
    handler: {callable: shop.doomed}
  - name: flaky
    handler: {callable: shop.flaky}
    retry: {max_attempts: 2, backoff: linear, backoff_base_ms: 500}
  - name: left
    handler: {callable: shop.left}
  - name: right
    handler: {callable: shop.right}
    dependencies: [left]
`,
	// blocked: bad fails, good succeeds, after waits for bad.
	`name: blocked
namespace_name: shop
version: 1.0.0
identity_strategy: always_unique
steps:
  - name: bad
    handler: {callable: shop.bad}
  - name: good
    handler: {callable: shop.good}
  - name: after
    handler: {callable: shop.after}
    dependencies: [bad]
`,
}

func retryTemplate(name, retry string) string {
	return fmt.Sprintf(`name: %s
namespace_name: shop
version: 1.0.0
identity_strategy: always_unique
steps:
  - name: work
    handler: {callable: shop.work}
    retry: {%s}
`, name, retry)
}

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

type taskChange struct {
	task  string
	state state.TaskState
}

// recorder is a Notifier that remembers what it was told.
type recorder struct {
	mu       sync.Mutex
	enqueued [][]string
	changes  []taskChange
	snaps    map[string]*TaskSnapshot
}

func (r *recorder) StepsEnqueued(namespaces []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.enqueued = append(r.enqueued, slices.Clone(namespaces))
}

func (r *recorder) TaskChanged(taskUUID string, st state.TaskState, snap *TaskSnapshot) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.changes = append(r.changes, taskChange{taskUUID, st})
	if r.snaps == nil {
		r.snaps = map[string]*TaskSnapshot{}
	}
	r.snaps[taskUUID] = snap
}

// wantSnapshot checks that the last TaskChanged for the task carried a
// snapshot, and that it is what reading the task back gives.
func (h *harness) wantSnapshot(taskUUID string) {
	h.t.Helper()
	h.notes.mu.Lock()
	snap := h.notes.snaps[taskUUID]
	h.notes.mu.Unlock()
	if snap == nil {
		h.t.Fatalf("task %s settled without a snapshot", taskUUID)
	}
	row, _, sum, err := h.orch.TaskStatus(h.ctx, taskUUID)
	if err != nil {
		h.t.Fatal(err)
	}
	got, want := fmt.Sprintf("%+v", snap.Row), fmt.Sprintf("%+v", *row)
	if snap.Row.CompletedAt != nil && row.CompletedAt != nil {
		got = strings.Replace(got, fmt.Sprint(snap.Row.CompletedAt), fmt.Sprint(*snap.Row.CompletedAt), 1)
		want = strings.Replace(want, fmt.Sprint(row.CompletedAt), fmt.Sprint(*row.CompletedAt), 1)
	}
	if got != want {
		h.t.Errorf("snapshot row\n%s\nread back\n%s", got, want)
	}
	g, w := snap.Summary, sum
	if g.Status != w.Status || g.Total != w.Total || g.Complete != w.Complete || g.InFlight != w.InFlight ||
		g.Errored != w.Errored || g.Cancelled != w.Cancelled || g.PendingRetries != w.PendingRetries {
		h.t.Errorf("snapshot summary %+v, read back %+v", g, w)
	}
}

func (r *recorder) snapshot() ([][]string, []taskChange) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.enqueued), slices.Clone(r.changes)
}

type harness struct {
	t     *testing.T
	ctx   context.Context
	d     store.Driver
	clock *fakeClock
	notes *recorder
	orch  *Orchestrator
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	ctx := t.Context()
	d, err := sqlite.Open(ctx, sqlite.Config{Path: filepath.Join(t.TempDir(), "o.db")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	if err := d.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	tmpls := NewTemplates(d)
	for _, doc := range testTemplates {
		if _, err := tmpls.Register(ctx, []byte(doc)); err != nil {
			t.Fatalf("register template: %v\n%s", err, doc)
		}
	}
	h := &harness{t: t, ctx: ctx, d: d, clock: &fakeClock{now: time.Date(2031, 5, 6, 7, 8, 9, 0, time.UTC)}, notes: &recorder{}}
	h.orch = New(d, tmpls, h.notes, Config{Owner: "orch-test", JitterFraction: -1, Now: h.clock.Now})
	return h
}

func (h *harness) create(name, taskCtx string) *store.TaskRow {
	h.t.Helper()
	task, _, _, err := h.orch.CreateTask(h.ctx, CreateTaskParams{Namespace: testNS, Name: name, Context: json.RawMessage(taskCtx)})
	if err != nil {
		h.t.Fatalf("CreateTask %s: %v", name, err)
	}
	return task
}

// claim claims every visible step message, as a worker would, and returns
// the claims by step name.
func (h *harness) claim(lease time.Duration) map[string]store.ClaimedStep {
	h.t.Helper()
	var claimed []store.ClaimedStep
	err := store.InTx(h.ctx, h.d, func(tx store.Tx) error {
		var err error
		claimed, err = tx.StepsClaim(h.ctx, store.StepsClaimParams{Queues: []string{store.WorkerQueue(testNS)}, Limit: 100,
			Lease: lease, Owner: "worker-test", Now: h.clock.Now()})
		return err
	})
	if err != nil {
		h.t.Fatalf("claim: %v", err)
	}
	out := map[string]store.ClaimedStep{}
	for _, c := range claimed {
		out[c.StepName] = c
	}
	return out
}

// claimOne claims every visible step and returns the one named name.
func (h *harness) claimOne(name string) store.ClaimedStep {
	h.t.Helper()
	c, ok := h.claim(30 * time.Second)[name]
	if !ok {
		h.t.Fatalf("step %s was not claimable", name)
	}
	return c
}

func successOf(c store.ClaimedStep, result string) store.StepCompletion {
	return store.StepCompletion{MessageID: c.Message.ID, LeaseToken: c.Message.LeaseToken, TaskUUID: c.TaskUUID,
		StepUUID: c.StepUUID, Attempt: c.Attempt, Success: true, Result: json.RawMessage(result)}
}

func failureOf(c store.ClaimedStep, info store.StepErrorInfo) store.StepCompletion {
	info.Attempt = c.Attempt
	b, _ := json.Marshal(info)
	return store.StepCompletion{MessageID: c.Message.ID, LeaseToken: c.Message.LeaseToken, TaskUUID: c.TaskUUID,
		StepUUID: c.StepUUID, Attempt: c.Attempt, Error: b}
}

var (
	retryableErr = store.StepErrorInfo{Message: "flaky", Type: store.ErrorTypeHandler, Retryable: true}
	permanentErr = store.StepErrorInfo{Message: "broken", Type: store.ErrorTypePermanent}
)

// complete records completions and fails the test if any is refused.
func (h *harness) complete(comps ...store.StepCompletion) {
	h.t.Helper()
	refused, err := h.orch.CompleteSteps(h.ctx, comps)
	if err != nil {
		h.t.Fatalf("CompleteSteps: %v", err)
	}
	for i, r := range refused {
		if r != nil {
			h.t.Fatalf("completion %d refused: %v", i, r)
		}
	}
}

func (h *harness) task(id string) *store.TaskRow {
	h.t.Helper()
	task, err := h.d.Reader().TaskGet(h.ctx, store.TaskGetParams{UUID: id})
	if err != nil {
		h.t.Fatal(err)
	}
	return task
}

func (h *harness) steps(taskUUID string) map[string]store.StepRow {
	h.t.Helper()
	rows, err := h.d.Reader().StepsForTask(h.ctx, store.StepsForTaskParams{TaskUUID: taskUUID})
	if err != nil {
		h.t.Fatal(err)
	}
	out := map[string]store.StepRow{}
	for _, r := range rows {
		out[r.Name] = r
	}
	return out
}

func (h *harness) step(taskUUID, name string) store.StepRow {
	h.t.Helper()
	s, ok := h.steps(taskUUID)[name]
	if !ok {
		h.t.Fatalf("task %s has no step %s", taskUUID, name)
	}
	return s
}

// wantStates checks the task's state and the states of the named steps.
func (h *harness) wantStates(taskUUID string, task state.TaskState, steps map[string]state.StepState) {
	h.t.Helper()
	if got := state.TaskState(h.task(taskUUID).State); got != task {
		h.t.Errorf("task state = %s, want %s", got, task)
	}
	rows := h.steps(taskUUID)
	for name, want := range steps {
		if got := state.StepState(rows[name].State); got != want {
			h.t.Errorf("step %s state = %s, want %s", name, got, want)
		}
	}
}

func (h *harness) taskHistory(id string) []string {
	h.t.Helper()
	rows, err := h.d.Reader().TaskTransitions(h.ctx, store.TaskTransitionsParams{UUID: id})
	if err != nil {
		h.t.Fatal(err)
	}
	var out []string
	for _, r := range rows {
		out = append(out, r.From+"→"+r.To)
	}
	return out
}

func (h *harness) stepHistory(id string) []store.TransitionRow {
	h.t.Helper()
	rows, err := h.d.Reader().StepTransitions(h.ctx, store.StepTransitionsParams{UUID: id})
	if err != nil {
		h.t.Fatal(err)
	}
	return rows
}

// queued returns the number of messages (visible, leased) in the
// namespace's step queue.
func (h *harness) queued() (visible, leased int) {
	h.t.Helper()
	rows, err := h.d.Reader().QueueDepth(h.ctx, store.QueueDepthParams{Now: h.clock.Now()})
	if err != nil {
		h.t.Fatal(err)
	}
	for _, r := range rows {
		if r.Queue == store.WorkerQueue(testNS) {
			return r.Visible, r.Leased
		}
	}
	return 0, 0
}

func (h *harness) taskCount() int {
	h.t.Helper()
	tasks, err := h.d.Reader().TaskList(h.ctx, store.TaskListParams{})
	if err != nil {
		h.t.Fatal(err)
	}
	return len(tasks)
}

func stepError(t *testing.T, s store.StepRow) store.StepErrorInfo {
	t.Helper()
	var info store.StepErrorInfo
	if err := json.Unmarshal(s.Error, &info); err != nil {
		t.Fatalf("step %s error %q: %v", s.Name, s.Error, err)
	}
	return info
}

func TestCreateTask(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	task := h.create("flow", `{"order_id": 7}`)
	if state.TaskState(task.State) != state.TaskStepsInProcess {
		t.Errorf("returned task state = %s, want steps_in_process", task.State)
	}

	h.wantStates(task.UUID, state.TaskStepsInProcess, map[string]state.StepState{
		"a": state.StepEnqueued, "b": state.StepPending, "c": state.StepEnqueued,
	})
	wantHistory := []string{"pending→initializing", "initializing→enqueuing_steps", "enqueuing_steps→steps_in_process"}
	if got := h.taskHistory(task.UUID); !slices.Equal(got, wantHistory) {
		t.Errorf("task history = %v, want %v", got, wantHistory)
	}
	steps := h.steps(task.UUID)
	if len(steps) != 3 {
		t.Fatalf("got %d steps, want 3", len(steps))
	}
	if got := steps["b"].Parents; !slices.Equal(got, []string{steps["a"].UUID}) {
		t.Errorf("b's parents = %v, want [a = %s]", got, steps["a"].UUID)
	}
	if len(steps["a"].Parents) != 0 || len(steps["c"].Parents) != 0 {
		t.Errorf("roots have parents: a %v, c %v", steps["a"].Parents, steps["c"].Parents)
	}
	for _, name := range []string{"a", "c"} {
		if s := steps[name]; s.Callable != "shop."+name || s.MaxAttempts != 3 || !s.Retryable || s.Attempts != 0 {
			t.Errorf("step %s: callable %q, max_attempts %d, retryable %v, attempts %d; want shop.%s, 3, true, 0",
				name, s.Callable, s.MaxAttempts, s.Retryable, s.Attempts, name)
		}
	}
	if visible, leased := h.queued(); visible != 2 || leased != 0 {
		t.Errorf("queue holds %d visible and %d leased messages, want the 2 roots visible", visible, leased)
	}
	if got := h.task(task.UUID).Context; !jsonEqual(got, `{"order_id": 7}`) {
		t.Errorf("stored context = %s", got)
	}

	enq, changes := h.notes.snapshot()
	if !slices.EqualFunc(enq, [][]string{{testNS}}, slices.Equal) {
		t.Errorf("StepsEnqueued calls = %v, want [[shop]]", enq)
	}
	if !slices.Equal(changes, []taskChange{{task.UUID, state.TaskStepsInProcess}}) {
		t.Errorf("TaskChanged calls = %v, want the task moving to steps_in_process", changes)
	}

	// The claim a worker makes carries what its handler needs.
	c := h.claimOne("a")
	if c.TaskUUID != task.UUID || c.Callable != "shop.a" || c.Attempt != 1 || c.MaxAttempts != 3 ||
		c.Namespace != testNS || c.TaskName != "flow" || c.Version != "1.0.0" || !jsonEqual(c.TaskContext, `{"order_id":7}`) {
		t.Errorf("claimed step = %+v", c)
	}
}

func jsonEqual(got json.RawMessage, want string) bool {
	var a, b any
	if json.Unmarshal(got, &a) != nil || json.Unmarshal([]byte(want), &b) != nil {
		return false
	}
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return string(x) == string(y)
}

func TestCreateTaskIdentity(t *testing.T) {
	t.Parallel()
	type req struct {
		name, ctx, key string
		wantErr        error
	}
	tests := []struct {
		name string
		reqs []req
	}{
		{"strict: same context in another key order and spacing is a duplicate", []req{
			{"flow", `{"order_id":1,"note":"x","nested":{"a":1,"b":[1,2]}}`, "", nil},
			{"flow", " {\n \"nested\" : {\"b\":[1, 2], \"a\":1},\t\"note\":\"x\", \"order_id\": 1 } ", "", ErrDuplicateTask},
		}},
		{"strict: another context is a new task", []req{
			{"flow", `{"order_id":1}`, "", nil},
			{"flow", `{"order_id":2}`, "", nil},
		}},
		{"strict: an idempotency key overrides the context", []req{
			{"flow", `{"order_id":1}`, "", nil},
			{"flow", `{"order_id":1}`, "k1", nil},
			{"flow", `{"order_id":1}`, "k2", nil},
			{"flow", `{"order_id":99}`, "k1", ErrDuplicateTask},
		}},
		{"caller_provided: a key is required", []req{
			{"keyed", `{}`, "", ErrIdempotencyKeyRequired},
		}},
		{"caller_provided: the same key twice is a duplicate", []req{
			{"keyed", `{"x":1}`, "order-1", nil},
			{"keyed", `{"x":2}`, "order-1", ErrDuplicateTask},
			{"keyed", `{"x":1}`, "order-2", nil},
		}},
		{"always_unique: the same context twice makes two tasks", []req{
			{"unique", `{"x":1}`, "", nil},
			{"unique", `{"x":1}`, "", nil},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t)
			created := 0
			for i, r := range tc.reqs {
				task, _, _, err := h.orch.CreateTask(h.ctx, CreateTaskParams{Namespace: testNS, Name: r.name,
					Context: json.RawMessage(r.ctx), IdempotencyKey: r.key})
				if !errors.Is(err, r.wantErr) {
					t.Fatalf("request %d: CreateTask error = %v, want %v", i, err, r.wantErr)
				}
				if err == nil {
					created++
					if task == nil || task.UUID == "" {
						t.Fatalf("request %d: no task returned", i)
					}
				}
			}
			if n := h.taskCount(); n != created {
				t.Errorf("%d tasks stored, want %d", n, created)
			}
		})
	}
}

func TestCreateTaskRefusesBadRequests(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, template, version, ctx string
		wantErr                      error
	}{
		{"context not JSON", "flow", "", `{"order_id": 1`, ErrInvalidContext},
		{"context an array", "flow", "", `[1, 2]`, ErrInvalidContext},
		{"context a string", "flow", "", `"order"`, ErrInvalidContext},
		{"context missing a required field", "flow", "", `{}`, ErrInvalidContext},
		{"context with a wrong type", "flow", "", `{"order_id": "seven"}`, ErrInvalidContext},
		{"null context on a template that requires fields", "flow", "", `null`, ErrInvalidContext},
		{"unknown template", "nope", "", `{}`, ErrTemplateNotFound},
		{"unknown version", "flow", "9.9.9", `{"order_id": 1}`, ErrTemplateNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t)
			task, _, _, err := h.orch.CreateTask(h.ctx, CreateTaskParams{Namespace: testNS, Name: tc.template, Version: tc.version,
				Context: json.RawMessage(tc.ctx)})
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("CreateTask error = %v, want %v", err, tc.wantErr)
			}
			if task != nil {
				t.Errorf("CreateTask returned a task along with an error")
			}
			if n := h.taskCount(); n != 0 {
				t.Errorf("%d tasks stored after a refused request, want 0", n)
			}
			if visible, leased := h.queued(); visible+leased != 0 {
				t.Errorf("%d messages queued after a refused request, want 0", visible+leased)
			}
			if enq, changes := h.notes.snapshot(); len(enq)+len(changes) != 0 {
				t.Errorf("notifier called after a refused request: %v %v", enq, changes)
			}
		})
	}
}

func TestSuccessEnqueuesChildrenAndCompletesTask(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	task := h.create("flow", `{"order_id": 1}`)
	claims := h.claim(30 * time.Second)
	if len(claims) != 2 {
		t.Fatalf("claimed %d steps, want the 2 roots", len(claims))
	}

	h.complete(successOf(claims["a"], `{"total": 42}`))
	h.wantStates(task.UUID, state.TaskStepsInProcess, map[string]state.StepState{
		"a": state.StepComplete, "b": state.StepEnqueued, "c": state.StepInProgress,
	})
	if got := h.step(task.UUID, "a").Result; !jsonEqual(got, `{"total":42}`) {
		t.Errorf("a's result = %s", got)
	}
	if enq, _ := h.notes.snapshot(); len(enq) != 2 {
		t.Errorf("StepsEnqueued called %d times, want 2 (creation, then b)", len(enq))
	}

	b := h.claimOne("b")
	h.complete(successOf(b, `"ok"`), successOf(claims["c"], `null`))
	h.wantStates(task.UUID, state.TaskComplete, map[string]state.StepState{
		"a": state.StepComplete, "b": state.StepComplete, "c": state.StepComplete,
	})
	hist := h.taskHistory(task.UUID)
	if last := hist[len(hist)-1]; last != "evaluating_results→complete" {
		t.Errorf("task history = %v, want it to end with evaluating_results→complete", hist)
	}
	if h.task(task.UUID).CompletedAt == nil {
		t.Error("complete task has no completed_at")
	}
	if _, changes := h.notes.snapshot(); changes[len(changes)-1] != (taskChange{task.UUID, state.TaskComplete}) {
		t.Errorf("last TaskChanged = %v, want complete", changes[len(changes)-1])
	}
	h.wantSnapshot(task.UUID)
	stepHist := h.stepHistory(b.StepUUID)
	var path []string
	for _, r := range stepHist {
		path = append(path, r.To)
	}
	if want := []string{"enqueued", "in_progress", "enqueued_for_orchestration", "complete"}; !slices.Equal(path, want) {
		t.Errorf("b's history = %v, want %v", path, want)
	}
}

func TestRetryableFailureSchedulesBackoff(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	task := h.create("retry", `{}`)
	start := h.clock.Now()

	// Attempt 1 fails: retry after the exponential base, 1s.
	h.complete(failureOf(h.claimOne("work"), retryableErr))
	s := h.step(task.UUID, "work")
	h.wantStates(task.UUID, state.TaskWaitingForRetry, map[string]state.StepState{"work": state.StepWaitingForRetry})
	if s.NextRetryAt == nil || !s.NextRetryAt.Equal(start.Add(time.Second)) {
		t.Fatalf("next_retry_at = %v, want %v (now + 1s)", s.NextRetryAt, start.Add(time.Second))
	}
	if s.Attempts != 1 {
		t.Errorf("attempts = %d, want 1", s.Attempts)
	}
	if info := stepError(t, s); info.Message != "flaky" || !info.Retryable {
		t.Errorf("stored error = %+v", info)
	}
	_, _, sum, err := h.orch.TaskStatus(h.ctx, task.UUID)
	if err != nil {
		t.Fatal(err)
	}
	if sum.PendingRetries != 1 || sum.EarliestRetry == nil || !sum.EarliestRetry.Equal(*s.NextRetryAt) || !sum.CanProgress() {
		t.Errorf("status: PendingRetries %d, EarliestRetry %v, CanProgress %v", sum.PendingRetries, sum.EarliestRetry, sum.CanProgress())
	}

	// Before the backoff ends, evaluating changes nothing.
	h.clock.Advance(999 * time.Millisecond)
	if err := h.orch.EvaluateTask(h.ctx, task.UUID); err != nil {
		t.Fatal(err)
	}
	h.wantStates(task.UUID, state.TaskWaitingForRetry, map[string]state.StepState{"work": state.StepWaitingForRetry})
	if visible, _ := h.queued(); visible != 0 {
		t.Fatalf("%d messages queued before the backoff ended", visible)
	}

	// Once it ends, evaluating enqueues the step again.
	h.clock.Advance(time.Millisecond)
	if err := h.orch.EvaluateTask(h.ctx, task.UUID); err != nil {
		t.Fatal(err)
	}
	h.wantStates(task.UUID, state.TaskStepsInProcess, map[string]state.StepState{"work": state.StepEnqueued})
	if s := h.step(task.UUID, "work"); s.NextRetryAt != nil {
		t.Errorf("enqueued step keeps next_retry_at %v", s.NextRetryAt)
	}
	hist := h.taskHistory(task.UUID)
	if want := []string{"waiting_for_retry→enqueuing_steps", "enqueuing_steps→steps_in_process"}; !slices.Equal(hist[len(hist)-2:], want) {
		t.Errorf("task history = %v, want it to end with %v", hist, want)
	}

	// Attempt 2 fails: the delay doubles.
	c := h.claimOne("work")
	if c.Attempt != 2 {
		t.Errorf("second claim is attempt %d, want 2", c.Attempt)
	}
	now := h.clock.Now()
	h.complete(failureOf(c, retryableErr))
	if s := h.step(task.UUID, "work"); s.NextRetryAt == nil || !s.NextRetryAt.Equal(now.Add(2*time.Second)) {
		t.Fatalf("after attempt 2: next_retry_at = %v, want now + 2s", s.NextRetryAt)
	}

	// Attempt 3 is the last: its failure is final.
	h.clock.Advance(2 * time.Second)
	if err := h.orch.SweepRetries(h.ctx); err != nil {
		t.Fatal(err)
	}
	h.complete(failureOf(h.claimOne("work"), retryableErr))
	h.wantStates(task.UUID, state.TaskBlockedByFailures, map[string]state.StepState{"work": state.StepError})
	if s := h.step(task.UUID, "work"); s.Attempts != 3 || s.NextRetryAt != nil {
		t.Errorf("exhausted step: attempts %d, next_retry_at %v; want 3, nil", s.Attempts, s.NextRetryAt)
	}
	_, _, sum, err = h.orch.TaskStatus(h.ctx, task.UUID)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Status != StatusBlockedByFailures || sum.CanProgress() {
		t.Errorf("status %s, CanProgress %v; want blocked_by_failures, false", sum.Status, sum.CanProgress())
	}
}

func TestRetryAfter(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name         string
		retryAfterMS int64
		want         time.Duration
	}{
		{"longer than the backoff wins", 7000, 7 * time.Second},
		{"shorter than the backoff is ignored", 10, time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t)
			task := h.create("retry", `{}`)
			info := retryableErr
			info.RetryAfterMS = tc.retryAfterMS
			h.complete(failureOf(h.claimOne("work"), info))
			s := h.step(task.UUID, "work")
			if want := h.clock.Now().Add(tc.want); s.NextRetryAt == nil || !s.NextRetryAt.Equal(want) {
				t.Errorf("next_retry_at = %v, want %v", s.NextRetryAt, want)
			}
		})
	}
}

func TestFailuresThatEndAStep(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		template string
		info     store.StepErrorInfo
	}{
		{"non-retryable error", "retry", permanentErr},
		{"retryable error on a step that is not retryable", "noretry", retryableErr},
		{"max_attempts 0 allows a single attempt", "once0", retryableErr},
		{"max_attempts 1 allows a single attempt", "once1", retryableErr},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t)
			task := h.create(tc.template, `{}`)
			h.complete(failureOf(h.claimOne("work"), tc.info))
			h.wantStates(task.UUID, state.TaskBlockedByFailures, map[string]state.StepState{"work": state.StepError})
			s := h.step(task.UUID, "work")
			if s.Attempts != 1 || s.NextRetryAt != nil {
				t.Errorf("attempts %d, next_retry_at %v; want 1, nil", s.Attempts, s.NextRetryAt)
			}
			if info := stepError(t, s); info.Message != tc.info.Message {
				t.Errorf("stored error = %+v, want message %q", info, tc.info.Message)
			}
			// Nothing brings it back on its own.
			h.clock.Advance(time.Hour)
			if err := h.orch.EvaluateTask(h.ctx, task.UUID); err != nil {
				t.Fatal(err)
			}
			if err := h.orch.SweepRetries(h.ctx); err != nil {
				t.Fatal(err)
			}
			h.wantStates(task.UUID, state.TaskBlockedByFailures, map[string]state.StepState{"work": state.StepError})
			if visible, leased := h.queued(); visible+leased != 0 {
				t.Errorf("%d messages queued for a failed step", visible+leased)
			}
		})
	}
}

// TestIndependentBranchesRunOn checks that a dead step does not stop the
// branches that do not depend on it, and that the task settles in
// blocked_by_failures only once nothing can progress.
func TestIndependentBranchesRunOn(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	task := h.create("branches", `{}`)
	claims := h.claim(30 * time.Second)
	if len(claims) != 3 {
		t.Fatalf("claimed %v, want the 3 roots", claims)
	}
	status := func() Summary {
		t.Helper()
		_, _, sum, err := h.orch.TaskStatus(h.ctx, task.UUID)
		if err != nil {
			t.Fatal(err)
		}
		return sum
	}

	h.complete(failureOf(claims["doomed"], permanentErr))
	h.wantStates(task.UUID, state.TaskStepsInProcess, map[string]state.StepState{"doomed": state.StepError})
	if sum := status(); sum.Status != StatusBlockedByFailures || !sum.CanProgress() {
		t.Errorf("after doomed failed: status %s, CanProgress %v; want blocked_by_failures, true", sum.Status, sum.CanProgress())
	}

	h.complete(successOf(claims["left"], `1`))
	h.wantStates(task.UUID, state.TaskStepsInProcess, map[string]state.StepState{
		"left": state.StepComplete, "right": state.StepEnqueued,
	})

	// flaky fails retryably: the task waits for its retry, not for an operator.
	h.complete(failureOf(claims["flaky"], retryableErr))
	right := h.claimOne("right")
	h.complete(successOf(right, `2`))
	h.wantStates(task.UUID, state.TaskWaitingForRetry, map[string]state.StepState{
		"right": state.StepComplete, "flaky": state.StepWaitingForRetry,
	})

	h.clock.Advance(500 * time.Millisecond)
	if err := h.orch.SweepRetries(h.ctx); err != nil {
		t.Fatal(err)
	}
	h.wantStates(task.UUID, state.TaskStepsInProcess, map[string]state.StepState{"flaky": state.StepEnqueued})

	// Its last attempt fails too: now nothing can progress.
	h.complete(failureOf(h.claimOne("flaky"), retryableErr))
	h.wantStates(task.UUID, state.TaskBlockedByFailures, map[string]state.StepState{
		"doomed": state.StepError, "flaky": state.StepError, "left": state.StepComplete, "right": state.StepComplete,
	})
	if sum := status(); sum.Status != StatusBlockedByFailures || sum.CanProgress() {
		t.Errorf("settled: status %s, CanProgress %v; want blocked_by_failures, false", sum.Status, sum.CanProgress())
	}
	if _, changes := h.notes.snapshot(); changes[len(changes)-1] != (taskChange{task.UUID, state.TaskBlockedByFailures}) {
		t.Errorf("last TaskChanged = %v, want blocked_by_failures", changes[len(changes)-1])
	}
	h.wantSnapshot(task.UUID)
}

func TestRescueExpiredLeases(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		template  string
		wantStep  state.StepState
		wantTask  state.TaskState
		wantRetry bool
	}{
		{"attempts left: the step retries", "retry", state.StepWaitingForRetry, state.TaskWaitingForRetry, true},
		{"attempts exhausted: the step fails", "once1", state.StepError, state.TaskBlockedByFailures, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t)
			task := h.create(tc.template, `{}`)
			c, ok := h.claim(5 * time.Second)["work"]
			if !ok {
				t.Fatal("work was not claimable")
			}

			// A lease that has not expired is left alone.
			h.clock.Advance(4 * time.Second)
			if n, err := h.orch.RescueExpiredLeases(h.ctx); err != nil || n != 0 {
				t.Fatalf("RescueExpiredLeases before expiry = %d, %v; want 0, nil", n, err)
			}
			h.wantStates(task.UUID, state.TaskStepsInProcess, map[string]state.StepState{"work": state.StepInProgress})

			h.clock.Advance(2 * time.Second)
			if n, err := h.orch.RescueExpiredLeases(h.ctx); err != nil || n != 1 {
				t.Fatalf("RescueExpiredLeases = %d, %v; want 1, nil", n, err)
			}
			h.wantStates(task.UUID, tc.wantTask, map[string]state.StepState{"work": tc.wantStep})
			s := h.step(task.UUID, "work")
			if s.Attempts != 1 {
				t.Errorf("attempts = %d, want 1 (the lost attempt counts)", s.Attempts)
			}
			if info := stepError(t, s); info.Type != store.ErrorTypeLeaseExpired || !strings.Contains(info.Message, "worker-test") {
				t.Errorf("stored error = %+v, want lease_expired naming the worker", info)
			}
			if tc.wantRetry {
				if want := h.clock.Now().Add(time.Second); s.NextRetryAt == nil || !s.NextRetryAt.Equal(want) {
					t.Errorf("next_retry_at = %v, want %v", s.NextRetryAt, want)
				}
			}
			if visible, leased := h.queued(); visible+leased != 0 {
				t.Errorf("%d messages left for the rescued step", visible+leased)
			}

			// The worker's result, arriving late, is refused and changes nothing.
			before := h.stepHistory(c.StepUUID)
			refused, err := h.orch.CompleteSteps(h.ctx, []store.StepCompletion{successOf(c, `"late"`)})
			if err != nil {
				t.Fatal(err)
			}
			if !errors.Is(refused[0], store.ErrLeaseLost) {
				t.Errorf("late result: refused = %v, want ErrLeaseLost", refused[0])
			}
			h.wantStates(task.UUID, tc.wantTask, map[string]state.StepState{"work": tc.wantStep})
			if after := h.stepHistory(c.StepUUID); len(after) != len(before) {
				t.Errorf("late result added history: %d rows, had %d", len(after), len(before))
			}

			// A second sweep finds nothing more.
			if n, err := h.orch.RescueExpiredLeases(h.ctx); err != nil || n != 0 {
				t.Errorf("second RescueExpiredLeases = %d, %v; want 0, nil", n, err)
			}
			if tc.wantRetry {
				h.clock.Advance(time.Second)
				if err := h.orch.EvaluateTask(h.ctx, task.UUID); err != nil {
					t.Fatal(err)
				}
				if c2 := h.claimOne("work"); c2.Attempt != 2 {
					t.Errorf("retry after rescue is attempt %d, want 2", c2.Attempt)
				}
			}
		})
	}
}

func TestCancelTask(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	task := h.create("flow", `{"order_id": 1}`)
	a := h.claimOne("a") // a in progress, c claimed too, b pending
	if visible, leased := h.queued(); visible != 0 || leased != 2 {
		t.Fatalf("queue before cancel: %d visible, %d leased; want 0, 2", visible, leased)
	}

	got, err := h.orch.CancelTask(h.ctx, task.UUID, "ops", "customer changed their mind")
	if err != nil {
		t.Fatal(err)
	}
	if state.TaskState(got.State) != state.TaskCancelled {
		t.Errorf("returned task state = %s, want cancelled", got.State)
	}
	h.wantStates(task.UUID, state.TaskCancelled, map[string]state.StepState{
		"a": state.StepCancelled, "b": state.StepCancelled, "c": state.StepCancelled,
	})
	if visible, leased := h.queued(); visible+leased != 0 {
		t.Errorf("queue after cancel: %d visible, %d leased; want empty", visible, leased)
	}
	hist := h.stepHistory(h.step(task.UUID, "b").UUID)
	if last := hist[len(hist)-1]; !strings.Contains(string(last.Metadata), "customer changed their mind") {
		t.Errorf("cancel history metadata = %s, want the reason", last.Metadata)
	}
	if _, changes := h.notes.snapshot(); changes[len(changes)-1] != (taskChange{task.UUID, state.TaskCancelled}) {
		t.Errorf("last TaskChanged = %v, want cancelled", changes[len(changes)-1])
	}

	// The handler that was running reports in: refused.
	refused, err := h.orch.CompleteSteps(h.ctx, []store.StepCompletion{successOf(a, `1`)})
	if err != nil {
		t.Fatal(err)
	}
	if !errors.Is(refused[0], store.ErrLeaseLost) {
		t.Errorf("result for a cancelled step: refused = %v, want ErrLeaseLost", refused[0])
	}
	h.wantStates(task.UUID, state.TaskCancelled, map[string]state.StepState{"a": state.StepCancelled})

	if _, err := h.orch.CancelTask(h.ctx, task.UUID, "ops", "again"); !errors.Is(err, ErrTaskFinished) {
		t.Errorf("cancelling a cancelled task: %v, want ErrTaskFinished", err)
	}
	if _, err := h.orch.CancelTask(h.ctx, "no-such-task", "ops", ""); !errors.Is(err, ErrTaskNotFound) {
		t.Errorf("cancelling an unknown task: %v, want ErrTaskNotFound", err)
	}

	// A complete task cannot be cancelled either.
	done := h.create("unique", `{}`)
	h.complete(successOf(h.claimOne("only"), `1`))
	h.wantStates(done.UUID, state.TaskComplete, nil)
	if _, err := h.orch.CancelTask(h.ctx, done.UUID, "ops", ""); !errors.Is(err, ErrTaskFinished) {
		t.Errorf("cancelling a complete task: %v, want ErrTaskFinished", err)
	}
	h.wantStates(done.UUID, state.TaskComplete, map[string]state.StepState{"only": state.StepComplete})
}

// blockedTask makes a "blocked" task whose step bad failed permanently and
// whose step good succeeded: the task is blocked_by_failures.
func (h *harness) blockedTask() *store.TaskRow {
	h.t.Helper()
	task := h.create("blocked", `{}`)
	claims := h.claim(30 * time.Second)
	h.complete(failureOf(claims["bad"], permanentErr), successOf(claims["good"], `"g"`))
	h.wantStates(task.UUID, state.TaskBlockedByFailures, map[string]state.StepState{
		"bad": state.StepError, "good": state.StepComplete, "after": state.StepPending,
	})
	return task
}

func TestManualActionsUnblockTask(t *testing.T) {
	t.Parallel()
	tests := []struct {
		action     StepAction
		result     string
		wantBad    state.StepState // right after the action
		rerunBad   bool            // bad runs again before after
		wantResult string          // bad's result at the end, "" for none
	}{
		{ActionResetForRetry, "", state.StepEnqueued, true, `"fixed by rerun"`},
		{ActionResolveManually, "", state.StepResolvedManually, false, ""},
		{ActionCompleteManually, `{"refund": 10}`, state.StepComplete, false, `{"refund":10}`},
	}
	for _, tc := range tests {
		t.Run(string(tc.action), func(t *testing.T) {
			t.Parallel()
			h := newHarness(t)
			task := h.blockedTask()
			bad := h.step(task.UUID, "bad")

			got, err := h.orch.ApplyStepAction(h.ctx, StepActionParams{TaskUUID: task.UUID, StepUUID: bad.UUID,
				Action: tc.action, Result: json.RawMessage(tc.result), Actor: "alice", Reason: "ticket 12"})
			if err != nil {
				t.Fatalf("ApplyStepAction: %v", err)
			}
			if got.UUID != bad.UUID {
				t.Errorf("returned step %s, want %s", got.UUID, bad.UUID)
			}
			h.wantStates(task.UUID, state.TaskStepsInProcess, map[string]state.StepState{"bad": tc.wantBad})
			var actionRow *store.TransitionRow
			for _, r := range h.stepHistory(bad.UUID) {
				if r.Event == string(tc.action) {
					actionRow = &r
				}
			}
			if actionRow == nil || !strings.Contains(string(actionRow.Metadata), "alice") ||
				!strings.Contains(string(actionRow.Metadata), "ticket 12") {
				t.Errorf("no %s history row naming the actor and reason: %+v", tc.action, actionRow)
			}
			if tc.action == ActionResetForRetry {
				if s := h.step(task.UUID, "bad"); s.Attempts != 0 {
					t.Errorf("attempts after reset = %d, want 0", s.Attempts)
				}
			}

			if tc.rerunBad {
				c := h.claimOne("bad")
				if c.Attempt != 1 {
					t.Errorf("rerun is attempt %d, want 1 after a reset", c.Attempt)
				}
				h.complete(successOf(c, tc.wantResult))
			}
			h.wantStates(task.UUID, state.TaskStepsInProcess, map[string]state.StepState{"after": state.StepEnqueued})
			h.complete(successOf(h.claimOne("after"), `"done"`))
			h.wantStates(task.UUID, state.TaskComplete, map[string]state.StepState{
				"good": state.StepComplete, "after": state.StepComplete,
			})
			if res := h.step(task.UUID, "bad").Result; tc.wantResult != "" && !jsonEqual(res, tc.wantResult) {
				t.Errorf("bad's result = %s, want %s", res, tc.wantResult)
			}
			hist := h.taskHistory(task.UUID)
			if !slices.Contains(hist, "blocked_by_failures→evaluating_results") {
				t.Errorf("task history %v does not show the resume", hist)
			}
		})
	}
}

func TestIllegalManualActions(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	task := h.blockedTask()
	good := h.step(task.UUID, "good")
	after := h.step(task.UUID, "after")
	historyBefore := h.taskHistory(task.UUID)

	tests := []struct {
		name    string
		p       StepActionParams
		wantErr error
	}{
		{"reset_for_retry on a complete step", StepActionParams{StepUUID: good.UUID, Action: ActionResetForRetry}, state.ErrIllegalTransition},
		{"complete_manually on a complete step", StepActionParams{StepUUID: good.UUID, Action: ActionCompleteManually}, state.ErrIllegalTransition},
		{"reset_for_retry on a pending step", StepActionParams{StepUUID: after.UUID, Action: ActionResetForRetry}, state.ErrIllegalTransition},
		{"unknown step", StepActionParams{StepUUID: "nope", Action: ActionResolveManually}, ErrStepNotFound},
		{"unknown task", StepActionParams{TaskUUID: "nope", StepUUID: good.UUID, Action: ActionResolveManually}, ErrTaskNotFound},
	}
	for _, tc := range tests {
		if tc.p.TaskUUID == "" {
			tc.p.TaskUUID = task.UUID
		}
		if _, err := h.orch.ApplyStepAction(h.ctx, tc.p); !errors.Is(err, tc.wantErr) {
			t.Errorf("%s: error %v, want %v", tc.name, err, tc.wantErr)
		}
	}
	if _, err := h.orch.ApplyStepAction(h.ctx, StepActionParams{TaskUUID: task.UUID, StepUUID: good.UUID, Action: "retry_harder"}); err == nil {
		t.Error("unknown action accepted")
	}
	if _, err := h.orch.ApplyStepAction(h.ctx, StepActionParams{TaskUUID: task.UUID, StepUUID: h.step(task.UUID, "bad").UUID,
		Action: ActionCompleteManually, Result: json.RawMessage(`{oops`)}); err == nil {
		t.Error("complete_manually with a result that is not JSON accepted")
	}
	h.wantStates(task.UUID, state.TaskBlockedByFailures, map[string]state.StepState{
		"bad": state.StepError, "good": state.StepComplete, "after": state.StepPending,
	})
	if got := h.taskHistory(task.UUID); !slices.Equal(got, historyBefore) {
		t.Errorf("refused actions changed the task history: %v, was %v", got, historyBefore)
	}

	// Once the task is complete, actions are refused as finished.
	if _, err := h.orch.ApplyStepAction(h.ctx, StepActionParams{TaskUUID: task.UUID, StepUUID: h.step(task.UUID, "bad").UUID,
		Action: ActionResolveManually}); err != nil {
		t.Fatal(err)
	}
	h.complete(successOf(h.claimOne("after"), `1`))
	h.wantStates(task.UUID, state.TaskComplete, nil)
	if _, err := h.orch.ApplyStepAction(h.ctx, StepActionParams{TaskUUID: task.UUID, StepUUID: good.UUID,
		Action: ActionResolveManually}); !errors.Is(err, ErrTaskFinished) {
		t.Errorf("action on a complete task: %v, want ErrTaskFinished", err)
	}
}

func TestStaleResultsAreRefused(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	task := h.create("flow", `{"order_id": 1}`)
	claims := h.claim(30 * time.Second)
	a := claims["a"]

	type view struct {
		steps           map[string]store.StepRow
		taskHistory     []string
		stepHistory     int
		visible, leased int
	}
	snapshot := func() view {
		v := view{steps: h.steps(task.UUID), taskHistory: h.taskHistory(task.UUID), stepHistory: len(h.stepHistory(a.StepUUID))}
		v.visible, v.leased = h.queued()
		return v
	}
	check := func(what string, c store.StepCompletion) {
		t.Helper()
		before := snapshot()
		refused, err := h.orch.CompleteSteps(h.ctx, []store.StepCompletion{c})
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if len(refused) != 1 || !errors.Is(refused[0], store.ErrLeaseLost) {
			t.Fatalf("%s: refused = %v, want [ErrLeaseLost]", what, refused)
		}
		after := snapshot()
		for name, b := range before.steps {
			a := after.steps[name]
			if a.State != b.State || a.Attempts != b.Attempts || string(a.Result) != string(b.Result) || string(a.Error) != string(b.Error) {
				t.Errorf("%s changed step %s: %+v → %+v", what, name, b, a)
			}
		}
		if !slices.Equal(after.taskHistory, before.taskHistory) || after.stepHistory != before.stepHistory {
			t.Errorf("%s changed history", what)
		}
		if after.visible != before.visible || after.leased != before.leased {
			t.Errorf("%s changed the queue: %d visible, %d leased; was %d, %d", what, after.visible, after.leased,
				before.visible, before.leased)
		}
	}

	wrongToken := successOf(a, `1`)
	wrongToken.LeaseToken = "not-the-token"
	check("a result with a stale lease token", wrongToken)
	// A refused completion must leave the message leased, or the step
	// would be stranded in_progress with nothing left to rescue it.
	wrongAttempt := failureOf(a, retryableErr)
	wrongAttempt.Attempt = 2
	check("a result for another attempt", wrongAttempt)

	// One good and one stale completion in the same batch: only the good one counts.
	stale := successOf(claims["c"], `"c"`)
	stale.LeaseToken = "stale"
	refused, err := h.orch.CompleteSteps(h.ctx, []store.StepCompletion{successOf(a, `"a"`), stale})
	if err != nil {
		t.Fatal(err)
	}
	if refused[0] != nil || !errors.Is(refused[1], store.ErrLeaseLost) {
		t.Fatalf("mixed batch: refused = %v, want [nil, ErrLeaseLost]", refused)
	}
	h.wantStates(task.UUID, state.TaskStepsInProcess, map[string]state.StepState{
		"a": state.StepComplete, "b": state.StepEnqueued, "c": state.StepInProgress,
	})

	check("the same result delivered twice", successOf(a, `"again"`))
	if got := h.step(task.UUID, "a").Result; !jsonEqual(got, `"a"`) {
		t.Errorf("a's result = %s, want the first one", got)
	}
}

// TestRetryWithoutBackoffIsEnqueuedAtOnce: with backoff none the retry is
// due immediately, so the same transaction enqueues it again.
func TestRetryWithoutBackoffIsEnqueuedAtOnce(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	task := h.create("nowait", `{}`)
	h.complete(failureOf(h.claimOne("work"), retryableErr))
	h.wantStates(task.UUID, state.TaskStepsInProcess, map[string]state.StepState{"work": state.StepEnqueued})
	var path []string
	for _, r := range h.stepHistory(h.step(task.UUID, "work").UUID) {
		path = append(path, r.To)
	}
	want := []string{"enqueued", "in_progress", "enqueued_as_error_for_orchestration", "waiting_for_retry", "enqueued"}
	if !slices.Equal(path, want) {
		t.Errorf("step history = %v, want %v", path, want)
	}
	c := h.claimOne("work")
	h.complete(successOf(c, `"second time lucky"`))
	h.wantStates(task.UUID, state.TaskComplete, map[string]state.StepState{"work": state.StepComplete})
}

// TestResolvingTheLastFailureCompletesTask: when the errored step was the
// only thing left, resolving it completes the task in the same action.
func TestResolvingTheLastFailureCompletesTask(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	task := h.create("once1", `{}`)
	h.complete(failureOf(h.claimOne("work"), permanentErr))
	h.wantStates(task.UUID, state.TaskBlockedByFailures, nil)
	if _, err := h.orch.ApplyStepAction(h.ctx, StepActionParams{TaskUUID: task.UUID,
		StepUUID: h.step(task.UUID, "work").UUID, Action: ActionResolveManually, Actor: "bob"}); err != nil {
		t.Fatal(err)
	}
	h.wantStates(task.UUID, state.TaskComplete, map[string]state.StepState{"work": state.StepResolvedManually})
	hist := h.taskHistory(task.UUID)
	if want := []string{"blocked_by_failures→evaluating_results", "evaluating_results→complete"}; !slices.Equal(hist[len(hist)-2:], want) {
		t.Errorf("task history = %v, want it to end with %v", hist, want)
	}
}

// TestForwardedResults covers the worker-only path: results recorded by
// ForwardCompletions wait in the orchestration queue until an orchestrator
// processes them.
func TestForwardedResults(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	task := h.create("flow", `{"order_id": 1}`)
	claims := h.claim(30 * time.Second)
	stale := successOf(claims["c"], `1`)
	stale.LeaseToken = "stale"
	refused, err := ForwardCompletions(h.ctx, h.d, []store.StepCompletion{successOf(claims["a"], `"a"`), stale})
	if err != nil {
		t.Fatal(err)
	}
	if refused[0] != nil || !errors.Is(refused[1], store.ErrLeaseLost) {
		t.Fatalf("refused = %v, want [nil, ErrLeaseLost]", refused)
	}
	// Recorded, not yet processed.
	h.wantStates(task.UUID, state.TaskStepsInProcess, map[string]state.StepState{
		"a": state.StepEnqueuedForOrchestration, "b": state.StepPending, "c": state.StepInProgress,
	})

	n, err := h.orch.processQueuedResults(h.ctx)
	if err != nil || n != 1 {
		t.Fatalf("processQueuedResults = %d, %v; want 1, nil", n, err)
	}
	h.wantStates(task.UUID, state.TaskStepsInProcess, map[string]state.StepState{
		"a": state.StepComplete, "b": state.StepEnqueued, "c": state.StepInProgress,
	})
	if n, err := h.orch.processQueuedResults(h.ctx); err != nil || n != 0 {
		t.Errorf("second processQueuedResults = %d, %v; want 0, nil", n, err)
	}
}

// TestHandoffLeaseRunsFromClaim: the steps a completing transaction claims
// for its worker get their lease from the claim, not from before the
// transaction waited for the SQLite writer.
func TestHandoffLeaseRunsFromClaim(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	task := h.create("flow", `{"order_id": 1}`)
	a := h.claim(30 * time.Second)["a"]

	tx, err := h.d.Begin(h.ctx)
	if err != nil {
		t.Fatal(err)
	}
	type outcome struct {
		claimed []store.ClaimedStep
		err     error
	}
	done := make(chan outcome, 1)
	lease := 10 * time.Second
	go func() {
		_, claimed, err := h.orch.CompleteAndClaim(h.ctx, []store.StepCompletion{successOf(a, `1`)},
			store.StepsClaimParams{Queues: []string{store.WorkerQueue(testNS)}, Limit: 5, Lease: lease, Owner: "worker-test"})
		done <- outcome{claimed, err}
	}()
	// Let CompleteAndClaim take its start time and queue for the writer,
	// then move the clock on as if the wait had lasted a minute.
	time.Sleep(100 * time.Millisecond)
	h.clock.Advance(time.Minute)
	freed := h.clock.Now()
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	got := <-done
	if got.err != nil {
		t.Fatal(got.err)
	}
	if len(got.claimed) != 1 || got.claimed[0].StepName != "b" {
		t.Fatalf("claimed %+v, want b", got.claimed)
	}
	h.wantStates(task.UUID, state.TaskStepsInProcess, map[string]state.StepState{"a": state.StepComplete, "b": state.StepInProgress})
	if until := got.claimed[0].Message.LeaseUntil; until == nil || until.Before(freed.Add(lease)) {
		t.Errorf("b's lease ends at %v, want %v: the lease ran from before the wait for the writer", until, freed.Add(lease))
	}
}

// TestCreateTasksEach: refused requests are answered at their positions
// and the others created in the same transaction, an identity taken by an
// earlier request of the batch included; a failure that is no request's
// fault (here the caller's context ending before the templates are read)
// fails the batch instead of being handed to each request as its own.
func TestCreateTasksEach(t *testing.T) {
	h := newHarness(t)
	ps := []CreateTaskParams{
		{Namespace: testNS, Name: "unique"},
		{Namespace: testNS, Name: "nope"},
		{Namespace: testNS, Name: "keyed"},
		{Namespace: testNS, Name: "keyed", IdempotencyKey: "k1"},
		{Namespace: testNS, Name: "keyed", IdempotencyKey: "k1"},
		{Namespace: testNS, Name: "unique", Context: json.RawMessage(`[1]`)},
	}
	created, refused, _, err := h.orch.CreateTasksEach(h.ctx, ps, store.StepsClaimParams{})
	if err != nil {
		t.Fatalf("CreateTasksEach: %v", err)
	}
	want := []error{nil, ErrTemplateNotFound, ErrIdempotencyKeyRequired, nil, ErrDuplicateTask, ErrInvalidContext}
	for i, w := range want {
		switch {
		case w == nil && (refused[i] != nil || created[i].Task == nil):
			t.Errorf("request %d: refused %v, task %v; want it created", i, refused[i], created[i].Task)
		case w != nil && (!errors.Is(refused[i], w) || created[i].Task != nil):
			t.Errorf("request %d: refused %v, task %v; want %v and no task", i, refused[i], created[i].Task, w)
		}
	}
	for _, i := range []int{0, 3} {
		if got := h.task(created[i].Task.UUID); got.State != string(state.TaskStepsInProcess) {
			t.Errorf("request %d: stored task in %s, want steps_in_process", i, got.State)
		}
	}
	rows, err := h.d.Reader().TaskList(h.ctx, store.TaskListParams{Namespace: testNS})
	if err != nil || len(rows) != 2 {
		t.Fatalf("%d tasks stored (err %v), want the 2 created", len(rows), err)
	}

	ctx, cancel := context.WithCancel(h.ctx)
	cancel()
	created, refused, _, err = h.orch.CreateTasksEach(ctx, ps[:1], store.StepsClaimParams{})
	if !errors.Is(err, context.Canceled) || created != nil || refused != nil {
		t.Fatalf("with an ended context: err %v, refused %v; want the batch to fail with context.Canceled", err, refused)
	}
}
