package tasker

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"time"

	"github.com/tasker-go/tasker/internal/worker"
	"github.com/tasker-go/tasker/store"
	"github.com/tasker-go/tasker/template"
)

// Errors of the external dispatch channel, for errors.Is.
var (
	// ErrUnknownEvent is returned by ExternalChannel.Complete for an event
	// id it never handed out (or settled so long ago that it forgot it).
	ErrUnknownEvent = worker.ErrUnknownEvent
	// ErrAlreadyCompleted is returned by ExternalChannel.Complete for an
	// event whose result was already accepted.
	ErrAlreadyCompleted = worker.ErrAlreadyCompleted
	// ErrEventTimedOut is returned by ExternalChannel.Complete for an event
	// that was failed as external_timeout; its step runs again as a new
	// event.
	ErrEventTimedOut = worker.ErrEventTimedOut
	// ErrEventLeaseLost is returned by ExternalChannel.Complete for an event
	// withdrawn because its step's lease was lost and the step rescued.
	ErrEventLeaseLost = worker.ErrEventLeaseLost
	// ErrCompletionInProgress is returned by ExternalChannel.Complete while
	// another call is completing the same event.
	ErrCompletionInProgress = worker.ErrCompletionInProgress
	// ErrCompletionChannelFull is returned by ExternalChannel.Complete when
	// the worker's completion channel had no room within
	// Config.ExternalCompletionSendTimeout. The event stays pending: call
	// Complete again.
	ErrCompletionChannelFull = worker.ErrCompletionChannelFull
	// ErrExternalClosed is returned by the external channel while the engine
	// is not running: before Start, and from the moment Stop begins (events
	// still pending then were handed back to their steps).
	ErrExternalClosed = worker.ErrExternalClosed
	// ErrInvalidResult is returned by ExternalChannel.Complete for a success
	// whose Value is not valid JSON. The event stays pending.
	ErrInvalidResult = worker.ErrInvalidResult
)

// HandleExternal declares that steps whose handler.callable is callable run
// outside this Go process, in a program that takes them from External() and
// reports their outcome there. Like Handle, call it before Start; the last
// registration of a callable, Handle or HandleExternal, wins.
func (e *Engine) HandleExternal(callable string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.external == nil {
		e.external = map[string]bool{}
	}
	e.external[callable] = true
	delete(e.handlers, callable)
	e.claimHandledNamespaces()
}

// External returns the engine's external dispatch channel: the steps of
// callables registered with HandleExternal wait there for a poller. The
// handle stays valid across Stop and Start; while the engine is not
// running, Poll hands out nothing and the other calls return
// ErrExternalClosed (Stats returns zeros before the first Start).
func (e *Engine) External() *ExternalChannel { return &ExternalChannel{e: e} }

// ExternalChannel hands steps to handlers that run outside the Go process
// and takes back their outcomes, with the guarantees of Go handlers: every
// outcome goes through the same completion pipeline, domain events follow
// only once it is there, and nothing is lost at shutdown.
//
// Each pending step occupies one unit of Config.Concurrency until its
// result is in the pipeline, so a process never claims more steps than it
// is configured for; it holds no handler slot, so Go handlers keep running
// meanwhile. At most Config.ExternalCapacity steps are pending at once;
// further ones wait for room. A pending step that nobody completes within
// Config.ExternalCompletionTimeout (or its template's shorter
// timeout_seconds) fails as a retryable external_timeout. Its lease is kept
// alive while it waits; when the engine stops, pending steps are handed
// back and run again without using up an attempt.
type ExternalChannel struct{ e *Engine }

func (c *ExternalChannel) channel() *worker.External {
	c.e.mu.Lock()
	w := c.e.worker
	c.e.mu.Unlock()
	if w == nil {
		return nil
	}
	return w.External()
}

// ExternalEvent is one attempt of an external step, with everything its
// handler needs.
type ExternalEvent struct {
	// EventID identifies this attempt for Complete.
	EventID                                 string
	TaskUUID, StepUUID, StepName, Namespace string
	// TaskName and TaskVersion identify the task's template.
	TaskName, TaskVersion string
	// Callable and Method are the template's handler.callable and
	// handler.method.
	Callable, Method string
	// Attempt is 1 on the first run; MaxAttempts is retry.max_attempts.
	Attempt, MaxAttempts int
	// TaskContext is the task's JSON context.
	TaskContext json.RawMessage
	// HandlerInitialization is the template's handler.initialization.
	HandlerInitialization json.RawMessage
	// DependencyResults are the results of every ancestor of the step (its
	// direct and indirect dependencies), by step name.
	DependencyResults map[string]json.RawMessage
	// CreatedAt is when the step started waiting for a poller; past
	// Deadline it fails as external_timeout.
	CreatedAt, Deadline time.Time
}

// ExternalResult is the outcome of an external step's attempt.
type ExternalResult struct {
	// Success reports that the attempt succeeded; Value is then the step's
	// result as JSON (empty means null).
	Success bool
	Value   json.RawMessage
	// Message describes a failure. A failure is retried under the step's
	// retry policy, no sooner than RetryAfter if that is set, unless
	// Permanent.
	Message    string
	Permanent  bool
	RetryAfter time.Duration
}

// ExternalStats is a snapshot of the external channel.
type ExternalStats struct {
	// Capacity is Config.ExternalCapacity.
	Capacity int
	// Pending counts steps waiting for a poller; Polled those handed out
	// and not completed yet.
	Pending, Polled int
	// OldestPendingAge is the age of the oldest of them.
	OldestPendingAge time.Duration
	// Completions counts outcomes accepted by Complete.
	Completions uint64
	// Timeouts counts steps failed as external_timeout.
	Timeouts uint64
	// Starved counts steps that waited longer than
	// Config.ExternalStarvationThreshold (each counted, and logged, once).
	Starved uint64
	// Released counts steps handed back without an outcome: the engine
	// stopped, or the step's lease was lost.
	Released uint64
	// RefusedCompletes counts Complete calls that returned an error.
	RefusedCompletes uint64
}

// Poll hands out the oldest waiting step, each one once. It never blocks;
// it returns false when no step is waiting or the engine is not running.
func (c *ExternalChannel) Poll() (*ExternalEvent, bool) {
	x := c.channel()
	if x == nil {
		return nil, false
	}
	ev, ok := x.Poll()
	if !ok {
		return nil, false
	}
	return externalEvent(ev), true
}

// PollWait is Poll that waits up to timeout (without limit if timeout <= 0)
// for a step. It returns nil and no error when the timeout passes without
// one, ErrExternalClosed when the engine is not running or stops meanwhile,
// and context.Cause(ctx) when ctx ends first.
func (c *ExternalChannel) PollWait(ctx context.Context, timeout time.Duration) (*ExternalEvent, error) {
	x := c.channel()
	if x == nil {
		return nil, ErrExternalClosed
	}
	ev, err := x.PollWait(ctx, timeout)
	if ev == nil || err != nil {
		return nil, err
	}
	return externalEvent(ev), nil
}

// Complete reports the outcome of the event eventID. It returns once the
// outcome is in the worker's completion pipeline, waiting at most
// Config.ExternalCompletionSendTimeout for room there (else
// ErrCompletionChannelFull, and the event stays pending). The step's fast
// domain events are published afterwards, in the background: Complete never
// waits for them. Completing an event twice, or one that timed out or was
// withdrawn, is refused (ErrAlreadyCompleted, ErrEventTimedOut,
// ErrEventLeaseLost); so is an id never handed out (ErrUnknownEvent).
func (c *ExternalChannel) Complete(eventID string, r ExternalResult) error {
	x := c.channel()
	if x == nil {
		return fmt.Errorf("complete external event %s: %w", eventID, ErrExternalClosed)
	}
	return x.Complete(eventID, worker.ExternalResult{Success: r.Success, Value: r.Value, Message: r.Message,
		Permanent: r.Permanent, RetryAfter: r.RetryAfter})
}

// Stats returns the channel's counters. The external channel's slots are
// also listed by Engine.ChannelStats as "worker.external".
func (c *ExternalChannel) Stats() ExternalStats {
	x := c.channel()
	if x == nil {
		return ExternalStats{}
	}
	s := x.Stats()
	return ExternalStats{Capacity: s.Capacity, Pending: s.Pending, Polled: s.Polled,
		OldestPendingAge: s.OldestPendingAge, Completions: s.Completions, Timeouts: s.Timeouts,
		Starved: s.Starved, Released: s.Released, RefusedCompletes: s.RefusedCompletes}
}

func externalEvent(ev *worker.ExternalEvent) *ExternalEvent {
	return &ExternalEvent{EventID: ev.EventID, TaskUUID: ev.TaskUUID, StepUUID: ev.StepUUID, StepName: ev.StepName,
		Namespace: ev.Namespace, TaskName: ev.TaskName, TaskVersion: ev.TaskVersion, Callable: ev.Callable,
		Method: ev.Method, Attempt: ev.Attempt, MaxAttempts: ev.MaxAttempts, TaskContext: ev.TaskContext,
		HandlerInitialization: ev.HandlerInitialization, DependencyResults: ev.DependencyResults,
		CreatedAt: ev.CreatedAt, Deadline: ev.Deadline}
}

// prepareExternal prepares a claimed step of an external callable: its
// ancestors are all complete, so their results are read now, once, for the
// event.
func (e *Engine) prepareExternal(ctx context.Context, c *store.ClaimedStep, t *template.Template,
	def *template.Step) (worker.Prepared, error) {
	names := make([]string, 0, 8)
	for n := range e.ancestors(t, c.StepName) {
		names = append(names, n)
	}
	sort.Strings(names)
	results := map[string]json.RawMessage{}
	if len(names) > 0 {
		got, err := e.driver.Reader().StepResults(ctx, store.StepResultsParams{TaskUUID: c.TaskUUID, Names: names})
		if err != nil {
			return worker.Prepared{}, fmt.Errorf("read results of %v for step %q: %w", names, c.StepName, err)
		}
		results = got
	}
	return worker.Prepared{
		Timeout: time.Duration(def.TimeoutSeconds) * time.Second,
		External: &worker.ExternalStep{Method: def.Handler.Method, Initialization: def.Handler.Initialization,
			DependencyResults: results},
	}, nil
}

// externalConfig is the worker's view of the Config.External* fields.
func (c *Config) externalConfig() worker.ExternalConfig {
	return worker.ExternalConfig{Capacity: c.ExternalCapacity, CompletionTimeout: c.ExternalCompletionTimeout,
		StarvationThreshold: c.ExternalStarvationThreshold, SendTimeout: c.ExternalCompletionSendTimeout,
		CallbackTimeout: c.ExternalCallbackTimeout}
}

// validateExternal checks the Config.External* fields.
func (c *Config) validateExternal() []error {
	var errs []error
	for _, f := range []struct {
		name string
		bad  bool
		val  any
	}{
		{"ExternalCapacity", c.ExternalCapacity < 0, c.ExternalCapacity},
		{"ExternalCompletionTimeout", c.ExternalCompletionTimeout < 0, c.ExternalCompletionTimeout},
		{"ExternalStarvationThreshold", c.ExternalStarvationThreshold < 0, c.ExternalStarvationThreshold},
		{"ExternalCompletionSendTimeout", c.ExternalCompletionSendTimeout < 0, c.ExternalCompletionSendTimeout},
		{"ExternalCallbackTimeout", c.ExternalCallbackTimeout < 0, c.ExternalCallbackTimeout},
	} {
		if f.bad {
			errs = append(errs, fmt.Errorf("tasker: Config.%s must not be negative, got %v", f.name, f.val))
		}
	}
	return errs
}
