package main

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tasker-go/tasker"
	"github.com/tasker-go/tasker/store/postgres/pgtest"
)

// The PostgreSQL benchmarks run on TASKER_TEST_DATABASE_URL (see pgtest),
// each in a fresh schema, with the worker in the engine's process.
// Transactions are counted from pg_stat_database (the whole database) and
// WAL flushes from pg_stat_wal (the whole server): run them on a server
// nothing else uses for exact numbers.

// pgBench is an engine on a fresh schema and a connection for statistics.
type pgBench struct {
	eng  *tasker.Engine
	conn *pgx.Conn
}

func openPostgres(b *testing.B, concurrency int) *pgBench {
	b.Helper()
	url := pgtest.URL(b)
	ctx := context.Background()
	eng, err := tasker.Open(ctx, tasker.Config{
		DatabaseURL: url, PostgresSchema: pgtest.Schema(b, url),
		Concurrency: concurrency, PollInterval: 3 * time.Second,
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { eng.Close() })
	for _, doc := range []string{chainYAML("linear4", 4), chainYAML("single", 1), diamond4YAML} {
		if err := eng.RegisterTemplate(ctx, []byte(doc)); err != nil {
			b.Fatal(err)
		}
	}
	eng.Handle("bench.noop", tasker.HandlerFunc(func(context.Context, *tasker.StepContext) (any, error) { return 1, nil }))
	if err := eng.Start(ctx); err != nil {
		b.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close(context.Background()) })
	return &pgBench{eng: eng, conn: conn}
}

// pgStats are server counters: committed transactions in the database
// (reads outside a transaction count too, each is one) and WAL flushes to
// disk in the whole server, which is what durable write commits cost.
type pgStats struct{ commits, walSyncs int64 }

// stats reads the counters. Backends report their counts to the statistics
// system about once a second, so it waits for that first.
func (p *pgBench) stats(b *testing.B) pgStats {
	b.Helper()
	time.Sleep(1500 * time.Millisecond)
	ctx := context.Background()
	if _, err := p.conn.Exec(ctx, `SELECT pg_stat_clear_snapshot()`); err != nil {
		b.Fatal(err)
	}
	var s pgStats
	err := p.conn.QueryRow(ctx, `SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()),
		(SELECT wal_sync FROM pg_stat_wal)`).Scan(&s.commits, &s.walSyncs)
	if err != nil {
		b.Fatal(err)
	}
	return s
}

// reportStats reports the counters' growth per step.
func reportStats(b *testing.B, before, after pgStats, steps int) {
	b.ReportMetric(float64(after.commits-before.commits)/float64(steps), "xacts/step")
	b.ReportMetric(float64(after.walSyncs-before.walSyncs)/float64(steps), "wal_syncs/step")
}

// latency runs b.N tasks of a template one at a time and reports the p50
// and p99 time from CreateTask's return to the commit that completes the
// task, and the transactions and WAL flushes per step.
func latency(b *testing.B, name string, steps int) {
	p := openPostgres(b, 10)
	before := p.stats(b)
	lat := closedLoop(b, p.eng, tasker.TaskRequest{Namespace: "bench", Name: name})
	after := p.stats(b)
	reportPercentiles(b, lat, "")
	reportStats(b, before, after, b.N*steps)
}

// BenchmarkPostgresLinear4 is the end-to-end latency of a four-step chain of
// no-op handlers on PostgreSQL, one task at a time.
func BenchmarkPostgresLinear4(b *testing.B) { latency(b, "linear4", 4) }

// BenchmarkPostgresDiamond4 is the same for a four-step diamond, whose two
// middle steps run in parallel.
func BenchmarkPostgresDiamond4(b *testing.B) { latency(b, "diamond4", 4) }

// BenchmarkPostgresNoopThroughput creates b.N single-step no-op tasks from
// four goroutines and measures how fast they drain, and the transactions
// and WAL flushes each step costs, task creation included.
func BenchmarkPostgresNoopThroughput(b *testing.B) {
	p := openPostgres(b, 10)
	ctx := context.Background()
	before := p.stats(b)
	b.ResetTimer()
	start := time.Now()
	ids := make(chan string, b.N)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := g; i < b.N; i += 4 {
				task, err := p.eng.CreateTask(ctx, tasker.TaskRequest{Namespace: "bench", Name: "single"})
				if err != nil {
					b.Error(err)
					return
				}
				ids <- task.UUID
			}
		})
	}
	wg.Wait()
	close(ids)
	for id := range ids {
		if _, err := p.eng.WaitTask(ctx, id); err != nil {
			b.Fatal(err)
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "steps/s")
	reportStats(b, before, p.stats(b), b.N)
}
