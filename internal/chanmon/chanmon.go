// Package chanmon provides the bounded channel every part of the engine uses
// to hand work from one goroutine to another, with the counters that make
// backpressure visible: depth and saturation, how many sends had to wait and
// for how long, and how many non-blocking sends were dropped.
//
// Senders call Send (blocks while the channel is full, bounded by a context)
// or TrySend (never blocks). Receivers read Recv in a select loop or with
// range, or call Receive. Receivers do no bookkeeping: a Chan counts what it
// accepted, and whatever it accepted that is no longer buffered has been
// received, so the receive count is derived from the send count and the
// current depth. A consumer that reads Recv directly therefore cannot forget
// to count, and the receive path costs nothing extra.
//
// Closing is safe against concurrent senders: Send and TrySend after Close
// report ErrClosed or false instead of panicking, senders blocked on a full
// channel are released by Close, and receivers still drain what was buffered
// before they see the channel closed.
package chanmon

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// ErrClosed is returned by Send on a channel that has been closed.
var ErrClosed = errors.New("chanmon: send on closed channel")

// Default saturation thresholds for Level.
const (
	DefaultDegraded = 0.7
	DefaultCritical = 0.9
)

// Level grades how close a channel is to full.
type Level int

// Levels, from least to most saturated.
const (
	Healthy Level = iota
	Degraded
	Critical
)

// String returns "healthy", "degraded" or "critical".
func (l Level) String() string {
	switch l {
	case Healthy:
		return "healthy"
	case Degraded:
		return "degraded"
	case Critical:
		return "critical"
	}
	return fmt.Sprintf("Level(%d)", int(l))
}

// Stats is a point-in-time view of a channel's counters. Counters are read
// one after another while senders and receivers keep going, so under load
// the fields are individually accurate but not one atomic snapshot.
type Stats struct {
	Name     string
	Capacity int
	Depth    int // items buffered now
	// Saturation is Depth/Capacity, from 0 (empty) to 1 (full).
	Saturation float64
	// Sent counts items accepted by Send or TrySend.
	Sent uint64
	// Received counts items taken off the channel. It is derived from Sent
	// and Depth, may trail the truth by the few sends in flight at the
	// moment of the snapshot, and never decreases.
	Received uint64
	// Dropped counts TrySend calls that found the channel full.
	Dropped uint64
	// BlockedSends counts Send calls that found the channel full and had to
	// wait, whatever the outcome of the wait.
	BlockedSends uint64
	// BlockedTime is the total time Send calls spent waiting.
	BlockedTime time.Duration
	// MaxDepth is the highest depth seen right after a send.
	MaxDepth int
	Level    Level
}

type thresholds struct{ degraded, critical float64 }

var defaultThresholds = &thresholds{DefaultDegraded, DefaultCritical}

// ValidateThresholds reports whether degraded and critical can be passed to
// SetThresholds: both must lie in (0, 1] with degraded <= critical. Config
// validation can call it to name the offending field early.
func ValidateThresholds(degraded, critical float64) error {
	valid := func(f float64) bool { return !math.IsNaN(f) && f > 0 && f <= 1 }
	if !valid(degraded) || !valid(critical) || degraded > critical {
		return fmt.Errorf("chanmon: thresholds degraded=%v critical=%v: want 0 < degraded <= critical <= 1",
			degraded, critical)
	}
	return nil
}

// Chan is a bounded channel with counters. It is safe for concurrent use.
type Chan[T any] struct {
	name string
	ch   chan T

	// Closing a Go channel while a send is in progress panics, so senders
	// hold mu's read lock across the send and Close takes the write lock to
	// close ch. done is closed before Close asks for the write lock, which
	// makes senders blocked on a full ch return and release their read lock.
	mu        sync.RWMutex
	closed    bool // guarded by mu
	done      chan struct{}
	closeOnce sync.Once

	sent         atomic.Uint64
	received     atomic.Uint64 // the highest receive count reported so far
	dropped      atomic.Uint64
	blockedSends atomic.Uint64
	blockedNanos atomic.Int64
	maxDepth     atomic.Int64

	thresholds atomic.Pointer[thresholds]
}

// New returns an open channel that buffers up to capacity items. Capacity
// comes from validated configuration, so a capacity below 1 is a programming
// error and New panics.
func New[T any](name string, capacity int) *Chan[T] {
	if capacity < 1 {
		panic(fmt.Sprintf("chanmon: channel %q: capacity %d, want >= 1", name, capacity))
	}
	c := &Chan[T]{
		name: name,
		ch:   make(chan T, capacity),
		done: make(chan struct{}),
	}
	c.thresholds.Store(defaultThresholds)
	return c
}

// Name returns the name the channel was created with.
func (c *Chan[T]) Name() string { return c.name }

// Cap returns the channel's capacity.
func (c *Chan[T]) Cap() int { return cap(c.ch) }

// Len returns the number of items buffered now.
func (c *Chan[T]) Len() int { return len(c.ch) }

// Send delivers v, waiting while the channel is full. It returns
// context.Cause(ctx) if ctx ends before there is room, and ErrClosed if the
// channel is or becomes closed first. A send that can complete at once does
// so without consulting ctx.
func (c *Chan[T]) Send(ctx context.Context, v T) error {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		return ErrClosed
	}
	select {
	case c.ch <- v:
		c.accepted()
		return nil
	default:
	}

	c.blockedSends.Add(1)
	start := time.Now()
	var err error
	select {
	case c.ch <- v:
		c.accepted()
	case <-ctx.Done():
		err = context.Cause(ctx)
	case <-c.done:
		err = ErrClosed
	}
	c.blockedNanos.Add(int64(time.Since(start)))
	return err
}

// TrySend delivers v if there is room and reports whether it did. It never
// blocks. A full channel counts the item as dropped; a closed one does not.
func (c *Chan[T]) TrySend(v T) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		return false
	}
	select {
	case c.ch <- v:
		c.accepted()
		return true
	default:
		c.dropped.Add(1)
		return false
	}
}

func (c *Chan[T]) accepted() {
	c.sent.Add(1)
	d := int64(len(c.ch))
	for {
		m := c.maxDepth.Load()
		if d <= m || c.maxDepth.CompareAndSwap(m, d) {
			return
		}
	}
}

// Recv returns the receive side of the channel, for select loops and range.
// Items taken from it are counted without any call from the receiver.
func (c *Chan[T]) Recv() <-chan T { return c.ch }

// Receive waits for the next item. It returns the item and true; the zero
// value and false once the channel is closed and drained; or the zero value,
// false and context.Cause(ctx) if ctx ends first.
func (c *Chan[T]) Receive(ctx context.Context) (T, bool, error) {
	select {
	case v, ok := <-c.ch:
		return v, ok, nil
	case <-ctx.Done():
		var zero T
		return zero, false, context.Cause(ctx)
	}
}

// Close closes the channel. Later sends fail with ErrClosed, senders waiting
// for room are released with ErrClosed, and receivers get the items still
// buffered before they see the channel closed. Close is idempotent and
// returns once the channel is closed.
func (c *Chan[T]) Close() {
	c.closeOnce.Do(func() {
		close(c.done)
		c.mu.Lock()
		c.closed = true
		close(c.ch)
		c.mu.Unlock()
	})
}

// SetThresholds sets the saturation at which Level becomes Degraded and
// Critical. It returns the error from ValidateThresholds and keeps the
// current thresholds if the new ones are not valid.
func (c *Chan[T]) SetThresholds(degraded, critical float64) error {
	if err := ValidateThresholds(degraded, critical); err != nil {
		return err
	}
	c.thresholds.Store(&thresholds{degraded, critical})
	return nil
}

// Stats returns the channel's current counters.
func (c *Chan[T]) Stats() Stats {
	// Sent is read before the depth. Every send counted by then had already
	// put its item in the buffer or handed it straight to a receiver, and
	// those of its items still buffered are part of the depth read
	// afterwards, so sent-depth never exceeds the true number of receives.
	// Keeping the highest value seen makes the count monotonic, as a metrics
	// counter must be, without ever overstating it.
	sent := c.sent.Load()
	depth := len(c.ch)
	var recv uint64
	if d := uint64(depth); sent > d {
		recv = sent - d
	}
	for {
		prev := c.received.Load()
		if recv <= prev {
			recv = prev
			break
		}
		if c.received.CompareAndSwap(prev, recv) {
			break
		}
	}

	capacity := cap(c.ch)
	sat := float64(depth) / float64(capacity)
	th := c.thresholds.Load()
	level := Healthy
	switch {
	case sat >= th.critical:
		level = Critical
	case sat >= th.degraded:
		level = Degraded
	}
	return Stats{
		Name:         c.name,
		Capacity:     capacity,
		Depth:        depth,
		Saturation:   sat,
		Sent:         sent,
		Received:     recv,
		Dropped:      c.dropped.Load(),
		BlockedSends: c.blockedSends.Load(),
		BlockedTime:  time.Duration(c.blockedNanos.Load()),
		MaxDepth:     int(c.maxDepth.Load()),
		Level:        level,
	}
}
