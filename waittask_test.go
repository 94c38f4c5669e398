package tasker_test

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/tasker-go/tasker"
)

// TestWaitTaskMatchesGetTask: the task WaitTask returns (handed over by
// the commit that settled it, without a read) is the task GetTask reads
// back, for a task that completes and one that ends blocked by a
// failure, on both stores.
func TestWaitTaskMatchesGetTask(t *testing.T) {
	for _, name := range []string{"sqlite", "postgres"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			eng := storeOpeners[name](t, engineOptions{
				cfg:       tasker.Config{RetryJitter: -1},
				templates: []string{linearYAML, wideYAML("wide_fail", 4, map[int]string{1: "permanent"})},
				handlers:  map[string]tasker.HandlerFunc{"math.op": mathOp, "eq.child": eqChild},
			})
			for _, req := range []tasker.TaskRequest{
				{Namespace: "math", Name: "linear_math", Context: map[string]any{"even_number": 6}, Tags: []string{"a", "b"}},
				{Namespace: "eq", Name: "wide_fail", Reason: "test"},
			} {
				task := createTask(t, eng, req)
				waited := waitTask(t, eng, task.UUID)
				read, err := eng.GetTask(context.Background(), task.UUID)
				if err != nil {
					t.Fatalf("GetTask: %v", err)
				}
				w, _ := json.Marshal(waited)
				r, _ := json.Marshal(read)
				if string(w) != string(r) {
					t.Errorf("%s: WaitTask returned\n%s\nGetTask reads\n%s", req.Name, w, r)
				}
			}
		})
	}
}
