package postgres_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/tasker-go/tasker/store"
	"github.com/tasker-go/tasker/store/postgres"
	"github.com/tasker-go/tasker/store/postgres/pgtest"
	"github.com/tasker-go/tasker/store/storetest"
)

// open opens a driver on schema and closes it when the test ends.
func open(t *testing.T, url, schema string) *postgres.Driver {
	t.Helper()
	d, err := postgres.Open(t.Context(), postgres.Config{URL: url, Schema: schema})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// openMigrated opens and migrates a driver on a fresh schema.
func openMigrated(t *testing.T) *postgres.Driver {
	t.Helper()
	url := pgtest.URL(t)
	d := open(t, url, pgtest.Schema(t, url))
	if err := d.Migrate(t.Context()); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	return d
}

func TestConformance(t *testing.T) {
	pgtest.URL(t) // skip once, not in every subtest
	storetest.Run(t, func(t *testing.T) store.Driver { return openMigrated(t) })
}

func TestOpenValidatesConfig(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		cfg   postgres.Config
		field string
	}{
		{postgres.Config{}, "Config.URL"},
		{postgres.Config{URL: "postgres://h/db", Schema: "Tasker"}, "Config.Schema"},
		{postgres.Config{URL: "postgres://h/db", Schema: "1st"}, "Config.Schema"},
		{postgres.Config{URL: "postgres://h/db", Schema: "a-b"}, "Config.Schema"},
		{postgres.Config{URL: "postgres://h/db", Schema: `x"; DROP TABLE y; --`}, "Config.Schema"},
		{postgres.Config{URL: "postgres://h/db", Schema: "pg_tasker"}, "Config.Schema"},
		{postgres.Config{URL: "postgres://h/db", Schema: strings.Repeat("s", 64)}, "Config.Schema"},
		{postgres.Config{URL: "postgres://h/db", MaxConns: -1}, "Config.MaxConns"},
		{postgres.Config{URL: "postgres://h:notaport/db"}, "Config.URL"},
	} {
		d, err := postgres.Open(t.Context(), c.cfg)
		if err == nil {
			d.Close()
			t.Errorf("Open(%+v) succeeded, want an error naming %s", c.cfg, c.field)
			continue
		}
		if !strings.Contains(err.Error(), c.field) {
			t.Errorf("Open(%+v) = %v, want an error naming %s", c.cfg, err, c.field)
		}
	}
}

func TestOpenUnreachable(t *testing.T) {
	t.Parallel()
	// Nothing listens on port 1.
	_, err := postgres.Open(t.Context(), postgres.Config{URL: "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable&connect_timeout=5"})
	if !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("Open of an unreachable server: %v, want an error wrapping store.ErrUnavailable", err)
	}
	if !strings.Contains(err.Error(), "unreachable") {
		t.Errorf("error %q does not say the database is unreachable", err)
	}
}

// TestConcurrentMigrate has several processes' drivers (separate pools) migrate one
// schema at the same time: all succeed and the schema works for all.
func TestConcurrentMigrate(t *testing.T) {
	t.Parallel()
	url := pgtest.URL(t)
	schema := pgtest.Schema(t, url)
	const n = 4
	drivers := make([]*postgres.Driver, n)
	for i := range drivers {
		drivers[i] = open(t, url, schema)
		current, err := drivers[i].MigrationsCurrent(t.Context())
		if err != nil || current {
			t.Fatalf("MigrationsCurrent before Migrate = %v, %v; want false, nil", current, err)
		}
	}
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i, d := range drivers {
		wg.Go(func() {
			<-start
			errs[i] = d.Migrate(t.Context())
		})
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("Migrate %d: %v", i, err)
		}
	}
	for i, d := range drivers {
		if current, err := d.MigrationsCurrent(t.Context()); err != nil || !current {
			t.Errorf("driver %d: MigrationsCurrent = %v, %v; want true", i, current, err)
		}
	}
	id := uuid.NewString()
	if err := store.InTx(t.Context(), drivers[0], func(tx store.Tx) error {
		return tx.TaskInsert(t.Context(), store.TaskInsertParams{
			UUID: id, Namespace: "ns", Name: "t", Version: "1", State: "pending", Context: json.RawMessage(`{}`),
		})
	}); err != nil {
		t.Fatalf("TaskInsert: %v", err)
	}
	if _, err := drivers[n-1].Reader().TaskGet(t.Context(), store.TaskGetParams{UUID: id}); err != nil {
		t.Errorf("task written through one driver, read through another: %v", err)
	}
}

// TestConcurrentStepsClaimTwoPools drains one queue from two drivers (as two
// processes would) with several goroutines each: every message is claimed
// exactly once and every step starts exactly once.
func TestConcurrentStepsClaimTwoPools(t *testing.T) {
	t.Parallel()
	const (
		nSteps     = 500
		perDriver  = 8
		batchLimit = 7
	)
	url := pgtest.URL(t)
	schema := pgtest.Schema(t, url)
	drivers := []*postgres.Driver{open(t, url, schema), open(t, url, schema)}
	if err := drivers[0].Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	now := time.Now()
	task := uuid.NewString()
	steps := make([]store.StepInsert, nSteps)
	msgs := make([]store.QueueMessageInsert, nSteps)
	for i := range steps {
		steps[i] = store.StepInsert{UUID: uuid.NewString(), Name: "s" + strconv.Itoa(i), Position: i, Callable: "h", MaxAttempts: 3, Retryable: true}
		msgs[i] = store.QueueMessageInsert{Queue: store.WorkerQueue("ns"), TaskUUID: task, StepUUID: steps[i].UUID}
	}
	if err := store.InTx(ctx, drivers[0], func(tx store.Tx) error {
		if err := tx.TaskInsert(ctx, store.TaskInsertParams{UUID: task, Namespace: "ns", Name: "t", Version: "1",
			State: "steps_in_process", Context: json.RawMessage(`{}`), Now: now}); err != nil {
			return err
		}
		if err := tx.StepsInsert(ctx, store.StepsInsertParams{TaskUUID: task, Namespace: "ns", Steps: steps, Now: now}); err != nil {
			return err
		}
		for _, s := range steps {
			if err := tx.StepTransition(ctx, store.StepTransitionParams{UUID: s.UUID, From: "pending", To: "enqueued", Event: "enqueue", Now: now}); err != nil {
				return err
			}
		}
		return tx.QueueSend(ctx, store.QueueSendParams{Messages: msgs, Now: now})
	}); err != nil {
		t.Fatalf("set up: %v", err)
	}

	var (
		mu     sync.Mutex
		byStep = map[string]int{}
		byMsg  = map[int64]int{}
		wg     sync.WaitGroup
		start  = make(chan struct{})
	)
	for di, d := range drivers {
		for g := range perDriver {
			owner := fmt.Sprintf("driver%d-worker%d", di, g)
			wg.Go(func() {
				<-start
				for {
					var claimed []store.ClaimedStep
					err := store.InTx(ctx, d, func(tx store.Tx) error {
						var err error
						claimed, err = tx.StepsClaim(ctx, store.StepsClaimParams{
							Queues: []string{store.WorkerQueue("ns")}, Limit: batchLimit, Lease: time.Hour, Owner: owner, Now: now,
						})
						return err
					})
					if err != nil {
						t.Errorf("%s: StepsClaim: %v", owner, err)
						return
					}
					if len(claimed) == 0 {
						return
					}
					mu.Lock()
					for _, c := range claimed {
						byStep[c.StepUUID]++
						byMsg[c.Message.ID]++
						if c.Attempt != 1 || c.Message.LeaseOwner != owner {
							t.Errorf("%s claimed %s as attempt %d owned by %q", owner, c.StepName, c.Attempt, c.Message.LeaseOwner)
						}
					}
					mu.Unlock()
				}
			})
		}
	}
	close(start)
	wg.Wait()

	if len(byStep) != nSteps || len(byMsg) != nSteps {
		t.Errorf("%d distinct steps and %d distinct messages claimed, want %d of each", len(byStep), len(byMsg), nSteps)
	}
	for id, n := range byStep {
		if n != 1 {
			t.Errorf("step %s claimed %d times", id, n)
		}
	}
	for id, n := range byMsg {
		if n != 1 {
			t.Errorf("message %d claimed %d times", id, n)
		}
	}
	rows, err := drivers[1].Reader().StepsForTask(ctx, store.StepsForTaskParams{TaskUUID: task})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rows {
		if r.State != "in_progress" || r.Attempts != 1 {
			t.Errorf("step %s: state %q attempts %d, want in_progress 1", r.Name, r.State, r.Attempts)
		}
	}
}

func TestClosedDriverIsUnavailable(t *testing.T) {
	t.Parallel()
	d := openMigrated(t)
	if err := d.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := d.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	ctx := t.Context()
	_, err := d.Begin(ctx)
	if !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("Begin after Close: %v, want an error wrapping store.ErrUnavailable", err)
	}
	_, err = d.Reader().TaskGet(ctx, store.TaskGetParams{UUID: uuid.NewString()})
	if !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("Reader().TaskGet after Close: %v, want an error wrapping store.ErrUnavailable", err)
	}
	_, err = d.Reader().QueueDepth(ctx, store.QueueDepthParams{})
	if !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("Reader().QueueDepth after Close: %v, want an error wrapping store.ErrUnavailable", err)
	}
	if err := d.Migrate(ctx); !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("Migrate after Close: %v, want an error wrapping store.ErrUnavailable", err)
	}
}

// TestReaderForUpdate checks that a locking read through Reader, where no
// transaction could hold the lock, is served as a plain read.
func TestReaderForUpdate(t *testing.T) {
	t.Parallel()
	d := openMigrated(t)
	ctx := t.Context()
	id := uuid.NewString()
	if err := store.InTx(ctx, d, func(tx store.Tx) error {
		return tx.TaskInsert(ctx, store.TaskInsertParams{UUID: id, Namespace: "ns", Name: "t", Version: "1", State: "pending", Context: json.RawMessage(`{}`)})
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Reader().TaskGet(ctx, store.TaskGetParams{UUID: id, ForUpdate: true}); err != nil {
		t.Errorf("Reader().TaskGet with ForUpdate: %v", err)
	}
}

// TestSchemaIsolation checks that two schemas on one database hold separate
// data.
func TestSchemaIsolation(t *testing.T) {
	t.Parallel()
	a, b := openMigrated(t), openMigrated(t)
	ctx := t.Context()
	if err := store.InTx(ctx, a, func(tx store.Tx) error {
		_, err := tx.TemplateUpsert(ctx, store.TemplateUpsertParams{Namespace: "ns", Name: "t", Version: "1", ContentHash: "h", Source: []byte("s")})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if rows, err := b.Reader().TemplateList(ctx, store.TemplateListParams{}); err != nil || len(rows) != 0 {
		t.Errorf("schema %s sees %d templates of schema %s (err %v)", b.Schema(), len(rows), a.Schema(), err)
	}
	if rows, err := a.Reader().TemplateList(ctx, store.TemplateListParams{}); err != nil || len(rows) != 1 {
		t.Errorf("schema %s: %d templates, want 1 (err %v)", a.Schema(), len(rows), err)
	}
}

// TestMigrateRefusesNewerSchema checks that a schema migrated by a newer
// build is refused, naming the migration.
func TestMigrateRefusesNewerSchema(t *testing.T) {
	url := pgtest.URL(t)
	schema := pgtest.Schema(t, url)
	d := open(t, url, schema)
	if err := d.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(t.Context())
	if _, err := conn.Exec(t.Context(), `INSERT INTO `+pgx.Identifier{schema, "tasker_migrations"}.Sanitize()+
		` (version, name, applied_at) VALUES (999, '0999_future.sql', now())`); err != nil {
		t.Fatal(err)
	}
	err = d.Migrate(t.Context())
	if err == nil || !strings.Contains(err.Error(), "migration 999 (0999_future.sql)") {
		t.Fatalf("Migrate on a newer schema: %v, want an error naming migration 999", err)
	}
}

// TestAnalyzeAfterGrowth: the driver analyzes the step tables once the
// steps committed since the last analysis reach the threshold (1,000 in a
// new schema), and not before.
func TestAnalyzeAfterGrowth(t *testing.T) {
	t.Parallel()
	url := pgtest.URL(t)
	schema := pgtest.Schema(t, url)
	d := open(t, url, schema)
	ctx := t.Context()
	if err := d.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	// Only the driver may analyze it here, not an autovacuum round.
	if _, err := conn.Exec(ctx, `ALTER TABLE `+schema+`.tasker_steps SET (autovacuum_enabled = false)`); err != nil {
		t.Fatal(err)
	}
	analyzed := func() bool {
		var n int
		if err := conn.QueryRow(ctx, `SELECT analyze_count FROM pg_stat_user_tables
			WHERE schemaname = $1 AND relname = 'tasker_steps'`, schema).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n > 0
	}
	insert := func(n int) {
		t.Helper()
		task := uuid.NewString()
		p := store.StepsInsertParams{TaskUUID: task, Namespace: "ns", Now: time.Now()}
		for i := range n {
			p.Steps = append(p.Steps, store.StepInsert{UUID: uuid.NewString(), Name: fmt.Sprintf("s%d", i), Position: i,
				Callable: "h", MaxAttempts: 1})
		}
		if err := store.InTx(ctx, d, func(tx store.Tx) error {
			if err := tx.TaskInsert(ctx, store.TaskInsertParams{UUID: task, Namespace: "ns", Name: "t", Version: "1",
				State: "pending", Context: json.RawMessage(`{}`), StepCount: n}); err != nil {
				return err
			}
			return tx.StepsInsert(ctx, p)
		}); err != nil {
			t.Fatal(err)
		}
	}
	insert(999)
	time.Sleep(500 * time.Millisecond)
	if analyzed() {
		t.Fatal("tasker_steps analyzed after 999 steps, below the threshold")
	}
	insert(1)
	deadline := time.Now().Add(10 * time.Second)
	for !analyzed() {
		if time.Now().After(deadline) {
			t.Fatal("tasker_steps not analyzed within 10s of reaching 1,000 inserted steps")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
