package tasker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/tasker-go/tasker/internal/worker"
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
	deps          map[string]json.RawMessage
	ancestors     map[string]bool
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
	raw, ok := s.deps[step]
	if !ok {
		return fmt.Errorf("%w: step %q has no stored result", ErrNoDependencyResult, step)
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return fmt.Errorf("decode result of step %q: %w", step, err)
	}
	return nil
}

// DependencyResults returns the raw results of all ancestors by step name.
func (s *StepContext) DependencyResults() map[string]json.RawMessage {
	out := make(map[string]json.RawMessage, len(s.deps))
	for k, v := range s.deps {
		out[k] = v
	}
	return out
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
