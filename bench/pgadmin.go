package main

import (
	"context"
	"fmt"
	"net/url"
	"time"

	"github.com/jackc/pgx/v5"
)

// pgAdmin is a connection to the server's maintenance database, from which
// the benchmark databases are created and their counters read, so that its
// own statements never count against them.
type pgAdmin struct {
	base *url.URL
	conn *pgx.Conn
}

func openAdmin(ctx context.Context, raw string) (*pgAdmin, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("parse PostgreSQL URL: %w", err)
	}
	conn, err := pgx.Connect(ctx, raw)
	if err != nil {
		return nil, fmt.Errorf("connect to PostgreSQL (set -pg or TASKER_BENCH_DATABASE_URL, or use -store sqlite): %w", err)
	}
	return &pgAdmin{base: u, conn: conn}, nil
}

func (p *pgAdmin) close() { p.conn.Close(context.Background()) }

// url is the server URL with the database replaced.
func (p *pgAdmin) url(db string) string {
	u := *p.base
	u.Path = "/" + db
	return u.String()
}

// fresh drops and creates db.
func (p *pgAdmin) fresh(ctx context.Context, db string) error {
	if _, err := p.conn.Exec(ctx, "DROP DATABASE IF EXISTS "+db+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("drop %s: %w", db, err)
	}
	if _, err := p.conn.Exec(ctx, "CREATE DATABASE "+db); err != nil {
		return fmt.Errorf("create %s: %w", db, err)
	}
	return nil
}

func (p *pgAdmin) dropAll(ctx context.Context) {
	for _, db := range []string{"tasker_bench", "river_bench"} {
		_, _ = p.conn.Exec(ctx, "DROP DATABASE IF EXISTS "+db+" WITH (FORCE)")
	}
}

// pgCounters are the cost counters: transactions committed in one
// database, and the server's WAL position (server-wide: whatever else runs
// on the server adds to it).
type pgCounters struct {
	commits int64
	wal     int64
}

// counters reads them. A backend reports its transaction counts when it
// exits or, at the latest, about 10s after its last report, so the caller
// reads them only once the engine's connections are closed.
func (p *pgAdmin) counters(ctx context.Context, db string) (pgCounters, error) {
	var c pgCounters
	err := p.conn.QueryRow(ctx, `SELECT coalesce((SELECT xact_commit FROM pg_stat_database WHERE datname = $1), 0),
		(pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint`, db).Scan(&c.commits, &c.wal)
	return c, err
}

func (p *pgAdmin) describe(ctx context.Context) string {
	var version, syncCommit string
	if err := p.conn.QueryRow(ctx, `SELECT version(), current_setting('synchronous_commit')`).Scan(&version, &syncCommit); err != nil {
		return "PostgreSQL: " + err.Error()
	}
	return fmt.Sprintf("%s; synchronous_commit=%s", version, syncCommit)
}

// settle gives exiting backends time to report their counters.
func settle() { time.Sleep(500 * time.Millisecond) }
