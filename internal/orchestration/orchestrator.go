// Package orchestration moves tasks through their lifecycle: it creates
// tasks, decides which steps are ready and enqueues them, processes step
// results (complete, retry with backoff, fail), finalizes tasks, rescues
// steps whose worker died, and applies operators' manual step actions.
//
// Every decision is made inside a store transaction that holds the task's
// row lock, so any number of orchestrators may run against one database.
package orchestration

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/tasker-go/tasker/internal/chanmon"
	"github.com/tasker-go/tasker/internal/events"
	"github.com/tasker-go/tasker/state"
	"github.com/tasker-go/tasker/store"
	"github.com/tasker-go/tasker/template"
)

// Errors callers tell apart.
var (
	ErrDuplicateTask          = errors.New("a task with the same identity already exists")
	ErrInvalidContext         = template.ErrInvalidContext
	ErrIdempotencyKeyRequired = errors.New("template uses identity_strategy caller_provided: an idempotency key is required")
	ErrTaskNotFound           = errors.New("task not found")
	ErrStepNotFound           = errors.New("step not found")
	ErrTaskFinished           = errors.New("task is already finished")
)

// Notifier is told about committed changes, so that in-process consumers
// can react without polling. Calls must not block.
type Notifier interface {
	// StepsEnqueued says that steps of these namespaces became claimable.
	StepsEnqueued(namespaces []string)
	// TaskChanged says that a task moved to a new state. snap, when not
	// nil, is the task as the transaction that settled it committed it.
	TaskChanged(taskUUID string, st state.TaskState, snap *TaskSnapshot)
}

// TaskSnapshot is a task as a committed transaction left it: its row and
// the readiness summary over all of its steps. An orchestrator hands one
// out when it settles a task whose steps it had all in hand, so that a
// caller waiting for the task need not read it back.
type TaskSnapshot struct {
	Row     store.TaskRow
	Summary Summary
}

// Config configures an Orchestrator. Zero values take the documented
// defaults.
type Config struct {
	// Owner identifies this orchestrator in leases and logs.
	Owner string
	// Logger receives structured logs. Default slog.Default().
	Logger *slog.Logger
	// JitterFraction spreads retry delays by up to ±this fraction.
	// Default 0.1; negative disables jitter.
	JitterFraction float64
	// PollInterval is how often the result queue, due retries and expired
	// leases are checked when nothing signals them. Default 1s.
	PollInterval time.Duration
	// ResultPollInterval, if set, replaces PollInterval for the result
	// queue alone, so that a process that is told about queued results
	// (LISTEN/NOTIFY) can poll for them rarely and still sweep as often.
	ResultPollInterval time.Duration
	// ResultLease is how long a claimed orchestration message stays
	// invisible to other orchestrators. Default 30s.
	ResultLease time.Duration
	// ResultBatch is how many queued results one transaction processes.
	// Default 64.
	ResultBatch int
	// Now returns the current time. Default time.Now.
	Now func() time.Time
	// Monitors, if set, receives the orchestrator's channel monitors.
	Monitors *chanmon.Registry
	// Events, if set, writes the durable domain events of step outcomes.
	Events EventSink

	// StalenessInterval is how often the staleness sweeper looks for stuck
	// tasks. Default 1m; negative disables the sweeper.
	StalenessInterval time.Duration
	// MaxTaskDuration is how long a task may exist before it is stale,
	// unless its template's lifecycle.max_duration_minutes says otherwise.
	// Default 24h; negative disables the default limit.
	MaxTaskDuration time.Duration
	// MaxStepsInProcess, MaxWaitingForDependencies and MaxWaitingForRetry
	// bound how long a task may stay in that state without progress (no
	// change of the task or any of its steps), unless its template's
	// lifecycle sets the limit. Default 1h each; negative disables.
	MaxStepsInProcess         time.Duration
	MaxWaitingForDependencies time.Duration
	MaxWaitingForRetry        time.Duration
	// MaxResultReads is how many times a queued step result may be read
	// and fail processing before it moves to the dead-letter queue.
	// Default 10; negative keeps retrying forever.
	MaxResultReads int
}

// EventSink writes durable domain events in the orchestration transaction
// and is told after commit that some were written.
type EventSink interface {
	Outbox(ctx context.Context, tx store.Tx, o events.StepOutcome) (int, error)
	WakeRelays()
}

func (c *Config) setDefaults() {
	if c.Owner == "" {
		c.Owner = "orchestrator-" + uuid.NewString()[:8]
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.JitterFraction == 0 {
		c.JitterFraction = 0.1
	}
	if c.JitterFraction < 0 {
		c.JitterFraction = 0
	}
	if c.PollInterval <= 0 {
		c.PollInterval = time.Second
	}
	if c.ResultPollInterval <= 0 {
		c.ResultPollInterval = c.PollInterval
	}
	if c.ResultLease <= 0 {
		c.ResultLease = 30 * time.Second
	}
	if c.ResultBatch <= 0 {
		c.ResultBatch = 64
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	for _, d := range []struct {
		v   *time.Duration
		def time.Duration
	}{{&c.StalenessInterval, time.Minute}, {&c.MaxTaskDuration, 24 * time.Hour}, {&c.MaxStepsInProcess, time.Hour},
		{&c.MaxWaitingForDependencies, time.Hour}, {&c.MaxWaitingForRetry, time.Hour}} {
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	if c.MaxResultReads == 0 {
		c.MaxResultReads = 10
	}
}

// Orchestrator makes the orchestration decisions. Its synchronous methods
// (CreateTask, CancelTask, StepAction, CompleteSteps) work without Start;
// Start runs the background actors.
type Orchestrator struct {
	d         store.Driver
	templates *Templates
	cfg       Config
	log       *slog.Logger
	notify    Notifier

	wake   chan struct{}
	evalCh *chanmon.Chan[string]

	timerMu sync.Mutex
	timers  map[string]time.Time

	// incrementalAbove is IncrementalThreshold when New ran.
	incrementalAbove int
	// noDirectStart makes every ready step go through the queue, also
	// where the store could start it (see starter).
	noDirectStart bool

	life sync.Mutex
	stop context.CancelFunc
	done chan struct{}
}

// New returns an orchestrator over d.
func New(d store.Driver, templates *Templates, notify Notifier, cfg Config) *Orchestrator {
	cfg.setDefaults()
	o := &Orchestrator{
		d: d, templates: templates, cfg: cfg, log: cfg.Logger, notify: notify,
		wake:             make(chan struct{}, 1),
		evalCh:           chanmon.New[string]("orchestrator.evaluate", 1024),
		timers:           map[string]time.Time{},
		incrementalAbove: IncrementalThreshold,
	}
	if cfg.Monitors != nil {
		_ = o.cfg.Monitors.Register(o.evalCh)
	}
	return o
}

// Templates returns the template cache.
func (o *Orchestrator) Templates() *Templates { return o.templates }

// effects are what a committed transaction must announce.
type effects struct {
	// settled are the steps whose successes the store moved straight to
	// complete while recording them (CompleteAndLoadParams.SettleSuccesses).
	settled    map[string]bool
	events     int
	namespaces map[string]struct{}
	tasks      map[string]state.TaskState
	retries    map[string]time.Time
	// snapshots are the tasks this transaction settled, as it left them,
	// where it knew all of their steps.
	snapshots map[string]*TaskSnapshot
	// start, while the transaction ends with a claim for a worker in this
	// process, may start the steps it makes ready (see inTxClaim).
	start *starter
	// direct are the steps the claim was asked to start.
	direct []string
}

func newEffects() *effects {
	return &effects{namespaces: map[string]struct{}{}, tasks: map[string]state.TaskState{}, retries: map[string]time.Time{}}
}

// announce runs after commit.
func (o *Orchestrator) announce(eff *effects) {
	if len(eff.namespaces) > 0 && o.notify != nil {
		ns := make([]string, 0, len(eff.namespaces))
		for n := range eff.namespaces {
			ns = append(ns, n)
		}
		o.notify.StepsEnqueued(ns)
	}
	if o.notify != nil {
		for id, st := range eff.tasks {
			o.notify.TaskChanged(id, st, eff.snapshots[id])
		}
	}
	for id, at := range eff.retries {
		o.scheduleEvaluation(id, at)
	}
	if eff.events > 0 && o.cfg.Events != nil {
		o.cfg.Events.WakeRelays()
	}
}

// scheduleEvaluation arranges for the task to be evaluated at time at, so a
// retry runs when its backoff ends rather than at the next sweep.
func (o *Orchestrator) scheduleEvaluation(taskUUID string, at time.Time) {
	o.timerMu.Lock()
	if prev, ok := o.timers[taskUUID]; ok && !at.Before(prev) {
		o.timerMu.Unlock()
		return
	}
	o.timers[taskUUID] = at
	o.timerMu.Unlock()
	d := at.Sub(o.cfg.Now())
	if d < 0 {
		d = 0
	}
	time.AfterFunc(d, func() {
		o.timerMu.Lock()
		if t, ok := o.timers[taskUUID]; ok && t.Equal(at) {
			delete(o.timers, taskUUID)
		}
		o.timerMu.Unlock()
		// When full, the drop is counted and the periodic sweep finds the
		// due retry.
		o.evalCh.TrySend(taskUUID)
	})
}

// CreateTaskParams describes a task to create.
type CreateTaskParams struct {
	Namespace, Name, Version string
	Context                  json.RawMessage
	IdempotencyKey           string
	Initiator, SourceSystem  string
	Reason                   string
	Tags                     []string
	Priority                 int
}

// CreateTask validates the request, then in one transaction inserts the
// task, its steps and edges, and enqueues the steps that are ready.
func (o *Orchestrator) CreateTask(ctx context.Context, p CreateTaskParams) (*store.TaskRow, []store.StepRow, Summary, error) {
	task, steps, sum, _, err := o.CreateTaskAndClaim(ctx, p, store.StepsClaimParams{})
	return task, steps, sum, err
}

// CreateTaskAndClaim is CreateTask followed, in the same transaction, by a
// claim of up to claim.Limit steps for the calling worker (see
// CompleteAndClaim): a worker in this process starts the task's first
// steps without a transaction of its own. The claimed steps must not run
// before this returns, that is before the claim is committed.
func (o *Orchestrator) CreateTaskAndClaim(ctx context.Context, p CreateTaskParams,
	claim store.StepsClaimParams) (*store.TaskRow, []store.StepRow, Summary, []store.ClaimedStep, error) {
	task, steps, claimed, err := o.createTask(ctx, p, claim)
	if err != nil {
		return nil, nil, Summary{}, nil, err
	}
	views := make([]StepView, len(steps))
	for i, s := range steps {
		views[i] = viewOf(s)
	}
	return task, steps, Evaluate(views, o.cfg.Now()), claimed, nil
}

// newTask is a validated task, ready to insert.
type newTask struct {
	t        *template.Template
	task     *store.TaskRow
	steps    []store.StepRow
	inserts  []store.StepInsert
	edges    []store.Edge
	identity string
	p        CreateTaskParams
}

// prepareTask validates a request and builds the rows of its task.
func (o *Orchestrator) prepareTask(ctx context.Context, p CreateTaskParams, now time.Time) (*newTask, error) {
	t, err := o.templates.Get(ctx, p.Namespace, p.Name, p.Version)
	if err != nil {
		return nil, err
	}
	taskCtx, err := normaliseContext(t, p.Context)
	if err != nil {
		return nil, err
	}
	identity, err := identityHash(t, taskCtx, p.IdempotencyKey)
	if err != nil {
		return nil, err
	}
	task := &store.TaskRow{
		UUID: uuid.Must(uuid.NewV7()).String(), Namespace: t.Namespace, Name: t.Name, Version: t.Version,
		State: string(state.TaskPending), Context: taskCtx, IdentityHash: identity, Initiator: p.Initiator,
		SourceSystem: p.SourceSystem, Reason: p.Reason, Tags: p.Tags, Priority: p.Priority, CreatedAt: now, UpdatedAt: now,
	}
	steps := make([]store.StepRow, len(t.Steps))
	ids := make(map[string]string, len(t.Steps))
	inserts := make([]store.StepInsert, len(t.Steps))
	for i, s := range t.Steps {
		id := uuid.Must(uuid.NewV7()).String()
		ids[s.Name] = id
		inserts[i] = store.StepInsert{UUID: id, Name: s.Name, Position: i, Callable: s.Handler.Callable,
			MaxAttempts: s.Retry.MaxAttempts, Retryable: s.Retry.Retryable}
		steps[i] = store.StepRow{UUID: id, TaskUUID: task.UUID, Name: s.Name, Namespace: t.Namespace, Position: i,
			Callable: s.Handler.Callable, State: string(state.StepPending), MaxAttempts: s.Retry.MaxAttempts,
			Retryable: s.Retry.Retryable, CreatedAt: now, UpdatedAt: now}
	}
	var edges []store.Edge
	for i, s := range t.Steps {
		for _, dep := range s.Dependencies {
			edges = append(edges, store.Edge{From: ids[dep], To: ids[s.Name]})
			steps[i].Parents = append(steps[i].Parents, ids[dep])
		}
	}
	return &newTask{t: t, task: task, steps: steps, inserts: inserts, edges: edges, identity: identity, p: p}, nil
}

// insert writes a prepared task in tx and enqueues its ready steps.
func (o *Orchestrator) insert(ctx context.Context, tx store.Tx, n *newTask, now time.Time, eff *effects) error {
	p, t := n.p, n.t
	if err := tx.TaskInsert(ctx, store.TaskInsertParams{
		UUID: n.task.UUID, Namespace: n.task.Namespace, Name: n.task.Name, Version: n.task.Version, State: n.task.State,
		Context: n.task.Context, IdentityHash: n.identity, Initiator: p.Initiator, SourceSystem: p.SourceSystem,
		Reason: p.Reason, Tags: p.Tags, Priority: p.Priority, Now: now, StepCount: len(n.inserts),
	}); err != nil {
		if errors.Is(err, store.ErrDuplicateIdentity) {
			return fmt.Errorf("create %s task: %w", t.Key(), ErrDuplicateTask)
		}
		return fmt.Errorf("create %s task: %w", t.Key(), err)
	}
	if err := tx.StepsInsert(ctx, store.StepsInsertParams{TaskUUID: n.task.UUID, Namespace: t.Namespace,
		Steps: n.inserts, Edges: n.edges, Now: now}); err != nil {
		return fmt.Errorf("create %s task: %w", t.Key(), err)
	}
	return o.evaluate(ctx, tx, n.task, n.steps, t, now, false, eff)
}

// markStarted shows the claimed steps among steps as started.
func markStarted(steps []store.StepRow, claimed []store.ClaimedStep, now time.Time) {
	if len(claimed) == 0 {
		return
	}
	started := make(map[string]int, len(claimed))
	for _, c := range claimed {
		started[c.StepUUID] = c.Attempt
	}
	for i := range steps {
		if attempt, ok := started[steps[i].UUID]; ok {
			steps[i].State, steps[i].Attempts, steps[i].LastAttemptedAt = string(state.StepInProgress), attempt, &now
		}
	}
}

func (o *Orchestrator) createTask(ctx context.Context, p CreateTaskParams, claim store.StepsClaimParams) (*store.TaskRow, []store.StepRow, []store.ClaimedStep, error) {
	now := o.cfg.Now()
	n, err := o.prepareTask(ctx, p, now)
	if err != nil {
		return nil, nil, nil, err
	}
	eff := newEffects()
	claimed, err := o.inTxClaim(ctx, claim, now, eff, func(tx store.Tx) error {
		return o.insert(ctx, tx, n, now, eff)
	})
	if err != nil {
		return nil, nil, nil, err
	}
	o.claimed(claim, claimed, eff)
	o.announce(eff)
	markStarted(n.steps, claimed, now)
	return n.task, n.steps, claimed, nil
}

// IsRefusal reports whether err is a task creation refusing its request
// (unknown template, invalid context, missing idempotency key, duplicate
// identity), as opposed to the store failing.
func IsRefusal(err error) bool {
	for _, r := range []error{ErrTemplateNotFound, ErrInvalidContext, ErrIdempotencyKeyRequired, ErrDuplicateTask} {
		if errors.Is(err, r) {
			return true
		}
	}
	return false
}

// CreatedTask is one task made by CreateTasks.
type CreatedTask struct {
	Task    *store.TaskRow
	Steps   []store.StepRow
	Summary Summary
}

// BatchError names the request of a batch that was refused.
type BatchError struct {
	Index int // position of the request in the batch
	Err   error
}

func (e *BatchError) Error() string { return fmt.Sprintf("request %d: %v", e.Index, e.Err) }
func (e *BatchError) Unwrap() error { return e.Err }

// CreateTasks creates many tasks in one transaction, all or none: a
// request that CreateTask would refuse (or an identity collision, with a
// stored task or within the batch) refuses the whole batch with a
// *BatchError naming it. Like CreateTaskAndClaim it may claim steps for a
// worker in this process in the same transaction.
func (o *Orchestrator) CreateTasks(ctx context.Context, ps []CreateTaskParams,
	claim store.StepsClaimParams) ([]CreatedTask, []store.ClaimedStep, error) {
	created, refused, claimed, err := o.createTasks(ctx, ps, claim, false)
	if err != nil {
		return nil, nil, err
	}
	for i, err := range refused {
		if err != nil {
			return nil, nil, &BatchError{Index: i, Err: err}
		}
	}
	return created, claimed, nil
}

// CreateTasksEach is CreateTasks for requests answered one by one: a
// refused request (unknown template, invalid context, missing idempotency
// key, an identity collision with a stored task or an earlier request)
// gets its error in refused, at its position, and the others are created
// in one transaction. created has nil Task for the refused requests.
func (o *Orchestrator) CreateTasksEach(ctx context.Context, ps []CreateTaskParams,
	claim store.StepsClaimParams) (created []CreatedTask, refused []error, claimed []store.ClaimedStep, err error) {
	return o.createTasks(ctx, ps, claim, true)
}

func (o *Orchestrator) createTasks(ctx context.Context, ps []CreateTaskParams,
	claim store.StepsClaimParams, each bool) ([]CreatedTask, []error, []store.ClaimedStep, error) {
	now := o.cfg.Now()
	prepared := make([]*newTask, len(ps))
	refused := make([]error, len(ps))
	// Requests of a batch usually name one template: resolve each name
	// (and its latest version) once per batch.
	resolved := map[[3]string]string{}
	for i, p := range ps {
		key := [3]string{p.Namespace, p.Name, p.Version}
		if v, ok := resolved[key]; ok {
			p.Version = v
		} else if t, err := o.templates.Get(ctx, p.Namespace, p.Name, p.Version); err == nil {
			resolved[key], p.Version = t.Version, t.Version
		}
		n, err := o.prepareTask(ctx, p, now)
		if err != nil {
			refused[i] = err
			if !each {
				return nil, refused, nil, nil
			}
			if !IsRefusal(err) {
				// Not the request's fault (the template could not be read,
				// the context ended): the batch fails, not the request.
				return nil, nil, nil, err
			}
			continue
		}
		prepared[i] = n
	}
	if !slices.ContainsFunc(prepared, func(n *newTask) bool { return n != nil }) {
		return make([]CreatedTask, len(ps)), refused, nil, nil
	}
	eff := newEffects()
	claimed, err := o.inTxClaim(ctx, claim, now, eff, func(tx store.Tx) error {
		for i, n := range prepared {
			if n == nil {
				continue
			}
			if err := o.insert(ctx, tx, n, now, eff); err != nil {
				if each && errors.Is(err, ErrDuplicateTask) {
					// Its task row was the first write and was refused:
					// nothing of it is written, and the rest goes on.
					refused[i], prepared[i] = err, nil
					continue
				}
				return &BatchError{Index: i, Err: err}
			}
		}
		return nil
	})
	if err != nil {
		return nil, nil, nil, err
	}
	o.claimed(claim, claimed, eff)
	o.announce(eff)
	out := make([]CreatedTask, len(prepared))
	for i, n := range prepared {
		if n == nil {
			continue
		}
		markStarted(n.steps, claimed, now)
		views := make([]StepView, len(n.steps))
		for j, s := range n.steps {
			views[j] = viewOf(s)
		}
		out[i] = CreatedTask{Task: n.task, Steps: n.steps, Summary: Evaluate(views, now)}
	}
	return out, refused, claimed, nil
}

// claimFor is the claim of steps for a worker in this process that ends an
// orchestration transaction (see store.InTxClaim), if claim asks for any:
// the steps the transaction made ready go straight to that worker. The
// leases run from the claim, not from the transaction's start: on SQLite a
// transaction may first wait its turn for the writer, and that wait must
// not come out of the worker's lease.
func (o *Orchestrator) claimFor(claim store.StepsClaimParams, now time.Time) store.StepsClaimParams {
	claim.Now = now
	if t := o.cfg.Now(); t.After(now) {
		claim.Now = t
	}
	return claim
}

// claimed notes what a transaction's claim (see claimFor) took. When the
// claim got fewer steps than it asked for, it emptied the worker's queues
// (or its transaction found them empty and it did not search them, see
// store.CompleteAndLoadParams.ClaimQueues), and waking the worker for the
// steps the transaction enqueued would only cost it an empty claim, so
// that wake-up is dropped, unless a step the claim was to start is
// missing from what it took.
func (o *Orchestrator) claimed(claim store.StepsClaimParams, claimed []store.ClaimedStep, eff *effects) {
	if claim.Limit <= 0 || len(claimed) >= claim.Limit {
		return
	}
	// A step the claim was to start that it did not return was enqueued
	// instead, behind a backlog, and a claim that did not search the
	// queues (see store.CompleteAndLoadParams.ClaimQueues) left it there:
	// the worker is woken for it.
	for _, id := range eff.direct {
		if !slices.ContainsFunc(claimed, func(c store.ClaimedStep) bool { return c.StepUUID == id }) {
			return
		}
	}
	for _, q := range claim.Queues {
		if ns, ok := store.QueueNamespace(q); ok {
			delete(eff.namespaces, ns)
		}
	}
}

// normaliseContext checks that the context is a JSON object valid against
// the template's input_schema and returns it ({} when absent).
func normaliseContext(t *template.Template, raw json.RawMessage) (json.RawMessage, error) {
	if len(raw) == 0 || string(raw) == "null" {
		raw = json.RawMessage(`{}`)
	}
	if !json.Valid(raw) {
		return nil, fmt.Errorf("%w: not valid JSON", ErrInvalidContext)
	}
	if err := t.ValidateContext(raw); err != nil {
		return nil, err // a *template.ContextError naming each failing path
	}
	return raw, nil
}

// identityHash implements the identity strategies. An idempotency key
// overrides the template's strategy.
func identityHash(t *template.Template, taskCtx json.RawMessage, key string) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s\x00%s\x00", t.Namespace, t.Name, t.Version)
	switch {
	case key != "":
		fmt.Fprintf(h, "key\x00%s", key)
	case t.IdentityStrategy == template.IdentityAlwaysUnique:
		return "", nil
	case t.IdentityStrategy == template.IdentityCallerProvided:
		return "", ErrIdempotencyKeyRequired
	default:
		canon, err := canonicalJSON(taskCtx)
		if err != nil {
			return "", fmt.Errorf("%w: %w", ErrInvalidContext, err)
		}
		h.Write([]byte("ctx\x00"))
		h.Write(canon)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// canonicalJSON re-encodes a JSON value with object keys sorted, so that
// two contexts that differ only in key order or spacing hash alike.
func canonicalJSON(raw json.RawMessage) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	return json.Marshal(v)
}

// evaluate decides, for a task whose row is locked by tx, which steps to
// enqueue and which state the task moves to, and records both. steps is the
// current state of every step of the task. resume allows a task that an
// operator is fixing to leave blocked_by_failures or error.
func (o *Orchestrator) evaluate(ctx context.Context, tx store.Tx, task *store.TaskRow, steps []store.StepRow,
	t *template.Template, now time.Time, resume bool, eff *effects) error {
	cur := state.TaskState(task.State)
	switch {
	case cur == state.TaskComplete || cur == state.TaskCancelled || cur == state.TaskResolvedManually:
		return nil
	case (cur == state.TaskError || cur == state.TaskBlockedByFailures) && !resume:
		// Results that arrive late still land on their steps, but only an
		// operator moves a settled task.
		return nil
	}
	views := make([]StepView, len(steps))
	for i, s := range steps {
		views[i] = viewOf(s)
	}
	sum := Evaluate(views, now)
	byUUID := make(map[string]int, len(steps))
	for i := range steps {
		byUUID[steps[i].UUID] = i
	}
	var msgs []store.QueueMessageInsert
	var direct []store.StepStart
	queue := store.WorkerQueue(task.Namespace)
	for _, id := range sum.Ready {
		s := &steps[byUUID[id]]
		if eff.start.take(queue) {
			direct = append(direct, store.StepStart{UUID: s.UUID, TaskUUID: task.UUID, From: s.State, Queue: queue,
				Priority: task.Priority, Name: s.Name, Namespace: task.Namespace, Callable: s.Callable, Attempts: s.Attempts,
				MaxAttempts: s.MaxAttempts})
			s.State = string(state.StepEnqueued) // or in_progress, once the claim has run
			continue
		}
		if err := tx.StepTransition(ctx, store.StepTransitionParams{Deferred: true,
			UUID: s.UUID, From: s.State, To: string(state.StepEnqueued), Event: string(state.StepEventEnqueue),
			SetNextRetryAt: true, Now: now,
		}); err != nil {
			return fmt.Errorf("enqueue step %s of task %s: %w", s.Name, task.UUID, err)
		}
		s.State = string(state.StepEnqueued)
		msgs = append(msgs, store.QueueMessageInsert{Queue: queue, TaskUUID: task.UUID,
			StepUUID: s.UUID, Priority: task.Priority})
	}
	if len(direct) > 0 {
		eff.start.add(task, direct)
		// Should the claim find a backlog and enqueue them, the worker
		// is woken for them (see claimed).
		eff.namespaces[task.Namespace] = struct{}{}
	}
	if len(msgs) > 0 {
		if err := tx.QueueSend(ctx, store.QueueSendParams{Messages: msgs, Now: now}); err != nil {
			return fmt.Errorf("enqueue steps of task %s: %w", task.UUID, err)
		}
		eff.namespaces[task.Namespace] = struct{}{}
	}
	return o.settle(ctx, tx, task, cur, sum, len(msgs)+len(direct) > 0, now, eff)
}

// settle moves a task, whose row tx locks and which was in state cur, to
// the state its readiness summary calls for; enqueued says whether this
// transaction enqueued any of its steps.
func (o *Orchestrator) settle(ctx context.Context, tx store.Tx, task *store.TaskRow, cur state.TaskState, sum Summary,
	enqueued bool, now time.Time, eff *effects) error {
	var target state.TaskState
	switch {
	case sum.AllComplete():
		target = state.TaskComplete
	case enqueued || sum.InFlight > 0:
		target = state.TaskStepsInProcess
	case sum.PendingRetries > 0:
		target = state.TaskWaitingForRetry
	case sum.Errored > 0:
		target = state.TaskBlockedByFailures
	default:
		target = state.TaskWaitingForDependencies
	}
	if sum.EarliestRetry != nil {
		if at, ok := eff.retries[task.UUID]; !ok || sum.EarliestRetry.Before(at) {
			eff.retries[task.UUID] = *sum.EarliestRetry
		}
	}
	events := taskEvents(cur, target, enqueued)
	// The whole path is one write of the task row, with a history row per
	// event.
	from := cur
	var tr store.TaskTransitionParams
	for i, ev := range events {
		to, err := state.NextTask(from, ev)
		if err != nil {
			return fmt.Errorf("task %s: %w", task.UUID, err)
		}
		if i == 0 {
			tr = store.TaskTransitionParams{Deferred: true, UUID: task.UUID, From: string(from), To: string(to), Event: string(ev), Now: now}
		} else {
			tr.Then = append(tr.Then, store.TaskHop{To: string(to), Event: string(ev)})
		}
		from = to
	}
	if len(events) > 0 {
		if err := tx.TaskTransition(ctx, tr); err != nil {
			return err
		}
	}
	if from != cur {
		task.State = string(from)
		eff.tasks[task.UUID] = from
		if from.Settled() && sum.exact {
			// The row as the store writes it: state, updated_at and, for
			// a terminal state, completed_at, at the store's microsecond
			// precision.
			row := *task
			at := now.UTC().Truncate(time.Microsecond)
			row.UpdatedAt, row.CompletedAt = at, nil
			if from.Terminal() {
				row.CompletedAt = &at
			}
			if eff.snapshots == nil {
				eff.snapshots = map[string]*TaskSnapshot{}
			}
			eff.snapshots[task.UUID] = &TaskSnapshot{Row: row, Summary: sum}
		} else {
			delete(eff.snapshots, task.UUID)
		}
	}
	return nil
}

// taskEvents is the path of events that takes a task from cur to target.
// A task that is processing stays in steps_in_process while results come
// and go; only a change of phase is recorded.
func taskEvents(cur, target state.TaskState, enqueued bool) []state.TaskEvent {
	if cur == target && (cur == state.TaskStepsInProcess || !enqueued) {
		return nil
	}
	var evs []state.TaskEvent
	switch cur {
	case state.TaskPending:
		evs = append(evs, state.TaskEventStart)
	case state.TaskWaitingForDependencies, state.TaskWaitingForRetry:
		if enqueued && target == state.TaskStepsInProcess {
			return []state.TaskEvent{state.TaskEventReadyStepsFound, state.TaskEventStepsEnqueued}
		}
		evs = append(evs, state.TaskEventResultsReceived)
	case state.TaskStepsInProcess:
		evs = append(evs, state.TaskEventResultsReceived)
	case state.TaskBlockedByFailures, state.TaskError:
		evs = append(evs, state.TaskEventResume)
	case state.TaskInitializing, state.TaskEvaluatingResults:
	default:
		return nil
	}
	switch target {
	case state.TaskComplete:
		evs = append(evs, state.TaskEventAllComplete)
	case state.TaskStepsInProcess:
		if enqueued {
			evs = append(evs, state.TaskEventReadyStepsFound, state.TaskEventStepsEnqueued)
		} else {
			evs = append(evs, state.TaskEventStillProcessing)
		}
	case state.TaskWaitingForRetry:
		evs = append(evs, state.TaskEventAwaitRetry)
	case state.TaskBlockedByFailures:
		evs = append(evs, state.TaskEventBlocked)
	case state.TaskWaitingForDependencies:
		evs = append(evs, state.TaskEventAwaitDeps)
	}
	return evs
}

func viewOf(s store.StepRow) StepView {
	return StepView{UUID: s.UUID, Name: s.Name, State: state.StepState(s.State), Attempts: s.Attempts,
		MaxAttempts: s.MaxAttempts, Retryable: s.Retryable, NextRetryAt: s.NextRetryAt, Parents: s.Parents}
}

// applyResult turns a step's reported outcome into its next state: complete,
// waiting_for_retry with a backoff, or error. Steps not awaiting
// orchestration are left alone (a duplicate or late message).
func (o *Orchestrator) applyResult(ctx context.Context, tx store.Tx, s *store.StepRow, t *template.Template, now time.Time) (events.Outcome, error) {
	switch state.StepState(s.State) {
	case state.StepEnqueuedForOrchestration:
		if err := tx.StepTransition(ctx, store.StepTransitionParams{Deferred: true, UUID: s.UUID, From: s.State,
			To: string(state.StepComplete), Event: string(state.StepEventComplete), Now: now}); err != nil {
			return "", err
		}
		s.State = string(state.StepComplete)
		return events.OutcomeSuccess, nil
	case state.StepEnqueuedAsErrorForOrchestration:
		var info store.StepErrorInfo
		if len(s.Error) > 0 {
			if err := json.Unmarshal(s.Error, &info); err != nil {
				info = store.StepErrorInfo{Message: string(s.Error), Retryable: true}
			}
		}
		var retry template.Retry
		if def, ok := t.Step(s.Name); ok {
			retry = def.Retry
		}
		if info.Type == store.ErrorTypeWorkerStopping {
			// The attempt was cut short by a shutdown, not by the handler:
			// it is given back and the step runs again at once, whatever
			// its retry policy or attempts used.
			if err := tx.StepTransition(ctx, store.StepTransitionParams{Deferred: true, UUID: s.UUID, From: s.State,
				To: string(state.StepWaitingForRetry), Event: string(state.StepEventScheduleRetry), Now: now,
				SetNextRetryAt: true, NextRetryAt: &now, DecrementAttempts: true,
				Metadata: mustJSON(map[string]any{"reason": "released by worker shutdown; attempt not counted"})}); err != nil {
				return "", err
			}
			s.State, s.NextRetryAt, s.Attempts = string(state.StepWaitingForRetry), &now, max(s.Attempts-1, 0)
			return "", nil
		}
		if info.Retryable && s.Retryable && s.Attempts < s.MaxAttempts {
			delay := Backoff(retry, s.Attempts, o.cfg.JitterFraction, rand.Float64())
			if ra := time.Duration(info.RetryAfterMS) * time.Millisecond; ra > delay {
				delay = ra
			}
			next := now.Add(delay)
			if err := tx.StepTransition(ctx, store.StepTransitionParams{Deferred: true, UUID: s.UUID, From: s.State,
				To: string(state.StepWaitingForRetry), Event: string(state.StepEventScheduleRetry), Now: now,
				SetNextRetryAt: true, NextRetryAt: &next,
				Metadata: mustJSON(map[string]any{"backoff_ms": delay.Milliseconds(), "attempt": s.Attempts})}); err != nil {
				return "", err
			}
			s.State, s.NextRetryAt = string(state.StepWaitingForRetry), &next
			return events.OutcomeRetryableFailure, nil
		} else {
			reason := "not retryable"
			if info.Retryable {
				reason = fmt.Sprintf("attempts exhausted (%d of %d)", s.Attempts, s.MaxAttempts)
			}
			if !s.Retryable {
				reason = "step is not retryable"
			}
			if err := tx.StepTransition(ctx, store.StepTransitionParams{Deferred: true, UUID: s.UUID, From: s.State,
				To: string(state.StepError), Event: string(state.StepEventFail), Now: now, SetNextRetryAt: true,
				Metadata: mustJSON(map[string]any{"reason": reason})}); err != nil {
				return "", err
			}
			s.State, s.NextRetryAt = string(state.StepError), nil
			return events.OutcomePermanentFailure, nil
		}
	}
	return "", nil
}

func mustJSON(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only called with maps of plain values
	}
	return b
}

// processTask locks a task, applies the results of the given steps and
// re-evaluates it.
func (o *Orchestrator) processTask(ctx context.Context, tx store.Tx, taskUUID string, resultSteps map[string]bool,
	now time.Time, eff *effects) error {
	task, err := tx.TaskGet(ctx, store.TaskGetParams{UUID: taskUUID, ForUpdate: true})
	if err != nil {
		return err
	}
	t, err := o.templates.Get(ctx, task.Namespace, task.Name, task.Version)
	if err != nil {
		return fmt.Errorf("task %s: %w", taskUUID, err)
	}
	if o.large(len(t.Steps)) {
		return o.processLargeTask(ctx, tx, task, t, resultSteps, now, eff)
	}
	steps, err := tx.StepsForTask(ctx, store.StepsForTaskParams{TaskUUID: taskUUID, WithoutPayloads: true})
	if err != nil {
		return err
	}
	return o.processLockedTask(ctx, tx, task, steps, resultSteps, now, eff)
}

// processLockedTask is processTask for a task whose row tx already locked
// and whose steps it read after locking it.
func (o *Orchestrator) processLockedTask(ctx context.Context, tx store.Tx, task *store.TaskRow, steps []store.StepRow,
	resultSteps map[string]bool, now time.Time, eff *effects) error {
	t, err := o.templates.Get(ctx, task.Namespace, task.Name, task.Version)
	if err != nil {
		return fmt.Errorf("task %s: %w", task.UUID, err)
	}
	if err := o.applyResults(ctx, tx, task, t, steps, resultSteps, now, eff); err != nil {
		return err
	}
	return o.evaluate(ctx, tx, task, steps, t, now, false, eff)
}

// applyResults applies the results of the steps named in resultSteps,
// updating them in steps, and writes the durable events of their outcomes.
func (o *Orchestrator) applyResults(ctx context.Context, tx store.Tx, task *store.TaskRow, t *template.Template,
	steps []store.StepRow, resultSteps map[string]bool, now time.Time, eff *effects) error {
	taskUUID := task.UUID
	for i := range steps {
		s := &steps[i]
		if !resultSteps[s.UUID] {
			continue
		}
		publishes := false
		if def, ok := t.Step(s.Name); ok {
			publishes = o.cfg.Events != nil && len(def.PublishesEvents) > 0
		}
		// A success the store already moved to complete while recording it
		// (SettleSuccesses) is applied: it only needs its outcome published.
		settled := eff.settled[s.UUID] && s.State == string(state.StepComplete)
		awaiting := s.State == string(state.StepEnqueuedAsErrorForOrchestration) || s.State == string(state.StepEnqueuedForOrchestration)
		if (awaiting || settled) && (publishes || s.State == string(state.StepEnqueuedAsErrorForOrchestration)) {
			full, err := tx.StepGet(ctx, store.StepGetParams{UUID: s.UUID})
			if err != nil {
				return err
			}
			s.Error, s.Result = full.Error, full.Result
		}
		attempt := s.Attempts
		outcome := events.OutcomeSuccess
		if !settled {
			var err error
			if outcome, err = o.applyResult(ctx, tx, s, t, now); err != nil {
				return fmt.Errorf("task %s step %s: %w", taskUUID, s.Name, err)
			}
		}
		if publishes && outcome != "" {
			// Durable events go in this transaction: they exist exactly
			// when the outcome they describe is committed.
			o2 := events.StepOutcome{Template: t, StepName: s.Name, TaskUUID: taskUUID, StepUUID: s.UUID,
				Context: task.Context, Attempt: attempt, Outcome: outcome, At: now}
			if outcome == events.OutcomeSuccess {
				o2.Result = s.Result
			} else {
				o2.Error = s.Error
			}
			n, err := o.cfg.Events.Outbox(ctx, tx, o2)
			if err != nil {
				return fmt.Errorf("task %s step %s: write domain events: %w", taskUUID, s.Name, err)
			}
			eff.events += n
		}
	}
	return nil
}

// CompleteSteps records handler outcomes and, in the same transaction,
// processes them: the in-process path used when a worker shares the
// process with an orchestrator. The returned slice has, per completion, nil
// or the reason it was refused (store.ErrLeaseLost).
func (o *Orchestrator) CompleteSteps(ctx context.Context, completions []store.StepCompletion) ([]error, error) {
	refused, _, err := o.CompleteAndClaim(ctx, completions, store.StepsClaimParams{})
	return refused, err
}

// CompleteAndClaim is CompleteSteps followed, in the same transaction, by a
// claim of up to claim.Limit steps for the calling worker: the steps the
// results made ready go straight to it, without another transaction.
func (o *Orchestrator) CompleteAndClaim(ctx context.Context, completions []store.StepCompletion,
	claim store.StepsClaimParams) ([]error, []store.ClaimedStep, error) {
	eff := newEffects()
	var refused []error
	now := o.cfg.Now()
	claimed, err := o.inTxClaim(ctx, claim, now, eff, func(tx store.Tx) error {
		// Lock the tasks first, in a fixed order, as every orchestration
		// transaction does, so that concurrent transactions on the same
		// tasks wait for each other instead of deadlocking.
		ids := map[string]bool{}
		for _, c := range completions {
			ids[c.TaskUUID] = true
		}
		loaded, err := store.CompleteAndLoad(ctx, tx, store.CompleteAndLoadParams{
			Tasks: sortedKeys(ids), Completions: completions, Now: now,
			LimitSteps: o.incrementalAbove >= 0, MaxSteps: o.incrementalAbove, SettleSuccesses: true,
			ClaimQueues: claimQueues(claim)})
		if err != nil {
			return err
		}
		refused, eff.settled = loaded.Refused, loaded.Settled
		byTask := map[string]map[string]bool{}
		for i, c := range completions {
			if refused[i] != nil {
				continue
			}
			if byTask[c.TaskUUID] == nil {
				byTask[c.TaskUUID] = map[string]bool{}
			}
			byTask[c.TaskUUID][c.StepUUID] = true
		}
		for _, id := range sortedKeys(byTask) {
			if loaded.Large[id] {
				task := loaded.Tasks[id]
				t, err := o.templates.Get(ctx, task.Namespace, task.Name, task.Version)
				if err != nil {
					return fmt.Errorf("task %s: %w", id, err)
				}
				if err := o.processLargeTask(ctx, tx, task, t, byTask[id], now, eff); err != nil {
					return err
				}
				continue
			}
			if err := o.processLockedTask(ctx, tx, loaded.Tasks[id], loaded.Steps[id], byTask[id], now, eff); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	o.claimed(claim, claimed, eff)
	o.announce(eff)
	return refused, claimed, nil
}

// ForwardCompletions records handler outcomes and queues them for whichever
// orchestrator claims them: the path used by a worker-only process.
func ForwardCompletions(ctx context.Context, d store.Driver, completions []store.StepCompletion) ([]error, error) {
	var refused []error
	now := time.Now()
	err := store.InTx(ctx, d, func(tx store.Tx) error {
		var err error
		refused, err = tx.StepsComplete(ctx, store.StepsCompleteParams{Completions: completions, Now: now})
		if err != nil {
			return err
		}
		var msgs []store.QueueMessageInsert
		for i, c := range completions {
			if refused[i] == nil {
				msgs = append(msgs, store.QueueMessageInsert{Queue: store.OrchestrationQueue, TaskUUID: c.TaskUUID, StepUUID: c.StepUUID})
			}
		}
		return tx.QueueSend(ctx, store.QueueSendParams{Messages: msgs, Now: now})
	})
	return refused, err
}

// EvaluateTask re-evaluates one task: enqueues steps whose retry backoff
// ended, and settles it if nothing more can happen.
func (o *Orchestrator) EvaluateTask(ctx context.Context, taskUUID string) error {
	eff := newEffects()
	err := store.InTx(ctx, o.d, func(tx store.Tx) error {
		return o.processTask(ctx, tx, taskUUID, nil, o.cfg.Now(), eff)
	})
	if err != nil {
		return err
	}
	o.announce(eff)
	return nil
}

// CancelTask cancels a task and every step of it that has not finished. A
// handler still running for a cancelled step has its result refused.
func (o *Orchestrator) CancelTask(ctx context.Context, taskUUID, actor, reason string) (*store.TaskRow, error) {
	eff := newEffects()
	var task *store.TaskRow
	now := o.cfg.Now()
	err := store.InTx(ctx, o.d, func(tx store.Tx) error {
		var err error
		task, err = tx.TaskGet(ctx, store.TaskGetParams{UUID: taskUUID, ForUpdate: true})
		if errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("cancel task %s: %w", taskUUID, ErrTaskNotFound)
		}
		if err != nil {
			return err
		}
		cur := state.TaskState(task.State)
		if cur.Terminal() {
			return fmt.Errorf("cancel task %s: %w (state %s)", taskUUID, ErrTaskFinished, cur)
		}
		steps, err := tx.StepsForTask(ctx, store.StepsForTaskParams{TaskUUID: taskUUID, WithoutPayloads: true})
		if err != nil {
			return err
		}
		md := mustJSON(map[string]any{"actor": actor, "reason": reason})
		var ids []string
		for _, s := range steps {
			if state.StepState(s.State).Terminal() {
				continue
			}
			if err := tx.StepTransition(ctx, store.StepTransitionParams{UUID: s.UUID, From: s.State,
				To: string(state.StepCancelled), Event: string(state.StepEventCancel), Metadata: md, Now: now}); err != nil {
				return err
			}
			ids = append(ids, s.UUID)
		}
		if _, err := tx.QueueDeleteForSteps(ctx, store.QueueDeleteForStepsParams{StepUUIDs: ids}); err != nil {
			return err
		}
		if err := tx.TaskTransition(ctx, store.TaskTransitionParams{UUID: taskUUID, From: task.State,
			To: string(state.TaskCancelled), Event: string(state.TaskEventCancel), Metadata: md, Now: now}); err != nil {
			return err
		}
		task.State = string(state.TaskCancelled)
		eff.tasks[taskUUID] = state.TaskCancelled
		return nil
	})
	if err != nil {
		return nil, err
	}
	o.announce(eff)
	return task, nil
}

// StepAction is an operator's manual action on a step.
type StepAction string

// Manual step actions.
const (
	ActionResetForRetry    StepAction = "reset_for_retry"
	ActionResolveManually  StepAction = "resolve_manually"
	ActionCompleteManually StepAction = "complete_manually"
)

// StepActionParams describes a manual step action.
type StepActionParams struct {
	TaskUUID, StepUUID string
	Action             StepAction
	// Result is the step's result for complete_manually (JSON; default null).
	Result json.RawMessage
	// Actor and Reason are recorded in the step's history.
	Actor, Reason string
}

// ApplyStepAction applies an operator's action and re-evaluates the task in
// the same transaction, so a task blocked by the step moves on.
func (o *Orchestrator) ApplyStepAction(ctx context.Context, p StepActionParams) (*store.StepRow, error) {
	var ev state.StepEvent
	switch p.Action {
	case ActionResetForRetry:
		ev = state.StepEventResetForRetry
	case ActionResolveManually:
		ev = state.StepEventResolveManually
	case ActionCompleteManually:
		ev = state.StepEventCompleteManually
		if len(p.Result) == 0 {
			p.Result = json.RawMessage("null")
		}
		if !json.Valid(p.Result) {
			return nil, fmt.Errorf("complete step %s manually: result is not valid JSON", p.StepUUID)
		}
	default:
		return nil, fmt.Errorf("unknown step action %q (want reset_for_retry, resolve_manually or complete_manually)", p.Action)
	}
	eff := newEffects()
	var out *store.StepRow
	now := o.cfg.Now()
	err := store.InTx(ctx, o.d, func(tx store.Tx) error {
		task, err := tx.TaskGet(ctx, store.TaskGetParams{UUID: p.TaskUUID, ForUpdate: true})
		if errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("%s: %w: %s", p.Action, ErrTaskNotFound, p.TaskUUID)
		}
		if err != nil {
			return err
		}
		if st := state.TaskState(task.State); st == state.TaskComplete || st == state.TaskCancelled || st == state.TaskResolvedManually {
			return fmt.Errorf("%s on step %s: %w (task state %s)", p.Action, p.StepUUID, ErrTaskFinished, st)
		}
		steps, err := tx.StepsForTask(ctx, store.StepsForTaskParams{TaskUUID: p.TaskUUID, WithoutPayloads: true})
		if err != nil {
			return err
		}
		idx := -1
		for i := range steps {
			if steps[i].UUID == p.StepUUID {
				idx = i
			}
		}
		if idx < 0 {
			return fmt.Errorf("%s: %w: %s in task %s", p.Action, ErrStepNotFound, p.StepUUID, p.TaskUUID)
		}
		s := &steps[idx]
		to, err := state.NextStep(state.StepState(s.State), ev)
		if err != nil {
			return fmt.Errorf("%s on step %s: %w", p.Action, s.Name, err)
		}
		params := store.StepTransitionParams{UUID: s.UUID, From: s.State, To: string(to), Event: string(ev), Now: now,
			Metadata:       mustJSON(map[string]any{"actor": p.Actor, "reason": p.Reason, "action": p.Action}),
			SetNextRetryAt: true}
		switch p.Action {
		case ActionResetForRetry:
			params.ResetAttempts = true
			s.Attempts = 0
		case ActionCompleteManually:
			params.SetResult, params.Result = true, p.Result
			s.Result = p.Result
		}
		if err := tx.StepTransition(ctx, params); err != nil {
			return err
		}
		s.State, s.NextRetryAt = string(to), nil
		t, err := o.templates.Get(ctx, task.Namespace, task.Name, task.Version)
		if err != nil {
			return err
		}
		if err := o.evaluate(ctx, tx, task, steps, t, now, true, eff); err != nil {
			return err
		}
		out = s
		return nil
	})
	if err != nil {
		return nil, err
	}
	o.announce(eff)
	return out, nil
}

// TaskStatus reads a task, its steps and their readiness.
func (o *Orchestrator) TaskStatus(ctx context.Context, taskUUID string) (*store.TaskRow, []store.StepRow, Summary, error) {
	r := o.d.Reader()
	task, err := r.TaskGet(ctx, store.TaskGetParams{UUID: taskUUID})
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil, Summary{}, fmt.Errorf("%w: %s", ErrTaskNotFound, taskUUID)
	}
	if err != nil {
		return nil, nil, Summary{}, err
	}
	steps, sum, err := o.StepsStatus(ctx, task.UUID)
	if err != nil {
		return nil, nil, Summary{}, err
	}
	return task, steps, sum, nil
}

// StepsStatus is the steps half of TaskStatus, for a caller that has just
// read the task row.
func (o *Orchestrator) StepsStatus(ctx context.Context, taskUUID string) ([]store.StepRow, Summary, error) {
	steps, err := o.d.Reader().StepsForTask(ctx, store.StepsForTaskParams{TaskUUID: taskUUID})
	if err != nil {
		return nil, Summary{}, err
	}
	views := make([]StepView, len(steps))
	for i, s := range steps {
		views[i] = viewOf(s)
	}
	return steps, Evaluate(views, o.cfg.Now()), nil
}

// sortedKeys returns a map's keys in order, for deterministic processing.
func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
