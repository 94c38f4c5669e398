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

	readExec *executor

	mu        sync.Mutex
	stmts     map[string]*sql.Stmt
	readStmts map[string]*sql.Stmt
	closeOnce sync.Once

	ckpt     *sql.DB
	stopCkpt chan struct{}
	ckptDone chan struct{}
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
			// Checkpoints run in the background (see checkpointLoop) instead
			// of inside whichever commit crosses the threshold, where their
			// fsyncs would stall that transaction for tens of milliseconds.
			"wal_autocheckpoint(0)",
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
	ckpt, err := sql.Open("sqlite", pragmas())
	if err != nil {
		writer.Close()
		reader.Close()
		return nil, fmt.Errorf("sqlite: open %s: %w", cfg.Path, err)
	}
	ckpt.SetMaxOpenConns(1)
	d := &Driver{path: cfg.Path, writer: writer, reader: reader, ckpt: ckpt,
		stmts: map[string]*sql.Stmt{}, readStmts: map[string]*sql.Stmt{}, stopCkpt: make(chan struct{}), ckptDone: make(chan struct{})}
	d.readExec = &executor{q: reader, stmt: d.readStmt}
	go d.checkpointLoop()
	return d, nil
}

// checkpointInterval is how often the WAL is copied back into the database
// file. A passive checkpoint waits for nobody and blocks nobody.
const checkpointInterval = 200 * time.Millisecond

func (d *Driver) checkpointLoop() {
	defer close(d.ckptDone)
	tick := time.NewTicker(checkpointInterval)
	defer tick.Stop()
	for {
		select {
		case <-d.stopCkpt:
			return
		case <-tick.C:
		}
		// A failure (another process holding a lock, a closed file) is
		// retried at the next tick; meanwhile the WAL only grows.
		_, _ = d.ckpt.Exec(`PRAGMA wal_checkpoint(PASSIVE)`)
	}
}

// maxCachedStmts bounds the prepared-statement cache: queries with IN lists
// of varying length would otherwise grow it without end.
const maxCachedStmts = 256

// stmt returns a cached prepared statement for q, or nil. Statements are
// prepared on the writer pool only between transactions (see learn),
// because the pool's single connection is held by any open transaction.
func (d *Driver) stmt(q string) *sql.Stmt {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.stmts[q]
}

// readStmt returns the reader pool's prepared statement for q, preparing
// it on first use (database/sql prepares it again on each pooled
// connection that runs it). Without it every read was parsed and planned
// afresh, which for the small reads of a settled task (WaitTask, GetTask)
// cost about as much as the transaction that settled it.
func (d *Driver) readStmt(ctx context.Context, q string) *sql.Stmt {
	d.mu.Lock()
	s, ok := d.readStmts[q]
	full := len(d.readStmts) >= maxCachedStmts
	d.mu.Unlock()
	if ok || full {
		return s
	}
	s, err := d.reader.PrepareContext(ctx, q)
	if err != nil {
		return nil // it runs unprepared, and reports its error there
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if prev, ok := d.readStmts[q]; ok {
		s.Close()
		return prev
	}
	d.readStmts[q] = s
	return s
}

// learn prepares the queries a finished transaction ran without a cached
// statement, so that later transactions reuse them.
func (d *Driver) learn(queries []string) {
	for _, q := range queries {
		d.mu.Lock()
		_, have := d.stmts[q]
		full := len(d.stmts) >= maxCachedStmts
		d.mu.Unlock()
		if have || full {
			continue
		}
		s, err := d.writer.Prepare(q)
		if err != nil {
			continue // it will run unprepared, as before
		}
		d.mu.Lock()
		if _, have := d.stmts[q]; have {
			s.Close()
		} else {
			d.stmts[q] = s
		}
		d.mu.Unlock()
	}
}

// Name returns "sqlite".
func (d *Driver) Name() string { return "sqlite" }

// Path returns the database file path.
func (d *Driver) Path() string { return d.path }

// Close stops the checkpointer, folds the WAL back into the database file
// and closes the pools. It is safe to call more than once.
func (d *Driver) Close() error {
	var err error
	d.closeOnce.Do(func() {
		close(d.stopCkpt)
		<-d.ckptDone
		d.mu.Lock()
		for _, s := range d.stmts {
			s.Close()
		}
		for _, s := range d.readStmts {
			s.Close()
		}
		d.stmts, d.readStmts = map[string]*sql.Stmt{}, map[string]*sql.Stmt{}
		d.mu.Unlock()
		_, _ = d.ckpt.Exec(`PRAGMA wal_checkpoint(TRUNCATE)`)
		err = errors.Join(d.writer.Close(), d.reader.Close(), d.ckpt.Close())
	})
	return err
}

// Reader returns the read-only executor.
func (d *Driver) Reader() store.Executor { return d.readExec }

// Begin starts a write transaction (BEGIN IMMEDIATE). ctx bounds the wait
// for the writer connection; the transaction itself, its statements and
// its COMMIT run under ctx's values without its cancellation. The SQLite
// driver watches a cancellable context with a goroutine of its own for
// every statement (and database/sql with one more per transaction): that
// was 3–10% of a step's end-to-end latency, for statements that take tens
// of microseconds. A statement called with an ended context fails before
// it runs, and Commit rolls back once ctx has ended, as before; what is no
// longer interrupted is a statement already running, and the wait for
// another process's write lock, which BusyTimeout bounds.
func (d *Driver) Begin(ctx context.Context) (store.Tx, error) {
	conn, err := d.writer.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("sqlite: begin: %w", mapErr(err))
	}
	bg := context.WithoutCancel(ctx)
	tx, err := conn.BeginTx(bg, nil)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("sqlite: begin: %w", mapErr(err))
	}
	t := &txExec{tx: tx, conn: conn, d: d, begin: ctx}
	t.executor = executor{q: tx, stmt: t.stmt, ctx: bg, sent: map[string]bool{}}
	return t, nil
}

type txExec struct {
	executor
	tx     *sql.Tx
	conn   *sql.Conn
	begin  context.Context
	d      *Driver
	missed []string
	// bound are the cached statements bound to this transaction so far,
	// by query: binding costs an allocation and two locks, and a step's
	// statements repeat within a transaction (its history rows).
	bound map[string]*sql.Stmt
}

// stmt binds a cached statement to the transaction, or notes the query so
// it is prepared once the transaction has released the connection.
func (t *txExec) stmt(ctx context.Context, q string) *sql.Stmt {
	if s, ok := t.bound[q]; ok {
		return s
	}
	if s := t.d.stmt(q); s != nil {
		b := t.tx.StmtContext(ctx, s)
		if t.bound == nil {
			t.bound = map[string]*sql.Stmt{}
		}
		t.bound[q] = b
		return b
	}
	t.missed = append(t.missed, q)
	return nil
}

func (t *txExec) Commit() error {
	if err := t.begin.Err(); err != nil {
		_ = t.tx.Rollback()
		t.conn.Close()
		return fmt.Errorf("sqlite: commit: %w", err)
	}
	err := t.tx.Commit()
	t.conn.Close() // back to the pool, for learn and the next transaction
	t.d.learn(t.missed)
	if err != nil {
		return fmt.Errorf("sqlite: commit: %w", mapErr(err))
	}
	return nil
}

func (t *txExec) Rollback() error {
	err := t.tx.Rollback()
	t.conn.Close()
	if err == nil {
		t.d.learn(t.missed)
	}
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
	// A database migrated by a newer build may not work with this one:
	// refuse to start rather than run against tables it does not know.
	if len(names) > 0 {
		latest, _ := strconv.Atoi(strings.SplitN(names[len(names)-1], "_", 2)[0])
		var newest int
		var newestName string
		err := d.writer.QueryRowContext(ctx, `SELECT version, name FROM tasker_migrations ORDER BY version DESC LIMIT 1`).
			Scan(&newest, &newestName)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("sqlite: migrate: %w", mapErr(err))
		}
		if err == nil && newest > latest {
			return fmt.Errorf("sqlite: database %s is at migration %d (%s), newer than this build's latest migration %d (%s): upgrade tasker",
				d.path, newest, newestName, latest, names[len(names)-1])
		}
	}
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
