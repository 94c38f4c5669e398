package tasker_test

import (
	"context"
	"sync"
	"testing"

	"github.com/tasker-go/tasker"
)

// TestConcurrentTasks creates 200 linear tasks from 8 goroutines while the
// engine runs them, and checks every result.
func TestConcurrentTasks(t *testing.T) {
	t.Parallel()
	const (
		producers = 8
		perWorker = 25
	)
	eng, _ := openEngine(t, engineOptions{
		templates: []string{linearYAML},
		handlers:  map[string]tasker.HandlerFunc{"math.op": mathOp},
	})
	type created struct {
		uuid string
		n    int64
	}
	var (
		mu    sync.Mutex
		tasks []created
		wg    sync.WaitGroup
	)
	for p := range producers {
		wg.Go(func() {
			for i := range perWorker {
				// Distinct contexts: the template's strict identity would
				// refuse a repeated one.
				n := int64(2 + (p*perWorker+i)%10)
				task, err := eng.CreateTask(context.Background(), tasker.TaskRequest{Namespace: "math", Name: "linear_math",
					Context: map[string]int64{"even_number": n, "producer": int64(p), "seq": int64(i)}})
				if err != nil {
					t.Errorf("producer %d task %d: %v", p, i, err)
					return
				}
				mu.Lock()
				tasks = append(tasks, created{task.UUID, n})
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	if len(tasks) != producers*perWorker {
		t.Fatalf("created %d tasks", len(tasks))
	}
	for _, c := range tasks {
		task := waitTask(t, eng, c.uuid)
		if task.State != "complete" {
			dumpTask(t, eng, c.uuid)
			t.Fatalf("task %s: %s", c.uuid, task.State)
		}
		steps := stepsByName(t, eng, c.uuid)
		for _, s := range steps {
			if s.Attempts != 1 {
				t.Errorf("task %s step %s ran %d times", c.uuid, s.Name, s.Attempts)
			}
		}
		wantResult(t, steps, "s4", expectedSquares(c.n))
	}
}
