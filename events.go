package tasker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tasker-go/tasker/internal/events"
	"github.com/tasker-go/tasker/internal/worker"
	"github.com/tasker-go/tasker/store"
)

// Publisher is a custom domain-event publisher, named in a template by
// publishes_events[].publisher. It may change the event's Payload and
// Metadata, or veto the event by returning false. An error, a panic or a
// call that outlives Config.EventPublisherTimeout drops the event (counted
// and logged); it never fails the step. Publishers of durable events run
// inside the transaction that records the step's outcome: keep them quick.
type Publisher interface {
	Publish(ctx context.Context, ev *DomainEvent) (publish bool, err error)
}

// PublisherFunc adapts a function to Publisher.
type PublisherFunc func(ctx context.Context, ev *DomainEvent) (bool, error)

// Publish calls f.
func (f PublisherFunc) Publish(ctx context.Context, ev *DomainEvent) (bool, error) { return f(ctx, ev) }

// RegisterPublisher registers a custom publisher under name. Register it
// before the templates that name it: a template naming an unknown publisher
// is refused.
func (e *Engine) RegisterPublisher(name string, p Publisher) {
	if p == nil {
		panic("tasker: RegisterPublisher(" + name + ") with a nil publisher")
	}
	e.events.RegisterPublisher(name, publisherAdapter{p})
}

type publisherAdapter struct{ p Publisher }

func (a publisherAdapter) Publish(ctx context.Context, ev *events.Event) (bool, error) {
	de := domainEvent(ev)
	ok, err := a.p.Publish(ctx, &de)
	ev.Payload, ev.Metadata = de.Payload, de.Metadata
	return ok, err
}

func domainEvent(ev *events.Event) DomainEvent {
	return DomainEvent{
		ID: ev.ID, Name: ev.Name, TaskUUID: ev.TaskUUID, StepUUID: ev.StepUUID, StepName: ev.StepName,
		Namespace: ev.Namespace, Payload: ev.Payload, FiredAt: ev.FiredAt, Seq: ev.Seq, Version: ev.Version,
		TaskName: ev.TaskName, CorrelationID: ev.CorrelationID, Condition: ev.Condition, DeliveryMode: ev.DeliveryMode,
		Attempt: ev.Attempt, Error: ev.Error, Context: ev.Context, Metadata: ev.Metadata,
	}
}

// Subscribe registers fn for domain events whose name matches pattern:
// "*" (everything), "order.*" (names under "order.") or an exact name. fn
// receives fast events as they are published and durable events through a
// durable subscription named after the pattern and the order of Subscribe
// calls for it ("order.*#0", "order.*#1", …), whose cursor is stored: a
// restarted program that subscribes in the same order resumes where it
// stopped, and an event it acknowledged is not delivered again. fn's error
// or panic is logged and counted; a durable delivery is then retried with
// backoff, and the step is never affected. A malformed pattern panics, as
// it is a programming error.
func (e *Engine) Subscribe(pattern string, fn func(ctx context.Context, ev DomainEvent) error) {
	e.mu.Lock()
	n := e.subscriptions[pattern]
	e.subscriptions[pattern] = n + 1
	e.mu.Unlock()
	if err := e.SubscribeDurable(fmt.Sprintf("%s#%d", pattern, n), pattern, fn); err != nil {
		panic("tasker: Subscribe: " + err.Error())
	}
}

// SubscribeDurable is Subscribe with an explicit durable subscription
// name, the key of its stored cursor.
func (e *Engine) SubscribeDurable(name, pattern string, fn func(ctx context.Context, ev DomainEvent) error) error {
	if fn == nil {
		return errors.New("tasker: SubscribeDurable: nil subscriber")
	}
	return e.events.Subscribe(name, pattern, func(ctx context.Context, ev *events.Event) error {
		return fn(ctx, domainEvent(ev))
	})
}

// Events reads the durable domain-event stream: up to limit events (default
// 100) whose Seq is above after, in commit order.
func (e *Engine) Events(ctx context.Context, after int64, limit int) ([]DomainEvent, error) {
	evs, err := e.events.Read(ctx, after, limit)
	if err != nil {
		return nil, err
	}
	out := make([]DomainEvent, len(evs))
	for i, ev := range evs {
		out[i] = domainEvent(ev)
	}
	return out, nil
}

// EventCounters count domain events of one delivery class.
type EventCounters struct {
	// Published events passed their condition, publisher and schema.
	Published uint64
	// Delivered counts successful subscriber calls.
	Delivered uint64
	// Dropped counts fast events the full bus could not take.
	Dropped uint64
	// Failed counts publisher and subscriber failures.
	Failed uint64
	// SchemaRejected counts events whose payload failed their schema.
	SchemaRejected uint64
	// Vetoed counts events a publisher declined.
	Vetoed uint64
}

// SubscriptionStats is a durable subscription's progress.
type SubscriptionStats struct {
	Name, Pattern string
	// Cursor is the Seq of the last acknowledged event.
	Cursor int64
	// Lag is the age of the oldest event not yet acknowledged.
	Lag time.Duration
}

// EventStats is a snapshot of domain-event counters.
type EventStats struct {
	Durable, Fast EventCounters
	Subscriptions []SubscriptionStats
	// FastBusDepth and FastBusSaturation describe the fast bus's buffer.
	FastBusDepth      int
	FastBusSaturation float64
}

// EventStats returns domain-event counters, each durable subscription's
// cursor and lag, and the fast bus's saturation.
func (e *Engine) EventStats(ctx context.Context) EventStats {
	st := e.events.Stats(ctx)
	conv := func(c events.Counters) EventCounters {
		return EventCounters{Published: c.Published, Delivered: c.Delivered, Dropped: c.Dropped, Failed: c.Failed,
			SchemaRejected: c.SchemaRejected, Vetoed: c.Vetoed}
	}
	out := EventStats{Durable: conv(st.Durable), Fast: conv(st.Fast), FastBusDepth: st.FastBus.Depth,
		FastBusSaturation: st.FastBus.Saturation}
	for _, s := range st.Subscriptions {
		out.Subscriptions = append(out.Subscriptions, SubscriptionStats(s))
	}
	return out
}

// fastEvents is the worker's post-handler callback: it runs only after a
// result entered the completion channel, and publishes the step's fast
// events. It never blocks on subscribers.
type fastEvents struct{ e *Engine }

func (f fastEvents) OnHandlerComplete(ctx context.Context, r *worker.Result) {
	f.e.stepFinished(r)
	t, err := f.e.orch.Templates().Get(ctx, r.Step.Namespace, r.Step.TaskName, r.Step.Version)
	if err != nil {
		return
	}
	def, ok := t.Step(r.Step.StepName)
	if !ok || len(def.PublishesEvents) == 0 {
		return
	}
	o := events.StepOutcome{Template: t, StepName: r.Step.StepName, TaskUUID: r.Step.TaskUUID, StepUUID: r.Step.StepUUID,
		Context: r.Step.TaskContext, Attempt: r.Step.Attempt, At: r.Finished}
	switch {
	case r.Success:
		o.Outcome, o.Result = events.OutcomeSuccess, r.Value
	case r.Error != nil && r.Error.Type == store.ErrorTypeWorkerStopping:
		return // the attempt is given back, not failed
	default:
		o.Outcome = events.OutcomePermanentFailure
		if r.Error != nil && r.Error.Retryable && def.Retry.Retryable && r.Step.Attempt < r.Step.MaxAttempts {
			o.Outcome = events.OutcomeRetryableFailure
		}
		o.Error = marshalOrNil(r.Error)
	}
	f.e.events.PublishFast(f.e.events.Build(ctx, o))
}
