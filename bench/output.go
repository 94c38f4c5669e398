package main

import (
	"fmt"
	"io"
	"math"
	"strings"
	"text/tabwriter"
)

// metricOrder is the order of rows in the table; figures not listed are
// printed after these.
var metricOrder = []string{
	"throughput_per_s", "commits_per_step", "wal_bytes_per_step",
	"pickup_p50_ms", "pickup_p99_ms", "p50_ms", "p99_ms", "offered_per_s",
	"submit_ms", "children_done_ms", "join_start_ms", "total_ms", "peak_rss_mb", "rss_before_mb", "open_ms",
}

// higherIsBetter marks figures where tasker/river above 1 is a win.
var higherIsBetter = map[string]bool{"throughput_per_s": true}

func (r *result) jsonObject() map[string]any {
	o := map[string]any{"workload": r.workload, "variant": r.variant, "store": r.store, "engine": r.engine}
	if r.err != "" {
		o["error"] = r.err
	}
	if r.reps == 0 {
		return o
	}
	o["reps"] = r.reps
	if r.samples > 0 {
		o["samples"] = r.samples
	}
	min, max := map[string]float64{}, map[string]float64{}
	for k, v := range r.med {
		o[k] = round(v)
		min[k], max[k] = round(r.min[k]), round(r.max[k])
	}
	o["min"], o["max"] = min, max
	return o
}

func round(v float64) float64 {
	if math.Abs(v) >= 100 {
		return math.Round(v)
	}
	return math.Round(v*1000) / 1000
}

func format(v float64) string {
	switch a := math.Abs(v); {
	case a >= 1000:
		return fmt.Sprintf("%.0f", v)
	case a >= 100:
		return fmt.Sprintf("%.1f", v)
	case a >= 10:
		return fmt.Sprintf("%.2f", v)
	}
	return fmt.Sprintf("%.3g", v)
}

// printCell prints one cell and store as a small table: a row per figure,
// a column per engine, and the tasker/river ratio of the medians.
func printCell(w io.Writer, c cell, store string, results []*result) {
	byEngine := map[string]*result{}
	var keys []string
	seen := map[string]bool{}
	for _, r := range results {
		byEngine[r.engine] = r
		for k := range r.med {
			seen[k] = true
		}
	}
	for _, k := range metricOrder {
		if seen[k] {
			keys = append(keys, k)
			delete(seen, k)
		}
	}
	for k := range seen {
		keys = append(keys, k)
	}
	desc := fmt.Sprintf("n=%d", c.n)
	if c.rate > 0 {
		desc += fmt.Sprintf(" at %.0f/s", c.rate)
	}
	fmt.Fprintf(w, "\n## %s/%s on %s (%s)\n", c.workload, c.variant, store, desc)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	header := []string{"figure"}
	for _, r := range results {
		header = append(header, r.engine)
	}
	header = append(header, "tasker/river")
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, k := range keys {
		row := []string{k}
		for _, r := range results {
			if v, ok := r.med[k]; ok {
				row = append(row, fmt.Sprintf("%s [%s–%s]", format(v), format(r.min[k]), format(r.max[k])))
			} else {
				row = append(row, "-")
			}
		}
		row = append(row, ratio(byEngine, k))
		fmt.Fprintln(tw, strings.Join(row, "\t"))
	}
	tw.Flush()
	for _, r := range results {
		if r.err != "" {
			fmt.Fprintf(w, "%s: FAILED %s\n", r.engine, r.err)
		}
	}
}

func ratio(by map[string]*result, k string) string {
	t, r := by["tasker"], by["river"]
	if t == nil || r == nil {
		return "-"
	}
	tv, ok1 := t.med[k]
	rv, ok2 := r.med[k]
	if !ok1 || !ok2 || rv == 0 {
		return "-"
	}
	s := fmt.Sprintf("%.2f", tv/rv)
	if higherIsBetter[k] {
		s += " (higher is better)"
	}
	return s
}
