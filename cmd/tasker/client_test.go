package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tasker-go/tasker"
	"github.com/tasker-go/tasker/examples"
	"github.com/tasker-go/tasker/internal/api"
	"github.com/tasker-go/tasker/internal/auth"
)

// waitTemplate has one step whose handler runs until the test releases it.
const waitTemplate = `
name: wait_workflow
namespace_name: testing
version: 1.0.0
identity_strategy: always_unique
steps:
  - name: wait
    handler: {callable: testing.wait}
`

// testServer is the real API over a started engine on a SQLite file, with
// the bundled example workflows and testing/wait_workflow.
type testServer struct {
	url     string
	eng     *tasker.Engine
	release chan struct{} // closing it lets testing.wait steps finish
}

func newTestServer(t *testing.T, cfg tasker.Config) *testServer {
	t.Helper()
	return newTestServerOpts(t, cfg, api.Options{})
}

func newTestServerOpts(t *testing.T, cfg tasker.Config, opts api.Options) *testServer {
	t.Helper()
	ctx := context.Background()
	cfg.DatabaseURL = "sqlite://" + filepath.Join(t.TempDir(), "tasker.db")
	cfg.PollInterval = 50 * time.Millisecond
	cfg.Logger = slog.New(slog.DiscardHandler)
	eng, err := tasker.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{eng: eng, release: make(chan struct{})}
	if err := examples.Register(ctx, eng); err != nil {
		t.Fatal(err)
	}
	if err := eng.RegisterTemplate(ctx, []byte(waitTemplate)); err != nil {
		t.Fatal(err)
	}
	eng.Handle("testing.wait", tasker.HandlerFunc(func(ctx context.Context, _ *tasker.StepContext) (any, error) {
		select {
		case <-ts.release:
			return map[string]bool{"released": true}, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}))
	if err := eng.Start(ctx); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(api.New(eng, opts))
	ts.url = srv.URL
	t.Cleanup(func() {
		srv.Close()
		stopCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		_ = eng.Stop(stopCtx)
		eng.Close()
	})
	return ts
}

// cli runs a client command against the server.
func (ts *testServer) cli(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	return runCLI(t, append(args, "--server", ts.url)...)
}

// mustCLI runs a client command that must succeed.
func (ts *testServer) mustCLI(t *testing.T, args ...string) string {
	t.Helper()
	code, out, errOut := ts.cli(t, args...)
	if code != 0 {
		t.Fatalf("tasker %s exited %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// createTask creates a task with -o json and returns its UUID.
func (ts *testServer) createTask(t *testing.T, namespace, name, context string) string {
	t.Helper()
	out := ts.mustCLI(t, "task", "create", namespace, name, "--context", context, "-o", "json")
	var task struct {
		TaskUUID string `json:"task_uuid"`
		State    string `json:"state"`
	}
	if err := json.Unmarshal([]byte(out), &task); err != nil || task.TaskUUID == "" {
		t.Fatalf("task create -o json printed %q (%v)", out, err)
	}
	return task.TaskUUID
}

func TestClientTaskCommands(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, tasker.Config{})
	id := ts.createTask(t, "math", "linear_workflow", `{"even_number": 6}`)

	out := ts.mustCLI(t, "task", "watch", id, "--interval", "50ms")
	for _, want := range []string{id, "math/linear_workflow", "complete", "linear_step_4", "2821109907456", "4/4 steps complete"} {
		if !strings.Contains(out, want) {
			t.Errorf("task watch output lacks %q:\n%s", want, out)
		}
	}

	out = ts.mustCLI(t, "task", "get", id)
	for _, want := range []string{"Task:", id, "State:", "complete", "Template:", "math/linear_workflow 1.0.0", `{"even_number":6}`} {
		if !strings.Contains(out, want) {
			t.Errorf("task get output lacks %q:\n%s", want, out)
		}
	}

	out = ts.mustCLI(t, "task", "steps", id)
	if !regexp.MustCompile(`linear_step_4\s+complete\s+1/3\s+2821109907456`).MatchString(out) {
		t.Errorf("task steps table does not show linear_step_4 complete with its result:\n%s", out)
	}

	second := ts.createTask(t, "math", "diamond_workflow", `{"even_number": 2}`)
	out = ts.mustCLI(t, "task", "list", "--namespace", "math", "--name", "linear_workflow")
	if !strings.Contains(out, id) || strings.Contains(out, second) || !strings.Contains(out, "TASK") {
		t.Errorf("task list --name linear_workflow does not list exactly the linear task:\n%s", out)
	}
	out = ts.mustCLI(t, "task", "list", "-o", "json", "--all", "--limit", "1")
	var list struct {
		Items []struct {
			TaskUUID string `json:"task_uuid"`
		} `json:"items"`
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list.Items) != 2 {
		t.Errorf("task list --all --limit 1 -o json: %v, want both tasks:\n%s", err, out)
	}
	code, out, errOut := ts.cli(t, "task", "list", "--limit", "1")
	if code != 0 || !strings.Contains(errOut, "--cursor") || strings.Count(out, "\n") != 2 {
		t.Errorf("task list --limit 1 exited %d, want one row and a note about --cursor:\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
}

func TestClientErrors(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, tasker.Config{})
	for _, tc := range []struct {
		name string
		args []string
		want []string // in stderr
	}{
		{"unknown template", []string{"task", "create", "math", "no_such_workflow"}, []string{"tasker: ", "HTTP 404", "not_found"}},
		{"context that is not an object", []string{"task", "create", "math", "linear_workflow", "--context", "[1]"}, []string{"HTTP 400"}},
		{"malformed UUID", []string{"task", "get", "not-a-uuid"}, []string{"HTTP 400"}},
		{"unknown task", []string{"task", "get", "9f3e1c0a-1111-4222-8333-444455556666"}, []string{"HTTP 404"}},
		{"bad output format", []string{"task", "list", "-o", "yaml"}, []string{"--output must be table or json"}},
		{"invalid JSON context", []string{"task", "create", "math", "linear_workflow", "--context", "{"}, []string{"not valid JSON"}},
		{"unknown DLQ entry", []string{"dlq", "show", "987654"}, []string{"HTTP 404"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := ts.cli(t, tc.args...)
			if code == 0 {
				t.Fatalf("exited 0:\n%s", out)
			}
			for _, want := range tc.want {
				if !strings.Contains(errOut, want) {
					t.Errorf("stderr lacks %q:\n%s", want, errOut)
				}
			}
		})
	}

	// A finished task cannot be cancelled: the server's message is shown.
	id := ts.createTask(t, "math", "linear_workflow", `{"even_number": 2}`)
	ts.mustCLI(t, "task", "watch", id, "--interval", "50ms")
	code, _, errOut := ts.cli(t, "task", "cancel", id)
	if code == 0 || !strings.Contains(errOut, "HTTP 409") || !strings.Contains(errOut, "conflict") {
		t.Errorf("task cancel of a complete task exited %d:\n%s", code, errOut)
	}

	// Nothing listens there.
	code, _, errOut = runCLI(t, "task", "list", "--server", "http://127.0.0.1:1")
	if code == 0 || !strings.Contains(errOut, "cannot reach the server at http://127.0.0.1:1") {
		t.Errorf("task list against a closed port exited %d:\n%s", code, errOut)
	}
}

func TestClientCancel(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, tasker.Config{})
	defer close(ts.release) // lets the cancelled task's handler return
	id := ts.createTask(t, "testing", "wait_workflow", `{}`)
	out := ts.mustCLI(t, "task", "cancel", id)
	if !regexp.MustCompile(`State:\s+cancelled`).MatchString(out) {
		t.Errorf("task cancel output:\n%s", out)
	}
	code, _, errOut := ts.cli(t, "task", "watch", id)
	if code != 1 || !strings.Contains(errOut, "ended cancelled") {
		t.Errorf("task watch of a cancelled task exited %d:\n%s", code, errOut)
	}
}

func TestClientStepActions(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, tasker.Config{})
	id := ts.createTask(t, "demo", "permanent_failure_workflow", `{"even_number": 6, "divisor": 0}`)
	code, out, errOut := ts.cli(t, "task", "watch", id, "--interval", "50ms")
	if code != 1 || !strings.Contains(errOut, "ended blocked_by_failures") {
		t.Fatalf("watch of a failing task exited %d:\n%s\n%s", code, out, errOut)
	}
	if !strings.Contains(out, "cannot divide 36 by zero") {
		t.Errorf("watch does not show the step's error:\n%s", out)
	}

	out = ts.mustCLI(t, "step", "get", id, "divide")
	if !regexp.MustCompile(`State:\s+error`).MatchString(out) || !strings.Contains(out, "permanent_error") {
		t.Errorf("step get divide:\n%s", out)
	}

	// Resetting a permanent failure runs it again, and it fails again.
	out = ts.mustCLI(t, "step", "reset", id, "divide", "--reason", "try again", "-o", "json")
	var step struct {
		StepUUID string `json:"step_uuid"`
		State    string `json:"state"`
		Attempts int    `json:"attempts"`
	}
	if err := json.Unmarshal([]byte(out), &step); err != nil || step.StepUUID == "" {
		t.Fatalf("step reset -o json printed %q (%v)", out, err)
	}
	if code, _, _ := ts.cli(t, "task", "watch", id, "--interval", "50ms"); code != 1 {
		t.Fatalf("after the reset the task did not end blocked again")
	}

	// Completing it by hand with a result unblocks its dependent.
	ts.mustCLI(t, "step", "complete", id, step.StepUUID, "--result", "6", "--reason", "computed by hand")
	out = ts.mustCLI(t, "task", "watch", id, "--interval", "50ms")
	if !regexp.MustCompile(`report_quotient\s+complete`).MatchString(out) {
		t.Errorf("report_quotient did not complete after divide was completed by hand:\n%s", out)
	}

	code, _, errOut = ts.cli(t, "step", "resolve", id, "no_such_step")
	if code == 0 || !strings.Contains(errOut, `has no step named "no_such_step"`) {
		t.Errorf("step resolve of an unknown step exited %d:\n%s", code, errOut)
	}
	code, _, errOut = ts.cli(t, "step", "reset", id, "divide")
	if code == 0 || !strings.Contains(errOut, "HTTP 409") {
		t.Errorf("step reset of a complete step exited %d, want the server's 409:\n%s", code, errOut)
	}
}

func TestClientDLQ(t *testing.T) {
	t.Parallel()
	// Tasks 300ms in steps_in_process without progress are dead-lettered by
	// the sweeper.
	ts := newTestServer(t, tasker.Config{StalenessInterval: 50 * time.Millisecond, MaxStepsInProcess: 300 * time.Millisecond})
	out := ts.mustCLI(t, "dlq", "list")
	if strings.TrimSpace(out) != "ID  KIND  STATUS  TASK  TEMPLATE  REASON  CREATED" {
		t.Errorf("dlq list on an empty queue:\n%q", out)
	}
	first := ts.createTask(t, "testing", "wait_workflow", `{}`)
	second := ts.createTask(t, "testing", "wait_workflow", `{}`)
	var entries struct {
		Items []struct {
			ID       int64  `json:"id"`
			TaskUUID string `json:"task_uuid"`
		} `json:"items"`
	}
	deadline := time.Now().Add(30 * time.Second)
	for len(entries.Items) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("the tasks were not dead-lettered:\n%s", out)
		}
		time.Sleep(50 * time.Millisecond)
		out = ts.mustCLI(t, "dlq", "list", "--status", "pending", "-o", "json")
		if err := json.Unmarshal([]byte(out), &entries); err != nil {
			t.Fatalf("dlq list -o json: %v\n%s", err, out)
		}
	}
	ids := map[string]string{}
	for _, e := range entries.Items {
		ids[e.TaskUUID] = jsonNumber(e.ID)
	}

	out = ts.mustCLI(t, "dlq", "list")
	if !regexp.MustCompile(ids[first] + `\s+task\s+pending\s+` + first + `\s+testing/wait_workflow`).MatchString(out) {
		t.Errorf("dlq list does not show the first task's entry:\n%s", out)
	}
	out = ts.mustCLI(t, "dlq", "show", ids[first])
	for _, want := range []string{"Entry:", "Status:", "pending", first, "Snapshot:", `"wait"`} {
		if !strings.Contains(out, want) {
			t.Errorf("dlq show lacks %q:\n%s", want, out)
		}
	}

	out = ts.mustCLI(t, "dlq", "resolve", ids[second], "--status", "cancelled", "--reason", "not needed")
	if !regexp.MustCompile(`Status:\s+cancelled`).MatchString(out) || !strings.Contains(out, "not needed") {
		t.Errorf("dlq resolve:\n%s", out)
	}
	code, _, errOut := ts.cli(t, "dlq", "redrive", ids[second])
	if code == 0 || !strings.Contains(errOut, "HTTP 409") {
		t.Errorf("redrive of a resolved entry exited %d, want the server's 409:\n%s", code, errOut)
	}

	// The first task's step finishes after the task was dead-lettered: its
	// result is recorded on the step. Redrive then resumes the task, which
	// completes.
	close(ts.release)
	for !regexp.MustCompile(`wait\s+complete`).MatchString(out) {
		if time.Now().After(deadline) {
			t.Fatalf("the released step did not complete:\n%s", out)
		}
		time.Sleep(20 * time.Millisecond)
		out = ts.mustCLI(t, "task", "steps", first)
	}
	out = ts.mustCLI(t, "dlq", "redrive", ids[first], "--reason", "its step finished")
	if !regexp.MustCompile(`Status:\s+manually_resolved`).MatchString(out) {
		t.Errorf("dlq redrive:\n%s", out)
	}
	if code, out, errOut := ts.cli(t, "task", "watch", first, "--interval", "50ms"); code != 0 {
		t.Errorf("the redriven task did not complete (exit %d):\n%s\n%s", code, out, errOut)
	}
}

func jsonNumber(n int64) string {
	b, _ := json.Marshal(n)
	return string(b)
}

// TestServeHTTP runs serve in-process with a configuration file (auth
// enabled) and a templates directory, and drives it with the client
// commands. Not parallel: it sets TASKER_API_KEY.
func TestServeHTTP(t *testing.T) {
	dir := t.TempDir()
	templates := filepath.Join(dir, "templates")
	if err := os.MkdirAll(templates, 0o755); err != nil {
		t.Fatal(err)
	}
	// A template of the bundled handlers, under another name.
	extra := "name: square_once\nnamespace_name: extra\nversion: 2.0.0\nsteps:\n  - name: square\n    handler: {callable: math.square}\n"
	if err := os.WriteFile(filepath.Join(templates, "square.yaml"), []byte(extra), 0o644); err != nil {
		t.Fatal(err)
	}
	key, hash, err := auth.GenerateAPIKey()
	if err != nil {
		t.Fatal(err)
	}
	cfgFile := filepath.Join(dir, "tasker.toml")
	cfg := "[store]\ndatabase_url = \"sqlite://" + filepath.Join(dir, "tasker.db") + "\"\n[api]\naddr = \"127.0.0.1:0\"\n" +
		"[orchestration]\npoll_interval = \"50ms\"\n" +
		"[auth]\nenabled = true\n[[auth.api_keys]]\nname = \"ops\"\nhash = \"" + hash + "\"\npermissions = [\"*\"]\n"
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errOut := &syncBuffer{}
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"serve", "--config", cfgFile, "--templates", templates}, &syncBuffer{}, errOut)
	}()
	addrRE := regexp.MustCompile(`msg="tasker serve started" addr=(\S+)`)
	deadline := time.Now().Add(30 * time.Second)
	var m []string
	for m = addrRE.FindStringSubmatch(errOut.String()); m == nil; m = addrRE.FindStringSubmatch(errOut.String()) {
		select {
		case code := <-done:
			t.Fatalf("serve exited %d before starting:\n%s", code, errOut.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve did not start:\n%s", errOut.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	ts := &testServer{url: "http://" + m[1]}
	if code, _, errOut := ts.cli(t, "task", "list"); code == 0 || !strings.Contains(errOut, "HTTP 401") {
		t.Errorf("serve with auth enabled answered a request without a key (exit %d):\n%s", code, errOut)
	}
	t.Setenv("TASKER_API_KEY", key)
	id := ts.createTask(t, "extra", "square_once", `{"even_number": 4}`)
	out := ts.mustCLI(t, "task", "watch", id, "--interval", "50ms")
	if !regexp.MustCompile(`square\s+complete\s+1/3\s+16`).MatchString(out) {
		t.Errorf("the task of the --templates directory did not complete with 16:\n%s", out)
	}
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("serve exited %d after the signal:\n%s", code, errOut.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("serve did not stop:\n%s", errOut.String())
	}
	if code, _, _ := ts.cli(t, "task", "get", id); code == 0 {
		t.Error("the HTTP server still answers after serve stopped")
	}
}

func TestTemplateListAndShow(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for name, doc := range map[string]string{
		"a.yaml":     "name: one\nnamespace_name: ns\nversion: 1.0.0\nsteps:\n  - name: s\n    handler: {callable: x.y}\n",
		"sub/b.yml":  "name: one\nnamespace_name: ns\nversion: 2.0.0\nsteps:\n  - name: s\n    handler: {callable: x.y}\n  - name: t\n    dependencies: [s]\n    handler: {callable: x.z}\n    timeout_seconds: 30\n",
		"broken.yml": "name: [\n",
		"notes.txt":  "not a template",
	} {
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(doc), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	code, out, errOut := runCLI(t, "template", "list", dir)
	if code != 1 || !strings.Contains(errOut, "broken.yml: not a valid template") {
		t.Errorf("template list with a broken file exited %d:\n%s", code, errOut)
	}
	if !regexp.MustCompile(`ns\s+one\s+1\.0\.0\s+1\s+\S+a\.yaml\n`).MatchString(out) ||
		!regexp.MustCompile(`ns\s+one\s+2\.0\.0\s+2\s+\S+b\.yml\n`).MatchString(out) || strings.Contains(out, "notes") {
		t.Errorf("template list:\n%s", out)
	}

	code, _, errOut = runCLI(t, "template", "show", "ns/one", dir)
	if code == 0 || !strings.Contains(errOut, "several versions") {
		t.Errorf("template show of an ambiguous name exited %d:\n%s", code, errOut)
	}
	code, out, errOut = runCLI(t, "template", "show", "ns/one@2.0.0", filepath.Join(dir, "sub"))
	if code != 0 || !regexp.MustCompile(`t\s+x\.z\s+s\s+3 attempts, exponential\s.*30s`).MatchString(out) {
		t.Errorf("template show ns/one@2.0.0 exited %d:\n%s\n%s", code, out, errOut)
	}
	code, out, _ = runCLI(t, "template", "show", filepath.Join(dir, "a.yaml"), "-o", "json")
	if code != 0 || !strings.Contains(out, `"namespace_name": "ns"`) {
		t.Errorf("template show FILE -o json exited %d:\n%s", code, out)
	}
}

func TestConfigCommands(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "tasker.toml")
	if err := os.WriteFile(file, []byte("[store]\ndatabase_url = \"postgres://app:hunter2@db:5432/x\"\n\n[worker]\nmax_concurrent_handlers = 7\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("TASKER_CONFIG", file)
	t.Setenv("TASKER_WORKER_COMPLETION_BUFFER", "55")
	code, out, errOut := runCLI(t, "config", "show")
	if code != 0 {
		t.Fatalf("config show exited %d:\n%s", code, errOut)
	}
	for _, want := range []string{
		`database_url = "postgres://app:xxxxx@db:5432/x" # ` + file + ":2",
		"max_concurrent_handlers = 7 # " + file + ":5",
		"completion_buffer = 55 # TASKER_WORKER_COMPLETION_BUFFER",
		`addr = "127.0.0.1:8080"` + "\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("config show lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "hunter2") {
		t.Errorf("config show prints the password:\n%s", out)
	}
	t.Setenv("TASKER_WORKER_COMPLETION_BUFFER", "-1")
	code, _, errOut = runCLI(t, "config", "show")
	if code == 0 || !strings.Contains(errOut, "TASKER_WORKER_COMPLETION_BUFFER: worker.completion_buffer must be at least 1") {
		t.Errorf("config show with a bad variable exited %d:\n%s", code, errOut)
	}
	code, out, _ = runCLI(t, "config", "example")
	if code != 0 || !strings.Contains(out, "max_concurrent_handlers = 10") {
		t.Errorf("config example exited %d:\n%s", code, out)
	}
}

func TestMigrate(t *testing.T) {
	t.Parallel()
	db := "sqlite://" + filepath.Join(t.TempDir(), "m.db")
	for range 2 { // a second run finds nothing to do
		code, out, errOut := runCLI(t, "migrate", "--database-url", db)
		if code != 0 || !regexp.MustCompile(`schema version \d+ \(\d{4}_\w+\.sql\), up to date`).MatchString(out) {
			t.Fatalf("migrate exited %d:\n%s\n%s", code, out, errOut)
		}
	}
}

func TestClientAPIKey(t *testing.T) {
	t.Parallel()
	key, hash, err := auth.GenerateAPIKey()
	if err != nil {
		t.Fatal(err)
	}
	authenticator, err := auth.New(auth.Config{Enabled: true, APIKeys: []auth.APIKeyConfig{
		{Name: "reader", Hash: hash, Permissions: []string{"tasks:read", "tasks:list"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	ts := newTestServerOpts(t, tasker.Config{}, api.Options{Auth: authenticator})

	code, _, errOut := ts.cli(t, "task", "list")
	if code == 0 || !strings.Contains(errOut, "HTTP 401") {
		t.Errorf("task list without a key exited %d:\n%s", code, errOut)
	}
	if code, out, errOut := ts.cli(t, "task", "list", "--api-key", key); code != 0 || !strings.Contains(out, "TASK") {
		t.Errorf("task list with a key exited %d:\n%s\n%s", code, out, errOut)
	}
	code, _, errOut = ts.cli(t, "task", "create", "math", "linear_workflow", "--api-key", key)
	if code == 0 || !strings.Contains(errOut, "HTTP 403") || !strings.Contains(errOut, "tasks:create") {
		t.Errorf("task create with a read-only key exited %d:\n%s", code, errOut)
	}
}

func TestClientAPIKeyFromEnvironment(t *testing.T) {
	key, hash, err := auth.GenerateAPIKey()
	if err != nil {
		t.Fatal(err)
	}
	authenticator, err := auth.New(auth.Config{Enabled: true, APIKeys: []auth.APIKeyConfig{
		{Name: "ops", Hash: hash, Permissions: []string{"*"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	ts := newTestServerOpts(t, tasker.Config{}, api.Options{Auth: authenticator})
	t.Setenv("TASKER_API_KEY", key)
	t.Setenv("TASKER_SERVER", ts.url)
	if code, out, errOut := runCLI(t, "task", "create", "math", "linear_workflow", "--context", `{"even_number": 2}`); code != 0 {
		t.Errorf("task create with TASKER_SERVER and TASKER_API_KEY exited %d:\n%s\n%s", code, out, errOut)
	}
}
