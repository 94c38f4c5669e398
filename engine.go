package tasker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/tasker-go/tasker/internal/chanmon"
	"github.com/tasker-go/tasker/internal/events"
	"github.com/tasker-go/tasker/internal/orchestration"
	"github.com/tasker-go/tasker/internal/worker"
	"github.com/tasker-go/tasker/state"
	"github.com/tasker-go/tasker/store"
	"github.com/tasker-go/tasker/store/postgres"
	"github.com/tasker-go/tasker/store/sqlite"
	"github.com/tasker-go/tasker/template"
)

// Engine is an open Tasker engine: a store, the orchestrator and, once
// started, a worker running this process's handlers.
type Engine struct {
	cfg      Config
	log      *slog.Logger
	driver   store.Driver
	orch     *orchestration.Orchestrator
	events   *events.Service
	monitors *chanmon.Registry
	id       string

	mu            sync.Mutex
	handlers      map[string]Handler
	external      map[string]bool // callables run through the external channel
	namespaces    map[string]bool
	subscriptions map[string]int // Subscribe calls per pattern
	worker        *worker.Worker
	listening     *listening // the database listener, while started
	started       bool
	closed        bool

	creates *createQueue // CreateTask calls sharing transactions under load

	polls *waitPoller // reads back waited-for tasks that no signal announces

	waitMu  sync.Mutex
	waiters map[string]map[chan taskSignal]struct{}

	ancestorSets sync.Map // template key + step name -> map[string]bool

	stepHooks stepHooks // OnStepFinished functions
}

// Open connects to the store selected by cfg.DatabaseURL and applies its
// migrations.
func Open(ctx context.Context, cfg Config) (*Engine, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	kind, addr, err := parseDatabaseURL(cfg.DatabaseURL)
	if err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	var d store.Driver
	switch kind {
	case "sqlite":
		path, err := sqlitePath(addr)
		if err != nil {
			return nil, fmt.Errorf("tasker: resolve SQLite path %q: %w", addr, err)
		}
		if dir := filepath.Dir(path); dir != "" {
			if _, err := os.Stat(dir); err != nil {
				return nil, fmt.Errorf("tasker: SQLite database directory %s: %w", dir, err)
			}
		}
		sd, err := sqlite.Open(ctx, sqlite.Config{Path: path, Synchronous: cfg.SQLiteSynchronous, BusyTimeout: cfg.SQLiteBusyTimeout})
		if err != nil {
			return nil, fmt.Errorf("tasker: %w", err)
		}
		d = sd
	case "postgres":
		pd, err := postgres.Open(ctx, postgres.Config{URL: addr, Schema: cfg.PostgresSchema, MaxConns: int32(cfg.PostgresMaxConns)})
		if err != nil {
			return nil, fmt.Errorf("tasker: %w", err)
		}
		d = pd
	}
	if err := checkDeploymentMode(cfg.DeploymentMode, d); err != nil {
		d.Close()
		return nil, err
	}
	if err := d.Migrate(ctx); err != nil {
		d.Close()
		return nil, fmt.Errorf("tasker: migrate: %w", err)
	}
	e := &Engine{
		cfg: cfg, log: cfg.Logger, driver: d, monitors: chanmon.NewRegistry(),
		id:            uuid.NewString()[:8],
		handlers:      map[string]Handler{},
		namespaces:    map[string]bool{},
		subscriptions: map[string]int{},
		waiters:       map[string]map[chan taskSignal]struct{}{},
	}
	e.polls = newWaitPoller(e)
	// SQLite has one writer: a second creating transaction would only wait
	// for it, so calls wait in the queue instead and share the next one.
	e.creates = &createQueue{limit: 2, one: e.createOne, many: e.createMany, log: e.log}
	if kind == "sqlite" {
		e.creates.limit = 1
	}
	for _, ns := range cfg.Namespaces {
		e.namespaces[ns] = true
	}
	e.events = events.NewService(d, events.NewBuilder(cfg.Logger, cfg.EventPublisherTimeout), events.Config{
		Logger: cfg.Logger, FastBuffer: cfg.EventFastBuffer, PollInterval: cfg.queuePollInterval(), Retention: cfg.EventRetention,
		DeliveryTimeout: cfg.EventDeliveryTimeout, Monitors: e.monitors,
	})
	templates := orchestration.NewTemplates(d)
	templates.Check = e.events.CheckTemplate
	e.orch = orchestration.New(d, templates, engineNotifier{e}, orchestration.Config{
		Owner: "orchestrator-" + e.id, Logger: cfg.Logger, JitterFraction: cfg.RetryJitter, PollInterval: cfg.PollInterval,
		ResultPollInterval: cfg.queuePollInterval(),
		// ResultLease: a result batch held by an orchestrator that died
		// comes back as soon as a step held by a dead worker would.
		Monitors: e.monitors, Events: e.events, ResultLease: cfg.StepLease,
		StalenessInterval: cfg.StalenessInterval, MaxTaskDuration: cfg.MaxTaskDuration,
		MaxStepsInProcess: cfg.MaxStepsInProcess, MaxWaitingForDependencies: cfg.MaxWaitingForDependencies,
		MaxWaitingForRetry: cfg.MaxWaitingForRetry, MaxResultReads: cfg.MaxResultReads,
	})
	return e, nil
}

// engineNotifier routes the orchestrator's after-commit signals.
type engineNotifier struct{ e *Engine }

func (n engineNotifier) StepsEnqueued([]string) {
	n.e.mu.Lock()
	w := n.e.worker
	n.e.mu.Unlock()
	if w != nil {
		w.Wake()
	}
}

func (n engineNotifier) TaskChanged(taskUUID string, st state.TaskState, snap *orchestration.TaskSnapshot) {
	n.e.signalTask(taskUUID, taskSignal{state: st, snap: snap})
}

// RegisterTemplate validates a YAML task template and stores it. A template
// with problems is refused with all of them listed (errors.Is
// ErrInvalidTemplate) and nothing is stored. Registering the same version
// with identical content again is a no-op; with different content it is an
// error, because versions are immutable.
func (e *Engine) RegisterTemplate(ctx context.Context, yamlDoc []byte) error {
	t, err := e.orch.Templates().Register(ctx, yamlDoc)
	if err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.cfg.Namespaces) == 0 && !e.namespaces[t.Namespace] && e.handlesAny(t) {
		e.namespaces[t.Namespace] = true
		if e.worker != nil {
			e.worker.AddQueues(store.WorkerQueue(t.Namespace))
			e.relisten()
		}
	}
	return nil
}

// ValidateTemplate checks a YAML task template exactly as RegisterTemplate
// would, without storing it. It returns nil or an error listing every
// problem (errors.Is ErrInvalidTemplate).
func ValidateTemplate(yamlDoc []byte) error {
	_, err := orchestration.ParseTemplate(yamlDoc)
	return err
}

// RegisterTemplatesDir registers every *.yml and *.yaml file under dir,
// recursively. It stops at the first invalid template and names its file.
func (e *Engine) RegisterTemplatesDir(ctx context.Context, dir string) error {
	var files []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && (strings.HasSuffix(path, ".yml") || strings.HasSuffix(path, ".yaml")) {
			files = append(files, path)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("tasker: read templates in %s: %w", dir, err)
	}
	sort.Strings(files)
	for _, f := range files {
		doc, err := os.ReadFile(f)
		if err != nil {
			return fmt.Errorf("tasker: %w", err)
		}
		if err := e.RegisterTemplate(ctx, doc); err != nil {
			return fmt.Errorf("tasker: template %s: %w", f, err)
		}
	}
	return nil
}

// handlesAny reports whether this process has a handler for some step of t.
// The caller holds e.mu.
func (e *Engine) handlesAny(t *template.Template) bool {
	for _, s := range t.Steps {
		if _, ok := e.handlers[s.Handler.Callable]; ok || e.external[s.Handler.Callable] {
			return true
		}
	}
	return false
}

// Handle registers the handler for a callable name used in templates'
// handler.callable. Register handlers before Start; a handler added to a
// running engine makes it claim the namespaces of templates that use it.
func (e *Engine) Handle(callable string, h Handler) {
	if h == nil {
		panic("tasker: Handle(" + callable + ") with a nil handler")
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.handlers[callable] = h
	delete(e.external, callable)
	e.claimHandledNamespaces()
}

// claimHandledNamespaces makes a running engine claim the namespaces whose
// templates use a handler added after Start. The caller holds e.mu.
func (e *Engine) claimHandledNamespaces() {
	if e.worker == nil || len(e.cfg.Namespaces) > 0 {
		return
	}
	for _, t := range e.orch.Templates().Loaded() {
		if !e.namespaces[t.Namespace] && e.handlesAny(t) {
			e.namespaces[t.Namespace] = true
			e.worker.AddQueues(store.WorkerQueue(t.Namespace))
			e.relisten()
		}
	}
}

// Start runs the orchestrator and a worker for this process's handlers.
// It returns once they are running; Stop ends them.
func (e *Engine) Start(ctx context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return errors.New("tasker: Start on a closed engine")
	}
	if e.started {
		return errors.New("tasker: engine already started")
	}
	if len(e.cfg.Namespaces) == 0 {
		// Claim only namespaces this process has handlers for, so that
		// engines serving different workflows can share a database
		// without failing each other's steps as handler_not_found.
		rows, err := e.driver.Reader().TemplateList(ctx, store.TemplateListParams{})
		if err != nil {
			return fmt.Errorf("tasker: start: %w", err)
		}
		for _, r := range rows {
			if e.namespaces[r.Namespace] {
				continue
			}
			t, err := e.orch.Templates().Get(ctx, r.Namespace, r.Name, r.Version)
			if err != nil {
				e.log.Warn("skip unreadable template", "namespace", r.Namespace, "name", r.Name, "version", r.Version, "error", err)
				continue
			}
			if e.handlesAny(t) {
				e.namespaces[r.Namespace] = true
			}
		}
	}
	queues := make([]string, 0, len(e.namespaces))
	for ns := range e.namespaces {
		queues = append(queues, store.WorkerQueue(ns))
	}
	sort.Strings(queues)
	wcfg := worker.Config{
		Owner: "worker-" + e.id, Queues: queues, Concurrency: e.cfg.Concurrency,
		CompletionBuffer: e.cfg.CompletionBuffer, CompletionLinger: e.cfg.CompletionLinger, Prefetch: e.cfg.prefetch(),
		StepLease:      e.cfg.StepLease,
		DefaultTimeout: e.cfg.DefaultStepTimeout, PollInterval: e.cfg.queuePollInterval(), Logger: e.log,
		Monitors: e.monitors, CompleteAndClaim: e.orch.CompleteAndClaim, External: e.cfg.externalConfig(),
		Fallback: func(ctx context.Context, comps []store.StepCompletion) ([]error, error) {
			refused, err := orchestration.ForwardCompletions(ctx, e.driver, comps)
			if err == nil {
				e.orch.WakeResults()
			}
			return refused, err
		},
	}
	var w *worker.Worker
	switch {
	case !e.cfg.hasRole(RoleWorker):
	case !e.cfg.hasRole(RoleOrchestrator):
		// No orchestrator here to process results inline: record them and
		// queue them for the orchestrator processes.
		wcfg.CompleteAndClaim, wcfg.Fallback = nil, nil
		w = worker.New(e.driver, e.resolve, e.forwardCompletions, fastEvents{e}, wcfg)
	default:
		w = worker.New(e.driver, e.resolve, e.orch.CompleteSteps, fastEvents{e}, wcfg)
	}
	if err := e.events.Start(ctx); err != nil {
		return err
	}
	if e.cfg.hasRole(RoleOrchestrator) {
		if err := e.orch.Start(ctx); err != nil {
			return err
		}
	}
	if w != nil {
		if err := w.Start(ctx); err != nil {
			_ = e.orch.Stop(ctx)
			return err
		}
	}
	e.worker, e.started = w, true
	e.startListening(ctx)
	return nil
}

// forwardCompletions is a worker-only process's completer: it records
// results and queues them for whichever orchestrator claims them.
func (e *Engine) forwardCompletions(ctx context.Context, comps []store.StepCompletion) ([]error, error) {
	return orchestration.ForwardCompletions(ctx, e.driver, comps)
}

// Stop drains the engine gracefully: the worker stops claiming (a claim
// already under way finishes, and its steps run), handlers in flight finish
// within ctx's deadline and their results are written, then the
// orchestrator stops. Steps still running past the deadline, or taken by
// a worker claim the deadline cut off, are left to their leases and run
// again later, the attempt counted as failed; nothing is lost. An
// orchestration transaction (a result's, a create's) that was committing
// when the deadline passed is let finish rather than cut off, since its
// outcome would be unknown.
func (e *Engine) Stop(ctx context.Context) error {
	e.mu.Lock()
	w, started := e.worker, e.started
	e.started = false
	e.mu.Unlock()
	if !started {
		return nil
	}
	e.stopListening()
	var werr error
	if w != nil {
		werr = w.Stop(ctx)
	}
	// The orchestrator's actors stop within one transaction, and the fast
	// bus holds only events already published; give them a budget of their
	// own so a drain that used up ctx does not leave them running under a
	// closing database.
	octx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	everr := e.events.Stop(octx)
	oerr := e.orch.Stop(octx)
	return errors.Join(werr, everr, oerr)
}

// Close stops the engine if needed (with a 30s drain) and closes the store.
// A transaction whose claim and COMMIT were already on their way to the
// database when its caller gave up is let finish first, for up to 30s
// more if the database does not answer (see Stop).
func (e *Engine) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	serr := e.Stop(ctx)
	e.mu.Lock()
	e.closed = true
	e.mu.Unlock()
	e.polls.close()
	return errors.Join(serr, e.driver.Close())
}

// resolve prepares a claimed step for its handler.
func (e *Engine) resolve(ctx context.Context, c *store.ClaimedStep) (worker.Prepared, error) {
	e.mu.Lock()
	h, ok := e.handlers[c.Callable]
	external := e.external[c.Callable]
	e.mu.Unlock()
	if !ok && !external {
		return worker.Prepared{}, &worker.HandlerNotFoundError{Callable: c.Callable}
	}
	t, err := e.orch.Templates().Get(ctx, c.Namespace, c.TaskName, c.Version)
	if err != nil {
		return worker.Prepared{}, err
	}
	def, ok := t.Step(c.StepName)
	if !ok {
		return worker.Prepared{}, fmt.Errorf("template %s has no step %q", t.Key(), c.StepName)
	}
	if external {
		return e.prepareExternal(ctx, c, t, def)
	}
	sc := &StepContext{
		TaskUUID: c.TaskUUID, StepUUID: c.StepUUID, StepName: c.StepName, Namespace: c.Namespace,
		TaskName: c.TaskName, TaskVersion: c.Version, Attempt: c.Attempt, MaxAttempts: c.MaxAttempts,
		Method: def.Handler.Method, taskContext: c.TaskContext, handlerConfig: def.Handler.Initialization,
		ancestors: e.ancestors(t, c.StepName), deps: &depCache{reader: e.driver.Reader()},
	}
	return worker.Prepared{
		Handler: func(ctx context.Context) (any, error) {
			sc.deps.ctx = ctx
			return h.Call(ctx, sc)
		},
		Timeout: time.Duration(def.TimeoutSeconds) * time.Second,
	}, nil
}

// ancestors returns the set of a template step's ancestors, computed once
// per template version and step.
func (e *Engine) ancestors(t *template.Template, step string) map[string]bool {
	key := t.Key() + "\x00" + step
	if v, ok := e.ancestorSets.Load(key); ok {
		return v.(map[string]bool)
	}
	// Walk the template's dependencies from the step: each step costs its
	// own ancestry, not a pass over the whole template, which matters
	// when thousands of siblings each ask once.
	set := map[string]bool{}
	var queue []string
	if def, ok := t.Step(step); ok {
		queue = append(queue, def.Dependencies...)
	}
	for len(queue) > 0 {
		n := queue[0]
		queue = queue[1:]
		if set[n] || n == step {
			continue
		}
		set[n] = true
		if def, ok := t.Step(n); ok {
			queue = append(queue, def.Dependencies...)
		}
	}
	e.ancestorSets.Store(key, set)
	return set
}

// CreateTask creates a task from a template and enqueues its ready steps,
// in one transaction. It returns ErrTemplateNotFound, ErrInvalidContext,
// ErrIdempotencyKeyRequired or ErrDuplicateTask (errors.Is) for requests it
// refuses; nothing is stored then. Concurrent calls may share a
// transaction (see createQueue); each is answered as if written alone. A
// call whose ctx ends while a shared transaction with its task is being
// written returns ctx's error, and its task may still be created, as
// after any cancellation once a write was sent.
func (e *Engine) CreateTask(ctx context.Context, req TaskRequest) (*Task, error) {
	p, err := createParams(req)
	if err != nil {
		return nil, err
	}
	return e.creates.create(ctx, p)
}

// createOne writes one task in a transaction of its own.
func (e *Engine) createOne(ctx context.Context, p orchestration.CreateTaskParams) (*Task, error) {
	var (
		row *store.TaskRow
		sum orchestration.Summary
	)
	err := e.createWithClaim(ctx, func(claim store.StepsClaimParams) ([]store.ClaimedStep, error) {
		var claimed []store.ClaimedStep
		var err error
		row, _, sum, claimed, err = e.orch.CreateTaskAndClaim(ctx, p, claim)
		return claimed, err
	})
	if err != nil {
		return nil, err
	}
	return taskFrom(row, sum), nil
}

// createParams turns a request into the orchestrator's parameters.
func createParams(req TaskRequest) (orchestration.CreateTaskParams, error) {
	raw, err := marshalContext(req.Context)
	if err != nil {
		return orchestration.CreateTaskParams{}, err
	}
	return orchestration.CreateTaskParams{
		Namespace: req.Namespace, Name: req.Name, Version: req.Version, Context: raw,
		IdempotencyKey: req.IdempotencyKey, Initiator: req.Initiator, SourceSystem: req.SourceSystem,
		Reason: req.Reason, Tags: req.Tags, Priority: req.Priority,
	}, nil
}

// createWithClaim runs a creating transaction. A started worker takes the
// new tasks' first steps in that transaction (see worker.Handoff) instead
// of being woken to claim them in another; without one, create gets a
// claim for nothing.
func (e *Engine) createWithClaim(ctx context.Context, create func(store.StepsClaimParams) ([]store.ClaimedStep, error)) error {
	e.mu.Lock()
	w := e.worker
	e.mu.Unlock()
	if w == nil {
		_, err := create(store.StepsClaimParams{})
		return err
	}
	return w.Handoff(ctx, create)
}

func marshalContext(v any) (json.RawMessage, error) {
	switch c := v.(type) {
	case nil:
		return nil, nil
	case json.RawMessage:
		return c, nil
	case []byte:
		return json.RawMessage(c), nil
	case string:
		return json.RawMessage(c), nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("%w: cannot marshal to JSON: %w", ErrInvalidContext, err)
	}
	return b, nil
}

// GetTask returns a task's state, execution status and step counts.
func (e *Engine) GetTask(ctx context.Context, taskUUID string) (*Task, error) {
	row, _, sum, err := e.orch.TaskStatus(ctx, taskUUID)
	if err != nil {
		return nil, err
	}
	return taskFrom(row, sum), nil
}

// taskFrom builds a Task from its row and the readiness summary over its
// steps (whose Total is the number of steps).
func taskFrom(row *store.TaskRow, sum orchestration.Summary) *Task {
	t := &Task{
		UUID: row.UUID, Namespace: row.Namespace, Name: row.Name, Version: row.Version, State: row.State,
		ExecutionStatus: string(sum.Status), Context: row.Context, Initiator: row.Initiator,
		SourceSystem: row.SourceSystem, Reason: row.Reason, Tags: row.Tags, Priority: row.Priority,
		TotalSteps: sum.Total, CompletedSteps: sum.Complete, FailedSteps: sum.Errored, InProgressSteps: sum.InFlight,
		CreatedAt: row.CreatedAt, UpdatedAt: row.UpdatedAt, CompletedAt: row.CompletedAt,
	}
	t.PendingSteps = t.TotalSteps - sum.Complete - sum.Errored - sum.InFlight - sum.Cancelled
	if t.TotalSteps > 0 {
		t.CompletionPercentage = 100 * float64(sum.Complete) / float64(t.TotalSteps)
	}
	return t
}

// TaskSteps returns a task's steps in template order, with their results,
// last errors and readiness.
func (e *Engine) TaskSteps(ctx context.Context, taskUUID string) ([]Step, error) {
	_, rows, sum, err := e.orch.TaskStatus(ctx, taskUUID)
	if err != nil {
		return nil, err
	}
	names := make(map[string]string, len(rows))
	for _, r := range rows {
		names[r.UUID] = r.Name
	}
	out := make([]Step, len(rows))
	for i, r := range rows {
		rd := sum.Steps[r.UUID]
		s := Step{
			UUID: r.UUID, Name: r.Name, State: r.State, Attempts: r.Attempts, MaxAttempts: r.MaxAttempts,
			Retryable: r.Retryable, Callable: r.Callable, Result: r.Result,
			Ready: rd.Ready, DependenciesSatisfied: rd.DependenciesSatisfied, RetryEligible: rd.RetryEligible,
			NextRetryAt: r.NextRetryAt, BlockedReason: rd.BlockedReason,
			CreatedAt: r.CreatedAt, UpdatedAt: r.UpdatedAt, LastAttemptedAt: r.LastAttemptedAt, CompletedAt: r.CompletedAt,
		}
		for _, p := range r.Parents {
			s.Dependencies = append(s.Dependencies, names[p])
		}
		sort.Strings(s.Dependencies)
		if len(r.Error) > 0 {
			var info store.StepErrorInfo
			if err := json.Unmarshal(r.Error, &info); err == nil {
				s.Error = &StepError{Message: info.Message, Type: info.Type, Retryable: info.Retryable}
			} else {
				s.Error = &StepError{Message: string(r.Error)}
			}
		}
		out[i] = s
	}
	return out, nil
}

// TaskTransitions returns a task's recorded state changes in order.
func (e *Engine) TaskTransitions(ctx context.Context, taskUUID string) ([]Transition, error) {
	rows, err := e.driver.Reader().TaskTransitions(ctx, store.TaskTransitionsParams{UUID: taskUUID})
	return transitions(rows), err
}

// StepTransitions returns a step's recorded state changes in order.
func (e *Engine) StepTransitions(ctx context.Context, stepUUID string) ([]Transition, error) {
	rows, err := e.driver.Reader().StepTransitions(ctx, store.StepTransitionsParams{UUID: stepUUID})
	return transitions(rows), err
}

func transitions(rows []store.TransitionRow) []Transition {
	out := make([]Transition, len(rows))
	for i, r := range rows {
		out[i] = Transition{From: r.From, To: r.To, Event: r.Event, Metadata: r.Metadata, SortKey: r.SortKey, CreatedAt: r.CreatedAt}
	}
	return out
}

// WaitTask blocks until the task reaches a terminal state (complete, error,
// cancelled, resolved_manually) or blocked_by_failures, and returns it. It
// honours ctx. In a started engine it wakes on the commit that settles the
// task. When another process settles it, the engine's poller finds it
// (see waitPoller): at once when that process's announcement arrives
// (PostgreSQL, a started engine), else at its next read.
func (e *Engine) WaitTask(ctx context.Context, taskUUID string) (*Task, error) {
	ch := make(chan taskSignal, 1)
	e.waitMu.Lock()
	if e.waiters[taskUUID] == nil {
		e.waiters[taskUUID] = map[chan taskSignal]struct{}{}
	}
	e.waiters[taskUUID][ch] = struct{}{}
	e.waitMu.Unlock()
	defer func() {
		e.waitMu.Lock()
		delete(e.waiters[taskUUID], ch)
		if len(e.waiters[taskUUID]) == 0 {
			delete(e.waiters, taskUUID)
		}
		e.waitMu.Unlock()
	}()
	e.polls.add(taskUUID)
	defer e.polls.remove(taskUUID)
	// announced is the state the last wake-up announced (empty when the
	// poller could not tell). The task row alone says whether the task is
	// settled, and its steps, which may be thousands, are read once it is;
	// when the wake-up already says so, both are read at once, which saves
	// a round trip on the way out of every WaitTask.
	var announced state.TaskState
	var snap *orchestration.TaskSnapshot
	for {
		// A wake-up from this process's own commit that settled the task
		// carries the task as committed: nothing to read.
		if announced.Settled() && snap != nil {
			row := snap.Row
			row.Context, row.Tags = bytes.Clone(row.Context), slices.Clone(row.Tags)
			return taskFrom(&row, snap.Summary), nil
		}
		var early *stepsRead
		if announced.Settled() {
			early = e.readSteps(ctx, taskUUID)
		}
		cur, err := e.driver.Reader().TaskGet(ctx, store.TaskGetParams{UUID: taskUUID})
		if err != nil && early != nil {
			<-early.done
		}
		if errors.Is(err, store.ErrNotFound) {
			return nil, fmt.Errorf("%w: %s", ErrTaskNotFound, taskUUID)
		}
		if err != nil {
			return nil, err
		}
		if state.TaskState(cur.State).Settled() {
			// The row just read is the one that shows the task settled:
			// only its steps remain to be read, if they are not yet.
			if early == nil {
				early = e.readSteps(ctx, taskUUID)
			}
			<-early.done
			if early.err != nil {
				return nil, early.err
			}
			return taskFrom(cur, early.sum), nil
		}
		if early != nil {
			<-early.done // the task moved on again: the steps read are moot
		}
		select {
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		case sig := <-ch:
			announced, snap = sig.state, sig.snap
		}
	}
}

// stepsRead is a read of a task's steps, for their readiness summary,
// running beside other work.
type stepsRead struct {
	done chan struct{}
	sum  orchestration.Summary
	err  error
}

func (e *Engine) readSteps(ctx context.Context, taskUUID string) *stepsRead {
	r := &stepsRead{done: make(chan struct{})}
	go func() {
		defer close(r.done)
		_, r.sum, r.err = e.orch.StepsStatus(ctx, taskUUID)
	}()
	return r
}

// taskSignal is what wakes a WaitTask: the task's new state and, when the
// commit that settled it was this process's and knew all of its steps, the
// task as committed (see orchestration.TaskSnapshot).
type taskSignal struct {
	state state.TaskState
	snap  *orchestration.TaskSnapshot
}

// signalTask wakes the task's waiters with its new state. A waiter that
// has not taken the previous signal gets the newest one instead.
func (e *Engine) signalTask(taskUUID string, sig taskSignal) {
	e.waitMu.Lock()
	defer e.waitMu.Unlock()
	for ch := range e.waiters[taskUUID] {
		select {
		case ch <- sig:
		default:
			select {
			case <-ch:
			default:
			}
			select {
			case ch <- sig:
			default:
			}
		}
	}
}

// CancelTask cancels a task that has not finished: every step that is not
// finished is cancelled, and queued work for it is withdrawn.
func (e *Engine) CancelTask(ctx context.Context, taskUUID string) (*Task, error) {
	if _, err := e.orch.CancelTask(ctx, taskUUID, "", ""); err != nil {
		return nil, err
	}
	return e.GetTask(ctx, taskUUID)
}

// StepAction is an operator's manual action on a step.
type StepAction string

// Manual step actions.
const (
	// ResetForRetry puts a step in error back to pending with its attempts
	// cleared, so it runs again.
	ResetForRetry StepAction = "reset_for_retry"
	// ResolveManually marks a step as resolved without a result; its
	// dependents may run.
	ResolveManually StepAction = "resolve_manually"
	// CompleteManually completes a step with an operator-supplied result.
	CompleteManually StepAction = "complete_manually"
)

// StepActionRequest describes a manual step action.
type StepActionRequest struct {
	TaskUUID, StepUUID string
	Action             StepAction
	// Result is the step's result for CompleteManually, marshalled to JSON.
	Result any
	// Actor and Reason are recorded in the step's history.
	Actor, Reason string
}

// ApplyStepAction applies an operator's action to a step and re-evaluates
// its task in the same transaction, so a task that was blocked by the step
// moves on (leaving blocked_by_failures when nothing blocks it any more).
func (e *Engine) ApplyStepAction(ctx context.Context, req StepActionRequest) (*Step, error) {
	var result json.RawMessage
	if req.Result != nil {
		b, err := json.Marshal(req.Result)
		if err != nil {
			return nil, fmt.Errorf("tasker: step result for %s cannot be marshalled to JSON: %w", req.StepUUID, err)
		}
		result = b
	}
	if _, err := e.orch.ApplyStepAction(ctx, orchestration.StepActionParams{
		TaskUUID: req.TaskUUID, StepUUID: req.StepUUID, Action: orchestration.StepAction(req.Action),
		Result: result, Actor: req.Actor, Reason: req.Reason,
	}); err != nil {
		return nil, err
	}
	steps, err := e.TaskSteps(ctx, req.TaskUUID)
	if err != nil {
		return nil, err
	}
	for i := range steps {
		if steps[i].UUID == req.StepUUID {
			return &steps[i], nil
		}
	}
	return nil, fmt.Errorf("%w: %s", ErrStepNotFound, req.StepUUID)
}

// ChannelStats is a snapshot of one bounded channel's monitor.
type ChannelStats struct {
	Name                    string
	Capacity, Depth         int
	Saturation              float64
	Sent, Received, Dropped uint64
	BlockedSends            uint64
	BlockedTime             time.Duration
	MaxDepth                int
	Level                   string // healthy, degraded or critical
}

// ChannelStats returns the monitors of the engine's bounded channels.
func (e *Engine) ChannelStats() []ChannelStats {
	snap := e.monitors.Snapshot()
	out := make([]ChannelStats, len(snap))
	for i, s := range snap {
		out[i] = ChannelStats{Name: s.Name, Capacity: s.Capacity, Depth: s.Depth, Saturation: s.Saturation,
			Sent: s.Sent, Received: s.Received, Dropped: s.Dropped, BlockedSends: s.BlockedSends,
			BlockedTime: s.BlockedTime, MaxDepth: s.MaxDepth, Level: s.Level.String()}
	}
	return out
}

func marshalOrNil(v any) json.RawMessage {
	if v == nil {
		return nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil
	}
	return b
}
