package main

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/tasker-go/tasker"
	"github.com/tasker-go/tasker/store/postgres/pgtest"
)

// BenchmarkPostgresWakeup is the latency of work that crosses processes:
// one engine (a client, never started) creates a one-step task, another
// engine on the same schema runs it. It reports p50 and p99 from before
// CreateTask to the commit that completes the task, as seen by the running
// engine, whose WaitTask wakes on that commit. Only the database links the
// two engines, so the wake-up is a notification (LISTEN/NOTIFY) or a poll,
// every PollInterval (the default, 500ms), depending on the mode. Tasks
// are created one at a time, each after a random pause of up to one poll
// interval (not timed), so that they do not fall into step with the
// poller's ticks.
//
//	go test -run XXX -bench PostgresWakeup -benchtime 200x
func BenchmarkPostgresWakeup(b *testing.B) {
	for _, mode := range []tasker.DeploymentMode{
		tasker.DeploymentHybrid, tasker.DeploymentEventDrivenOnly, tasker.DeploymentPollingOnly,
	} {
		b.Run(string(mode), func(b *testing.B) {
			url := pgtest.URL(b)
			schema := pgtest.Schema(b, url)
			ctx := context.Background()
			open := func(start bool) *tasker.Engine {
				eng, err := tasker.Open(ctx, tasker.Config{DatabaseURL: url, PostgresSchema: schema, DeploymentMode: mode})
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { eng.Close() })
				if err := eng.RegisterTemplate(ctx, []byte(chainYAML("single", 1))); err != nil {
					b.Fatal(err)
				}
				if start {
					eng.Handle("bench.noop", tasker.HandlerFunc(func(context.Context, *tasker.StepContext) (any, error) { return 1, nil }))
					if err := eng.Start(ctx); err != nil {
						b.Fatal(err)
					}
				}
				return eng
			}
			runner, client := open(true), open(false)
			// Let the runner's listener subscribe before the clock starts.
			time.Sleep(200 * time.Millisecond)
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				time.Sleep(rand.N(500 * time.Millisecond))
				b.StartTimer()
				start := time.Now()
				task, err := client.CreateTask(ctx, tasker.TaskRequest{Namespace: "bench", Name: "single"})
				if err != nil {
					b.Fatal(err)
				}
				done, err := runner.WaitTask(ctx, task.UUID)
				if err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(start))
				if done.State != "complete" {
					b.Fatalf("task ended %s", done.State)
				}
			}
			b.StopTimer()
			reportPercentiles(b, lat, "")
		})
	}
}
