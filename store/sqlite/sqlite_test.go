package sqlite_test

import (
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/tasker-go/tasker/store"
	"github.com/tasker-go/tasker/store/sqlite"
	"github.com/tasker-go/tasker/store/storetest"
)

func open(t *testing.T, path string) *sqlite.Driver {
	t.Helper()
	d, err := sqlite.Open(t.Context(), sqlite.Config{Path: path})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	if err := d.Migrate(t.Context()); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	return d
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Driver {
		return open(t, filepath.Join(t.TempDir(), "tasker.db"))
	})
}

func TestOpenValidatesConfig(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for _, c := range []struct {
		name  string
		cfg   sqlite.Config
		field string // empty: the config is valid
	}{
		{"empty path", sqlite.Config{}, "Path"},
		{"unknown synchronous", sqlite.Config{Path: filepath.Join(dir, "a.db"), Synchronous: "SOMETIMES"}, "Synchronous"},
		{"synchronous OFF is not offered", sqlite.Config{Path: filepath.Join(dir, "b.db"), Synchronous: "OFF"}, "Synchronous"},
		{"negative busy timeout", sqlite.Config{Path: filepath.Join(dir, "c.db"), BusyTimeout: -time.Second}, "BusyTimeout"},
		{"negative read pool", sqlite.Config{Path: filepath.Join(dir, "d.db"), ReadConns: -1}, "ReadConns"},
		{"lower-case FULL", sqlite.Config{Path: filepath.Join(dir, "e.db"), Synchronous: "full"}, ""},
		{"defaults", sqlite.Config{Path: filepath.Join(dir, "f.db")}, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			d, err := sqlite.Open(t.Context(), c.cfg)
			if c.field == "" {
				if err != nil {
					t.Fatalf("Open: %v", err)
				}
				d.Close()
				return
			}
			if err == nil {
				d.Close()
				t.Fatalf("Open accepted %+v", c.cfg)
			}
			if !strings.Contains(err.Error(), c.field) {
				t.Errorf("error %q does not name the field %s", err, c.field)
			}
		})
	}
}

func TestClosedDriverIsUnavailable(t *testing.T) {
	t.Parallel()
	d, err := sqlite.Open(t.Context(), sqlite.Config{Path: filepath.Join(t.TempDir(), "tasker.db")})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	ctx := t.Context()
	_, err = d.Reader().TaskGet(ctx, store.TaskGetParams{UUID: uuid.NewString()})
	if !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("Reader().TaskGet after Close: %v, want ErrUnavailable", err)
	}
	_, err = d.Reader().QueueDepth(ctx, store.QueueDepthParams{Now: time.Now()})
	if !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("Reader().QueueDepth after Close: %v, want ErrUnavailable", err)
	}
	if _, err := d.Begin(ctx); !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("Begin after Close: %v, want ErrUnavailable", err)
	}
	if err := d.Migrate(ctx); !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("Migrate after Close: %v, want ErrUnavailable", err)
	}
}

// TestTwoDriversOnOneFile stands in for two processes sharing the embedded
// database: their writers contend for the file lock and must wait on the
// busy timeout rather than fail.
func TestTwoDriversOnOneFile(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "shared.db")
	ctx := t.Context()
	drivers := make([]*sqlite.Driver, 2)
	for i := range drivers {
		d, err := sqlite.Open(ctx, sqlite.Config{Path: path})
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		t.Cleanup(func() { d.Close() })
		drivers[i] = d
	}
	// Both processes migrate at start-up, at the same time.
	var wg sync.WaitGroup
	for i, d := range drivers {
		wg.Go(func() {
			if err := d.Migrate(ctx); err != nil {
				t.Errorf("Migrate driver %d: %v", i, err)
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	now := time.Date(2026, 1, 2, 3, 4, 5, 678000, time.UTC)

	const nTasks, perDriver = 40, 4
	tasks := make([]string, nTasks)
	err := store.InTx(ctx, drivers[0], func(tx store.Tx) error {
		for i := range tasks {
			tasks[i] = uuid.NewString()
			if err := tx.TaskInsert(ctx, store.TaskInsertParams{
				UUID: tasks[i], Namespace: "ns", Name: "t", Version: "1", State: "pending", Context: json.RawMessage(`{}`), Now: now,
			}); err != nil {
				return err
			}
			step := uuid.NewString()
			if err := tx.StepsInsert(ctx, store.StepsInsertParams{TaskUUID: tasks[i], Namespace: "ns", Now: now,
				Steps: []store.StepInsert{{UUID: step, Name: "s", Callable: "h", MaxAttempts: 1}}}); err != nil {
				return err
			}
			if err := tx.StepTransition(ctx, store.StepTransitionParams{UUID: step, From: "pending", To: "enqueued", Event: "enqueue", Now: now}); err != nil {
				return err
			}
			if err := tx.QueueSend(ctx, store.QueueSendParams{Now: now, Messages: []store.QueueMessageInsert{
				{Queue: store.WorkerQueue("ns"), TaskUUID: tasks[i], StepUUID: step},
			}}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// A writer in one process waits out the other's open transaction instead
	// of failing. The sleep only makes the overlap near certain; nothing is
	// timed.
	held, err := drivers[0].Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := held.TemplateUpsert(ctx, store.TemplateUpsertParams{
		Namespace: "ns", Name: "t", Version: "1", ContentHash: "h", Source: []byte("a"), Now: now,
	}); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() {
		waited <- store.InTx(ctx, drivers[1], func(tx store.Tx) error {
			_, err := tx.TemplateUpsert(ctx, store.TemplateUpsertParams{
				Namespace: "ns", Name: "t", Version: "2", ContentHash: "h", Source: []byte("b"), Now: now,
			})
			return err
		})
	}()
	time.Sleep(100 * time.Millisecond)
	if err := held.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := <-waited; err != nil {
		t.Fatalf("write while the other driver held the lock: %v", err)
	}
	for di, d := range drivers {
		rows, err := d.Reader().TemplateList(ctx, store.TemplateListParams{})
		if err != nil || len(rows) != 2 {
			t.Errorf("driver %d sees %d templates (%v), want both writes", di, len(rows), err)
		}
	}

	// Every worker of both drivers races for every task's transition and
	// claims steps in between.
	var (
		mu      sync.Mutex
		wins    = map[string]int{}
		claimed = map[string]int{}
	)
	for di, d := range drivers {
		for w := range perDriver {
			owner := fmt.Sprintf("driver%d-worker%d", di, w)
			wg.Go(func() {
				for _, task := range tasks {
					err := store.InTx(ctx, d, func(tx store.Tx) error {
						return tx.TaskTransition(ctx, store.TaskTransitionParams{
							UUID: task, From: "pending", To: "initializing", Event: "start", Now: now.Add(time.Second),
							Metadata: json.RawMessage(`{"owner": ` + strconv.Quote(owner) + `}`),
						})
					})
					switch {
					case err == nil:
						mu.Lock()
						wins[task]++
						mu.Unlock()
					case !errors.Is(err, store.ErrStateConflict):
						t.Errorf("%s: transition of %s: %v", owner, task, err)
						return
					}
					var cs []store.ClaimedStep
					err = store.InTx(ctx, d, func(tx store.Tx) error {
						var err error
						cs, err = tx.StepsClaim(ctx, store.StepsClaimParams{
							Queues: []string{store.WorkerQueue("ns")}, Limit: 1, Lease: time.Hour, Owner: owner, Now: now.Add(time.Second),
						})
						return err
					})
					if err != nil {
						t.Errorf("%s: claim: %v", owner, err)
						return
					}
					mu.Lock()
					for _, c := range cs {
						claimed[c.StepUUID]++
					}
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()

	for _, task := range tasks {
		if wins[task] != 1 {
			t.Errorf("task %s: %d winning transitions, want 1", task, wins[task])
		}
	}
	if len(claimed) != nTasks {
		t.Errorf("%d steps claimed, want %d", len(claimed), nTasks)
	}
	for step, n := range claimed {
		if n != 1 {
			t.Errorf("step %s claimed %d times", step, n)
		}
	}
	// Both drivers read the same committed state.
	for di, d := range drivers {
		rows, err := d.Reader().TaskList(ctx, store.TaskListParams{States: []string{"initializing"}})
		if err != nil {
			t.Fatal(err)
		}
		if len(rows) != nTasks {
			t.Errorf("driver %d sees %d initializing tasks, want %d", di, len(rows), nTasks)
		}
		for _, task := range tasks {
			h, err := d.Reader().TaskTransitions(ctx, store.TaskTransitionsParams{UUID: task})
			if err != nil {
				t.Fatal(err)
			}
			if len(h) != 1 {
				t.Errorf("driver %d: task %s has %d history rows, want 1", di, task, len(h))
			}
		}
	}
}

// TestMigrateRefusesNewerSchema checks that a database migrated by a newer
// build is refused, naming the migration.
func TestMigrateRefusesNewerSchema(t *testing.T) {
	path := filepath.Join(t.TempDir(), "newer.db")
	d := open(t, path)
	raw, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	if _, err := raw.Exec(`INSERT INTO tasker_migrations (version, name, applied_at) VALUES (999, '0999_future.sql', 0)`); err != nil {
		t.Fatal(err)
	}
	err = d.Migrate(t.Context())
	if err == nil || !strings.Contains(err.Error(), "migration 999 (0999_future.sql)") {
		t.Fatalf("Migrate on a newer database: %v, want an error naming migration 999", err)
	}
}
