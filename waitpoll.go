package tasker

import (
	"context"
	"sync"
	"time"

	"github.com/tasker-go/tasker/state"
	"github.com/tasker-go/tasker/store"
)

// How often a task that WaitTask waits for is read back, for the changes
// no in-process signal announces (another process settled it): first
// after waitPollFirst, then twice as long each time, up to waitPollMax.
const (
	waitPollFirst = 20 * time.Millisecond
	waitPollMax   = 250 * time.Millisecond
)

// waitPoller reads back the tasks that WaitTask calls wait for, all those
// due in one read. A poll per waiter had made every waiter read on its
// own: under a load that made tasks slow to finish, a thousand waiters
// issued tens of thousands of reads a second, which slowed the tasks
// further; now a tick costs one read however many wait.
type waitPoller struct {
	e *Engine
	// first and most bound the interval between two reads of a task
	// (waitPollFirst, waitPollMax; tests lengthen them).
	first, most time.Duration

	mu      sync.Mutex
	tasks   map[string]*pollSchedule
	running bool          // the loop runs while any task is waited for
	kick    chan struct{} // a task was added, or all are due: look again
	// all asks the loop to read every waited-for task at once: another
	// process settled some task (a notification said so).
	all     bool
	lastAll time.Time
	// stopListen ends the poller's own subscription to the announcements
	// (see listen); closed once the engine is closing.
	stopListen func()
	closed     bool
}

// waitListenLinger is how long an engine that listens only for its
// waiters keeps listening after the last one returned, so that a client
// waiting for one task after another does not reconnect for each.
const waitListenLinger = 30 * time.Second

// waitAllGap is the shortest time between two reads of every waited-for
// task that notifications ask for: a busy cluster settles tasks hundreds
// of times a second.
const waitAllGap = 10 * time.Millisecond

type pollSchedule struct {
	waiters int
	every   time.Duration
	next    time.Time
}

func newWaitPoller(e *Engine) *waitPoller {
	return &waitPoller{e: e, first: waitPollFirst, most: waitPollMax, tasks: map[string]*pollSchedule{}, kick: make(chan struct{}, 1)}
}

// add schedules task for reading until remove is called as often.
func (p *waitPoller) add(task string) {
	p.mu.Lock()
	s := p.tasks[task]
	if s == nil {
		s = &pollSchedule{every: p.first, next: time.Now().Add(p.first)}
		p.tasks[task] = s
	}
	s.waiters++
	start := !p.running
	p.running = true
	p.mu.Unlock()
	if start {
		go p.loop()
		return
	}
	p.poke()
}

// checkAll has every waited-for task read at once (within waitAllGap).
func (p *waitPoller) checkAll() {
	p.mu.Lock()
	if !p.running {
		p.mu.Unlock()
		return // nobody waits
	}
	p.all = true
	p.mu.Unlock()
	p.poke()
}

func (p *waitPoller) poke() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

func (p *waitPoller) remove(task string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if s := p.tasks[task]; s != nil {
		if s.waiters--; s.waiters <= 0 {
			delete(p.tasks, task)
		}
	}
}

// loop reads the due tasks, wakes the waiters of those that settled, and
// sleeps until the next is due; it ends when no task is waited for.
func (p *waitPoller) loop() {
	timer := time.NewTimer(p.first)
	defer timer.Stop()
	p.listen()
	for {
		now := time.Now()
		var due []string
		p.mu.Lock()
		if len(p.tasks) == 0 && p.stopListen != nil && !p.closed {
			// Keep listening a while for the next waiter.
			p.mu.Unlock()
			timer.Reset(waitListenLinger)
			select {
			case <-timer.C:
				p.mu.Lock()
				stop := p.stopListen
				if len(p.tasks) == 0 {
					p.stopListen = nil
				} else {
					stop = nil
				}
				p.mu.Unlock()
				if stop != nil {
					stop()
					p.mu.Lock()
					again := len(p.tasks) > 0
					p.mu.Unlock()
					if again { // a waiter came while it stopped
						p.listen()
					}
				}
			case <-p.kick:
			}
			continue
		}
		if len(p.tasks) == 0 {
			p.running, p.all = false, false
			p.mu.Unlock()
			return
		}
		all := p.all && now.Sub(p.lastAll) >= waitAllGap
		if all {
			p.all, p.lastAll = false, now
		}
		next := now.Add(p.most)
		if p.all {
			next = p.lastAll.Add(waitAllGap)
		}
		for id, s := range p.tasks {
			// A task due within half its interval is read now, with the
			// ones that are due: waiters that started a few milliseconds
			// apart share their reads from then on.
			if all || !s.next.After(now.Add(s.every/2)) {
				due = append(due, id)
				s.every = min(2*s.every, p.most)
				s.next = now.Add(s.every)
			}
			if s.next.Before(next) {
				next = s.next
			}
		}
		p.mu.Unlock()
		for len(due) > 0 {
			n := min(len(due), MaxCreateBatch)
			p.check(due[:n])
			due = due[n:]
		}
		// Reset leaves no stale tick in the channel (Go 1.23 timers).
		timer.Reset(time.Until(next))
		select {
		case <-timer.C:
		case <-p.kick:
		}
	}
}

// listen subscribes the poller to the announcements of tasks settled by
// other processes, for an engine that does not listen itself (one never
// started) on a store that has them (PostgreSQL). A started engine's own
// listener passes them on (see Engine.onNotify).
func (p *waitPoller) listen() {
	l, ok := p.e.driver.(store.Listener)
	if !ok || !p.e.cfg.DeploymentMode.listens() {
		return
	}
	p.e.mu.Lock()
	self := p.e.listening != nil || p.e.closed
	p.e.mu.Unlock()
	p.mu.Lock()
	defer p.mu.Unlock()
	if self || p.closed || p.stopListen != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = l.Listen(ctx, store.ListenParams{
			Topics:    []string{store.TasksSettledTopic},
			OnNotify:  func(string) { p.checkAll() },
			OnConnect: p.checkAll, // announcements sent before it are lost
			IgnoreOwn: true,
			OnError: func(err error, retryIn time.Duration) {
				p.e.log.Debug("task announcement listener disconnected; reconnecting", "error", err, "retry_in", retryIn)
			},
		})
	}()
	p.stopListen = func() { cancel(); <-done }
}

// close ends the poller's own listener, for an engine that is closing;
// waiters still waiting are polled as before (and get the closed store's
// error).
func (p *waitPoller) close() {
	p.mu.Lock()
	p.closed = true
	stop := p.stopListen
	p.stopListen = nil
	p.mu.Unlock()
	if stop != nil {
		stop()
	}
	p.poke()
}

// check reads the states of ids and wakes the waiters of those settled.
// When the read fails, every waiter of ids is woken to read for itself,
// and so to return the error, as a waiter that polled on its own did.
func (p *waitPoller) check(ids []string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	states, err := p.e.driver.Reader().TaskStates(ctx, store.TaskStatesParams{UUIDs: ids})
	for _, id := range ids {
		st, ok := states[id]
		switch {
		case err != nil || !ok:
			p.e.signalTask(id, taskSignal{})
		case state.TaskState(st).Settled():
			p.e.signalTask(id, taskSignal{state: state.TaskState(st)})
		}
	}
}
