// Package tasker is a workflow orchestration engine: it runs DAGs of steps
// declared in YAML task templates, with Go handlers, on an embedded SQLite
// file or (in cluster mode) a shared PostgreSQL.
//
// A minimal program opens an engine, registers a template and its
// handlers, starts the engine and creates tasks:
//
//	eng, err := tasker.Open(ctx, tasker.Config{DatabaseURL: "sqlite://app.db"})
//	...
//	err = eng.RegisterTemplate(ctx, yamlDoc)
//	eng.Handle("orders.charge", tasker.HandlerFunc(charge))
//	err = eng.Start(ctx)
//	task, err := eng.CreateTask(ctx, tasker.TaskRequest{Namespace: "orders", Name: "checkout", Context: input})
//	task, err = eng.WaitTask(ctx, task.UUID)
//
// CreateTask, GetTask, WaitTask and TaskSteps also work on an engine that
// was never started, so a process can act as a client of engines that run
// elsewhere on the same database.
package tasker

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/tasker-go/tasker/internal/orchestration"
	"github.com/tasker-go/tasker/state"
	"github.com/tasker-go/tasker/store/postgres"
	"github.com/tasker-go/tasker/template"
)

// Errors callers tell apart with errors.Is.
var (
	// ErrDuplicateTask is returned by CreateTask when a task with the same
	// identity exists (see the template's identity_strategy).
	ErrDuplicateTask = orchestration.ErrDuplicateTask
	// ErrTemplateNotFound is returned when no template matches a request's
	// namespace, name and version.
	ErrTemplateNotFound = orchestration.ErrTemplateNotFound
	// ErrInvalidContext is returned when a task context is not a JSON object
	// or fails the template's input_schema.
	ErrInvalidContext = orchestration.ErrInvalidContext
	// ErrIdempotencyKeyRequired is returned for a template with
	// identity_strategy caller_provided when no IdempotencyKey is given.
	ErrIdempotencyKeyRequired = orchestration.ErrIdempotencyKeyRequired
	// ErrTaskNotFound is returned for an unknown task UUID.
	ErrTaskNotFound = orchestration.ErrTaskNotFound
	// ErrStepNotFound is returned for an unknown step UUID.
	ErrStepNotFound = orchestration.ErrStepNotFound
	// ErrTaskFinished is returned when cancelling or changing a finished task.
	ErrTaskFinished = orchestration.ErrTaskFinished
	// ErrInvalidTemplate is matched by template validation errors.
	ErrInvalidTemplate = template.ErrInvalidTemplate
	// ErrIllegalTransition is matched by a manual action that the step's
	// state does not allow.
	ErrIllegalTransition = state.ErrIllegalTransition
)

// Config configures an Engine. Every field is optional; zero values take the
// documented defaults, and Open rejects invalid values naming the field.
type Config struct {
	// DatabaseURL selects the store: "sqlite:///abs/path.db",
	// "sqlite://relative.db", or "postgres://…" ("postgresql://…"). Empty means the SQLite
	// file ./tasker.db.
	DatabaseURL string

	// Logger receives structured logs. Default slog.Default().
	Logger *slog.Logger

	// Concurrency is how many step handlers run at once in this process.
	// Default 10.
	Concurrency int
	// CompletionBuffer is the capacity of the worker's completion channel.
	// Default 100.
	CompletionBuffer int
	// CompletionLinger is how long the worker may hold a batch of results
	// for a step of the same task that it is still running, so that
	// sibling steps finishing together (a diamond's branches) are recorded
	// and evaluated in one transaction. It never waits for other tasks'
	// results. Default 2ms; negative disables it.
	CompletionLinger time.Duration
	// Prefetch is the most steps the worker may claim beyond Concurrency.
	// They wait for a free handler (their leases heartbeated meanwhile), so
	// that handlers are not idle while the next claim commits, and claims
	// come in fewer, larger transactions. The depth used follows the
	// handlers: Concurrency steps (or Prefetch, if lower) while handlers
	// take about as long as a claim, deeper as they get faster than a
	// claim, up to Prefetch; slow handlers so never hold many steps that
	// another worker could run. A prefetched step has left the queue, so a
	// higher-priority step enqueued after it runs after it: disable
	// prefetch where strict priority order matters more than throughput.
	// Default 8 × Concurrency; negative disables it.
	Prefetch int
	// Namespaces limits the worker to these namespaces. Default: every
	// namespace with a registered template that has a step whose callable
	// this process handles.
	Namespaces []string
	// StepLease is how long a claimed step stays owned by its worker without
	// a heartbeat; a step whose worker died is retried after it. It is also
	// how long an orchestrator holds a batch of queued results, so results
	// held by an orchestrator that died are processed by another after it.
	// Default 30s.
	StepLease time.Duration
	// DefaultStepTimeout bounds an attempt of a step whose template sets no
	// timeout_seconds. Default 5m.
	DefaultStepTimeout time.Duration
	// PollInterval is how often the engine looks for work that no in-process
	// signal announced (work from other processes, due retries, expired
	// leases). Default 500ms.
	PollInterval time.Duration
	// DeploymentMode chooses how a started engine learns about work that
	// other processes committed: DeploymentHybrid ("hybrid", the default)
	// listens for PostgreSQL notifications, sent in the transaction that
	// queues the work, and polls every PollInterval as a fallback;
	// DeploymentPollingOnly ("polling_only") only polls;
	// DeploymentEventDrivenOnly ("event_driven_only") relies on
	// notifications and polls its queues only every 30s (or PollInterval if
	// longer) and after each reconnection. A lost listener connection is
	// reopened with backoff, and the queues are checked once it is back.
	// SQLite has no notifications: hybrid polls there, and
	// event_driven_only is refused.
	DeploymentMode DeploymentMode
	// RetryJitter spreads retry delays by up to ±this fraction. Default
	// 0.1; a negative value disables jitter.
	RetryJitter float64

	// ExternalCapacity bounds how many steps of HandleExternal callables
	// wait in the external channel at once (handed out or not); further
	// steps wait for room. Each also occupies one unit of Concurrency until
	// it is completed. Default 100.
	ExternalCapacity int
	// ExternalCompletionTimeout is how long an external step may stay
	// uncompleted before it fails as a retryable external_timeout; a
	// step's shorter timeout_seconds takes precedence. Default 5m.
	ExternalCompletionTimeout time.Duration
	// ExternalStarvationThreshold is the age past which an uncompleted
	// external step is logged and counted as starved. Default 10s.
	ExternalStarvationThreshold time.Duration
	// ExternalCompletionSendTimeout bounds how long ExternalChannel.Complete
	// waits for room in a full completion channel. Default 10s.
	ExternalCompletionSendTimeout time.Duration
	// ExternalCallbackTimeout bounds the publishing of an external step's
	// fast domain events, which runs in the background after Complete.
	// Default 30s.
	ExternalCallbackTimeout time.Duration

	// EventRetention is how long delivered durable domain events are kept.
	// Default 72h.
	EventRetention time.Duration
	// EventFastBuffer is the capacity of the in-process bus for fast
	// events; events beyond it are dropped and counted. Default 1024.
	EventFastBuffer int
	// EventPublisherTimeout bounds one call of a custom event publisher.
	// Default 1s.
	EventPublisherTimeout time.Duration
	// EventDeliveryTimeout bounds one call of a subscriber. Default 5s.
	EventDeliveryTimeout time.Duration

	// SQLiteSynchronous is SQLite's synchronous pragma, NORMAL (default)
	// or FULL.
	SQLiteSynchronous string
	// SQLiteBusyTimeout is how long SQLite waits for another process's
	// lock. Default 10s.
	SQLiteBusyTimeout time.Duration

	// PostgresSchema is the PostgreSQL schema that holds Tasker's tables;
	// Open creates it. A lower-case SQL identifier. Engines that share a
	// schema share their tasks. Default "tasker".
	PostgresSchema string
	// PostgresMaxConns is the size of each of the PostgreSQL driver's two
	// connection pools (transactions, and reads outside them), so an engine
	// opens at most twice this many connections. Default 10.
	PostgresMaxConns int

	// StalenessInterval is how often the staleness sweeper looks for tasks
	// stuck too long; a stale task gets a dead-letter entry (see ListDLQ)
	// and moves to error. Default 1m; negative disables the sweeper.
	StalenessInterval time.Duration
	// MaxTaskDuration is how long a task may exist before the sweeper
	// dead-letters it, for templates whose lifecycle sets no
	// max_duration_minutes. Default 24h; negative means no limit.
	MaxTaskDuration time.Duration
	// MaxStepsInProcess, MaxWaitingForDependencies and MaxWaitingForRetry
	// bound how long a task may stay in that state without progress (no
	// change of the task or of any of its steps), for templates whose
	// lifecycle sets no limit for it. Default 1h each; negative means no
	// limit.
	MaxStepsInProcess         time.Duration
	MaxWaitingForDependencies time.Duration
	MaxWaitingForRetry        time.Duration
	// MaxResultReads is how many times an orchestrator may read a queued
	// step result that fails processing before it moves the message to the
	// dead-letter queue (kind "message") instead of retrying it again.
	// Default 10; negative retries forever.
	MaxResultReads int

	// Roles chooses what Start runs in this process: RoleOrchestrator (the
	// actors that process queued results, run due retries and rescue
	// expired leases), RoleWorker (handlers for this process's namespaces),
	// or both. Empty means both. A worker-only process records results and
	// queues them for the orchestrators instead of processing them itself;
	// an orchestrator-only process claims no steps.
	Roles []Role
}

// Role is a part of the engine that Start may run; see Config.Roles.
type Role string

// The roles a process can take.
const (
	RoleOrchestrator Role = "orchestrator"
	RoleWorker       Role = "worker"
)

// hasRole reports whether Start runs r: every role when Roles is empty.
func (c *Config) hasRole(r Role) bool {
	if len(c.Roles) == 0 {
		return true
	}
	for _, have := range c.Roles {
		if have == r {
			return true
		}
	}
	return false
}

// prefetch is the worker's Prefetch: 8 × Concurrency (default 10) unless
// set; negative means none.
func (c *Config) prefetch() int {
	switch {
	case c.Prefetch < 0:
		return 0
	case c.Prefetch > 0:
		return c.Prefetch
	case c.Concurrency > 0:
		return 8 * c.Concurrency
	}
	return 80
}

func (c *Config) validate() error {
	var errs []error
	check := func(ok bool, field, format string, args ...any) {
		if !ok {
			errs = append(errs, fmt.Errorf("tasker: Config.%s %s", field, fmt.Sprintf(format, args...)))
		}
	}
	check(c.Concurrency >= 0, "Concurrency", "must not be negative, got %d", c.Concurrency)
	check(c.CompletionBuffer >= 0, "CompletionBuffer", "must not be negative, got %d", c.CompletionBuffer)
	check(c.StepLease >= 0, "StepLease", "must not be negative, got %s", c.StepLease)
	check(c.StepLease == 0 || c.StepLease >= 100*time.Millisecond, "StepLease", "must be at least 100ms, got %s", c.StepLease)
	check(c.DefaultStepTimeout >= 0, "DefaultStepTimeout", "must not be negative, got %s", c.DefaultStepTimeout)
	check(c.PollInterval >= 0, "PollInterval", "must not be negative, got %s", c.PollInterval)
	check(c.DeploymentMode.valid(), "DeploymentMode", "must be %s, %s or %s, got %q",
		DeploymentHybrid, DeploymentPollingOnly, DeploymentEventDrivenOnly, c.DeploymentMode)
	check(c.RetryJitter <= 1, "RetryJitter", "must be at most 1, got %g", c.RetryJitter)
	errs = append(errs, c.validateExternal()...)
	check(c.EventRetention >= 0, "EventRetention", "must not be negative, got %s", c.EventRetention)
	check(c.EventFastBuffer >= 0, "EventFastBuffer", "must not be negative, got %d", c.EventFastBuffer)
	check(c.EventPublisherTimeout >= 0, "EventPublisherTimeout", "must not be negative, got %s", c.EventPublisherTimeout)
	check(c.EventDeliveryTimeout >= 0, "EventDeliveryTimeout", "must not be negative, got %s", c.EventDeliveryTimeout)
	check(c.SQLiteBusyTimeout >= 0, "SQLiteBusyTimeout", "must not be negative, got %s", c.SQLiteBusyTimeout)
	check(c.PostgresMaxConns >= 0 && c.PostgresMaxConns <= math.MaxInt32, "PostgresMaxConns",
		"must be between 0 and %d, got %d", math.MaxInt32, c.PostgresMaxConns)
	if c.PostgresSchema != "" {
		if err := postgres.CheckSchemaName(c.PostgresSchema); err != nil {
			check(false, "PostgresSchema", "%v", err)
		}
	}
	for _, r := range c.Roles {
		check(r == RoleOrchestrator || r == RoleWorker, "Roles", "has unknown role %q (want %q or %q)", r, RoleOrchestrator, RoleWorker)
	}
	switch strings.ToUpper(c.SQLiteSynchronous) {
	case "", "NORMAL", "FULL":
	default:
		check(false, "SQLiteSynchronous", "must be NORMAL or FULL, got %q", c.SQLiteSynchronous)
	}
	return errors.Join(errs...)
}

// parseDatabaseURL returns the driver name and its address.
func parseDatabaseURL(raw string) (driver, addr string, err error) {
	if raw == "" {
		return "sqlite", "tasker.db", nil
	}
	switch {
	case strings.HasPrefix(raw, "sqlite://"):
		rest := strings.TrimPrefix(raw, "sqlite://")
		if i := strings.IndexByte(rest, '?'); i >= 0 {
			rest = rest[:i]
		}
		if rest == "" {
			return "", "", fmt.Errorf("tasker: Config.DatabaseURL %q names no file", raw)
		}
		p, err := url.PathUnescape(rest)
		if err != nil {
			return "", "", fmt.Errorf("tasker: Config.DatabaseURL %q: %w", raw, err)
		}
		return "sqlite", p, nil
	case strings.HasPrefix(raw, "postgres://"), strings.HasPrefix(raw, "postgresql://"):
		return "postgres", raw, nil
	}
	return "", "", fmt.Errorf("tasker: Config.DatabaseURL %q: unsupported scheme (want sqlite:// or postgres://)", raw)
}

// TaskRequest asks for a new task.
type TaskRequest struct {
	// Namespace, Name and Version select the template; an empty Version
	// selects the highest registered version.
	Namespace, Name, Version string
	// Context is the task's input, marshalled to JSON; it must be a JSON
	// object (nil means {}) valid against the template's input_schema.
	Context any
	// IdempotencyKey, when set, is the task's identity regardless of the
	// template's identity_strategy: a second request with the same key for
	// the same template fails with ErrDuplicateTask.
	IdempotencyKey string
	// Initiator, SourceSystem and Reason are recorded with the task.
	Initiator, SourceSystem, Reason string
	Tags                            []string
	// Priority orders claims: higher runs first.
	Priority int
}

// Task is a task's current state.
type Task struct {
	UUID, Namespace, Name, Version string
	// State is the task's lifecycle state (see the state package).
	State string
	// ExecutionStatus is what the steps allow next, by precedence:
	// blocked_by_failures (a step is in error), has_ready_steps,
	// processing, all_complete, waiting_for_dependencies. It describes
	// the steps, not the task's state: a cancelled task whose steps are
	// cancelled reports waiting_for_dependencies.
	ExecutionStatus string
	Context         json.RawMessage
	Initiator       string
	SourceSystem    string
	Reason          string
	Tags            []string
	Priority        int

	// Step counts.
	TotalSteps, CompletedSteps, FailedSteps, InProgressSteps, PendingSteps int
	// CompletionPercentage is the share of steps complete or resolved.
	CompletionPercentage float64

	CreatedAt, UpdatedAt time.Time
	CompletedAt          *time.Time
}

// Step is a workflow step's current state.
type Step struct {
	UUID, Name, State     string
	Attempts, MaxAttempts int
	Retryable             bool
	// Callable is the handler the step runs.
	Callable string
	// Result is the handler's returned value, as JSON.
	Result json.RawMessage
	// Error is the last failure, or nil. It is kept after a later attempt
	// succeeds; every failure is also in the step's history (StepTransitions).
	Error *StepError
	// Dependencies are the names of the steps this step depends on.
	Dependencies []string

	// Readiness, as of the read.
	Ready                 bool
	DependenciesSatisfied bool
	RetryEligible         bool
	NextRetryAt           *time.Time
	// BlockedReason says in plain words why a step that is not running is
	// not ready.
	BlockedReason string

	CreatedAt, UpdatedAt time.Time
	LastAttemptedAt      *time.Time
	CompletedAt          *time.Time
}

// StepError is a step's last failure.
type StepError struct {
	Message string
	// Type is handler_error, permanent_error, panic, timeout,
	// handler_not_found, result_not_serializable, lease_expired,
	// worker_stopping or external_timeout.
	Type      string
	Retryable bool
}

// Transition is one recorded state change of a task or step.
type Transition struct {
	From, To, Event string
	Metadata        json.RawMessage
	SortKey         int
	CreatedAt       time.Time
}

// DomainEvent is an event published about a step.
//
// Durable events (delivery_mode durable or broadcast) are written in the
// transaction that records the step's outcome and have a Seq, their
// position in the durable stream. Fast events (fast or broadcast) are
// published in-process after the result entered the completion pipeline;
// their Seq is 0.
type DomainEvent struct {
	ID, Name, TaskUUID, StepUUID, StepName, Namespace string
	// Payload is the step's result on success, or its error
	// ({"message", "type", "retryable", …}) on failure, as transformed by
	// the event's publisher.
	Payload json.RawMessage
	FiredAt time.Time

	Seq int64
	// Version is the task template's version; TaskName its name.
	Version, TaskName string
	// CorrelationID ties the events of one task together (the task UUID).
	CorrelationID string
	// Condition is the outcome that fired the event: success,
	// retryable_failure or permanent_failure.
	Condition    string
	DeliveryMode string
	Attempt      int
	// Error is the step's error on failure.
	Error json.RawMessage
	// Context is the task's context.
	Context json.RawMessage
	// Metadata is what the event's publisher added.
	Metadata map[string]any
}

// sqlitePath resolves a relative SQLite path against the working directory
// so that the stored path is stable.
func sqlitePath(p string) (string, error) {
	if filepath.IsAbs(p) {
		return p, nil
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	return filepath.Join(wd, p), nil
}
