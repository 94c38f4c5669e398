// Package store defines the storage driver interface that the engine runs on.
//
// A driver holds task state and the work queues in one database, so that the
// transitions that matter (enqueue, claim, complete, finalize) are single
// transactions. Every operation takes its own Params struct so that adding a
// field never breaks a call site. Drivers live in sub-packages (store/sqlite,
// store/postgres) and must pass the conformance suite in store/storetest.
package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Errors that callers tell apart. Drivers wrap them with context; test with
// errors.Is.
var (
	// ErrNotFound is returned when the addressed row does not exist.
	ErrNotFound = errors.New("not found")
	// ErrDuplicateIdentity is returned when a task with the same identity
	// hash already exists.
	ErrDuplicateIdentity = errors.New("duplicate task identity")
	// ErrTemplateConflict is returned when a template version is registered
	// again with different content.
	ErrTemplateConflict = errors.New("template version already registered with different content")
	// ErrStateConflict is returned when a compare-and-set transition finds the
	// row in another state than expected: another actor won the race.
	ErrStateConflict = errors.New("state changed concurrently")
	// ErrLeaseLost is returned when a queue message's lease token no longer
	// matches: the lease expired and the message was taken over or removed.
	ErrLeaseLost = errors.New("lease lost")
	// ErrUnavailable is wrapped around errors that mean the database cannot
	// be used right now (closed, locked past the busy timeout, disk full).
	ErrUnavailable = errors.New("database unavailable")
)

// Driver is a storage backend.
type Driver interface {
	Querier
	// Name is the driver's short name ("sqlite", "postgres").
	Name() string
	// Migrate applies the embedded migrations that are not applied yet.
	Migrate(ctx context.Context) error
	// Begin starts a read-write transaction. All writes go through one.
	Begin(ctx context.Context) (Tx, error)
	// Reader returns an executor for reads outside a transaction. Writes
	// through it fail.
	Reader() Executor
	// Close releases the driver's connections.
	Close() error
}

// Tx is a read-write transaction.
type Tx interface {
	Executor
	Commit() error
	Rollback() error
}

// Executor is the set of operations a driver offers. Multi-statement
// operations are atomic only inside a Tx.
type Executor interface {
	TemplateUpsert(ctx context.Context, p TemplateUpsertParams) (inserted bool, err error)
	TemplateGet(ctx context.Context, p TemplateGetParams) (*TemplateRow, error)
	TemplateList(ctx context.Context, p TemplateListParams) ([]TemplateRow, error)

	TaskInsert(ctx context.Context, p TaskInsertParams) error
	TaskGet(ctx context.Context, p TaskGetParams) (*TaskRow, error)
	TaskList(ctx context.Context, p TaskListParams) ([]TaskRow, error)
	TaskStates(ctx context.Context, p TaskStatesParams) (map[string]string, error)
	TaskTransition(ctx context.Context, p TaskTransitionParams) error
	TaskTransitions(ctx context.Context, p TaskTransitionsParams) ([]TransitionRow, error)

	StepsInsert(ctx context.Context, p StepsInsertParams) error
	StepGet(ctx context.Context, p StepGetParams) (*StepRow, error)
	StepsForTask(ctx context.Context, p StepsForTaskParams) ([]StepRow, error)
	StepResults(ctx context.Context, p StepResultsParams) (map[string]json.RawMessage, error)
	StepTransition(ctx context.Context, p StepTransitionParams) error
	StepTransitions(ctx context.Context, p StepTransitionsParams) ([]TransitionRow, error)
	StepsDueForRetry(ctx context.Context, p StepsDueForRetryParams) ([]string, error)

	QueueSend(ctx context.Context, p QueueSendParams) error
	QueueClaim(ctx context.Context, p QueueClaimParams) ([]QueueMessage, error)
	QueueExtend(ctx context.Context, p QueueExtendParams) error
	QueueDelete(ctx context.Context, p QueueDeleteParams) error
	QueueDeleteForSteps(ctx context.Context, p QueueDeleteForStepsParams) (int, error)
	QueueExpired(ctx context.Context, p QueueExpiredParams) ([]QueueMessage, error)
	QueueDepth(ctx context.Context, p QueueDepthParams) ([]QueueDepthRow, error)

	StepsClaim(ctx context.Context, p StepsClaimParams) ([]ClaimedStep, error)
	StepsComplete(ctx context.Context, p StepsCompleteParams) ([]error, error)

	EventsInsert(ctx context.Context, p EventsInsertParams) error
	EventsAfter(ctx context.Context, p EventsAfterParams) ([]EventRow, error)
	EventsPrune(ctx context.Context, p EventsPruneParams) (int, error)
	EventCursorGet(ctx context.Context, p EventCursorGetParams) (int64, error)
	EventCursorSet(ctx context.Context, p EventCursorSetParams) error
	EventCursors(ctx context.Context) ([]EventCursor, error)

	TasksStale(ctx context.Context, p TasksStaleParams) ([]StaleTask, error)
	DLQInsert(ctx context.Context, p DLQInsertParams) (int64, error)
	DLQGet(ctx context.Context, p DLQGetParams) (*DLQRow, error)
	DLQList(ctx context.Context, p DLQListParams) ([]DLQRow, error)
	DLQUpdate(ctx context.Context, p DLQUpdateParams) error
	DLQStats(ctx context.Context, p DLQStatsParams) ([]DLQStatRow, error)

	Incremental
}

// TemplateRow is a stored task template version. Versions are immutable.
type TemplateRow struct {
	Namespace, Name, Version string
	ContentHash              string
	Source                   []byte
	CreatedAt                time.Time
}

// TemplateUpsertParams registers a template version. Registering the same
// content again is a no-op (inserted=false); different content under the
// same key fails with ErrTemplateConflict.
type TemplateUpsertParams struct {
	Namespace, Name, Version string
	ContentHash              string
	Source                   []byte
	Now                      time.Time
}

// TemplateGetParams addresses one template version.
type TemplateGetParams struct{ Namespace, Name, Version string }

// TemplateListParams filters templates; empty fields match everything.
type TemplateListParams struct{ Namespace, Name string }

// TaskRow is a stored task.
type TaskRow struct {
	UUID, Namespace, Name, Version string
	State                          string
	Context                        json.RawMessage
	IdentityHash                   string
	Initiator, SourceSystem        string
	Reason                         string
	Tags                           []string
	Priority                       int
	CreatedAt, UpdatedAt           time.Time
	CompletedAt                    *time.Time
}

// TaskInsertParams creates a task row. An empty IdentityHash never collides.
type TaskInsertParams struct {
	UUID, Namespace, Name, Version string
	State                          string
	Context                        json.RawMessage
	IdentityHash                   string
	Initiator, SourceSystem        string
	Reason                         string
	Tags                           []string
	Priority                       int
	Now                            time.Time
	// StepCount is the number of steps the task is created with (0 if the
	// caller does not say). A driver may keep it to tell a large task
	// without counting its steps (CompleteAndLoadParams.LimitSteps).
	StepCount int
}

// TaskGetParams addresses a task. ForUpdate takes a row lock that serialises
// orchestrators working on the same task until the transaction ends (a no-op
// where the database already serialises writers).
type TaskGetParams struct {
	UUID      string
	ForUpdate bool
}

// TaskStatesParams names tasks whose states TaskStates reads, by UUID;
// tasks that do not exist are left out of its answer.
type TaskStatesParams struct {
	UUIDs []string
}

// NewLeaseToken is a fresh lease token: 32 random hex digits, as the
// drivers' claims make them.
func NewLeaseToken() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// ScanTaskStates reads TaskStates' answer from rows of (task_uuid, state),
// for the drivers.
func ScanTaskStates(rows interface {
	Next() bool
	Scan(dest ...any) error
	Err() error
}, n int) (map[string]string, error) {
	out := make(map[string]string, n)
	for rows.Next() {
		var id, st string
		if err := rows.Scan(&id, &st); err != nil {
			return nil, err
		}
		out[id] = st
	}
	return out, rows.Err()
}

// TaskListParams filters tasks. Empty fields match everything; Limit 0 means
// 100. Results are ordered newest first.
type TaskListParams struct {
	Namespace, Name string
	States          []string
	Limit           int
}

// TaskTransitionParams moves a task from From to To as a compare-and-set and
// records a history row. It fails with ErrStateConflict if the task is not in
// From.
type TaskTransitionParams struct {
	UUID     string
	From, To string
	Event    string
	Metadata json.RawMessage
	Now      time.Time
	// Deferred lets the driver send the transition later in the
	// transaction, with its next statement or its commit, instead of
	// waiting for it now. A state conflict (or a missing row) then fails
	// that statement or the commit with ErrStateConflict, aborting the
	// transaction. Set it only when the caller holds the task's row lock
	// and read From under it, so that a conflict is a bug, not a race.
	Deferred bool
	// Then continues the transition through further states in the same
	// write: the task goes from From straight to the last state, and the
	// history gets one row per step of the path, in order, all with
	// Metadata. A task that passes through initializing and
	// enqueuing_steps on its way to steps_in_process is updated once.
	Then []TaskHop
}

// TaskHop is a further step of a TaskTransitionParams path.
type TaskHop struct{ To, Event string }

// Path lists the transitions p records, in order, as from, to, event.
func (p TaskTransitionParams) Path() [][3]string {
	out := [][3]string{{p.From, p.To, p.Event}}
	for _, h := range p.Then {
		out = append(out, [3]string{out[len(out)-1][1], h.To, h.Event})
	}
	return out
}

// Final is the state p leaves the task in.
func (p TaskTransitionParams) Final() string {
	if len(p.Then) > 0 {
		return p.Then[len(p.Then)-1].To
	}
	return p.To
}

// TaskTransitionsParams lists a task's history.
type TaskTransitionsParams struct{ UUID string }

// TransitionRow is one applied transition, in order.
type TransitionRow struct {
	EntityUUID string
	From, To   string
	Event      string
	Metadata   json.RawMessage
	SortKey    int
	CreatedAt  time.Time
}

// StepRow is a stored workflow step.
type StepRow struct {
	UUID, TaskUUID, Name, Namespace string
	Position                        int
	Callable                        string
	State                           string
	Attempts, MaxAttempts           int
	Retryable                       bool
	Result                          json.RawMessage
	Error                           json.RawMessage
	NextRetryAt                     *time.Time
	LastAttemptedAt                 *time.Time
	CreatedAt, UpdatedAt            time.Time
	CompletedAt                     *time.Time
	// Parents are the step UUIDs this step depends on.
	Parents []string
}

// StepInsert is one step of a new task.
type StepInsert struct {
	UUID, Name  string
	Position    int
	Callable    string
	MaxAttempts int
	Retryable   bool
}

// Edge says that step To depends on step From.
type Edge struct{ From, To string }

// StepsInsertParams creates a task's steps (state pending) and edges.
// Every edge leads into one of Steps: a step gets all its parents when it
// is inserted, never later (a driver may record how many it has; see
// CheckEdges).
type StepsInsertParams struct {
	TaskUUID  string
	Namespace string
	Steps     []StepInsert
	Edges     []Edge
	Now       time.Time
}

// CheckEdges reports an edge of p that leads into a step p does not
// insert.
func (p StepsInsertParams) CheckEdges() error {
	ids := make(map[string]bool, len(p.Steps))
	for _, s := range p.Steps {
		ids[s.UUID] = true
	}
	for _, e := range p.Edges {
		if !ids[e.To] {
			return fmt.Errorf("insert steps of task %s: edge %s → %s leads into a step not inserted with it (a step gets all its parents when it is inserted)",
				p.TaskUUID, e.From, e.To)
		}
	}
	return nil
}

// StepGetParams addresses a step.
type StepGetParams struct{ UUID string }

// StepsForTaskParams lists a task's steps with their parents, ordered by
// position. WithoutPayloads leaves Result and Error nil, for callers that
// only need states (readiness), so that wide tasks with large results are
// cheap to evaluate.
type StepsForTaskParams struct {
	TaskUUID        string
	WithoutPayloads bool
}

// StepResultsParams reads the results of the named steps of a task (steps
// without a result are absent from the map).
type StepResultsParams struct {
	TaskUUID string
	Names    []string
}

// StepTransitionParams moves a step from From to To as a compare-and-set,
// applies the listed field changes and records a history row. It fails with
// ErrStateConflict if the step is not in From.
type StepTransitionParams struct {
	UUID     string
	From, To string
	Event    string
	Metadata json.RawMessage
	Now      time.Time

	// SetResult stores Result (nil clears it).
	SetResult bool
	Result    json.RawMessage
	// SetError stores Error (nil clears it).
	SetError bool
	Error    json.RawMessage
	// SetNextRetryAt stores NextRetryAt (nil clears it).
	SetNextRetryAt bool
	NextRetryAt    *time.Time
	// ResetAttempts sets attempts back to zero.
	ResetAttempts bool
	// DecrementAttempts gives back one attempt (never below zero): the
	// attempt was interrupted by a shutdown, not used by the handler.
	DecrementAttempts bool
	// Deferred: as TaskTransitionParams.Deferred; the caller holds the
	// lock of the step's task and read From under it.
	Deferred bool
}

// StepTransitionsParams lists a step's history.
type StepTransitionsParams struct{ UUID string }

// StepsDueForRetryParams finds tasks that have a step waiting for retry
// whose backoff has elapsed at Now. It returns task UUIDs, at most Limit.
// Settled tasks (terminal or blocked_by_failures) are skipped: a stale task
// moved to error may keep a waiting step, and only an operator moves it.
type StepsDueForRetryParams struct {
	Now   time.Time
	Limit int
}

// QueueMessage is a message in a queue.
type QueueMessage struct {
	ID         int64
	Queue      string
	TaskUUID   string
	StepUUID   string
	Payload    json.RawMessage
	LeaseToken string
	LeaseOwner string
	ReadCount  int
	EnqueuedAt time.Time
	LeaseUntil *time.Time
}

// QueueMessageInsert is a message to send.
type QueueMessageInsert struct {
	Queue     string
	TaskUUID  string
	StepUUID  string
	Payload   json.RawMessage
	Priority  int
	VisibleAt time.Time // zero: now
}

// QueueSendParams inserts messages.
type QueueSendParams struct {
	Messages []QueueMessageInsert
	Now      time.Time
}

// QueueClaimParams leases up to Limit visible messages from Queues, highest
// priority first, then oldest. Messages under an unexpired lease are never
// returned; messages whose lease expired are returned only with
// IncludeExpired.
type QueueClaimParams struct {
	Queues         []string
	Limit          int
	Lease          time.Duration
	Owner          string
	IncludeExpired bool
	Now            time.Time
}

// QueueExtendParams pushes a leased message's lease out to Now+Lease. It
// fails with ErrLeaseLost if the token does not match.
type QueueExtendParams struct {
	ID    int64
	Token string
	Lease time.Duration
	Now   time.Time
}

// QueueDeleteParams removes a message. With a Token, only if the lease still
// matches (else ErrLeaseLost); without, unconditionally (missing is not an
// error). With ExpiredBefore as well, only if the lease also expired before
// that time, so that a lease renewed meanwhile is not taken (else
// ErrLeaseLost).
type QueueDeleteParams struct {
	ID            int64
	Token         string
	ExpiredBefore time.Time
}

// QueueDeleteForStepsParams removes every message for the given steps.
type QueueDeleteForStepsParams struct{ StepUUIDs []string }

// QueueExpiredParams lists messages in Queues (all queues if empty) whose
// lease expired before Now, oldest first.
type QueueExpiredParams struct {
	Queues []string
	Now    time.Time
	Limit  int
}

// QueueDepthParams counts messages per queue.
type QueueDepthParams struct{ Now time.Time }

// QueueDepthRow is the depth of one queue.
type QueueDepthRow struct {
	Queue           string
	Visible, Leased int
	OldestEnqueued  time.Time
}

// StepsClaimParams claims up to Limit step messages from Queues for Owner in
// one operation: each message is leased, its step moves enqueued →
// in_progress with attempts+1 and a history row. Messages whose step is no
// longer enqueued (cancelled meanwhile) are deleted and skipped.
type StepsClaimParams struct {
	Queues []string
	Limit  int
	Lease  time.Duration
	Owner  string
	Now    time.Time
	// Start are steps the claiming transaction found ready and has not
	// enqueued: at most Limit, each bound for one of Queues. When none of
	// Queues holds a visible, unleased message, the claim takes them
	// first, directly: one write moves each from its From state to
	// in_progress, recording the enqueue and start transitions, and its
	// message is inserted already leased, which is what enqueueing it and
	// claiming it would leave. Otherwise they are enqueued (From →
	// enqueued, an unleased message) and the claim takes what waits
	// longest, by priority, as always. A Start step no longer in its From
	// state fails the claim with ErrStateConflict.
	Start []StepStart
}

// ClaimedStep is a step a worker now owns, with what its handler needs.
type ClaimedStep struct {
	Message                      QueueMessage
	StepUUID, TaskUUID, StepName string
	Namespace, TaskName, Version string
	Callable                     string
	Attempt, MaxAttempts         int
	TaskContext                  json.RawMessage
}

// StepCompletion is one handler outcome to record.
type StepCompletion struct {
	MessageID  int64
	LeaseToken string
	TaskUUID   string
	StepUUID   string
	Attempt    int
	Success    bool
	Result     json.RawMessage // on success
	Error      json.RawMessage // on failure
	Metadata   json.RawMessage // history metadata (duration, worker)
}

// StepsCompleteParams records handler outcomes: for each, if its message
// lease still matches and the step is in_progress on the same attempt, the
// step moves to enqueued_for_orchestration (success, storing the result and
// keeping the last failure in the error column) or
// enqueued_as_error_for_orchestration (failure, storing the error and
// clearing the result), a history row with event "succeed" or
// "fail_attempt" and the completion's metadata is written, and the message
// is deleted. The returned slice has one entry per completion:
// nil, or ErrLeaseLost when the completion was refused.
type StepsCompleteParams struct {
	Completions []StepCompletion
	Now         time.Time
}

// InTx runs fn in a transaction on d, committing if fn returns nil and
// rolling back otherwise.
func InTx(ctx context.Context, d Driver, fn func(tx Tx) error) error {
	_, err := InTxClaim(ctx, d, func(tx Tx) (StepsClaimParams, error) { return StepsClaimParams{}, fn(tx) })
	return err
}

// ClaimCommitter is a transaction that can send a claim of steps together
// with its COMMIT, in one round trip (see InTxClaim). ClaimAndCommit ends
// the transaction either way: committed with the claim, or rolled back.
type ClaimCommitter interface {
	ClaimAndCommit(ctx context.Context, p StepsClaimParams) ([]ClaimedStep, error)
}

// InTxClaim runs fn in a transaction, then claims the steps fn asks for
// as the transaction's last statement and commits: a worker's claim, or
// a transaction that hands the steps it made ready to a worker in this
// process. fn returns the claim (a zero Limit, or no queues, claims
// nothing). A driver whose transactions are ClaimCommitters sends the
// claim with the COMMIT; the others claim, then commit.
func InTxClaim(ctx context.Context, d Driver, fn func(tx Tx) (StepsClaimParams, error)) ([]ClaimedStep, error) {
	tx, err := d.Begin(ctx)
	if err != nil {
		return nil, err
	}
	p, err := fn(tx)
	if err != nil {
		_ = tx.Rollback()
		return nil, err
	}
	if p.Limit <= 0 || len(p.Queues) == 0 {
		return nil, tx.Commit()
	}
	if cc, ok := tx.(ClaimCommitter); ok {
		return cc.ClaimAndCommit(ctx, p)
	}
	claimed, err := tx.StepsClaim(ctx, p)
	if err != nil {
		_ = tx.Rollback()
		return nil, err
	}
	if err := tx.Commit(); err != nil {
		return nil, err
	}
	return claimed, nil
}

// InTxClaimDetached is InTxClaim for a caller whose context may end while
// its claim is on the way. ctx ends the transaction only until fn has
// returned; the claim and the COMMIT then run under detached, which only
// the caller's own bound ends. Cut off between the server's COMMIT and its
// answer, the claim would be committed while its caller saw an error, and
// the steps it took would stay leased with nobody running them until their
// leases ran out, at the cost of an attempt. If ctx has ended by the time
// fn returns, the transaction is rolled back with ctx's cause.
func InTxClaimDetached(ctx, detached context.Context, d Driver,
	fn func(tx Tx) (StepsClaimParams, error)) ([]ClaimedStep, error) {
	tctx, end := context.WithCancelCause(detached)
	defer end(nil)
	follow := context.AfterFunc(ctx, func() { end(context.Cause(ctx)) })
	defer follow()
	return InTxClaim(tctx, d, func(tx Tx) (StepsClaimParams, error) {
		p, err := fn(tx)
		if err != nil {
			return p, err
		}
		if !follow() {
			return p, context.Cause(ctx) // ctx ended before the claim was sent
		}
		return p, nil
	})
}

// StepErrorInfo is the JSON stored in a step's error column: the last
// failure of the step.
type StepErrorInfo struct {
	Message   string `json:"message"`
	Type      string `json:"type"`
	Retryable bool   `json:"retryable"`
	// RetryAfterMS is the handler's requested minimum delay before a retry.
	RetryAfterMS int64 `json:"retry_after_ms,omitempty"`
	Attempt      int   `json:"attempt,omitempty"`
}

// Error types recorded in StepErrorInfo.Type.
const (
	ErrorTypeHandler         = "handler_error"
	ErrorTypePermanent       = "permanent_error"
	ErrorTypePanic           = "panic"
	ErrorTypeTimeout         = "timeout"
	ErrorTypeHandlerNotFound = "handler_not_found"
	ErrorTypeUnserializable  = "result_not_serializable"
	ErrorTypeLeaseExpired    = "lease_expired"
	ErrorTypeWorkerStopping  = "worker_stopping"
	// ErrorTypeExternalTimeout is an external step whose foreign handler
	// did not complete it in time.
	ErrorTypeExternalTimeout = "external_timeout"
)

// Queue names.
const (
	// OrchestrationQueue carries step results to the orchestrators when the
	// worker that produced them does not run the orchestrator itself.
	OrchestrationQueue = "orchestration_step_results"
	workerQueuePrefix  = "worker_"
)

// WorkerQueue returns the queue that holds the steps of a namespace.
func WorkerQueue(namespace string) string { return workerQueuePrefix + namespace }

// IsWorkerQueue reports whether q is a namespace's step queue.
func IsWorkerQueue(q string) bool {
	return len(q) > len(workerQueuePrefix) && q[:len(workerQueuePrefix)] == workerQueuePrefix
}

// EventInsert is a durable domain event to store (the outbox).
type EventInsert struct {
	EventID  string
	Name     string
	TaskUUID string
	StepUUID string
	Payload  json.RawMessage
}

// EventsInsertParams writes durable events, normally in the transaction that
// records the step outcome they describe. Their sequence numbers follow
// commit order: an event committed later never gets a lower sequence than
// one already readable, so a reader that remembers the last sequence it saw
// never skips an event.
type EventsInsertParams struct {
	Events []EventInsert
	Now    time.Time
}

// EventRow is a stored durable event.
type EventRow struct {
	Seq       int64
	EventID   string
	Name      string
	TaskUUID  string
	StepUUID  string
	Payload   json.RawMessage
	CreatedAt time.Time
}

// EventsAfterParams reads up to Limit (default 100) events with a sequence
// above After, in sequence order.
type EventsAfterParams struct {
	After int64
	Limit int
}

// EventsPruneParams deletes events created before Before whose sequence is
// at most UpTo (0: no sequence bound). It returns how many were deleted.
type EventsPruneParams struct {
	Before time.Time
	UpTo   int64
}

// EventCursorGetParams reads a durable subscription's cursor: the sequence
// of the last event it acknowledged, 0 if it has none yet.
type EventCursorGetParams struct{ Subscription string }

// EventCursorSetParams moves a durable subscription's cursor forward to
// Position; a cursor never moves back.
type EventCursorSetParams struct {
	Subscription string
	Position     int64
	Now          time.Time
}

// EventCursor is a durable subscription's stored position.
type EventCursor struct {
	Subscription string
	Position     int64
	UpdatedAt    time.Time
}

// QueueNamespace returns the namespace of a step queue.
func QueueNamespace(q string) (string, bool) {
	if !IsWorkerQueue(q) {
		return "", false
	}
	return q[len(workerQueuePrefix):], true
}

// CompleteAndLoadParams describes the start of an orchestration
// transaction that applies handler outcomes: lock Tasks (in the order
// given: pass them sorted, as every orchestration transaction locks tasks
// in UUID order), apply Completions as StepsComplete does, and read the
// locked tasks and all their steps as they are after the completions.
type CompleteAndLoadParams struct {
	Tasks       []string
	Completions []StepCompletion
	Now         time.Time
	// LimitSteps, when set, leaves out the steps of every task that has
	// more than MaxSteps steps (see CompleteAndLoadResult.Large): the
	// caller reads what it needs of them through Incremental.
	LimitSteps bool
	MaxSteps   int
	// SettleSuccesses lets the driver move a successful completion straight
	// from in_progress to complete, recording both transitions (succeed,
	// then complete), when the caller would apply every success that way
	// in the same transaction anyway. A driver that does not is free to
	// leave successes in enqueued_for_orchestration; Settled says which it
	// moved.
	SettleSuccesses bool
	// ClaimQueues, when set, are the queues of the claim that will end the
	// transaction (see InTxClaim). A driver may look at them now and, if
	// they hold no unleased message and the transaction sends them nothing
	// afterwards, leave out the claim's search of the queues: only the
	// steps the claim is asked to start (StepsClaimParams.Start) are then
	// started, or enqueued should a backlog have appeared meanwhile (the
	// orchestrator then wakes the worker for them). A message another
	// transaction makes claimable meanwhile is the claim loop's, woken by
	// its announcement, as one made claimable just after the claim.
	ClaimQueues []string
}

// CompleteAndLoadResult is what CompleteAndLoad found.
type CompleteAndLoadResult struct {
	// Refused has one entry per completion, as StepsComplete returns.
	Refused []error
	// Tasks are the locked tasks by UUID.
	Tasks map[string]*TaskRow
	// Steps are each task's steps in template order. Result and Error may
	// be left empty, as StepsForTaskParams.WithoutPayloads allows.
	Steps map[string][]StepRow
	// Large holds the tasks whose steps were left out (LimitSteps).
	Large map[string]bool
	// Settled holds the steps whose successes were moved straight to
	// complete (SettleSuccesses).
	Settled map[string]bool
}

// SuccessSettler is implemented by transactions that can record a
// successful completion and move its step on to complete in one write
// (CompleteAndLoadParams.SettleSuccesses): StepsCompleteSettling is
// StepsComplete that does so, recording both transitions (succeed, then
// complete), and returns the steps it settled.
type SuccessSettler interface {
	StepsCompleteSettling(ctx context.Context, p StepsCompleteParams) ([]error, map[string]bool, error)
}

// StepStart is a step that the transaction claiming for a worker has
// just found ready (see StepsClaimParams.Start), with what its handler
// needs of its task.
type StepStart struct {
	UUID, TaskUUID string
	From           string // pending or waiting_for_retry
	Queue          string
	Priority       int
	// The step as the transaction read it (Attempts before this start),
	// and its task's name, version and context: what the ClaimedStep
	// carries, so that a store need not read it back.
	Name, Namespace, Callable string
	Attempts, MaxAttempts     int
	TaskName, Version         string
	TaskContext               json.RawMessage
}

// CompleteAndLoader is implemented by transactions that can run
// CompleteAndLoad in fewer round trips than its parts.
type CompleteAndLoader interface {
	CompleteAndLoad(ctx context.Context, p CompleteAndLoadParams) (*CompleteAndLoadResult, error)
}

// CompleteAndLoad locks p.Tasks, applies p.Completions and reads the tasks
// and their steps, in tx: through tx's own CompleteAndLoad if it has one,
// else through TaskGet, StepsComplete and StepsForTask. A task that does
// not exist fails it with ErrNotFound.
func CompleteAndLoad(ctx context.Context, tx Tx, p CompleteAndLoadParams) (*CompleteAndLoadResult, error) {
	if cl, ok := tx.(CompleteAndLoader); ok {
		return cl.CompleteAndLoad(ctx, p)
	}
	res := &CompleteAndLoadResult{Tasks: map[string]*TaskRow{}, Steps: map[string][]StepRow{}, Large: map[string]bool{}}
	for _, id := range p.Tasks {
		row, err := tx.TaskGet(ctx, TaskGetParams{UUID: id, ForUpdate: true})
		if err != nil {
			return nil, err
		}
		res.Tasks[id] = row
	}
	var err error
	comps := StepsCompleteParams{Completions: p.Completions, Now: p.Now}
	if sc, ok := tx.(SuccessSettler); ok && p.SettleSuccesses {
		res.Refused, res.Settled, err = sc.StepsCompleteSettling(ctx, comps)
	} else {
		res.Refused, err = tx.StepsComplete(ctx, comps)
	}
	if err != nil {
		return nil, err
	}
	for _, id := range p.Tasks {
		if p.LimitSteps {
			n, err := tx.StepsCount(ctx, StepsCountParams{TaskUUID: id, Limit: p.MaxSteps + 1})
			if err != nil {
				return nil, err
			}
			if n > p.MaxSteps {
				res.Large[id] = true
				continue
			}
		}
		steps, err := tx.StepsForTask(ctx, StepsForTaskParams{TaskUUID: id, WithoutPayloads: true})
		if err != nil {
			return nil, err
		}
		res.Steps[id] = steps
	}
	return res, nil
}
