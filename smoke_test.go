package tasker_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/tasker-go/tasker"
)

const linearYAML = `
name: linear_math
namespace_name: math
version: 1.0.0
steps:
  - name: s1
    handler: {callable: math.square}
  - name: s2
    handler: {callable: math.square}
    dependencies: [s1]
  - name: s3
    handler: {callable: math.square}
    dependencies: [s2]
  - name: s4
    handler: {callable: math.square}
    dependencies: [s3]
`

func TestSmokeLinear(t *testing.T) {
	ctx := context.Background()
	eng, err := tasker.Open(ctx, tasker.Config{DatabaseURL: "sqlite://" + filepath.Join(t.TempDir(), "t.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	if err := eng.RegisterTemplate(ctx, []byte(linearYAML)); err != nil {
		t.Fatal(err)
	}
	eng.Handle("math.square", tasker.HandlerFunc(func(ctx context.Context, s *tasker.StepContext) (any, error) {
		var in int64
		if s.StepName == "s1" {
			var c struct{ Even int64 `json:"even_number"` }
			if err := s.DecodeContext(&c); err != nil {
				return nil, err
			}
			in = c.Even
		} else {
			prev := map[string]string{"s2": "s1", "s3": "s2", "s4": "s3"}[s.StepName]
			if err := s.DependencyResult(prev, &in); err != nil {
				return nil, err
			}
		}
		return in * in, nil
	}))
	if err := eng.Start(ctx); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	task, err := eng.CreateTask(ctx, tasker.TaskRequest{Namespace: "math", Name: "linear_math", Context: map[string]int{"even_number": 6}})
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	task, err = eng.WaitTask(wctx, task.UUID)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("took %s state %s", time.Since(start), task.State)
	steps, _ := eng.TaskSteps(ctx, task.UUID)
	for _, s := range steps {
		t.Logf("%s %s %s", s.Name, s.State, s.Result)
	}
	if task.State != "complete" || string(steps[3].Result) != "2821109907456" {
		t.Fatalf("got %s %s", task.State, steps[3].Result)
	}
}
