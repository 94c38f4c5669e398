package main

import (
	"context"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tasker-go/tasker"
)

func openEngine(tb testing.TB, concurrency int) *tasker.Engine {
	tb.Helper()
	ctx := context.Background()
	eng, err := tasker.Open(ctx, tasker.Config{
		DatabaseURL: "sqlite://" + filepath.Join(tb.TempDir(), "bench.db"),
		Concurrency: concurrency, PollInterval: 3 * time.Second,
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { eng.Close() })
	for _, doc := range []string{chainYAML("linear4", 4), chainYAML("single", 1), chainYAML("chain10", 10)} {
		if err := eng.RegisterTemplate(ctx, []byte(doc)); err != nil {
			tb.Fatal(err)
		}
	}
	eng.Handle("bench.noop", tasker.HandlerFunc(func(context.Context, *tasker.StepContext) (any, error) { return 1, nil }))
	if err := eng.Start(ctx); err != nil {
		tb.Fatal(err)
	}
	return eng
}

// BenchmarkEmbeddedLinear4 is the end-to-end latency of a four-step chain of
// no-op handlers, one task at a time: from CreateTask's return to the commit
// that completes the task (WaitTask is woken by that commit, not a poll).
func BenchmarkEmbeddedLinear4(b *testing.B) {
	eng := openEngine(b, 10)
	reportPercentiles(b, closedLoop(b, eng, tasker.TaskRequest{Namespace: "bench", Name: "linear4"}), "")
}

// closedLoop runs b.N tasks one at a time and returns, for each, the time
// from CreateTask's return to WaitTask's (woken by the completing commit,
// not a poll). The timer runs only during the loop.
func closedLoop(b *testing.B, eng *tasker.Engine, req tasker.TaskRequest) []time.Duration {
	ctx := context.Background()
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		task, err := eng.CreateTask(ctx, req)
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		done, err := eng.WaitTask(ctx, task.UUID)
		if err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
		if done.State != "complete" {
			b.Fatalf("task ended %s", done.State)
		}
	}
	b.StopTimer()
	return lat
}

// reportPercentiles reports the p50 and p99 of samples in milliseconds, as
// metrics named prefix+"p50_ms" and prefix+"p99_ms".
func reportPercentiles(b *testing.B, samples []time.Duration, prefix string) {
	slices.Sort(samples)
	b.ReportMetric(float64(percentile(samples, 0.5).Microseconds())/1000, prefix+"p50_ms")
	b.ReportMetric(float64(percentile(samples, 0.99).Microseconds())/1000, prefix+"p99_ms")
}

// BenchmarkEmbeddedNoopThroughput creates b.N single-step no-op tasks at once
// and measures how fast they drain.
func BenchmarkEmbeddedNoopThroughput(b *testing.B) {
	eng := openEngine(b, 10)
	ctx := context.Background()
	b.ResetTimer()
	start := time.Now()
	ids := make([]string, b.N)
	for i := range ids {
		task, err := eng.CreateTask(ctx, tasker.TaskRequest{Namespace: "bench", Name: "single"})
		if err != nil {
			b.Fatal(err)
		}
		ids[i] = task.UUID
	}
	for _, id := range ids {
		if _, err := eng.WaitTask(ctx, id); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "tasks/s")
}

// BenchmarkEmbeddedMemory1000x10 puts 1,000 ten-step tasks in flight at once
// and reports the process's peak resident set size.
func BenchmarkEmbeddedMemory1000x10(b *testing.B) {
	for i := 0; i < b.N; i++ {
		eng := openEngine(b, 10)
		ctx := context.Background()
		var wg sync.WaitGroup
		ids := make(chan string, 1000)
		for w := 0; w < 4; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := 0; j < 250; j++ {
					task, err := eng.CreateTask(ctx, tasker.TaskRequest{Namespace: "bench", Name: "chain10"})
					if err != nil {
						b.Error(err)
						return
					}
					ids <- task.UUID
				}
			}()
		}
		wg.Wait()
		close(ids)
		for id := range ids {
			if _, err := eng.WaitTask(ctx, id); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(peakRSSMB(), "peak_rss_MB")
}
