// Package template parses and validates Tasker task templates.
//
// A task template is a YAML document that names a workflow
// (namespace_name/name/version) and declares its steps, the handler each
// step runs, how failed steps are retried and which steps depend on which.
// [Parse] turns a document into a [Template], fills in defaults and checks
// every rule at once, so a template author sees all mistakes in one pass;
// the returned [*ValidationError] lists each problem with its step, field
// and YAML line. A parsed template also answers questions about its step
// graph (parents, children, ancestors, roots, a stable topological order)
// and validates task contexts against its input_schema.
//
// # Naming rules
//
// Template names, namespaces and step names are lowercase identifiers: a
// letter followed by letters, digits, '_' or '-', optionally in several
// dot-separated segments (each segment made of the same characters), at most
// 64 characters. Hyphens are accepted because they are common in existing
// workflow names; upper case and spaces are not, so that names are safe to
// use in URLs, metric labels and log keys unchanged.
//
// Versions are semantic versions MAJOR.MINOR.PATCH with an optional
// -prerelease suffix (no build metadata, no leading zeros).
//
// Event names are dotted lowercase identifiers such as "order.processed":
// segments of letters, digits and '_', the first starting with a letter.
package template

import (
	"encoding/json"
	"errors"
)

// IdentityStrategy decides how two task requests for the same template are
// recognised as the same task.
type IdentityStrategy string

// Identity strategies a template may declare.
const (
	// IdentityStrict derives a task's identity from its template and
	// context, so an identical request is rejected as a duplicate. It is
	// the default.
	IdentityStrict IdentityStrategy = "strict"
	// IdentityCallerProvided uses the idempotency key given by the caller.
	IdentityCallerProvided IdentityStrategy = "caller_provided"
	// IdentityAlwaysUnique makes every request a new task.
	IdentityAlwaysUnique IdentityStrategy = "always_unique"
)

// StepType is the kind of a step.
type StepType string

// Step types a template may declare.
const (
	StepStandard            StepType = "standard" // the default
	StepDecision            StepType = "decision"
	StepDeferredConvergence StepType = "deferred_convergence"
	StepBatchable           StepType = "batchable"
	StepBatchWorker         StepType = "batch_worker"
)

// Backoff is the shape of the delay between attempts of a failed step.
type Backoff string

// Backoff shapes a template may declare.
const (
	BackoffNone        Backoff = "none"
	BackoffLinear      Backoff = "linear"
	BackoffExponential Backoff = "exponential" // the default
	BackoffFibonacci   Backoff = "fibonacci"
)

// Event conditions: when a step publishes a declared event.
const (
	EventOnSuccess          = "success" // the default
	EventOnFailure          = "failure"
	EventOnRetryableFailure = "retryable_failure"
	EventOnPermanentFailure = "permanent_failure"
	EventAlways             = "always"
)

// Event delivery modes.
const (
	DeliveryDurable   = "durable" // the default
	DeliveryFast      = "fast"
	DeliveryBroadcast = "broadcast"
)

// Defaults filled in by [Parse] for fields the document leaves out.
const (
	DefaultMaxAttempts   = 3
	DefaultBackoffBaseMS = 1000
	DefaultMaxBackoffMS  = 30000
)

// ErrInvalidTemplate is matched (with errors.Is) by every [*ValidationError].
var ErrInvalidTemplate = errors.New("invalid task template")

// Template is a parsed task template. Fields hold defaulted values: after
// [Parse], Type, IdentityStrategy, Retry and event Condition/DeliveryMode are
// never empty.
//
// A Template returned by Parse is not modified by any method and is safe for
// concurrent use.
type Template struct {
	Name        string         `json:"name"`
	Namespace   string         `json:"namespace_name"`
	Version     string         `json:"version"`
	Description string         `json:"description,omitempty"`
	Metadata    map[string]any `json:"metadata,omitempty"`
	// InputSchema is the JSON Schema (draft 2020-12 unless the schema says
	// otherwise) that task contexts must satisfy, or nil.
	InputSchema      json.RawMessage  `json:"input_schema,omitempty"`
	IdentityStrategy IdentityStrategy `json:"identity_strategy"`
	Lifecycle        Lifecycle        `json:"lifecycle"`
	Steps            []Step           `json:"steps"`

	// ContentHash is the hex SHA-256 of a canonical JSON encoding of the
	// template as parsed and defaulted (everything above). Reformatting the
	// YAML, reordering keys or editing comments leaves it unchanged; any
	// change of meaning changes it.
	ContentHash string `json:"content_hash,omitempty"`
	// Source is the YAML document as given to Parse.
	Source []byte `json:"-"`

	// pos remembers where fields were written so that Validate can point
	// at lines; nil for templates not built by Parse.
	pos *positions
	// input caches the compiled InputSchema; set by Parse.
	input *compiledSchema
	// byName indexes Steps by name, so that Step costs the same in a
	// template of ten thousand steps as in one of four; set by Parse.
	byName map[string]int
}

// Lifecycle bounds, in minutes, how long a task may spend in each phase.
// Zero means the engine's default.
type Lifecycle struct {
	MaxDurationMinutes               int `json:"max_duration_minutes,omitempty"`
	MaxStepsInProcessMinutes         int `json:"max_steps_in_process_minutes,omitempty"`
	MaxWaitingForDependenciesMinutes int `json:"max_waiting_for_dependencies_minutes,omitempty"`
	MaxWaitingForRetryMinutes        int `json:"max_waiting_for_retry_minutes,omitempty"`
}

// Step is one unit of work in a template.
type Step struct {
	Name         string   `json:"name"`
	Description  string   `json:"description,omitempty"`
	Type         StepType `json:"type"`
	Handler      Handler  `json:"handler"`
	Dependencies []string `json:"dependencies,omitempty"`
	Retry        Retry    `json:"retry"`
	// TimeoutSeconds bounds one attempt; zero means the engine's default.
	TimeoutSeconds  int            `json:"timeout_seconds,omitempty"`
	PublishesEvents []EventDecl    `json:"publishes_events,omitempty"`
	BatchConfig     map[string]any `json:"batch_config,omitempty"`
}

// Handler names the code that runs a step.
type Handler struct {
	// Callable is the name the handler was registered under. Required.
	Callable string `json:"callable"`
	// Method optionally selects an entry point of the handler.
	Method string `json:"method,omitempty"`
	// Initialization is the handler's configuration as a JSON object, or
	// nil when the template gives none.
	Initialization json.RawMessage `json:"initialization,omitempty"`
}

// Retry says whether and how a failed step is attempted again.
type Retry struct {
	// Retryable is false when a failure must never be retried. Default true.
	Retryable bool `json:"retryable"`
	// MaxAttempts is the total number of attempts, the first included.
	// Default 3. An explicit 0 is kept as written.
	MaxAttempts int `json:"max_attempts"`
	// Backoff is the delay shape. Default exponential.
	Backoff Backoff `json:"backoff"`
	// BackoffBaseMS is the first delay. Default 1000.
	BackoffBaseMS int64 `json:"backoff_base_ms"`
	// MaxBackoffMS caps every delay. Default 30000, or BackoffBaseMS when
	// only that is given and it is larger.
	MaxBackoffMS int64 `json:"max_backoff_ms"`
}

// EventDecl declares a domain event a step publishes.
type EventDecl struct {
	// Name is a dotted lowercase identifier such as "order.processed".
	Name string `json:"name"`
	// Condition is when the event is published: success (default),
	// failure, retryable_failure, permanent_failure or always.
	Condition string `json:"condition"`
	// DeliveryMode is durable (default), fast or broadcast.
	DeliveryMode string `json:"delivery_mode"`
	// Schema is a JSON Schema for the event payload, or nil.
	Schema json.RawMessage `json:"schema,omitempty"`
	// Publisher optionally names a custom publisher.
	Publisher string `json:"publisher,omitempty"`
}

// Key returns "namespace/name/version", the template's identity.
func (t *Template) Key() string {
	return t.Namespace + "/" + t.Name + "/" + t.Version
}

// Step returns the step with the given name.
func (t *Template) Step(name string) (*Step, bool) {
	// The index is trusted only while it still matches Steps.
	if i, ok := t.byName[name]; ok && i < len(t.Steps) && t.Steps[i].Name == name {
		return &t.Steps[i], true
	}
	for i := range t.Steps {
		if t.Steps[i].Name == name {
			return &t.Steps[i], true
		}
	}
	return nil, false
}
