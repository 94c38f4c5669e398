package tasker

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/tasker-go/tasker/store"
)

// DeploymentMode chooses how a started engine learns that work is waiting
// in the database; see Config.DeploymentMode.
type DeploymentMode string

// The deployment modes.
const (
	// DeploymentHybrid listens for the database's notifications and keeps
	// polling every PollInterval as a fallback.
	DeploymentHybrid DeploymentMode = "hybrid"
	// DeploymentPollingOnly only polls, every PollInterval.
	DeploymentPollingOnly DeploymentMode = "polling_only"
	// DeploymentEventDrivenOnly relies on notifications; the queues are
	// polled only as a safety net, every EventDrivenSafetyInterval (or
	// PollInterval if longer), and after every reconnection of the
	// listener.
	DeploymentEventDrivenOnly DeploymentMode = "event_driven_only"
)

// EventDrivenSafetyInterval is the shortest interval at which an engine in
// DeploymentEventDrivenOnly polls its queues.
const EventDrivenSafetyInterval = 30 * time.Second

func (m DeploymentMode) valid() bool {
	switch m {
	case "", DeploymentHybrid, DeploymentPollingOnly, DeploymentEventDrivenOnly:
		return true
	}
	return false
}

// listens reports whether the mode uses notifications.
func (m DeploymentMode) listens() bool { return m != DeploymentPollingOnly }

// queuePollInterval is how often the queue pollers (worker claims, queued
// results, durable event relays) run without a signal; zero leaves each
// component's default. Sweeps for due retries and expired leases keep
// PollInterval in every mode: no notification announces them.
func (c *Config) queuePollInterval() time.Duration {
	if c.DeploymentMode == DeploymentEventDrivenOnly {
		return max(c.PollInterval, EventDrivenSafetyInterval)
	}
	return c.PollInterval
}

// checkDeploymentMode refuses a mode the store cannot serve.
func checkDeploymentMode(mode DeploymentMode, d store.Driver) error {
	if _, ok := d.(store.Listener); !ok && mode == DeploymentEventDrivenOnly {
		return fmt.Errorf("tasker: Config.DeploymentMode %s needs a store with notifications (PostgreSQL); %s has none, use %s or %s",
			mode, d.Name(), DeploymentHybrid, DeploymentPollingOnly)
	}
	return nil
}

// listening runs the store's listener for a started engine and restarts it
// when the engine's queues change.
type listening struct {
	cancel  context.CancelFunc
	done    chan struct{}
	restart chan struct{}
}

// startListening starts listening if the mode and the store allow it. The
// caller holds e.mu.
func (e *Engine) startListening(ctx context.Context) {
	l, ok := e.driver.(store.Listener)
	if !ok || !e.cfg.DeploymentMode.listens() || e.listening != nil {
		return
	}
	// Only stopListening ends it: ctx may be a start-up context.
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	ls := &listening{cancel: cancel, done: make(chan struct{}), restart: make(chan struct{}, 1)}
	e.listening = ls
	go func() {
		defer close(ls.done)
		for ctx.Err() == nil {
			runCtx, stop := context.WithCancel(ctx)
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				select {
				case <-ls.restart:
					stop()
				case <-runCtx.Done():
				}
			}()
			_ = l.Listen(runCtx, store.ListenParams{
				Topics:    e.listenTopics(),
				OnNotify:  e.onNotify,
				OnConnect: e.catchUp,
				// This engine wakes its own consumers after its commits.
				IgnoreOwn: true,
				OnError: func(err error, retryIn time.Duration) {
					e.log.Warn("database listener disconnected; reconnecting", "error", err, "retry_in", retryIn)
				},
			})
			stop()
			wg.Wait()
		}
	}()
}

// relisten makes the listener subscribe again, to the engine's current
// queues. The caller holds e.mu.
func (e *Engine) relisten() {
	if e.listening == nil {
		return
	}
	select {
	case e.listening.restart <- struct{}{}:
	default:
	}
}

// stopListening ends the listener and waits for it. The caller does not
// hold e.mu.
func (e *Engine) stopListening() {
	e.mu.Lock()
	ls := e.listening
	e.listening = nil
	e.mu.Unlock()
	if ls != nil {
		ls.cancel()
		<-ls.done
	}
}

// listenTopics is what this process reacts to: its worker queues, queued
// results, durable events and tasks settled by other processes.
func (e *Engine) listenTopics() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	topics := []string{store.OrchestrationQueue, store.EventsTopic, store.TasksSettledTopic}
	if e.cfg.hasRole(RoleWorker) {
		for ns := range e.namespaces {
			topics = append(topics, store.WorkerQueue(ns))
		}
	}
	sort.Strings(topics)
	return topics
}

func (e *Engine) onNotify(topic string) {
	switch {
	case store.IsWorkerQueue(topic):
		e.wakeWorker()
	case topic == store.OrchestrationQueue:
		e.orch.WakeResults()
	case topic == store.EventsTopic:
		e.events.WakeRelays()
	case topic == store.TasksSettledTopic:
		e.polls.checkAll()
	}
}

// catchUp looks for work announced while the listener was not subscribed.
func (e *Engine) catchUp() {
	e.wakeWorker()
	e.orch.WakeResults()
	e.events.WakeRelays()
	e.polls.checkAll()
}

func (e *Engine) wakeWorker() {
	e.mu.Lock()
	w := e.worker
	e.mu.Unlock()
	if w != nil {
		w.Wake()
	}
}
