package postgres_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/tasker-go/tasker/store"
	"github.com/tasker-go/tasker/store/postgres"
	"github.com/tasker-go/tasker/store/postgres/pgtest"
)

// recorder collects a listener's signals and subscriptions.
type recorder struct {
	mu       sync.Mutex
	topics   []string
	connects int
	changed  chan struct{}
}

func newRecorder() *recorder { return &recorder{changed: make(chan struct{}, 1)} }

func (r *recorder) params(topics ...string) store.ListenParams {
	return store.ListenParams{
		Topics:    topics,
		OnNotify:  func(t string) { r.record(func() { r.topics = append(r.topics, t) }) },
		OnConnect: func() { r.record(func() { r.connects++ }) },
	}
}

func (r *recorder) record(f func()) {
	r.mu.Lock()
	f()
	r.mu.Unlock()
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

// await waits until cond holds on the recorder, for up to 10s.
func (r *recorder) await(t *testing.T, what string, cond func(topics []string, connects int) bool) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		r.mu.Lock()
		ok := cond(r.topics, r.connects)
		topics, connects := append([]string(nil), r.topics...), r.connects
		r.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-r.changed:
		case <-deadline:
			t.Fatalf("timed out waiting for %s; got topics %v after %d connects", what, topics, connects)
		}
	}
}

func (r *recorder) snapshot() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.topics...)
}

// listen runs d.Listen until the test ends.
func listen(t *testing.T, d *postgres.Driver, p store.ListenParams) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Listen(ctx, p) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Listen: %v", err)
		}
	})
}

func sendMessages(t *testing.T, tx store.Tx, queues ...string) {
	t.Helper()
	msgs := make([]store.QueueMessageInsert, len(queues))
	for i, q := range queues {
		msgs[i] = store.QueueMessageInsert{Queue: q, TaskUUID: uuid.NewString(), StepUUID: uuid.NewString()}
	}
	if err := tx.QueueSend(t.Context(), store.QueueSendParams{Messages: msgs}); err != nil {
		t.Fatalf("QueueSend: %v", err)
	}
}

// TestListenSignalsOnCommit checks that queue messages and durable events
// signal their topics when their transaction commits, once per topic, and
// not at all when it rolls back.
func TestListenSignalsOnCommit(t *testing.T) {
	t.Parallel()
	d := openMigrated(t)
	longNS := strings.Repeat("n", 70) // a channel name past PostgreSQL's 63 bytes
	rec := newRecorder()
	listen(t, d, rec.params(store.WorkerQueue("a"), store.WorkerQueue(longNS), store.OrchestrationQueue, store.EventsTopic))
	rec.await(t, "the subscription", func(_ []string, c int) bool { return c == 1 })

	tx, err := d.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	// A failed test must not leave the transaction holding locks that
	// the schema's cleanup waits for.
	t.Cleanup(func() { _ = tx.Rollback() })
	sendMessages(t, tx, store.WorkerQueue("a"), store.WorkerQueue("a"), store.WorkerQueue("b"))
	sendMessages(t, tx, store.WorkerQueue("a"), store.WorkerQueue(longNS))
	if err := tx.EventsInsert(t.Context(), store.EventsInsertParams{Events: []store.EventInsert{
		{EventID: uuid.NewString(), Name: "step.completed", TaskUUID: uuid.NewString(), Payload: []byte(`{}`)},
	}}); err != nil {
		t.Fatalf("EventsInsert: %v", err)
	}
	// Nothing is visible yet, so nothing may be signalled yet. A
	// notification is delivered at commit or never, so a short look is
	// enough to catch a violation without making the test slow.
	time.Sleep(100 * time.Millisecond)
	if got := rec.snapshot(); len(got) != 0 {
		t.Fatalf("signals before commit: %v", got)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{store.WorkerQueue("a"): true, store.WorkerQueue(longNS): true, store.EventsTopic: true}
	rec.await(t, "the committed topics", func(topics []string, _ int) bool { return len(topics) >= len(want) })

	// A rolled-back transaction signals nothing; the next commit shows
	// that the listener would have seen it.
	tx, err = d.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	sendMessages(t, tx, store.WorkerQueue("a"))
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	tx, err = d.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	sendMessages(t, tx, store.OrchestrationQueue)
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	rec.await(t, "the orchestration topic", func(topics []string, _ int) bool {
		return len(topics) > 0 && topics[len(topics)-1] == store.OrchestrationQueue
	})
	got := rec.snapshot()
	counts := map[string]int{}
	for _, topic := range got {
		counts[topic]++
	}
	for topic := range want {
		if counts[topic] != 1 {
			t.Errorf("topic %s signalled %d times, want once: %v", topic, counts[topic], got)
		}
	}
	if len(got) != len(want)+1 {
		t.Errorf("signals = %v, want each of %v once, then %s", got, want, store.OrchestrationQueue)
	}
}

// TestListenSchemasAreSeparate checks that an installation in another
// schema of the same database does not wake this one.
func TestListenSchemasAreSeparate(t *testing.T) {
	t.Parallel()
	d, other := openMigrated(t), openMigrated(t)
	rec := newRecorder()
	listen(t, d, rec.params(store.WorkerQueue("a")))
	rec.await(t, "the subscription", func(_ []string, c int) bool { return c == 1 })
	for _, drv := range []*postgres.Driver{other, d} {
		if err := store.InTx(t.Context(), drv, func(tx store.Tx) error {
			sendMessages(t, tx, store.WorkerQueue("a"))
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	rec.await(t, "this schema's signal", func(topics []string, _ int) bool { return len(topics) == 1 })
	// other's commit came first; had it leaked, it would be here.
	if got := rec.snapshot(); len(got) != 1 {
		t.Errorf("signals = %v, want one", got)
	}
}

// TestListenReconnects terminates the listener's session: the listener
// reconnects, subscribes again, reports it, and signals as before.
func TestListenReconnects(t *testing.T) {
	t.Parallel()
	base := pgtest.URL(t)
	app := "tasker_listen_" + strings.ReplaceAll(uuid.NewString()[:8], "-", "")
	d, err := postgres.Open(t.Context(), postgres.Config{URL: base, Schema: pgtest.Schema(t, base), ApplicationName: app})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	if err := d.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	rec := newRecorder()
	listen(t, d, rec.params(store.WorkerQueue("a")))
	rec.await(t, "the subscription", func(_ []string, c int) bool { return c == 1 })

	if n := terminate(t, base, app+"_listener"); n != 1 {
		t.Fatalf("terminated %d listener sessions, want 1", n)
	}
	rec.await(t, "a new subscription", func(_ []string, c int) bool { return c == 2 })
	if err := store.InTx(t.Context(), d, func(tx store.Tx) error {
		sendMessages(t, tx, store.WorkerQueue("a"))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	rec.await(t, "a signal after the reconnection", func(topics []string, _ int) bool { return len(topics) == 1 })
}

// terminate ends the sessions with an application_name and returns how
// many it ended.
func terminate(t *testing.T, dbURL, app string) int {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var n int
	if err := conn.QueryRow(t.Context(), `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name = $1`, app).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}
