package main

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// node is the part a step plays in its workflow.
type node int

const (
	nodeChain node = iota
	nodeRoot
	nodeChild
	nodeJoin
)

// flow is what the harness saw of one workflow, all from inside the
// process: when its submission committed, when its handlers ran, and when
// its completion committed.
type flow struct {
	submitted    time.Time
	firstStart   time.Time
	joinStart    time.Time
	lastChildEnd time.Time
	children     int
	done         time.Time
	err          error
	doneC        chan struct{}
}

// recorder collects flows by key (a Tasker task UUID or a River workflow
// number). Handlers may report a flow before its submitter does, so every
// method creates the flow it names.
type recorder struct {
	mu       sync.Mutex
	flows    map[string]*flow
	finished int
	target   int
	reached  chan struct{}
}

func newRecorder() *recorder {
	return &recorder{flows: map[string]*flow{}, reached: make(chan struct{})}
}

func (r *recorder) get(key string) *flow {
	f := r.flows[key]
	if f == nil {
		f = &flow{doneC: make(chan struct{})}
		r.flows[key] = f
	}
	return f
}

func (r *recorder) submitted(key string, t time.Time) {
	r.mu.Lock()
	r.get(key).submitted = t
	r.mu.Unlock()
}

func (r *recorder) started(key string, n node, t time.Time) {
	r.mu.Lock()
	f := r.get(key)
	if f.firstStart.IsZero() {
		f.firstStart = t
	}
	if n == nodeJoin {
		f.joinStart = t
	}
	r.mu.Unlock()
}

func (r *recorder) ended(key string, n node, t time.Time) {
	if n != nodeChild {
		return
	}
	r.mu.Lock()
	f := r.get(key)
	f.children++
	if t.After(f.lastChildEnd) {
		f.lastChildEnd = t
	}
	r.mu.Unlock()
}

// finish records the committed completion of a workflow (or the error that
// ended the wait for it).
func (r *recorder) finish(key string, t time.Time, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	f := r.get(key)
	if !f.done.IsZero() || f.err != nil {
		return
	}
	f.done, f.err = t, err
	close(f.doneC)
	r.finished++
	if r.target > 0 && r.finished == r.target {
		close(r.reached)
	}
}

// expect arms waitFinished for n completions; call it before the work.
func (r *recorder) expect(n int) {
	r.mu.Lock()
	r.target = n
	r.mu.Unlock()
}

func (r *recorder) waitFinished(ctx context.Context) error {
	select {
	case <-r.reached:
		return nil
	case <-ctx.Done():
		r.mu.Lock()
		defer r.mu.Unlock()
		return fmt.Errorf("%d of %d workflows finished: %w", r.finished, r.target, context.Cause(ctx))
	}
}

// wait blocks until the flow finished and returns a copy of it.
func (r *recorder) wait(ctx context.Context, key string) (flow, error) {
	r.mu.Lock()
	f := r.get(key)
	r.mu.Unlock()
	select {
	case <-f.doneC:
	case <-ctx.Done():
		return flow{}, fmt.Errorf("wait for %s: %w", key, context.Cause(ctx))
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return *f, f.err
}

// snapshot is a copy of the flow as it is now.
func (r *recorder) snapshot(key string) flow {
	r.mu.Lock()
	defer r.mu.Unlock()
	return *r.get(key)
}
