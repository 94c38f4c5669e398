package main

import (
	"context"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tasker-go/tasker"
	"github.com/tasker-go/tasker/store/postgres/pgtest"
)

// BenchmarkHops takes the diamond4/linear4 target apart. It runs b.N
// four-step chains and b.N diamonds of no-op handlers, one task at a time,
// the two shapes alternating, and times each task from CreateTask's return
// to each level's handler start (the later sibling's, for the diamond's
// middle level) and to WaitTask's return.
//
// Both shapes start three steps and complete four in that window; the
// chain does it in four transactions, the diamond in three. With h the
// chain's mean transaction ((chain - handoff) / 4) and extra what the
// diamond costs beyond a chain one transaction shorter (diamond -
// (chain - h)), the target diamond <= 0.8 x chain holds exactly when
// extra <= h - 0.2 x chain, the allowance. All figures are medians in
// microseconds, except ratio.
//
//	cd bench && go test -run XXX -bench Hops -benchtime 400x
func BenchmarkHops(b *testing.B) {
	b.Run("sqlite", func(b *testing.B) {
		hops(b, "sqlite://"+filepath.Join(b.TempDir(), "hops.db"), "")
	})
	b.Run("postgres", func(b *testing.B) {
		url := pgtest.URL(b)
		hops(b, url, pgtest.Schema(b, url))
	})
}

func hops(b *testing.B, url, schema string) {
	ctx := context.Background()
	eng, err := tasker.Open(ctx, tasker.Config{DatabaseURL: url, PostgresSchema: schema,
		Concurrency: 10, PollInterval: 3 * time.Second})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { eng.Close() })
	for _, doc := range []string{chainYAML("linear4", 4), diamond4YAML} {
		if err := eng.RegisterTemplate(ctx, []byte(doc)); err != nil {
			b.Fatal(err)
		}
	}
	var mu sync.Mutex
	starts := map[string]map[string]time.Time{} // task → step name → handler start
	eng.Handle("bench.noop", tasker.HandlerFunc(func(_ context.Context, s *tasker.StepContext) (any, error) {
		now := time.Now()
		mu.Lock()
		defer mu.Unlock()
		if starts[s.TaskUUID] == nil {
			starts[s.TaskUUID] = map[string]time.Time{}
		}
		starts[s.TaskUUID][s.StepName] = now
		return 1, nil
	}))
	if err := eng.Start(ctx); err != nil {
		b.Fatal(err)
	}
	levels := map[string][][]string{
		"linear4":  {{"s1"}, {"s2"}, {"s3"}, {"s4"}},
		"diamond4": {{"root"}, {"c1", "c2"}, {"join"}},
	}
	// run times one task: the time to each level's last handler start,
	// then to WaitTask's return, each from the one before; and the gap
	// between the first and the last handler start of a level of two.
	run := func(name string) (segs []time.Duration, skew time.Duration) {
		task, err := eng.CreateTask(ctx, tasker.TaskRequest{Namespace: "bench", Name: name})
		if err != nil {
			b.Fatal(err)
		}
		t0 := time.Now()
		done, err := eng.WaitTask(ctx, task.UUID)
		if err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if done.State != "complete" {
			b.Fatalf("%s task ended %s", name, done.State)
		}
		mu.Lock()
		at := starts[task.UUID]
		delete(starts, task.UUID)
		mu.Unlock()
		prev := t0
		for _, level := range levels[name] {
			first, last := at[level[0]], at[level[0]]
			for _, step := range level[1:] {
				if at[step].Before(first) {
					first = at[step]
				}
				if at[step].After(last) {
					last = at[step]
				}
			}
			segs = append(segs, last.Sub(prev))
			skew, prev = max(skew, last.Sub(first)), last
		}
		return append(segs, t1.Sub(prev)), skew
	}
	for range 20 { // warm the caches and the plans
		run("linear4")
		run("diamond4")
	}
	var chain, diamond, handoff, skews []time.Duration
	b.ResetTimer()
	for range b.N {
		segs, _ := run("linear4")
		handoff = append(handoff, segs[0])
		chain = append(chain, sum(segs))
		segs, skew := run("diamond4")
		diamond = append(diamond, sum(segs))
		skews = append(skews, skew)
	}
	b.StopTimer()
	med := func(d []time.Duration) float64 {
		slices.Sort(d)
		return float64(percentile(d, 0.5).Nanoseconds()) / 1e3
	}
	c, d := med(chain), med(diamond)
	h := (c - med(handoff)) / 4
	b.ReportMetric(c, "chain_us")
	b.ReportMetric(d, "diamond_us")
	b.ReportMetric(d/c, "ratio")
	b.ReportMetric(h, "hop_us")
	b.ReportMetric(d-(c-h), "extra_us")
	b.ReportMetric(h-0.2*c, "allowance_us")
	b.ReportMetric(med(skews), "sibling_gap_us")
}

func sum(d []time.Duration) time.Duration {
	var t time.Duration
	for _, x := range d {
		t += x
	}
	return t
}
