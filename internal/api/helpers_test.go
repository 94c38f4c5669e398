package api

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"

	"github.com/tasker-go/tasker"
	"github.com/tasker-go/tasker/examples"
	"github.com/tasker-go/tasker/store/postgres/pgtest"
)

// eventsTemplate publishes a durable event, for the event-stream tests.
const eventsTemplate = `
name: squared
namespace_name: apitest
version: 1.0.0
identity_strategy: strict
steps:
  - name: square
    handler: {callable: math.square}
    publishes_events:
      - name: number.squared
`

// stuckTemplate names a callable no test registers, so its tasks never
// finish and the staleness sweeper dead-letters them.
const stuckTemplate = `
name: stuck
namespace_name: apistuck
version: 1.0.0
identity_strategy: always_unique
steps:
  - name: wait
    handler: {callable: apistuck.nobody}
`

type backend func(t *testing.T, cfg tasker.Config) *tasker.Engine

func sqliteBackend(t *testing.T, cfg tasker.Config) *tasker.Engine {
	cfg.DatabaseURL = "sqlite://" + filepath.Join(t.TempDir(), "tasker.db")
	return openEngine(t, cfg)
}

func postgresBackend(t *testing.T, cfg tasker.Config) *tasker.Engine {
	url := pgtest.URL(t)
	cfg.DatabaseURL = url
	cfg.PostgresSchema = pgtest.Schema(t, url)
	return openEngine(t, cfg)
}

func openEngine(t *testing.T, cfg tasker.Config) *tasker.Engine {
	t.Helper()
	if cfg.PollInterval == 0 {
		cfg.PollInterval = 50 * time.Millisecond
	}
	cfg.Logger = testLogger(t)
	ctx := context.Background()
	eng, err := tasker.Open(ctx, cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := eng.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	if err := examples.Register(ctx, eng); err != nil {
		t.Fatal(err)
	}
	for _, doc := range []string{eventsTemplate, stuckTemplate} {
		if err := eng.RegisterTemplate(ctx, []byte(doc)); err != nil {
			t.Fatal(err)
		}
	}
	return eng
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelError}))
}

var (
	specOnce   sync.Once
	specRouter routers.Router
	specDoc    *openapi3.T
	specErr    error
)

// spec loads openapi.json once and checks that it is a valid document.
func spec(t testing.TB) (*openapi3.T, routers.Router) {
	t.Helper()
	specOnce.Do(func() {
		loader := openapi3.NewLoader()
		specDoc, specErr = loader.LoadFromData(openAPIDoc)
		if specErr != nil {
			return
		}
		if specErr = specDoc.Validate(context.Background()); specErr != nil {
			return
		}
		specRouter, specErr = legacy.NewRouter(specDoc)
	})
	if specErr != nil {
		t.Fatalf("openapi.json: %v", specErr)
	}
	return specDoc, specRouter
}

// client sends requests to a test server and checks every answer against
// the OpenAPI document.
type client struct {
	t       *testing.T
	base    string
	headers map[string]string
}

type reply struct {
	status int
	header http.Header
	body   []byte
}

func (r reply) decode(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decode %s: %v", r.body, err)
	}
}

func (r reply) errorCode(t *testing.T) string {
	t.Helper()
	var e errorBody
	r.decode(t, &e)
	if e.Error.Code == "" || e.Error.Message == "" {
		t.Fatalf("error body without code or message: %s", r.body)
	}
	return e.Error.Code
}

func (c *client) do(method, path string, body any, headers ...string) reply {
	c.t.Helper()
	var rd io.Reader
	contentType := "application/json"
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			c.t.Fatal(err)
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	if err != nil {
		c.t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", contentType)
	}
	for k, v := range c.headers {
		req.Header.Set(k, v)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatal(err)
	}
	r := reply{status: resp.StatusCode, header: resp.Header, body: raw}
	c.conform(req, r)
	return r
}

// conform checks a response against the OpenAPI document: its status must
// be documented for the operation and its body must match the schema.
// Responses to unrouted paths are checked for the error shape only.
func (c *client) conform(req *http.Request, r reply) {
	c.t.Helper()
	if r.status >= 500 && r.status != http.StatusServiceUnavailable {
		c.t.Errorf("%s %s: server error %d: %s", req.Method, req.URL, r.status, r.body)
	}
	if r.status >= 400 && !strings.HasPrefix(r.header.Get("Content-Type"), "application/json") {
		c.t.Errorf("%s %s: error %d without a JSON body: %s", req.Method, req.URL, r.status, r.body)
	}
	_, router := spec(c.t)
	route, params, err := router.FindRoute(req)
	if err != nil {
		if r.status != http.StatusNotFound && r.status != http.StatusMethodNotAllowed {
			c.t.Errorf("%s %s: not in openapi.json but answered %d", req.Method, req.URL.Path, r.status)
		}
		return
	}
	in := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route},
		Status:                 r.status,
		Header:                 r.header,
		Options:                &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true},
	}
	in.SetBodyBytes(r.body)
	if err := openapi3filter.ValidateResponse(context.Background(), in); err != nil {
		c.t.Errorf("%s %s: response %d does not match openapi.json: %v\nbody: %s", req.Method, req.URL, r.status, err, r.body)
	}
}

// serve starts the API for eng and returns a client for it.
func serve(t *testing.T, eng *tasker.Engine, opts Options) (*client, *server) {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	s := newServer(eng, opts)
	ts := httptest.NewServer(s)
	t.Cleanup(ts.Close)
	return &client{t: t, base: ts.URL}, s
}

func want(t *testing.T, what string, r reply, status int) {
	t.Helper()
	if r.status != status {
		t.Fatalf("%s: status %d, want %d; body %s", what, r.status, status, r.body)
	}
}

func wantError(t *testing.T, what string, r reply, status int, code string) {
	t.Helper()
	want(t, what, r, status)
	if got := r.errorCode(t); got != code {
		t.Fatalf("%s: error code %q, want %q; body %s", what, got, code, r.body)
	}
}

// waitSettled polls the task over HTTP until it is terminal or blocked.
func waitSettled(t *testing.T, c *client, id string) taskJSON {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var task taskJSON
		r := c.do("GET", "/v1/tasks/"+id, nil)
		want(t, "get task", r, 200)
		r.decode(t, &task)
		switch task.State {
		case "complete", "error", "cancelled", "resolved_manually", "blocked_by_failures":
			return task
		}
		if time.Now().After(deadline) {
			t.Fatalf("task %s did not settle; state %s", id, task.State)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
