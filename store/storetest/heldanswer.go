package storetest

import (
	"context"
	"sync/atomic"

	"github.com/tasker-go/tasker/store"
)

// HeldAnswer wraps a Driver for tests of what happens when a context ends
// between a claim's COMMIT and its answer. A transaction's closing claim
// (store.ClaimCommitter's ClaimAndCommit, which store.InTxClaim uses)
// commits as usual; if it took steps, Committed receives (without blocking)
// and the answer is held until Answer is closed. If the claim's context has
// ended by then, the claim fails with the context's cause, as a driver's
// does when its context is cancelled while it waits for the server's
// reply, although the claim is committed.
type HeldAnswer struct {
	store.Driver
	Answer    chan struct{}
	Committed chan struct{}
	claims    atomic.Int32
}

// NewHeldAnswer wraps d.
func NewHeldAnswer(d store.Driver) *HeldAnswer {
	return &HeldAnswer{Driver: d, Answer: make(chan struct{}), Committed: make(chan struct{}, 1)}
}

// Claims is the number of closing claims sent.
func (d *HeldAnswer) Claims() int { return int(d.claims.Load()) }

// Begin begins a transaction of the wrapped driver whose closing claim is
// held.
func (d *HeldAnswer) Begin(ctx context.Context) (store.Tx, error) {
	tx, err := d.Driver.Begin(ctx)
	if err != nil {
		return nil, err
	}
	return &heldTx{Tx: tx, d: d}, nil
}

type heldTx struct {
	store.Tx
	d *HeldAnswer
}

func (t *heldTx) ClaimAndCommit(ctx context.Context, p store.StepsClaimParams) ([]store.ClaimedStep, error) {
	t.d.claims.Add(1)
	var claimed []store.ClaimedStep
	var err error
	if cc, ok := t.Tx.(store.ClaimCommitter); ok {
		claimed, err = cc.ClaimAndCommit(ctx, p)
	} else if claimed, err = t.Tx.StepsClaim(ctx, p); err != nil {
		_ = t.Tx.Rollback()
	} else {
		err = t.Tx.Commit()
	}
	if err != nil || len(claimed) == 0 {
		return claimed, err
	}
	select {
	case t.d.Committed <- struct{}{}:
	default:
	}
	select {
	case <-t.d.Answer:
	case <-ctx.Done():
	}
	if err := context.Cause(ctx); err != nil {
		return nil, err
	}
	return claimed, nil
}
