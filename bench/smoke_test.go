package main

import (
	"context"
	"io"
	"testing"
	"time"
)

// TestSmoke runs tiny cells of every mode with both engines on SQLite, so
// that the harness keeps working; its figures mean nothing.
func TestSmoke(t *testing.T) {
	h := &harness{
		opts: options{reps: 1, workers: 4, pool: 4, timeout: time.Minute, engines: []string{"tasker", "river"}},
		tmp:  t.TempDir(),
	}
	cells := []cell{
		{workload: "linear4", variant: "c1", shape: shapeLinear4, mode: closedLoopMode, n: 3,
			also: &cell{workload: "diamond4", variant: "c1", shape: shapeDiamond4, mode: closedLoopMode, n: 3}},
		{workload: "diamond4", variant: "burn", shape: shapeDiamond4, mode: burnDownMode, n: 5},
		{workload: "latency", variant: "open100", shape: shapeSingle, mode: openLoopMode, rate: 100, n: 5},
		{workload: "fanout", variant: "one", shape: shape{name: "fan20", fan: 20}, mode: singleMode, n: 1},
	}
	for _, c := range cells {
		results := h.cell(context.Background(), c, "sqlite")
		want := 2 // engines
		if c.also != nil {
			want = 4 // and the also cell's results for each
		}
		if len(results) != want {
			t.Fatalf("%s/%s: %d results, want %d", c.workload, c.variant, len(results), want)
		}
		for _, r := range results {
			if c.also != nil && r.workload == c.also.workload && (r.med["p50_ms"] <= 0 || r.samples != c.also.n) {
				t.Errorf("%s/%s %s: p50 %v over %d samples, want %d alternating samples", r.workload, r.variant, r.engine,
					r.med["p50_ms"], r.samples, c.also.n)
			}
			if r.err != "" || r.reps != 1 {
				t.Fatalf("%s/%s %s: reps %d, error %q", c.workload, c.variant, r.engine, r.reps, r.err)
			}
			if len(r.jsonObject()) < 6 {
				t.Errorf("%s/%s %s: too few figures: %v", c.workload, c.variant, r.engine, r.jsonObject())
			}
		}
		printCell(io.Discard, c, "sqlite", results)
	}
}
