package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/riverdriver/riversqlite"
	"github.com/riverqueue/river/rivermigrate"
	_ "modernc.org/sqlite"
)

// flowArgs is one step of a workflow run on River: a link of a chain, or
// the root, a child or the join of a fan-out.
type flowArgs struct {
	WF   int64 `json:"wf"`
	Node node  `json:"n"`
	I    int   `json:"i,omitempty"` // position in a chain
	Len  int   `json:"l,omitempty"` // chain length
	Fan  int   `json:"f,omitempty"` // children of a root
}

func (flowArgs) Kind() string { return "bench_flow" }

func (a flowArgs) terminal() bool {
	return a.Node == nodeJoin || (a.Node == nodeChain && a.I+1 == a.Len)
}

func firstArgs(s shape, wf int64) flowArgs {
	if s.fan > 0 {
		return flowArgs{WF: wf, Node: nodeRoot, Fan: s.fan}
	}
	return flowArgs{WF: wf, Node: nodeChain, Len: s.chain}
}

// joinDB is the little SQL the DAG glue needs beyond River: a counter row
// per fan-out, created by the root and decremented by each child, all in
// the transactions that complete those jobs.
type joinDB[TTx any] interface {
	begin(ctx context.Context) (TTx, error)
	commit(ctx context.Context, tx TTx) error
	rollback(ctx context.Context, tx TTx)
	addJoin(ctx context.Context, tx TTx, wf int64, n int) error
	decrement(ctx context.Context, tx TTx, wf int64) (remaining int, err error)
}

// flowWorker turns River jobs into workflows. This is the glue a River user
// writes by hand; RESULTS.md prints it.
type flowWorker[D riverdriver.Driver[TTx], TTx any] struct {
	river.WorkerDefaults[flowArgs]
	db  joinDB[TTx]
	rec *recorder
	// finalInTx completes a workflow's last job in the worker's own
	// transaction, whose commit is then the workflow's completion, instead
	// of leaving it to River's batch completer (which completes a batch
	// every 250ms at light load).
	finalInTx bool
}

func (w *flowWorker[D, TTx]) Work(ctx context.Context, job *river.Job[flowArgs]) error {
	a := job.Args
	key := strconv.FormatInt(a.WF, 10)
	w.rec.started(key, a.Node, time.Now())
	w.rec.ended(key, a.Node, time.Now()) // the step's own work is a no-op
	if a.terminal() && !w.finalInTx {
		return nil // River's completer completes the job
	}
	tx, err := w.db.begin(ctx)
	if err != nil {
		return err
	}
	defer w.db.rollback(ctx, tx)
	if _, err := river.JobCompleteTx[D](ctx, tx, job); err != nil {
		return err
	}
	var next []river.InsertManyParams
	switch a.Node {
	case nodeChain:
		if !a.terminal() {
			next = append(next, river.InsertManyParams{Args: flowArgs{WF: a.WF, Node: nodeChain, I: a.I + 1, Len: a.Len}})
		}
	case nodeRoot:
		if err := w.db.addJoin(ctx, tx, a.WF, a.Fan); err != nil {
			return err
		}
		for range a.Fan {
			next = append(next, river.InsertManyParams{Args: flowArgs{WF: a.WF, Node: nodeChild}})
		}
	case nodeChild:
		left, err := w.db.decrement(ctx, tx, a.WF)
		if err != nil {
			return err
		}
		if left == 0 {
			next = append(next, river.InsertManyParams{Args: flowArgs{WF: a.WF, Node: nodeJoin}})
		}
	}
	if len(next) > 0 {
		if _, err := river.ClientFromContext[TTx](ctx).InsertManyFastTx(ctx, tx, next); err != nil {
			return err
		}
	}
	if err := w.db.commit(ctx, tx); err != nil {
		return err
	}
	if a.terminal() {
		w.rec.finish(key, time.Now(), nil)
	}
	return nil
}

type pgJoinDB struct{ pool *pgxpool.Pool }

func (d pgJoinDB) begin(ctx context.Context) (pgx.Tx, error) { return d.pool.Begin(ctx) }
func (pgJoinDB) commit(ctx context.Context, tx pgx.Tx) error { return tx.Commit(ctx) }
func (pgJoinDB) rollback(ctx context.Context, tx pgx.Tx)     { _ = tx.Rollback(ctx) }
func (pgJoinDB) addJoin(ctx context.Context, tx pgx.Tx, wf int64, n int) error {
	_, err := tx.Exec(ctx, `INSERT INTO bench_join (wf, remaining) VALUES ($1, $2)`, wf, n)
	return err
}
func (pgJoinDB) decrement(ctx context.Context, tx pgx.Tx, wf int64) (n int, err error) {
	err = tx.QueryRow(ctx, `UPDATE bench_join SET remaining = remaining - 1 WHERE wf = $1 RETURNING remaining`, wf).Scan(&n)
	return n, err
}

type sqliteJoinDB struct{ db *sql.DB }

func (d sqliteJoinDB) begin(ctx context.Context) (*sql.Tx, error) { return d.db.BeginTx(ctx, nil) }
func (sqliteJoinDB) commit(_ context.Context, tx *sql.Tx) error   { return tx.Commit() }
func (sqliteJoinDB) rollback(_ context.Context, tx *sql.Tx)       { _ = tx.Rollback() }
func (sqliteJoinDB) addJoin(ctx context.Context, tx *sql.Tx, wf int64, n int) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO bench_join (wf, remaining) VALUES (?, ?)`, wf, n)
	return err
}
func (sqliteJoinDB) decrement(ctx context.Context, tx *sql.Tx, wf int64) (n int, err error) {
	err = tx.QueryRowContext(ctx, `UPDATE bench_join SET remaining = remaining - 1 WHERE wf = ? RETURNING remaining`, wf).Scan(&n)
	return n, err
}

const joinTableSQL = `CREATE TABLE IF NOT EXISTS bench_join (wf bigint PRIMARY KEY, remaining integer NOT NULL)`

// riverEngine is River with the flow worker. Committed completions come
// from the client's job_completed subscription, which the completer feeds
// after the completion's commit.
type riverEngine[D riverdriver.Driver[TTx], TTx any] struct {
	client  *river.Client[TTx]
	rec     *recorder
	seq     atomic.Int64
	unsub   func()
	closeDB func()
}

// riverTuning is what differs between the tuned and the default River.
type riverTuning struct {
	fetchCooldown, fetchPollInterval time.Duration
	finalInTx                        bool
}

// riverTuned fetches every few milliseconds; finalInTx is set per cell,
// for latency but not for throughput, where the batch completer is faster.
var riverTuned = riverTuning{fetchCooldown: 2 * time.Millisecond, fetchPollInterval: 5 * time.Millisecond}

func openRiver(ctx context.Context, cfg engineConfig, tune riverTuning) (engine, error) {
	if cfg.sqlite {
		db, err := openRiverSQLite(cfg.url)
		if err != nil {
			return nil, err
		}
		e, err := newRiver[*riversqlite.Driver](ctx, riversqlite.New(db), sqliteJoinDB{db}, cfg, tune, func() { db.Close() })
		if err != nil {
			db.Close()
		}
		return e, err
	}
	pool, err := openRiverPool(ctx, cfg)
	if err != nil {
		return nil, err
	}
	e, err := newRiver[*riverpgxv5.Driver](ctx, riverpgxv5.New(pool), pgJoinDB{pool}, cfg, tune, pool.Close)
	if err != nil {
		pool.Close()
	}
	return e, err
}

func openRiverPool(ctx context.Context, cfg engineConfig) (*pgxpool.Pool, error) {
	pc, err := pgxpool.ParseConfig(cfg.url)
	if err != nil {
		return nil, err
	}
	pc.MaxConns = int32(cfg.pool)
	return pgxpool.NewWithConfig(ctx, pc)
}

// openRiverSQLite opens the file as Tasker's SQLite store does (WAL,
// synchronous NORMAL) on the single connection riversqlite asks for.
func openRiverSQLite(path string) (*sql.DB, error) {
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)")
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(1)
	return db, nil
}

// migrateRiver applies River's migrations and creates the join table.
func migrateRiver(ctx context.Context, cfg engineConfig) error {
	if cfg.sqlite {
		db, err := openRiverSQLite(cfg.url)
		if err != nil {
			return err
		}
		defer db.Close()
		if err := runMigrations(ctx, riversqlite.New(db)); err != nil {
			return err
		}
		_, err = db.ExecContext(ctx, joinTableSQL)
		return err
	}
	pool, err := openRiverPool(ctx, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := runMigrations(ctx, riverpgxv5.New(pool)); err != nil {
		return err
	}
	_, err = pool.Exec(ctx, joinTableSQL)
	return err
}

func runMigrations[TTx any](ctx context.Context, d riverdriver.Driver[TTx]) error {
	m, err := rivermigrate.New(d, nil)
	if err != nil {
		return err
	}
	if _, err := m.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
		return fmt.Errorf("river migrations: %w", err)
	}
	return nil
}

func newRiver[D riverdriver.Driver[TTx], TTx any](ctx context.Context, driver D, db joinDB[TTx], cfg engineConfig, tune riverTuning, closeDB func()) (*riverEngine[D, TTx], error) {
	workers := river.NewWorkers()
	river.AddWorker(workers, &flowWorker[D, TTx]{db: db, rec: cfg.rec, finalInTx: tune.finalInTx})
	client, err := river.NewClient(driver, &river.Config{
		Queues:            map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: cfg.workers}},
		Workers:           workers,
		FetchCooldown:     tune.fetchCooldown,
		FetchPollInterval: tune.fetchPollInterval,
		Logger:            quietLogger(),
	})
	if err != nil {
		return nil, err
	}
	e := &riverEngine[D, TTx]{client: client, rec: cfg.rec, closeDB: closeDB}
	events, unsub := client.SubscribeConfig(&river.SubscribeConfig{ChanSize: 1 << 16, Kinds: []river.EventKind{river.EventKindJobCompleted}})
	e.unsub = unsub
	go func() {
		for ev := range events {
			if tune.finalInTx {
				continue // the worker reported the completion
			}
			var a flowArgs
			if err := json.Unmarshal(ev.Job.EncodedArgs, &a); err != nil || !a.terminal() {
				continue
			}
			e.rec.finish(strconv.FormatInt(a.WF, 10), time.Now(), nil)
		}
	}()
	return e, nil
}

func (e *riverEngine[D, TTx]) start(ctx context.Context) error { return e.client.Start(ctx) }

func (e *riverEngine[D, TTx]) submit(ctx context.Context, s shape) (string, error) {
	wf := e.seq.Add(1)
	if _, err := e.client.Insert(ctx, firstArgs(s, wf), nil); err != nil {
		return "", err
	}
	key := strconv.FormatInt(wf, 10)
	e.rec.submitted(key, time.Now())
	return key, nil
}

// submitMany inserts the first jobs in batches of 1,000.
func (e *riverEngine[D, TTx]) submitMany(ctx context.Context, s shape, n int) error {
	e.rec.expect(n)
	for i := 0; i < n; i += 1000 {
		batch := make([]river.InsertManyParams, 0, 1000)
		for j := i; j < min(n, i+1000); j++ {
			batch = append(batch, river.InsertManyParams{Args: firstArgs(s, e.seq.Add(1))})
		}
		if _, err := e.client.InsertManyFast(ctx, batch); err != nil {
			return err
		}
	}
	return nil
}

func (e *riverEngine[D, TTx]) drain(ctx context.Context, _ int) error { return e.rec.waitFinished(ctx) }

func (e *riverEngine[D, TTx]) close(ctx context.Context) error {
	err := e.client.Stop(ctx)
	e.unsub()
	e.closeDB()
	return err
}
