package tasker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/tasker-go/tasker/internal/worker"
	"github.com/tasker-go/tasker/store"
)

// Handler runs one attempt of a step. The returned value is marshalled to
// JSON and stored as the step's result; it becomes available to descendant
// steps through StepContext.DependencyResult.
//
// A returned error is retried according to the step's retry policy, unless
// it is wrapped with Permanent. A panic is recovered and fails the step
// without retry. The context is cancelled when the step's timeout_seconds
// runs out or the worker shuts down past its drain budget.
type Handler interface {
	Call(ctx context.Context, s *StepContext) (any, error)
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, s *StepContext) (any, error)

// Call calls f.
func (f HandlerFunc) Call(ctx context.Context, s *StepContext) (any, error) { return f(ctx, s) }

// Permanent marks err as a permanent failure: the step is not retried.
func Permanent(err error) error { return worker.Permanent(err) }

// RetryAfter marks err as retryable no sooner than d, overriding a shorter
// backoff of the step's retry policy.
func RetryAfter(err error, d time.Duration) error { return worker.RetryAfter(err, d) }

// StepContext is what a handler knows about the step it runs.
type StepContext struct {
	TaskUUID, StepUUID, StepName, Namespace string
	// TaskName and TaskVersion identify the task's template.
	TaskName, TaskVersion string
	// Attempt is 1 on the first run.
	Attempt int
	// MaxAttempts is the step's retry.max_attempts.
	MaxAttempts int
	// Method is the template's handler.method, if any.
	Method string

	taskContext   json.RawMessage
	handlerConfig json.RawMessage
	ancestors     map[string]bool

	// deps reads ancestors' results on first use: a handler that needs one
	// parent's result does not pay for every ancestor's.
	deps *depCache
}

// depCache holds the ancestor results a handler has read.
type depCache struct {
	ctx    context.Context
	reader store.Executor
	mu     sync.Mutex
	m      map[string]json.RawMessage
}

// get returns the results of the named steps, reading those not read yet.
func (c *depCache) get(taskUUID, stepName string, names []string) (map[string]json.RawMessage, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var missing []string
	for _, n := range names {
		if _, ok := c.m[n]; !ok {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 && c.reader != nil {
		ctx := c.ctx
		if ctx == nil {
			ctx = context.Background()
		}
		got, err := c.reader.StepResults(ctx, store.StepResultsParams{TaskUUID: taskUUID, Names: missing})
		if err != nil {
			return nil, fmt.Errorf("read results of %v for step %q: %w", missing, stepName, err)
		}
		if c.m == nil {
			c.m = make(map[string]json.RawMessage, len(got))
		}
		for k, v := range got {
			c.m[k] = v
		}
	}
	out := make(map[string]json.RawMessage, len(names))
	for _, n := range names {
		if v, ok := c.m[n]; ok {
			out[n] = v
		}
	}
	return out, nil
}

// ErrNoDependencyResult is returned by DependencyResult for a step that is
// not an ancestor of this step or has no stored result.
var ErrNoDependencyResult = errors.New("no such dependency result")

// DecodeContext unmarshals the task's JSON context into v.
func (s *StepContext) DecodeContext(v any) error {
	if err := json.Unmarshal(s.taskContext, v); err != nil {
		return fmt.Errorf("decode context of task %s: %w", s.TaskUUID, err)
	}
	return nil
}

// Context returns the task's JSON context.
func (s *StepContext) Context() json.RawMessage { return s.taskContext }

// DependencyResult unmarshals the result of step, which must be an ancestor
// of this step (a direct or indirect dependency), into v.
func (s *StepContext) DependencyResult(step string, v any) error {
	if !s.ancestors[step] {
		return fmt.Errorf("%w: %q is not an ancestor of step %q", ErrNoDependencyResult, step, s.StepName)
	}
	var got map[string]json.RawMessage
	if s.deps != nil {
		var err error
		if got, err = s.deps.get(s.TaskUUID, s.StepName, []string{step}); err != nil {
			return err
		}
	}
	raw, ok := got[step]
	if !ok {
		return fmt.Errorf("%w: step %q has no stored result", ErrNoDependencyResult, step)
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return fmt.Errorf("decode result of step %q: %w", step, err)
	}
	return nil
}

// DependencyResults returns the raw results of all ancestors by step name
// (empty if they cannot be read; DependencyResult reports such errors).
func (s *StepContext) DependencyResults() map[string]json.RawMessage {
	if s.deps == nil {
		return map[string]json.RawMessage{}
	}
	names := make([]string, 0, len(s.ancestors))
	for n := range s.ancestors {
		names = append(names, n)
	}
	got, err := s.deps.get(s.TaskUUID, s.StepName, names)
	if err != nil {
		return map[string]json.RawMessage{}
	}
	return got
}

// HandlerConfig unmarshals the template's handler.initialization into v. It
// leaves v untouched when the template gives no initialization.
func (s *StepContext) HandlerConfig(v any) error {
	if len(s.handlerConfig) == 0 {
		return nil
	}
	if err := json.Unmarshal(s.handlerConfig, v); err != nil {
		return fmt.Errorf("decode handler.initialization of step %q: %w", s.StepName, err)
	}
	return nil
}
