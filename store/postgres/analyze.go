package postgres

import (
	"context"
	"sync"
	"time"
)

// PostgreSQL caches a generic plan per statement and connection, made
// from the table statistics of the moment, and keeps it until the table
// is analyzed again. A plan made while a table held a few rows scans it
// whole, which stays cheap only while it stays small; autovacuum analyzes
// a grown table only at its next round (a minute by default). A task of
// thousands of steps grows tasker_steps by orders of magnitude in one
// commit, so the driver analyzes the step tables itself once the steps
// inserted since their last analysis reach a fifth of what they held
// then (and at least analyzeMinRows): the analysis invalidates the cached
// plans, which are then made again from the real sizes, as they would be
// a minute later in any case.

// analyzeMinRows is the fewest inserted steps that trigger an analysis.
const analyzeMinRows = 1000

// analyzer runs at most one ANALYZE at a time, in the background.
type analyzer struct {
	mu       sync.Mutex
	running  bool
	inserted int64 // steps inserted since the last analysis
	base     int64 // steps inserted up to the last analysis
}

// grew records n steps committed and, past the threshold, starts an
// analysis on d.
func (a *analyzer) grew(d *Driver, n int64) {
	if n <= 0 {
		return
	}
	a.mu.Lock()
	a.inserted += n
	start := !a.running && a.inserted >= max(analyzeMinRows, a.base/5)
	if start {
		a.running = true
		a.base += a.inserted
		a.inserted = 0
	}
	a.mu.Unlock()
	if start {
		go a.run(d)
	}
}

func (a *analyzer) run(d *Driver) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// Best effort: a failure (the pool closing, say) leaves the tables to
	// autovacuum, as without this.
	_, _ = d.pool.Exec(ctx, `ANALYZE tasker_steps, tasker_step_edges, tasker_queue`)
	a.mu.Lock()
	a.running = false
	a.mu.Unlock()
}
