package api

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/tasker-go/tasker"
	"github.com/tasker-go/tasker/internal/auth"
)

// fakeAuth grants the comma-separated permissions in X-Test-Perms; without
// that header the caller is unauthenticated.
type fakeAuth struct{}

func (fakeAuth) Authorize(r *http.Request, perm string) (*auth.Principal, error) {
	h, ok := r.Header["X-Test-Perms"]
	if !ok {
		return nil, fmt.Errorf("no credentials: %w", auth.ErrUnauthenticated)
	}
	perms := strings.Split(h[0], ",")
	if !slices.Contains(perms, perm) {
		return nil, fmt.Errorf("need %s: %w", perm, auth.ErrForbidden)
	}
	return &auth.Principal{Subject: "tester", Permissions: perms}, nil
}

// TestAuthMatrix sends every route without credentials (401), with every
// permission but its own (403) and with its own (served). Bodies that
// would be refused are sent to the refused requests, to show that
// authorization comes before the body is read.
func TestAuthMatrix(t *testing.T) {
	t.Parallel()
	eng := sqliteBackend(t, tasker.Config{})
	no := false
	c, s := serve(t, eng, Options{Auth: fakeAuth{}, PublicHealth: &no})
	var all []string
	for _, rt := range s.routes {
		if rt.perm != "" {
			all = append(all, rt.perm)
		}
	}
	c.headers = map[string]string{"X-Test-Perms": strings.Join(all, ",")}
	var task taskJSON
	c.do("POST", "/v1/tasks", map[string]any{"namespace": "math", "name": "linear_workflow",
		"context": map[string]any{"even_number": 2}}).decode(t, &task)
	var steps list[stepJSON]
	c.do("GET", "/v1/tasks/"+task.TaskUUID+"/steps", nil).decode(t, &steps)
	stepPath := "/v1/tasks/" + task.TaskUUID + "/steps/" + steps.Items[3].StepUUID
	var victim taskJSON
	c.do("POST", "/v1/tasks", map[string]any{"namespace": "math", "name": "linear_workflow",
		"context": map[string]any{"even_number": 2}}).decode(t, &victim)

	requests := map[string]struct {
		path string
		body any
	}{
		"POST /v1/tasks":                                          {"/v1/tasks", map[string]any{"namespace": "math", "name": "linear_workflow"}},
		"GET /v1/tasks":                                           {"/v1/tasks", nil},
		"GET /v1/tasks/{task_uuid}":                               {"/v1/tasks/" + task.TaskUUID, nil},
		"DELETE /v1/tasks/{task_uuid}":                            {"/v1/tasks/" + victim.TaskUUID, nil},
		"GET /v1/tasks/{task_uuid}/transitions":                   {"/v1/tasks/" + task.TaskUUID + "/transitions", nil},
		"GET /v1/tasks/{task_uuid}/steps":                         {"/v1/tasks/" + task.TaskUUID + "/steps", nil},
		"GET /v1/tasks/{task_uuid}/steps/{step_uuid}":             {stepPath, nil},
		"PATCH /v1/tasks/{task_uuid}/steps/{step_uuid}":           {stepPath, map[string]any{"action": "resolve_manually"}},
		"GET /v1/tasks/{task_uuid}/steps/{step_uuid}/transitions": {stepPath + "/transitions", nil},
		"GET /v1/templates":                                       {"/v1/templates", nil},
		"GET /v1/templates/{namespace}/{name}/{version}":          {"/v1/templates/math/linear_workflow/1.0.0", nil},
		"POST /v1/templates/validate":                             {"/v1/templates/validate", stuckTemplate},
		"GET /v1/dlq":                                             {"/v1/dlq", nil},
		"GET /v1/dlq/stats":                                       {"/v1/dlq/stats", nil},
		"GET /v1/dlq/{id}":                                        {"/v1/dlq/1", nil},
		"PATCH /v1/dlq/{id}":                                      {"/v1/dlq/1", map[string]any{"status": "cancelled"}},
		"POST /v1/dlq/{id}/redrive":                               {"/v1/dlq/1/redrive", nil},
		"GET /v1/events":                                          {"/v1/events", nil},
		"GET /v1/openapi.json":                                    {"/v1/openapi.json", nil},
		"GET /health/live":                                        {"/health/live", nil},
		"GET /health/ready":                                       {"/health/ready", nil},
		"GET /health/detailed":                                    {"/health/detailed", nil},
		"GET /metrics":                                            {"/metrics", nil},
	}
	for _, rt := range s.routes {
		key := rt.method + " " + rt.path
		req, ok := requests[key]
		if !ok {
			t.Errorf("no request for route %s", key)
			continue
		}
		others := slices.DeleteFunc(slices.Clone(all), func(p string) bool { return p == rt.perm })
		anon := &client{t: t, base: c.base}
		without := &client{t: t, base: c.base, headers: map[string]string{"X-Test-Perms": strings.Join(others, ",")}}
		with := &client{t: t, base: c.base, headers: map[string]string{"X-Test-Perms": rt.perm}}
		if rt.perm == "" {
			if r := anon.do(rt.method, req.path, req.body); r.status != 200 {
				t.Errorf("%s is public but answered %d to an anonymous caller", key, r.status)
			}
			continue
		}
		// A malformed body: refusing it must wait until the caller is known.
		var junk any
		if req.body != nil {
			junk = "{not json"
		}
		if r := anon.do(rt.method, req.path, junk); r.status != 401 || r.errorCode(t) != "unauthenticated" {
			t.Errorf("%s without credentials: %d %s, want 401", key, r.status, r.body)
		}
		if r := without.do(rt.method, req.path, junk); r.status != 403 || r.errorCode(t) != "forbidden" {
			t.Errorf("%s without %s: %d %s, want 403", key, rt.perm, r.status, r.body)
		}
		var hdr []string
		if key == "POST /v1/templates/validate" {
			hdr = []string{"Content-Type", "application/yaml"}
		}
		r := with.do(rt.method, req.path, req.body, hdr...)
		switch {
		case r.status == 401 || r.status == 403:
			t.Errorf("%s with %s: %d %s", key, rt.perm, r.status, r.body)
		case strings.Contains(key, "/dlq/{id}") && r.status == 404:
			// No dead-letter entry exists here; the DLQ test covers success.
		case r.status >= 300:
			t.Errorf("%s with %s: %d %s, want success", key, rt.perm, r.status, r.body)
		}
	}
	// The actor of a manual action is the principal.
	var trs list[transitionJSON]
	c.do("GET", stepPath+"/transitions", nil).decode(t, &trs)
	if last := trs.Items[len(trs.Items)-1]; !strings.Contains(string(last.Metadata), "tester") {
		t.Errorf("manual action metadata %s does not name the principal", last.Metadata)
	}
}

// TestBackpressure: task creation answers 503 with Retry-After when the
// queues are over the limit or a channel is critical; reads keep working.
func TestBackpressure(t *testing.T) {
	t.Parallel()
	eng := sqliteBackend(t, tasker.Config{}) // never started: steps stay queued
	c, _ := serve(t, eng, Options{MaxQueueDepth: 1, DepthCheckInterval: -1})
	body := map[string]any{"namespace": "math", "name": "linear_workflow", "context": map[string]any{"even_number": 2}}
	want(t, "first", c.do("POST", "/v1/tasks", body), 201)
	want(t, "second", c.do("POST", "/v1/tasks", body), 201)
	r := c.do("POST", "/v1/tasks", body)
	wantError(t, "over the queue limit", r, 503, "unavailable")
	if r.header.Get("Retry-After") != "5" {
		t.Errorf("Retry-After = %q, want 5", r.header.Get("Retry-After"))
	}
	want(t, "reads keep working", c.do("GET", "/v1/tasks", nil), 200)

	c2, s2 := serve(t, eng, Options{})
	s2.channelStats = func() []tasker.ChannelStats {
		return []tasker.ChannelStats{{Name: "worker.completion", Capacity: 10, Depth: 10, Saturation: 1, Level: "critical"}}
	}
	r = c2.do("POST", "/v1/tasks", body)
	wantError(t, "critical channel", r, 503, "unavailable")
	if r.header.Get("Retry-After") == "" {
		t.Error("no Retry-After")
	}
	r = c2.do("GET", "/health/ready", nil)
	want(t, "ready while critical", r, 503)
	if !strings.Contains(string(r.body), "worker.completion") {
		t.Errorf("ready does not name the channel: %s", r.body)
	}
	want(t, "detailed while critical", c2.do("GET", "/health/detailed", nil), 503)
}

// TestReadyWithoutDatabase: a closed store makes readiness fail with a
// reason and no internals.
func TestReadyWithoutDatabase(t *testing.T) {
	t.Parallel()
	eng := sqliteBackend(t, tasker.Config{})
	c, _ := serve(t, eng, Options{})
	if err := eng.Close(); err != nil {
		t.Fatal(err)
	}
	r := c.do("GET", "/health/ready", nil)
	want(t, "ready", r, 503)
	if !strings.Contains(string(r.body), "database unreachable") || strings.Contains(string(r.body), "sql") {
		t.Errorf("ready = %s", r.body)
	}
	want(t, "live", c.do("GET", "/health/live", nil), 200)
	wantError(t, "read", c.do("GET", "/v1/tasks", nil), 503, "unavailable")
}
