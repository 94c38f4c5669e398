// Package examples holds runnable example workflows: task templates
// (embedded YAML) and the Go handlers they name. `tasker demo` runs them,
// and they double as an end-to-end check of the engine.
//
// The math workflows compute with integers, so their expected results are
// exact. Every handler reads its operands either from the task context
// (DecodeContext) or from ancestor steps (DependencyResult), configured by
// handler.initialization:
//
//	handler:
//	  callable: math.power
//	  initialization: {inputs: [diamond_start], exponent: 3}
//
// The callables are math.square, math.power (exponent), math.add and
// math.multiply (two or more inputs), math.divide (divisor read from the
// context field divisor_field, default "divisor") and demo.flaky_square,
// which fails retryably until attempt succeed_on_attempt. With no inputs,
// the single operand is the context field context_field (default
// "even_number"). Bad input, bad configuration and overflow are permanent
// failures.
package examples

import (
	"bytes"
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"reflect"
	"sort"

	"github.com/tasker-go/tasker"
)

//go:embed templates/*.yaml
var templateFiles embed.FS

// Templates returns the bundled YAML task templates, keyed by file name.
func Templates() (map[string][]byte, error) {
	entries, err := fs.ReadDir(templateFiles, "templates")
	if err != nil {
		return nil, fmt.Errorf("read bundled templates: %w", err)
	}
	out := make(map[string][]byte, len(entries))
	for _, e := range entries {
		b, err := templateFiles.ReadFile("templates/" + e.Name())
		if err != nil {
			return nil, fmt.Errorf("read bundled template %s: %w", e.Name(), err)
		}
		out[e.Name()] = b
	}
	return out, nil
}

// Register registers every example template and handler on e. Call it
// before e.Start.
func Register(ctx context.Context, e *tasker.Engine) error {
	docs, err := Templates()
	if err != nil {
		return err
	}
	names := make([]string, 0, len(docs))
	for name := range docs {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if err := e.RegisterTemplate(ctx, docs[name]); err != nil {
			return fmt.Errorf("register example template %s: %w", name, err)
		}
	}
	for callable, h := range handlers() {
		e.Handle(callable, h)
	}
	return nil
}

// Workflow is a bundled workflow with a sample context and the outcome a
// task created from them must reach.
type Workflow struct {
	Namespace, Name, Version, Description string
	// Context is the sample task context.
	Context any
	// ExpectState is the task state WaitTask returns: "complete" or
	// "blocked_by_failures".
	ExpectState string
	// ExpectResults maps step names to the values their handlers return
	// (int64 for the math handlers). A value matches when its JSON encoding
	// equals the step's stored result; numbers are compared digit for
	// digit, never through float64.
	ExpectResults map[string]any
	// ExpectAttempts maps step names to their final attempt counts. Steps
	// not listed are not checked.
	ExpectAttempts map[string]int
	// ExpectStepStates maps step names to their final states. Steps not
	// listed are not checked.
	ExpectStepStates map[string]string
}

// Workflows lists the bundled workflows in a stable order, each with a
// sample context and its expected outcome.
func Workflows() []Workflow {
	return []Workflow{
		{
			Namespace: "math", Name: "linear_workflow", Version: "1.0.0",
			Description: "four steps in a chain, each squaring the previous result",
			Context:     map[string]any{"even_number": 6},
			ExpectState: "complete",
			ExpectResults: map[string]any{
				"linear_step_1": int64(36),
				"linear_step_2": int64(1296),
				"linear_step_3": int64(1679616),
				"linear_step_4": int64(2821109907456),
			},
		},
		{
			Namespace: "math", Name: "diamond_workflow", Version: "1.0.0",
			Description: "fan-out to a squaring and a cubing branch, fan-in by multiplication",
			Context:     map[string]any{"even_number": 6},
			ExpectState: "complete",
			ExpectResults: map[string]any{
				"diamond_start":         int64(36),       // 6²
				"diamond_branch_square": int64(1296),     // 36²
				"diamond_branch_cube":   int64(46656),    // 36³
				"diamond_end":           int64(60466176), // 1296 × 46656 = 6¹⁰
			},
		},
		{
			Namespace: "math", Name: "tree_workflow", Version: "1.0.0",
			Description: "a root, two branches, four leaves, one step converging the leaves",
			Context:     map[string]any{"even_number": 2},
			ExpectState: "complete",
			ExpectResults: map[string]any{
				"tree_root":         int64(4),
				"tree_branch_left":  int64(16),
				"tree_branch_right": int64(16),
				"tree_leaf_a":       int64(256),
				"tree_leaf_b":       int64(256),
				"tree_leaf_c":       int64(256),
				"tree_leaf_d":       int64(256),
				"tree_final":        int64(4294967296), // 256⁴ = 2³²
			},
		},
		{
			Namespace: "math", Name: "mixed_dag_workflow", Version: "1.0.0",
			Description: "fan-out, fan-in and a step joining two branches at different depths",
			Context:     map[string]any{"even_number": 2},
			ExpectState: "complete",
			ExpectResults: map[string]any{
				"dag_seed":   int64(4),      // 2²
				"dag_left":   int64(16),     // 4²
				"dag_right":  int64(64),     // 4³
				"dag_merge":  int64(80),     // 16 + 64
				"dag_tail":   int64(4096),   // 64²
				"dag_cross":  int64(4112),   // 16 + 4096
				"dag_finish": int64(328960), // 80 × 4112
			},
		},
		{
			Namespace: "demo", Name: "retry_workflow", Version: "1.0.0",
			Description: "a step fails retryably twice, then succeeds on attempt 3",
			Context:     map[string]any{"even_number": 4},
			ExpectState: "complete",
			ExpectResults: map[string]any{
				"flaky_square":   int64(16),
				"confirm_square": int64(256),
			},
			ExpectAttempts: map[string]int{"flaky_square": 3, "confirm_square": 1},
		},
		{
			Namespace: "demo", Name: "permanent_failure_workflow", Version: "1.0.0",
			Description: "a permanent failure blocks its dependents; the independent branch completes",
			Context:     map[string]any{"even_number": 6, "divisor": 0},
			ExpectState: "blocked_by_failures",
			ExpectResults: map[string]any{
				"square_input": int64(36),
				"side_square":  int64(36),
				"side_cube":    int64(46656),
			},
			ExpectAttempts: map[string]int{"divide": 1, "report_quotient": 0},
			ExpectStepStates: map[string]string{
				"divide":          "error",
				"report_quotient": "pending",
				"side_square":     "complete",
				"side_cube":       "complete",
			},
		},
	}
}

// Verify compares a settled task and its steps with w's expectations and
// returns every mismatch, or nil.
func (w Workflow) Verify(task *tasker.Task, steps []tasker.Step) error {
	var errs []error
	if task.State != w.ExpectState {
		errs = append(errs, fmt.Errorf("task state is %s, want %s", task.State, w.ExpectState))
	}
	byName := make(map[string]tasker.Step, len(steps))
	for _, s := range steps {
		byName[s.Name] = s
	}
	for _, name := range sortedKeys(w.ExpectResults) {
		s, ok := byName[name]
		if !ok {
			errs = append(errs, fmt.Errorf("step %s: no such step", name))
			continue
		}
		ok, err := sameJSON(w.ExpectResults[name], s.Result)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("step %s: %w", name, err))
		case !ok:
			want, _ := json.Marshal(w.ExpectResults[name])
			errs = append(errs, fmt.Errorf("step %s: result is %s, want %s", name, orNone(s.Result), want))
		}
	}
	for _, name := range sortedKeys(w.ExpectAttempts) {
		if s, ok := byName[name]; !ok {
			errs = append(errs, fmt.Errorf("step %s: no such step", name))
		} else if s.Attempts != w.ExpectAttempts[name] {
			errs = append(errs, fmt.Errorf("step %s: %d attempts, want %d", name, s.Attempts, w.ExpectAttempts[name]))
		}
	}
	for _, name := range sortedKeys(w.ExpectStepStates) {
		if s, ok := byName[name]; !ok {
			errs = append(errs, fmt.Errorf("step %s: no such step", name))
		} else if s.State != w.ExpectStepStates[name] {
			errs = append(errs, fmt.Errorf("step %s: state is %s, want %s", name, s.State, w.ExpectStepStates[name]))
		}
	}
	return errors.Join(errs...)
}

// sameJSON reports whether want, encoded as JSON, denotes the same value as
// got. Numbers are kept as their decimal text so that large integers are
// compared exactly.
func sameJSON(want any, got json.RawMessage) (bool, error) {
	if len(got) == 0 {
		return false, nil
	}
	wantJSON, err := json.Marshal(want)
	if err != nil {
		return false, fmt.Errorf("expected result cannot be encoded: %w", err)
	}
	decode := func(b []byte) (any, error) {
		d := json.NewDecoder(bytes.NewReader(b))
		d.UseNumber()
		var v any
		err := d.Decode(&v)
		return v, err
	}
	w, err := decode(wantJSON)
	if err != nil {
		return false, err
	}
	g, err := decode(got)
	if err != nil {
		return false, fmt.Errorf("stored result is not JSON: %w", err)
	}
	return reflect.DeepEqual(w, g), nil
}

func orNone(b json.RawMessage) string {
	if len(b) == 0 {
		return "(none)"
	}
	return string(b)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
