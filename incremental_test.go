package tasker_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/tasker-go/tasker"
	"github.com/tasker-go/tasker/internal/orchestration"
)

// wideYAML is a fan-out/fan-in of n children between root and join, with
// an independent two-step branch. Children named in modes run that mode of
// eqChild (flaky, exhaust, permanent); the others succeed.
func wideYAML(name string, n int, modes map[int]string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "name: %s\nnamespace_name: eq\nversion: 1.0.0\nsteps:\n", name)
	b.WriteString("  - name: root\n    handler: {callable: eq.child}\n")
	var kids []string
	for i := 0; i < n; i++ {
		kid := fmt.Sprintf("c%03d", i)
		kids = append(kids, kid)
		mode := modes[i]
		if mode == "" {
			mode = "ok"
		}
		fmt.Fprintf(&b, "  - name: %s\n    handler: {callable: eq.child, initialization: {mode: %s}}\n", kid, mode)
		fmt.Fprintf(&b, "    dependencies: [root]\n    retry: {max_attempts: 3, backoff: linear, backoff_base_ms: 10}\n")
	}
	fmt.Fprintf(&b, "  - name: join\n    handler: {callable: eq.child, initialization: {mode: join}}\n    dependencies: [%s]\n",
		strings.Join(kids, ", "))
	b.WriteString("  - name: side\n    handler: {callable: eq.child}\n")
	b.WriteString("  - name: side2\n    handler: {callable: eq.child}\n    dependencies: [side]\n")
	return b.String()
}

const holdYAML = `
name: hold
namespace_name: eq
version: 1.0.0
steps:
  - name: root
    handler: {callable: eq.child}
  - name: hold
    handler: {callable: eq.hold}
    dependencies: [root]
  - name: tail
    handler: {callable: eq.child}
    dependencies: [hold]
  - name: quick
    handler: {callable: eq.child}
    dependencies: [root]
  - name: after
    handler: {callable: eq.child}
    dependencies: [quick]
`

// eqChild succeeds, fails (mode flaky: twice, then succeeds; exhaust:
// always, retryably; permanent: at once) or, as the join, sums what its
// parents returned.
func eqChild(_ context.Context, s *tasker.StepContext) (any, error) {
	var cfg struct {
		Mode string `json:"mode"`
	}
	if err := s.HandlerConfig(&cfg); err != nil {
		return nil, tasker.Permanent(err)
	}
	switch cfg.Mode {
	case "flaky":
		if s.Attempt < 3 {
			return nil, errFlaky
		}
	case "exhaust":
		return nil, errFlaky
	case "permanent":
		return nil, tasker.Permanent(fmt.Errorf("%s cannot succeed", s.StepName))
	case "join":
		return map[string]any{"step": s.StepName, "attempt": s.Attempt}, nil
	}
	return map[string]any{"step": s.StepName, "attempt": s.Attempt}, nil
}

// outcome renders a settled task's state and every step's state, attempts,
// result and error type, in name order.
func outcome(t *testing.T, eng *tasker.Engine, task *tasker.Task) string {
	t.Helper()
	steps := stepsByName(t, eng, task.UUID)
	lines := []string{"task " + task.State}
	for name, s := range steps {
		var res any
		if len(s.Result) > 0 {
			if err := json.Unmarshal(s.Result, &res); err != nil {
				t.Fatalf("step %s result %s: %v", name, s.Result, err)
			}
		}
		errType := ""
		if s.Error != nil {
			errType = s.Error.Type
		}
		lines = append(lines, fmt.Sprintf("%s %s attempts=%d result=%v error=%s", name, s.State, s.Attempts, res, errType))
	}
	slices.Sort(lines[1:])
	return strings.Join(lines, "\n")
}

// runEquivalenceScenarios runs the DAGs the incremental path must agree
// on and returns each one's outcome.
func runEquivalenceScenarios(t *testing.T, open func(engineOptions) *tasker.Engine) map[string]string {
	release := make(chan struct{})
	eng := open(engineOptions{
		cfg: tasker.Config{RetryJitter: -1},
		templates: []string{linearYAML, diamondYAML, holdYAML,
			wideYAML("wide_ok", 40, map[int]string{3: "flaky", 17: "flaky"}),
			wideYAML("wide_fail", 40, map[int]string{3: "flaky", 5: "exhaust", 7: "permanent"})},
		handlers: map[string]tasker.HandlerFunc{
			"math.op":  mathOp,
			"eq.child": eqChild,
			"eq.hold": func(ctx context.Context, s *tasker.StepContext) (any, error) {
				select {
				case <-release:
				case <-ctx.Done():
				}
				return "held", nil
			},
		},
	})
	out := map[string]string{}
	even := map[string]any{"even_number": 6}
	for _, c := range []struct{ ns, name string }{
		{"math", "linear_math"}, {"math", "diamond_math"}, {"eq", "wide_ok"}, {"eq", "wide_fail"},
	} {
		task, _ := runTask(t, eng, tasker.TaskRequest{Namespace: c.ns, Name: c.name, Context: even})
		out[c.name] = outcome(t, eng, task)
	}

	// Cancel while hold runs and its sibling branch has finished.
	task := createTask(t, eng, tasker.TaskRequest{Namespace: "eq", Name: "hold"})
	eventually(t, "branch done while hold runs", func() bool {
		steps := stepsByName(t, eng, task.UUID)
		return steps["after"].State == "complete" && steps["hold"].State == "in_progress"
	})
	if _, err := eng.CancelTask(context.Background(), task.UUID); err != nil {
		t.Fatalf("CancelTask: %v", err)
	}
	close(release)
	out["hold"] = outcome(t, eng, waitTask(t, eng, task.UUID))
	return out
}

// TestIncrementalMatchesFull runs the same DAGs with every task processed
// incrementally (threshold 0) and with the default threshold (every task
// here is small, so fully evaluated), on SQLite and PostgreSQL, and wants
// identical outcomes. It is not parallel: it sets the package-level
// threshold, which orchestrators read when they are created.
func TestIncrementalMatchesFull(t *testing.T) {
	def := orchestration.IncrementalThreshold
	defer func() { orchestration.IncrementalThreshold = def }()
	for _, name := range []string{"sqlite", "postgres"} {
		t.Run(name, func(t *testing.T) {
			results := map[int]map[string]string{}
			for _, threshold := range []int{def, 0} {
				results[threshold] = runEquivalenceScenarios(t, func(o engineOptions) *tasker.Engine {
					orchestration.IncrementalThreshold = threshold
					defer func() { orchestration.IncrementalThreshold = def }()
					return storeOpeners[name](t, o)
				})
			}
			full, inc := results[def], results[0]
			for _, sc := range []string{"linear_math", "diamond_math", "wide_ok", "wide_fail", "hold"} {
				if full[sc] != inc[sc] {
					t.Errorf("%s: incremental outcome differs\nfull:\n%s\nincremental:\n%s", sc, full[sc], inc[sc])
				}
			}
			// The outcomes are the intended ones, not merely equal.
			for sc, want := range map[string][]string{
				"wide_ok":   {"task complete", "join complete attempts=1", "c003 complete attempts=3"},
				"wide_fail": {"task blocked_by_failures", "join pending attempts=0", "c005 error attempts=3", "c007 error attempts=1", "c003 complete attempts=3", "side2 complete"},
				"hold":      {"task cancelled", "hold cancelled", "tail cancelled", "after complete"},
			} {
				for _, w := range want {
					if !strings.Contains(inc[sc], w) {
						t.Errorf("%s: outcome lacks %q:\n%s", sc, w, inc[sc])
					}
				}
			}
		})
	}
}
