package template

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
)

const (
	maxNameLen      = 64
	maxEventNameLen = 128
)

var (
	namePattern      = regexp.MustCompile(`^[a-z][a-z0-9_-]*(\.[a-z0-9_-]+)*$`)
	versionPattern   = regexp.MustCompile(`^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?$`)
	eventNamePattern = regexp.MustCompile(`^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*$`)
)

var (
	identityStrategies = []IdentityStrategy{IdentityStrict, IdentityCallerProvided, IdentityAlwaysUnique}
	stepTypes          = []StepType{StepStandard, StepDecision, StepDeferredConvergence, StepBatchable, StepBatchWorker}
	backoffs           = []Backoff{BackoffNone, BackoffLinear, BackoffExponential, BackoffFibonacci}
	eventConditions    = []string{EventOnSuccess, EventOnFailure, EventOnRetryableFailure, EventOnPermanentFailure, EventAlways}
	deliveryModes      = []string{DeliveryDurable, DeliveryFast, DeliveryBroadcast}
)

// Validate checks every rule a template must satisfy and returns a
// [*ValidationError] listing all problems, or nil. Enumerated fields left
// empty count as their defaults, so a Template built in Go need not spell
// them out. [Parse] already validates; Validate is for templates built or
// changed in code.
func (t *Template) Validate() error {
	issues, _ := t.check()
	if len(issues) == 0 {
		return nil
	}
	return &ValidationError{Problems: t.problems(issues)}
}

// checker accumulates validation issues with their lines.
type checker struct {
	t      *Template
	issues []issue
}

func (c *checker) add(step int, field, format string, args ...any) {
	c.issues = append(c.issues, issue{
		step:  step,
		field: field,
		line:  c.t.pos.line(step, field),
		msg:   fmt.Sprintf(format, args...),
	})
}

// check runs every rule. It also returns the compiled input schema so that
// Parse need not compile it twice.
func (t *Template) check() ([]issue, *compiledSchema) {
	c := &checker{t: t}
	c.identifier(tmplLevel, "name", t.Name)
	c.identifier(tmplLevel, "namespace_name", t.Namespace)
	switch {
	case t.Version == "":
		c.add(tmplLevel, "version", "is required")
	case !versionPattern.MatchString(t.Version):
		c.add(tmplLevel, "version", "%q is not a semantic version MAJOR.MINOR.PATCH (optionally with -prerelease)", t.Version)
	}
	if t.IdentityStrategy != "" && !slices.Contains(identityStrategies, t.IdentityStrategy) {
		c.add(tmplLevel, "identity_strategy", "unknown identity strategy %q (want %s)", t.IdentityStrategy, list(identityStrategies))
	}
	c.nonNegative(tmplLevel, "lifecycle.max_duration_minutes", int64(t.Lifecycle.MaxDurationMinutes))
	c.nonNegative(tmplLevel, "lifecycle.max_steps_in_process_minutes", int64(t.Lifecycle.MaxStepsInProcessMinutes))
	c.nonNegative(tmplLevel, "lifecycle.max_waiting_for_dependencies_minutes", int64(t.Lifecycle.MaxWaitingForDependenciesMinutes))
	c.nonNegative(tmplLevel, "lifecycle.max_waiting_for_retry_minutes", int64(t.Lifecycle.MaxWaitingForRetryMinutes))

	var input *compiledSchema
	if t.InputSchema != nil {
		sch, err := compileSchema(t.InputSchema)
		if err != nil {
			c.add(tmplLevel, "input_schema", "is not a usable JSON Schema: %v", err)
		} else {
			input = &compiledSchema{src: t.InputSchema, schema: sch}
		}
	}

	if len(t.Steps) == 0 {
		c.add(tmplLevel, "steps", "at least one step is required")
	}
	first := map[string]int{}
	for i := range t.Steps {
		name := t.Steps[i].Name
		if name == "" {
			continue
		}
		if j, dup := first[name]; dup {
			where := ""
			if l := t.pos.line(j, "name"); l > 0 {
				where = fmt.Sprintf(" (first declared at line %d)", l)
			}
			c.add(i, "name", "duplicate step name %q%s", name, where)
			continue
		}
		first[name] = i
	}
	for i := range t.Steps {
		c.step(i, first)
	}
	c.cycles()
	return c.issues, input
}

func (c *checker) identifier(step int, field, v string) {
	switch {
	case v == "":
		c.add(step, field, "is required")
	case len(v) > maxNameLen:
		c.add(step, field, "is %d characters long; at most %d are allowed", len(v), maxNameLen)
	case !namePattern.MatchString(v):
		c.add(step, field, "%q must be lowercase: a letter, then letters, digits, '_' or '-', optionally in dot-separated segments", v)
	}
}

func (c *checker) nonNegative(step int, field string, v int64) {
	if v < 0 {
		c.add(step, field, "must not be negative, got %d", v)
	}
}

func (c *checker) step(i int, first map[string]int) {
	s := &c.t.Steps[i]
	c.identifier(i, "name", s.Name)
	if s.Type != "" && !slices.Contains(stepTypes, s.Type) {
		c.add(i, "type", "unknown step type %q (want %s)", s.Type, list(stepTypes))
	}
	if s.Handler.Callable == "" {
		c.add(i, "handler.callable", "is required")
	}
	seen := map[string]bool{}
	for j, d := range s.Dependencies {
		field := fmt.Sprintf("dependencies[%d]", j)
		switch _, exists := first[d]; {
		case d == s.Name:
			c.addAt(i, "dependencies", field, "step %q depends on itself", d)
		case !exists:
			c.addAt(i, "dependencies", field, "depends on unknown step %q", d)
		case seen[d]:
			c.addAt(i, "dependencies", field, "lists step %q more than once", d)
		}
		seen[d] = true
	}

	r := s.Retry
	if r.MaxAttempts < 0 {
		c.add(i, "retry.max_attempts", "must not be negative, got %d", r.MaxAttempts)
	}
	if r.Backoff != "" && !slices.Contains(backoffs, r.Backoff) {
		c.add(i, "retry.backoff", "unknown backoff %q (want %s)", r.Backoff, list(backoffs))
	}
	c.nonNegative(i, "retry.backoff_base_ms", r.BackoffBaseMS)
	c.nonNegative(i, "retry.max_backoff_ms", r.MaxBackoffMS)
	if r.BackoffBaseMS > 0 && r.MaxBackoffMS > 0 && r.MaxBackoffMS < r.BackoffBaseMS {
		c.add(i, "retry.max_backoff_ms", "(%d) must not be smaller than retry.backoff_base_ms (%d)", r.MaxBackoffMS, r.BackoffBaseMS)
	}
	c.nonNegative(i, "timeout_seconds", int64(s.TimeoutSeconds))

	declared := map[[2]string]bool{}
	for j, ev := range s.PublishesEvents {
		prefix := fmt.Sprintf("publishes_events[%d]", j)
		switch {
		case ev.Name == "":
			c.add(i, prefix+".name", "is required")
		case len(ev.Name) > maxEventNameLen:
			c.add(i, prefix+".name", "is %d characters long; at most %d are allowed", len(ev.Name), maxEventNameLen)
		case !eventNamePattern.MatchString(ev.Name):
			c.add(i, prefix+".name", "%q must be a dotted lowercase identifier such as \"order.processed\"", ev.Name)
		}
		cond := ev.Condition
		if cond == "" {
			cond = EventOnSuccess
		}
		if !slices.Contains(eventConditions, cond) {
			c.add(i, prefix+".condition", "unknown condition %q (want %s)", ev.Condition, list(eventConditions))
		}
		if ev.DeliveryMode != "" && !slices.Contains(deliveryModes, ev.DeliveryMode) {
			c.add(i, prefix+".delivery_mode", "unknown delivery mode %q (want %s)", ev.DeliveryMode, list(deliveryModes))
		}
		if ev.Schema != nil {
			if _, err := compileSchema(ev.Schema); err != nil {
				c.add(i, prefix+".schema", "is not a usable JSON Schema: %v", err)
			}
		}
		if ev.Name != "" {
			k := [2]string{ev.Name, cond}
			if declared[k] {
				c.add(i, prefix+".name", "event %q is declared more than once for condition %q", ev.Name, cond)
			}
			declared[k] = true
		}
	}
}

// addAt reports under field but takes the line from the more precise
// lineField (one item of a list, say).
func (c *checker) addAt(step int, field, lineField, format string, args ...any) {
	c.issues = append(c.issues, issue{
		step:  step,
		field: field,
		line:  c.t.pos.line(step, lineField),
		msg:   fmt.Sprintf(format, args...),
	})
}

// cycles reports each group of steps that depend on one another in a
// circle, printing one such circle per group.
func (c *checker) cycles() {
	g := newGraph(c.t)
	for _, comp := range g.cyclicComponents() {
		path := g.cycleThrough(comp)
		names := make([]string, len(path))
		for k, v := range path {
			names[k] = c.t.Steps[v].Name
		}
		c.add(path[0], "dependencies", "dependency cycle: %s", strings.Join(names, " -> "))
	}
}

func list[T ~string](vs []T) string {
	s := make([]string, len(vs))
	for i, v := range vs {
		s[i] = string(v)
	}
	return strings.Join(s, ", ")
}
