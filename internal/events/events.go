// Package events publishes domain events about steps, strictly after the
// step's outcome is committed to the pipeline.
//
// Durable events are rows written in the same transaction as the step's
// outcome (an outbox); a relay delivers them after commit to each durable
// subscription, at least once and in commit order, resuming from a stored
// cursor after a restart. Fast events are published by the worker's
// post-handler callback, which runs only after the result entered the
// completion channel; an in-process bus fans them out and drops (and
// counts) what its bounded buffer cannot hold. Broadcast is both.
//
// Neither a publisher nor a subscriber can fail a step: their errors and
// panics are logged and counted, and durable delivery retries.
package events

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"github.com/tasker-go/tasker/template"
)

// Event is a domain event as publishers and subscribers see it.
type Event struct {
	// Seq is the durable stream position (0 for fast events).
	Seq           int64           `json:"-"`
	ID            string          `json:"event_id"`
	Name          string          `json:"name"`
	Version       string          `json:"version"`
	TaskUUID      string          `json:"task_uuid"`
	StepUUID      string          `json:"step_uuid"`
	StepName      string          `json:"step_name"`
	Namespace     string          `json:"namespace"`
	TaskName      string          `json:"task_name"`
	CorrelationID string          `json:"correlation_id"`
	Condition     string          `json:"condition"`
	DeliveryMode  string          `json:"delivery_mode"`
	Attempt       int             `json:"attempt"`
	Payload       json.RawMessage `json:"payload"`
	Error         json.RawMessage `json:"error,omitempty"`
	Context       json.RawMessage `json:"context"`
	FiredAt       time.Time       `json:"fired_at"`
	Metadata      map[string]any  `json:"metadata,omitempty"`
}

// Publisher is a custom publisher named by a template's
// publishes_events[].publisher. It may change the event's payload and
// metadata, or veto the event by returning false. An error or a panic
// drops the event (counted and logged); it never fails the step.
type Publisher interface {
	Publish(ctx context.Context, ev *Event) (publish bool, err error)
}

// Outcome is how an attempt of a step ended, as event conditions see it.
type Outcome string

// Outcomes.
const (
	OutcomeSuccess          Outcome = "success"
	OutcomeRetryableFailure Outcome = "retryable_failure" // will be retried
	OutcomePermanentFailure Outcome = "permanent_failure" // will not be retried
)

// Matches reports whether an event declared with condition fires for o.
func (o Outcome) Matches(condition string) bool {
	switch condition {
	case template.EventAlways:
		return true
	case template.EventOnFailure:
		return o == OutcomeRetryableFailure || o == OutcomePermanentFailure
	case "", template.EventOnSuccess:
		return o == OutcomeSuccess
	}
	return string(o) == condition
}

// StepOutcome describes an attempt's outcome for event building.
type StepOutcome struct {
	Template *template.Template
	StepName string
	TaskUUID string
	StepUUID string
	Context  json.RawMessage
	Attempt  int
	Outcome  Outcome
	Result   json.RawMessage // on success
	Error    json.RawMessage // on failure
	At       time.Time
	Durable  bool // build durable (durable, broadcast) or fast (fast, broadcast) events
}

// MatchPattern reports whether an event name matches a subscription
// pattern: "*" matches everything, "order.*" matches names under "order.",
// anything else matches exactly.
func MatchPattern(pattern, name string) bool {
	switch {
	case pattern == "*":
		return true
	case strings.HasSuffix(pattern, ".*"):
		return strings.HasPrefix(name, strings.TrimSuffix(pattern, "*"))
	}
	return pattern == name
}

// ValidatePattern checks a subscription pattern.
func ValidatePattern(pattern string) error {
	p := strings.TrimSuffix(pattern, ".*")
	if pattern == "*" {
		return nil
	}
	if p == "" || strings.Contains(p, "*") || strings.ContainsAny(p, " \t") ||
		strings.HasPrefix(p, ".") || strings.HasSuffix(p, ".") || strings.Contains(p, "..") {
		return fmt.Errorf("events: invalid subscription pattern %q (want \"*\", \"prefix.*\" or an exact event name)", pattern)
	}
	return nil
}

// Counters are per delivery mode.
type Counters struct {
	Published, Delivered, Dropped, Failed, SchemaRejected, Vetoed uint64
}

type counters struct {
	published, delivered, dropped, failed, schemaRejected, vetoed atomic.Uint64
}

func (c *counters) snapshot() Counters {
	return Counters{Published: c.published.Load(), Delivered: c.delivered.Load(), Dropped: c.dropped.Load(),
		Failed: c.failed.Load(), SchemaRejected: c.schemaRejected.Load(), Vetoed: c.vetoed.Load()}
}

// Builder turns step outcomes into events: it applies each declaration's
// condition, runs its custom publisher, and validates the payload against
// its schema.
type Builder struct {
	log              *slog.Logger
	publisherTimeout time.Duration

	mu         sync.RWMutex
	publishers map[string]Publisher

	durable, fast counters
}

// NewBuilder returns a builder. publisherTimeout bounds one publisher call.
func NewBuilder(log *slog.Logger, publisherTimeout time.Duration) *Builder {
	if publisherTimeout <= 0 {
		publisherTimeout = time.Second
	}
	return &Builder{log: log, publisherTimeout: publisherTimeout, publishers: map[string]Publisher{}}
}

// RegisterPublisher registers a custom publisher under name.
func (b *Builder) RegisterPublisher(name string, p Publisher) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.publishers[name] = p
}

// HasPublisher reports whether a publisher is registered under name.
func (b *Builder) HasPublisher(name string) bool {
	b.mu.RLock()
	defer b.mu.RUnlock()
	_, ok := b.publishers[name]
	return ok
}

// CheckTemplate returns the problems of a template's event declarations
// that only the engine can see: publishers that are not registered.
func (b *Builder) CheckTemplate(t *template.Template) []template.Problem {
	var out []template.Problem
	for _, s := range t.Steps {
		for i, ev := range s.PublishesEvents {
			if ev.Publisher != "" && !b.HasPublisher(ev.Publisher) {
				out = append(out, template.Problem{Template: t.Key(), Step: s.Name,
					Field:   fmt.Sprintf("publishes_events[%d].publisher", i),
					Message: fmt.Sprintf("publisher %q is not registered (event %s)", ev.Publisher, ev.Name)})
			}
		}
	}
	return out
}

func (b *Builder) counters(durable bool) *counters {
	if durable {
		return &b.durable
	}
	return &b.fast
}

// Build returns the events a step outcome publishes in one delivery class
// (durable: durable and broadcast declarations; fast: fast and broadcast).
// Events vetoed, failed by their publisher, or rejected by their schema
// are left out, counted and logged.
func (b *Builder) Build(ctx context.Context, o StepOutcome) []*Event {
	def, ok := o.Template.Step(o.StepName)
	if !ok || len(def.PublishesEvents) == 0 {
		return nil
	}
	var out []*Event
	for _, decl := range def.PublishesEvents {
		mode := decl.DeliveryMode
		if mode == "" {
			mode = template.DeliveryDurable
		}
		wantDurable := mode == template.DeliveryDurable || mode == template.DeliveryBroadcast
		wantFast := mode == template.DeliveryFast || mode == template.DeliveryBroadcast
		if (o.Durable && !wantDurable) || (!o.Durable && !wantFast) || !o.Outcome.Matches(decl.Condition) {
			continue
		}
		c := b.counters(o.Durable)
		ev := &Event{
			ID: uuid.Must(uuid.NewV7()).String(), Name: decl.Name, Version: o.Template.Version,
			TaskUUID: o.TaskUUID, StepUUID: o.StepUUID, StepName: o.StepName, Namespace: o.Template.Namespace,
			TaskName: o.Template.Name, CorrelationID: o.TaskUUID, Condition: string(o.Outcome),
			DeliveryMode: mode, Attempt: o.Attempt, Payload: o.Result, Error: o.Error, Context: o.Context, FiredAt: o.At,
		}
		if ev.Payload == nil {
			ev.Payload = o.Error
		}
		if ev.Payload == nil {
			ev.Payload = json.RawMessage("null")
		}
		if decl.Publisher != "" {
			if !b.runPublisher(ctx, decl.Publisher, ev, c) {
				continue
			}
		}
		if err := decl.ValidatePayload(ev.Payload); err != nil {
			c.schemaRejected.Add(1)
			b.log.Warn("domain event rejected by its schema; not published", "event", ev.Name, "task_uuid", ev.TaskUUID,
				"step_uuid", ev.StepUUID, "error", err)
			continue
		}
		c.published.Add(1)
		out = append(out, ev)
	}
	return out
}

// runPublisher calls a custom publisher with a timeout and panic isolation.
// It reports whether the event is still to be published.
func (b *Builder) runPublisher(ctx context.Context, name string, ev *Event, c *counters) bool {
	b.mu.RLock()
	p := b.publishers[name]
	b.mu.RUnlock()
	if p == nil {
		c.failed.Add(1)
		b.log.Error("domain event publisher not registered; event dropped", "publisher", name, "event", ev.Name)
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, b.publisherTimeout)
	defer cancel()
	type result struct {
		ok  bool
		err error
	}
	done := make(chan result, 1)
	work := *ev // the publisher edits a copy until it returns in time
	go func() {
		defer func() {
			if r := recover(); r != nil {
				done <- result{err: fmt.Errorf("publisher panicked: %v", r)}
			}
		}()
		ok, err := p.Publish(ctx, &work)
		done <- result{ok, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			c.failed.Add(1)
			b.log.Error("domain event publisher failed; event dropped", "publisher", name, "event", ev.Name,
				"task_uuid", ev.TaskUUID, "error", r.err)
			return false
		}
		if !r.ok {
			c.vetoed.Add(1)
			return false
		}
		*ev = work
		return true
	case <-ctx.Done():
		c.failed.Add(1)
		b.log.Error("domain event publisher timed out; event dropped", "publisher", name, "event", ev.Name,
			"task_uuid", ev.TaskUUID, "timeout", b.publisherTimeout)
		return false
	}
}

// ErrClosed is returned by operations on a stopped service.
var ErrClosed = errors.New("events: closed")
