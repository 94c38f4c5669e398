package worker

import (
	"container/list"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/tasker-go/tasker/internal/chanmon"
	"github.com/tasker-go/tasker/store"
)

// ErrorTypeExternalTimeout is store.ErrorTypeExternalTimeout, kept here for
// the worker's callers.
const ErrorTypeExternalTimeout = store.ErrorTypeExternalTimeout

// Errors returned by the external channel; test with errors.Is.
var (
	// ErrUnknownEvent is returned by Complete for an event id this channel
	// never handed out, or one settled so long ago that it is no longer
	// remembered.
	ErrUnknownEvent = errors.New("unknown external event")
	// ErrAlreadyCompleted is returned by Complete for an event whose result
	// was already accepted.
	ErrAlreadyCompleted = errors.New("external event already completed")
	// ErrEventTimedOut is returned by Complete for an event that the channel
	// failed as external_timeout; the step is retried as a new event.
	ErrEventTimedOut = errors.New("external event timed out")
	// ErrEventLeaseLost is returned by Complete for an event withdrawn
	// because its step's lease was lost: an orchestrator rescued the step
	// and another attempt owns it.
	ErrEventLeaseLost = errors.New("external event withdrawn: its step's lease was lost")
	// ErrCompletionInProgress is returned by Complete while another call
	// (or the timeout sweep) is sending a result for the same event.
	ErrCompletionInProgress = errors.New("external event is being completed")
	// ErrCompletionChannelFull is returned by Complete when the completion
	// channel had no room within the send timeout. The event stays pending:
	// call Complete again.
	ErrCompletionChannelFull = errors.New("completion channel full")
	// ErrExternalClosed is returned once the worker is stopping: pending
	// events were handed back to their steps and nothing more is handed out.
	ErrExternalClosed = errors.New("external channel closed")
	// ErrInvalidResult is returned by Complete for a success whose value is
	// not valid JSON. The event stays pending.
	ErrInvalidResult = errors.New("invalid external result")
)

// ExternalConfig configures a worker's external channel. Zero values take
// the documented defaults.
type ExternalConfig struct {
	// Capacity bounds the external events pending at once, handed out or
	// not. A step dispatched while the channel is full waits for room
	// (backpressure); it is never dropped. Default 100.
	Capacity int
	// CompletionTimeout is how long an event may stay pending before the
	// channel fails it as a retryable external_timeout. A step's
	// timeout_seconds, when shorter, takes precedence. Default 5m.
	CompletionTimeout time.Duration
	// StarvationThreshold is the age past which a pending event is
	// reported (logged once and counted). Default 10s.
	StarvationThreshold time.Duration
	// SendTimeout bounds how long Complete waits for room in a full
	// completion channel. Default 10s.
	SendTimeout time.Duration
	// CallbackTimeout bounds the post-handler callback run for an external
	// result. Default 30s.
	CallbackTimeout time.Duration
}

func (c *ExternalConfig) setDefaults() {
	if c.Capacity <= 0 {
		c.Capacity = 100
	}
	if c.CompletionTimeout <= 0 {
		c.CompletionTimeout = 5 * time.Minute
	}
	if c.StarvationThreshold <= 0 {
		c.StarvationThreshold = 10 * time.Second
	}
	if c.SendTimeout <= 0 {
		c.SendTimeout = 10 * time.Second
	}
	if c.CallbackTimeout <= 0 {
		c.CallbackTimeout = 30 * time.Second
	}
}

// ExternalStep marks a Prepared step as run outside the process: instead of
// calling a handler, the worker hands it to pollers of its external channel.
// It carries what the event needs besides the claimed step.
type ExternalStep struct {
	Method         string
	Initialization json.RawMessage
	// DependencyResults are the results of the step's ancestors by step
	// name, read when the step is prepared (they are all complete then).
	DependencyResults map[string]json.RawMessage
}

// ExternalEvent is one attempt of an external step, as handed to a poller.
type ExternalEvent struct {
	// EventID identifies this attempt's event for Complete.
	EventID                                 string
	TaskUUID, StepUUID, StepName, Namespace string
	TaskName, TaskVersion                   string
	Callable, Method                        string
	Attempt, MaxAttempts                    int
	TaskContext                             json.RawMessage
	HandlerInitialization                   json.RawMessage
	DependencyResults                       map[string]json.RawMessage
	// CreatedAt is when the event became pending; past Deadline the
	// channel fails it as external_timeout.
	CreatedAt, Deadline time.Time
}

// ExternalResult is a poller's outcome for an event.
type ExternalResult struct {
	// Success reports that the attempt succeeded with Value (JSON; empty
	// means null).
	Success bool
	Value   json.RawMessage
	// Message describes a failure. A failure is retried under the step's
	// retry policy unless Permanent, no sooner than RetryAfter if set.
	Message    string
	Permanent  bool
	RetryAfter time.Duration
}

// ExternalStats is a snapshot of the external channel's counters.
type ExternalStats struct {
	Capacity int
	// Pending counts events waiting for a poller; Polled those handed out
	// whose result has not entered the completion channel yet.
	Pending, Polled int
	// OldestPendingAge is the age of the oldest event of either kind.
	OldestPendingAge time.Duration
	// Completions counts results accepted through Complete; Timeouts the
	// events failed as external_timeout; Starved the events that outlived
	// the starvation threshold; Released the events handed back to their
	// steps (worker stopping or lease lost); RefusedCompletes the Complete
	// calls that returned an error.
	Completions, Timeouts, Starved, Released, RefusedCompletes uint64
}

type extState int

const (
	extQueued  extState = iota // waiting for a poller
	extPolled                  // handed out, waiting for Complete
	extSending                 // a result is on its way to the completion channel
)

// extOutcome is how a settled event ended, remembered to explain a late
// Complete.
type extOutcome int

const (
	extCompleted extOutcome = iota + 1
	extTimedOut
	extLeaseLost
	extReleased
)

type extEvent struct {
	ev     ExternalEvent
	step   *store.ClaimedStep
	settle func() // the step stops counting against claim capacity
	state  extState
	before extState      // the state to go back to if a send fails
	elem   *list.Element // in External.queue while extQueued
	// starved is set once the event was reported as starved.
	starved bool
}

// External is the worker's external dispatch channel: steps whose handler
// lives outside the process wait in it until a poller takes them (Poll,
// PollWait) and reports their outcome (Complete). A result goes to the same
// completion channel as a Go handler's, and the post-handler callback runs
// only after that send succeeded.
//
// A pending event keeps counting against the worker's claim capacity
// (Config.Concurrency) until its result is in the completion channel, so
// the worker never claims more than it can account for; it holds no handler
// permit, so Go handlers keep running meanwhile. Its step's lease is
// extended by the worker's heartbeat like any claimed step's; a lease found
// lost withdraws the event.
type External struct {
	w     *Worker
	cfg   ExternalConfig
	log   *slog.Logger
	slots *chanmon.Chan[struct{}] // one token per pending event

	mu      sync.Mutex
	closed  bool
	events  map[string]*extEvent
	queue   *list.List    // events waiting for a poller, oldest first
	changed chan struct{} // closed and replaced when an event is queued or the channel closes
	// recent remembers how recently settled events ended, so that a late
	// Complete gets a precise error; recentIDs bounds it (oldest evicted).
	recent    map[string]extOutcome
	recentIDs []string
	recentAt  int

	completions, timeouts, starved, released, refused uint64

	// sending tracks results on their way to the completion channel, so
	// that close hands back only what nobody is completing.
	sending   sync.WaitGroup
	callbacks sync.WaitGroup

	running    bool
	sweepCtx   context.Context // ends the sweeps and their sends
	stopSweeps context.CancelFunc
	swept      chan struct{}
}

// recentLimit bounds how many settled event ids are remembered.
func (c ExternalConfig) recentLimit() int { return max(10*c.Capacity, 1024) }

func newExternal(w *Worker, cfg ExternalConfig) *External {
	return &External{
		w: w, cfg: cfg, log: w.log,
		slots:   chanmon.New[struct{}]("worker.external", cfg.Capacity),
		events:  map[string]*extEvent{},
		queue:   list.New(),
		changed: make(chan struct{}),
		recent:  map[string]extOutcome{},
		swept:   make(chan struct{}),
	}
}

// External returns the worker's external dispatch channel.
func (w *Worker) External() *External { return w.external }

// Poll hands out the oldest event waiting for a poller, once. It never
// blocks; it returns false when there is none or the channel is closed.
func (x *External) Poll() (*ExternalEvent, bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.takeLocked()
}

// PollWait is Poll that waits up to timeout (no limit if timeout <= 0) for
// an event. It returns nil and no error when the timeout passes idle,
// ErrExternalClosed once the channel is closed, and context.Cause(ctx) when
// ctx ends first.
func (x *External) PollWait(ctx context.Context, timeout time.Duration) (*ExternalEvent, error) {
	var expired <-chan time.Time
	if timeout > 0 {
		t := time.NewTimer(timeout)
		defer t.Stop()
		expired = t.C
	}
	for {
		x.mu.Lock()
		if x.closed {
			x.mu.Unlock()
			return nil, ErrExternalClosed
		}
		if ev, ok := x.takeLocked(); ok {
			x.mu.Unlock()
			return ev, nil
		}
		changed := x.changed
		x.mu.Unlock()
		select {
		case <-changed:
		case <-expired:
			return nil, nil
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
	}
}

func (x *External) takeLocked() (*ExternalEvent, bool) {
	if x.closed {
		return nil, false
	}
	front := x.queue.Front()
	if front == nil {
		return nil, false
	}
	ev := x.queue.Remove(front).(*extEvent)
	ev.elem, ev.state = nil, extPolled
	out := ev.ev
	return &out, true
}

// Complete reports the outcome of an event. The result is sent to the
// completion channel, waiting at most the configured send timeout for room;
// if there is none, Complete returns ErrCompletionChannelFull and the event
// stays pending, so the caller may try again. Once the send succeeded the
// post-handler callback runs in its own goroutine, so Complete never waits
// for it. Unknown, settled and concurrently completed events are refused
// with ErrUnknownEvent, ErrAlreadyCompleted, ErrEventTimedOut,
// ErrEventLeaseLost or ErrCompletionInProgress; a closed channel with
// ErrExternalClosed.
func (x *External) Complete(eventID string, r ExternalResult) error {
	if r.Success && len(r.Value) > 0 && !json.Valid(r.Value) {
		x.mu.Lock()
		x.refused++
		x.mu.Unlock()
		return fmt.Errorf("complete external event %s: %w: the value is not valid JSON", eventID, ErrInvalidResult)
	}
	x.mu.Lock()
	ev, err := x.reserveLocked(eventID)
	if err != nil {
		x.refused++
		x.mu.Unlock()
		return fmt.Errorf("complete external event %s: %w", eventID, err)
	}
	x.sending.Add(1)
	x.mu.Unlock()
	defer x.sending.Done()

	res := ev.result(r, time.Now())
	ctx, cancel := context.WithTimeout(x.sendCtx(), x.cfg.SendTimeout)
	err = x.w.completion.Send(ctx, res)
	cancel()
	if err != nil {
		x.mu.Lock()
		x.refused++
		ev.state = ev.before
		x.mu.Unlock()
		if errors.Is(err, chanmon.ErrClosed) {
			return fmt.Errorf("complete external event %s: %w", eventID, ErrExternalClosed)
		}
		return fmt.Errorf("complete external event %s: %w: no room within %s; the event is still pending",
			eventID, ErrCompletionChannelFull, x.cfg.SendTimeout)
	}
	x.settled(ev, extCompleted)
	x.afterSend(res)
	return nil
}

// reserveLocked takes an event for sending its result; x.mu is held.
func (x *External) reserveLocked(eventID string) (*extEvent, error) {
	if x.closed {
		return nil, ErrExternalClosed
	}
	ev, ok := x.events[eventID]
	if !ok {
		switch x.recent[eventID] {
		case extCompleted:
			return nil, ErrAlreadyCompleted
		case extTimedOut:
			return nil, ErrEventTimedOut
		case extLeaseLost:
			return nil, ErrEventLeaseLost
		case extReleased:
			return nil, ErrExternalClosed
		}
		return nil, ErrUnknownEvent
	}
	if ev.state == extSending {
		return nil, ErrCompletionInProgress
	}
	x.markSendingLocked(ev)
	return ev, nil
}

func (x *External) markSendingLocked(ev *extEvent) {
	if ev.elem != nil {
		x.queue.Remove(ev.elem)
		ev.elem = nil
	}
	ev.before, ev.state = ev.state, extSending
	if ev.before == extQueued {
		// Out of the queue now; should the send fail, it waits as if
		// handed out rather than being offered to a poller late.
		ev.before = extPolled
	}
}

// sendCtx is the base context of the channel's completion sends: bounded by
// their own timeouts, never by the worker's drain budget.
func (x *External) sendCtx() context.Context { return context.WithoutCancel(x.w.hCtx) }

// settled forgets an event whose result entered the completion channel (or
// could not), frees its slot and its claim capacity. The caller owns the
// event: it marked it extSending.
func (x *External) settled(ev *extEvent, how extOutcome) {
	x.mu.Lock()
	x.forgetLocked(ev, how)
	x.mu.Unlock()
	x.release(ev)
}

func (x *External) forgetLocked(ev *extEvent, how extOutcome) {
	delete(x.events, ev.ev.EventID)
	if ev.elem != nil {
		x.queue.Remove(ev.elem)
		ev.elem = nil
	}
	x.rememberLocked(ev.ev.EventID, how)
	switch how {
	case extCompleted:
		x.completions++
	case extTimedOut:
		x.timeouts++
	case extLeaseLost, extReleased:
		x.released++
	}
}

// release gives back a forgotten event's slot and claim capacity.
func (x *External) release(ev *extEvent) {
	<-x.slots.Recv() // the event's token: always buffered, even after Close
	ev.settle()
}

func (x *External) rememberLocked(id string, how extOutcome) {
	if limit := x.cfg.recentLimit(); len(x.recentIDs) < limit {
		x.recentIDs = append(x.recentIDs, id)
	} else {
		delete(x.recent, x.recentIDs[x.recentAt])
		x.recentIDs[x.recentAt] = id
		x.recentAt = (x.recentAt + 1) % limit
	}
	x.recent[id] = how
}

// afterSend runs the post-handler callback for a result the completion
// channel accepted, in its own goroutine and bounded by the callback
// timeout, so that the caller is never held up by events. The caller is
// inside x.sending, so close waits for the callback too.
func (x *External) afterSend(res *Result) {
	if x.w.callback == nil {
		return
	}
	x.callbacks.Add(1)
	go func() {
		defer x.callbacks.Done()
		ctx, cancel := context.WithTimeout(context.WithoutCancel(x.w.hCtx), x.cfg.CallbackTimeout)
		defer cancel()
		late := time.AfterFunc(x.cfg.CallbackTimeout, func() {
			x.log.Warn("post-handler callback for an external result outlived its timeout",
				"task_uuid", res.Step.TaskUUID, "step_uuid", res.Step.StepUUID, "timeout", x.cfg.CallbackTimeout)
		})
		defer late.Stop()
		x.w.runCallback(ctx, res)
	}()
}

// result turns a poller's outcome into the step's result.
func (ev *extEvent) result(r ExternalResult, now time.Time) *Result {
	res := &Result{Step: *ev.step, Started: ev.ev.CreatedAt, Finished: now}
	if r.Success {
		res.Success = true
		res.Value = json.RawMessage("null")
		if len(r.Value) > 0 {
			res.Value = append(json.RawMessage(nil), r.Value...)
		}
		return res
	}
	msg := r.Message
	if msg == "" {
		msg = "external handler failed"
	}
	info := &store.StepErrorInfo{Message: msg, Attempt: ev.step.Attempt, Type: store.ErrorTypeHandler, Retryable: true}
	if r.Permanent {
		info.Type, info.Retryable = store.ErrorTypePermanent, false
	} else if r.RetryAfter > 0 {
		info.RetryAfterMS = r.RetryAfter.Milliseconds()
	}
	res.Error = info
	return res
}

// failure builds a result for an event the channel settles itself.
func (ev *extEvent) failure(info *store.StepErrorInfo, now time.Time) *Result {
	info.Attempt = ev.step.Attempt
	return &Result{Step: *ev.step, Started: ev.ev.CreatedAt, Finished: now, Error: info}
}

// hold makes a claimed step an external event once there is room for it.
// It returns nil when the event is pending: whoever settles it (Complete,
// the timeout sweep, shutdown, a lost lease) calls settle. If the channel
// closed first, it returns the step's worker_stopping result for the caller
// to send.
func (x *External) hold(c *store.ClaimedStep, prep Prepared, settle func()) *Result {
	waited := time.Now()
	stopping := func() *Result {
		now := time.Now()
		return &Result{Step: *c, Started: waited, Finished: now, Error: &store.StepErrorInfo{
			Type: store.ErrorTypeWorkerStopping, Retryable: true, Attempt: c.Attempt,
			Message: "released by worker shutdown before an external poller completed it"}}
	}
	if err := x.slots.Send(x.sendCtx(), struct{}{}); err != nil {
		return stopping()
	}
	now := time.Now()
	deadline := now.Add(x.cfg.CompletionTimeout)
	if prep.Timeout > 0 && prep.Timeout < x.cfg.CompletionTimeout {
		deadline = now.Add(prep.Timeout)
	}
	spec := prep.External
	ev := &extEvent{step: c, settle: settle, ev: ExternalEvent{
		EventID: uuid.NewString(), TaskUUID: c.TaskUUID, StepUUID: c.StepUUID, StepName: c.StepName,
		Namespace: c.Namespace, TaskName: c.TaskName, TaskVersion: c.Version, Callable: c.Callable,
		Method: spec.Method, Attempt: c.Attempt, MaxAttempts: c.MaxAttempts, TaskContext: c.TaskContext,
		HandlerInitialization: spec.Initialization, DependencyResults: spec.DependencyResults,
		CreatedAt: now, Deadline: deadline,
	}}
	if ev.ev.DependencyResults == nil {
		ev.ev.DependencyResults = map[string]json.RawMessage{}
	}
	x.mu.Lock()
	if x.closed {
		x.mu.Unlock()
		<-x.slots.Recv()
		return stopping()
	}
	x.events[ev.ev.EventID] = ev
	ev.elem = x.queue.PushBack(ev)
	x.notifyLocked()
	x.mu.Unlock()

	// From here the heartbeat extends the step's lease with the others;
	// a lease it finds lost withdraws the event. A lease already gone was
	// lost while the step waited for room.
	w := x.w
	w.leaseMu.Lock()
	l, ok := w.leases[c.Message.LeaseToken]
	if ok {
		id := ev.ev.EventID
		l.cancel = func(error) { x.withdraw(id) }
	}
	w.leaseMu.Unlock()
	if !ok {
		x.withdraw(ev.ev.EventID)
	}
	return nil
}

func (x *External) notifyLocked() {
	close(x.changed)
	x.changed = make(chan struct{})
}

// withdraw drops an event whose step's lease was lost: its result would be
// refused, and the attempt that rescued the step owns it now. An event
// whose result is already being sent is left to that send.
func (x *External) withdraw(id string) {
	x.mu.Lock()
	ev, ok := x.events[id]
	if !ok || ev.state == extSending {
		x.mu.Unlock()
		return
	}
	x.forgetLocked(ev, extLeaseLost)
	x.mu.Unlock()
	x.release(ev)
	x.log.Warn("external event withdrawn: its step's lease was lost", "event_id", id,
		"task_uuid", ev.ev.TaskUUID, "step_uuid", ev.ev.StepUUID, "attempt", ev.ev.Attempt)
}

// start launches the sweep that times out and reports old events; ctx
// ends with the worker.
func (x *External) start(ctx context.Context) {
	x.mu.Lock()
	x.running = true
	x.sweepCtx, x.stopSweeps = context.WithCancel(ctx)
	x.mu.Unlock()
	go x.runSweeps()
}

func (x *External) sweepInterval() time.Duration {
	d := min(x.cfg.CompletionTimeout, x.cfg.StarvationThreshold) / 4
	return min(max(d, 5*time.Millisecond), 250*time.Millisecond)
}

func (x *External) runSweeps() {
	defer close(x.swept)
	tick := time.NewTicker(x.sweepInterval())
	defer tick.Stop()
	for {
		select {
		case <-x.sweepCtx.Done():
			return
		case now := <-tick.C:
			x.sweep(now)
		}
	}
}

// sweep reports events that outlived the starvation threshold (once each)
// and fails those past their deadline as external_timeout.
func (x *External) sweep(now time.Time) {
	var expired, starved []*extEvent
	x.mu.Lock()
	if x.closed {
		x.mu.Unlock()
		return
	}
	for _, ev := range x.events {
		if ev.state == extSending {
			continue
		}
		if !ev.starved && now.Sub(ev.ev.CreatedAt) >= x.cfg.StarvationThreshold {
			ev.starved = true
			x.starved++
			starved = append(starved, ev)
		}
		if !now.Before(ev.ev.Deadline) {
			x.markSendingLocked(ev)
			expired = append(expired, ev)
		}
	}
	x.sending.Add(len(expired))
	x.mu.Unlock()

	for _, ev := range starved {
		x.log.Warn("external event starved: no poller completed it within the threshold",
			"event_id", ev.ev.EventID, "task_uuid", ev.ev.TaskUUID, "step_uuid", ev.ev.StepUUID,
			"callable", ev.ev.Callable, "age", now.Sub(ev.ev.CreatedAt).Round(time.Millisecond),
			"threshold", x.cfg.StarvationThreshold)
	}
	for _, ev := range expired {
		x.expire(ev, now)
	}
}

// expire sends an event's external_timeout result. Should the completion
// channel have no room, the event waits for the next sweep (a Complete may
// still win it meanwhile).
func (x *External) expire(ev *extEvent, now time.Time) {
	defer x.sending.Done()
	limit := ev.ev.Deadline.Sub(ev.ev.CreatedAt).Round(time.Millisecond)
	res := ev.failure(&store.StepErrorInfo{Type: ErrorTypeExternalTimeout, Retryable: true,
		Message: fmt.Sprintf("external handler %q did not complete within %s", ev.ev.Callable, limit)}, now)
	ctx, cancel := context.WithTimeout(x.sweepCtx, x.cfg.SendTimeout)
	err := x.w.completion.Send(ctx, res)
	cancel()
	if err != nil {
		x.mu.Lock()
		ev.state = ev.before
		x.mu.Unlock()
		x.log.Warn("external_timeout result not accepted by the completion channel; retrying",
			"event_id", ev.ev.EventID, "step_uuid", ev.ev.StepUUID, "error", err)
		return
	}
	x.log.Warn("external event timed out", "event_id", ev.ev.EventID, "task_uuid", ev.ev.TaskUUID,
		"step_uuid", ev.ev.StepUUID, "callable", ev.ev.Callable, "limit", limit)
	x.settled(ev, extTimedOut)
	x.afterSend(res)
}

// close is called by Stop once nothing more is dispatched. It stops handing
// out events and refuses later completions, lets completions already
// sending finish, then hands every event still pending back to its step as
// a worker_stopping failure (the attempt is not counted and the step runs
// again), before the completion channel closes. It returns when their
// post-handler callbacks have run.
func (x *External) close() {
	x.mu.Lock()
	if x.closed {
		x.mu.Unlock()
		return
	}
	x.closed = true
	running := x.running
	x.notifyLocked()
	x.mu.Unlock()

	x.slots.Close() // dispatches waiting for room hand their steps back themselves
	if running {
		x.stopSweeps()
		<-x.swept
	}
	x.sending.Wait()

	x.mu.Lock()
	left := make([]*extEvent, 0, len(x.events))
	for _, ev := range x.events {
		x.markSendingLocked(ev) // a lost lease no longer withdraws it
		left = append(left, ev)
	}
	x.mu.Unlock()
	for _, ev := range left {
		res := ev.failure(&store.StepErrorInfo{Type: store.ErrorTypeWorkerStopping, Retryable: true,
			Message: "released by worker shutdown before an external poller completed it"}, time.Now())
		if err := x.w.completion.Send(x.sendCtx(), res); err != nil {
			x.log.Warn("pending external event not released: completion channel closed; its step returns via lease expiry",
				"event_id", ev.ev.EventID, "step_uuid", ev.ev.StepUUID, "error", err)
			x.settled(ev, extReleased)
			continue
		}
		x.settled(ev, extReleased)
		x.afterSend(res)
	}
	x.callbacks.Wait()
}

// Stats returns the channel's counters.
func (x *External) Stats() ExternalStats {
	now := time.Now()
	x.mu.Lock()
	defer x.mu.Unlock()
	s := ExternalStats{Capacity: x.cfg.Capacity, Completions: x.completions, Timeouts: x.timeouts,
		Starved: x.starved, Released: x.released, RefusedCompletes: x.refused}
	for _, ev := range x.events {
		if ev.state == extQueued {
			s.Pending++
		} else {
			s.Polled++
		}
		if age := now.Sub(ev.ev.CreatedAt); age > s.OldestPendingAge {
			s.OldestPendingAge = age
		}
	}
	return s
}
