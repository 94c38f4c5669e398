// Command bench runs Tasker and River side by side on the same workloads,
// in the same process, on the same database server, and prints one row
// per workload, store and engine (see README and RESULTS.md).
//
//	go run . [-quick] [-json] [-workload W] [-store postgres|sqlite]
//
// The package's tests hold the older Go benchmarks of Tasker alone:
//
//	go test -run XXX -bench . -benchtime 2000x ./...
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"time"
)

const defaultPostgresURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// options are the command's flags.
type options struct {
	quick     bool
	json      bool
	workloads []string
	stores    []string
	engines   []string
	reps      int
	workers   int
	pool      int
	timeout   time.Duration
	pgURL     string
	cpuProf   string
}

func main() {
	var o options
	var workloads, stores, engines string
	flag.BoolVar(&o.quick, "quick", false, "smaller runs: everything in under 10 minutes on 2 cores")
	flag.BoolVar(&o.json, "json", false, "print one JSON object per cell instead of a table")
	flag.StringVar(&workloads, "workload", "all", "comma-separated: noop, latency, linear4, diamond4, fanout10k, or all")
	flag.StringVar(&stores, "store", "postgres,sqlite", "comma-separated: postgres, sqlite")
	flag.StringVar(&engines, "engines", "tasker,river,river-default", "comma-separated engines; river-default runs only in some cells, for context")
	flag.IntVar(&o.reps, "reps", 3, "repetitions per cell, engines alternating")
	flag.IntVar(&o.workers, "workers", 10, "handlers running at once, for both engines")
	flag.IntVar(&o.pool, "pool", 10, "pgx pool size, for both engines (Tasker opens two pools of this size)")
	flag.DurationVar(&o.timeout, "timeout", 0, "bound on one run of one engine (default 3m, 90s with -quick)")
	flag.StringVar(&o.pgURL, "pg", envOr("TASKER_BENCH_DATABASE_URL", defaultPostgresURL),
		"PostgreSQL server URL (env TASKER_BENCH_DATABASE_URL); the databases tasker_bench and river_bench are created on it")
	flag.StringVar(&o.cpuProf, "cpuprofile", "", "write a CPU profile of the whole run (both engines) to this file")
	flag.Parse()
	o.workloads = splitList(workloads)
	if slices.Contains(o.workloads, "all") {
		o.workloads = allWorkloads
	}
	o.stores = splitList(stores)
	o.engines = splitList(engines)
	if o.timeout == 0 {
		o.timeout = 3 * time.Minute
		if o.quick {
			o.timeout = 90 * time.Second
		}
	}
	if o.cpuProf != "" {
		f, err := os.Create(o.cpuProf)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench: cpuprofile:", err)
			os.Exit(1)
		}
		defer pprof.StopCPUProfile()
	}
	if err := run(context.Background(), o); err != nil {
		pprof.StopCPUProfile()
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func run(ctx context.Context, o options) error {
	for _, w := range o.workloads {
		if !slices.Contains(allWorkloads, w) {
			return fmt.Errorf("unknown workload %q", w)
		}
	}
	for _, s := range o.stores {
		if s != "postgres" && s != "sqlite" {
			return fmt.Errorf("unknown store %q", s)
		}
	}
	for _, e := range o.engines {
		if e != "tasker" && e != "river" && e != "river-default" {
			return fmt.Errorf("unknown engine %q", e)
		}
	}
	h := &harness{opts: o}
	if slices.Contains(o.stores, "postgres") {
		pg, err := openAdmin(ctx, o.pgURL)
		if err != nil {
			return err
		}
		defer pg.close()
		h.pg = pg
	}
	tmp, err := os.MkdirTemp("", "tasker-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	h.tmp = tmp
	if !o.json {
		h.printHeader(ctx)
	}
	// Tasker's c1 p50 per shape and store, for the diamond/linear ratio
	// printed at the end.
	c1 := map[string]float64{}
	var ratios []string
	for _, c := range plan(o.quick) {
		if !slices.Contains(o.workloads, c.workload) && (c.also == nil || !slices.Contains(o.workloads, c.also.workload)) {
			continue
		}
		for _, store := range o.stores {
			all := h.cell(ctx, c, store)
			cells := []cell{c}
			if c.also != nil {
				cells = append(cells, *c.also)
			}
			for _, cc := range cells {
				var results []*result
				for _, r := range all {
					if r.workload == cc.workload && r.variant == cc.variant {
						results = append(results, r)
					}
				}
				if cc.variant == "c1" && !o.json {
					for _, r := range results {
						if r.engine == "tasker" && r.med["p50_ms"] > 0 {
							c1[cc.workload+"/"+store] = r.med["p50_ms"]
						}
					}
				}
				if o.json {
					enc := json.NewEncoder(os.Stdout)
					for _, r := range results {
						if err := enc.Encode(r.jsonObject()); err != nil {
							return err
						}
					}
				} else {
					printCell(os.Stdout, cc, store, results)
				}
			}
			if l, d := c1["linear4/"+store], c1["diamond4/"+store]; c.also != nil && l > 0 && d > 0 {
				ratios = append(ratios, fmt.Sprintf("# tasker diamond4/linear4 c1 p50 on %s: %.2f (%.3g / %.3g ms; target <= 0.8)", store, d/l, d, l))
			}
		}
	}
	if len(ratios) > 0 {
		fmt.Printf("\n%s\n", strings.Join(ratios, "\n"))
	}
	if h.pg != nil {
		h.pg.dropAll(ctx)
	}
	return nil
}

func (h *harness) printHeader(ctx context.Context) {
	fmt.Printf("# Tasker vs River  %s  GOMAXPROCS=%d  workers=%d  pool=%d  reps=%d  quick=%v\n",
		time.Now().Format(time.DateOnly), runtime.GOMAXPROCS(0), h.opts.workers, h.opts.pool, h.opts.reps, h.opts.quick)
	if h.pg != nil {
		fmt.Printf("# %s\n", h.pg.describe(ctx))
	}
	fmt.Println("# each value: median [min–max] over the repetitions; ratio = tasker/river (medians)")
}
