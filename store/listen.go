package store

import (
	"context"
	"time"
)

// EventsTopic is the Listener topic that signals newly committed durable
// events. Queue topics are queue names (WorkerQueue, OrchestrationQueue).
const EventsTopic = "durable_events"

// TasksSettledTopic is the Listener topic that signals a committed
// transaction that settled one or more tasks (a terminal state or
// blocked_by_failures): a process waiting for tasks another process runs
// reads them back then instead of at its next poll.
const TasksSettledTopic = "tasks_settled"

// Listener is implemented by drivers that can push a signal to other
// processes when queue messages or durable events are committed
// (PostgreSQL's LISTEN/NOTIFY). Drivers without it are polled; signals
// inside one process do not need it.
//
// A signal is only a hint that work may be waiting: it can be lost (while
// the listener is disconnected), duplicated or arrive for work another
// process already took. Callers keep a fallback poll and run a catch-up
// poll from OnConnect.
type Listener interface {
	// Listen subscribes to p.Topics on a connection of its own and calls
	// p.OnNotify for each signal until ctx ends. A lost connection is
	// reopened with backoff and the topics subscribed again; p.OnConnect
	// runs after every successful subscription, the first included. Listen
	// returns nil once ctx ends.
	Listen(ctx context.Context, p ListenParams) error
}

// ListenParams configures Listener.Listen.
type ListenParams struct {
	// Topics are queue names, EventsTopic and TasksSettledTopic.
	Topics []string
	// OnNotify is called with the topic of each signal. It must not block.
	OnNotify func(topic string)
	// OnConnect, if set, is called each time the subscription is in
	// place, after a reconnection too. Signals sent while disconnected
	// are lost, so this is where a caller looks for missed work.
	OnConnect func()
	// OnError, if set, is told why the connection was lost or could not
	// be opened, and when the next attempt is made.
	OnError func(err error, retryIn time.Duration)
	// IgnoreOwn skips signals sent by transactions of this same driver:
	// a caller that already wakes its own consumers in-process after each
	// commit only needs other processes' signals.
	IgnoreOwn bool
}
