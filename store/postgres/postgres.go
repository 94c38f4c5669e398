// Package postgres is the cluster store driver: one PostgreSQL database
// shared by any number of orchestrator and worker processes, reached through
// pgx connection pools.
//
// Every cross-process guarantee is enforced by the database: claims pick
// messages with FOR UPDATE SKIP LOCKED, so concurrent consumers neither wait
// for nor double-claim a message; state changes are guarded UPDATEs; task
// identity is a unique index; orchestrators serialise on a task with
// SELECT … FOR UPDATE. Transactions run at READ COMMITTED.
//
// All tables live in one schema (Config.Schema), so several Tasker
// installations, or parallel tests, can share a database.
package postgres

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"net"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/puddle/v2"

	"github.com/tasker-go/tasker/store"
)

//go:embed migrations/*.sql
var migrationFS embed.FS

// Config configures the driver.
type Config struct {
	// URL is the connection string, "postgres://user@host:5432/db?…" or a
	// libpq key/value string. Required.
	URL string
	// Schema is the schema that holds Tasker's tables; Migrate creates it.
	// A lower-case SQL identifier (letters, digits, underscores, not
	// starting with a digit or "pg_"). It overrides any search_path in URL.
	// Default "tasker".
	Schema string
	// MaxConns is the size of each of the driver's two connection pools:
	// one for transactions and one for reads outside a transaction, so the
	// driver opens at most 2×MaxConns connections. It overrides any
	// pool_max_conns in URL. Default 10.
	MaxConns int32
	// ApplicationName is the application_name the driver's sessions show
	// in pg_stat_activity; the session that waits for notifications (see
	// Listen) shows it with the suffix "_listener". Default: the URL's
	// application_name, else "tasker".
	ApplicationName string
}

// Driver is the PostgreSQL store driver.
type Driver struct {
	schema string
	// instance marks this driver's notifications, so that its own
	// listener can tell them from other processes'.
	instance string
	// pool runs transactions. reader runs Reader's queries on sessions
	// whose transactions default to read-only, so that the database itself
	// refuses a write through Reader.
	pool   *pgxpool.Pool
	reader *pgxpool.Pool

	readExec *executor
	// settled announces settled tasks to other processes.
	settled *settledNotifier
	// listenConfig opens the dedicated connections of Listen.
	listenConfig *pgx.ConnConfig

	closeOnce sync.Once
	// analyze analyzes the step tables after a large growth (analyze.go).
	analyze analyzer
}

// schemaName is what CheckSchemaName accepts: an identifier that needs no
// quoting, so that the schema a user sees in psql is the one in Config.
var schemaName = regexp.MustCompile(`^[a-z_][a-z0-9_]*$`)

// CheckSchemaName reports why name cannot be a schema for Tasker's tables,
// or nil if it can.
func CheckSchemaName(name string) error {
	switch {
	case name == "":
		return errors.New("must not be empty")
	case len(name) > 63:
		return fmt.Errorf("must be at most 63 bytes, got %d", len(name))
	case !schemaName.MatchString(name):
		return fmt.Errorf("must be a lower-case identifier (a-z, 0-9, _; not starting with a digit), got %q", name)
	case strings.HasPrefix(name, "pg_"):
		return fmt.Errorf("must not start with pg_ (reserved for system schemas), got %q", name)
	}
	return nil
}

// Open validates cfg, connects and checks that the server answers. Call
// Migrate before use.
func Open(ctx context.Context, cfg Config) (*Driver, error) {
	if cfg.URL == "" {
		return nil, errors.New("postgres: Config.URL is required")
	}
	if cfg.Schema == "" {
		cfg.Schema = "tasker"
	}
	if err := CheckSchemaName(cfg.Schema); err != nil {
		return nil, fmt.Errorf("postgres: Config.Schema %w", err)
	}
	if cfg.MaxConns == 0 {
		cfg.MaxConns = 10
	}
	if cfg.MaxConns < 0 {
		return nil, fmt.Errorf("postgres: Config.MaxConns must not be negative, got %d", cfg.MaxConns)
	}
	listenConfig, err := pgx.ParseConfig(cfg.URL)
	if err != nil {
		// The parse error may quote the URL, password included.
		return nil, errors.New("postgres: Config.URL is not a valid connection string")
	}
	if cfg.ApplicationName == "" {
		cfg.ApplicationName = listenConfig.RuntimeParams["application_name"]
	}
	if cfg.ApplicationName == "" {
		cfg.ApplicationName = "tasker"
	}
	listenConfig.RuntimeParams["application_name"] = cfg.ApplicationName + "_listener"
	newPool := func(readOnly bool) (*pgxpool.Pool, error) {
		pc, err := pgxpool.ParseConfig(cfg.URL)
		if err != nil {
			return nil, errors.New("postgres: Config.URL is not a valid connection string")
		}
		pc.MaxConns = cfg.MaxConns
		pc.ConnConfig.RuntimeParams["search_path"] = cfg.Schema
		pc.ConnConfig.RuntimeParams["application_name"] = cfg.ApplicationName
		// Tasker's statements are short lookups and writes; with statistics
		// that know a task holds 10,000 steps, some are estimated above
		// jit_above_cost and PostgreSQL compiled them on every execution
		// (15–40 ms, where running them takes under 0.1 ms).
		pc.ConnConfig.RuntimeParams["jit"] = "off"
		pc.ConnConfig.RuntimeParams["random_page_cost"] = "1.1"
		if readOnly {
			pc.ConnConfig.RuntimeParams["default_transaction_read_only"] = "on"
		}
		pool, err := pgxpool.NewWithConfig(ctx, pc)
		if err != nil {
			return nil, fmt.Errorf("postgres: open: %w", mapErr(err))
		}
		return pool, nil
	}
	pool, err := newPool(false)
	if err != nil {
		return nil, err
	}
	reader, err := newPool(true)
	if err != nil {
		pool.Close()
		return nil, err
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		reader.Close()
		return nil, fmt.Errorf("postgres: open: %w", mapErr(err))
	}
	d := &Driver{schema: cfg.Schema, pool: pool, reader: reader, listenConfig: listenConfig}
	d.instance = uuid.NewString()
	d.settled = &settledNotifier{d: d}
	d.readExec = &executor{q: reader, schema: cfg.Schema, instance: d.instance}
	return d, nil
}

// Name returns "postgres".
func (d *Driver) Name() string { return "postgres" }

// Schema returns the schema that holds the driver's tables.
func (d *Driver) Schema() string { return d.schema }

// Close closes the pools, waiting for connections in use (open
// transactions) to be released. It is safe to call more than once; any
// operation after Close fails with an error wrapping store.ErrUnavailable.
func (d *Driver) Close() error {
	d.closeOnce.Do(func() {
		d.pool.Close()
		d.reader.Close()
	})
	return nil
}

// Reader returns the executor for reads outside a transaction. Writes
// through it fail (its sessions are read-only), and TaskGet's ForUpdate is
// ignored, since there is no transaction to hold the lock.
func (d *Driver) Reader() store.Executor { return d.readExec }

// Begin starts a read-write transaction (READ COMMITTED) on a connection
// of the pool. The transaction is bound to ctx: once ctx is done, its
// statements and Commit fail. BEGIN itself is sent with the first
// statement (see pipeTx).
func (d *Driver) Begin(ctx context.Context) (store.Tx, error) {
	conn, err := d.pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("postgres: begin: %w", mapErr(err))
	}
	tx := &pipeTx{conn: conn}
	t := &txExec{executor: executor{q: tx, inTx: true, schema: d.schema, instance: d.instance, settled: d.settled.poke}, tx: tx, ctx: ctx, d: d}
	t.executor.grown = &t.grown
	return t, nil
}

type txExec struct {
	executor
	tx  *pipeTx
	ctx context.Context
	d   *Driver
	// grown counts the steps this transaction inserted.
	grown int64
	// idle, when set, are queues this transaction found holding nothing
	// to claim (CompleteAndLoadParams.ClaimQueues), at the point where it
	// had deferred idleSends queue sends.
	idle      []string
	idleSends int
}

// searchNeeded reports whether a claim on queues must search them: unless
// this transaction found them empty and sent them nothing since.
func (t *txExec) searchNeeded(queues []string) bool {
	if t.idle == nil || t.tx.sends != t.idleSends || len(queues) != len(t.idle) {
		return true
	}
	for _, q := range queues {
		if !slices.Contains(t.idle, q) {
			return true
		}
	}
	return false
}

func (t *txExec) Commit() error {
	if err := t.tx.Commit(t.ctx); err != nil {
		return fmt.Errorf("postgres: commit: %w", mapErr(err))
	}
	t.d.analyze.grew(t.d, t.grown)
	return nil
}

// ClaimAndCommit claims p's steps as the transaction's last statement and
// commits, in one round trip with the statements still pending; a
// transaction that sent nothing yet sends the claim alone, which commits
// on its own (the claim is one statement). A transaction that found the
// claim's queues empty (see searchNeeded) only starts p.Start.
func (t *txExec) ClaimAndCommit(ctx context.Context, p store.StepsClaimParams) ([]store.ClaimedStep, error) {
	var started, claimed []store.ClaimedStep
	var ss []stmt
	var reads []func(pgx.Rows, error) error
	if len(p.Start) > 0 {
		p.Now = orNow(p.Now)
		start := t.startStmt(p)
		ss = append(ss, start.stmt)
		reads = append(reads, func(rows pgx.Rows, err error) error {
			started, err = start.read(rows, err)
			return err
		})
	}
	// The search of the queues is the costliest statement of a hop at
	// light load, and it finds nothing when the transaction saw the queues
	// empty: PostgreSQL sets up its whole plan (five CTEs, three of them
	// writes) to find so. Left out then, the steps made ready here are
	// still started above.
	if t.searchNeeded(p.Queues) {
		ss = append(ss, claimStmt(p))
		reads = append(reads, func(rows pgx.Rows, err error) error {
			claimed, err = collectClaimed(p, rows, mapErr(err))
			return err
		})
	}
	if err := t.tx.commitAll(ctx, ss, reads); err != nil {
		return nil, fmt.Errorf("postgres: claim and commit: %w", mapErr(err))
	}
	t.d.analyze.grew(t.d, t.grown)
	return append(started, claimed...), nil
}

// rollbackTimeout bounds a rollback, which must run even when the
// transaction's context is already done.
const rollbackTimeout = 10 * time.Second

func (t *txExec) Rollback() error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(t.ctx), rollbackTimeout)
	defer cancel()
	err := t.tx.Rollback(ctx)
	if errors.Is(err, pgx.ErrTxClosed) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("postgres: rollback: %w", mapErr(err))
	}
	return nil
}

// migration is one embedded migration file.
type migration struct {
	version int
	name    string
	body    string
}

func migrations() ([]migration, error) {
	entries, err := fs.ReadDir(migrationFS, "migrations")
	if err != nil {
		return nil, err
	}
	out := make([]migration, 0, len(entries))
	for _, e := range entries {
		version, err := strconv.Atoi(strings.SplitN(e.Name(), "_", 2)[0])
		if err != nil {
			return nil, fmt.Errorf("postgres: migration %s: file name must start with a number", e.Name())
		}
		body, err := migrationFS.ReadFile("migrations/" + e.Name())
		if err != nil {
			return nil, err
		}
		out = append(out, migration{version: version, name: e.Name(), body: string(body)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].version < out[j].version })
	return out, nil
}

// migrationLockKey is the advisory lock that serialises Migrate across
// processes. It depends on the schema, so installations in different
// schemas of one database migrate independently.
func (d *Driver) migrationLockKey() int64 {
	h := fnv.New64a()
	h.Write([]byte("tasker.migrate:" + d.schema))
	return int64(h.Sum64())
}

// Migrate creates the schema and applies the embedded migrations that are
// not applied yet. It holds a session advisory lock while it works, so any
// number of processes may call it at once: the first applies the
// migrations, the others wait and then find nothing to do. Each migration
// runs in its own transaction together with its bookkeeping row.
func (d *Driver) Migrate(ctx context.Context) error {
	ms, err := migrations()
	if err != nil {
		return err
	}
	conn, err := d.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("postgres: migrate: %w", mapErr(err))
	}
	defer conn.Release()
	key := d.migrationLockKey()
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, key); err != nil {
		return fmt.Errorf("postgres: migrate: take the migration lock: %w", mapErr(err))
	}
	defer func() {
		unlockCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
		defer cancel()
		if _, err := conn.Exec(unlockCtx, `SELECT pg_advisory_unlock($1)`, key); err != nil {
			// Ending the session releases the lock; the pool drops the
			// closed connection.
			_ = conn.Conn().Close(unlockCtx)
		}
	}()

	// CREATE SCHEMA needs the CREATE privilege on the database even when
	// the schema exists, so it runs only when the schema is missing: an
	// operator may create the schema and grant no more than its use.
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)`, d.schema).Scan(&exists); err != nil {
		return fmt.Errorf("postgres: migrate: %w", mapErr(err))
	}
	if !exists {
		if _, err := conn.Exec(ctx, `CREATE SCHEMA `+pgx.Identifier{d.schema}.Sanitize()); err != nil {
			return fmt.Errorf("postgres: migrate: create schema %s: %w", d.schema, mapErr(err))
		}
	}
	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS tasker_migrations (
		version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL)`); err != nil {
		return fmt.Errorf("postgres: migrate: %w", mapErr(err))
	}
	// A schema migrated by a newer build may not work with this one:
	// refuse to start rather than run against tables it does not know.
	var newest int
	var newestName string
	err = conn.QueryRow(ctx, `SELECT version, name FROM tasker_migrations ORDER BY version DESC LIMIT 1`).Scan(&newest, &newestName)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("postgres: migrate: %w", mapErr(err))
	}
	if latest := ms[len(ms)-1]; err == nil && newest > latest.version {
		return fmt.Errorf("postgres: schema %s is at migration %d (%s), newer than this build's latest migration %d (%s): upgrade tasker",
			d.schema, newest, newestName, latest.version, latest.name)
	}
	for _, m := range ms {
		if err := applyMigration(ctx, conn.Conn(), m); err != nil {
			return err
		}
	}
	return nil
}

func applyMigration(ctx context.Context, conn *pgx.Conn, m migration) error {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return fmt.Errorf("postgres: migrate %s: %w", m.name, mapErr(err))
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	var applied bool
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM tasker_migrations WHERE version = $1)`, m.version).Scan(&applied); err != nil {
		return fmt.Errorf("postgres: migrate %s: %w", m.name, mapErr(err))
	}
	if applied {
		return nil
	}
	// No arguments: pgx sends the file with the simple protocol, which
	// accepts several statements.
	if _, err := tx.Exec(ctx, m.body); err != nil {
		return fmt.Errorf("postgres: migrate %s: %w", m.name, mapErr(err))
	}
	if _, err := tx.Exec(ctx, `INSERT INTO tasker_migrations (version, name, applied_at) VALUES ($1, $2, now())`,
		m.version, m.name); err != nil {
		return fmt.Errorf("postgres: migrate %s: %w", m.name, mapErr(err))
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("postgres: migrate %s: %w", m.name, mapErr(err))
	}
	return nil
}

// MigrationsCurrent reports whether every embedded migration is applied. A
// schema that was never migrated is not current (and not an error).
func (d *Driver) MigrationsCurrent(ctx context.Context) (bool, error) {
	ms, err := migrations()
	if err != nil {
		return false, err
	}
	rows, err := d.reader.Query(ctx, `SELECT version FROM tasker_migrations`)
	var versions []int32
	if err == nil {
		versions, err = pgx.CollectRows(rows, pgx.RowTo[int32])
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) && (pe.Code == "42P01" || pe.Code == "3F000") {
		return false, nil // undefined table or schema
	}
	if err != nil {
		return false, fmt.Errorf("postgres: read migrations: %w", mapErr(err))
	}
	have := make(map[int]bool, len(versions))
	for _, v := range versions {
		have[int(v)] = true
	}
	for _, m := range ms {
		if !have[m.version] {
			return false, nil
		}
	}
	return true, nil
}

// mapErr wraps errors that mean the database cannot be used right now with
// store.ErrUnavailable, naming the cause. The caller's own cancellation or
// deadline is passed through unchanged: the database did nothing wrong.
func mapErr(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch {
		case pe.Code == "TK409":
			// A deferred guarded transition matched no row (migration 0004).
			return fmt.Errorf("%w: %s", store.ErrStateConflict, pe.Message)
		case pe.Code == "57P01" || pe.Code == "57P02" || pe.Code == "57P03":
			// admin_shutdown, crash_shutdown, cannot_connect_now
			return fmt.Errorf("%w: database server is shutting down or starting up: %w", store.ErrUnavailable, err)
		case strings.HasPrefix(pe.Code, "08"):
			return fmt.Errorf("%w: database is unreachable: %w", store.ErrUnavailable, err)
		case strings.HasPrefix(pe.Code, "53"):
			// too_many_connections, disk_full, out_of_memory, …
			return fmt.Errorf("%w: database is out of resources: %w", store.ErrUnavailable, err)
		}
		return err
	}
	if errors.Is(err, puddle.ErrClosedPool) {
		return fmt.Errorf("%w: database driver is closed: %w", store.ErrUnavailable, err)
	}
	var ce *pgconn.ConnectError
	var ne net.Error
	if errors.As(err, &ce) || errors.As(err, &ne) || pgconn.SafeToRetry(err) ||
		errors.Is(err, pgconn.ErrConnClosed) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: database is unreachable: %w", store.ErrUnavailable, err)
	}
	return err
}
