package orchestration

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/tasker-go/tasker/store"
)

// starter lets a transaction that ends with a claim for a worker in this
// process (see inTxClaim) start the steps it makes ready directly: the
// step goes from pending to in_progress in one write and its message is
// inserted already leased, instead of an enqueue that the claim then
// reads back and leases. A started step counts against the claim's Limit.
//
// It only does so while the claim would have picked the same steps: when
// none of the claim's queues holds an older message ready to claim. It
// asks the store once, before the first step it would start; with a
// backlog every ready step is enqueued as usual and the claim takes the
// backlog first, by priority and age, as before.
type starter struct {
	tx    store.StepStarter
	claim store.StepsClaimParams
	// left is how many more steps the claim may take.
	left    int
	checked bool
	backlog bool
	started []store.ClaimedStep
}

// take reports whether a ready step bound for queue is to be started now
// rather than enqueued, and if so counts it.
func (s *starter) take(ctx context.Context, queue string, now time.Time) (bool, error) {
	if s == nil || s.left <= 0 || !slices.Contains(s.claim.Queues, queue) {
		return false, nil
	}
	if !s.checked {
		backlog, err := s.tx.QueueReady(ctx, store.QueueReadyParams{Queues: s.claim.Queues, Now: now})
		if err != nil {
			return false, err
		}
		s.checked, s.backlog = true, backlog
	}
	if s.backlog {
		return false, nil
	}
	s.left--
	return true, nil
}

// start starts the steps of task that take accepted.
func (s *starter) start(ctx context.Context, task *store.TaskRow, steps []store.StepStart, now time.Time) ([]store.ClaimedStep, error) {
	started, err := s.tx.StepsStart(ctx, store.StepsStartParams{Steps: steps, Lease: s.claim.Lease, Owner: s.claim.Owner, Now: now})
	if err != nil {
		return nil, fmt.Errorf("start steps of task %s: %w", task.UUID, err)
	}
	for i := range started {
		// Each started step gets a context of its own to hand to its
		// handler, as a claimed one does.
		started[i].TaskName, started[i].Version = task.Name, task.Version
		started[i].TaskContext = bytes.Clone(task.Context)
	}
	s.started = append(s.started, started...)
	return started, nil
}

// inTxClaim runs fn in a transaction that ends with claim (see
// store.InTxClaim and claimFor), letting fn's evaluations start the steps
// they make ready (see starter). It returns the started steps followed by
// the claimed ones.
func (o *Orchestrator) inTxClaim(ctx context.Context, claim store.StepsClaimParams, now time.Time, eff *effects,
	fn func(tx store.Tx) error) ([]store.ClaimedStep, error) {
	var st *starter
	claimed, err := store.InTxClaim(ctx, o.d, func(tx store.Tx) (store.StepsClaimParams, error) {
		st = nil
		if ss, ok := tx.(store.StepStarter); ok && claim.Limit > 0 && len(claim.Queues) > 0 && !o.noDirectStart {
			st = &starter{tx: ss, claim: claim, left: claim.Limit}
		}
		eff.start = st
		defer func() { eff.start = nil }()
		if err := fn(tx); err != nil {
			return store.StepsClaimParams{}, err
		}
		c := o.claimFor(claim, now)
		if st != nil {
			c.Limit -= len(st.started)
			if st.checked && !st.backlog && !enqueuedTo(eff, claim.Queues) {
				// The claim's queues held nothing to claim when the
				// transaction looked, and it enqueued nothing there
				// since: the claim would come back empty.
				c.Limit = 0
			}
		}
		return c, nil
	})
	if err != nil {
		return nil, err
	}
	if st != nil && len(st.started) > 0 {
		claimed = append(st.started, claimed...)
	}
	return claimed, nil
}

// enqueuedTo reports whether the transaction behind eff may have enqueued
// a message to one of queues.
func enqueuedTo(eff *effects, queues []string) bool {
	for _, q := range queues {
		ns, ok := store.QueueNamespace(q)
		if !ok {
			return true
		}
		if _, ok := eff.namespaces[ns]; ok {
			return true
		}
	}
	return false
}
