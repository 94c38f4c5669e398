package orchestration

import (
	"fmt"
	"strings"
	"time"

	"github.com/tasker-go/tasker/state"
)

// ExecutionStatus summarises what a task's steps allow to happen next.
type ExecutionStatus string

// Execution statuses, in precedence order: the first that applies wins.
const (
	StatusBlockedByFailures      ExecutionStatus = "blocked_by_failures"
	StatusHasReadySteps          ExecutionStatus = "has_ready_steps"
	StatusProcessing             ExecutionStatus = "processing"
	StatusAllComplete            ExecutionStatus = "all_complete"
	StatusWaitingForDependencies ExecutionStatus = "waiting_for_dependencies"
)

// StepView is what readiness needs to know about a step.
type StepView struct {
	UUID, Name  string
	State       state.StepState
	Attempts    int
	MaxAttempts int
	Retryable   bool
	NextRetryAt *time.Time
	Parents     []string // step UUIDs
}

// StepReadiness explains whether one step can run now.
type StepReadiness struct {
	Ready                 bool
	DependenciesSatisfied bool
	// RetryEligible is true when the step may still be attempted (first
	// attempt pending, or retryable with attempts left).
	RetryEligible bool
	// NextRetryAt is when a step waiting for retry becomes ready.
	NextRetryAt *time.Time
	// BlockedReason says in plain words why a step that is not running is
	// not ready; empty for ready, running and finished steps.
	BlockedReason string
}

// Summary is the readiness of every step of a task at one instant.
type Summary struct {
	Steps  map[string]StepReadiness // by step UUID
	Ready  []string                 // UUIDs of ready steps, in input order
	Status ExecutionStatus

	Total, Complete, InFlight, Errored, Cancelled int
	// PendingRetries counts steps waiting for retry that are still
	// eligible but whose backoff has not elapsed.
	PendingRetries int
	// EarliestRetry is the soonest NextRetryAt among PendingRetries.
	EarliestRetry *time.Time
	// exact is set when the counts are the task's real ones (Evaluate over
	// every step), not only zero or not (EvaluateProgress).
	exact bool
}

// CanProgress reports whether anything can still happen without an
// operator: a step is ready, running, or waiting out a backoff.
func (s Summary) CanProgress() bool {
	return len(s.Ready) > 0 || s.InFlight > 0 || s.PendingRetries > 0
}

// AllComplete reports whether every step is complete or resolved manually.
func (s Summary) AllComplete() bool { return s.Complete == s.Total }

// Evaluate computes readiness. A step is ready when it is pending or waiting
// for retry, every parent is complete or resolved manually, it has an
// attempt left (attempts == 0, or retryable and attempts < max_attempts),
// and its backoff has elapsed.
func Evaluate(steps []StepView, now time.Time) Summary {
	byUUID := make(map[string]*StepView, len(steps))
	for i := range steps {
		byUUID[steps[i].UUID] = &steps[i]
	}
	sum := Summary{Steps: make(map[string]StepReadiness, len(steps)), Total: len(steps), exact: true}
	for i := range steps {
		s := &steps[i]
		var r StepReadiness
		r.DependenciesSatisfied = true
		var waitingOn []string
		for _, p := range s.Parents {
			ps, ok := byUUID[p]
			if !ok || !ps.State.Satisfied() {
				r.DependenciesSatisfied = false
				if ok {
					waitingOn = append(waitingOn, fmt.Sprintf("%s (%s)", ps.Name, ps.State))
				} else {
					waitingOn = append(waitingOn, p+" (missing)")
				}
			}
		}
		r.RetryEligible = s.Attempts == 0 || (s.Retryable && s.Attempts < s.MaxAttempts)
		switch {
		case s.State.Satisfied():
			sum.Complete++
		case s.State == state.StepError:
			sum.Errored++
			r.BlockedReason = "failed permanently"
			if e := s.Attempts; e > 0 && s.Retryable && e >= s.MaxAttempts {
				r.BlockedReason = fmt.Sprintf("failed and exhausted its %d attempts", s.MaxAttempts)
			}
		case s.State == state.StepCancelled:
			sum.Cancelled++
			r.BlockedReason = "cancelled"
		case s.State.InFlight():
			sum.InFlight++
		case s.State == state.StepPending || s.State == state.StepWaitingForRetry:
			sum.judgeWaiting(s, &r, waitingOn, now)
		}
		sum.Steps[s.UUID] = r
	}
	sum.setStatus()
	return sum
}

// judgeWaiting decides whether a pending or waiting_for_retry step is
// ready, backing off, or blocked, and counts it in sum. r must already say
// whether its dependencies are satisfied; waitingOn names the parents that
// are not.
func (sum *Summary) judgeWaiting(s *StepView, r *StepReadiness, waitingOn []string, now time.Time) {
	r.RetryEligible = s.Attempts == 0 || (s.Retryable && s.Attempts < s.MaxAttempts)
	backoffOver := s.State == state.StepPending || s.NextRetryAt == nil || !s.NextRetryAt.After(now)
	r.NextRetryAt = s.NextRetryAt
	switch {
	case !r.DependenciesSatisfied:
		r.BlockedReason = "waiting for " + joinWords(waitingOn)
	case !r.RetryEligible:
		r.BlockedReason = fmt.Sprintf("no attempts left (%d of %d used)", s.Attempts, s.MaxAttempts)
	case !backoffOver:
		r.BlockedReason = "backing off until " + s.NextRetryAt.UTC().Format(time.RFC3339Nano)
		sum.PendingRetries++
		if sum.EarliestRetry == nil || s.NextRetryAt.Before(*sum.EarliestRetry) {
			t := *s.NextRetryAt
			sum.EarliestRetry = &t
		}
	default:
		r.Ready = true
		sum.Ready = append(sum.Ready, s.UUID)
	}
}

// setStatus applies the status precedence to the counts.
func (sum *Summary) setStatus() {
	switch {
	case sum.Errored > 0:
		sum.Status = StatusBlockedByFailures
	case len(sum.Ready) > 0:
		sum.Status = StatusHasReadySteps
	case sum.InFlight > 0:
		sum.Status = StatusProcessing
	case sum.AllComplete():
		sum.Status = StatusAllComplete
	default:
		sum.Status = StatusWaitingForDependencies
	}
}

func joinWords(items []string) string {
	switch len(items) {
	case 0:
		return ""
	case 1:
		return items[0]
	}
	return strings.Join(items[:len(items)-1], ", ") + " and " + items[len(items)-1]
}
