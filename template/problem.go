package template

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// Problem is one thing wrong with a template.
type Problem struct {
	// Template is "namespace/name/version" as far as it is known; parts
	// that are missing are shown as "?".
	Template string
	// Step is the step's name, "steps[i]" for a step without a usable name,
	// or "" for a problem with the template as a whole.
	Step string
	// Field is the path of the offending field within the template or
	// step, such as "handler.callable", "retry.backoff" or
	// "publishes_events[0].name"; "" when the problem is with the document.
	Field string
	// Line is the 1-based YAML line, or 0 when unknown.
	Line    int
	Message string
}

// String formats the problem as
// `payments/charge/1.0.0: step "capture": handler.callable: is required (line 12)`.
func (p Problem) String() string {
	var b strings.Builder
	sep := func() {
		if b.Len() > 0 {
			b.WriteString(": ")
		}
	}
	if p.Template != "" {
		b.WriteString(p.Template)
	}
	if p.Step != "" {
		sep()
		b.WriteString("step ")
		b.WriteString(strconv.Quote(p.Step))
	}
	if p.Field != "" {
		sep()
		b.WriteString(p.Field)
	}
	sep()
	b.WriteString(p.Message)
	if p.Line > 0 {
		fmt.Fprintf(&b, " (line %d)", p.Line)
	}
	return b.String()
}

// ValidationError lists every problem found in a template.
type ValidationError struct {
	Problems []Problem
}

// Error reports the number of problems followed by each, one per line.
func (e *ValidationError) Error() string {
	var b strings.Builder
	b.WriteString(ErrInvalidTemplate.Error())
	switch n := len(e.Problems); n {
	case 0:
		return b.String()
	case 1:
		b.WriteString(": 1 problem")
	default:
		fmt.Fprintf(&b, ": %d problems", n)
	}
	for _, p := range e.Problems {
		b.WriteString("\n  - ")
		b.WriteString(p.String())
	}
	return b.String()
}

// Is reports whether target is [ErrInvalidTemplate].
func (e *ValidationError) Is(target error) bool {
	return target == ErrInvalidTemplate
}

// tmplLevel is the step index used for template-level fields.
const tmplLevel = -1

// issue is a problem before the template and step names are known.
type issue struct {
	step  int // index into Steps, or tmplLevel
	field string
	line  int
	msg   string
}

// positions records where a parsed template's fields were written, and
// which fields could not be read at all, so that validation points at
// lines and does not repeat a complaint about a field already reported.
type positions struct {
	top      map[string]int
	steps    []map[string]int
	stepLine []int
	unread   map[fieldRef]bool
}

type fieldRef struct {
	step  int
	field string
}

func newPositions() *positions {
	return &positions{top: map[string]int{}, unread: map[fieldRef]bool{}}
}

func (p *positions) addStep(line int) {
	p.steps = append(p.steps, map[string]int{})
	p.stepLine = append(p.stepLine, line)
}

func (p *positions) set(step int, field string, line int) {
	if step == tmplLevel {
		p.top[field] = line
		return
	}
	p.steps[step][field] = line
}

// has reports whether field was written in the document.
func (p *positions) has(step int, field string) bool {
	if p == nil {
		return false
	}
	m := p.top
	if step != tmplLevel {
		if step >= len(p.steps) {
			return false
		}
		m = p.steps[step]
	}
	_, ok := m[field]
	return ok
}

// line finds the line of field, or of the nearest enclosing field that was
// written, or of the step itself.
func (p *positions) line(step int, field string) int {
	if p == nil {
		return 0
	}
	m := p.top
	if step != tmplLevel {
		if step >= len(p.steps) {
			return 0
		}
		m = p.steps[step]
	}
	for f := field; f != ""; f = parentField(f) {
		if l, ok := m[f]; ok {
			return l
		}
	}
	if step != tmplLevel {
		return p.stepLine[step]
	}
	return 0
}

// suppressed reports whether field, or a field enclosing it, was already
// reported as unreadable.
func (p *positions) suppressed(step int, field string) bool {
	if p == nil {
		return false
	}
	for f := field; f != ""; f = parentField(f) {
		if p.unread[fieldRef{step, f}] {
			return true
		}
	}
	return false
}

// parentField strips the last component of a field path:
// "retry.backoff" -> "retry", "publishes_events[1].name" ->
// "publishes_events[1]" -> "publishes_events".
func parentField(f string) string {
	i := strings.LastIndexAny(f, ".[")
	if i < 0 {
		return ""
	}
	return f[:i]
}

// problems turns issues into Problems for t, sorted by line; issues with no
// line come first, in the order they were found.
func (t *Template) problems(issues []issue) []Problem {
	key := knownKey(t)
	out := make([]Problem, 0, len(issues))
	for _, is := range issues {
		p := Problem{Template: key, Field: is.field, Line: is.line, Message: is.msg}
		if is.step != tmplLevel {
			p.Step = stepLabel(t, is.step)
		}
		out = append(out, p)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Line < out[j].Line })
	return out
}

func knownKey(t *Template) string {
	if t.Namespace == "" && t.Name == "" && t.Version == "" {
		return ""
	}
	part := func(s string) string {
		if s == "" {
			return "?"
		}
		return s
	}
	return part(t.Namespace) + "/" + part(t.Name) + "/" + part(t.Version)
}

func stepLabel(t *Template, i int) string {
	if i < len(t.Steps) && t.Steps[i].Name != "" {
		return t.Steps[i].Name
	}
	return fmt.Sprintf("steps[%d]", i)
}
