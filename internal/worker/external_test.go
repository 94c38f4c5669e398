package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tasker-go/tasker/internal/chanmon"
	"github.com/tasker-go/tasker/store"
)

// externalPrep is what the resolver gives every "ext" step in these tests.
func externalPrep(timeout time.Duration) Prepared {
	return Prepared{Timeout: timeout, External: &ExternalStep{
		Method:            "process",
		Initialization:    json.RawMessage(`{"region":"eu"}`),
		DependencyResults: map[string]json.RawMessage{"parent": json.RawMessage(`{"total":42}`)},
	}}
}

// foreignPoller polls like a process in another language: it waits for an
// event, runs handle (which returns ok=false to leave the event
// uncompleted), and completes it. It stops when the test ends.
func foreignPoller(t *testing.T, x *External, handle func(ev *ExternalEvent) (ExternalResult, bool)) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			ev, err := x.PollWait(ctx, 50*time.Millisecond)
			if err != nil {
				return
			}
			if ev == nil {
				continue
			}
			r, ok := handle(ev)
			if !ok {
				continue
			}
			for {
				err := x.Complete(ev.EventID, r)
				if !errors.Is(err, ErrCompletionChannelFull) {
					break
				}
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}

// pollOne waits for the next event.
func pollOne(t *testing.T, x *External) *ExternalEvent {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	ev, err := x.PollWait(ctx, 0)
	if err != nil || ev == nil {
		t.Fatalf("PollWait = %v, %v; want an event", ev, err)
	}
	return ev
}

func storedError(t *testing.T, s *store.StepRow) store.StepErrorInfo {
	t.Helper()
	var info store.StepErrorInfo
	if err := json.Unmarshal(s.Error, &info); err != nil {
		t.Fatalf("stored error %s: %v", s.Error, err)
	}
	return info
}

func (l *logCapture) count(sub string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, m := range l.msgs {
		if strings.Contains(m, sub) {
			n++
		}
	}
	return n
}

// TestExternalHappyPath: a foreign poller receives each external step once,
// with its full context, and its results are written like a Go handler's;
// Go steps run beside it and every result gets the callback.
func TestExternalHappyPath(t *testing.T) {
	t.Parallel()
	d := openStore(t)
	ids := seed(t, d, "ext", "go", "ext")
	resolve := resolverFor(map[string]Prepared{"ext": externalPrep(0), "go": returning("native", nil)})
	var callbacks sync.Map // step UUID -> *Result
	cb := callbackFunc(func(_ context.Context, r *Result) { callbacks.Store(r.Step.StepUUID, r) })
	comp := &completer{d: d}
	cfg := testConfig(&logCapture{})
	w := New(d, resolve, comp.complete, cb, cfg)
	startWorker(t, w)

	var mu sync.Mutex
	seen := map[string]*ExternalEvent{}
	foreignPoller(t, w.External(), func(ev *ExternalEvent) (ExternalResult, bool) {
		mu.Lock()
		seen[ev.StepUUID] = ev
		mu.Unlock()
		var parent struct{ Total int }
		if err := json.Unmarshal(ev.DependencyResults["parent"], &parent); err != nil {
			return ExternalResult{Message: err.Error(), Permanent: true}, true
		}
		v, _ := json.Marshal(map[string]any{"step": ev.StepName, "doubled": parent.Total * 2})
		return ExternalResult{Success: true, Value: v}, true
	})
	eventually(t, "every result to be written", func() bool { return finished(t, d, ids...) })

	for i, id := range []string{ids[0], ids[2]} {
		s := getStep(t, d, id)
		want := fmt.Sprintf(`{"doubled":84,"step":"step_%d"}`, 2*i)
		if s.State != "enqueued_for_orchestration" || string(s.Result) != want {
			t.Errorf("external step %s: %s with %s, want enqueued_for_orchestration with %s", id, s.State, s.Result, want)
		}
		if s.Attempts != 1 {
			t.Errorf("external step %s: %d attempts, want 1", id, s.Attempts)
		}
		mu.Lock()
		ev := seen[id]
		mu.Unlock()
		if ev == nil {
			t.Fatalf("no event for step %s", id)
		}
		if ev.EventID == "" || ev.TaskUUID == "" || ev.StepName != fmt.Sprintf("step_%d", 2*i) || ev.Namespace != testNS ||
			ev.TaskName != "seeded" || ev.TaskVersion != "1.0.0" || ev.Callable != "ext" || ev.Method != "process" ||
			ev.Attempt != 1 || ev.MaxAttempts != 3 || string(ev.TaskContext) != `{"seeded":true}` ||
			string(ev.HandlerInitialization) != `{"region":"eu"}` {
			t.Errorf("event for step %s lacks context: %+v", id, ev)
		}
		if ev.CreatedAt.IsZero() || !ev.Deadline.Equal(ev.CreatedAt.Add(5*time.Minute)) {
			t.Errorf("event created %s with deadline %s, want the default 5m completion timeout", ev.CreatedAt, ev.Deadline)
		}
	}
	if s := getStep(t, d, ids[1]); string(s.Result) != `"native"` {
		t.Errorf("Go step result %s", s.Result)
	}
	eventually(t, "a callback per result", func() bool {
		n := 0
		callbacks.Range(func(any, any) bool { n++; return true })
		return n == 3
	})
	st := w.External().Stats()
	if st.Completions != 2 || st.Pending != 0 || st.Polled != 0 || st.Timeouts != 0 || st.RefusedCompletes != 0 {
		t.Errorf("stats %+v, want 2 completions and nothing pending", st)
	}
	eventually(t, "claim capacity to be given back", func() bool { return w.InFlight() == 0 })
}

// TestExternalFailures: a poller's failures are stored as a Go handler's
// would be: retryable (with its delay) or permanent.
func TestExternalFailures(t *testing.T) {
	t.Parallel()
	d := openStore(t)
	ids := seed(t, d, "ext", "ext", "ext")
	resolve := resolverFor(map[string]Prepared{"ext": externalPrep(0)})
	comp := &completer{d: d}
	w := New(d, resolve, comp.complete, nil, testConfig(&logCapture{}))
	startWorker(t, w)
	outcomes := map[string]ExternalResult{
		"step_0": {Message: "upstream 503", RetryAfter: 2 * time.Second},
		"step_1": {Message: "card declined", Permanent: true},
		"step_2": {Success: true},
	}
	foreignPoller(t, w.External(), func(ev *ExternalEvent) (ExternalResult, bool) {
		return outcomes[ev.StepName], true
	})
	eventually(t, "every result to be written", func() bool { return finished(t, d, ids...) })

	if info := storedError(t, getStep(t, d, ids[0])); info.Type != store.ErrorTypeHandler || !info.Retryable ||
		info.RetryAfterMS != 2000 || info.Message != "upstream 503" || info.Attempt != 1 {
		t.Errorf("retryable failure stored as %+v", info)
	}
	if info := storedError(t, getStep(t, d, ids[1])); info.Type != store.ErrorTypePermanent || info.Retryable ||
		info.Message != "card declined" {
		t.Errorf("permanent failure stored as %+v", info)
	}
	if s := getStep(t, d, ids[2]); s.State != "enqueued_for_orchestration" || string(s.Result) != "null" {
		t.Errorf("success without a value: %s with %s, want a null result", s.State, s.Result)
	}
}

// TestExternalCompleteRefusals: unknown, repeated and malformed completions
// are refused with errors a poller can tell apart, and counted.
func TestExternalCompleteRefusals(t *testing.T) {
	t.Parallel()
	d := openStore(t)
	ids := seed(t, d, "ext")
	comp := &completer{d: d}
	w := New(d, resolverFor(map[string]Prepared{"ext": externalPrep(0)}), comp.complete, nil, testConfig(&logCapture{}))
	startWorker(t, w)
	x := w.External()
	ev := pollOne(t, x)
	if again, ok := x.Poll(); ok {
		t.Fatalf("the event was handed out twice: %+v", again)
	}

	if err := x.Complete("no-such-event", ExternalResult{Success: true}); !errors.Is(err, ErrUnknownEvent) {
		t.Errorf("Complete(unknown id) = %v, want ErrUnknownEvent", err)
	}
	err := x.Complete(ev.EventID, ExternalResult{Success: true, Value: json.RawMessage(`{"broken"`)})
	if !errors.Is(err, ErrInvalidResult) {
		t.Errorf("Complete(invalid JSON) = %v, want ErrInvalidResult", err)
	}
	if st := x.Stats(); st.Polled != 1 {
		t.Errorf("after a refused result the event is not pending: %+v", st)
	}
	if err := x.Complete(ev.EventID, ExternalResult{Success: true, Value: json.RawMessage(`7`)}); err != nil {
		t.Fatalf("Complete = %v", err)
	}
	err = x.Complete(ev.EventID, ExternalResult{Success: true, Value: json.RawMessage(`8`)})
	if !errors.Is(err, ErrAlreadyCompleted) || errors.Is(err, ErrUnknownEvent) {
		t.Errorf("second Complete = %v, want ErrAlreadyCompleted", err)
	}
	eventually(t, "the result to be written", func() bool { return finished(t, d, ids...) })
	if s := getStep(t, d, ids[0]); string(s.Result) != "7" {
		t.Errorf("stored result %s, want the first completion's 7", s.Result)
	}
	if st := x.Stats(); st.Completions != 1 || st.RefusedCompletes != 3 {
		t.Errorf("stats %+v, want 1 completion and 3 refused", st)
	}
}

// TestExternalTimeout: an event nobody completes is failed as a retryable
// external_timeout when the completion timeout, or the step's own shorter
// timeout, runs out; a late Complete is refused.
func TestExternalTimeout(t *testing.T) {
	t.Parallel()
	d := openStore(t)
	ids := seed(t, d, "ext", "ext_short")
	resolve := resolverFor(map[string]Prepared{
		"ext":       externalPrep(0),
		"ext_short": externalPrep(100 * time.Millisecond),
	})
	var callbacks atomic.Int32
	cb := callbackFunc(func(_ context.Context, r *Result) {
		if r.Error != nil && r.Error.Type == ErrorTypeExternalTimeout {
			callbacks.Add(1)
		}
	})
	comp := &completer{d: d}
	logs := &logCapture{}
	cfg := testConfig(logs)
	cfg.External.CompletionTimeout = 200 * time.Millisecond
	w := New(d, resolve, comp.complete, cb, cfg)
	startWorker(t, w)
	x := w.External()
	evs := map[string]*ExternalEvent{}
	for range 2 {
		ev := pollOne(t, x) // handed out, never completed
		evs[ev.Callable] = ev
	}
	if got := evs["ext_short"].Deadline.Sub(evs["ext_short"].CreatedAt); got != 100*time.Millisecond {
		t.Errorf("step with a 100ms timeout got a %s deadline", got)
	}
	// The sweep that times an event out settles it after the send to the
	// completion channel, so the step can be finished in the database a
	// moment before the event is settled (Complete meanwhile gets
	// ErrCompletionInProgress): wait for both.
	eventually(t, "both events to time out", func() bool { return finished(t, d, ids...) && x.Stats().Timeouts == 2 })

	for i, id := range ids {
		info := storedError(t, getStep(t, d, id))
		limit := []string{"200ms", "100ms"}[i]
		if info.Type != ErrorTypeExternalTimeout || !info.Retryable || !strings.Contains(info.Message, limit) {
			t.Errorf("step %d stored %+v, want a retryable %s mentioning %s", i, info, ErrorTypeExternalTimeout, limit)
		}
	}
	err := x.Complete(evs["ext"].EventID, ExternalResult{Success: true})
	if !errors.Is(err, ErrEventTimedOut) {
		t.Errorf("Complete after the timeout = %v, want ErrEventTimedOut", err)
	}
	st := x.Stats()
	if st.Timeouts != 2 || st.Completions != 0 || st.Polled != 0 || st.RefusedCompletes != 1 {
		t.Errorf("stats %+v, want 2 timeouts and 1 refused completion", st)
	}
	eventually(t, "the callback to see both timeouts", func() bool { return callbacks.Load() == 2 })
	if !logs.has("timed out") {
		t.Error("the timeout was not logged")
	}
}

// TestExternalStarvation: an event nobody polls is reported once, in the
// log and in the counter.
func TestExternalStarvation(t *testing.T) {
	t.Parallel()
	d := openStore(t)
	seed(t, d, "ext", "ext")
	logs := &logCapture{}
	cfg := testConfig(logs)
	cfg.External.StarvationThreshold = 100 * time.Millisecond
	w := New(d, resolverFor(map[string]Prepared{"ext": externalPrep(0)}), (&completer{d: d}).complete, nil, cfg)
	startWorker(t, w)
	x := w.External()
	eventually(t, "both events to be reported starved", func() bool { return x.Stats().Starved == 2 })
	// Many more sweeps: each event is still reported only once.
	time.Sleep(5 * cfg.External.StarvationThreshold)
	st := x.Stats()
	if st.Starved != 2 || st.Pending != 2 {
		t.Errorf("stats %+v, want 2 starved and 2 still pending", st)
	}
	if st.OldestPendingAge < cfg.External.StarvationThreshold {
		t.Errorf("oldest pending age %s, want at least %s", st.OldestPendingAge, cfg.External.StarvationThreshold)
	}
	if n := logs.count("starved"); n != 2 {
		t.Errorf("%d starvation log lines, want one per event (2)", n)
	}
}

// TestExternalCallbackAfterSend pins rule 1 for the external channel: the
// callback runs only once the result is in the completion channel, and
// Complete does not wait for it.
func TestExternalCallbackAfterSend(t *testing.T) {
	t.Parallel()
	d := openStore(t)
	ids := seed(t, d, "ext")
	gate := make(chan struct{})
	comp := &completer{d: d, hook: func([]store.StepCompletion) { <-gate }}
	var w *Worker
	type call struct {
		sent uint64
		res  *Result
	}
	calls := make(chan call, 1)
	hold := make(chan struct{})
	cb := callbackFunc(func(_ context.Context, r *Result) {
		calls <- call{w.CompletionStats().Sent, r}
		<-hold // a callback that takes as long as the test wants
	})
	cfg := testConfig(&logCapture{})
	cfg.CompletionBatch = 1
	w = New(d, resolverFor(map[string]Prepared{"ext": externalPrep(0)}), comp.complete, cb, cfg)
	startWorker(t, w)
	releaseCallback, openGate := sync.OnceFunc(func() { close(hold) }), sync.OnceFunc(func() { close(gate) })
	t.Cleanup(openGate)
	t.Cleanup(releaseCallback)

	x := w.External()
	ev := pollOne(t, x)
	completed := make(chan error, 1)
	go func() {
		completed <- x.Complete(ev.EventID, ExternalResult{Success: true, Value: json.RawMessage(`"ok"`)})
	}()
	select {
	case err := <-completed:
		if err != nil {
			t.Fatalf("Complete = %v", err)
		}
	case <-time.After(waitLimit):
		t.Fatal("Complete waited for the post-handler callback")
	}
	var c call
	select {
	case c = <-calls:
	case <-time.After(waitLimit):
		t.Fatal("no callback")
	}
	if c.sent != 1 {
		t.Errorf("callback ran when the completion channel had accepted %d results, want 1 (this one)", c.sent)
	}
	if !c.res.Success || string(c.res.Value) != `"ok"` || c.res.Step.StepUUID != ids[0] {
		t.Errorf("callback got %+v", c.res)
	}
	if written, _ := comp.counts(); written != 0 {
		t.Errorf("%d results written while the completer was held", written)
	}
	releaseCallback()
	openGate()
	eventually(t, "the result to be written", func() bool { return finished(t, d, ids...) })
}

// TestExternalCompletionChannelFull: Complete waits at most the send
// timeout for room, then reports the full channel and keeps the event
// pending; no callback runs for it until a later Complete gets through.
func TestExternalCompletionChannelFull(t *testing.T) {
	t.Parallel()
	d := openStore(t)
	ids := seed(t, d, "ext", "ext", "ext")
	gate := make(chan struct{})
	var batches atomic.Int32
	comp := &completer{d: d, hook: func([]store.StepCompletion) {
		batches.Add(1)
		<-gate
	}}
	var callbacks sync.Map
	cb := callbackFunc(func(_ context.Context, r *Result) { callbacks.Store(r.Step.StepUUID, true) })
	cfg := testConfig(&logCapture{})
	cfg.Concurrency, cfg.CompletionBuffer, cfg.CompletionBatch = 3, 1, 1
	cfg.External.SendTimeout = 100 * time.Millisecond
	w := New(d, resolverFor(map[string]Prepared{"ext": externalPrep(0)}), comp.complete, cb, cfg)
	startWorker(t, w)
	openGate := sync.OnceFunc(func() { close(gate) })
	t.Cleanup(openGate)

	x := w.External()
	evs := []*ExternalEvent{pollOne(t, x), pollOne(t, x), pollOne(t, x)}
	ok := ExternalResult{Success: true, Value: json.RawMessage(`1`)}
	if err := x.Complete(evs[0].EventID, ok); err != nil {
		t.Fatalf("first Complete = %v", err)
	}
	eventually(t, "the processor to hold the first result", func() bool { return batches.Load() == 1 })
	if err := x.Complete(evs[1].EventID, ok); err != nil {
		t.Fatalf("second Complete = %v", err)
	}
	// The channel's one slot is taken and the processor is held.
	err := x.Complete(evs[2].EventID, ok)
	if !errors.Is(err, ErrCompletionChannelFull) {
		t.Fatalf("Complete on a full channel = %v, want ErrCompletionChannelFull", err)
	}
	st := x.Stats()
	if st.Polled != 1 || st.Completions != 2 || st.RefusedCompletes != 1 {
		t.Errorf("stats %+v, want the third event still pending", st)
	}
	if cs := w.CompletionStats(); cs.BlockedSends == 0 || cs.Dropped != 0 {
		t.Errorf("completion channel %+v, want a blocked send and nothing dropped", cs)
	}
	eventually(t, "callbacks for the accepted results", func() bool {
		_, a := callbacks.Load(evs[0].StepUUID)
		_, b := callbacks.Load(evs[1].StepUUID)
		return a && b
	})
	if _, ran := callbacks.Load(evs[2].StepUUID); ran {
		t.Error("callback ran for a result the channel did not accept")
	}

	openGate()
	if err := x.Complete(evs[2].EventID, ok); err != nil {
		t.Fatalf("Complete once there is room = %v", err)
	}
	eventually(t, "every result to be written", func() bool { return finished(t, d, ids...) })
	eventually(t, "the callback for the retried result", func() bool {
		_, ran := callbacks.Load(evs[2].StepUUID)
		return ran
	})
}

// TestExternalCompletionInProgress: while one Complete waits for room, a
// second one for the same event is refused rather than sending twice.
func TestExternalCompletionInProgress(t *testing.T) {
	t.Parallel()
	d := openStore(t)
	ids := seed(t, d, "ext", "ext", "ext")
	gate := make(chan struct{})
	var batches atomic.Int32
	comp := &completer{d: d, hook: func([]store.StepCompletion) {
		batches.Add(1)
		<-gate
	}}
	cfg := testConfig(&logCapture{})
	cfg.Concurrency, cfg.CompletionBuffer, cfg.CompletionBatch = 3, 1, 1
	cfg.External.SendTimeout = waitLimit
	w := New(d, resolverFor(map[string]Prepared{"ext": externalPrep(0)}), comp.complete, nil, cfg)
	startWorker(t, w)
	openGate := sync.OnceFunc(func() { close(gate) })
	t.Cleanup(openGate)

	x := w.External()
	evs := []*ExternalEvent{pollOne(t, x), pollOne(t, x), pollOne(t, x)}
	ok := ExternalResult{Success: true, Value: json.RawMessage(`1`)}
	if err := x.Complete(evs[0].EventID, ok); err != nil {
		t.Fatalf("first Complete = %v", err)
	}
	eventually(t, "the processor to hold the first result", func() bool { return batches.Load() == 1 })
	if err := x.Complete(evs[1].EventID, ok); err != nil {
		t.Fatalf("second Complete = %v", err)
	}
	waiting := make(chan error, 1)
	go func() { waiting <- x.Complete(evs[2].EventID, ok) }()
	eventually(t, "the third Complete to wait for room", func() bool { return w.CompletionStats().BlockedSends == 1 })
	if err := x.Complete(evs[2].EventID, ok); !errors.Is(err, ErrCompletionInProgress) {
		t.Errorf("concurrent Complete = %v, want ErrCompletionInProgress", err)
	}
	openGate()
	select {
	case err := <-waiting:
		if err != nil {
			t.Errorf("waiting Complete = %v, want nil once there is room", err)
		}
	case <-time.After(waitLimit):
		t.Fatal("the waiting Complete did not return")
	}
	eventually(t, "every result to be written", func() bool { return finished(t, d, ids...) })
	if st := x.Stats(); st.Completions != 3 || st.RefusedCompletes != 1 {
		t.Errorf("stats %+v, want 3 completions and 1 refused", st)
	}
}

// TestExternalShutdown pins rule 6 for external steps: Stop hands every
// pending event back to its step as worker_stopping (polled, unpolled, and
// waiting for room alike), before the completion channel closes; afterwards
// nothing is handed out and completions are refused without a callback.
func TestExternalShutdown(t *testing.T) {
	t.Parallel()
	d := openStore(t)
	ids := seed(t, d, "ext", "ext", "ext")
	var successes atomic.Int32
	cb := callbackFunc(func(_ context.Context, r *Result) {
		if r.Success {
			successes.Add(1)
		}
	})
	comp := &completer{d: d}
	cfg := testConfig(&logCapture{})
	cfg.Concurrency = 3
	cfg.External.Capacity = 2 // the third step waits for room
	w := New(d, resolverFor(map[string]Prepared{"ext": externalPrep(0)}), comp.complete, cb, cfg)
	if err := w.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	x := w.External()
	polled := pollOne(t, x)
	eventually(t, "one event queued and one step waiting for room", func() bool {
		st := x.Stats()
		return st.Pending == 1 && st.Polled == 1 && w.InFlight() == 3
	})

	if err := stopWithin(t, w, waitLimit); err != nil {
		t.Fatalf("Stop = %v", err)
	}
	for _, id := range ids {
		s := getStep(t, d, id)
		if s.State != "enqueued_as_error_for_orchestration" {
			t.Fatalf("step %s is %s after Stop, want its release written", id, s.State)
		}
		if info := storedError(t, s); info.Type != store.ErrorTypeWorkerStopping || !info.Retryable || info.Attempt != 1 {
			t.Errorf("step %s released with %+v, want a retryable worker_stopping", id, info)
		}
	}
	if visible, leased := queueDepth(t, d); visible+leased != 0 {
		t.Errorf("queue holds %d visible and %d leased messages after Stop", visible, leased)
	}

	if err := x.Complete(polled.EventID, ExternalResult{Success: true}); !errors.Is(err, ErrExternalClosed) {
		t.Errorf("Complete after Stop = %v, want ErrExternalClosed", err)
	}
	if ev, ok := x.Poll(); ok {
		t.Errorf("Poll after Stop handed out %+v", ev)
	}
	if _, err := x.PollWait(t.Context(), time.Second); !errors.Is(err, ErrExternalClosed) {
		t.Errorf("PollWait after Stop = %v, want ErrExternalClosed", err)
	}
	if n := successes.Load(); n != 0 {
		t.Errorf("%d success callbacks after Stop", n)
	}
	if st := x.Stats(); st.Released != 2 || st.Pending+st.Polled != 0 {
		t.Errorf("stats %+v, want the 2 pending events released", st)
	}
	if w.InFlight() != 0 {
		t.Errorf("InFlight = %d after Stop", w.InFlight())
	}
}

// TestExternalClaimCapacity: pending external events count against claim
// capacity until completed, so the worker does not claim more steps than
// Concurrency; the external channel's own capacity makes dispatch wait, and
// its monitor shows it.
func TestExternalClaimCapacity(t *testing.T) {
	t.Parallel()
	d := openStore(t)
	ids := seed(t, d, "ext", "ext", "ext", "ext")
	reg := chanmon.NewRegistry()
	cfg := testConfig(&logCapture{})
	cfg.Concurrency, cfg.Monitors = 3, reg
	cfg.External.Capacity = 2
	comp := &completer{d: d}
	w := New(d, resolverFor(map[string]Prepared{"ext": externalPrep(0)}), comp.complete, nil, cfg)
	startWorker(t, w)
	x := w.External()
	monitor := func() chanmon.Stats {
		for _, s := range reg.Snapshot() {
			if s.Name == "worker.external" {
				return s
			}
		}
		t.Fatal("worker.external is not registered")
		return chanmon.Stats{}
	}
	eventually(t, "two events pending and a third step waiting for room", func() bool {
		return x.Stats().Pending == 2 && monitor().BlockedSends == 1
	})
	time.Sleep(10 * cfg.PollInterval) // claim rounds that must not take the fourth step
	claimed := 0
	for _, id := range ids {
		if getStep(t, d, id).State == "in_progress" {
			claimed++
		}
	}
	if claimed != 3 || w.InFlight() != 3 {
		t.Errorf("%d steps claimed, %d in flight; want 3 (Concurrency)", claimed, w.InFlight())
	}
	if m := monitor(); m.Capacity != 2 || m.Depth != 2 || m.Level != chanmon.Critical {
		t.Errorf("worker.external monitor %+v, want capacity 2 full", m)
	}

	foreignPoller(t, x, func(ev *ExternalEvent) (ExternalResult, bool) {
		return ExternalResult{Success: true, Value: json.RawMessage(`"done"`)}, true
	})
	eventually(t, "every step to finish", func() bool { return finished(t, d, ids...) })
	if st := x.Stats(); st.Completions != 4 {
		t.Errorf("stats %+v, want 4 completions", st)
	}
}

// TestExternalLeaseLost: a pending event whose lease is lost (the step was
// rescued elsewhere) is withdrawn; its late completion is refused.
func TestExternalLeaseLost(t *testing.T) {
	t.Parallel()
	d := openStore(t)
	seed(t, d, "ext")
	cfg := testConfig(&logCapture{})
	cfg.StepLease = 300 * time.Millisecond
	w := New(d, resolverFor(map[string]Prepared{"ext": externalPrep(0)}), (&completer{d: d}).complete, nil, cfg)
	startWorker(t, w)
	x := w.External()
	ev := pollOne(t, x)
	// What a rescue does to the claim: the leased message is replaced.
	msgs, err := d.Reader().QueueExpired(t.Context(), store.QueueExpiredParams{Now: time.Now().Add(time.Hour)})
	if err != nil || len(msgs) != 1 {
		t.Fatalf("QueueExpired = %v, %v", msgs, err)
	}
	if err := store.InTx(t.Context(), d, func(tx store.Tx) error {
		return tx.QueueDelete(t.Context(), store.QueueDeleteParams{ID: msgs[0].ID})
	}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the event to be withdrawn", func() bool { return x.Stats().Released == 1 })
	if st := x.Stats(); st.Polled+st.Pending != 0 {
		t.Errorf("stats %+v, want nothing pending", st)
	}
	if err := x.Complete(ev.EventID, ExternalResult{Success: true}); !errors.Is(err, ErrEventLeaseLost) {
		t.Errorf("Complete after the lease was lost = %v, want ErrEventLeaseLost", err)
	}
	eventually(t, "claim capacity to be given back", func() bool { return w.InFlight() == 0 })
}
