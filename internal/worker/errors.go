package worker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tasker-go/tasker/store"
)

// ErrStopping is the cause given to handler contexts cancelled because the
// worker is shutting down past its drain budget.
var ErrStopping = errors.New("worker stopping")

// errStepTimeout is the cause of a handler context whose step timeout ran out.
var errStepTimeout = errors.New("step timeout")

// errLeaseLost is the cause of a handler context whose lease was taken over.
var errLeaseLost = errors.New("lease lost: the step was rescued by an orchestrator")

type permanentError struct{ err error }

func (e *permanentError) Error() string {
	if e.err == nil {
		return "permanent failure"
	}
	return e.err.Error()
}
func (e *permanentError) Unwrap() error { return e.err }

// Permanent marks err as not retryable.
func Permanent(err error) error { return &permanentError{err: err} }

type retryAfterError struct {
	err   error
	delay time.Duration
}

func (e *retryAfterError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("retry after %s", e.delay)
	}
	return e.err.Error()
}
func (e *retryAfterError) Unwrap() error { return e.err }

// RetryAfter marks err as retryable no sooner than d.
func RetryAfter(err error, d time.Duration) error { return &retryAfterError{err: err, delay: d} }

// HandlerNotFoundError is returned by a Resolver when no handler is
// registered for a step's callable.
type HandlerNotFoundError struct{ Callable string }

func (e *HandlerNotFoundError) Error() string {
	return fmt.Sprintf("no handler registered for callable %q", e.Callable)
}

// classify turns a handler's error into the stored failure, following the
// worker's rules: Permanent is final, RetryAfter carries its delay, a
// missing handler is final, a timeout or an interrupted run is retryable,
// and any other error is retryable.
func classify(err error, ctxCause error) *store.StepErrorInfo {
	var perm *permanentError
	var ra *retryAfterError
	var nf *HandlerNotFoundError
	switch {
	case errors.As(err, &nf):
		return &store.StepErrorInfo{Type: store.ErrorTypeHandlerNotFound, Message: err.Error()}
	case errors.Is(err, store.ErrUnavailable):
		// A database outage seen by the handler (say, reading a dependency
		// result) is never the step's own permanent failure, even when the
		// handler wrapped it with Permanent: retry once the database is back.
		return &store.StepErrorInfo{Type: store.ErrorTypeHandler, Message: err.Error(), Retryable: true}
	case errors.As(err, &perm):
		return &store.StepErrorInfo{Type: store.ErrorTypePermanent, Message: err.Error()}
	case errors.As(err, &ra):
		return &store.StepErrorInfo{Type: store.ErrorTypeHandler, Message: err.Error(), Retryable: true,
			RetryAfterMS: ra.delay.Milliseconds()}
	case errors.Is(ctxCause, errStepTimeout):
		return &store.StepErrorInfo{Type: store.ErrorTypeTimeout, Message: "step timed out: " + err.Error(), Retryable: true}
	case errors.Is(ctxCause, ErrStopping):
		return &store.StepErrorInfo{Type: store.ErrorTypeWorkerStopping, Message: "interrupted by worker shutdown: " + err.Error(), Retryable: true}
	case errors.Is(err, context.DeadlineExceeded):
		return &store.StepErrorInfo{Type: store.ErrorTypeTimeout, Message: err.Error(), Retryable: true}
	}
	return &store.StepErrorInfo{Type: store.ErrorTypeHandler, Message: err.Error(), Retryable: true}
}
