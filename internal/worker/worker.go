// Package worker runs step handlers: the dual-channel pipeline.
//
//	queue ─▶ claim loop ─▶ dispatch channel ─▶ dispatcher (semaphore, N permits)
//	      ─▶ handler (timeout, panic recovery) ─▶ release permit
//	      ─▶ completion channel  ← the result is committed to the pipeline here
//	      ─▶ only then: post-handler callback (domain events)
//	      ─▶ completion processor ─▶ one transaction per batch of results
//
// Steps whose handlers live outside the process go through the External
// channel (poll, complete), which feeds the same completion channel with
// the same ordering.
//
// Every claimed step produces exactly one result. A full completion channel
// blocks the goroutines that carry results, which keeps the claim loop from
// claiming more (nothing is dropped after a claim). Claimed steps carry a
// lease that a heartbeat extends until their result is written; a step
// whose worker dies is rescued by an orchestrator when its lease runs out.
package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"github.com/tasker-go/tasker/internal/chanmon"
	"github.com/tasker-go/tasker/store"
)

// HandlerFunc runs one attempt of a step. The resolver binds it to the
// step, so it takes only the attempt's context.
type HandlerFunc func(ctx context.Context) (any, error)

// Prepared is a step made ready to run.
type Prepared struct {
	Handler HandlerFunc
	// Timeout bounds the attempt; zero uses Config.DefaultTimeout.
	Timeout time.Duration
	// External, if set, hands the step to the external channel's pollers
	// instead of calling Handler.
	External *ExternalStep
}

// Resolver prepares a claimed step: finds its handler and builds what the
// handler reads. It returns a *HandlerNotFoundError when no handler is
// registered for the step's callable.
type Resolver func(ctx context.Context, step *store.ClaimedStep) (Prepared, error)

// Completer writes a batch of results in one transaction. The returned
// slice has, per completion, nil or the reason it was refused.
type Completer func(ctx context.Context, completions []store.StepCompletion) ([]error, error)

// ClaimingCompleter writes a batch of results and, in the same transaction,
// claims up to claim.Limit steps (claim.Limit may be 0). Handing the steps
// that a result made ready straight to this worker saves a transaction and
// a wake-up per step.
type ClaimingCompleter func(ctx context.Context, completions []store.StepCompletion,
	claim store.StepsClaimParams) ([]error, []store.ClaimedStep, error)

// Result is the outcome of one attempt.
type Result struct {
	Step     store.ClaimedStep
	Success  bool
	Value    json.RawMessage      // on success
	Error    *store.StepErrorInfo // on failure
	Started  time.Time
	Finished time.Time
}

// PostHandlerCallback runs after a result was accepted by the completion
// channel, never before and never for a result the channel refused.
// Its failures are its own: they never change the step's outcome.
type PostHandlerCallback interface {
	OnHandlerComplete(ctx context.Context, r *Result)
}

// Config configures a Worker. Zero values take the documented defaults.
type Config struct {
	// Owner identifies this worker in leases, history and logs.
	Owner string
	// Queues are the step queues to claim from (store.WorkerQueue(ns)).
	Queues []string
	// Concurrency is the number of handlers that run at once. Default 10.
	Concurrency int
	// CompletionBuffer is the completion channel's capacity. Default 100.
	CompletionBuffer int
	// Prefetch is the most steps that may be claimed beyond Concurrency;
	// they wait in the dispatch channel for a handler to free up, so that
	// handlers do not sit idle while the next claim is committed. Their
	// leases are heartbeated from the claim on; a stopping worker still
	// runs them. The depth used follows the handlers (see prefetchDepth):
	// min(Concurrency, Prefetch) while handlers take as long as a claim,
	// up to Prefetch when they are much faster. Default 0.
	Prefetch int
	// ClaimBatch caps how many steps one claim takes. Default
	// Concurrency + Prefetch.
	ClaimBatch int
	// LoadShedThreshold stops claiming while in-flight steps reach this
	// fraction of Concurrency + Prefetch. Default 1.0 (stop when every
	// permit and prefetch slot is spoken for). Claims also stop while the
	// completion channel is critically saturated.
	LoadShedThreshold float64
	// StepLease is how long a claim is valid without a heartbeat. Default 30s.
	StepLease time.Duration
	// HeartbeatInterval is how often leases are extended. Default StepLease/3.
	HeartbeatInterval time.Duration
	// DefaultTimeout bounds an attempt whose step sets no timeout_seconds.
	// Default 5m.
	DefaultTimeout time.Duration
	// PollInterval is how often the queue is checked without a wake-up
	// signal (work enqueued by other processes). Default 500ms.
	PollInterval time.Duration
	// CompletionBatch caps the results written in one transaction. Default 256.
	CompletionBatch int
	// CompletionLinger is how long the completion processor may hold a
	// batch for a result still to come from a handler running in this
	// worker for the same task as a result in the batch, so that sibling
	// steps finishing together (the branches of a diamond) are processed
	// in one transaction and their join is enqueued once. It never waits
	// for results of other tasks. Default 2ms; negative disables it.
	CompletionLinger time.Duration
	// Logger receives structured logs. Default slog.Default().
	Logger *slog.Logger
	// Monitors, if set, receives the worker's channel monitors.
	Monitors *chanmon.Registry
	// CompleteAndClaim, if set, is used instead of the Completer so that a
	// batch of results and the claim of follow-on steps share a transaction.
	CompleteAndClaim ClaimingCompleter
	// Fallback, if set, records a result that the Completer keeps failing
	// to process (not for unavailability) without processing it, so that
	// it reaches the orchestrators' result queue.
	Fallback Completer
	// External configures the external dispatch channel.
	External ExternalConfig
}

func (c *Config) setDefaults() {
	if c.Owner == "" {
		c.Owner = "worker-" + uuid.NewString()[:8]
	}
	if c.Concurrency <= 0 {
		c.Concurrency = 10
	}
	if c.CompletionBuffer <= 0 {
		c.CompletionBuffer = 100
	}
	if c.Prefetch < 0 {
		c.Prefetch = 0
	}
	if c.ClaimBatch <= 0 {
		c.ClaimBatch = c.Concurrency + c.Prefetch
	}
	if c.LoadShedThreshold <= 0 || c.LoadShedThreshold > 1 {
		c.LoadShedThreshold = 1
	}
	if c.StepLease <= 0 {
		c.StepLease = 30 * time.Second
	}
	if c.HeartbeatInterval <= 0 {
		c.HeartbeatInterval = c.StepLease / 3
	}
	if c.DefaultTimeout <= 0 {
		c.DefaultTimeout = 5 * time.Minute
	}
	if c.PollInterval <= 0 {
		c.PollInterval = 500 * time.Millisecond
	}
	if c.CompletionLinger == 0 {
		c.CompletionLinger = 2 * time.Millisecond
	}
	if c.CompletionBatch <= 0 {
		c.CompletionBatch = 256
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	c.External.setDefaults()
}

// lease is a claimed step's hold on its message. Leases are kept by token,
// which is unique, rather than by message ID: a store may give a new
// message the ID of one just deleted (SQLite reuses the largest rowid),
// and the completion that deletes a step's message can claim, in the same
// transaction, its successor under that very ID.
type lease struct {
	id     int64                   // the message
	cancel context.CancelCauseFunc // cancels the running handler, if any
}

// Worker claims and runs steps.
type Worker struct {
	d        store.Driver
	resolve  Resolver
	complete Completer
	callback PostHandlerCallback
	cfg      Config
	log      *slog.Logger

	dispatch   *chanmon.Chan[*store.ClaimedStep]
	completion *chanmon.Chan[*Result]
	external   *External
	sem        chan struct{}
	wake       chan struct{}

	// inFlight counts steps claimed (or reserved for a claim) whose result
	// has not yet entered the completion channel.
	inFlight atomic.Int64
	// shed records that a claim was skipped because the completion channel
	// was critically full, so that the completion processor wakes the claim
	// loop once it has written a batch.
	shed atomic.Bool
	// wanted records a wake-up that no claim has answered yet. A claim
	// loop woken while another component's claim holds the free capacity
	// (a Handoff between its reserve and its giveBack) finds none and
	// sleeps; the giveBack of the unused reservation then wakes it again,
	// instead of leaving the steps to PollInterval.
	wanted atomic.Bool
	// claimTime and handlerTime average the claim loop's claim
	// transactions and handler runs; they set the prefetch depth, which
	// the claim loop refreshes before each claim (see refreshDepth).
	claimTime, handlerTime durationAvg
	depth                  atomic.Int64

	// handoffMu orders claims made in other components' transactions (the
	// completion processor's, CreateTask's; read-locked, so they may run
	// at once) against Stop closing the dispatch channel.
	handoffMu sync.RWMutex
	stopping  bool

	queueMu sync.Mutex
	queues  []string

	// running counts, per task, the steps claimed by this worker whose
	// result has not yet entered the completion channel (see
	// CompletionLinger).
	runningMu sync.Mutex
	running   map[string]int

	leaseMu sync.Mutex
	leases  map[string]*lease // by lease token

	life        sync.Mutex
	started     bool
	stopped     bool
	baseCancel  context.CancelCauseFunc
	claimCancel context.CancelCauseFunc
	// claimCtx ends the claim loop (Stop cancels it first); claimAbort
	// ends a claim already under way, which Stop does through
	// claimAbortNow only once its budget is spent (see claimOnce).
	// claimCut records that it did so to a claim in flight.
	claimCtx      context.Context
	claimAbort    context.Context
	claimAbortNow context.CancelCauseFunc
	claimCut      atomic.Bool
	hCtx          context.Context
	hCancel       context.CancelCauseFunc
	handlers      sync.WaitGroup
	claimDone     chan struct{}
	dispDone      chan struct{}
	compDone      chan struct{}
	beatDone      chan struct{}
}

// New returns a worker. callback may be nil.
func New(d store.Driver, resolve Resolver, complete Completer, callback PostHandlerCallback, cfg Config) *Worker {
	cfg.setDefaults()
	w := &Worker{
		d: d, resolve: resolve, complete: complete, callback: callback, cfg: cfg, log: cfg.Logger,
		dispatch:   chanmon.New[*store.ClaimedStep]("worker.dispatch", cfg.Concurrency+cfg.Prefetch),
		completion: chanmon.New[*Result]("worker.completion", cfg.CompletionBuffer),
		sem:        make(chan struct{}, cfg.Concurrency),
		wake:       make(chan struct{}, 1),
		leases:     map[string]*lease{},
		queues:     append([]string(nil), cfg.Queues...),
	}
	w.depth.Store(int64(min(cfg.Concurrency, cfg.Prefetch)))
	w.external = newExternal(w, cfg.External)
	if cfg.Monitors != nil {
		// A restarted engine builds a new worker: its channels replace the
		// previous worker's under the same names.
		for _, m := range []chanmon.Monitor{w.dispatch, w.completion, w.external.slots} {
			cfg.Monitors.Unregister(m.Name())
			_ = cfg.Monitors.Register(m)
		}
	}
	return w
}

// AddQueues adds step queues to claim from.
func (w *Worker) AddQueues(queues ...string) {
	w.queueMu.Lock()
	defer w.queueMu.Unlock()
next:
	for _, q := range queues {
		for _, have := range w.queues {
			if have == q {
				continue next
			}
		}
		w.queues = append(w.queues, q)
	}
	w.Wake()
}

// Wake tells the claim loop that steps may be waiting.
func (w *Worker) Wake() {
	w.wanted.Store(true)
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// CompletionStats returns the completion channel's monitor.
func (w *Worker) CompletionStats() chanmon.Stats { return w.completion.Stats() }

// DispatchStats returns the dispatch channel's monitor.
func (w *Worker) DispatchStats() chanmon.Stats { return w.dispatch.Stats() }

// InFlight is the number of claimed steps whose result has not yet entered
// the completion channel.
func (w *Worker) InFlight() int { return int(w.inFlight.Load()) }

// Start launches the pipeline. A second Start is a no-op; Start after Stop
// is an error.
func (w *Worker) Start(ctx context.Context) error {
	w.life.Lock()
	defer w.life.Unlock()
	if w.stopped {
		return errors.New("worker: start after stop")
	}
	if w.started {
		return nil
	}
	w.started = true
	// Only Stop ends the pipeline: ctx may be a start-up context that ends
	// long before the worker should.
	base, baseCancel := context.WithCancelCause(context.WithoutCancel(ctx))
	claimCtx, claimCancel := context.WithCancelCause(base)
	w.baseCancel, w.claimCtx, w.claimCancel = baseCancel, claimCtx, claimCancel
	w.claimAbort, w.claimAbortNow = context.WithCancelCause(base)
	w.hCtx, w.hCancel = context.WithCancelCause(base)
	w.claimDone, w.dispDone = make(chan struct{}), make(chan struct{})
	w.compDone, w.beatDone = make(chan struct{}), make(chan struct{})
	go w.runClaims(claimCtx)
	go w.runDispatcher()
	go w.runCompletions(base)
	go w.runHeartbeats(base)
	w.external.start(base)
	return nil
}

// Stop drains the pipeline: it stops claiming (a claim already under way
// finishes and its steps run), lets handlers in flight finish within ctx's
// budget, writes every result that reached the completion channel, then
// returns. Handlers still running when the budget ends are cancelled, and a
// claim still under way is cut off; their steps are released to lease
// expiry, never lost, and the attempt they were on counts as failed.
func (w *Worker) Stop(ctx context.Context) error {
	w.life.Lock()
	if !w.started || w.stopped {
		w.stopped = true
		w.life.Unlock()
		return nil
	}
	w.stopped = true
	w.life.Unlock()

	// The claim loop starts no new claim; one in flight finishes, and its
	// steps run in the drain, unless the budget runs out first.
	var budgetErr error
	w.claimCancel(ErrStopping)
	select {
	case <-w.claimDone:
	case <-ctx.Done():
		w.claimAbortNow(ErrStopping)
		<-w.claimDone
		if w.claimCut.Load() {
			budgetErr = fmt.Errorf("stop worker: drain budget exhausted during a claim: %w", context.Cause(ctx))
		}
	}
	w.handoffMu.Lock()
	w.stopping = true
	w.handoffMu.Unlock()
	w.dispatch.Close()
	// Pending external events go back to their steps while the completion
	// channel is still open; the drain budget below covers it.
	w.handlers.Add(1)
	go func() {
		defer w.handlers.Done()
		w.external.close()
	}()

	// The budget covers the prefetched steps still waiting for a permit
	// too: the dispatcher hands them on as handlers finish, and once the
	// budget is spent they are given back unrun (see runHandler).
	handlersDone := make(chan struct{})
	go func() {
		<-w.dispDone // every handlers.Add of the dispatcher happened before this
		w.handlers.Wait()
		close(handlersDone)
	}()
	select {
	case <-handlersDone:
	case <-ctx.Done():
		if budgetErr == nil {
			budgetErr = fmt.Errorf("stop worker: drain budget exhausted with %d steps in flight: %w", w.InFlight(), context.Cause(ctx))
		}
		w.hCancel(ErrStopping)
		select {
		case <-handlersDone:
		case <-time.After(time.Second):
			w.log.Warn("handlers ignored cancellation; their steps return through lease expiry", "in_flight", w.InFlight())
		}
	}
	w.completion.Close()
	select {
	case <-w.compDone:
	case <-ctx.Done():
		if budgetErr == nil {
			budgetErr = fmt.Errorf("stop worker: writing results: %w", context.Cause(ctx))
		}
		select {
		case <-w.compDone:
		case <-time.After(5 * time.Second):
		}
	}
	w.baseCancel(ErrStopping)
	<-w.beatDone
	return budgetErr
}

func (w *Worker) runClaims(ctx context.Context) {
	defer close(w.claimDone)
	tick := time.NewTicker(w.cfg.PollInterval)
	defer tick.Stop()
	backoff := 10 * time.Millisecond
	for {
		n, full, err := w.claimOnce(ctx)
		if err != nil && ctx.Err() == nil {
			w.log.Error("claim steps", "error", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 2*time.Second)
			continue
		}
		backoff = 10 * time.Millisecond
		if n > 0 && full {
			continue // there may be more
		}
		select {
		case <-ctx.Done():
			return
		case <-w.wake:
		case <-tick.C:
		}
	}
}

// reserve takes up to ClaimBatch slots of claim capacity and returns how
// many it took. Claims stop while in-flight steps reach the load-shedding
// limit or the completion channel is critically saturated. Two claimers
// (the claim loop and the completion processor) never overshoot together.
func (w *Worker) reserve() int {
	if w.completion.Stats().Level == chanmon.Critical {
		w.shed.Store(true)
		return 0
	}
	limit := w.claimLimit()
	for {
		cur := w.inFlight.Load()
		n := min(limit-cur, int64(w.cfg.ClaimBatch))
		if n <= 0 {
			return 0
		}
		if w.inFlight.CompareAndSwap(cur, cur+n) {
			return int(n)
		}
	}
}

// claimLimit is how many steps may be in flight before claims stop.
func (w *Worker) claimLimit() int64 {
	return max(int64(float64(int64(w.cfg.Concurrency)+w.depth.Load())*w.cfg.LoadShedThreshold), 1)
}

// giveBack returns n units of claim capacity: a step's that settled, or
// the part of a claim's reservation it did not use (unused). A step that
// settles and takes the in-flight count down to the low-water mark wakes
// the claim loop. An unused reservation given back does not by itself:
// waking the loop for those (the completion processor's, after almost
// every batch) made it claim a few steps at a time beside the processor's
// own claims, and a 10,000-step fan-out twice as slow. It does while a
// wake-up is still wanted (see Worker.wanted): the loop was woken while
// this reservation held the capacity, found none, and went back to sleep.
// A loop that found the capacity taken by running steps is woken by their
// settling, at the low-water mark.
func (w *Worker) giveBack(n int64, unused bool) {
	if n <= 0 {
		return
	}
	low := w.claimLowWater()
	if v := w.inFlight.Add(-n); (n == 1 && v == low) || (unused && w.wanted.Load()) {
		w.Wake()
	}
}

// claimLowWater is the in-flight count at which freed capacity wakes the
// claim loop: one below the limit without prefetch; with it, once half the
// prefetched steps have started, so that claims come in batches while
// steps are still waiting for a handler.
func (w *Worker) claimLowWater() int64 {
	return max(w.claimLimit()-max(w.depth.Load()/2, 1), 0)
}

func (w *Worker) claimParams(limit int) store.StepsClaimParams {
	w.queueMu.Lock()
	queues := append([]string(nil), w.queues...)
	w.queueMu.Unlock()
	if len(queues) == 0 {
		limit = 0
	}
	// No Now: the store stamps the lease when the claim runs, not before a
	// wait for the (SQLite) writer; an orchestrator's claimFor sets its own.
	return store.StepsClaimParams{Queues: queues, Limit: limit, Lease: w.cfg.StepLease, Owner: w.cfg.Owner}
}

// claimOnce claims up to the free capacity and reports how many steps it
// got and whether that filled the request (more may be waiting).
func (w *Worker) claimOnce(ctx context.Context) (int, bool, error) {
	if ctx.Err() != nil {
		return 0, false, nil // stopping: no new claim
	}
	w.refreshDepth()
	n := w.reserve()
	if n == 0 {
		return 0, false, nil // a wake-up stays wanted until a claim runs
	}
	// This claim answers every wake-up so far; one that comes while it
	// runs may announce steps it does not see, and is wanted again.
	w.wanted.Store(false)
	p := w.claimParams(n)
	if p.Limit == 0 {
		w.giveBack(int64(n), true)
		return 0, false, nil
	}
	began := time.Now()
	// Stop cancelling ctx ends the claim until it is sent, and nothing is
	// claimed; then only Stop's budget running out (claimAbort) cuts it
	// off (see store.InTxClaimDetached). Stop waits for this loop before
	// it closes the dispatch channel, so the steps of a claim that
	// finishes run in the drain.
	claimed, err := store.InTxClaimDetached(ctx, w.claimAbort, w.d, func(store.Tx) (store.StepsClaimParams, error) {
		return p, nil
	})
	if err != nil {
		w.giveBack(int64(n), true)
		if w.claimAbort.Err() != nil {
			w.claimCut.Store(true)
			w.log.Warn("claim cut off by the end of the stop budget; steps it may have committed return after their lease",
				"error", err)
		}
		return 0, false, err
	}
	w.claimTime.observe(time.Since(began))
	w.accept(ctx, claimed, n)
	return len(claimed), len(claimed) == n, nil
}

// accept hands claimed steps to the dispatcher and returns the unused part
// of a reservation of reserved slots.
func (w *Worker) accept(ctx context.Context, claimed []store.ClaimedStep, reserved int) {
	w.giveBack(int64(reserved-len(claimed)), true)
	// Every claimed step counts as running before any is dispatched: a
	// step dispatched first may finish before the next one is handed on,
	// and the completion processor must see its sibling as running.
	for i := range claimed {
		w.taskRunning(claimed[i].TaskUUID, 1)
	}
	for i := range claimed {
		c := &claimed[i]
		w.leaseMu.Lock()
		w.leases[c.Message.LeaseToken] = &lease{id: c.Message.ID}
		w.leaseMu.Unlock()
		// The claim took no more than the free capacity, so this send does
		// not wait in practice; if it ever does, it is backpressure.
		if err := w.dispatch.Send(context.WithoutCancel(ctx), c); err != nil {
			w.taskRunning(c.TaskUUID, -1)
			w.log.Error("dispatch claimed step", "step_uuid", c.StepUUID, "error", err)
		}
	}
}

func (w *Worker) runDispatcher() {
	defer close(w.dispDone)
	for c := range w.dispatch.Recv() {
		w.sem <- struct{}{} // acquire a permit; blocks while all handlers are busy
		w.handlers.Add(1)
		go w.execute(c)
	}
}

// execute runs one claimed step and hands its result to the completion
// channel, then to the callback.
func (w *Worker) execute(c *store.ClaimedStep) {
	defer w.handlers.Done()
	// The step stops counting against claim capacity once its result is in
	// the completion channel AND its handler gave back its permit. The two
	// usually happen in that order, but a handler that ignores a timeout
	// keeps its permit after its result was sent.
	var left atomic.Int32
	left.Store(2)
	settle := func() {
		if left.Add(-1) == 0 {
			// Freed capacity matters only to a claim loop that found none:
			// wake it when the count drops to the low-water mark. Waking it
			// on every step would cost a claim of one step each time.
			w.giveBack(1, false)
		}
	}
	res := w.runHandler(c, settle) // normally releases the permit before returning
	if res == nil {
		w.taskRunning(c.TaskUUID, -1)
		return // an external step: the external channel sends its result and settles it
	}
	if res.Finished.After(res.Started) {
		w.handlerTime.observe(res.Finished.Sub(res.Started))
	}
	sent := w.completion.Send(w.hCtxForSend(), res)
	// Counted down only once the result is in the channel, so that the
	// completion processor, seeing no running sibling, knows that every
	// sibling result is already there.
	w.taskRunning(c.TaskUUID, -1)
	settle()
	if sent != nil {
		// The channel closed (shutdown past budget): the result is not
		// written, so no event may be published; the lease returns the step.
		w.log.Warn("result not accepted by completion channel; step returns via lease expiry",
			"task_uuid", c.TaskUUID, "step_uuid", c.StepUUID, "error", sent)
		return
	}
	if w.callback != nil {
		w.runCallback(context.WithoutCancel(w.hCtx), res)
	}
}

// runCallback runs the post-handler callback. The result is already in the
// pipeline, so a panic in the callback is logged and the step's outcome
// stands; it must not take the process down with it.
func (w *Worker) runCallback(ctx context.Context, res *Result) {
	defer func() {
		if p := recover(); p != nil {
			w.log.Error("post-handler callback panicked; the step's result stands",
				"task_uuid", res.Step.TaskUUID, "step_uuid", res.Step.StepUUID, "panic", p)
		}
	}()
	w.callback.OnHandlerComplete(ctx, res)
}

// hCtxForSend is the context for a completion send: never cancelled by the
// drain budget, because a result that exists must wait for room rather than
// be dropped; only closing the channel refuses it.
func (w *Worker) hCtxForSend() context.Context { return context.WithoutCancel(w.hCtx) }

// runHandler runs the step's handler and returns its result; released is
// called when the handler's permit is given back. An external step gives
// its permit back at once and is handed to the external channel; runHandler
// then returns nil unless the channel closed first.
func (w *Worker) runHandler(c *store.ClaimedStep, released func()) *Result {
	res := &Result{Step: *c, Started: time.Now()}
	release := func() {
		<-w.sem
		released()
	}
	fail := func(info *store.StepErrorInfo) *Result {
		info.Attempt = c.Attempt
		res.Error, res.Finished = info, time.Now()
		return res
	}
	// A step that waited for a permit (prefetched) may have been given up
	// meanwhile: Stop ran out of its budget, or a heartbeat found its lease
	// lost, and another worker may hold it now. Its handler does not run.
	if cause := context.Cause(w.hCtx); cause != nil {
		release()
		return fail(classify(fmt.Errorf("%w before the step started", cause), cause))
	}
	w.leaseMu.Lock()
	_, held := w.leases[c.Message.LeaseToken]
	w.leaseMu.Unlock()
	if !held {
		release()
		return fail(classify(fmt.Errorf("%w before the step started", errLeaseLost), errLeaseLost))
	}
	prep, err := w.resolve(w.hCtx, c)
	if err != nil {
		release()
		info := classify(err, nil)
		var nf *HandlerNotFoundError
		if !errors.As(err, &nf) {
			info = &store.StepErrorInfo{Type: store.ErrorTypeHandler, Retryable: true, Message: "prepare step: " + err.Error()}
		}
		return fail(info)
	}
	if prep.External != nil {
		release()
		return w.external.hold(c, prep, released)
	}
	timeout := prep.Timeout
	if timeout <= 0 {
		timeout = w.cfg.DefaultTimeout
	}
	ctx, cancel := context.WithCancelCause(w.hCtx)
	ctx, cancelTimeout := context.WithTimeoutCause(ctx, timeout, errStepTimeout)
	w.leaseMu.Lock()
	if l, ok := w.leases[c.Message.LeaseToken]; ok {
		l.cancel = cancel
	}
	w.leaseMu.Unlock()

	type outcome struct {
		v   any
		err error
		pan *store.StepErrorInfo
	}
	done := make(chan outcome, 1)
	go func() {
		defer func() {
			if p := recover(); p != nil {
				done <- outcome{pan: &store.StepErrorInfo{Type: store.ErrorTypePanic,
					Message: fmt.Sprintf("handler panicked: %v\n%s", p, truncate(debug.Stack(), 2048))}}
			}
		}()
		v, err := prep.Handler(ctx)
		done <- outcome{v: v, err: err}
	}()
	var out outcome
	select {
	case out = <-done:
	case <-ctx.Done():
		cause := context.Cause(ctx)
		if errors.Is(cause, ErrStopping) {
			// Shutdown past the drain budget. A result made up now would be
			// written while the handler still runs, and the step retried
			// beside it. Wait for the handler instead: if it returns only
			// after Stop closed the completion channel, its result is
			// refused and the step comes back through lease expiry.
			out = <-done
			break
		}
		// Timed out, or the lease was lost. The handler keeps its permit
		// until it actually returns, so a handler that ignores
		// cancellation still counts against concurrency.
		go func() {
			<-done
			release()
			cancelTimeout()
			cancel(nil)
		}()
		return fail(classify(fmt.Errorf("%w after %s", cause, time.Since(res.Started).Round(time.Millisecond)), cause))
	}
	release()
	cancelTimeout()
	cancel(nil)
	switch {
	case out.pan != nil:
		return fail(out.pan)
	case out.err != nil:
		return fail(classify(out.err, context.Cause(ctx)))
	}
	b, err := json.Marshal(out.v)
	if err != nil {
		return fail(&store.StepErrorInfo{Type: store.ErrorTypeUnserializable,
			Message: fmt.Sprintf("handler result cannot be marshalled to JSON: %v", err)})
	}
	res.Success, res.Value, res.Finished = true, b, time.Now()
	return res
}

func (w *Worker) runCompletions(ctx context.Context) {
	defer close(w.compDone)
	batch := make([]*Result, 0, w.cfg.CompletionBatch)
	for {
		first, ok := <-w.completion.Recv()
		if !ok {
			return
		}
		batch, _ = w.drain(append(batch[:0], first))
		batch = w.linger(batch)
		w.writeResults(ctx, batch)
	}
}

// taskRunning adds d to the count of running handlers of a task.
func (w *Worker) taskRunning(task string, d int) {
	w.runningMu.Lock()
	defer w.runningMu.Unlock()
	if w.running == nil {
		w.running = map[string]int{}
	}
	if n := w.running[task] + d; n > 0 {
		w.running[task] = n
	} else {
		delete(w.running, task)
	}
}

// siblingsRunning reports whether a handler is still running for a task
// that has a result in batch.
func (w *Worker) siblingsRunning(batch []*Result) bool {
	w.runningMu.Lock()
	defer w.runningMu.Unlock()
	for _, r := range batch {
		if w.running[r.Step.TaskUUID] > 0 {
			return true
		}
	}
	return false
}

// drain adds to batch the results already waiting in the completion
// channel, up to CompletionBatch, without waiting; open is false once the
// channel is closed.
func (w *Worker) drain(batch []*Result) (_ []*Result, open bool) {
	for len(batch) < w.cfg.CompletionBatch {
		select {
		case r, ok := <-w.completion.Recv():
			if !ok {
				return batch, false
			}
			batch = append(batch, r)
		default:
			return batch, true
		}
	}
	return batch, true
}

// linger extends batch with results that arrive within CompletionLinger
// while a handler of one of its tasks is still running here.
func (w *Worker) linger(batch []*Result) []*Result {
	if w.cfg.CompletionLinger <= 0 {
		return batch
	}
	var timeout <-chan time.Time
	for len(batch) < w.cfg.CompletionBatch {
		// Looked at before draining: a sibling counted down has already
		// put its result in the channel, so the drain below finds it.
		running := w.siblingsRunning(batch)
		var open bool
		if batch, open = w.drain(batch); !open {
			return batch
		}
		if !running || len(batch) >= w.cfg.CompletionBatch {
			return batch
		}
		if timeout == nil {
			timer := time.NewTimer(w.cfg.CompletionLinger)
			defer timer.Stop()
			timeout = timer.C
		}
		select {
		case r, ok := <-w.completion.Recv():
			if !ok {
				return batch
			}
			batch = append(batch, r)
		case <-timeout:
			return batch
		}
	}
	return batch
}

// writeResults writes a batch, retrying while the database is unavailable:
// a result that reached the completion channel is never dropped by the
// worker. If the process stops before it is written, the lease expires and
// the step is rescued.
func (w *Worker) writeResults(ctx context.Context, batch []*Result) {
	comps := make([]store.StepCompletion, len(batch))
	for i, r := range batch {
		info := map[string]any{"worker": w.cfg.Owner, "duration_ms": r.Finished.Sub(r.Started).Milliseconds()}
		if !r.Success {
			info["error"] = r.Error // kept in history even after a later attempt succeeds
		}
		md, _ := json.Marshal(info)
		comps[i] = store.StepCompletion{MessageID: r.Step.Message.ID, LeaseToken: r.Step.Message.LeaseToken,
			TaskUUID: r.Step.TaskUUID, StepUUID: r.Step.StepUUID, Attempt: r.Step.Attempt, Success: r.Success,
			Result: r.Value, Metadata: md}
		if !r.Success {
			comps[i].Error, _ = json.Marshal(r.Error)
		}
	}
	w.writeWithRetry(ctx, comps, w.writeBatch)
	if w.shed.Swap(false) {
		w.Wake()
	}
	w.leaseMu.Lock()
	for _, c := range comps {
		delete(w.leases, c.LeaseToken)
	}
	w.leaseMu.Unlock()
}

func (w *Worker) runHeartbeats(ctx context.Context) {
	defer close(w.beatDone)
	tick := time.NewTicker(w.cfg.HeartbeatInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		w.heartbeat(ctx)
	}
}

// heartbeat extends every lease this worker holds in one transaction. A
// lease found lost cancels its handler: its result would be refused.
func (w *Worker) heartbeat(ctx context.Context) {
	w.leaseMu.Lock()
	ids := make(map[string]int64, len(w.leases))
	for token, l := range w.leases {
		ids[token] = l.id
	}
	w.leaseMu.Unlock()
	if len(ids) == 0 {
		return
	}
	var lost []string
	err := store.InTx(ctx, w.d, func(tx store.Tx) error {
		lost = lost[:0]
		now := time.Now()
		for token, id := range ids {
			err := tx.QueueExtend(ctx, store.QueueExtendParams{ID: id, Token: token, Lease: w.cfg.StepLease, Now: now})
			if errors.Is(err, store.ErrLeaseLost) {
				lost = append(lost, token)
				continue
			}
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		if ctx.Err() == nil {
			w.log.Error("extend step leases", "error", err)
		}
		return
	}
	w.leaseMu.Lock()
	for _, token := range lost {
		if l, ok := w.leases[token]; ok {
			// A lease can be "lost" because its result was just written and
			// the message deleted; only a still-running handler is told.
			if l.cancel != nil {
				l.cancel(errLeaseLost)
			}
			delete(w.leases, token)
		}
	}
	w.leaseMu.Unlock()
}

// writeBatch writes one batch of results. With a claiming completer and free
// capacity it also claims follow-on steps in the same transaction and
// dispatches them.
func (w *Worker) writeBatch(ctx context.Context, comps []store.StepCompletion) ([]error, error) {
	if w.cfg.CompleteAndClaim == nil {
		return w.complete(ctx, comps)
	}
	var refused []error
	err := w.Handoff(ctx, func(p store.StepsClaimParams) ([]store.ClaimedStep, error) {
		var claimed []store.ClaimedStep
		var err error
		refused, claimed, err = w.cfg.CompleteAndClaim(ctx, comps, p)
		return claimed, err
	})
	return refused, err
}

// Handoff lets another component's transaction claim steps for this
// worker: claim gets the worker's claim parameters, limited to its free
// capacity (Limit 0 when it has none or is stopping), must commit the
// claim before it returns, and returns the steps claimed, which the worker
// then runs. If claim fails, the capacity reserved for it is given back.
func (w *Worker) Handoff(ctx context.Context, claim func(store.StepsClaimParams) ([]store.ClaimedStep, error)) error {
	w.handoffMu.RLock()
	defer w.handoffMu.RUnlock()
	n := 0
	if !w.stopping {
		n = w.reserve()
	}
	claimed, err := claim(w.claimParams(n))
	if err != nil {
		w.giveBack(int64(n), true)
		return err
	}
	w.accept(ctx, claimed, n)
	return nil
}

// truncate bounds a stack trace kept in a step's error.
func truncate(b []byte, n int) string {
	if len(b) <= n {
		return string(b)
	}
	return string(b[:n]) + "\n…(truncated)"
}

// writeWithRetry writes a batch of results with write. While the database
// is unavailable it retries with backoff, so a result that reached the
// completion channel is not dropped. Any other failure is specific to some
// result (say, a task whose template no longer parses), so the batch is
// split and each result written alone; a single result that still fails is
// handed to Config.Fallback (record it without processing, for the
// orchestrators' result queue), so one bad task never holds up the others.
// If even that fails, the result is given up to lease expiry and rescue.
func (w *Worker) writeWithRetry(ctx context.Context, comps []store.StepCompletion, write Completer) {
	delay := 10 * time.Millisecond
	usedFallback := false
	for {
		refused, err := write(ctx, comps)
		if err == nil {
			for i, rerr := range refused {
				if rerr != nil {
					w.log.Warn("step result refused", "task_uuid", comps[i].TaskUUID, "step_uuid", comps[i].StepUUID,
						"attempt", comps[i].Attempt, "error", rerr)
				}
			}
			return
		}
		if ctx.Err() != nil {
			w.log.Error("results not written before shutdown; steps return via lease expiry", "count", len(comps), "error", err)
			return
		}
		if !errors.Is(err, store.ErrUnavailable) {
			switch {
			case len(comps) > 1:
				for i := range comps {
					w.writeWithRetry(ctx, comps[i:i+1], w.complete)
				}
				return
			case w.cfg.Fallback != nil && !usedFallback:
				w.log.Error("process step result; handing it to the result queue", "task_uuid", comps[0].TaskUUID,
					"step_uuid", comps[0].StepUUID, "error", err)
				write, usedFallback = w.cfg.Fallback, true
				continue
			default:
				w.log.Error("step result cannot be written; the step returns via lease expiry", "task_uuid",
					comps[0].TaskUUID, "step_uuid", comps[0].StepUUID, "error", err)
				return
			}
		}
		w.log.Error("write step results; retrying", "count", len(comps), "error", err, "retry_in", delay)
		select {
		case <-ctx.Done():
		case <-time.After(delay):
		}
		delay = min(delay*2, 2*time.Second)
	}
}
