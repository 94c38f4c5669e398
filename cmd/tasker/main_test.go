package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tasker-go/tasker/examples"
)

// runCLI runs the command line and returns its exit code and output.
func runCLI(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestDemo(t *testing.T) {
	t.Parallel()
	code, out, errOut := runCLI(t, "demo")
	if code != 0 {
		t.Fatalf("demo exited %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	for _, w := range examples.Workflows() {
		if !strings.Contains(out, w.Namespace+"/"+w.Name) {
			t.Errorf("demo output does not mention %s/%s", w.Namespace, w.Name)
		}
	}
	for _, want := range []string{
		"complete in ",
		"blocked_by_failures in ",
		"2821109907456", // linear_step_4's result
		"3/3",           // the flaky step's attempts
		"divide failed (permanent_error, not retryable): math.divide: cannot divide 36 by zero",
		"All 6 workflows ended as expected",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output does not contain %q", want)
		}
	}
	if strings.Contains(out, "NOT AS EXPECTED") {
		t.Errorf("demo output reports an unexpected outcome")
	}
	if t.Failed() {
		t.Logf("stdout:\n%s\nstderr:\n%s", out, errOut)
	}
}

func TestDemoKeepDB(t *testing.T) {
	t.Parallel()
	db := filepath.Join(t.TempDir(), "kept.db")
	// A second run on the same database must work too: the templates are
	// already registered and every run creates new tasks.
	for range 2 {
		if code, out, errOut := runCLI(t, "demo", "--keep-db", db); code != 0 {
			t.Fatalf("demo --keep-db exited %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
		}
	}
	if _, err := os.Stat(db); err != nil {
		t.Fatalf("database was not kept: %v", err)
	}
}

func TestVersion(t *testing.T) {
	t.Parallel()
	code, out, _ := runCLI(t, "version")
	if code != 0 || out != "tasker "+version+"\n" {
		t.Fatalf("version: exit %d, output %q", code, out)
	}
}

func TestUnknownCommand(t *testing.T) {
	t.Parallel()
	code, _, errOut := runCLI(t, "frobnicate")
	if code != 1 || !strings.HasPrefix(errOut, `tasker: unknown command "frobnicate"`) {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
}

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

const brokenTemplate = `name: broken
namespace_name: demo
version: 1.0.0
steps:
  - name: fetch
    handler: {callable: demo.fetch}
    dependencies: [store]
  - name: transform
    handler: {callable: demo.transform}
    dependencies: [fetch]
  - name: store
    handler: {method: call}
    dependencies: [transform]
  - name: fetch
    handler: {callable: demo.fetch_again}
`

const unsupportedTemplate = `name: fancy
namespace_name: demo
version: 1.0.0
steps:
  - name: decide
    type: decision
    handler: {callable: demo.decide}
    publishes_events:
      - name: decision.made
`

func TestTemplateValidate(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	docs, err := examples.Templates()
	if err != nil {
		t.Fatal(err)
	}
	good := writeFile(t, dir, "good.yaml", string(docs["diamond.yaml"]))
	broken := writeFile(t, dir, "broken.yaml", brokenTemplate)
	unsupported := writeFile(t, dir, "unsupported.yaml", unsupportedTemplate)
	missing := filepath.Join(dir, "missing.yaml")

	cases := []struct {
		name       string
		files      []string
		wantCode   int
		wantStdout []string
		wantStderr []string
	}{
		{
			name:       "valid file",
			files:      []string{good},
			wantStdout: []string{good + ": ok\n"},
		},
		{
			name:     "duplicate step, cycle, missing callable",
			files:    []string{broken},
			wantCode: 1,
			wantStdout: []string{
				broken + `: demo/broken/1.0.0: step "fetch": dependencies: dependency cycle: fetch -> store -> transform -> fetch (line 7)` + "\n",
				broken + `: demo/broken/1.0.0: step "store": handler.callable: is required (line 12)` + "\n",
				broken + `: demo/broken/1.0.0: step "fetch": name: duplicate step name "fetch" (first declared at line 5) (line 14)` + "\n",
			},
			wantStderr: []string{"tasker: 1 of 1 file has problems\n"},
		},
		{
			name:     "features this build cannot run",
			files:    []string{unsupported},
			wantCode: 1,
			wantStdout: []string{
				unsupported + `: demo/fancy/1.0.0: step "decide": type: step type "decision" is not supported`,
			},
		},
		{
			name:       "unreadable file",
			files:      []string{missing},
			wantCode:   1,
			wantStderr: []string{missing + ": cannot read: no such file or directory\n", "tasker: 1 of 1 file has problems\n"},
		},
		{
			name:       "directory",
			files:      []string{dir},
			wantCode:   1,
			wantStderr: []string{dir + ": cannot read: is a directory\n"},
		},
		{
			name:       "every file is reported",
			files:      []string{good, missing, broken},
			wantCode:   1,
			wantStdout: []string{good + ": ok\n", broken + `: demo/broken/1.0.0: step "store"`},
			wantStderr: []string{missing + ": cannot read:", "tasker: 2 of 3 files have problems\n"},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			code, out, errOut := runCLI(t, append([]string{"template", "validate"}, c.files...)...)
			if code != c.wantCode {
				t.Errorf("exit %d, want %d", code, c.wantCode)
			}
			for _, want := range c.wantStdout {
				if !strings.Contains(out, want) {
					t.Errorf("stdout does not contain %q", want)
				}
			}
			for _, want := range c.wantStderr {
				if !strings.Contains(errOut, want) {
					t.Errorf("stderr does not contain %q", want)
				}
			}
			if t.Failed() {
				t.Logf("stdout:\n%s\nstderr:\n%s", out, errOut)
			}
		})
	}
}

func TestTemplateValidateBundledTemplates(t *testing.T) {
	t.Parallel()
	docs, err := examples.Templates()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	var files []string
	for name, doc := range docs {
		files = append(files, writeFile(t, dir, name, string(doc)))
	}
	code, out, errOut := runCLI(t, append([]string{"template", "validate"}, files...)...)
	if code != 0 || strings.Count(out, ": ok\n") != len(files) {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
}

// TestDemoReportsUnexpectedOutcome runs the demo with expectations the
// workflows cannot meet: it must say so and fail.
func TestDemoReportsUnexpectedOutcome(t *testing.T) {
	t.Parallel()
	var wrong []examples.Workflow
	for _, w := range examples.Workflows() {
		switch w.Name {
		case "linear_workflow":
			w.ExpectResults = map[string]any{"linear_step_4": int64(42)}
			wrong = append(wrong, w)
		case "permanent_failure_workflow":
			w.ExpectState = "complete"
			wrong = append(wrong, w)
		}
	}
	var out, errb bytes.Buffer
	a := &app{stdout: &out, stderr: &errb}
	err := a.runDemo(context.Background(), demoOptions{timeout: time.Minute}, wrong)
	if err == nil || err.Error() != "2 of 2 workflows did not end as expected" {
		t.Fatalf("runDemo error = %v, want 2 of 2 workflows reported", err)
	}
	for _, want := range []string{
		"complete in ", "NOT AS EXPECTED (expected complete)",
		"! step linear_step_4: result is 2821109907456, want 42",
		"! task state is blocked_by_failures, want complete",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output does not contain %q\n%s", want, out.String())
		}
	}
}
