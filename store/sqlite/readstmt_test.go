package sqlite

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/tasker-go/tasker/store"
)

// TestReaderPreparesOnce: reads through the reader reuse one prepared
// statement per query text, and still see every committed write.
func TestReaderPreparesOnce(t *testing.T) {
	ctx := context.Background()
	d, err := Open(ctx, Config{Path: filepath.Join(t.TempDir(), "r.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	for i, name := range []string{"a", "b", "c"} {
		tx, err := d.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := tx.TaskInsert(ctx, store.TaskInsertParams{UUID: name, Namespace: "ns", Name: "t", Version: "1.0.0",
			State: "pending", Context: []byte(`{}`)}); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		got, err := d.Reader().TaskGet(ctx, store.TaskGetParams{UUID: name})
		if err != nil || got.UUID != name {
			t.Fatalf("read %d: %+v, %v; want task %s", i, got, err, name)
		}
	}
	d.mu.Lock()
	n := len(d.readStmts)
	d.mu.Unlock()
	if n != 1 {
		t.Errorf("%d prepared read statements after three reads of one query, want 1", n)
	}
}
