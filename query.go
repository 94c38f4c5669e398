package tasker

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tasker-go/tasker/internal/worker"
	"github.com/tasker-go/tasker/store"
)

// ErrInvalidCursor is returned by ListTasks for a cursor it did not hand out.
var ErrInvalidCursor = errors.New("invalid cursor")

// TaskFilter selects and pages the tasks ListTasks returns. Empty fields
// match everything.
type TaskFilter struct {
	Namespace, Name string
	// States keeps tasks in any of these states.
	States []string
	// CreatedAfter and CreatedBefore bound the creation time (exclusive).
	CreatedAfter, CreatedBefore time.Time
	// Limit is the page size. Default 50.
	Limit int
	// Cursor continues a list from the NextCursor of the previous page.
	Cursor string
}

// TaskPage is one page of a task list.
type TaskPage struct {
	Tasks []Task
	// NextCursor continues the list; "" on the last page.
	NextCursor string
}

// ListTasks returns tasks newest first, one page at a time. A cursor stays
// valid while tasks are created: new tasks sort before it and never shift
// later pages.
func (e *Engine) ListTasks(ctx context.Context, f TaskFilter) (*TaskPage, error) {
	limit := f.Limit
	if limit <= 0 {
		limit = 50
	}
	p := store.TaskPageParams{Namespace: f.Namespace, Name: f.Name, States: f.States,
		CreatedAfter: f.CreatedAfter, CreatedBefore: f.CreatedBefore, Limit: limit + 1}
	if f.Cursor != "" {
		c, err := decodeTaskCursor(f.Cursor)
		if err != nil {
			return nil, err
		}
		p.After = c
	}
	rows, err := e.driver.TaskPage(ctx, p)
	if err != nil {
		return nil, fmt.Errorf("list tasks: %w", err)
	}
	page := &TaskPage{Tasks: make([]Task, 0, min(len(rows), limit))}
	if len(rows) > limit {
		rows = rows[:limit]
		last := rows[limit-1]
		page.NextCursor = encodeTaskCursor(store.TaskCursor{CreatedAt: last.CreatedAt, UUID: last.UUID})
	}
	for _, r := range rows {
		t, err := e.GetTask(ctx, r.UUID)
		if err != nil {
			return nil, fmt.Errorf("list tasks: %w", err)
		}
		page.Tasks = append(page.Tasks, *t)
	}
	return page, nil
}

// A task cursor is opaque to callers: base64url of "<unix micros>:<uuid>".
func encodeTaskCursor(c store.TaskCursor) string {
	return base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(c.CreatedAt.UnixMicro(), 10) + ":" + c.UUID))
}

func decodeTaskCursor(s string) (*store.TaskCursor, error) {
	raw, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("%w: not base64url", ErrInvalidCursor)
	}
	micros, id, ok := strings.Cut(string(raw), ":")
	if !ok || id == "" {
		return nil, fmt.Errorf("%w: malformed", ErrInvalidCursor)
	}
	n, err := strconv.ParseInt(micros, 10, 64)
	if err != nil {
		return nil, fmt.Errorf("%w: malformed time", ErrInvalidCursor)
	}
	return &store.TaskCursor{CreatedAt: time.UnixMicro(n).UTC(), UUID: id}, nil
}

// TaskStep returns one step of a task with its readiness: whether its
// dependencies are satisfied, whether it may be retried, when, and in plain
// words why it is not running. It fails with ErrTaskNotFound or
// ErrStepNotFound (also for a step of another task).
func (e *Engine) TaskStep(ctx context.Context, taskUUID, stepUUID string) (*Step, error) {
	steps, err := e.TaskSteps(ctx, taskUUID)
	if err != nil {
		return nil, err
	}
	for i := range steps {
		if steps[i].UUID == stepUUID {
			return &steps[i], nil
		}
	}
	return nil, fmt.Errorf("%w: %s in task %s", ErrStepNotFound, stepUUID, taskUUID)
}

// TemplateInfo describes a registered template version.
type TemplateInfo struct {
	Namespace, Name, Version string
	Description              string
	IdentityStrategy         string
	// InputSchema is the JSON Schema task contexts must satisfy, or nil.
	InputSchema []byte
	Steps       []TemplateStep
	CreatedAt   time.Time
}

// TemplateStep describes one step of a template.
type TemplateStep struct {
	Name, Description, Callable string
	Dependencies                []string
	Retryable                   bool
	MaxAttempts                 int
	Backoff                     string
	TimeoutSeconds              int
	// Events are the names of the domain events the step publishes.
	Events []string
}

// Templates lists the registered template versions, optionally of one
// namespace, ordered by namespace, name and version.
func (e *Engine) Templates(ctx context.Context, namespace string) ([]TemplateInfo, error) {
	rows, err := e.driver.Reader().TemplateList(ctx, store.TemplateListParams{Namespace: namespace})
	if err != nil {
		return nil, fmt.Errorf("list templates: %w", err)
	}
	out := make([]TemplateInfo, 0, len(rows))
	for _, r := range rows {
		info, err := e.templateInfo(ctx, r.Namespace, r.Name, r.Version)
		if err != nil {
			e.log.Warn("skip unreadable template", "namespace", r.Namespace, "name", r.Name, "version", r.Version, "error", err)
			continue
		}
		info.CreatedAt = r.CreatedAt
		out = append(out, *info)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		if a.Name != b.Name {
			return a.Name < b.Name
		}
		return a.Version < b.Version
	})
	return out, nil
}

// Template returns one registered template version; an empty version
// selects the highest. It fails with ErrTemplateNotFound.
func (e *Engine) Template(ctx context.Context, namespace, name, version string) (*TemplateInfo, error) {
	info, err := e.templateInfo(ctx, namespace, name, version)
	if err != nil {
		return nil, err
	}
	row, err := e.driver.Reader().TemplateGet(ctx, store.TemplateGetParams{Namespace: info.Namespace, Name: info.Name, Version: info.Version})
	if err == nil {
		info.CreatedAt = row.CreatedAt
	}
	return info, nil
}

func (e *Engine) templateInfo(ctx context.Context, namespace, name, version string) (*TemplateInfo, error) {
	t, err := e.orch.Templates().Get(ctx, namespace, name, version)
	if err != nil {
		return nil, err
	}
	info := &TemplateInfo{Namespace: t.Namespace, Name: t.Name, Version: t.Version, Description: t.Description,
		IdentityStrategy: string(t.IdentityStrategy), InputSchema: t.InputSchema}
	for _, s := range t.Steps {
		ts := TemplateStep{Name: s.Name, Description: s.Description, Callable: s.Handler.Callable,
			Dependencies: s.Dependencies, Retryable: s.Retry.Retryable, MaxAttempts: s.Retry.MaxAttempts,
			Backoff: string(s.Retry.Backoff), TimeoutSeconds: s.TimeoutSeconds}
		for _, ev := range s.PublishesEvents {
			ts.Events = append(ts.Events, ev.Name)
		}
		info.Steps = append(info.Steps, ts)
	}
	return info, nil
}

// QueueStats is the depth of one work queue.
type QueueStats struct {
	Queue string
	// Visible messages wait to be claimed; Leased ones are held by a
	// consumer.
	Visible, Leased int
	// OldestAge is the age of the oldest message, visible or leased.
	OldestAge time.Duration
}

// QueueStats reports the depth and oldest message age of every non-empty
// queue.
func (e *Engine) QueueStats(ctx context.Context) ([]QueueStats, error) {
	now := time.Now()
	rows, err := e.driver.Reader().QueueDepth(ctx, store.QueueDepthParams{Now: now})
	if err != nil {
		return nil, fmt.Errorf("queue stats: %w", err)
	}
	out := make([]QueueStats, len(rows))
	for i, r := range rows {
		out[i] = QueueStats{Queue: r.Queue, Visible: r.Visible, Leased: r.Leased, OldestAge: max(0, now.Sub(r.OldestEnqueued))}
	}
	return out, nil
}

// StateCount is the number of tasks or steps (Kind "task" or "step") of one
// namespace in one state.
type StateCount struct {
	Kind, Namespace, State string
	Count                  int64
}

// StateCounts counts tasks and steps per namespace and state.
func (e *Engine) StateCounts(ctx context.Context) ([]StateCount, error) {
	rows, err := e.driver.StateCounts(ctx, store.StateCountsParams{})
	if err != nil {
		return nil, fmt.Errorf("state counts: %w", err)
	}
	out := make([]StateCount, len(rows))
	for i, r := range rows {
		out[i] = StateCount(r)
	}
	return out, nil
}

// PoolStats describes one database connection pool.
type PoolStats struct {
	Pool                       string
	MaxOpen, Open, InUse, Idle int
	WaitCount                  int64
	WaitDuration               time.Duration
}

// PoolStats describes the store's connection pools.
func (e *Engine) PoolStats() []PoolStats {
	rows := e.driver.PoolStats()
	out := make([]PoolStats, len(rows))
	for i, r := range rows {
		out[i] = PoolStats(r)
	}
	return out
}

// Health is the result of CheckHealth.
type Health struct {
	// Driver is the store's driver name.
	Driver string
	// DatabaseErr is why the database did not answer, or nil.
	DatabaseErr error
	// MigrationsCurrent is true when every migration of this build is
	// applied.
	MigrationsCurrent bool
	// Started is true while the engine runs (Start without Stop).
	Started bool
	// Channels are the bounded channels' monitors.
	Channels []ChannelStats
}

// Ready reports whether the engine can take work: the database answers,
// its migrations are current and no channel is critically saturated. The
// reasons say what is wrong otherwise.
func (h Health) Ready() (bool, []string) {
	var reasons []string
	if h.DatabaseErr != nil {
		reasons = append(reasons, "database unreachable")
	} else if !h.MigrationsCurrent {
		reasons = append(reasons, "database migrations are not current")
	}
	for _, c := range h.Channels {
		if c.Level == "critical" {
			reasons = append(reasons, "channel "+c.Name+" is critically saturated")
		}
	}
	return len(reasons) == 0, reasons
}

// CheckHealth pings the database, checks its migrations and reads the
// channel monitors. ctx bounds the database checks.
func (e *Engine) CheckHealth(ctx context.Context) Health {
	e.mu.Lock()
	started := e.started
	e.mu.Unlock()
	h := Health{Driver: e.driver.Name(), Started: started, Channels: e.ChannelStats()}
	if err := e.driver.Ping(ctx); err != nil {
		h.DatabaseErr = err
		return h
	}
	current, err := e.driver.MigrationsCurrent(ctx)
	if err != nil {
		h.DatabaseErr = err
		return h
	}
	h.MigrationsCurrent = current
	return h
}

// StepFinished describes one attempt of a step that a handler of this
// process finished (see OnStepFinished).
type StepFinished struct {
	TaskUUID, StepUUID, StepName string
	Namespace, TaskName          string
	Attempt                      int
	Success                      bool
	// ErrorType is the failure's type (see StepError.Type); "" on success.
	ErrorType string
	// Duration is how long the handler ran.
	Duration time.Duration
}

// stepHooks holds the OnStepFinished functions.
type stepHooks struct {
	mu  sync.RWMutex
	fns []func(StepFinished)
}

// OnStepFinished registers fn to be called each time a handler of this
// process finishes an attempt, after its result entered the completion
// pipeline (so fn never sees an attempt whose result was refused). fn runs
// on the worker's goroutine: it must be quick and must not block; metrics
// are its purpose.
func (e *Engine) OnStepFinished(fn func(StepFinished)) {
	e.stepHooks.mu.Lock()
	defer e.stepHooks.mu.Unlock()
	e.stepHooks.fns = append(e.stepHooks.fns, fn)
}

// stepFinished runs the OnStepFinished functions for a worker result.
func (e *Engine) stepFinished(r *worker.Result) {
	e.stepHooks.mu.RLock()
	fns := e.stepHooks.fns
	e.stepHooks.mu.RUnlock()
	if len(fns) == 0 {
		return
	}
	ev := StepFinished{TaskUUID: r.Step.TaskUUID, StepUUID: r.Step.StepUUID, StepName: r.Step.StepName,
		Namespace: r.Step.Namespace, TaskName: r.Step.TaskName, Attempt: r.Step.Attempt, Success: r.Success,
		Duration: r.Finished.Sub(r.Started)}
	if r.Error != nil {
		ev.ErrorType = r.Error.Type
	}
	for _, fn := range fns {
		fn(ev)
	}
}
