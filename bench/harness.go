package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

var allWorkloads = []string{"noop", "latency", "linear4", "diamond4", "fanout10k"}

// mode is how a cell drives its workflows.
type mode int

const (
	burnDownMode   mode = iota // queue n workflows, then start the engine and time the drain
	closedLoopMode             // one workflow at a time
	openLoopMode               // workflows arriving at rate per second, whatever the engine does
	singleMode                 // one workflow, with memory sampled (fan-out)
)

// cell is one workload variant, run on each store by each engine.
type cell struct {
	workload, variant string
	shape             shape
	mode              mode
	n                 int
	rate              float64
	// riverDefault adds untuned River for context.
	riverDefault bool
	// also is a closed-loop cell measured in the same engine runs, its
	// workflows alternating one by one with this cell's, so that two
	// cells whose ratio is a target see the same machine: this one's
	// speed drifts by 20-40% over minutes.
	also *cell
}

// alsoPrefix marks the figures of a cell's also cell in a run's figures.
const alsoPrefix = "also:"

func plan(quick bool) []cell {
	size := func(full, q int) int {
		if quick {
			return q
		}
		return full
	}
	return []cell{
		{workload: "noop", variant: "burn", shape: shapeSingle, mode: burnDownMode, n: size(20000, 1000), riverDefault: true},
		{workload: "latency", variant: "open10", shape: shapeSingle, mode: openLoopMode, rate: 10, n: size(200, 20), riverDefault: true},
		{workload: "latency", variant: "open100", shape: shapeSingle, mode: openLoopMode, rate: 100, n: size(2000, 200)},
		{workload: "latency", variant: "open1000", shape: shapeSingle, mode: openLoopMode, rate: 1000, n: size(10000, 1000)},
		// The two c1 cells run together, workflow by workflow: the diamond
		// target is their ratio.
		{workload: "linear4", variant: "c1", shape: shapeLinear4, mode: closedLoopMode, n: size(1000, 100),
			also: &cell{workload: "diamond4", variant: "c1", shape: shapeDiamond4, mode: closedLoopMode, n: size(1000, 100)}},
		{workload: "linear4", variant: "open50", shape: shapeLinear4, mode: openLoopMode, rate: 50, n: size(1000, 100), riverDefault: true},
		{workload: "linear4", variant: "burn", shape: shapeLinear4, mode: burnDownMode, n: size(5000, 300)},
		{workload: "diamond4", variant: "open50", shape: shapeDiamond4, mode: openLoopMode, rate: 50, n: size(1000, 100)},
		{workload: "diamond4", variant: "burn", shape: shapeDiamond4, mode: burnDownMode, n: size(5000, 300)},
		{workload: "fanout10k", variant: "one", shape: shapeFanout10k, mode: singleMode, n: 1},
	}
}

// harness runs cells.
type harness struct {
	opts options
	pg   *pgAdmin
	tmp  string
	runs int
}

// result is one engine's figures for one cell and store.
type result struct {
	workload, variant, store, engine string
	reps                             int
	samples                          int
	med, min, max                    map[string]float64
	err                              string
}

// cell runs every repetition of c on store, the engines alternating.
func (h *harness) cell(ctx context.Context, c cell, store string) []*result {
	var engines []string
	for _, e := range h.opts.engines {
		if e != "river-default" || c.riverDefault {
			engines = append(engines, e)
		}
	}
	values := map[string]map[string][]float64{}
	out := map[string]*result{}
	for _, e := range engines {
		values[e] = map[string][]float64{}
		out[e] = &result{workload: c.workload, variant: c.variant, store: store, engine: e}
		if c.also != nil {
			values[alsoPrefix+e] = map[string][]float64{}
			out[alsoPrefix+e] = &result{workload: c.also.workload, variant: c.also.variant, store: store, engine: e}
		}
	}
	for rep := 0; rep < h.opts.reps; rep++ {
		for _, e := range engines {
			r := out[e]
			if r.err != "" {
				continue // a failed engine is not run again in this cell
			}
			m, samples, err := h.run(ctx, c, store, e)
			if err != nil {
				r.err = fmt.Sprintf("rep %d: %v", rep+1, err)
				fmt.Fprintf(os.Stderr, "bench: %s/%s %s %s: %s\n", c.workload, c.variant, store, e, r.err)
				continue
			}
			r.reps++
			r.samples = samples
			for k, v := range m {
				if ak, ok := strings.CutPrefix(k, alsoPrefix); ok {
					values[alsoPrefix+e][ak] = append(values[alsoPrefix+e][ak], v)
					continue
				}
				values[e][k] = append(values[e][k], v)
			}
			if a := out[alsoPrefix+e]; a != nil {
				a.reps, a.samples = r.reps, samples
			}
		}
	}
	keys := slices.Clone(engines)
	if c.also != nil {
		for _, e := range engines {
			if out[e].err != "" {
				out[alsoPrefix+e].err = out[e].err
			}
			keys = append(keys, alsoPrefix+e)
		}
	}
	var results []*result
	for _, e := range keys {
		r := out[e]
		r.med, r.min, r.max = map[string]float64{}, map[string]float64{}, map[string]float64{}
		for k, vs := range values[e] {
			slices.Sort(vs)
			r.min[k], r.max[k] = vs[0], vs[len(vs)-1]
			r.med[k] = vs[len(vs)/2]
			if len(vs)%2 == 0 {
				r.med[k] = (vs[len(vs)/2-1] + vs[len(vs)/2]) / 2
			}
		}
		results = append(results, r)
	}
	return results
}

// run is one repetition of one engine: a fresh database, the engine opened
// on it, the workload, and the engine closed.
func (h *harness) run(parent context.Context, c cell, store, engineName string) (map[string]float64, int, error) {
	h.runs++
	cfg := engineConfig{sqlite: store == "sqlite", workers: h.opts.workers, pool: h.opts.pool, shapes: []shape{c.shape}, rec: newRecorder()}
	if c.also != nil {
		cfg.shapes = append(cfg.shapes, c.also.shape)
	}
	family := "tasker"
	if engineName != "tasker" {
		family = "river"
	}
	db := family + "_bench"
	if cfg.sqlite {
		cfg.url = filepath.Join(h.tmp, fmt.Sprintf("%s-%d.db", family, h.runs))
		defer removeSQLite(cfg.url)
	} else {
		if err := h.pg.fresh(parent, db); err != nil {
			return nil, 0, err
		}
		cfg.url = h.pg.url(db)
	}
	timeout := h.opts.timeout
	if c.mode == singleMode && h.opts.quick {
		timeout = min(timeout, 45*time.Second)
	}
	ctx, cancel := context.WithTimeoutCause(parent, timeout, fmt.Errorf("run exceeded its time box of %s", timeout))
	defer cancel()

	// The schema is created by a first connection that is closed again, so
	// the counters below see only the measured engine.
	migrate := migrateTasker
	if family == "river" {
		migrate = migrateRiver
	}
	if err := migrate(ctx, cfg); err != nil {
		return nil, 0, err
	}
	cost := !cfg.sqlite && c.mode == burnDownMode
	var before pgCounters
	if cost {
		settle()
		var err error
		if before, err = h.pg.counters(ctx, db); err != nil {
			return nil, 0, err
		}
	}
	runtime.GC()
	debug.FreeOSMemory()
	rssBase := rssMB()

	openStart := time.Now()
	var eng engine
	var err error
	switch engineName {
	case "tasker":
		eng, err = openTasker(ctx, cfg)
	case "river":
		tune := riverTuned
		tune.finalInTx = c.mode != burnDownMode
		eng, err = openRiver(ctx, cfg, tune)
	case "river-default":
		eng, err = openRiver(ctx, cfg, riverTuning{})
	}
	if err != nil {
		return nil, 0, err
	}
	openTime := time.Since(openStart)
	closed := false
	closeEngine := func() error {
		if closed {
			return nil
		}
		closed = true
		cctx, ccancel := context.WithTimeout(context.WithoutCancel(parent), 30*time.Second)
		defer ccancel()
		return eng.close(cctx)
	}
	defer closeEngine()

	var peak atomic.Uint64
	stopSampler := sampleRSS(&peak)
	m, samples, err := drive(ctx, c, eng, cfg.rec)
	stopSampler()
	if err != nil {
		if c.mode == singleMode {
			err = fmt.Errorf("%w; open %s, peak RSS %.0f MB", err, openTime.Round(time.Millisecond), float64(peak.Load())/1024)
		}
		return nil, 0, err
	}
	if c.mode == singleMode {
		m["peak_rss_mb"] = float64(peak.Load()) / 1024
		m["rss_before_mb"] = rssBase
		m["open_ms"] = ms(openTime)
	}
	if err := closeEngine(); err != nil {
		return nil, 0, fmt.Errorf("close: %w", err)
	}
	if cost {
		settle()
		after, err := h.pg.counters(parent, db)
		if err != nil {
			return nil, 0, err
		}
		steps := float64(c.n * c.shape.steps())
		m["commits_per_step"] = float64(after.commits-before.commits) / steps
		m["wal_bytes_per_step"] = float64(after.wal-before.wal) / steps
	}
	return m, samples, nil
}

func removeSQLite(path string) {
	for _, suffix := range []string{"", "-wal", "-shm"} {
		os.Remove(path + suffix)
	}
}

// sampleRSS records the process's peak resident set size, in KiB, every
// 10ms until the returned function is called.
func sampleRSS(peak *atomic.Uint64) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for {
			if kb := uint64(rssMB() * 1024); kb > peak.Load() {
				peak.Store(kb)
			}
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	})
	return func() { close(done); wg.Wait() }
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// drive runs the cell's workload on a started engine and returns its
// figures and the number of latency samples.
func drive(ctx context.Context, c cell, eng engine, rec *recorder) (map[string]float64, int, error) {
	m := map[string]float64{}
	switch c.mode {
	case burnDownMode:
		if err := eng.submitMany(ctx, c.shape, c.n); err != nil {
			return nil, 0, fmt.Errorf("submit: %w", err)
		}
		start := time.Now()
		if err := eng.start(ctx); err != nil {
			return nil, 0, err
		}
		// Part of the drain, shown on its own: what starting costs.
		m["start_ms"] = ms(time.Since(start))
		if err := eng.drain(ctx, c.n); err != nil {
			return nil, 0, err
		}
		m["throughput_per_s"] = float64(c.n*c.shape.steps()) / time.Since(start).Seconds()
		return m, 0, nil

	case closedLoopMode:
		if err := eng.start(ctx); err != nil {
			return nil, 0, err
		}
		// With an also cell, its workflows alternate with this cell's.
		cells := []cell{c}
		if c.also != nil {
			cells = append(cells, *c.also)
		}
		flows := make([][]flow, len(cells))
		for i := -3; i < c.n; i++ { // three untimed warm-up workflows each
			for j, cc := range cells {
				if i >= cc.n {
					continue
				}
				key, err := eng.submit(ctx, cc.shape)
				if err != nil {
					return nil, 0, err
				}
				f, err := rec.wait(ctx, key)
				if err != nil {
					return nil, 0, err
				}
				if i >= 0 {
					flows[j] = append(flows[j], f)
				}
			}
		}
		latencies(m, flows[0], c.shape.steps() == 1)
		if c.also != nil {
			am := map[string]float64{}
			latencies(am, flows[1], c.also.shape.steps() == 1)
			for k, v := range am {
				m[alsoPrefix+k] = v
			}
		}
		return m, len(flows[0]), nil

	case openLoopMode:
		if err := eng.start(ctx); err != nil {
			return nil, 0, err
		}
		keys := make([]string, c.n)
		errs := make([]error, c.n)
		var wg sync.WaitGroup
		start := time.Now()
		for i := range c.n {
			time.Sleep(time.Until(start.Add(time.Duration(float64(i) / c.rate * float64(time.Second)))))
			if ctx.Err() != nil {
				break
			}
			wg.Go(func() { keys[i], errs[i] = eng.submit(ctx, c.shape) })
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			return nil, 0, err
		}
		m["offered_per_s"] = float64(c.n) / time.Since(start).Seconds()
		flows := make([]flow, 0, c.n)
		for _, key := range keys {
			f, err := rec.wait(ctx, key)
			if err != nil {
				return nil, 0, err
			}
			flows = append(flows, f)
		}
		latencies(m, flows, c.shape.steps() == 1)
		return m, len(flows), nil

	case singleMode:
		if err := eng.start(ctx); err != nil {
			return nil, 0, err
		}
		t0 := time.Now()
		key, err := eng.submit(ctx, c.shape)
		if err != nil {
			return nil, 0, err
		}
		m["submit_ms"] = ms(time.Since(t0))
		f, err := rec.wait(ctx, key)
		if err != nil {
			p := rec.snapshot(key)
			return nil, 0, fmt.Errorf("%w (after %s: %d of %d children done, join started: %v)",
				err, time.Since(t0).Round(time.Second), p.children, c.shape.fan, !p.joinStart.IsZero())
		}
		if f.children != c.shape.fan {
			return nil, 0, fmt.Errorf("%d of %d children ran", f.children, c.shape.fan)
		}
		m["children_done_ms"] = ms(f.lastChildEnd.Sub(f.submitted))
		m["join_start_ms"] = ms(f.joinStart.Sub(f.lastChildEnd))
		m["total_ms"] = ms(f.done.Sub(f.submitted))
		return m, 1, nil
	}
	return nil, 0, fmt.Errorf("unknown mode %d", c.mode)
}

// latencies adds p50 and p99 of submit-to-completion, and for single-step
// workflows of submit-to-pickup, in milliseconds.
func latencies(m map[string]float64, flows []flow, pickup bool) {
	var done, picked []time.Duration
	for _, f := range flows {
		done = append(done, f.done.Sub(f.submitted))
		// A handler can start before the submitter sees its commit
		// return; that counts as no wait.
		picked = append(picked, max(0, f.firstStart.Sub(f.submitted)))
	}
	slices.Sort(done)
	slices.Sort(picked)
	m["p50_ms"] = ms(percentile(done, 0.5))
	m["p99_ms"] = ms(percentile(done, 0.99))
	if pickup {
		m["pickup_p50_ms"] = ms(percentile(picked, 0.5))
		m["pickup_p99_ms"] = ms(percentile(picked, 0.99))
	}
}
