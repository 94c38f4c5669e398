package worker

import (
	"math"
	"sync/atomic"
	"time"
)

// Prefetch depth. Prefetched steps exist to cover a claim's round trip:
// while the next claim commits, handlers run steps already claimed. How
// many that takes depends on how fast handlers finish. Handlers that take
// as long as a claim need about Concurrency steps in hand; handlers that
// return in microseconds drain any number of steps before a claim comes
// back, and there a deep prefetch also makes claims and result batches
// larger, which is what a fan-out of no-op steps is bound by. Steps held
// in a worker's hand are steps no other worker can run, so the depth
// follows the handlers instead of being fixed: Concurrency × claim time /
// handler time, at least min(Concurrency, Prefetch), at most Prefetch.

// durationAvg is an exponentially weighted moving average of durations
// (weight 1/8 for each new sample), safe for concurrent use.
type durationAvg struct{ ns atomic.Int64 }

func (a *durationAvg) observe(d time.Duration) {
	sample := max(int64(d), 1)
	for {
		old := a.ns.Load()
		next := sample
		if old > 0 {
			next = max(old+(sample-old)/8, 1)
		}
		if a.ns.CompareAndSwap(old, next) {
			return
		}
	}
}

// get returns the average, or 0 before the first sample.
func (a *durationAvg) get() time.Duration { return time.Duration(a.ns.Load()) }

// prefetchDepth is how many steps a worker with concurrency handlers and
// a prefetch ceiling claims beyond its handlers, given the average claim
// and handler times; with either unknown it is the floor.
func prefetchDepth(concurrency, prefetch int, claim, handler time.Duration) int {
	floor := min(concurrency, prefetch)
	if claim <= 0 || handler <= 0 || prefetch <= floor {
		return floor
	}
	// In float64, so that a huge claim/handler ratio cannot overflow; the
	// clamp bounds the result.
	need := math.Ceil(float64(concurrency) * float64(claim) / float64(handler))
	if need >= float64(prefetch) {
		return prefetch
	}
	return max(int(need), floor)
}

// refreshDepth sets the depth from the averages measured so far. Only the
// claim loop calls it, right before it claims: while the loop sleeps the
// depth, and so the low-water mark at which a settling step wakes it
// (claimLowWater), stay put, so that a falling in-flight count cannot step
// past a mark that moved.
func (w *Worker) refreshDepth() {
	w.depth.Store(int64(prefetchDepth(w.cfg.Concurrency, w.cfg.Prefetch, w.claimTime.get(), w.handlerTime.get())))
}
