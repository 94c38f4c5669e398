package tasker_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/tasker-go/tasker"
)

// TestConcurrentCreateTask: a burst of CreateTask calls, which the engine
// writes in shared transactions, answers every call as if it had been
// written alone: bad requests get their own errors, of two requests with
// one identity exactly one is created, and every created task is stored
// with its own request's context and steps. The engine runs, so the
// shared transactions also start the new tasks' first steps.
func TestConcurrentCreateTask(t *testing.T) {
	t.Parallel()
	for name, open := range storeOpeners {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			var mu sync.Mutex
			charged := map[string]int{}
			eng := open(t, engineOptions{templates: []string{ordersYAML}, handlers: map[string]tasker.HandlerFunc{
				"orders.charge": func(_ context.Context, s *tasker.StepContext) (any, error) {
					var c struct {
						OrderID string `json:"order_id"`
					}
					if err := s.DecodeContext(&c); err != nil {
						return nil, err
					}
					mu.Lock()
					charged[c.OrderID]++
					mu.Unlock()
					return c.OrderID, nil
				},
				"orders.ship": func(context.Context, *tasker.StepContext) (any, error) { return "shipped", nil },
			}})
			const n = 160
			type outcome struct {
				task *tasker.Task
				err  error
			}
			outcomes := make([]outcome, n)
			request := func(i int) tasker.TaskRequest {
				switch i % 8 {
				case 1:
					return tasker.TaskRequest{Namespace: "orders", Name: "checkout", Context: map[string]any{"order_id": fmt.Sprint("bad-", i)}}
				case 2:
					return tasker.TaskRequest{Namespace: "orders", Name: "refund", Context: map[string]any{"order_id": "x", "amount": 1}}
				case 3:
					// i and i+8 share an identity.
					return tasker.TaskRequest{Namespace: "orders", Name: "checkout", Context: map[string]any{"order_id": fmt.Sprint("dup-", i/16), "amount": 1}}
				}
				return tasker.TaskRequest{Namespace: "orders", Name: "checkout", Context: map[string]any{"order_id": fmt.Sprint("A-", i), "amount": i}}
			}
			start := make(chan struct{})
			var wg sync.WaitGroup
			for i := range n {
				wg.Go(func() {
					<-start
					outcomes[i].task, outcomes[i].err = eng.CreateTask(context.Background(), request(i))
				})
			}
			close(start)
			wg.Wait()

			created := 0
			for i, o := range outcomes {
				switch i % 8 {
				case 1:
					if !errors.Is(o.err, tasker.ErrInvalidContext) {
						t.Errorf("request %d (no amount): err %v, want ErrInvalidContext", i, o.err)
					}
				case 2:
					if !errors.Is(o.err, tasker.ErrTemplateNotFound) {
						t.Errorf("request %d (unknown template): err %v, want ErrTemplateNotFound", i, o.err)
					}
				case 3:
					if i%16 != 3 {
						continue // checked with its pair
					}
					a, b := o, outcomes[i+8]
					okA, okB := a.err == nil, b.err == nil
					dupA, dupB := errors.Is(a.err, tasker.ErrDuplicateTask), errors.Is(b.err, tasker.ErrDuplicateTask)
					if !(okA && dupB || okB && dupA) {
						t.Errorf("requests %d and %d share an identity: errs %v and %v, want one created and one ErrDuplicateTask", i, i+8, a.err, b.err)
					}
					created++
				default:
					if o.err != nil {
						t.Errorf("request %d: %v", i, o.err)
						continue
					}
					created++
					done := waitTask(t, eng, o.task.UUID)
					if done.State != "complete" {
						t.Errorf("request %d: task ended %s", i, done.State)
					}
					var c struct {
						OrderID string  `json:"order_id"`
						Amount  float64 `json:"amount"`
					}
					if err := json.Unmarshal(done.Context, &c); err != nil || c.OrderID != fmt.Sprint("A-", i) || c.Amount != float64(i) {
						t.Errorf("request %d: stored context %s (%v), want its own", i, done.Context, err)
					}
					if got := string(stepsByName(t, eng, o.task.UUID)["charge"].Result); got != fmt.Sprintf("%q", c.OrderID) {
						t.Errorf("request %d: charge result %s, want %q", i, got, c.OrderID)
					}
				}
			}
			page, err := eng.ListTasks(context.Background(), tasker.TaskFilter{Namespace: "orders", Limit: 1000})
			if err != nil {
				t.Fatal(err)
			}
			if len(page.Tasks) != created {
				t.Errorf("%d tasks stored, want the %d created", len(page.Tasks), created)
			}
			mu.Lock()
			defer mu.Unlock()
			for id, k := range charged {
				if k != 1 {
					t.Errorf("order %s charged %d times", id, k)
				}
			}
		})
	}
}
