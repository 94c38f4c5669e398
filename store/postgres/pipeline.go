package postgres

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// pipeTx is a read-write transaction on one pooled connection that saves
// round trips: BEGIN is not sent on its own but in front of the first
// statement, and statements whose outcome nothing inspects (history rows,
// queue inserts) are held back and sent, in order, in one batch with the
// next statement that needs an answer, or with COMMIT. An orchestration
// transaction that used to cost one round trip per statement costs one per
// statement that returns something the caller reads.
//
// Deferring a statement does not change what it sees: statements still run
// one after another, in the order they were issued, each with its own
// snapshot, inside the same transaction. A deferred statement that fails
// fails the statement it was batched with (or the commit), which fails the
// transaction, so nothing half-done is ever committed.
type pipeTx struct {
	conn *pgxpool.Conn
	// begun is true once BEGIN went to the server (alone or in a batch).
	begun bool
	// pending are the deferred statements not yet sent.
	pending []deferred
	// done is true after Commit or Rollback released the connection.
	done bool
	// afterCommit, if set, runs once the transaction has committed.
	afterCommit func()
	// sends counts the queue sends deferred so far (see txExec.idle).
	sends int
}

// deferred is a statement waiting to be sent; what names it in errors.
// A deferred write set (set non-nil) stands for the statements it renders
// when it is sent.
type deferred struct {
	what string
	sql  string
	args []any
	set  writeSet
	// sends is set on a statement that inserts queue messages itself
	// (queued with queueSending): sets of messages sent later must not
	// join a set queued before it.
	sends bool
}

var errTxDone = errors.New("transaction already committed or rolled back")

// queue defers a statement whose result nobody reads.
func (p *pipeTx) queue(what, sql string, args ...any) {
	p.pending = append(p.pending, deferred{what: what, sql: sql, args: args})
}

// queueSending defers a statement that sends queue messages of its own
// (see deferred.sends); it counts as a send (see txExec.idle).
func (p *pipeTx) queueSending(what, sql string, args ...any) {
	p.sends++
	p.pending = append(p.pending, deferred{what: what, sql: sql, args: args, sends: true})
}

// queueSet defers a write set: it joins the latest pending set it can
// join, unless a write it does not commute with was queued after that
// set, and is queued at the end otherwise.
func (p *pipeTx) queueSet(ws writeSet) {
	if _, ok := ws.(*queueSends); ok {
		p.sends++
	}
	for i := len(p.pending) - 1; i >= 0; i-- {
		d := &p.pending[i]
		if d.set != nil && d.set.join(ws) {
			return
		}
		if !ws.commutes(d) {
			break
		}
	}
	p.pending = append(p.pending, deferred{set: ws})
}

// stmt is a statement whose result the caller reads.
type stmt struct {
	sql  string
	args []any
}

// send sends BEGIN (if not yet sent) and the pending statements in front
// of stmts, in one batch, and reads the results of all but stmts; the
// caller reads one result per stmt, in order, and closes the batch.
func (p *pipeTx) send(ctx context.Context, stmts ...stmt) (pgx.BatchResults, error) {
	if p.done {
		return nil, errTxDone
	}
	b := &pgx.Batch{}
	if !p.begun {
		b.Queue("begin")
	}
	var pending []deferred
	for _, d := range p.pending {
		if d.set != nil {
			pending = append(pending, d.set.statements()...)
		} else {
			pending = append(pending, d)
		}
	}
	for _, d := range pending {
		b.Queue(d.sql, d.args...)
	}
	for _, s := range stmts {
		b.Queue(s.sql, s.args...)
	}
	wasBegun := p.begun
	p.pending, p.begun = nil, true
	br := p.conn.SendBatch(ctx, b)
	if !wasBegun {
		if _, err := br.Exec(); err != nil {
			br.Close()
			return nil, fmt.Errorf("begin: %w", err)
		}
	}
	for _, d := range pending {
		if _, err := br.Exec(); err != nil {
			br.Close()
			return nil, fmt.Errorf("%s: %w", d.what, err)
		}
	}
	return br, nil
}

// Exec runs sql after the pending statements.
func (p *pipeTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if p.done {
		return pgconn.CommandTag{}, errTxDone
	}
	if p.begun && len(p.pending) == 0 {
		return p.conn.Exec(ctx, sql, args...)
	}
	br, err := p.send(ctx, stmt{sql, args})
	if err != nil {
		return pgconn.CommandTag{}, err
	}
	tag, err := br.Exec()
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	return tag, err
}

// Query runs sql after the pending statements.
func (p *pipeTx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if p.done {
		return nil, errTxDone
	}
	if p.begun && len(p.pending) == 0 {
		return p.conn.Query(ctx, sql, args...)
	}
	br, err := p.send(ctx, stmt{sql, args})
	if err != nil {
		return nil, err
	}
	rows, err := br.Query()
	if err != nil {
		br.Close()
		return nil, err
	}
	return &batchRows{Rows: rows, br: br}, nil
}

// QueryRow runs sql after the pending statements.
func (p *pipeTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	rows, err := p.Query(ctx, sql, args...)
	return &pipeRow{rows: rows, err: err}
}

// Commit sends the pending statements and COMMIT in one batch. A
// transaction that never sent a statement has nothing to commit.
func (p *pipeTx) Commit(ctx context.Context) error {
	return p.commitWith(ctx, nil, nil)
}

// commitWith sends the pending statements, s (if any) and COMMIT in one
// batch and hands s's rows to read, which must consume and close them. A
// transaction that has sent nothing and has nothing pending sends s alone
// outside a transaction block (one statement commits on its own), or
// nothing at all.
func (p *pipeTx) commitWith(ctx context.Context, s *stmt, read func(pgx.Rows, error) error) error {
	if s == nil {
		return p.commitAll(ctx, nil, nil)
	}
	return p.commitAll(ctx, []stmt{*s}, []func(pgx.Rows, error) error{read})
}

// commitAll is commitWith for several statements, each with its reader.
func (p *pipeTx) commitAll(ctx context.Context, ss []stmt, reads []func(pgx.Rows, error) error) error {
	if p.done {
		return errTxDone
	}
	defer p.release()
	if !p.begun && len(p.pending) == 0 && len(ss) <= 1 {
		if len(ss) == 0 {
			return nil
		}
		rows, err := p.conn.Query(ctx, ss[0].sql, ss[0].args...)
		err = reads[0](rows, err)
		if err == nil && p.afterCommit != nil {
			p.afterCommit()
		}
		return err
	}
	br, err := p.send(ctx, append(slices.Clone(ss), stmt{sql: "commit"})...)
	if err == nil {
		for i := range ss {
			rows, qerr := br.Query()
			if err = reads[i](rows, qerr); err != nil {
				break
			}
		}
		if err == nil {
			_, err = br.Exec()
		}
		if cerr := br.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		// A statement of the batch failed, so the session may be left in
		// an aborted transaction; end it (release drops a connection that
		// is still not idle).
		p.rollback(ctx)
	} else if p.afterCommit != nil {
		p.afterCommit()
	}
	return err
}

// Rollback discards the pending statements and ends the transaction.
func (p *pipeTx) Rollback(ctx context.Context) error {
	if p.done {
		return pgx.ErrTxClosed
	}
	defer p.release()
	p.pending = nil
	if !p.begun {
		return nil
	}
	return p.rollback(ctx)
}

func (p *pipeTx) rollback(ctx context.Context) error {
	_, err := p.conn.Exec(ctx, "rollback")
	return err
}

// release returns the connection to the pool, which closes it instead if
// it is not idle (a transaction left open by a failed rollback).
func (p *pipeTx) release() {
	if !p.done {
		p.done = true
		p.conn.Release()
	}
}

// batchRows closes the batch with the rows.
type batchRows struct {
	pgx.Rows
	br pgx.BatchResults
}

func (r *batchRows) Close() {
	r.Rows.Close()
	r.br.Close()
}

// pipeRow is a pgx.Row over a pipeTx query.
type pipeRow struct {
	rows pgx.Rows
	err  error
}

func (r *pipeRow) Scan(dest ...any) error {
	if r.err != nil {
		return r.err
	}
	defer r.rows.Close()
	if !r.rows.Next() {
		if err := r.rows.Err(); err != nil {
			return err
		}
		return pgx.ErrNoRows
	}
	if err := r.rows.Scan(dest...); err != nil {
		return err
	}
	r.rows.Close()
	return r.rows.Err()
}
