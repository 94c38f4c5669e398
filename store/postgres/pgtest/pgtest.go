// Package pgtest gives tests a PostgreSQL database of their own.
//
// Tests find the server through TASKER_TEST_DATABASE_URL (default
// postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable). When it is
// unreachable they are skipped with a message, unless
// TASKER_REQUIRE_POSTGRES=1, in which case they fail. Each test works in a
// fresh schema that is dropped when it ends, so tests run in parallel on one
// database.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// DefaultURL is the database tests use when TASKER_TEST_DATABASE_URL is
// unset.
const DefaultURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// connectTimeout bounds each connection the helpers make.
const connectTimeout = 10 * time.Second

var (
	probeMu sync.Mutex
	probed  = map[string]error{}
)

// URL returns the test database URL once the server has answered. If it
// does not, URL skips the test, or fails it when TASKER_REQUIRE_POSTGRES=1.
// The server is probed once per process.
func URL(t testing.TB) string {
	t.Helper()
	url := os.Getenv("TASKER_TEST_DATABASE_URL")
	if url == "" {
		url = DefaultURL
	}
	probeMu.Lock()
	err, done := probed[url]
	if !done {
		err = probe(url)
		probed[url] = err
	}
	probeMu.Unlock()
	if err != nil {
		if os.Getenv("TASKER_REQUIRE_POSTGRES") == "1" {
			t.Fatalf("PostgreSQL is required (TASKER_REQUIRE_POSTGRES=1) but unreachable: %v", err)
		}
		t.Skipf("PostgreSQL unreachable, skipping (set TASKER_TEST_DATABASE_URL to a reachable server): %v", err)
	}
	return url
}

func probe(url string) error {
	ctx, cancel := context.WithTimeout(context.Background(), connectTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	return conn.Ping(ctx)
}

// Schema creates a schema with a fresh random name ("t_" and 16 hex
// digits) on the database at url and drops it, with everything in it, when
// the test ends. Cleanups run last-registered first, so a driver opened
// after Schema is closed before its schema is dropped.
func Schema(t testing.TB, url string) string {
	t.Helper()
	var b [8]byte
	_, _ = rand.Read(b[:])
	name := "t_" + hex.EncodeToString(b[:])
	if err := run(url, `CREATE SCHEMA `+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatalf("pgtest: create schema %s: %v", name, err)
	}
	t.Cleanup(func() {
		if err := run(url, `DROP SCHEMA IF EXISTS `+pgx.Identifier{name}.Sanitize()+` CASCADE`); err != nil {
			t.Errorf("pgtest: drop schema %s: %v", name, err)
		}
	})
	return name
}

// run executes one statement on a connection of its own. It does not use
// the test's context, which is already cancelled when cleanups run.
func run(url, sql string) error {
	ctx, cancel := context.WithTimeout(context.Background(), connectTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, sql)
	return err
}
