package orchestration

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/tasker-go/tasker/store"
)

// starter collects, in a transaction that ends with a claim for a worker in
// this process (see inTxClaim), the steps the transaction makes ready that
// the claim may start directly (store.StepsClaimParams.Start): the step
// goes from pending to in_progress in one write and its message is
// inserted already leased, instead of an enqueue that the claim then reads
// back and leases. The store does so only while the worker's queues hold
// nothing older to claim; otherwise it enqueues them and the claim takes
// the backlog first, by priority and age, as before. They count against
// the claim's Limit.
type starter struct {
	claim store.StepsClaimParams
	// left is how many more steps the claim may take.
	left  int
	steps []store.StepStart
}

// take reports whether a ready step bound for queue is to be left to the
// claim rather than enqueued now, and if so counts it.
func (s *starter) take(queue string) bool {
	if s == nil || s.left <= 0 || !slices.Contains(s.claim.Queues, queue) {
		return false
	}
	s.left--
	return true
}

// add leaves the steps take accepted to the claim.
func (s *starter) add(task *store.TaskRow, steps []store.StepStart) {
	for _, st := range steps {
		st.TaskName, st.Version, st.TaskContext = task.Name, task.Version, task.Context
		s.steps = append(s.steps, st)
	}
}

// claimQueues are the queues of claim, the claim that will end a
// transaction, if it claims anything (see
// store.CompleteAndLoadParams.ClaimQueues).
func claimQueues(claim store.StepsClaimParams) []string {
	if claim.Limit <= 0 {
		return nil
	}
	return claim.Queues
}

// inTxClaim runs fn in a transaction that ends with claim (see
// store.InTxClaim and claimFor), leaving the steps fn's evaluations make
// ready to the claim where it has room for them (see starter). It returns
// what the claim took: the started steps, then the claimed ones.
//
// ctx ending stops the transaction only until fn has returned; then the
// claim and the COMMIT run to their end (see store.InTxClaimDetached):
// what a CreateTask whose caller gives up (an HTTP client that
// disconnects) needs, lest its task be created and its first steps
// stranded while the caller sees an error. A caller that has given up
// leaves the COMMIT commitLimit to answer; one still waiting is not
// limited, as before.
func (o *Orchestrator) inTxClaim(ctx context.Context, claim store.StepsClaimParams, now time.Time, eff *effects,
	fn func(tx store.Tx) error) ([]store.ClaimedStep, error) {
	detached, end := context.WithCancelCause(context.WithoutCancel(ctx))
	defer end(nil)
	limit := context.AfterFunc(ctx, func() {
		time.AfterFunc(commitLimit, func() { end(errCommitLimit) })
	})
	defer limit()
	claimed, err := store.InTxClaimDetached(ctx, detached, o.d, func(tx store.Tx) (store.StepsClaimParams, error) {
		var st *starter
		if claim.Limit > 0 && len(claim.Queues) > 0 && !o.noDirectStart {
			st = &starter{claim: claim, left: claim.Limit}
		}
		eff.start, eff.direct = st, nil
		defer func() { eff.start = nil }()
		if err := fn(tx); err != nil {
			return store.StepsClaimParams{}, err
		}
		c := o.claimFor(claim, now)
		if st != nil {
			c.Start = st.steps
			for _, s := range st.steps {
				eff.direct = append(eff.direct, s.UUID)
			}
		}
		return c, nil
	})
	switch {
	case err == nil:
	case errors.Is(context.Cause(detached), errCommitLimit):
		err = fmt.Errorf("%w: %w: %w", store.ErrUnavailable, errCommitLimit, err)
	case ctx.Err() != nil && !errors.Is(err, ctx.Err()):
		// The driver reports the transaction's own context, cancelled
		// because ctx ended: say how ctx ended (a deadline is not a
		// caller that went away).
		err = fmt.Errorf("%w: %w", ctx.Err(), err)
	}
	if err != nil {
		eff.direct = nil // rolled back: nothing was started
	}
	return claimed, err
}

// commitLimit bounds the claim and COMMIT that end an orchestration
// transaction once its caller has given up (see inTxClaim).
const commitLimit = 30 * time.Second

var errCommitLimit = errors.New("orchestration: claim and commit still unanswered " + commitLimit.String() +
	" after the caller gave up")
