package api

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tasker-go/tasker"
	"github.com/tasker-go/tasker/internal/auth"
	"github.com/tasker-go/tasker/template"
)

// --- JSON views ---

type taskJSON struct {
	TaskUUID             string          `json:"task_uuid"`
	Namespace            string          `json:"namespace"`
	Name                 string          `json:"name"`
	Version              string          `json:"version"`
	State                string          `json:"state"`
	ExecutionStatus      string          `json:"execution_status"`
	Context              json.RawMessage `json:"context"`
	Initiator            string          `json:"initiator,omitempty"`
	SourceSystem         string          `json:"source_system,omitempty"`
	Reason               string          `json:"reason,omitempty"`
	Tags                 []string        `json:"tags"`
	Priority             int             `json:"priority"`
	TotalSteps           int             `json:"total_steps"`
	CompletedSteps       int             `json:"completed_steps"`
	FailedSteps          int             `json:"failed_steps"`
	InProgressSteps      int             `json:"in_progress_steps"`
	PendingSteps         int             `json:"pending_steps"`
	CompletionPercentage float64         `json:"completion_percentage"`
	CreatedAt            time.Time       `json:"created_at"`
	UpdatedAt            time.Time       `json:"updated_at"`
	CompletedAt          *time.Time      `json:"completed_at,omitempty"`
}

func taskView(t *tasker.Task) taskJSON {
	ctx := t.Context
	if len(ctx) == 0 {
		ctx = json.RawMessage(`{}`)
	}
	tags := t.Tags
	if tags == nil {
		tags = []string{}
	}
	return taskJSON{TaskUUID: t.UUID, Namespace: t.Namespace, Name: t.Name, Version: t.Version, State: t.State,
		ExecutionStatus: t.ExecutionStatus, Context: ctx, Initiator: t.Initiator, SourceSystem: t.SourceSystem,
		Reason: t.Reason, Tags: tags, Priority: t.Priority, TotalSteps: t.TotalSteps, CompletedSteps: t.CompletedSteps,
		FailedSteps: t.FailedSteps, InProgressSteps: t.InProgressSteps, PendingSteps: t.PendingSteps,
		CompletionPercentage: t.CompletionPercentage, CreatedAt: t.CreatedAt, UpdatedAt: t.UpdatedAt, CompletedAt: t.CompletedAt}
}

type stepErrorJSON struct {
	Message   string `json:"message"`
	Type      string `json:"type"`
	Retryable bool   `json:"retryable"`
}

type readinessJSON struct {
	DependenciesSatisfied bool       `json:"dependencies_satisfied"`
	RetryEligible         bool       `json:"retry_eligible"`
	NextRetryAt           *time.Time `json:"next_retry_at,omitempty"`
	BlockedReason         string     `json:"blocked_reason,omitempty"`
}

type stepJSON struct {
	StepUUID    string          `json:"step_uuid"`
	TaskUUID    string          `json:"task_uuid"`
	Name        string          `json:"name"`
	State       string          `json:"state"`
	Attempts    int             `json:"attempts"`
	MaxAttempts int             `json:"max_attempts"`
	Retryable   bool            `json:"retryable"`
	Result      json.RawMessage `json:"result,omitempty"`
	Error       *stepErrorJSON  `json:"error,omitempty"`
	CreatedAt   time.Time       `json:"created_at"`
	UpdatedAt   time.Time       `json:"updated_at"`
	StartedAt   *time.Time      `json:"started_at,omitempty"`
	CompletedAt *time.Time      `json:"completed_at,omitempty"`
	NextRetryAt *time.Time      `json:"next_retry_at,omitempty"`
	Readiness   *readinessJSON  `json:"readiness,omitempty"`
}

func stepView(taskUUID string, s *tasker.Step, withReadiness bool) stepJSON {
	v := stepJSON{StepUUID: s.UUID, TaskUUID: taskUUID, Name: s.Name, State: s.State, Attempts: s.Attempts,
		MaxAttempts: s.MaxAttempts, Retryable: s.Retryable, Result: s.Result, CreatedAt: s.CreatedAt,
		UpdatedAt: s.UpdatedAt, StartedAt: s.LastAttemptedAt, CompletedAt: s.CompletedAt, NextRetryAt: s.NextRetryAt}
	if string(v.Result) == "null" {
		v.Result = nil
	}
	if s.Error != nil {
		v.Error = &stepErrorJSON{Message: s.Error.Message, Type: s.Error.Type, Retryable: s.Error.Retryable}
	}
	if withReadiness {
		v.Readiness = &readinessJSON{DependenciesSatisfied: s.DependenciesSatisfied, RetryEligible: s.RetryEligible,
			NextRetryAt: s.NextRetryAt, BlockedReason: s.BlockedReason}
	}
	return v
}

type transitionJSON struct {
	FromState string          `json:"from_state"`
	ToState   string          `json:"to_state"`
	Event     string          `json:"event"`
	Metadata  json.RawMessage `json:"metadata"`
	CreatedAt time.Time       `json:"created_at"`
}

func transitionViews(ts []tasker.Transition) []transitionJSON {
	out := make([]transitionJSON, len(ts))
	for i, t := range ts {
		md := t.Metadata
		if len(md) == 0 {
			md = json.RawMessage(`{}`)
		}
		out[i] = transitionJSON{FromState: t.From, ToState: t.To, Event: t.Event, Metadata: md, CreatedAt: t.CreatedAt}
	}
	return out
}

// list is every list response; NextCursor is absent on the last page.
type list[T any] struct {
	Items      []T    `json:"items"`
	NextCursor string `json:"next_cursor,omitempty"`
}

// --- tasks ---

type createTaskRequest struct {
	Namespace      string          `json:"namespace"`
	Name           string          `json:"name"`
	Version        string          `json:"version"`
	Context        json.RawMessage `json:"context"`
	IdempotencyKey string          `json:"idempotency_key"`
	Initiator      string          `json:"initiator"`
	SourceSystem   string          `json:"source_system"`
	Reason         string          `json:"reason"`
	Tags           []string        `json:"tags"`
	Priority       int             `json:"priority"`
}

func (c *createTaskRequest) validate() error {
	var d []fieldError
	if strings.TrimSpace(c.Namespace) == "" {
		d = append(d, fieldError{Field: "namespace", Message: "is required"})
	}
	if strings.TrimSpace(c.Name) == "" {
		d = append(d, fieldError{Field: "name", Message: "is required"})
	}
	if len(c.Context) > 0 && string(c.Context) != "null" && !strings.HasPrefix(strings.TrimSpace(string(c.Context)), "{") {
		d = append(d, fieldError{Field: "context", Message: "must be a JSON object"})
	}
	if string(c.Context) == "null" {
		c.Context = nil
	}
	if len(d) > 0 {
		return invalid(d...)
	}
	return nil
}

func (s *server) createTask(w http.ResponseWriter, r *http.Request, _ *auth.Principal) {
	if reason := s.overloaded(r); reason != "" {
		w.Header().Set("Retry-After", strconv.Itoa(int(s.opts.RetryAfter.Seconds())))
		writeError(w, http.StatusServiceUnavailable, "unavailable", reason+"; try again later", nil)
		return
	}
	var req createTaskRequest
	if err := s.decodeJSON(w, r, &req, false); err != nil {
		s.fail(w, r, err)
		return
	}
	if err := req.validate(); err != nil {
		s.fail(w, r, err)
		return
	}
	var taskCtx any
	if req.Context != nil {
		taskCtx = req.Context
	}
	task, err := s.eng.CreateTask(r.Context(), tasker.TaskRequest{Namespace: req.Namespace, Name: req.Name,
		Version: req.Version, Context: taskCtx, IdempotencyKey: req.IdempotencyKey, Initiator: req.Initiator,
		SourceSystem: req.SourceSystem, Reason: req.Reason, Tags: req.Tags, Priority: req.Priority})
	var ce *template.ContextError
	switch {
	case err == nil:
		w.Header().Set("Location", "/v1/tasks/"+task.UUID)
		writeJSON(w, http.StatusCreated, taskView(task))
	case errors.As(err, &ce):
		var d []fieldError
		for _, p := range ce.Problems {
			d = append(d, fieldError{Field: "context" + p.Path, Message: p.Message})
		}
		s.fail(w, r, &apiError{status: http.StatusBadRequest, code: "validation_failed",
			msg: "context does not match the template's input_schema", details: d})
	case errors.Is(err, tasker.ErrInvalidContext):
		s.fail(w, r, invalid(fieldError{Field: "context", Message: "must be a JSON object"}))
	case errors.Is(err, tasker.ErrIdempotencyKeyRequired):
		s.fail(w, r, invalid(fieldError{Field: "idempotency_key", Message: "is required by this template's identity_strategy"}))
	case errors.Is(err, tasker.ErrDuplicateTask):
		// The existing task is not named: the caller may not be allowed
		// to read it.
		s.fail(w, r, conflict("a task with the same identity already exists"))
	default:
		s.fail(w, r, err)
	}
}

var taskStates = []string{"pending", "initializing", "enqueuing_steps", "steps_in_process", "evaluating_results",
	"waiting_for_dependencies", "waiting_for_retry", "blocked_by_failures", "complete", "error", "cancelled",
	"resolved_manually"}

func (s *server) listTasks(w http.ResponseWriter, r *http.Request, _ *auth.Principal) {
	q := r.URL.Query()
	f := tasker.TaskFilter{Namespace: q.Get("namespace"), Name: q.Get("name"), Cursor: q.Get("cursor")}
	var d []fieldError
	for _, v := range q["state"] {
		for _, st := range strings.Split(v, ",") {
			if !slices.Contains(taskStates, st) {
				d = append(d, fieldError{Field: "state", Message: "unknown task state " + strconv.Quote(st)})
				continue
			}
			f.States = append(f.States, st)
		}
	}
	for _, p := range []struct {
		name string
		dst  *time.Time
	}{{"created_after", &f.CreatedAfter}, {"created_before", &f.CreatedBefore}} {
		if v := q.Get(p.name); v != "" {
			t, err := time.Parse(time.RFC3339Nano, v)
			if err != nil {
				d = append(d, fieldError{Field: p.name, Message: "must be an RFC 3339 time"})
				continue
			}
			*p.dst = t
		}
	}
	limit, err := parseLimit(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if len(d) > 0 {
		s.fail(w, r, invalid(d...))
		return
	}
	f.Limit = limit
	page, err := s.eng.ListTasks(r.Context(), f)
	if errors.Is(err, tasker.ErrInvalidCursor) {
		s.fail(w, r, invalid(fieldError{Field: "cursor", Message: "is not a cursor this server handed out"}))
		return
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := list[taskJSON]{Items: make([]taskJSON, len(page.Tasks)), NextCursor: page.NextCursor}
	for i := range page.Tasks {
		out.Items[i] = taskView(&page.Tasks[i])
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *server) getTask(w http.ResponseWriter, r *http.Request, _ *auth.Principal) {
	id, err := parseUUID("task_uuid", r.PathValue("task_uuid"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	task, err := s.eng.GetTask(r.Context(), id)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, taskView(task))
}

func (s *server) cancelTask(w http.ResponseWriter, r *http.Request, _ *auth.Principal) {
	id, err := parseUUID("task_uuid", r.PathValue("task_uuid"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	task, err := s.eng.CancelTask(r.Context(), id)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, taskView(task))
}

func (s *server) taskTransitions(w http.ResponseWriter, r *http.Request, _ *auth.Principal) {
	id, err := parseUUID("task_uuid", r.PathValue("task_uuid"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if _, err := s.eng.GetTask(r.Context(), id); err != nil {
		s.fail(w, r, err)
		return
	}
	ts, err := s.eng.TaskTransitions(r.Context(), id)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, list[transitionJSON]{Items: transitionViews(ts)})
}

// --- steps ---

func (s *server) stepIDs(r *http.Request) (string, string, error) {
	taskID, err := parseUUID("task_uuid", r.PathValue("task_uuid"))
	if err != nil {
		return "", "", err
	}
	stepID, err := parseUUID("step_uuid", r.PathValue("step_uuid"))
	return taskID, stepID, err
}

func (s *server) listSteps(w http.ResponseWriter, r *http.Request, _ *auth.Principal) {
	id, err := parseUUID("task_uuid", r.PathValue("task_uuid"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	steps, err := s.eng.TaskSteps(r.Context(), id)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := list[stepJSON]{Items: make([]stepJSON, len(steps))}
	for i := range steps {
		out.Items[i] = stepView(id, &steps[i], false)
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *server) getStep(w http.ResponseWriter, r *http.Request, _ *auth.Principal) {
	taskID, stepID, err := s.stepIDs(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	step, err := s.eng.TaskStep(r.Context(), taskID, stepID)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, stepView(taskID, step, true))
}

func (s *server) stepTransitions(w http.ResponseWriter, r *http.Request, _ *auth.Principal) {
	taskID, stepID, err := s.stepIDs(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if _, err := s.eng.TaskStep(r.Context(), taskID, stepID); err != nil {
		s.fail(w, r, err)
		return
	}
	ts, err := s.eng.StepTransitions(r.Context(), stepID)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, list[transitionJSON]{Items: transitionViews(ts)})
}

type stepActionRequest struct {
	Action string          `json:"action"`
	Result json.RawMessage `json:"result"`
	Reason string          `json:"reason"`
}

func (s *server) stepAction(w http.ResponseWriter, r *http.Request, p *auth.Principal) {
	taskID, stepID, err := s.stepIDs(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var req stepActionRequest
	if err := s.decodeJSON(w, r, &req, false); err != nil {
		s.fail(w, r, err)
		return
	}
	action := tasker.StepAction(req.Action)
	switch action {
	case tasker.ResetForRetry, tasker.ResolveManually:
		if req.Result != nil {
			s.fail(w, r, invalid(fieldError{Field: "result", Message: "is only accepted with complete_manually"}))
			return
		}
	case tasker.CompleteManually:
	default:
		s.fail(w, r, invalid(fieldError{Field: "action",
			Message: "must be reset_for_retry, resolve_manually or complete_manually"}))
		return
	}
	var result any
	if req.Result != nil {
		result = req.Result
	}
	step, err := s.eng.ApplyStepAction(r.Context(), tasker.StepActionRequest{TaskUUID: taskID, StepUUID: stepID,
		Action: action, Result: result, Actor: actor(p), Reason: req.Reason})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, stepView(taskID, step, true))
}

// --- templates ---

type templateStepJSON struct {
	Name           string   `json:"name"`
	Description    string   `json:"description,omitempty"`
	Callable       string   `json:"callable"`
	Dependencies   []string `json:"dependencies"`
	Retryable      bool     `json:"retryable"`
	MaxAttempts    int      `json:"max_attempts"`
	Backoff        string   `json:"backoff"`
	TimeoutSeconds int      `json:"timeout_seconds,omitempty"`
	Events         []string `json:"events,omitempty"`
}

type templateJSON struct {
	Namespace        string             `json:"namespace"`
	Name             string             `json:"name"`
	Version          string             `json:"version"`
	Description      string             `json:"description"`
	IdentityStrategy string             `json:"identity_strategy"`
	InputSchema      json.RawMessage    `json:"input_schema,omitempty"`
	Steps            []templateStepJSON `json:"steps"`
	CreatedAt        time.Time          `json:"created_at"`
}

func templateView(t *tasker.TemplateInfo) templateJSON {
	v := templateJSON{Namespace: t.Namespace, Name: t.Name, Version: t.Version, Description: t.Description,
		IdentityStrategy: t.IdentityStrategy, InputSchema: t.InputSchema, CreatedAt: t.CreatedAt,
		Steps: make([]templateStepJSON, len(t.Steps))}
	for i, s := range t.Steps {
		deps := s.Dependencies
		if deps == nil {
			deps = []string{}
		}
		v.Steps[i] = templateStepJSON{Name: s.Name, Description: s.Description, Callable: s.Callable, Dependencies: deps,
			Retryable: s.Retryable, MaxAttempts: s.MaxAttempts, Backoff: s.Backoff, TimeoutSeconds: s.TimeoutSeconds,
			Events: s.Events}
	}
	return v
}

func (s *server) listTemplates(w http.ResponseWriter, r *http.Request, _ *auth.Principal) {
	ts, err := s.eng.Templates(r.Context(), r.URL.Query().Get("namespace"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := list[templateJSON]{Items: make([]templateJSON, len(ts))}
	for i := range ts {
		out.Items[i] = templateView(&ts[i])
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *server) getTemplate(w http.ResponseWriter, r *http.Request, _ *auth.Principal) {
	t, err := s.eng.Template(r.Context(), r.PathValue("namespace"), r.PathValue("name"), r.PathValue("version"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, templateView(t))
}

type problemJSON struct {
	Template string `json:"template"`
	Step     string `json:"step"`
	Field    string `json:"field"`
	Line     int    `json:"line"`
	Message  string `json:"message"`
}

type validationJSON struct {
	Valid    bool          `json:"valid"`
	Problems []problemJSON `json:"problems"`
}

// validateTemplate checks a template sent as YAML or as JSON (which YAML
// reads as well) without registering it.
func (s *server) validateTemplate(w http.ResponseWriter, r *http.Request, _ *auth.Principal) {
	body, mt, err := s.readBody(w, r, false, "application/yaml", "application/x-yaml", "text/yaml", "application/json")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if mt == "application/json" && !json.Valid(body) {
		s.fail(w, r, badRequest("request body is not valid JSON"))
		return
	}
	out := validationJSON{Valid: true, Problems: []problemJSON{}}
	if err := tasker.ValidateTemplate(body); err != nil {
		out.Valid = false
		var ve *template.ValidationError
		if errors.As(err, &ve) {
			for _, p := range ve.Problems {
				out.Problems = append(out.Problems, problemJSON{Template: p.Template, Step: p.Step, Field: p.Field,
					Line: p.Line, Message: p.Message})
			}
		} else {
			out.Problems = append(out.Problems, problemJSON{Message: err.Error()})
		}
	}
	writeJSON(w, http.StatusOK, out)
}

// --- dead-letter queue ---

type dlqJSON struct {
	ID             int64           `json:"id"`
	Kind           string          `json:"kind"`
	TaskUUID       string          `json:"task_uuid"`
	StepUUID       string          `json:"step_uuid,omitempty"`
	Namespace      string          `json:"namespace"`
	TaskName       string          `json:"task_name"`
	Reason         string          `json:"reason"`
	OriginalState  string          `json:"original_state"`
	Snapshot       json.RawMessage `json:"snapshot"`
	Status         string          `json:"status"`
	ResolvedBy     string          `json:"resolved_by,omitempty"`
	ResolutionNote string          `json:"resolution_note,omitempty"`
	CreatedAt      time.Time       `json:"created_at"`
	UpdatedAt      time.Time       `json:"updated_at"`
	ResolvedAt     *time.Time      `json:"resolved_at,omitempty"`
}

func dlqView(e *tasker.DLQEntry) dlqJSON {
	snap := e.Snapshot
	if len(snap) == 0 {
		snap = json.RawMessage(`{}`)
	}
	return dlqJSON{ID: e.ID, Kind: e.Kind, TaskUUID: e.TaskUUID, StepUUID: e.StepUUID, Namespace: e.Namespace,
		TaskName: e.TaskName, Reason: e.Reason, OriginalState: e.OriginalState, Snapshot: snap, Status: string(e.Status),
		ResolvedBy: e.ResolvedBy, ResolutionNote: e.ResolutionNote, CreatedAt: e.CreatedAt, UpdatedAt: e.UpdatedAt,
		ResolvedAt: e.ResolvedAt}
}

var dlqStatuses = []string{string(tasker.DLQPending), string(tasker.DLQManuallyResolved),
	string(tasker.DLQPermanentlyFailed), string(tasker.DLQCancelled)}

// maxDLQScan bounds how deep the DLQ list pages: the engine lists entries
// newest first without a cursor, so a page is a window of the first entries.
const maxDLQScan = 10000

func (s *server) listDLQ(w http.ResponseWriter, r *http.Request, _ *auth.Principal) {
	q := r.URL.Query()
	var f tasker.DLQFilter
	var d []fieldError
	for _, v := range q["status"] {
		for _, st := range strings.Split(v, ",") {
			if !slices.Contains(dlqStatuses, st) {
				d = append(d, fieldError{Field: "status", Message: "unknown status " + strconv.Quote(st)})
				continue
			}
			f.Statuses = append(f.Statuses, tasker.DLQStatus(st))
		}
	}
	if k := q.Get("kind"); k != "" {
		if k != tasker.DLQKindTask && k != tasker.DLQKindMessage {
			d = append(d, fieldError{Field: "kind", Message: "must be task or message"})
		}
		f.Kind = k
	}
	if v := q.Get("task_uuid"); v != "" {
		id, err := parseUUID("task_uuid", v)
		if err != nil {
			d = append(d, fieldError{Field: "task_uuid", Message: "must be a UUID"})
		}
		f.TaskUUID = id
	}
	f.Namespace = q.Get("namespace")
	offset := 0
	if c := q.Get("cursor"); c != "" {
		raw, err := base64.RawURLEncoding.DecodeString(c)
		n, perr := strconv.Atoi(strings.TrimPrefix(string(raw), "o:"))
		if err != nil || perr != nil || !strings.HasPrefix(string(raw), "o:") || n < 0 || n > maxDLQScan {
			d = append(d, fieldError{Field: "cursor", Message: "is not a cursor this server handed out"})
		}
		offset = n
	}
	limit, err := parseLimit(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if len(d) > 0 {
		s.fail(w, r, invalid(d...))
		return
	}
	f.Limit = offset + limit + 1
	entries, err := s.eng.ListDLQ(r.Context(), f)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := list[dlqJSON]{Items: []dlqJSON{}}
	if offset < len(entries) {
		entries = entries[offset:]
		if len(entries) > limit {
			entries = entries[:limit]
			if next := offset + limit; next <= maxDLQScan {
				out.NextCursor = base64.RawURLEncoding.EncodeToString([]byte("o:" + strconv.Itoa(next)))
			}
		}
		for i := range entries {
			out.Items = append(out.Items, dlqView(&entries[i]))
		}
	}
	writeJSON(w, http.StatusOK, out)
}

type dlqStatJSON struct {
	Status string `json:"status"`
	Kind   string `json:"kind"`
	Count  int    `json:"count"`
}

func (s *server) dlqStats(w http.ResponseWriter, r *http.Request, _ *auth.Principal) {
	stats, err := s.eng.DLQStats(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := list[dlqStatJSON]{Items: []dlqStatJSON{}}
	idx := map[[2]string]int{}
	for _, st := range stats {
		k := [2]string{string(st.Status), st.Kind}
		i, ok := idx[k]
		if !ok {
			i = len(out.Items)
			idx[k] = i
			out.Items = append(out.Items, dlqStatJSON{Status: k[0], Kind: k[1]})
		}
		out.Items[i].Count += st.Count
	}
	writeJSON(w, http.StatusOK, out)
}

func parseDLQID(r *http.Request) (int64, error) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		return 0, invalid(fieldError{Field: "id", Message: "must be a positive integer"})
	}
	return id, nil
}

func (s *server) getDLQ(w http.ResponseWriter, r *http.Request, _ *auth.Principal) {
	id, err := parseDLQID(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	e, err := s.eng.GetDLQ(r.Context(), id)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, dlqView(e))
}

type dlqUpdateRequest struct {
	Status string `json:"status"`
	Reason string `json:"reason"`
}

func (s *server) updateDLQ(w http.ResponseWriter, r *http.Request, p *auth.Principal) {
	id, err := parseDLQID(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var req dlqUpdateRequest
	if err := s.decodeJSON(w, r, &req, false); err != nil {
		s.fail(w, r, err)
		return
	}
	if !slices.Contains(dlqStatuses, req.Status) {
		s.fail(w, r, invalid(fieldError{Field: "status", Message: "must be one of " + strings.Join(dlqStatuses, ", ")}))
		return
	}
	e, err := s.eng.UpdateDLQ(r.Context(), tasker.DLQUpdate{ID: id, Status: tasker.DLQStatus(req.Status), Actor: actor(p), Reason: req.Reason})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, dlqView(e))
}

type dlqRedriveRequest struct {
	Reason string `json:"reason"`
}

func (s *server) redriveDLQ(w http.ResponseWriter, r *http.Request, p *auth.Principal) {
	id, err := parseDLQID(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var req dlqRedriveRequest
	if err := s.decodeJSON(w, r, &req, true); err != nil {
		s.fail(w, r, err)
		return
	}
	e, err := s.eng.RedriveDLQ(r.Context(), tasker.DLQRedrive{ID: id, Actor: actor(p), Reason: req.Reason})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, dlqView(e))
}

// --- events ---

type eventJSON struct {
	ID            string          `json:"id"`
	Seq           int64           `json:"seq"`
	Name          string          `json:"name"`
	TaskUUID      string          `json:"task_uuid"`
	StepUUID      string          `json:"step_uuid"`
	StepName      string          `json:"step_name"`
	Namespace     string          `json:"namespace"`
	TaskName      string          `json:"task_name,omitempty"`
	Version       string          `json:"version,omitempty"`
	Condition     string          `json:"condition,omitempty"`
	DeliveryMode  string          `json:"delivery_mode,omitempty"`
	Attempt       int             `json:"attempt"`
	CorrelationID string          `json:"correlation_id,omitempty"`
	Payload       json.RawMessage `json:"payload"`
	Error         json.RawMessage `json:"error,omitempty"`
	FiredAt       time.Time       `json:"fired_at"`
}

type eventList struct {
	Items      []eventJSON `json:"items"`
	NextCursor string      `json:"next_cursor"`
}

func (s *server) listEvents(w http.ResponseWriter, r *http.Request, _ *auth.Principal) {
	q := r.URL.Query()
	var after int64
	var d []fieldError
	if v := q.Get("after"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			d = append(d, fieldError{Field: "after", Message: "must be a non-negative integer"})
		}
		after = n
	}
	var wait time.Duration
	if v := q.Get("wait"); v != "" {
		dur, err := time.ParseDuration(v)
		if err != nil || dur < 0 || dur > s.opts.MaxWait {
			d = append(d, fieldError{Field: "wait", Message: "must be a duration from 0s to " + s.opts.MaxWait.String()})
		}
		wait = dur
	}
	limit, err := parseLimit(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if len(d) > 0 {
		s.fail(w, r, invalid(d...))
		return
	}
	deadline := time.Now().Add(wait)
	poll := 50 * time.Millisecond
	for {
		evs, err := s.eng.Events(r.Context(), after, limit)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		if len(evs) > 0 || !time.Now().Before(deadline) {
			out := eventList{Items: make([]eventJSON, len(evs)), NextCursor: strconv.FormatInt(after, 10)}
			for i, ev := range evs {
				payload := ev.Payload
				if len(payload) == 0 {
					payload = json.RawMessage(`null`)
				}
				out.Items[i] = eventJSON{ID: ev.ID, Seq: ev.Seq, Name: ev.Name, TaskUUID: ev.TaskUUID, StepUUID: ev.StepUUID,
					StepName: ev.StepName, Namespace: ev.Namespace, TaskName: ev.TaskName, Version: ev.Version,
					Condition: ev.Condition, DeliveryMode: ev.DeliveryMode, Attempt: ev.Attempt,
					CorrelationID: ev.CorrelationID, Payload: payload, Error: ev.Error, FiredAt: ev.FiredAt}
				out.NextCursor = strconv.FormatInt(ev.Seq, 10)
			}
			writeJSON(w, http.StatusOK, out)
			return
		}
		timer := time.NewTimer(min(poll, time.Until(deadline)))
		select {
		case <-r.Context().Done():
			timer.Stop()
			return
		case <-timer.C:
		}
		poll = min(2*poll, 500*time.Millisecond)
	}
}
