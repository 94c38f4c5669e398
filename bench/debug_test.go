package bench

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/tasker-go/tasker"
)

func TestDebugLatency(t *testing.T) {
	eng := openEngine(t, 10)
	ctx := context.Background()
	var cr, wt []time.Duration
	for i := 0; i < 300; i++ {
		s := time.Now()
		task, err := eng.CreateTask(ctx, tasker.TaskRequest{Namespace: "bench", Name: "linear4"})
		if err != nil {
			t.Fatal(err)
		}
		cr = append(cr, time.Since(s))
		s = time.Now()
		if _, err := eng.WaitTask(ctx, task.UUID); err != nil {
			t.Fatal(err)
		}
		wt = append(wt, time.Since(s))
	}
	slices.Sort(cr)
	slices.Sort(wt)
	t.Logf("create p50 %v p90 %v p99 %v max %v", cr[150], cr[270], cr[297], cr[299])
	t.Logf("wait p50 %v p90 %v p99 %v max %v", wt[150], wt[270], wt[297], wt[299])
}
