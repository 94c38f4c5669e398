// Package sqlite is the embedded store driver: a single SQLite file in WAL
// mode, opened through a pure-Go SQLite (no cgo).
//
// All writes go through one connection, so writers in this process queue in
// Go instead of spinning on SQLITE_BUSY, and every transaction starts with
// BEGIN IMMEDIATE so that a second process on the same file waits on the
// busy timeout rather than failing a lock upgrade. Reads outside a
// transaction use a separate read-only pool and never wait for the writer.
package sqlite

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/tasker-go/tasker/store"
)

//go:embed migrations/*.sql
var migrationFS embed.FS

// Config configures the driver.
type Config struct {
	// Path is the database file. Required.
	Path string
	// BusyTimeout is how long a connection waits for another process's lock
	// before failing. Default 10s.
	BusyTimeout time.Duration
	// ReadConns is the size of the read-only pool. Default 4.
	ReadConns int
	// Synchronous is SQLite's synchronous pragma: "NORMAL" (default; in WAL
	// mode it survives a process crash, and may lose the last commits on a
	// power loss) or "FULL" (every commit is fsynced).
	Synchronous string
}

// Driver is the SQLite store driver.
type Driver struct {
	path   string
	writer *sql.DB
	reader *sql.DB

	mu    sync.Mutex
	stmts map[string]*sql.Stmt

	readExec *executor
}

// Open opens (creating if needed) the database file. Call Migrate before use.
func Open(ctx context.Context, cfg Config) (*Driver, error) {
	if cfg.Path == "" {
		return nil, errors.New("sqlite: Config.Path is required")
	}
	if cfg.BusyTimeout == 0 {
		cfg.BusyTimeout = 10 * time.Second
	}
	if cfg.BusyTimeout < 0 {
		return nil, fmt.Errorf("sqlite: Config.BusyTimeout must not be negative, got %s", cfg.BusyTimeout)
	}
	if cfg.ReadConns == 0 {
		cfg.ReadConns = 4
	}
	if cfg.ReadConns < 0 {
		return nil, fmt.Errorf("sqlite: Config.ReadConns must not be negative, got %d", cfg.ReadConns)
	}
	switch strings.ToUpper(cfg.Synchronous) {
	case "":
		cfg.Synchronous = "NORMAL"
	case "NORMAL", "FULL":
	default:
		return nil, fmt.Errorf("sqlite: Config.Synchronous must be NORMAL or FULL, got %q", cfg.Synchronous)
	}
	pragmas := func(extra ...string) string {
		v := url.Values{}
		for _, p := range append([]string{
			fmt.Sprintf("busy_timeout(%d)", cfg.BusyTimeout.Milliseconds()),
			"journal_mode(WAL)",
			"synchronous(" + strings.ToUpper(cfg.Synchronous) + ")",
			"foreign_keys(1)",
		}, extra...) {
			v.Add("_pragma", p)
		}
		v.Set("_txlock", "immediate")
		return "file:" + cfg.Path + "?" + v.Encode()
	}
	writer, err := sql.Open("sqlite", pragmas())
	if err != nil {
		return nil, fmt.Errorf("sqlite: open %s: %w", cfg.Path, err)
	}
	writer.SetMaxOpenConns(1)
	writer.SetMaxIdleConns(1)
	writer.SetConnMaxIdleTime(0)
	writer.SetConnMaxLifetime(0)
	if err := writer.PingContext(ctx); err != nil {
		writer.Close()
		return nil, fmt.Errorf("sqlite: open %s: %w", cfg.Path, mapErr(err))
	}
	reader, err := sql.Open("sqlite", pragmas("query_only(1)"))
	if err != nil {
		writer.Close()
		return nil, fmt.Errorf("sqlite: open %s: %w", cfg.Path, err)
	}
	reader.SetMaxOpenConns(cfg.ReadConns)
	reader.SetMaxIdleConns(cfg.ReadConns)
	d := &Driver{path: cfg.Path, writer: writer, reader: reader, stmts: map[string]*sql.Stmt{}}
	d.readExec = &executor{q: reader}
	return d, nil
}

// Name returns "sqlite".
func (d *Driver) Name() string { return "sqlite" }

// Path returns the database file path.
func (d *Driver) Path() string { return d.path }

// Close closes both pools.
func (d *Driver) Close() error {
	d.mu.Lock()
	for _, s := range d.stmts {
		s.Close()
	}
	d.stmts = map[string]*sql.Stmt{}
	d.mu.Unlock()
	return errors.Join(d.writer.Close(), d.reader.Close())
}

// Reader returns the read-only executor.
func (d *Driver) Reader() store.Executor { return d.readExec }

// Begin starts a write transaction (BEGIN IMMEDIATE).
func (d *Driver) Begin(ctx context.Context) (store.Tx, error) {
	tx, err := d.writer.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("sqlite: begin: %w", mapErr(err))
	}
	return &txExec{executor: executor{q: tx, prep: func(ctx context.Context, q string) (*sql.Stmt, error) {
		s, err := d.prepared(ctx, q)
		if err != nil {
			return nil, err
		}
		return tx.StmtContext(ctx, s), nil
	}}, tx: tx}, nil
}

// prepared returns a statement prepared once on the writer pool. Because the
// writer has a single connection, Tx.StmtContext reuses it without a new
// prepare.
func (d *Driver) prepared(ctx context.Context, q string) (*sql.Stmt, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if s, ok := d.stmts[q]; ok {
		return s, nil
	}
	s, err := d.writer.PrepareContext(ctx, q)
	if err != nil {
		return nil, err
	}
	d.stmts[q] = s
	return s, nil
}

type txExec struct {
	executor
	tx *sql.Tx
}

func (t *txExec) Commit() error {
	if err := t.tx.Commit(); err != nil {
		return fmt.Errorf("sqlite: commit: %w", mapErr(err))
	}
	return nil
}

func (t *txExec) Rollback() error {
	err := t.tx.Rollback()
	if errors.Is(err, sql.ErrTxDone) {
		return nil
	}
	return err
}

// Migrate applies the embedded migrations in order. Each runs in its own
// transaction together with its bookkeeping row, so a crash leaves the
// database at a migration boundary.
func (d *Driver) Migrate(ctx context.Context) error {
	if _, err := d.writer.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS tasker_migrations (
		version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)`); err != nil {
		return fmt.Errorf("sqlite: migrate: %w", mapErr(err))
	}
	entries, err := fs.ReadDir(migrationFS, "migrations")
	if err != nil {
		return err
	}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	for _, name := range names {
		version, err := strconv.Atoi(strings.SplitN(name, "_", 2)[0])
		if err != nil {
			return fmt.Errorf("sqlite: migration %s: file name must start with a number", name)
		}
		body, err := migrationFS.ReadFile("migrations/" + name)
		if err != nil {
			return err
		}
		if err := d.applyMigration(ctx, version, name, string(body)); err != nil {
			return err
		}
	}
	return nil
}

func (d *Driver) applyMigration(ctx context.Context, version int, name, body string) error {
	tx, err := d.writer.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("sqlite: migrate %s: %w", name, mapErr(err))
	}
	defer tx.Rollback()
	var n int
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM tasker_migrations WHERE version = ?`, version).Scan(&n); err != nil {
		return fmt.Errorf("sqlite: migrate %s: %w", name, mapErr(err))
	}
	if n > 0 {
		return nil
	}
	if _, err := tx.ExecContext(ctx, body); err != nil {
		return fmt.Errorf("sqlite: migrate %s: %w", name, mapErr(err))
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO tasker_migrations (version, name, applied_at) VALUES (?, ?, ?)`,
		version, name, time.Now().UnixMicro()); err != nil {
		return fmt.Errorf("sqlite: migrate %s: %w", name, mapErr(err))
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("sqlite: migrate %s: %w", name, mapErr(err))
	}
	return nil
}

// MigrationsCurrent reports whether every embedded migration is applied.
func (d *Driver) MigrationsCurrent(ctx context.Context) (bool, error) {
	entries, err := fs.ReadDir(migrationFS, "migrations")
	if err != nil {
		return false, err
	}
	var n int
	if err := d.reader.QueryRowContext(ctx, `SELECT count(*) FROM tasker_migrations`).Scan(&n); err != nil {
		return false, mapErr(err)
	}
	return n >= len(entries), nil
}

// mapErr wraps errors that mean the database cannot be used right now with
// store.ErrUnavailable, naming the cause.
func mapErr(err error) error {
	if err == nil {
		return nil
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() & 0xff {
		case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED:
			return fmt.Errorf("%w: database is locked by another connection: %w", store.ErrUnavailable, err)
		case sqlite3.SQLITE_FULL:
			return fmt.Errorf("%w: disk full: %w", store.ErrUnavailable, err)
		case sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB:
			return fmt.Errorf("%w: %w", store.ErrUnavailable, err)
		}
	}
	if errors.Is(err, sql.ErrConnDone) || strings.Contains(err.Error(), "sql: database is closed") {
		return fmt.Errorf("%w: database is closed: %w", store.ErrUnavailable, err)
	}
	return err
}

func isUnique(err error) bool {
	var se *sqlite.Error
	if errors.As(err, &se) {
		return se.Code() == sqlite3.SQLITE_CONSTRAINT_UNIQUE || se.Code() == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY
	}
	return false
}
