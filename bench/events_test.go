package main

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tasker-go/tasker"
)

// eventChainYAML is chainYAML with one durable event published by every
// step on success.
func eventChainYAML(name string, steps int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "name: %s\nnamespace_name: bench_events\nversion: 1.0.0\nidentity_strategy: always_unique\nsteps:\n", name)
	for i := 1; i <= steps; i++ {
		fmt.Fprintf(&b, "  - name: s%d\n    handler: {callable: bench.noop}\n", i)
		if i > 1 {
			fmt.Fprintf(&b, "    dependencies: [s%d]\n", i-1)
		}
		fmt.Fprintf(&b, "    publishes_events:\n      - {name: bench.step_done}\n")
	}
	return b.String()
}

// eventSink is a durable subscriber that counts what it receives and keeps
// each event's lag from FiredAt (the outcome's transaction) to receipt.
type eventSink struct {
	mu  sync.Mutex
	n   int
	lag []time.Duration
}

func (s *eventSink) handle(_ context.Context, ev tasker.DomainEvent) error {
	lag := time.Since(ev.FiredAt)
	s.mu.Lock()
	s.n++
	s.lag = append(s.lag, lag)
	s.mu.Unlock()
	return nil
}

func (s *eventSink) wait(tb testing.TB, n int) []time.Duration {
	tb.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		s.mu.Lock()
		got := s.n
		s.mu.Unlock()
		if got >= n {
			break
		}
		if time.Now().After(deadline) {
			tb.Fatalf("subscriber received %d of %d events", got, n)
		}
		time.Sleep(time.Millisecond)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.lag)
}

// openEventsEngine is openEngine for the event templates, with a durable
// subscriber on every event.
func openEventsEngine(tb testing.TB) (*tasker.Engine, *eventSink) {
	tb.Helper()
	ctx := context.Background()
	eng, err := tasker.Open(ctx, tasker.Config{
		DatabaseURL: "sqlite://" + filepath.Join(tb.TempDir(), "bench.db"),
		Concurrency: 10, PollInterval: 3 * time.Second,
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { eng.Close() })
	for _, doc := range []string{eventChainYAML("linear4_events", 4), eventChainYAML("single_event", 1)} {
		if err := eng.RegisterTemplate(ctx, []byte(doc)); err != nil {
			tb.Fatal(err)
		}
	}
	eng.Handle("bench.noop", tasker.HandlerFunc(func(context.Context, *tasker.StepContext) (any, error) { return 1, nil }))
	sink := &eventSink{}
	eng.Subscribe("bench.*", sink.handle)
	if err := eng.Start(ctx); err != nil {
		tb.Fatal(err)
	}
	return eng, sink
}

// BenchmarkEmbeddedLinear4Events is BenchmarkEmbeddedLinear4 with one
// durable event per step (written in the step's outcome transaction) and a
// durable subscriber receiving them: the latency to compare with the
// no-event benchmark's.
func BenchmarkEmbeddedLinear4Events(b *testing.B) {
	eng, sink := openEventsEngine(b)
	lat := closedLoop(b, eng, tasker.TaskRequest{Namespace: "bench_events", Name: "linear4_events"})
	sink.wait(b, 4*b.N)
	reportPercentiles(b, lat, "")
}

// BenchmarkEventRelayLag creates single-step tasks at about 50 per second
// (light load; run it with -benchtime 200x) and reports the lag of their
// durable events from FiredAt, taken in the transaction that commits the
// outcome, to the subscriber's receipt.
func BenchmarkEventRelayLag(b *testing.B) {
	eng, sink := openEventsEngine(b)
	ctx := context.Background()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	b.ResetTimer()
	ids := make([]string, 0, b.N)
	for i := 0; i < b.N; i++ {
		<-tick.C
		task, err := eng.CreateTask(ctx, tasker.TaskRequest{Namespace: "bench_events", Name: "single_event"})
		if err != nil {
			b.Fatal(err)
		}
		ids = append(ids, task.UUID)
	}
	for _, id := range ids {
		if _, err := eng.WaitTask(ctx, id); err != nil {
			b.Fatal(err)
		}
	}
	lag := sink.wait(b, b.N)
	b.StopTimer()
	slices.Sort(lag)
	reportPercentiles(b, lag, "lag_")
	b.ReportMetric(float64(lag[len(lag)-1].Microseconds())/1000, "lag_max_ms")
}
