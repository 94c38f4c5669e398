package events

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tasker-go/tasker/internal/chanmon"
	"github.com/tasker-go/tasker/store"
)

// Handler receives an event. An error or a panic is counted and logged;
// for durable events the delivery is retried with backoff.
type Handler func(ctx context.Context, ev *Event) error

// Config configures a Service. Zero values take the documented defaults.
type Config struct {
	Logger *slog.Logger
	// FastBuffer is the fast bus's capacity; events beyond it are dropped
	// and counted. Default 1024.
	FastBuffer int
	// PollInterval is how often relays look for durable events that no
	// in-process signal announced. Default 500ms.
	PollInterval time.Duration
	// RelayBatch is how many events a relay reads at once. Default 100.
	RelayBatch int
	// DeliveryTimeout bounds one subscriber call. Default 5s.
	DeliveryTimeout time.Duration
	// MaxRetryDelay caps the backoff between durable delivery retries.
	// Default 30s.
	MaxRetryDelay time.Duration
	// Retention is how long delivered durable events are kept. Default 72h.
	Retention time.Duration
	// Monitors, if set, receives the fast bus's channel monitor.
	Monitors *chanmon.Registry
}

func (c *Config) setDefaults() {
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.FastBuffer <= 0 {
		c.FastBuffer = 1024
	}
	if c.PollInterval <= 0 {
		c.PollInterval = 500 * time.Millisecond
	}
	if c.RelayBatch <= 0 {
		c.RelayBatch = 100
	}
	if c.DeliveryTimeout <= 0 {
		c.DeliveryTimeout = 5 * time.Second
	}
	if c.MaxRetryDelay <= 0 {
		c.MaxRetryDelay = 30 * time.Second
	}
	if c.Retention <= 0 {
		c.Retention = 72 * time.Hour
	}
}

type subscription struct {
	name, pattern string
	fn            Handler
	wake          chan struct{}
	// cursor is the stored (acknowledged) position; delivered is how far
	// the relay got, stored at most every cursorFlush so that a busy
	// stream does not cost a write per event.
	cursor    atomic.Int64
	delivered atomic.Int64
	savedAt   time.Time // relay goroutine only
}

// cursorFlush is how long a delivered position may wait before it is
// stored. A crash in that window re-delivers those events (at least once).
const cursorFlush = 25 * time.Millisecond

// Service runs the fast bus and the durable relays.
type Service struct {
	d   store.Driver
	cfg Config
	log *slog.Logger
	*Builder

	mu      sync.Mutex
	bus     *chanmon.Chan[*Event] // nil while stopped
	subs    []*subscription
	names   map[string]bool
	started bool
	ctx     context.Context
	cancel  context.CancelCauseFunc
	relays  sync.WaitGroup
	busDone chan struct{}
}

// NewService returns a service over d that builds events with b.
func NewService(d store.Driver, b *Builder, cfg Config) *Service {
	cfg.setDefaults()
	return &Service{d: d, cfg: cfg, log: cfg.Logger, Builder: b, names: map[string]bool{}}
}

// Subscribe adds a subscriber under a durable subscription name: it gets
// fast events matching pattern from now on, and durable events matching
// pattern from where the subscription's stored cursor stopped (the oldest
// retained event for a new subscription).
func (s *Service) Subscribe(name, pattern string, fn Handler) error {
	if err := ValidatePattern(pattern); err != nil {
		return err
	}
	if fn == nil {
		return errors.New("events: nil subscriber")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.names[name] {
		return fmt.Errorf("events: subscription %q already exists", name)
	}
	s.names[name] = true
	sub := &subscription{name: name, pattern: pattern, fn: fn, wake: make(chan struct{}, 1)}
	s.subs = append(s.subs, sub)
	if s.started {
		s.startRelay(sub)
	}
	return nil
}

// Start runs the fast bus dispatcher, a relay per durable subscription, and
// the retention pruner. Only Stop ends them.
func (s *Service) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		return nil
	}
	s.started = true
	s.ctx, s.cancel = context.WithCancelCause(context.WithoutCancel(ctx))
	s.busDone = make(chan struct{})
	s.bus = chanmon.New[*Event]("events.fast_bus", s.cfg.FastBuffer)
	if s.cfg.Monitors != nil {
		s.cfg.Monitors.Unregister(s.bus.Name())
		_ = s.cfg.Monitors.Register(s.bus)
	}
	go s.runBus(s.bus)
	for _, sub := range s.subs {
		s.startRelay(sub)
	}
	s.relays.Add(1)
	go func() {
		defer s.relays.Done()
		s.runPruner(s.ctx)
	}()
	return nil
}

func (s *Service) startRelay(sub *subscription) {
	s.relays.Add(1)
	go func() {
		defer s.relays.Done()
		s.runRelay(s.ctx, sub)
	}()
}

// Stop delivers the fast events already on the bus, stops the relays
// (durable events not yet delivered are delivered after a restart) and
// waits, bounded by ctx. A stopped service may be started again.
func (s *Service) Stop(ctx context.Context) error {
	s.mu.Lock()
	if !s.started {
		s.mu.Unlock()
		return nil
	}
	s.started = false
	bus, busDone, cancel := s.bus, s.busDone, s.cancel
	s.bus = nil
	s.mu.Unlock()
	bus.Close()
	done := make(chan struct{})
	go func() {
		<-busDone
		cancel(ErrClosed)
		s.relays.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		cancel(ErrClosed)
		return fmt.Errorf("stop events: %w", context.Cause(ctx))
	}
}

// PublishFast puts fast events on the bus without blocking: the caller is
// a worker's post-handler callback. What does not fit is dropped and
// counted.
func (s *Service) PublishFast(evs []*Event) {
	s.mu.Lock()
	bus := s.bus
	s.mu.Unlock()
	for _, ev := range evs {
		if bus == nil || !bus.TrySend(ev) {
			s.fast.dropped.Add(1)
			s.log.Warn("fast event dropped: bus full or closed", "event", ev.Name, "task_uuid", ev.TaskUUID)
		}
	}
}

// WakeRelays tells the relays that durable events were committed.
func (s *Service) WakeRelays() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sub := range s.subs {
		select {
		case sub.wake <- struct{}{}:
		default:
		}
	}
}

func (s *Service) snapshotSubs() []*subscription {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*subscription(nil), s.subs...)
}

func (s *Service) runBus(bus *chanmon.Chan[*Event]) {
	defer close(s.busDone)
	for ev := range bus.Recv() {
		for _, sub := range s.snapshotSubs() {
			if !MatchPattern(sub.pattern, ev.Name) {
				continue
			}
			if err := s.deliver(context.Background(), sub, ev); err != nil {
				s.fast.failed.Add(1)
				s.log.Warn("fast event subscriber failed", "subscription", sub.name, "event", ev.Name,
					"task_uuid", ev.TaskUUID, "error", err)
				continue
			}
			s.fast.delivered.Add(1)
		}
	}
}

// deliver calls a subscriber with a timeout, isolating its panics.
func (s *Service) deliver(ctx context.Context, sub *subscription, ev *Event) error {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.DeliveryTimeout)
	defer cancel()
	done := make(chan error, 1)
	cp := *ev
	go func() {
		defer func() {
			if r := recover(); r != nil {
				done <- fmt.Errorf("subscriber panicked: %v", r)
			}
		}()
		done <- sub.fn(ctx, &cp)
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("subscriber did not return within %s", s.cfg.DeliveryTimeout)
	}
}

func (s *Service) runRelay(ctx context.Context, sub *subscription) {
	cursor, err := s.d.Reader().EventCursorGet(ctx, store.EventCursorGetParams{Subscription: sub.name})
	for err != nil {
		s.log.Error("read event cursor; retrying", "subscription", sub.name, "error", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
		cursor, err = s.d.Reader().EventCursorGet(ctx, store.EventCursorGetParams{Subscription: sub.name})
	}
	sub.cursor.Store(cursor)
	sub.delivered.Store(cursor)
	// Progress delivered but not yet stored is stored when the relay stops.
	defer func() { s.saveCursor(ctx, sub, sub.delivered.Load()) }()
	if cursor == 0 {
		// Store the cursor of a subscription that has acknowledged nothing
		// yet, so that pruning (here or in another process) knows it is
		// there and keeps the events it has not received.
		err := store.InTx(ctx, s.d, func(tx store.Tx) error {
			return tx.EventCursorSet(ctx, store.EventCursorSetParams{Subscription: sub.name, Now: time.Now()})
		})
		if err != nil && ctx.Err() == nil {
			s.log.Error("register event cursor", "subscription", sub.name, "error", err)
		}
	}
	tick := time.NewTicker(s.cfg.PollInterval)
	defer tick.Stop()
	for {
		n, err := s.relayBatch(ctx, sub)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			s.log.Error("relay durable events", "subscription", sub.name, "error", err)
		}
		// Only a full batch means more is waiting now: a commit after the
		// read has signalled sub.wake, so a partial batch waits for that
		// signal (or the poll) instead of paying for an empty read.
		if n >= s.cfg.RelayBatch && err == nil {
			continue
		}
		var flush <-chan time.Time
		if sub.delivered.Load() > sub.cursor.Load() {
			flush = time.After(cursorFlush)
		}
		select {
		case <-ctx.Done():
			return
		case <-sub.wake:
		case <-tick.C:
		case <-flush:
			s.saveCursor(ctx, sub, sub.delivered.Load())
		}
	}
}

// relayBatch delivers the next batch of durable events to sub, each until
// it succeeds, then stores the cursor: an event is acknowledged once the
// cursor past it is stored, and is never delivered again after that.
func (s *Service) relayBatch(ctx context.Context, sub *subscription) (int, error) {
	rows, err := s.d.Reader().EventsAfter(ctx, store.EventsAfterParams{After: sub.delivered.Load(), Limit: s.cfg.RelayBatch})
	if err != nil || len(rows) == 0 {
		return 0, err
	}
	last := sub.delivered.Load()
	for _, r := range rows {
		if MatchPattern(sub.pattern, r.Name) {
			ev, err := DecodeRow(r)
			if err != nil {
				s.durable.failed.Add(1)
				s.log.Error("undecodable durable event skipped", "seq", r.Seq, "event", r.Name, "error", err)
			} else if err := s.deliverDurable(ctx, sub, ev, last); err != nil {
				s.saveCursor(ctx, sub, last)
				return 0, err
			}
		}
		last = r.Seq
		sub.delivered.Store(last)
	}
	if time.Since(sub.savedAt) >= cursorFlush {
		s.saveCursor(ctx, sub, last)
	}
	return len(rows), nil
}

// deliverDurable retries a durable delivery with backoff until it succeeds
// or the relay stops. Before the first retry it stores the cursor at
// acked, the last event of the batch already delivered, so that a
// subscriber stuck on this event does not hold back the acknowledgement
// of the ones before it (a crash would deliver them again).
func (s *Service) deliverDurable(ctx context.Context, sub *subscription, ev *Event, acked int64) error {
	delay := 50 * time.Millisecond
	for {
		err := s.deliver(ctx, sub, ev)
		if err == nil {
			s.durable.delivered.Add(1)
			return nil
		}
		s.durable.failed.Add(1)
		s.saveCursor(ctx, sub, acked)
		s.log.Warn("durable event subscriber failed; retrying", "subscription", sub.name, "event", ev.Name,
			"seq", ev.Seq, "task_uuid", ev.TaskUUID, "retry_in", delay, "error", err)
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-time.After(delay):
		}
		delay = min(delay*2, s.cfg.MaxRetryDelay)
	}
}

func (s *Service) saveCursor(ctx context.Context, sub *subscription, pos int64) {
	if pos <= sub.cursor.Load() {
		return
	}
	// Not cancelled with the relay: progress made before a stop is kept.
	ctx = context.WithoutCancel(ctx)
	err := store.InTx(ctx, s.d, func(tx store.Tx) error {
		return tx.EventCursorSet(ctx, store.EventCursorSetParams{Subscription: sub.name, Position: pos, Now: time.Now()})
	})
	if err != nil {
		// Delivered but not acknowledged: delivered again later (at least
		// once).
		s.log.Error("store event cursor", "subscription", sub.name, "error", err)
		return
	}
	sub.cursor.Store(pos)
	sub.savedAt = time.Now()
}

func (s *Service) runPruner(ctx context.Context) {
	tick := time.NewTicker(time.Minute)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if _, err := s.Prune(ctx, time.Now()); err != nil && ctx.Err() == nil {
			s.log.Error("prune durable events", "error", err)
		}
	}
}

// Prune deletes durable events older than the retention that every stored
// subscription cursor has passed.
func (s *Service) Prune(ctx context.Context, now time.Time) (int, error) {
	cursors, err := s.d.Reader().EventCursors(ctx)
	if err != nil {
		return 0, err
	}
	var upTo int64
	for i, c := range cursors {
		if i == 0 || c.Position < upTo {
			upTo = c.Position
		}
	}
	if len(cursors) > 0 && upTo == 0 {
		return 0, nil
	}
	var n int
	err = store.InTx(ctx, s.d, func(tx store.Tx) error {
		var err error
		n, err = tx.EventsPrune(ctx, store.EventsPruneParams{Before: now.Add(-s.cfg.Retention), UpTo: upTo})
		return err
	})
	return n, err
}

// DecodeRow turns a stored event back into an Event.
func DecodeRow(r store.EventRow) (*Event, error) {
	var ev Event
	if err := json.Unmarshal(r.Payload, &ev); err != nil {
		return nil, fmt.Errorf("event %d: %w", r.Seq, err)
	}
	ev.Seq = r.Seq
	return &ev, nil
}

// Read returns up to limit durable events after the sequence after.
func (s *Service) Read(ctx context.Context, after int64, limit int) ([]*Event, error) {
	rows, err := s.d.Reader().EventsAfter(ctx, store.EventsAfterParams{After: after, Limit: limit})
	if err != nil {
		return nil, err
	}
	out := make([]*Event, 0, len(rows))
	for _, r := range rows {
		ev, err := DecodeRow(r)
		if err != nil {
			return nil, err
		}
		out = append(out, ev)
	}
	return out, nil
}

// SubscriptionStats is one durable subscription's progress.
type SubscriptionStats struct {
	Name, Pattern string
	Cursor        int64
	// Lag is the age of the oldest durable event after the cursor, 0 when
	// the subscription is caught up.
	Lag time.Duration
}

// Stats is a snapshot of the service's counters.
type Stats struct {
	Durable, Fast Counters
	Subscriptions []SubscriptionStats
	FastBus       chanmon.Stats
}

// Stats returns counters, per-subscription progress and relay lag.
func (s *Service) Stats(ctx context.Context) Stats {
	st := Stats{Durable: s.durable.snapshot(), Fast: s.fast.snapshot()}
	s.mu.Lock()
	if s.bus != nil {
		st.FastBus = s.bus.Stats()
	}
	s.mu.Unlock()
	for _, sub := range s.snapshotSubs() {
		ss := SubscriptionStats{Name: sub.name, Pattern: sub.pattern, Cursor: sub.cursor.Load()}
		if rows, err := s.d.Reader().EventsAfter(ctx, store.EventsAfterParams{After: ss.Cursor, Limit: 1}); err == nil && len(rows) > 0 {
			ss.Lag = time.Since(rows[0].CreatedAt)
		}
		st.Subscriptions = append(st.Subscriptions, ss)
	}
	return st
}

// Outbox writes a step outcome's durable events in the caller's
// transaction and reports how many it wrote.
func (s *Service) Outbox(ctx context.Context, tx store.Tx, o StepOutcome) (int, error) {
	o.Durable = true
	evs := s.Build(ctx, o)
	if len(evs) == 0 {
		return 0, nil
	}
	rows := make([]store.EventInsert, len(evs))
	for i, ev := range evs {
		b, err := json.Marshal(ev)
		if err != nil {
			return 0, fmt.Errorf("encode event %s: %w", ev.Name, err)
		}
		rows[i] = store.EventInsert{EventID: ev.ID, Name: ev.Name, TaskUUID: ev.TaskUUID, StepUUID: ev.StepUUID, Payload: b}
	}
	if err := tx.EventsInsert(ctx, store.EventsInsertParams{Events: rows, Now: o.At}); err != nil {
		return 0, err
	}
	return len(evs), nil
}
