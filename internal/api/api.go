// Package api is Tasker's REST API (v1): tasks, steps, templates, the
// dead-letter queue and the domain-event stream over HTTP and JSON, plus
// health checks and Prometheus metrics. docs/rest-api.md summarises it and
// openapi.json (served at /v1/openapi.json) describes it exactly.
package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tasker-go/tasker"
	"github.com/tasker-go/tasker/internal/auth"
	"github.com/tasker-go/tasker/store"
)

// Options configures the API. Zero values take the documented defaults.
type Options struct {
	// Auth authorizes requests; nil disables authentication and every
	// request is served as the principal "anonymous".
	Auth auth.Authorizer
	// PublicHealth and PublicMetrics say whether /health/* and /metrics
	// are served without credentials. nil means true (public); false
	// requires the permission "system:read" when Auth is set.
	PublicHealth, PublicMetrics *bool
	// MaxBodyBytes limits request bodies (413 beyond). Default 1 MiB.
	MaxBodyBytes int64
	// MaxQueueDepth makes POST /v1/tasks answer 503 while the number of
	// steps waiting in the work queues is above it. 0 means no limit.
	MaxQueueDepth int
	// DepthCheckInterval is how long a queue-depth reading is reused by
	// the backpressure check. Default 1s; negative reads it every time.
	DepthCheckInterval time.Duration
	// RetryAfter is the Retry-After sent with a 503. Default 5s.
	RetryAfter time.Duration
	// MaxWait caps the long-poll wait of GET /v1/events. Default 60s.
	MaxWait time.Duration
	// HealthTimeout bounds the database checks of a health request.
	// Default 2s.
	HealthTimeout time.Duration
	// Logger receives request errors. Default slog.Default().
	Logger *slog.Logger
	// Registerer receives the API's Prometheus collectors and Gatherer
	// serves /metrics. Both nil: a registry of the API's own (with the Go
	// and process collectors). Set both to share a registry.
	Registerer prometheus.Registerer
	Gatherer   prometheus.Gatherer
}

func (o *Options) defaults() {
	if o.MaxBodyBytes <= 0 {
		o.MaxBodyBytes = 1 << 20
	}
	if o.DepthCheckInterval == 0 {
		o.DepthCheckInterval = time.Second
	}
	if o.RetryAfter <= 0 {
		o.RetryAfter = 5 * time.Second
	}
	if o.MaxWait <= 0 {
		o.MaxWait = 60 * time.Second
	}
	if o.HealthTimeout <= 0 {
		o.HealthTimeout = 2 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// Permissions the routes require.
const (
	PermTasksCreate       = "tasks:create"
	PermTasksList         = "tasks:list"
	PermTasksRead         = "tasks:read"
	PermTasksCancel       = "tasks:cancel"
	PermStepsRead         = "steps:read"
	PermStepsResolve      = "steps:resolve"
	PermTemplatesRead     = "templates:read"
	PermTemplatesValidate = "templates:validate"
	PermDLQRead           = "dlq:read"
	PermDLQUpdate         = "dlq:update"
	PermEventsRead        = "events:read"
	PermSystemRead        = "system:read"
)

// route is one registered operation. perm "" means public.
type route struct {
	method, path, perm string
	handle             func(w http.ResponseWriter, r *http.Request, p *auth.Principal)
}

type server struct {
	eng  *tasker.Engine
	opts Options
	log  *slog.Logger
	mux  *http.ServeMux

	routes  []route
	metrics *metrics

	// channelStats reads the channel monitors; tests replace it.
	channelStats func() []tasker.ChannelStats

	depthMu   sync.Mutex
	depth     int
	depthRead time.Time
}

// New returns the API's handler, serving eng.
func New(eng *tasker.Engine, opts Options) http.Handler {
	return newServer(eng, opts)
}

func newServer(eng *tasker.Engine, opts Options) *server {
	opts.defaults()
	s := &server{eng: eng, opts: opts, log: opts.Logger, mux: http.NewServeMux(), channelStats: eng.ChannelStats}
	s.metrics = newMetrics(s)
	health, metricsPerm := "", ""
	if opts.PublicHealth != nil && !*opts.PublicHealth {
		health = PermSystemRead
	}
	if opts.PublicMetrics != nil && !*opts.PublicMetrics {
		metricsPerm = PermSystemRead
	}
	s.routes = []route{
		{"POST", "/v1/tasks", PermTasksCreate, s.createTask},
		{"GET", "/v1/tasks", PermTasksList, s.listTasks},
		{"GET", "/v1/tasks/{task_uuid}", PermTasksRead, s.getTask},
		{"DELETE", "/v1/tasks/{task_uuid}", PermTasksCancel, s.cancelTask},
		{"GET", "/v1/tasks/{task_uuid}/transitions", PermTasksRead, s.taskTransitions},
		{"GET", "/v1/tasks/{task_uuid}/steps", PermStepsRead, s.listSteps},
		{"GET", "/v1/tasks/{task_uuid}/steps/{step_uuid}", PermStepsRead, s.getStep},
		{"PATCH", "/v1/tasks/{task_uuid}/steps/{step_uuid}", PermStepsResolve, s.stepAction},
		{"GET", "/v1/tasks/{task_uuid}/steps/{step_uuid}/transitions", PermStepsRead, s.stepTransitions},
		{"GET", "/v1/templates", PermTemplatesRead, s.listTemplates},
		{"GET", "/v1/templates/{namespace}/{name}/{version}", PermTemplatesRead, s.getTemplate},
		{"POST", "/v1/templates/validate", PermTemplatesValidate, s.validateTemplate},
		{"GET", "/v1/dlq", PermDLQRead, s.listDLQ},
		{"GET", "/v1/dlq/stats", PermDLQRead, s.dlqStats},
		{"GET", "/v1/dlq/{id}", PermDLQRead, s.getDLQ},
		{"PATCH", "/v1/dlq/{id}", PermDLQUpdate, s.updateDLQ},
		{"POST", "/v1/dlq/{id}/redrive", PermDLQUpdate, s.redriveDLQ},
		{"GET", "/v1/events", PermEventsRead, s.listEvents},
		{"GET", "/v1/openapi.json", "", s.openAPI},
		{"GET", "/health/live", health, s.live},
		{"GET", "/health/ready", health, s.ready},
		{"GET", "/health/detailed", health, s.detailed},
		{"GET", "/metrics", metricsPerm, s.serveMetrics},
	}
	for _, rt := range s.routes {
		s.mux.Handle(rt.method+" "+rt.path, s.wrap(rt))
	}
	s.mux.HandleFunc("/", s.fallback)
	return s
}

func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mux.ServeHTTP(w, r)
}

// wrap adds what every route shares: panic recovery, metrics and
// authorization, which happens before anything reads the body.
func (s *server) wrap(rt route) http.Handler {
	label := rt.method + " " + rt.path
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		defer func() {
			if p := recover(); p != nil {
				s.log.Error("api: handler panicked", "route", label, "panic", p, "stack", string(debug.Stack()))
				if !sw.wrote {
					writeError(sw, http.StatusInternalServerError, "internal", "internal error", nil)
				}
			}
			s.metrics.observeRequest(label, sw.status(), time.Since(start))
		}()
		principal := &auth.Principal{Subject: "anonymous"}
		if s.opts.Auth != nil && rt.perm != "" {
			p, err := s.opts.Auth.Authorize(r, rt.perm)
			switch {
			case errors.Is(err, auth.ErrForbidden):
				writeError(sw, http.StatusForbidden, "forbidden", "missing permission "+rt.perm, nil)
				return
			case err != nil:
				sw.Header().Set("WWW-Authenticate", `Bearer realm="tasker"`)
				writeError(sw, http.StatusUnauthorized, "unauthenticated", "valid credentials are required", nil)
				return
			}
			if p != nil {
				principal = p
			}
		}
		rt.handle(sw, r, principal)
	})
}

// fallback answers requests no route matched: 405 with Allow when the path
// exists under another method, 404 otherwise.
func (s *server) fallback(w http.ResponseWriter, r *http.Request) {
	var allowed []string
	for _, m := range []string{"GET", "POST", "PUT", "PATCH", "DELETE"} {
		probe := r.Clone(r.Context())
		probe.Method = m
		if _, pattern := s.mux.Handler(probe); pattern != "" && pattern != "/" {
			allowed = append(allowed, m)
		}
	}
	if len(allowed) > 0 {
		w.Header().Set("Allow", strings.Join(allowed, ", "))
		writeError(w, http.StatusMethodNotAllowed, "method_not_allowed", "method "+r.Method+" is not allowed here", nil)
		return
	}
	writeError(w, http.StatusNotFound, "not_found", "no such route", nil)
}

type statusWriter struct {
	http.ResponseWriter
	code  int
	wrote bool
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.wrote {
		w.code, w.wrote = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if !w.wrote {
		w.code, w.wrote = http.StatusOK, true
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) status() int {
	if w.code == 0 {
		return http.StatusOK
	}
	return w.code
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// --- errors ---

// fieldError is one invalid field of a request.
type fieldError struct {
	Field   string `json:"field"`
	Message string `json:"message"`
}

type errorBody struct {
	Error errorInfo `json:"error"`
}

type errorInfo struct {
	Code    string       `json:"code"`
	Message string       `json:"message"`
	Details []fieldError `json:"details,omitempty"`
}

func writeError(w http.ResponseWriter, status int, code, msg string, details []fieldError) {
	writeJSON(w, status, errorBody{Error: errorInfo{Code: code, Message: msg, Details: details}})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		status = http.StatusInternalServerError
		buf.Reset()
		buf.WriteString(`{"error":{"code":"internal","message":"response could not be encoded"}}` + "\n")
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(buf.Len()))
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

// apiError is a client error a handler returns; anything else is a 500.
type apiError struct {
	status  int
	code    string
	msg     string
	details []fieldError
}

func (e *apiError) Error() string { return e.msg }

func badRequest(msg string) *apiError {
	return &apiError{status: http.StatusBadRequest, code: "bad_request", msg: msg}
}

func invalid(details ...fieldError) *apiError {
	msg := "request is not valid"
	if len(details) == 1 {
		msg = details[0].Field + ": " + details[0].Message
	}
	return &apiError{status: http.StatusBadRequest, code: "validation_failed", msg: msg, details: details}
}

func notFound(msg string) *apiError {
	return &apiError{status: http.StatusNotFound, code: "not_found", msg: msg}
}

func conflict(msg string) *apiError {
	return &apiError{status: http.StatusConflict, code: "conflict", msg: msg}
}

// fail writes err: an *apiError as itself, engine errors callers can tell
// apart as their 4xx, an unavailable database as 503, the rest as a 500
// whose detail goes to the log only.
func (s *server) fail(w http.ResponseWriter, r *http.Request, err error) {
	var ae *apiError
	if errors.As(err, &ae) {
		writeError(w, ae.status, ae.code, ae.msg, ae.details)
		return
	}
	switch {
	case errors.Is(err, tasker.ErrTaskNotFound):
		writeError(w, http.StatusNotFound, "not_found", "task not found", nil)
	case errors.Is(err, tasker.ErrStepNotFound):
		writeError(w, http.StatusNotFound, "not_found", "step not found", nil)
	case errors.Is(err, tasker.ErrTemplateNotFound):
		writeError(w, http.StatusNotFound, "not_found", "template not found", nil)
	case errors.Is(err, tasker.ErrDLQNotFound):
		writeError(w, http.StatusNotFound, "not_found", "dead-letter entry not found", nil)
	case errors.Is(err, tasker.ErrTaskFinished):
		writeError(w, http.StatusConflict, "conflict", "the task is already finished", nil)
	case errors.Is(err, tasker.ErrIllegalTransition):
		writeError(w, http.StatusConflict, "conflict", "the step's state does not allow this action", nil)
	case errors.Is(err, tasker.ErrDLQNotPending):
		writeError(w, http.StatusConflict, "conflict", "the dead-letter entry is not pending", nil)
	case errors.Is(err, tasker.ErrDLQTaskMoved):
		writeError(w, http.StatusConflict, "conflict", "the dead-lettered task is no longer in error", nil)
	case errors.Is(err, store.ErrStateConflict):
		writeError(w, http.StatusConflict, "conflict", "the resource changed concurrently; try again", nil)
	case errors.Is(err, store.ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		s.log.Warn("api: database unavailable", "method", r.Method, "path", r.URL.Path, "error", err)
		w.Header().Set("Retry-After", strconv.Itoa(int(s.opts.RetryAfter.Seconds())))
		writeError(w, http.StatusServiceUnavailable, "unavailable", "the database is unavailable; try again later", nil)
	case errors.Is(err, context.Canceled):
		// The client went away; nobody reads the answer.
	default:
		s.log.Error("api: request failed", "method", r.Method, "path", r.URL.Path, "error", err)
		writeError(w, http.StatusInternalServerError, "internal", "internal error", nil)
	}
}

// --- request decoding ---

// readBody checks the content type against accepted and reads the body
// within the size limit. An empty body is allowed when allowEmpty.
func (s *server) readBody(w http.ResponseWriter, r *http.Request, allowEmpty bool, accepted ...string) ([]byte, string, error) {
	r.Body = http.MaxBytesReader(w, r.Body, s.opts.MaxBodyBytes)
	body, err := io.ReadAll(r.Body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, "", &apiError{status: http.StatusRequestEntityTooLarge, code: "payload_too_large",
				msg: fmt.Sprintf("request body is larger than %d bytes", s.opts.MaxBodyBytes)}
		}
		return nil, "", badRequest("request body could not be read")
	}
	if len(body) == 0 && allowEmpty {
		return nil, "", nil
	}
	ct := r.Header.Get("Content-Type")
	mt, _, perr := mime.ParseMediaType(ct)
	for _, a := range accepted {
		if perr == nil && mt == a {
			return body, mt, nil
		}
	}
	return nil, "", &apiError{status: http.StatusUnsupportedMediaType, code: "unsupported_media_type",
		msg: "Content-Type must be " + strings.Join(accepted, " or ")}
}

// decodeJSON reads a JSON body into v, refusing unknown fields and
// trailing data.
func (s *server) decodeJSON(w http.ResponseWriter, r *http.Request, v any, allowEmpty bool) error {
	body, _, err := s.readBody(w, r, allowEmpty, "application/json")
	if err != nil {
		return err
	}
	if body == nil {
		return nil
	}
	return decodeStrict(body, v)
}

// decodeStrict decodes one JSON value into v; unknown fields, wrong types
// and trailing data are client errors naming what is wrong.
func decodeStrict(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var te *json.UnmarshalTypeError
		var se *json.SyntaxError
		switch {
		case errors.As(err, &te):
			field := te.Field
			if field == "" {
				return badRequest("request body must be a JSON object")
			}
			return invalid(fieldError{Field: field, Message: "must be of type " + jsonType(te.Type.Kind().String())})
		case errors.As(err, &se), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
			return badRequest("request body is not valid JSON")
		case strings.HasPrefix(err.Error(), "json: unknown field "):
			name := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
			return invalid(fieldError{Field: name, Message: "unknown field"})
		}
		return badRequest("request body is not valid JSON")
	}
	if _, err := dec.Token(); err != io.EOF {
		return badRequest("request body must hold a single JSON value")
	}
	return nil
}

func jsonType(kind string) string {
	switch kind {
	case "string":
		return "string"
	case "bool":
		return "boolean"
	case "slice", "array":
		return "array"
	case "map", "struct":
		return "object"
	}
	return "number"
}

// parseUUID accepts only the canonical 36-character form, so that a
// malformed id is refused before the database is asked.
func parseUUID(field, v string) (string, error) {
	if len(v) != 36 {
		return "", invalid(fieldError{Field: field, Message: "must be a UUID"})
	}
	u, err := uuid.Parse(v)
	if err != nil {
		return "", invalid(fieldError{Field: field, Message: "must be a UUID"})
	}
	return u.String(), nil
}

// parseLimit reads the limit query parameter: default 50, 1 to 500.
func parseLimit(r *http.Request) (int, error) {
	v := r.URL.Query().Get("limit")
	if v == "" {
		return 50, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > 500 {
		return 0, invalid(fieldError{Field: "limit", Message: "must be an integer from 1 to 500"})
	}
	return n, nil
}

// actor names the principal in audit records.
func actor(p *auth.Principal) string {
	if p == nil || p.Subject == "" {
		return "anonymous"
	}
	return p.Subject
}
