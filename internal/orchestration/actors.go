package orchestration

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/tasker-go/tasker/state"
	"github.com/tasker-go/tasker/store"
)

// ErrStopped is the cause given to the actors' context when Stop is called.
var ErrStopped = errors.New("orchestrator stopped")

// Start runs the background actors: the result processor (queued results
// from worker-only processes), the retry evaluator (timers armed when a
// retry is scheduled, plus a periodic sweep for retries scheduled by
// processes that died), the lease rescuer (steps whose worker stopped
// heartbeating) and the staleness sweeper (tasks past their lifecycle
// limits go to the dead-letter queue). Start on a started orchestrator is a
// no-op.
func (o *Orchestrator) Start(ctx context.Context) error {
	o.life.Lock()
	defer o.life.Unlock()
	if o.stop != nil {
		return nil
	}
	// Only Stop ends the actors: ctx may be a start-up context that ends
	// long before the orchestrator should.
	ctx, cancel := context.WithCancelCause(context.WithoutCancel(ctx))
	o.stop = func() { cancel(ErrStopped) }
	o.done = make(chan struct{})
	var wg sync.WaitGroup
	for _, run := range []func(context.Context){o.runResults, o.runEvaluator, o.runSweeps, o.runStaleness} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			run(ctx)
		}()
	}
	go func() {
		wg.Wait()
		close(o.done)
	}()
	return nil
}

// Stop stops the actors and waits for them, bounded by ctx. Work in flight
// is in a transaction that either commits or rolls back; nothing is lost.
func (o *Orchestrator) Stop(ctx context.Context) error {
	o.life.Lock()
	stop, done := o.stop, o.done
	o.stop = nil
	o.life.Unlock()
	if stop == nil {
		return nil
	}
	stop()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("stop orchestrator: %w", context.Cause(ctx))
	}
}

// WakeResults tells the result processor that results were queued.
func (o *Orchestrator) WakeResults() {
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

func (o *Orchestrator) runResults(ctx context.Context) {
	tick := time.NewTicker(o.cfg.ResultPollInterval)
	defer tick.Stop()
	for {
		for {
			n, err := o.processQueuedResults(ctx)
			if err != nil {
				if ctx.Err() == nil {
					o.log.Error("process step results", "error", err)
				}
				break
			}
			if n < o.cfg.ResultBatch {
				break
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-o.wake:
		case <-tick.C:
		}
	}
}

// processQueuedResults leases a batch of result messages, then processes
// each task's results in a transaction of its own that also deletes their
// messages. A task that fails to process keeps its messages leased: they
// come back after ResultLease, and the rest of the batch is not held up. A
// message read MaxResultReads times that fails again goes to the
// dead-letter queue instead.
func (o *Orchestrator) processQueuedResults(ctx context.Context) (int, error) {
	now := o.cfg.Now()
	var msgs []store.QueueMessage
	err := store.InTx(ctx, o.d, func(tx store.Tx) error {
		var err error
		msgs, err = tx.QueueClaim(ctx, store.QueueClaimParams{Queues: []string{store.OrchestrationQueue},
			Limit: o.cfg.ResultBatch, Lease: o.cfg.ResultLease, Owner: o.cfg.Owner, IncludeExpired: true, Now: now})
		return err
	})
	if err != nil {
		return 0, err
	}
	byTask := map[string][]store.QueueMessage{}
	for _, m := range msgs {
		byTask[m.TaskUUID] = append(byTask[m.TaskUUID], m)
	}
	for _, id := range sortedKeys(byTask) {
		group := byTask[id]
		steps := make(map[string]bool, len(group))
		for _, m := range group {
			steps[m.StepUUID] = true
		}
		eff := newEffects()
		err := store.InTx(ctx, o.d, func(tx store.Tx) error {
			if err := o.processTask(ctx, tx, id, steps, now, eff); err != nil {
				return err
			}
			for _, m := range group {
				if err := tx.QueueDelete(ctx, store.QueueDeleteParams{ID: m.ID, Token: m.LeaseToken}); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			if ctx.Err() != nil {
				return len(msgs), err
			}
			o.log.Error("process queued step results; retrying after the lease", "task_uuid", id,
				"messages", len(group), "retry_in", o.cfg.ResultLease, "error", err)
			o.deadLetterMessages(ctx, group, err)
			continue
		}
		o.announce(eff)
	}
	return len(msgs), nil
}

func (o *Orchestrator) runEvaluator(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case id := <-o.evalCh.Recv():
			if err := o.EvaluateTask(ctx, id); err != nil && ctx.Err() == nil {
				o.log.Error("evaluate task", "task_uuid", id, "error", err)
			}
		}
	}
}

func (o *Orchestrator) runSweeps(ctx context.Context) {
	tick := time.NewTicker(o.cfg.PollInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if err := o.SweepRetries(ctx); err != nil && ctx.Err() == nil {
			o.log.Error("sweep due retries", "error", err)
		}
		if _, err := o.RescueExpiredLeases(ctx); err != nil && ctx.Err() == nil {
			o.log.Error("rescue expired leases", "error", err)
		}
	}
}

// SweepRetries evaluates every task that has a retry due. It finds retries
// whose timer was lost with the process that armed it.
func (o *Orchestrator) SweepRetries(ctx context.Context) error {
	ids, err := o.d.Reader().StepsDueForRetry(ctx, store.StepsDueForRetryParams{Now: o.cfg.Now(), Limit: 500})
	if err != nil {
		return err
	}
	var errs []error
	for _, id := range ids {
		if err := o.EvaluateTask(ctx, id); err != nil {
			if ctx.Err() != nil {
				return err
			}
			// One task that cannot be evaluated must not starve the others.
			errs = append(errs, fmt.Errorf("task %s: %w", id, err))
		}
	}
	return errors.Join(errs...)
}

// RescueExpiredLeases finds step messages whose lease ran out (the worker
// died or stalled) and records the attempt as a retryable failure, so the
// step runs again under its retry policy, and a step that kills its worker
// every time ends in error instead of looping.
func (o *Orchestrator) RescueExpiredLeases(ctx context.Context) (int, error) {
	msgs, err := o.d.Reader().QueueExpired(ctx, store.QueueExpiredParams{Now: o.cfg.Now(), Limit: 200})
	if err != nil {
		return 0, err
	}
	rescued := 0
	var errs []error
	for _, m := range msgs {
		if !store.IsWorkerQueue(m.Queue) {
			continue // result messages are reclaimed by processQueuedResults
		}
		ok, err := o.rescue(ctx, m)
		if err != nil {
			if ctx.Err() != nil {
				return rescued, err
			}
			errs = append(errs, fmt.Errorf("step %s: %w", m.StepUUID, err))
			continue
		}
		if ok {
			rescued++
		}
	}
	return rescued, errors.Join(errs...)
}

func (o *Orchestrator) rescue(ctx context.Context, m store.QueueMessage) (bool, error) {
	now := o.cfg.Now()
	eff := newEffects()
	rescued := false
	err := store.InTx(ctx, o.d, func(tx store.Tx) error {
		// Task row first, as in every orchestration transaction, so that
		// concurrent transactions on one task queue up instead of deadlocking.
		if _, err := tx.TaskGet(ctx, store.TaskGetParams{UUID: m.TaskUUID, ForUpdate: true}); err != nil {
			if errors.Is(err, store.ErrNotFound) {
				return nil
			}
			return err
		}
		if err := tx.QueueDelete(ctx, store.QueueDeleteParams{ID: m.ID, Token: m.LeaseToken, ExpiredBefore: now}); err != nil {
			if errors.Is(err, store.ErrLeaseLost) {
				return nil // renewed by a heartbeat, or completed, meanwhile
			}
			return err
		}
		step, err := tx.StepGet(ctx, store.StepGetParams{UUID: m.StepUUID})
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if step.State != string(state.StepInProgress) {
			return nil
		}
		info := store.StepErrorInfo{Type: store.ErrorTypeLeaseExpired, Retryable: true, Attempt: step.Attempts,
			Message: fmt.Sprintf("worker %s stopped heartbeating; lease expired", m.LeaseOwner)}
		if err := tx.StepTransition(ctx, store.StepTransitionParams{UUID: step.UUID, From: step.State,
			To: string(state.StepEnqueuedAsErrorForOrchestration), Event: string(state.StepEventFailAttempt), Now: now,
			SetError: true, Error: mustJSON(info),
			Metadata: mustJSON(map[string]any{"rescued_by": o.cfg.Owner, "worker": m.LeaseOwner, "error": info})}); err != nil {
			return err
		}
		rescued = true
		o.log.Warn("rescued step from expired lease", "task_uuid", m.TaskUUID, "step_uuid", m.StepUUID,
			"worker", m.LeaseOwner, "attempt", step.Attempts)
		return o.processTask(ctx, tx, m.TaskUUID, map[string]bool{m.StepUUID: true}, now, eff)
	})
	if err != nil {
		return false, err
	}
	o.announce(eff)
	return rescued, nil
}
