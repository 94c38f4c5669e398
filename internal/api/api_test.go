package api

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tasker-go/tasker"
)

// TestRoutesDocumented checks that openapi.json and the registered routes
// describe the same operations.
func TestRoutesDocumented(t *testing.T) {
	doc, _ := spec(t)
	eng := sqliteBackend(t, tasker.Config{})
	s := newServer(eng, Options{Logger: testLogger(t)})
	documented := map[string]bool{}
	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			documented[method+" "+path] = true
		}
	}
	for _, rt := range s.routes {
		key := rt.method + " " + rt.path
		if !documented[key] {
			t.Errorf("route %s is not in openapi.json", key)
		}
		delete(documented, key)
	}
	for key := range documented {
		t.Errorf("openapi.json documents %s, which is not a route", key)
	}
}

func TestAPISQLite(t *testing.T) {
	t.Parallel()
	runSuite(t, sqliteBackend)
}

func TestAPIPostgres(t *testing.T) {
	t.Parallel()
	runSuite(t, postgresBackend)
}

func runSuite(t *testing.T, open backend) {
	eng := open(t, tasker.Config{})
	if err := eng.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	c, _ := serve(t, eng, Options{})
	for _, tc := range []struct {
		name string
		run  func(t *testing.T, c *client)
	}{
		{"Tasks", testTasks},
		{"TaskErrors", testTaskErrors},
		{"Pagination", testPagination},
		{"StepActions", testStepActions},
		{"Templates", testTemplates},
		{"Events", testEvents},
		{"HealthAndMetrics", testHealthAndMetrics},
		{"Routing", testRouting},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.run(t, &client{t: t, base: c.base})
		})
	}
	t.Run("DLQ", func(t *testing.T) {
		eng := open(t, tasker.Config{StalenessInterval: 100 * time.Millisecond, MaxTaskDuration: 200 * time.Millisecond})
		if err := eng.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		c, _ := serve(t, eng, Options{})
		testDLQ(t, c)
	})
}

func createLinear(t *testing.T, c *client, n int) taskJSON {
	t.Helper()
	r := c.do("POST", "/v1/tasks", map[string]any{"namespace": "math", "name": "linear_workflow",
		"context": map[string]any{"even_number": n}, "tags": []string{"api"}, "initiator": "tester"})
	want(t, "create task", r, 201)
	var task taskJSON
	r.decode(t, &task)
	if r.header.Get("Location") != "/v1/tasks/"+task.TaskUUID {
		t.Errorf("Location = %q", r.header.Get("Location"))
	}
	return task
}

func testTasks(t *testing.T, c *client) {
	task := createLinear(t, c, 2)
	if task.Namespace != "math" || task.TotalSteps != 4 || task.Initiator != "tester" {
		t.Errorf("created task = %+v", task)
	}
	done := waitSettled(t, c, task.TaskUUID)
	if done.State != "complete" || done.CompletionPercentage != 100 || done.CompletedAt == nil {
		t.Fatalf("task = %+v, want complete at 100%%", done)
	}
	var steps list[stepJSON]
	r := c.do("GET", "/v1/tasks/"+task.TaskUUID+"/steps", nil)
	want(t, "list steps", r, 200)
	r.decode(t, &steps)
	if len(steps.Items) != 4 || string(steps.Items[0].Result) != "4" {
		t.Fatalf("steps = %s", r.body)
	}
	var step stepJSON
	r = c.do("GET", "/v1/tasks/"+task.TaskUUID+"/steps/"+steps.Items[3].StepUUID, nil)
	want(t, "get step", r, 200)
	r.decode(t, &step)
	if step.Readiness == nil || !step.Readiness.DependenciesSatisfied || step.State != "complete" {
		t.Errorf("step = %s", r.body)
	}
	var trs list[transitionJSON]
	r = c.do("GET", "/v1/tasks/"+task.TaskUUID+"/transitions", nil)
	want(t, "task transitions", r, 200)
	r.decode(t, &trs)
	if len(trs.Items) == 0 || trs.Items[len(trs.Items)-1].ToState != "complete" {
		t.Errorf("task transitions = %s", r.body)
	}
	r = c.do("GET", "/v1/tasks/"+task.TaskUUID+"/steps/"+step.StepUUID+"/transitions", nil)
	want(t, "step transitions", r, 200)
	r.decode(t, &trs)
	if len(trs.Items) == 0 {
		t.Errorf("step transitions = %s", r.body)
	}
	// Cancelling a finished task is a conflict.
	wantError(t, "cancel complete task", c.do("DELETE", "/v1/tasks/"+task.TaskUUID, nil), 409, "conflict")

	// A task of the stuck template never runs, so it can be cancelled.
	r = c.do("POST", "/v1/tasks", map[string]any{"namespace": "apistuck", "name": "stuck"})
	want(t, "create stuck task", r, 201)
	r.decode(t, &task)
	r = c.do("DELETE", "/v1/tasks/"+task.TaskUUID, nil)
	want(t, "cancel", r, 200)
	r.decode(t, &task)
	if task.State != "cancelled" {
		t.Errorf("cancelled task state = %s", task.State)
	}
}

func testTaskErrors(t *testing.T, c *client) {
	bad := "/v1/tasks/not-a-uuid"
	missing := "/v1/tasks/00000000-0000-4000-8000-000000000000"
	wantError(t, "bad uuid", c.do("GET", bad, nil), 400, "validation_failed")
	wantError(t, "bad uuid steps", c.do("GET", bad+"/steps", nil), 400, "validation_failed")
	wantError(t, "bad step uuid", c.do("GET", missing+"/steps/xyz", nil), 400, "validation_failed")
	wantError(t, "unknown task", c.do("GET", missing, nil), 404, "not_found")
	wantError(t, "unknown task steps", c.do("GET", missing+"/steps", nil), 404, "not_found")
	wantError(t, "unknown task transitions", c.do("GET", missing+"/transitions", nil), 404, "not_found")
	wantError(t, "unknown task cancel", c.do("DELETE", missing, nil), 404, "not_found")
	wantError(t, "unknown step", c.do("GET", missing+"/steps/00000000-0000-4000-8000-000000000001", nil), 404, "not_found")

	wantError(t, "unknown template", c.do("POST", "/v1/tasks", map[string]any{"namespace": "math", "name": "nope"}), 404, "not_found")
	r := c.do("POST", "/v1/tasks", map[string]any{"context": map[string]any{}})
	wantError(t, "missing fields", r, 400, "validation_failed")
	var e errorBody
	r.decode(t, &e)
	if len(e.Error.Details) != 2 {
		t.Errorf("details = %+v, want namespace and name", e.Error.Details)
	}
	wantError(t, "unknown field", c.do("POST", "/v1/tasks", `{"namespace":"math","name":"linear_workflow","colour":"red"}`), 400, "validation_failed")
	wantError(t, "malformed", c.do("POST", "/v1/tasks", `{"namespace":`), 400, "bad_request")
	wantError(t, "trailing", c.do("POST", "/v1/tasks", `{"namespace":"math","name":"linear_workflow"} {}`), 400, "bad_request")
	wantError(t, "wrong type", c.do("POST", "/v1/tasks", `{"namespace":"math","name":"linear_workflow","priority":"high"}`), 400, "validation_failed")
	wantError(t, "context not object", c.do("POST", "/v1/tasks", `{"namespace":"math","name":"linear_workflow","context":[1]}`), 400, "validation_failed")
	wantError(t, "content type", c.do("POST", "/v1/tasks", `{"namespace":"math","name":"linear_workflow"}`, "Content-Type", "text/plain"), 415, "unsupported_media_type")
	big := `{"namespace":"math","name":"linear_workflow","reason":"` + strings.Repeat("x", 2<<20) + `"}`
	wantError(t, "oversized", c.do("POST", "/v1/tasks", big), 413, "payload_too_large")

	// Identity collision: the same idempotency key twice, and the answer
	// does not name the existing task.
	body := map[string]any{"namespace": "math", "name": "linear_workflow", "context": map[string]any{"even_number": 4},
		"idempotency_key": fmt.Sprintf("key-%d", time.Now().UnixNano())}
	r = c.do("POST", "/v1/tasks", body)
	want(t, "first create", r, 201)
	var first taskJSON
	r.decode(t, &first)
	r = c.do("POST", "/v1/tasks", body)
	wantError(t, "duplicate", r, 409, "conflict")
	if strings.Contains(string(r.body), first.TaskUUID) {
		t.Errorf("duplicate answer reveals the existing task: %s", r.body)
	}
	// Filters are validated.
	wantError(t, "bad state filter", c.do("GET", "/v1/tasks?state=sleeping", nil), 400, "validation_failed")
	wantError(t, "bad time filter", c.do("GET", "/v1/tasks?created_after=yesterday", nil), 400, "validation_failed")
	wantError(t, "bad limit", c.do("GET", "/v1/tasks?limit=501", nil), 400, "validation_failed")
	wantError(t, "bad cursor", c.do("GET", "/v1/tasks?cursor=%21%21", nil), 400, "validation_failed")
}

func testPagination(t *testing.T, c *client) {
	start := time.Now().Add(-time.Second).UTC().Format(time.RFC3339Nano)
	created := map[string]bool{}
	for i := range 5 {
		r := c.do("POST", "/v1/tasks", map[string]any{"namespace": "apitest", "name": "squared",
			"context": map[string]any{"even_number": 10 + 2*i}})
		want(t, "create", r, 201)
		var task taskJSON
		r.decode(t, &task)
		created[task.TaskUUID] = true
	}
	seen := map[string]bool{}
	path, pages := "/v1/tasks?namespace=apitest&limit=2&created_after="+start, 0
	for {
		var page list[taskJSON]
		r := c.do("GET", path, nil)
		want(t, "list page", r, 200)
		r.decode(t, &page)
		pages++
		for _, task := range page.Items {
			if seen[task.TaskUUID] {
				t.Fatalf("task %s on two pages", task.TaskUUID)
			}
			seen[task.TaskUUID] = true
		}
		if page.NextCursor == "" {
			break
		}
		path = "/v1/tasks?namespace=apitest&limit=2&created_after=" + start + "&cursor=" + page.NextCursor
		if pages > 10 {
			t.Fatal("too many pages")
		}
	}
	if len(seen) != 5 || pages != 3 {
		t.Errorf("saw %d tasks on %d pages, want 5 on 3", len(seen), pages)
	}
	for id := range created {
		if !seen[id] {
			t.Errorf("task %s missing from the pages", id)
		}
	}
	var page list[taskJSON]
	r := c.do("GET", "/v1/tasks?namespace=apitest&state=cancelled", nil)
	want(t, "filtered", r, 200)
	r.decode(t, &page)
	if len(page.Items) != 0 {
		t.Errorf("state filter returned %d tasks", len(page.Items))
	}
}

func testStepActions(t *testing.T, c *client) {
	r := c.do("POST", "/v1/tasks", map[string]any{"namespace": "demo", "name": "permanent_failure_workflow",
		"context": map[string]any{"even_number": 4, "divisor": 0}})
	want(t, "create", r, 201)
	var task taskJSON
	r.decode(t, &task)
	task = waitSettled(t, c, task.TaskUUID)
	if task.State != "blocked_by_failures" {
		t.Fatalf("task state %s, want blocked_by_failures", task.State)
	}
	var steps list[stepJSON]
	c.do("GET", "/v1/tasks/"+task.TaskUUID+"/steps", nil).decode(t, &steps)
	ids := map[string]stepJSON{}
	for _, s := range steps.Items {
		ids[s.Name] = s
	}
	divide, report := ids["divide"], ids["report_quotient"]
	if divide.State != "error" || divide.Error == nil {
		t.Fatalf("divide = %+v", divide)
	}
	var rs stepJSON
	c.do("GET", "/v1/tasks/"+task.TaskUUID+"/steps/"+report.StepUUID, nil).decode(t, &rs)
	if rs.Readiness == nil || rs.Readiness.DependenciesSatisfied || rs.Readiness.BlockedReason == "" {
		t.Errorf("report_quotient readiness = %+v, want a blocked reason", rs.Readiness)
	}
	base := "/v1/tasks/" + task.TaskUUID + "/steps/"
	wantError(t, "unknown action", c.do("PATCH", base+divide.StepUUID, map[string]any{"action": "explode"}), 400, "validation_failed")
	wantError(t, "result with reset", c.do("PATCH", base+divide.StepUUID, map[string]any{"action": "reset_for_retry", "result": 1}), 400, "validation_failed")
	wantError(t, "illegal action", c.do("PATCH", base+ids["square_input"].StepUUID, map[string]any{"action": "reset_for_retry"}), 409, "conflict")
	wantError(t, "step of no task", c.do("PATCH", "/v1/tasks/00000000-0000-4000-8000-000000000000/steps/"+divide.StepUUID,
		map[string]any{"action": "resolve_manually"}), 404, "not_found")
	r = c.do("PATCH", base+divide.StepUUID, map[string]any{"action": "complete_manually", "result": 7, "reason": "operator fixed it"})
	want(t, "complete manually", r, 200)
	r.decode(t, &rs)
	if rs.State != "complete" || string(rs.Result) != "7" {
		t.Errorf("step after complete_manually = %s", r.body)
	}
	task = waitSettled(t, c, task.TaskUUID)
	if task.State != "complete" {
		t.Errorf("task after the fix = %s, want complete", task.State)
	}
	var trs list[transitionJSON]
	c.do("GET", base+divide.StepUUID+"/transitions", nil).decode(t, &trs)
	last := trs.Items[len(trs.Items)-1]
	if !strings.Contains(string(last.Metadata), "anonymous") || !strings.Contains(string(last.Metadata), "operator fixed it") {
		t.Errorf("manual action not audited with actor and reason: %s", last.Metadata)
	}
}

func testTemplates(t *testing.T, c *client) {
	var ts list[templateJSON]
	r := c.do("GET", "/v1/templates", nil)
	want(t, "list templates", r, 200)
	r.decode(t, &ts)
	if len(ts.Items) < 6 {
		t.Errorf("listed %d templates", len(ts.Items))
	}
	r = c.do("GET", "/v1/templates?namespace=apitest", nil)
	r.decode(t, &ts)
	if len(ts.Items) != 1 || ts.Items[0].Steps[0].Events[0] != "number.squared" {
		t.Errorf("apitest templates = %s", r.body)
	}
	var tpl templateJSON
	r = c.do("GET", "/v1/templates/math/linear_workflow/1.0.0", nil)
	want(t, "get template", r, 200)
	r.decode(t, &tpl)
	if len(tpl.Steps) != 4 || tpl.Steps[1].Dependencies[0] != "linear_step_1" {
		t.Errorf("template = %s", r.body)
	}
	wantError(t, "unknown template", c.do("GET", "/v1/templates/math/linear_workflow/9.9.9", nil), 404, "not_found")

	var v validationJSON
	r = c.do("POST", "/v1/templates/validate", stuckTemplate, "Content-Type", "application/yaml")
	want(t, "validate ok", r, 200)
	r.decode(t, &v)
	if !v.Valid || len(v.Problems) != 0 {
		t.Errorf("valid template reported %s", r.body)
	}
	bad := "name: x\nnamespace_name: y\nversion: 1.0.0\nsteps:\n  - name: a\n    dependencies: [ghost]\n    handler: {callable: c}\n"
	r = c.do("POST", "/v1/templates/validate", bad, "Content-Type", "application/yaml")
	want(t, "validate bad", r, 200)
	r.decode(t, &v)
	if v.Valid || len(v.Problems) == 0 || v.Problems[0].Step != "a" {
		t.Errorf("invalid template reported %s", r.body)
	}
	r = c.do("POST", "/v1/templates/validate", `{"name":"x","namespace_name":"y","version":"1.0.0","steps":[{"name":"a","handler":{"callable":"c"}}]}`)
	want(t, "validate json", r, 200)
	r.decode(t, &v)
	if !v.Valid {
		t.Errorf("JSON template reported %s", r.body)
	}
	wantError(t, "validate bad json", c.do("POST", "/v1/templates/validate", `{"name":`), 400, "bad_request")
	wantError(t, "validate content type", c.do("POST", "/v1/templates/validate", "x", "Content-Type", "text/plain"), 415, "unsupported_media_type")
}

func testEvents(t *testing.T, c *client) {
	var evs eventList
	r := c.do("GET", "/v1/events?limit=500", nil)
	want(t, "events", r, 200)
	r.decode(t, &evs)
	cursor := evs.NextCursor
	for len(evs.Items) == 500 {
		c.do("GET", "/v1/events?limit=500&after="+cursor, nil).decode(t, &evs)
		cursor = evs.NextCursor
	}
	// A long poll that starts before the event exists returns it.
	got := make(chan reply, 1)
	go func() {
		got <- c.do("GET", "/v1/events?wait=20s&after="+cursor, nil)
	}()
	time.Sleep(200 * time.Millisecond)
	want(t, "create", c.do("POST", "/v1/tasks", map[string]any{"namespace": "apitest", "name": "squared",
		"context": map[string]any{"even_number": 1000}}), 201)
	select {
	case r := <-got:
		want(t, "long poll", r, 200)
		r.decode(t, &evs)
		if len(evs.Items) == 0 || evs.Items[0].Name != "number.squared" || evs.NextCursor == cursor {
			t.Errorf("long poll = %s", r.body)
		}
	case <-time.After(25 * time.Second):
		t.Fatal("long poll did not return")
	}
	// A long poll with nothing new returns an empty page with the same cursor.
	r = c.do("GET", "/v1/events?wait=100ms&after="+evs.NextCursor, nil)
	want(t, "empty poll", r, 200)
	var empty eventList
	r.decode(t, &empty)
	if len(empty.Items) != 0 || empty.NextCursor != evs.NextCursor {
		t.Errorf("empty poll = %s", r.body)
	}
	wantError(t, "bad wait", c.do("GET", "/v1/events?wait=2h", nil), 400, "validation_failed")
	wantError(t, "bad after", c.do("GET", "/v1/events?after=-1", nil), 400, "validation_failed")
}

func testHealthAndMetrics(t *testing.T, c *client) {
	want(t, "live", c.do("GET", "/health/live", nil), 200)
	want(t, "ready", c.do("GET", "/health/ready", nil), 200)
	var d detailedJSON
	r := c.do("GET", "/health/detailed", nil)
	want(t, "detailed", r, 200)
	r.decode(t, &d)
	if d.Status == "unavailable" || len(d.Components) < 2 || d.Components[0].Name != "database" {
		t.Errorf("detailed = %s", r.body)
	}
	r = c.do("GET", "/metrics", nil)
	want(t, "metrics", r, 200)
	for _, name := range []string{"tasker_tasks{", "tasker_steps{", "tasker_step_duration_seconds_bucket", "tasker_channel_saturation",
		"tasker_domain_events_total", "tasker_db_pool_connections", "tasker_http_requests_total"} {
		if !strings.Contains(string(r.body), name) {
			t.Errorf("metrics lack %s", name)
		}
	}
	r = c.do("GET", "/v1/openapi.json", nil)
	want(t, "openapi", r, 200)
	if !strings.Contains(string(r.body), `"openapi": "3.0`) {
		t.Error("openapi.json is not served")
	}
}

func testRouting(t *testing.T, c *client) {
	wantError(t, "no route", c.do("GET", "/v2/nothing", nil), 404, "not_found")
	r := c.do("PUT", "/v1/tasks", `{}`)
	wantError(t, "wrong method", r, 405, "method_not_allowed")
	if allow := r.header.Get("Allow"); !strings.Contains(allow, "GET") || !strings.Contains(allow, "POST") {
		t.Errorf("Allow = %q", allow)
	}
}

func testDLQ(t *testing.T, c *client) {
	r := c.do("POST", "/v1/tasks", map[string]any{"namespace": "apistuck", "name": "stuck"})
	want(t, "create stuck", r, 201)
	var task taskJSON
	r.decode(t, &task)
	var entries list[dlqJSON]
	deadline := time.Now().Add(30 * time.Second)
	for len(entries.Items) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the stuck task was never dead-lettered")
		}
		time.Sleep(100 * time.Millisecond)
		r = c.do("GET", "/v1/dlq?status=pending&task_uuid="+task.TaskUUID, nil)
		want(t, "list dlq", r, 200)
		r.decode(t, &entries)
	}
	e := entries.Items[0]
	if e.TaskUUID != task.TaskUUID || e.Kind != "task" || e.Status != "pending" {
		t.Fatalf("entry = %+v", e)
	}
	id := fmt.Sprint(e.ID)
	want(t, "get dlq", c.do("GET", "/v1/dlq/"+id, nil), 200)
	var stats list[dlqStatJSON]
	r = c.do("GET", "/v1/dlq/stats", nil)
	want(t, "stats", r, 200)
	r.decode(t, &stats)
	if len(stats.Items) == 0 || stats.Items[0].Count < 1 {
		t.Errorf("stats = %s", r.body)
	}
	wantError(t, "bad id", c.do("GET", "/v1/dlq/abc", nil), 400, "validation_failed")
	wantError(t, "unknown id", c.do("GET", "/v1/dlq/999999", nil), 404, "not_found")
	wantError(t, "bad status", c.do("PATCH", "/v1/dlq/"+id, map[string]any{"status": "gone"}), 400, "validation_failed")
	wantError(t, "bad kind", c.do("GET", "/v1/dlq?kind=other", nil), 400, "validation_failed")
	wantError(t, "unknown redrive", c.do("POST", "/v1/dlq/999999/redrive", nil), 404, "not_found")
	var got dlqJSON
	r = c.do("POST", "/v1/dlq/"+id+"/redrive", map[string]any{"reason": "try again"})
	want(t, "redrive", r, 200)
	r.decode(t, &got)
	if got.Status != "manually_resolved" || got.ResolvedBy != "anonymous" {
		t.Errorf("redriven entry = %s", r.body)
	}
	wantError(t, "redrive twice", c.do("POST", "/v1/dlq/"+id+"/redrive", nil), 409, "conflict")
	r = c.do("PATCH", "/v1/dlq/"+id, map[string]any{"status": "permanently_failed", "reason": "give up"})
	want(t, "update", r, 200)
	r.decode(t, &got)
	if got.Status != "permanently_failed" || got.ResolutionNote != "give up" {
		t.Errorf("updated entry = %s", r.body)
	}
	// Paging through the list with limit 1 ends.
	r = c.do("GET", "/v1/dlq?limit=1", nil)
	want(t, "page", r, 200)
	wantError(t, "bad dlq cursor", c.do("GET", "/v1/dlq?cursor=zz", nil), 400, "validation_failed")
}
