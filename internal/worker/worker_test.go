package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/tasker-go/tasker/internal/chanmon"
	"github.com/tasker-go/tasker/store"
	"github.com/tasker-go/tasker/store/sqlite"
	"github.com/tasker-go/tasker/store/storetest"
)

const testNS = "work"

// waitLimit bounds every wait in these tests. It is generous: reaching it
// means something is stuck, not slow.
const waitLimit = 15 * time.Second

func openStore(t *testing.T) store.Driver {
	t.Helper()
	d, err := sqlite.Open(t.Context(), sqlite.Config{Path: filepath.Join(t.TempDir(), "w.db")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	if err := d.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	return d
}

// seed inserts a task whose steps call the given callables and enqueues
// every step, as an orchestrator would. It returns the step UUIDs in order.
func seed(t *testing.T, d store.Driver, callables ...string) []string {
	t.Helper()
	ctx := t.Context()
	now := time.Now()
	taskUUID := uuid.NewString()
	ids := make([]string, len(callables))
	inserts := make([]store.StepInsert, len(callables))
	msgs := make([]store.QueueMessageInsert, len(callables))
	for i, c := range callables {
		ids[i] = uuid.NewString()
		inserts[i] = store.StepInsert{UUID: ids[i], Name: fmt.Sprintf("step_%d", i), Position: i, Callable: c,
			MaxAttempts: 3, Retryable: true}
		msgs[i] = store.QueueMessageInsert{Queue: store.WorkerQueue(testNS), TaskUUID: taskUUID, StepUUID: ids[i]}
	}
	err := store.InTx(ctx, d, func(tx store.Tx) error {
		if err := tx.TaskInsert(ctx, store.TaskInsertParams{UUID: taskUUID, Namespace: testNS, Name: "seeded", Version: "1.0.0",
			State: "steps_in_process", Context: json.RawMessage(`{"seeded":true}`), Now: now}); err != nil {
			return err
		}
		if err := tx.StepsInsert(ctx, store.StepsInsertParams{TaskUUID: taskUUID, Namespace: testNS, Steps: inserts, Now: now}); err != nil {
			return err
		}
		for _, id := range ids {
			if err := tx.StepTransition(ctx, store.StepTransitionParams{UUID: id, From: "pending", To: "enqueued",
				Event: "enqueue", Now: now}); err != nil {
				return err
			}
		}
		return tx.QueueSend(ctx, store.QueueSendParams{Messages: msgs, Now: now})
	})
	if err != nil {
		t.Fatalf("seed: %v", err)
	}
	return ids
}

// handlers is a Resolver over a fixed table of callables.
func resolverFor(table map[string]Prepared) Resolver {
	return func(_ context.Context, c *store.ClaimedStep) (Prepared, error) {
		p, ok := table[c.Callable]
		if !ok {
			return Prepared{}, &HandlerNotFoundError{Callable: c.Callable}
		}
		return p, nil
	}
}

func handlerOf(fn HandlerFunc) Prepared { return Prepared{Handler: fn} }

func returning(v any, err error) Prepared {
	return handlerOf(func(context.Context) (any, error) { return v, err })
}

// completer writes results straight through the store, as the in-process
// path does minus the orchestration. hook, if set, runs before each batch.
type completer struct {
	d    store.Driver
	hook func(comps []store.StepCompletion)

	mu      sync.Mutex
	written int
	refused []error
}

func (c *completer) complete(ctx context.Context, comps []store.StepCompletion) ([]error, error) {
	if c.hook != nil {
		c.hook(comps)
	}
	var refused []error
	err := store.InTx(ctx, c.d, func(tx store.Tx) error {
		var err error
		refused, err = tx.StepsComplete(ctx, store.StepsCompleteParams{Completions: comps, Now: time.Now()})
		return err
	})
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range refused {
		if r != nil {
			c.refused = append(c.refused, r)
		} else {
			c.written++
		}
	}
	return refused, nil
}

func (c *completer) counts() (written int, refused []error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.written, slices.Clone(c.refused)
}

// callbackFunc adapts a function to PostHandlerCallback.
type callbackFunc func(ctx context.Context, r *Result)

func (f callbackFunc) OnHandlerComplete(ctx context.Context, r *Result) { f(ctx, r) }

// logCapture is a slog handler that keeps the messages it is given.
type logCapture struct {
	mu   sync.Mutex
	msgs []string
}

func (l *logCapture) Enabled(context.Context, slog.Level) bool { return true }
func (l *logCapture) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.msgs = append(l.msgs, r.Message)
	return nil
}
func (l *logCapture) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logCapture) WithGroup(string) slog.Handler      { return l }

func (l *logCapture) has(sub string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, m := range l.msgs {
		if strings.Contains(m, sub) {
			return true
		}
	}
	return false
}

func testConfig(logs *logCapture) Config {
	return Config{Owner: "w-test", Queues: []string{store.WorkerQueue(testNS)}, PollInterval: 20 * time.Millisecond,
		Logger: slog.New(logs)}
}

// startWorker starts w and stops it when the test ends, if the test did not.
func startWorker(t *testing.T, w *Worker) {
	t.Helper()
	if err := w.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
		defer cancel()
		_ = w.Stop(ctx)
	})
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func getStep(t *testing.T, d store.Driver, id string) *store.StepRow {
	t.Helper()
	s, err := d.Reader().StepGet(t.Context(), store.StepGetParams{UUID: id})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// finished reports whether every step left the worker's hands.
func finished(t *testing.T, d store.Driver, ids ...string) bool {
	t.Helper()
	for _, id := range ids {
		switch getStep(t, d, id).State {
		case "enqueued_for_orchestration", "enqueued_as_error_for_orchestration":
		default:
			return false
		}
	}
	return true
}

func queueDepth(t *testing.T, d store.Driver) (visible, leased int) {
	t.Helper()
	rows, err := d.Reader().QueueDepth(t.Context(), store.QueueDepthParams{Now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rows {
		visible += r.Visible
		leased += r.Leased
	}
	return visible, leased
}

func stopWithin(t *testing.T, w *Worker, budget time.Duration) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- w.Stop(ctx) }()
	select {
	case err := <-done:
		return err
	case <-time.After(budget + waitLimit):
		t.Fatalf("Stop with a %s budget did not return", budget)
		return nil
	}
}

// TestOutcomes pins rule 4: every way an attempt can end is recorded as the
// right result.
func TestOutcomes(t *testing.T) {
	t.Parallel()
	type tc struct {
		callable  string
		prep      Prepared
		success   bool
		value     string // success: the stored result
		errType   string
		retryable bool
		contains  []string
		retryMS   int64
	}
	cases := []tc{
		{callable: "ok", prep: returning(map[string]any{"n": 1, "s": "x"}, nil), success: true, value: `{"n":1,"s":"x"}`},
		{callable: "nil_result", prep: returning(nil, nil), success: true, value: `null`},
		{callable: "plain_error", prep: returning(nil, errors.New("db hiccup")),
			errType: store.ErrorTypeHandler, retryable: true, contains: []string{"db hiccup"}},
		{callable: "permanent", prep: returning(nil, Permanent(errors.New("card declined"))),
			errType: store.ErrorTypePermanent, contains: []string{"card declined"}},
		{callable: "wrapped_permanent", prep: returning(nil, fmt.Errorf("charge: %w", Permanent(errors.New("no funds")))),
			errType: store.ErrorTypePermanent, contains: []string{"charge: no funds"}},
		{callable: "panic", prep: handlerOf(func(context.Context) (any, error) { panic("boom-42") }),
			errType: store.ErrorTypePanic, contains: []string{"boom-42"}},
		{callable: "timeout", prep: Prepared{Timeout: 50 * time.Millisecond, Handler: func(ctx context.Context) (any, error) {
			<-ctx.Done()
			return nil, ctx.Err()
		}}, errType: store.ErrorTypeTimeout, retryable: true},
		{callable: "retry_after", prep: returning(nil, RetryAfter(errors.New("rate limited"), 3*time.Second)),
			errType: store.ErrorTypeHandler, retryable: true, contains: []string{"rate limited"}, retryMS: 3000},
		{callable: "chan_result", prep: returning(make(chan int), nil), errType: store.ErrorTypeUnserializable},
		{callable: "func_result", prep: returning(func() {}, nil), errType: store.ErrorTypeUnserializable},
		{callable: "missing.handler", errType: store.ErrorTypeHandlerNotFound, contains: []string{"missing.handler"}},
	}
	table := map[string]Prepared{}
	var callables []string
	for _, c := range cases {
		if c.prep.Handler != nil {
			table[c.callable] = c.prep
		}
		callables = append(callables, c.callable)
	}
	// A resolver that fails for another reason than a missing handler
	// yields a retryable failure.
	resolve := resolverFor(table)
	cases = append(cases, tc{callable: "unpreparable", errType: store.ErrorTypeHandler, retryable: true,
		contains: []string{"prepare step", "vault sealed"}})
	callables = append(callables, "unpreparable")
	resolver := func(ctx context.Context, c *store.ClaimedStep) (Prepared, error) {
		if c.Callable == "unpreparable" {
			return Prepared{}, errors.New("vault sealed")
		}
		return resolve(ctx, c)
	}

	d := openStore(t)
	ids := seed(t, d, callables...)
	comp := &completer{d: d}
	w := New(d, resolver, comp.complete, nil, testConfig(&logCapture{}))
	startWorker(t, w)
	eventually(t, "every result to be written", func() bool {
		written, refused := comp.counts()
		return written+len(refused) == len(cases)
	})

	for i, c := range cases {
		t.Run(c.callable, func(t *testing.T) {
			s := getStep(t, d, ids[i])
			if s.Attempts != 1 {
				t.Errorf("attempts = %d, want 1", s.Attempts)
			}
			if c.success {
				if s.State != "enqueued_for_orchestration" || string(s.Result) != c.value || s.Error != nil {
					t.Errorf("state %s, result %s, error %s; want success with %s", s.State, s.Result, s.Error, c.value)
				}
				return
			}
			if s.State != "enqueued_as_error_for_orchestration" || s.Result != nil {
				t.Fatalf("state %s, result %s; want a failure", s.State, s.Result)
			}
			var info store.StepErrorInfo
			if err := json.Unmarshal(s.Error, &info); err != nil {
				t.Fatalf("stored error %s: %v", s.Error, err)
			}
			if info.Type != c.errType || info.Retryable != c.retryable || info.RetryAfterMS != c.retryMS || info.Attempt != 1 {
				t.Errorf("stored error = %+v; want type %s, retryable %v, retry_after_ms %d, attempt 1",
					info, c.errType, c.retryable, c.retryMS)
			}
			for _, sub := range c.contains {
				if !strings.Contains(info.Message, sub) {
					t.Errorf("error message %q does not mention %q", info.Message, sub)
				}
			}
		})
	}
	if written, refused := comp.counts(); written != len(cases) || len(refused) != 0 {
		t.Errorf("completer wrote %d results and refused %v; want %d and none", written, refused, len(cases))
	}
	if visible, leased := queueDepth(t, d); visible+leased != 0 {
		t.Errorf("queue still holds %d visible and %d leased messages", visible, leased)
	}
}

// TestResultReachesChannelBeforeCallback pins rule 1. Handlers finish one
// at a time, on the test's signal, and the completion processor is held
// (batch size 1, completer blocked), so when the callback for the k-th
// result runs, exactly k results have been produced: the channel must have
// counted all k, this one included, and every result after the first must
// still be sitting in it.
func TestResultReachesChannelBeforeCallback(t *testing.T) {
	t.Parallel()
	d := openStore(t)
	const n = 3
	ids := seed(t, d, "gated", "gated", "gated")

	started := make(chan struct{}, n)
	release := make(chan struct{})
	resolve := resolverFor(map[string]Prepared{"gated": handlerOf(func(ctx context.Context) (any, error) {
		started <- struct{}{}
		select {
		case <-release:
			return "done", nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	})})
	gate := make(chan struct{})
	comp := &completer{d: d, hook: func([]store.StepCompletion) { <-gate }}

	type call struct {
		stats chanmon.Stats
		res   *Result
	}
	calls := make(chan call, n)
	var w *Worker
	cb := callbackFunc(func(_ context.Context, r *Result) {
		calls <- call{w.CompletionStats(), r}
	})
	cfg := testConfig(&logCapture{})
	cfg.Concurrency, cfg.CompletionBuffer, cfg.CompletionBatch = n, 10, 1
	w = New(d, resolve, comp.complete, cb, cfg)
	startWorker(t, w)
	openGate, releaseAll := sync.OnceFunc(func() { close(gate) }), sync.OnceFunc(func() { close(release) })
	t.Cleanup(releaseAll) // on failure, before the Stop registered by start
	t.Cleanup(openGate)

	for range n {
		select {
		case <-started:
		case <-time.After(waitLimit):
			t.Fatal("handlers did not start")
		}
	}
	seen := map[string]bool{}
	for k := 1; k <= n; k++ {
		release <- struct{}{}
		var c call
		select {
		case c = <-calls:
		case <-time.After(waitLimit):
			t.Fatalf("no callback for result %d", k)
		}
		if c.stats.Sent != uint64(k) {
			t.Errorf("callback %d: completion channel had accepted %d results, want %d (this one included)", k, c.stats.Sent, k)
		}
		if k > 1 && c.stats.Depth < k-1 {
			t.Errorf("callback %d: %d results in the channel, want at least %d while the processor is held", k, c.stats.Depth, k-1)
		}
		if !c.res.Success || string(c.res.Value) != `"done"` || seen[c.res.Step.StepUUID] {
			t.Errorf("callback %d got result %+v", k, c.res)
		}
		seen[c.res.Step.StepUUID] = true
	}
	if written, _ := comp.counts(); written != 0 {
		t.Errorf("%d results written while the completer was held", written)
	}
	releaseAll()
	openGate()
	eventually(t, "all results written", func() bool { return finished(t, d, ids...) })
}

// TestStopPastBudget pins rule 6's second half and rule 1's refusal: a
// handler that ignores cancellation does not hold Stop past its budget, its
// step keeps its lease so that an orchestrator rescues it, and when it
// returns at last, the closed completion channel refuses its result and no
// callback runs.
func TestStopPastBudget(t *testing.T) {
	t.Parallel()
	d := openStore(t)
	ids := seed(t, d, "stubborn")
	started := make(chan struct{}, 1)
	release := make(chan struct{})
	resolve := resolverFor(map[string]Prepared{"stubborn": handlerOf(func(context.Context) (any, error) {
		started <- struct{}{}
		<-release // ignores its context
		return "too late", nil
	})})
	var callbacks atomic.Int32
	cb := callbackFunc(func(context.Context, *Result) { callbacks.Add(1) })
	comp := &completer{d: d}
	logs := &logCapture{}
	cfg := testConfig(logs)
	cfg.StepLease = 5 * time.Second
	w := New(d, resolve, comp.complete, cb, cfg)
	if err := w.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	releaseHandler := sync.OnceFunc(func() { close(release) })
	defer releaseHandler()
	select {
	case <-started:
	case <-time.After(waitLimit):
		t.Fatal("handler did not start")
	}

	err := stopWithin(t, w, 50*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "budget") {
		t.Fatalf("Stop past its budget = %v, want an error about the budget", err)
	}
	s := getStep(t, d, ids[0])
	if s.State != "in_progress" || s.Attempts != 1 {
		t.Errorf("after Stop: step %s with %d attempts, want in_progress with 1", s.State, s.Attempts)
	}
	if visible, leased := queueDepth(t, d); visible != 0 || leased != 1 {
		t.Errorf("after Stop: %d visible, %d leased messages; want the step's message still leased", visible, leased)
	}
	expired, err := d.Reader().QueueExpired(t.Context(), store.QueueExpiredParams{Now: time.Now().Add(time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	if len(expired) != 1 || expired[0].StepUUID != ids[0] || expired[0].LeaseOwner != "w-test" {
		t.Errorf("once the lease runs out, QueueExpired = %+v, want the step's message for rescue", expired)
	}

	releaseHandler()
	eventually(t, "the late result to be refused", func() bool { return logs.has("not accepted by completion channel") })
	if n := callbacks.Load(); n != 0 {
		t.Errorf("callback ran %d times for a result the channel refused", n)
	}
	if written, _ := comp.counts(); written != 0 {
		t.Errorf("%d results written after the channel closed", written)
	}
	if s := getStep(t, d, ids[0]); s.State != "in_progress" {
		t.Errorf("after the late return: step %s, want in_progress", s.State)
	}
	if w.InFlight() != 0 {
		t.Errorf("InFlight = %d after the late return, want 0", w.InFlight())
	}
}

// TestStopDrainsInFlight pins rule 6's first half: Stop waits for handlers
// that are running, writes their results, and only then returns; nothing is
// claimed afterwards.
func TestStopDrainsInFlight(t *testing.T) {
	t.Parallel()
	d := openStore(t)
	const n = 3
	ids := seed(t, d, "slow", "slow", "slow")
	started := make(chan struct{}, n)
	release := make(chan struct{})
	resolve := resolverFor(map[string]Prepared{"slow": handlerOf(func(ctx context.Context) (any, error) {
		started <- struct{}{}
		<-release
		return "finished", nil
	})})
	var callbacks atomic.Int32
	cb := callbackFunc(func(context.Context, *Result) { callbacks.Add(1) })
	comp := &completer{d: d}
	cfg := testConfig(&logCapture{})
	cfg.Concurrency = n
	w := New(d, resolve, comp.complete, cb, cfg)
	if err := w.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	for range n {
		select {
		case <-started:
		case <-time.After(waitLimit):
			t.Fatal("handlers did not start")
		}
	}

	stopped := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
		defer cancel()
		stopped <- w.Stop(ctx)
	}()
	select {
	case err := <-stopped:
		t.Fatalf("Stop returned (%v) while handlers were still running", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(release)
	select {
	case err := <-stopped:
		if err != nil {
			t.Fatalf("Stop = %v, want nil", err)
		}
	case <-time.After(2 * waitLimit):
		t.Fatal("Stop did not return")
	}
	// Checked right after Stop returned: nothing may still be on its way.
	for _, id := range ids {
		if s := getStep(t, d, id); s.State != "enqueued_for_orchestration" || string(s.Result) != `"finished"` {
			t.Errorf("step %s: state %s, result %s; want its result written", id, s.State, s.Result)
		}
	}
	if n := callbacks.Load(); n != 3 {
		t.Errorf("callback ran %d times, want 3", n)
	}
	if w.InFlight() != 0 {
		t.Errorf("InFlight = %d after Stop", w.InFlight())
	}

	// A stopped worker claims nothing and cannot be restarted.
	late := seed(t, d, "slow")
	time.Sleep(10 * cfg.PollInterval)
	if s := getStep(t, d, late[0]); s.State != "enqueued" {
		t.Errorf("step enqueued after Stop is %s, want enqueued", s.State)
	}
	if err := w.Start(t.Context()); err == nil {
		t.Error("Start after Stop succeeded")
	}
	if err := w.Stop(t.Context()); err != nil {
		t.Errorf("second Stop = %v, want nil", err)
	}
}

// TestCallbackPanicDoesNotChangeOutcome pins rule 2: a callback that
// panics is its own problem; the result stands and the worker carries on.
func TestCallbackPanicDoesNotChangeOutcome(t *testing.T) {
	t.Parallel()
	d := openStore(t)
	ids := seed(t, d, "ok", "fails", "ok", "ok")
	resolve := resolverFor(map[string]Prepared{
		"ok":    returning("fine", nil),
		"fails": returning(nil, Permanent(errors.New("nope"))),
	})
	var callbacks atomic.Int32
	cb := callbackFunc(func(context.Context, *Result) {
		callbacks.Add(1)
		panic("publisher exploded")
	})
	comp := &completer{d: d}
	logs := &logCapture{}
	cfg := testConfig(logs)
	cfg.Concurrency = 1
	w := New(d, resolve, comp.complete, cb, cfg)
	startWorker(t, w)
	eventually(t, "every step to have a result", func() bool { return finished(t, d, ids...) })

	for i, id := range ids {
		s := getStep(t, d, id)
		want := "enqueued_for_orchestration"
		if i == 1 {
			want = "enqueued_as_error_for_orchestration"
		}
		if s.State != want {
			t.Errorf("step %d: state %s, want %s", i, s.State, want)
		}
	}
	eventually(t, "every callback to run", func() bool { return callbacks.Load() == int32(len(ids)) })
	if !logs.has("callback panicked") {
		t.Error("the callback's panic was not logged")
	}
	if err := stopWithin(t, w, waitLimit); err != nil {
		t.Errorf("Stop = %v", err)
	}
}

// TestBackpressure pins rule 3: with a one-slot completion channel and a
// slow writer, dispatch waits for room instead of dropping results, claims
// stop while the channel is saturated, and no more steps are in flight
// than there are permits.
func TestBackpressure(t *testing.T) {
	t.Parallel()
	d := openStore(t)
	const steps, concurrency = 30, 4
	callables := make([]string, steps)
	for i := range callables {
		callables[i] = "quick"
	}
	ids := seed(t, d, callables...)
	resolve := resolverFor(map[string]Prepared{"quick": returning("q", nil)})

	var w *Worker
	var first sync.Once
	comp := &completer{d: d, hook: func([]store.StepCompletion) {
		// The first batch is held until a dispatch goroutine has had to
		// wait for room, so that the wait is certain, not likely.
		first.Do(func() {
			deadline := time.Now().Add(waitLimit)
			for w.CompletionStats().BlockedSends == 0 && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
		})
		time.Sleep(50 * time.Millisecond)
	}}
	cfg := testConfig(&logCapture{})
	cfg.Concurrency, cfg.CompletionBuffer = concurrency, 1
	// One result per batch, no linger: the held first batch then leaves the
	// other three results of the first claim outside, one in the channel
	// and two waiting to send. A lingering batch could take all but one of
	// them, and the one left in the channel makes it critically full, which
	// stops claims (load shedding), so nothing would ever wait to send.
	cfg.CompletionBatch, cfg.CompletionLinger = 1, -1
	w = New(d, resolve, comp.complete, nil, cfg)

	var maxInFlight atomic.Int64
	sampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			if n := int64(w.InFlight()); n > maxInFlight.Load() {
				maxInFlight.Store(n)
			}
			select {
			case <-sampling:
				return
			case <-time.After(200 * time.Microsecond):
			}
		}
	}()
	startWorker(t, w)
	eventually(t, "every result to be written", func() bool {
		written, _ := comp.counts()
		return written == steps
	})
	close(sampling)
	<-sampled

	for _, id := range ids {
		if s := getStep(t, d, id); s.State != "enqueued_for_orchestration" {
			t.Errorf("step %s is %s, want its result written", id, s.State)
		}
	}
	st := w.CompletionStats()
	if st.Sent != steps || st.Dropped != 0 {
		t.Errorf("completion channel: sent %d, dropped %d; want %d, 0", st.Sent, st.Dropped, steps)
	}
	if st.BlockedSends == 0 || st.BlockedTime <= 0 {
		t.Errorf("completion channel: %d blocked sends for %s; want dispatch to have waited", st.BlockedSends, st.BlockedTime)
	}
	if st.MaxDepth != st.Capacity {
		t.Errorf("completion channel max depth %d, want its capacity %d (critical)", st.MaxDepth, st.Capacity)
	}
	if m := maxInFlight.Load(); m > concurrency {
		t.Errorf("%d steps in flight at once, more than the %d permits", m, concurrency)
	}
	if _, refused := comp.counts(); len(refused) != 0 {
		t.Errorf("results refused: %v", refused)
	}
}

// TestConcurrencyLimit: never more handlers at once than permits.
func TestConcurrencyLimit(t *testing.T) {
	t.Parallel()
	d := openStore(t)
	const steps, concurrency = 20, 3
	callables := make([]string, steps)
	for i := range callables {
		callables[i] = "busy"
	}
	ids := seed(t, d, callables...)
	var running, most atomic.Int64
	resolve := resolverFor(map[string]Prepared{"busy": handlerOf(func(ctx context.Context) (any, error) {
		n := running.Add(1)
		defer running.Add(-1)
		for {
			m := most.Load()
			if n <= m || most.CompareAndSwap(m, n) {
				break
			}
		}
		time.Sleep(10 * time.Millisecond)
		return n, nil
	})})
	comp := &completer{d: d}
	cfg := testConfig(&logCapture{})
	cfg.Concurrency = concurrency
	cfg.ClaimBatch = steps // ask for more than the permits allow
	w := New(d, resolve, comp.complete, nil, cfg)
	startWorker(t, w)
	eventually(t, "every step to have a result", func() bool { return finished(t, d, ids...) })
	if m := most.Load(); m > concurrency || m < 1 {
		t.Errorf("at most %d handlers ran at once, want between 1 and %d", m, concurrency)
	}
}

// TestPrefetch: with Prefetch, a worker claims up to Concurrency+Prefetch
// steps while still running at most Concurrency handlers; the prefetched
// steps wait for a permit, and Stop runs them instead of dropping them.
// (Prefetch is below Concurrency, so the depth is Prefetch whatever the
// handlers' speed; see TestPrefetchDepth.)
func TestPrefetch(t *testing.T) {
	t.Parallel()
	d := openStore(t)
	const steps, concurrency, prefetch = 12, 3, 2
	callables := make([]string, steps)
	for i := range callables {
		callables[i] = "gated"
	}
	ids := seed(t, d, callables...)
	gate := make(chan struct{})
	var running, most atomic.Int64
	resolve := resolverFor(map[string]Prepared{"gated": handlerOf(func(ctx context.Context) (any, error) {
		n := running.Add(1)
		defer running.Add(-1)
		for {
			m := most.Load()
			if n <= m || most.CompareAndSwap(m, n) {
				break
			}
		}
		<-gate
		return n, nil
	})})
	comp := &completer{d: d}
	cfg := testConfig(&logCapture{})
	cfg.Concurrency, cfg.Prefetch = concurrency, prefetch
	w := New(d, resolve, comp.complete, nil, cfg)
	if got := w.DispatchStats().Capacity; got != concurrency+prefetch {
		t.Errorf("dispatch channel capacity %d, want Concurrency+Prefetch = %d", got, concurrency+prefetch)
	}
	startWorker(t, w)
	inProgress := func() int {
		n := 0
		for _, id := range ids {
			if getStep(t, d, id).State == "in_progress" {
				n++
			}
		}
		return n
	}
	eventually(t, "Concurrency+Prefetch steps to be claimed", func() bool {
		return inProgress() == concurrency+prefetch && running.Load() == concurrency
	})
	time.Sleep(10 * cfg.PollInterval) // claim rounds that must not take more
	if n := inProgress(); n != concurrency+prefetch || w.InFlight() != concurrency+prefetch {
		t.Errorf("%d steps claimed, %d in flight with every handler blocked; want %d (Concurrency+Prefetch)",
			n, w.InFlight(), concurrency+prefetch)
	}
	// Stop while the handlers are blocked: the prefetched steps waiting in
	// the dispatch channel still run, and every result is written.
	stopped := make(chan error, 1)
	go func() { stopped <- stopWithin(t, w, waitLimit) }()
	time.Sleep(20 * time.Millisecond)
	close(gate)
	if err := <-stopped; err != nil {
		t.Fatalf("Stop = %v", err)
	}
	done := 0
	for _, id := range ids {
		if finished(t, d, id) {
			done++
		}
	}
	if n := inProgress(); n != 0 || done < concurrency+prefetch {
		t.Errorf("after Stop: %d steps still in progress, %d with a result; want 0 and at least %d", n, done, concurrency+prefetch)
	}
	if m := most.Load(); m != concurrency {
		t.Errorf("at most %d handlers ran at once, want %d", m, concurrency)
	}
	if _, refused := comp.counts(); len(refused) != 0 {
		t.Errorf("results refused: %v", refused)
	}
}

// TestPrefetchStopBudget: Stop's budget covers prefetched steps still
// waiting for a permit. Past the budget the running handler is cancelled
// and the waiting step is given back without running.
func TestPrefetchStopBudget(t *testing.T) {
	t.Parallel()
	d := openStore(t)
	ids := seed(t, d, "slow", "slow")
	var ran atomic.Int32
	resolve := resolverFor(map[string]Prepared{"slow": handlerOf(func(ctx context.Context) (any, error) {
		ran.Add(1)
		select {
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		case <-time.After(20 * time.Second):
			return "late", nil
		}
	})})
	comp := &completer{d: d}
	cfg := testConfig(&logCapture{})
	cfg.Concurrency, cfg.Prefetch = 1, 1
	w := New(d, resolve, comp.complete, nil, cfg)
	startWorker(t, w)
	eventually(t, "both steps claimed and one running", func() bool {
		n := 0
		for _, id := range ids {
			if getStep(t, d, id).State == "in_progress" {
				n++
			}
		}
		return n == 2 && ran.Load() == 1
	})
	start := time.Now()
	err := stopWithin(t, w, 200*time.Millisecond)
	if err == nil {
		t.Error("Stop past its budget returned nil, want the budget error")
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("Stop with a 200ms budget took %s: it waited for the prefetched step", took)
	}
	if n := ran.Load(); n != 1 {
		t.Errorf("%d handlers ran, want 1: the prefetched step must not start after the budget", n)
	}
	for _, id := range ids {
		if s := getStep(t, d, id); s.State != "enqueued_as_error_for_orchestration" {
			t.Errorf("step %s is %s after Stop, want its attempt given back (enqueued_as_error_for_orchestration)", id, s.State)
		}
	}
}

// TestPrefetchedLeaseLost: a prefetched step whose lease was lost while it
// waited (another worker may run it now) does not run here.
func TestPrefetchedLeaseLost(t *testing.T) {
	t.Parallel()
	d := openStore(t)
	ids := seed(t, d, "gated", "gated")
	gate := make(chan struct{})
	var ran atomic.Int32
	resolve := resolverFor(map[string]Prepared{"gated": handlerOf(func(ctx context.Context) (any, error) {
		ran.Add(1)
		<-gate
		return "ok", nil
	})})
	comp := &completer{d: d}
	cfg := testConfig(&logCapture{})
	cfg.Concurrency, cfg.Prefetch = 1, 1
	w := New(d, resolve, comp.complete, nil, cfg)
	startWorker(t, w)
	eventually(t, "one step running and one waiting", func() bool {
		w.leaseMu.Lock()
		defer w.leaseMu.Unlock()
		return ran.Load() == 1 && len(w.leases) == 2
	})
	// What the heartbeat does when it finds a lease lost: forget it.
	w.leaseMu.Lock()
	for token, l := range w.leases {
		if l.cancel == nil {
			delete(w.leases, token)
		}
	}
	w.leaseMu.Unlock()
	close(gate)
	eventually(t, "both results handed to the completer", func() bool {
		written, refused := comp.counts()
		return written+len(refused) == 2
	})
	if n := ran.Load(); n != 1 {
		t.Errorf("%d handlers ran, want 1: the step whose lease was lost must not run", n)
	}
	done := 0
	for _, id := range ids {
		if getStep(t, d, id).State == "enqueued_for_orchestration" {
			done++
		}
	}
	if done != 1 {
		t.Errorf("%d steps succeeded, want only the one that held its lease", done)
	}
}

// TestMonitorsRegistered pins rule 5.
func TestMonitorsRegistered(t *testing.T) {
	t.Parallel()
	d := openStore(t)
	reg := chanmon.NewRegistry()
	cfg := testConfig(&logCapture{})
	cfg.Monitors, cfg.Concurrency, cfg.CompletionBuffer = reg, 7, 11
	w := New(d, resolverFor(nil), (&completer{d: d}).complete, nil, cfg)
	got := map[string]int{}
	for _, s := range reg.Snapshot() {
		got[s.Name] = s.Capacity
	}
	want := map[string]int{"worker.dispatch": 7, "worker.completion": 11}
	for name, capacity := range want {
		if c, ok := got[name]; !ok || c != capacity {
			t.Errorf("registry has %q with capacity %d (present %v), want capacity %d", name, c, ok, capacity)
		}
	}
	if w.DispatchStats().Name != "worker.dispatch" || w.CompletionStats().Name != "worker.completion" {
		t.Errorf("stats names %q, %q", w.DispatchStats().Name, w.CompletionStats().Name)
	}
}

// TestHeartbeatKeepsLease: a handler that runs longer than the lease keeps
// its step, because the heartbeat extends the lease, and its result is
// accepted.
func TestHeartbeatKeepsLease(t *testing.T) {
	// Not parallel: the heartbeat must tick on time for the lease to hold.
	d := openStore(t)
	ids := seed(t, d, "long")
	done := make(chan struct{})
	resolve := resolverFor(map[string]Prepared{"long": handlerOf(func(ctx context.Context) (any, error) {
		defer close(done)
		select {
		case <-time.After(time.Second):
			return "survived", nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	})})
	comp := &completer{d: d}
	cfg := testConfig(&logCapture{})
	cfg.StepLease = 300 * time.Millisecond
	w := New(d, resolve, comp.complete, nil, cfg)
	startWorker(t, w)

	eventually(t, "the step to be claimed", func() bool { return getStep(t, d, ids[0]).State == "in_progress" })
	checks := 0
	for running := true; running; {
		select {
		case <-done:
			running = false
		case <-time.After(20 * time.Millisecond):
		}
		expired, err := d.Reader().QueueExpired(t.Context(), store.QueueExpiredParams{Now: time.Now()})
		if err != nil {
			t.Fatal(err)
		}
		if len(expired) != 0 {
			t.Fatalf("lease expired while the handler ran: %+v", expired)
		}
		checks++
	}
	eventually(t, "the result to be written", func() bool {
		written, refused := comp.counts()
		return written+len(refused) == 1
	})
	s := getStep(t, d, ids[0])
	if s.State != "enqueued_for_orchestration" || string(s.Result) != `"survived"` {
		t.Errorf("step %s with result %s, want the handler's result", s.State, s.Result)
	}
	if written, refused := comp.counts(); written != 1 || len(refused) != 0 {
		t.Errorf("completer wrote %d, refused %v; want 1, none", written, refused)
	}
	if checks < 3 {
		t.Errorf("only %d lease checks during a 1s run", checks)
	}
}

// TestLingerBatchesSiblings: two steps of one task claimed together, the
// second finishing after the first, reach the completer in one batch while
// CompletionLinger allows it, and in two without it.
func TestLingerBatchesSiblings(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		linger time.Duration
		// afterFirstBatch makes the slow step wait until a batch was
		// written, so that without linger the fast result is alone.
		afterFirstBatch bool
		wantBatches     int
	}{
		{"linger", 10 * time.Second, false, 1},
		{"no linger", -1, true, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			d := openStore(t)
			ids := seed(t, d, "fast", "slow")
			written := make(chan struct{})
			var once sync.Once
			resolve := resolverFor(map[string]Prepared{
				"fast": returning("fast", nil),
				"slow": handlerOf(func(context.Context) (any, error) {
					if tc.afterFirstBatch {
						select {
						case <-written:
						case <-time.After(waitLimit):
							return nil, errors.New("no batch was written")
						}
					} else {
						time.Sleep(5 * time.Millisecond)
					}
					return "slow", nil
				}),
			})
			var mu sync.Mutex
			var sizes []int
			comp := &completer{d: d, hook: func(comps []store.StepCompletion) {
				mu.Lock()
				sizes = append(sizes, len(comps))
				mu.Unlock()
				once.Do(func() { close(written) })
			}}
			cfg := testConfig(&logCapture{})
			cfg.CompletionLinger = tc.linger
			w := New(d, resolve, comp.complete, nil, cfg)
			startWorker(t, w)
			eventually(t, "both steps to have a result", func() bool { return finished(t, d, ids...) })
			mu.Lock()
			defer mu.Unlock()
			if len(sizes) != tc.wantBatches {
				t.Errorf("results reached the completer in batches %v, want %d batch(es)", sizes, tc.wantBatches)
			}
		})
	}
}

// TestPrefetchDepth: the prefetch depth covers one claim's round trip at
// the handlers' pace, between min(Concurrency, Prefetch) and Prefetch.
func TestPrefetchDepth(t *testing.T) {
	ms, us := time.Millisecond, time.Microsecond
	for _, c := range []struct {
		concurrency, prefetch int
		claim, handler        time.Duration
		want                  int
	}{
		{10, 40, 0, 0, 10},                  // nothing measured yet: the floor
		{10, 40, 2 * ms, 0, 10},             // no handler finished yet
		{10, 40, 0, 5 * ms, 10},             // no claim measured yet
		{10, 40, 2 * ms, 20 * ms, 10},       // slow handlers: one step each is plenty
		{10, 40, 2 * ms, 2 * ms, 10},        // as slow as a claim
		{10, 40, 2 * ms, 1 * ms, 20},        // twice as fast: twice as deep
		{10, 40, 3 * ms, 2 * ms, 15},        // 10 × 1.5
		{4, 40, 3 * ms, 1 * ms, 12},         // 4 × 3
		{10, 40, 2 * ms, 700 * us, 29},      // 28.57… rounds up
		{10, 40, 2 * ms, 1 * us, 40},        // instant handlers: the ceiling
		{10, 5, 2 * ms, 1 * us, 5},          // a ceiling below Concurrency is the depth
		{10, 5, 2 * ms, 20 * ms, 5},         // … whatever the handlers' speed
		{10, 0, 2 * ms, 1 * us, 0},          // prefetch disabled
		{1, 1 << 20, 1000 * ms, 1, 1 << 20}, // huge ratios stay in range
	} {
		if got := prefetchDepth(c.concurrency, c.prefetch, c.claim, c.handler); got != c.want {
			t.Errorf("prefetchDepth(C=%d, P=%d, claim %s, handler %s) = %d, want %d",
				c.concurrency, c.prefetch, c.claim, c.handler, got, c.want)
		}
	}
}

// TestPrefetchFollowsHandlers: a worker's claim limit is Concurrency plus
// the depth its measured claim and handler times give, and moves as they
// change.
func TestPrefetchFollowsHandlers(t *testing.T) {
	d := openStore(t)
	cfg := testConfig(&logCapture{})
	cfg.Concurrency, cfg.Prefetch = 10, 40
	w := New(d, resolverFor(nil), (&completer{d: d}).complete, nil, cfg)
	if got := w.claimLimit(); got != 20 {
		t.Fatalf("claim limit before any measurement %d, want 20 (Concurrency + Concurrency)", got)
	}
	w.claimTime.observe(2 * time.Millisecond)
	w.handlerTime.observe(time.Microsecond)
	if got := w.claimLimit(); got != 20 {
		t.Errorf("claim limit %d before the claim loop refreshed the depth, want 20 (the mark stays put)", got)
	}
	w.refreshDepth()
	if got := w.claimLimit(); got != 50 {
		t.Errorf("claim limit with instant handlers %d, want 50 (Concurrency + Prefetch)", got)
	}
	if got := w.claimLowWater(); got != 30 {
		t.Errorf("low-water mark with instant handlers %d, want 30 (limit − depth/2)", got)
	}
	// Handlers slow down to ten times a claim: the average moves by an
	// eighth per sample, and the depth falls back to Concurrency.
	for range 60 {
		w.handlerTime.observe(20 * time.Millisecond)
	}
	w.refreshDepth()
	if got := w.claimLimit(); got != 20 {
		t.Errorf("claim limit with slow handlers %d, want 20 (handler avg %s)", got, w.handlerTime.get())
	}
}

// TestDurationAvg: the first sample is the average; each later one moves
// it an eighth of the way.
func TestDurationAvg(t *testing.T) {
	var a durationAvg
	if a.get() != 0 {
		t.Fatalf("empty average %s, want 0", a.get())
	}
	a.observe(800 * time.Microsecond)
	if a.get() != 800*time.Microsecond {
		t.Fatalf("after one sample %s, want 800µs", a.get())
	}
	a.observe(0) // counted as 1ns
	if want := 800*time.Microsecond - (800*time.Microsecond-1)/8; a.get() != want {
		t.Fatalf("after a zero sample %s, want %s", a.get(), want)
	}
}

// TestLeaseRunsFromClaim: a claim that first waits for the SQLite writer
// gets its whole lease from the moment it claims, not from before the
// wait. Otherwise a busy writer eats into every lease it delays, and a
// live worker's steps can expire before its first heartbeat.
func TestLeaseRunsFromClaim(t *testing.T) {
	d := openStore(t)
	ids := seed(t, d, "hold")
	release := make(chan struct{})
	resolve := resolverFor(map[string]Prepared{"hold": handlerOf(func(ctx context.Context) (any, error) {
		select {
		case <-release:
			return "done", nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	})})
	defer close(release)
	cfg := testConfig(&logCapture{})
	cfg.StepLease = 2 * time.Second
	cfg.HeartbeatInterval = time.Hour // only the claim sets the lease
	w := New(d, resolve, (&completer{d: d}).complete, nil, cfg)

	// Hold the writer while the worker starts and tries to claim.
	tx, err := d.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	startWorker(t, w)
	time.Sleep(600 * time.Millisecond)
	freed := time.Now()
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the step to be claimed", func() bool { return getStep(t, d, ids[0]).State == "in_progress" })

	// The lease must outlast the writer's release by nearly all of
	// StepLease; measured from before the wait it would end 0.6s early.
	expired, err := d.Reader().QueueExpired(t.Context(), store.QueueExpiredParams{Now: freed.Add(cfg.StepLease - 100*time.Millisecond)})
	if err != nil {
		t.Fatal(err)
	}
	if len(expired) != 0 {
		t.Errorf("lease ends %s after the writer was freed; want about %s", expired[0].LeaseUntil.Sub(freed), cfg.StepLease)
	}
}

// TestWakeWhileCapacityReserved: a wake-up that reaches the claim loop
// while another claim (a Handoff, as the completion processor and
// CreateTask make) holds all the free capacity is not lost. The loop finds
// no capacity and sleeps; when the Handoff gives its unused reservation
// back, the loop claims the step at once rather than at PollInterval (an
// hour here). This was a retry re-enqueued while the completion processor
// was between its commit and its giveBack: picked up 5s late.
func TestWakeWhileCapacityReserved(t *testing.T) {
	t.Parallel()
	d := openStore(t)
	ran := make(chan struct{}, 1)
	resolve := resolverFor(map[string]Prepared{"work": handlerOf(func(context.Context) (any, error) {
		ran <- struct{}{}
		return 1, nil
	})})
	cfg := testConfig(&logCapture{})
	cfg.PollInterval = time.Hour
	w := New(d, resolve, (&completer{d: d}).complete, nil, cfg)
	startWorker(t, w)

	inHandoff, release := make(chan struct{}), make(chan struct{})
	handoffDone := make(chan error, 1)
	go func() {
		handoffDone <- w.Handoff(t.Context(), func(p store.StepsClaimParams) ([]store.ClaimedStep, error) {
			close(inHandoff)
			<-release
			return nil, nil // claimed nothing: the whole reservation goes back in bulk
		})
	}()
	<-inHandoff
	if cur, limit := w.inFlight.Load(), w.claimLimit(); cur < limit {
		t.Fatalf("the Handoff reserved %d of %d: the claim loop would still have capacity", cur, limit)
	}
	seed(t, d, "work")
	w.Wake()                           // the announcement of the step
	time.Sleep(100 * time.Millisecond) // the loop tries, finds no capacity, sleeps
	close(release)
	if err := <-handoffDone; err != nil {
		t.Fatal(err)
	}
	select {
	case <-ran:
	case <-time.After(5 * time.Second):
		t.Fatal("the step was not claimed after the Handoff gave its capacity back")
	}
}

// claimHeld starts a worker over a store whose claims hold their answer
// (see storetest.HeldAnswer), with one step seeded for handler, and
// returns once that step's claim has committed and waits for its answer.
func claimHeld(t *testing.T, handler Prepared) (w *Worker, d *storetest.HeldAnswer, raw store.Driver, step string) {
	t.Helper()
	raw = openStore(t)
	d = storetest.NewHeldAnswer(raw)
	step = seed(t, raw, "work")[0]
	cfg := testConfig(&logCapture{})
	cfg.HeartbeatInterval = time.Hour
	w = New(d, resolverFor(map[string]Prepared{"work": handler}), (&completer{d: raw}).complete, nil, cfg)
	if err := w.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.Committed:
	case <-time.After(waitLimit):
		t.Fatal("the step was not claimed")
	}
	if s := getStep(t, raw, step); s.State != "in_progress" {
		t.Fatalf("claimed step is %s, want in_progress", s.State)
	}
	return w, d, raw, step
}

// TestStopDuringClaim: Stop arrives while a claim has committed but not yet
// answered. The claim still delivers its step, which runs in the drain and
// has its result written. When Stop cut the claim off, the step stayed
// in_progress with nobody running it until its lease expired, and the
// rescue counted a failed attempt (seen in TestServeGracefulStop, whose
// last step was then never run).
func TestStopDuringClaim(t *testing.T) {
	t.Parallel()
	ran := make(chan struct{}, 1)
	w, d, raw, step := claimHeld(t, handlerOf(func(context.Context) (any, error) {
		ran <- struct{}{}
		return "done", nil
	}))
	stopped := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
		defer cancel()
		stopped <- w.Stop(ctx)
	}()
	// The claim answers only once Stop has cancelled the claim loop.
	eventually(t, "Stop to cancel the claim loop", func() bool { return w.claimCtx.Err() != nil })
	close(d.Answer)
	select {
	case err := <-stopped:
		if err != nil {
			t.Fatalf("Stop = %v, want nil", err)
		}
	case <-time.After(2 * waitLimit):
		t.Fatal("Stop did not return")
	}
	select {
	case <-ran:
	default:
		t.Error("the claimed step's handler never ran")
	}
	if s := getStep(t, raw, step); s.State != "enqueued_for_orchestration" || string(s.Result) != `"done"` || s.Attempts != 1 {
		t.Errorf("step after Stop: state %s, result %s, attempts %d; want enqueued_for_orchestration, \"done\", 1",
			s.State, s.Result, s.Attempts)
	}
}

// TestStopBudgetDuringClaim: a claim that does not answer holds Stop only
// until its budget is spent; then it is cut off and Stop says why.
func TestStopBudgetDuringClaim(t *testing.T) {
	t.Parallel()
	w, _, raw, step := claimHeld(t, returning("done", nil))
	const budget = 300 * time.Millisecond
	began := time.Now()
	err := stopWithin(t, w, budget)
	if took := time.Since(began); took > budget+2*time.Second {
		t.Errorf("Stop took %s with a %s budget and a claim that never answers", took, budget)
	}
	if err == nil || !strings.Contains(err.Error(), "during a claim") || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Stop = %v, want the budget spent during a claim", err)
	}
	// What a budget spent this way costs: the step the claim committed is
	// left to its lease, as a handler still running at that point is.
	if s := getStep(t, raw, step); s.State != "in_progress" {
		t.Errorf("step after the cut-off claim is %s, want in_progress until its lease ends", s.State)
	}
}

// TestStopWhileClaimWaitsToBegin: a claim still waiting for its transaction
// (here SQLite's writer, held by another transaction) ends when Stop
// begins, claims nothing and does not hold Stop up.
func TestStopWhileClaimWaitsToBegin(t *testing.T) {
	t.Parallel()
	d := openStore(t)
	ids := seed(t, d, "work")
	resolve := resolverFor(map[string]Prepared{"work": returning("done", nil)})
	cfg := testConfig(&logCapture{})
	w := New(d, resolve, (&completer{d: d}).complete, nil, cfg)
	tx, err := d.Begin(t.Context()) // holds the writer
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if err := w.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * cfg.PollInterval) // the claim loop is waiting for the writer
	began := time.Now()
	if err := stopWithin(t, w, waitLimit); err != nil {
		t.Fatalf("Stop = %v, want nil", err)
	}
	if took := time.Since(began); took > 2*time.Second {
		t.Errorf("Stop took %s while a claim waited for the writer", took)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	if s := getStep(t, d, ids[0]); s.State != "enqueued" || s.Attempts != 0 {
		t.Errorf("step after Stop: %s, attempt %d; want enqueued and never attempted", s.State, s.Attempts)
	}
}
