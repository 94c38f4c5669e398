package template

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/santhosh-tekuri/jsonschema/v6/kind"
)

// ErrInvalidContext is matched (with errors.Is) by every [*ContextError].
var ErrInvalidContext = errors.New("invalid task context")

// ContextError says why a task context was rejected.
type ContextError struct {
	// Template is the template's key, "namespace/name/version".
	Template string
	Problems []ContextProblem
}

// ContextProblem is one reason a task context was rejected.
type ContextProblem struct {
	// Path is a JSON Pointer (RFC 6901) to the offending value, such as
	// "/customer/email"; "" is the context as a whole.
	Path    string
	Message string
}

func (p ContextProblem) String() string {
	path := p.Path
	if path == "" {
		path = "context"
	}
	return path + ": " + p.Message
}

// Error lists the problems on one line, separated by "; ".
func (e *ContextError) Error() string {
	var b strings.Builder
	b.WriteString(ErrInvalidContext.Error())
	if e.Template != "" {
		b.WriteString(" for ")
		b.WriteString(e.Template)
	}
	for i, p := range e.Problems {
		if i == 0 {
			b.WriteString(": ")
		} else {
			b.WriteString("; ")
		}
		b.WriteString(p.String())
	}
	return b.String()
}

// Is reports whether target is [ErrInvalidContext].
func (e *ContextError) Is(target error) bool {
	return target == ErrInvalidContext
}

// compiledSchema remembers the schema compiled from src.
type compiledSchema struct {
	src    json.RawMessage
	schema *jsonschema.Schema
}

// schemaURL names a schema resource being compiled; it is never fetched.
const schemaURL = "tasker:///schema.json"

// noRemote refuses to load any schema that is not part of the template:
// templates come from files that may be shared, and following "$ref" to the
// local file system or the network would let one read or reach anything.
// The JSON Schema meta-schemas are built into the library and still work.
type noRemote struct{}

func (noRemote) Load(url string) (any, error) {
	return nil, fmt.Errorf("only references within the schema itself are allowed, not %q", url)
}

// compileSchema compiles a JSON Schema (draft 2020-12 unless "$schema"
// says otherwise).
func compileSchema(raw json.RawMessage) (sch *jsonschema.Schema, err error) {
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(raw))
	if err != nil {
		return nil, err
	}
	// The schema library is not written for hostile input; a bug there
	// must not take the process down with it.
	defer func() {
		if r := recover(); r != nil {
			sch, err = nil, fmt.Errorf("schema compiler failed: %v", r)
		}
	}()
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	c.UseLoader(noRemote{})
	if err := c.AddResource(schemaURL, doc); err != nil {
		return nil, err
	}
	sch, err = c.Compile(schemaURL)
	if err != nil {
		return nil, errors.New(schemaErrorText(err))
	}
	return sch, nil
}

// schemaErrorText condenses a compile error to one line. A schema that
// breaks the meta-schema is reported as the list of offending keywords
// rather than the library's indented tree.
func schemaErrorText(err error) string {
	var serr *jsonschema.SchemaValidationError
	var verr *jsonschema.ValidationError
	if errors.As(err, &serr) && errors.As(serr.Err, &verr) {
		var parts []string
		for _, p := range contextProblems(verr, nil) {
			path := p.Path
			if path == "" {
				path = "(root)"
			}
			if s := path + ": " + p.Message; !slices.Contains(parts, s) {
				parts = append(parts, s)
			}
		}
		return strings.Join(parts, "; ")
	}
	msg := strings.ReplaceAll(err.Error(), schemaURL, "schema")
	return strings.Join(strings.Fields(msg), " ")
}

// inputSchema returns the compiled InputSchema, from the cache Parse filled
// when InputSchema has not been changed since.
func (t *Template) inputSchema() (*jsonschema.Schema, error) {
	if t.InputSchema == nil {
		return nil, nil
	}
	if c := t.input; c != nil && bytes.Equal(c.src, t.InputSchema) {
		return c.schema, nil
	}
	return compileSchema(t.InputSchema)
}

// ValidateContext checks a task context against the template: it must be a
// JSON object (null or empty counts as {}) and satisfy InputSchema when the
// template has one. A rejected context yields a [*ContextError] naming each
// failing JSON path and why. It is safe for concurrent use.
func (t *Template) ValidateContext(ctx json.RawMessage) error {
	reject := func(problems ...ContextProblem) error {
		return &ContextError{Template: t.Key(), Problems: problems}
	}
	trimmed := bytes.TrimSpace(ctx)
	var doc any = map[string]any{}
	if len(trimmed) > 0 && !bytes.Equal(trimmed, []byte("null")) {
		v, err := jsonschema.UnmarshalJSON(bytes.NewReader(trimmed))
		if err != nil {
			return reject(ContextProblem{Message: "is not valid JSON: " + err.Error()})
		}
		if _, ok := v.(map[string]any); !ok {
			return reject(ContextProblem{Message: "must be a JSON object, got " + jsonKind(v)})
		}
		doc = v
	}
	sch, err := t.inputSchema()
	if err != nil {
		return fmt.Errorf("template %s: input_schema: %w", t.Key(), err)
	}
	if sch == nil {
		return nil
	}
	err = sch.Validate(doc)
	if err == nil {
		return nil
	}
	var verr *jsonschema.ValidationError
	if !errors.As(err, &verr) {
		return fmt.Errorf("validate context for template %s: %w", t.Key(), err)
	}
	var problems []ContextProblem
	seen := map[ContextProblem]bool{}
	for _, p := range contextProblems(verr, nil) {
		if !seen[p] {
			seen[p] = true
			problems = append(problems, p)
		}
	}
	return reject(problems...)
}

// contextProblems flattens a schema validation error into its leaves, the
// specific failures; the inner nodes only say "some subschema failed".
func contextProblems(e *jsonschema.ValidationError, out []ContextProblem) []ContextProblem {
	if len(e.Causes) > 0 {
		for _, c := range e.Causes {
			out = contextProblems(c, out)
		}
		return out
	}
	switch k := e.ErrorKind.(type) {
	case *kind.Required:
		for _, name := range k.Missing {
			out = append(out, ContextProblem{Path: pointer(append(slices.Clone(e.InstanceLocation), name)), Message: "is required"})
		}
		return out
	case *kind.AdditionalProperties:
		for _, name := range k.Properties {
			out = append(out, ContextProblem{Path: pointer(append(slices.Clone(e.InstanceLocation), name)), Message: "is not allowed"})
		}
		return out
	}
	return append(out, ContextProblem{Path: pointer(e.InstanceLocation), Message: leafMessage(e)})
}

// leafMessage is the library's own wording for one failure without its
// location prefix.
func leafMessage(e *jsonschema.ValidationError) string {
	bare := jsonschema.ValidationError{SchemaURL: e.SchemaURL, ErrorKind: e.ErrorKind}
	msg := bare.Error()
	if rest, ok := strings.CutPrefix(msg, "at '': "); ok {
		return rest
	}
	return msg
}

// pointer encodes path tokens as a JSON Pointer.
func pointer(tokens []string) string {
	var b strings.Builder
	for _, tok := range tokens {
		b.WriteByte('/')
		tok = strings.ReplaceAll(tok, "~", "~0")
		b.WriteString(strings.ReplaceAll(tok, "/", "~1"))
	}
	return b.String()
}

func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "a boolean"
	case string:
		return "a string"
	case []any:
		return "an array"
	case map[string]any:
		return "an object"
	default:
		return "a number"
	}
}

// eventSchemas caches compiled event payload schemas by their source text.
var eventSchemas sync.Map // string -> *jsonschema.Schema

// ValidatePayload checks an event payload against the declaration's
// schema; it returns nil when the declaration has none. The error names
// each failing JSON path and why. It is safe for concurrent use.
func (e EventDecl) ValidatePayload(payload json.RawMessage) error {
	if e.Schema == nil {
		return nil
	}
	var sch *jsonschema.Schema
	if v, ok := eventSchemas.Load(string(e.Schema)); ok {
		sch = v.(*jsonschema.Schema)
	} else {
		var err error
		if sch, err = compileSchema(e.Schema); err != nil {
			return fmt.Errorf("event %s: schema: %w", e.Name, err)
		}
		eventSchemas.Store(string(e.Schema), sch)
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(payload))
	if err != nil {
		return fmt.Errorf("event %s: payload is not valid JSON: %w", e.Name, err)
	}
	err = sch.Validate(doc)
	if err == nil {
		return nil
	}
	var verr *jsonschema.ValidationError
	if !errors.As(err, &verr) {
		return fmt.Errorf("event %s: validate payload: %w", e.Name, err)
	}
	var parts []string
	for _, p := range contextProblems(verr, nil) {
		path := p.Path
		if path == "" {
			path = "(root)"
		}
		if s := path + ": " + p.Message; !slices.Contains(parts, s) {
			parts = append(parts, s)
		}
	}
	return fmt.Errorf("event %s: payload does not match its schema: %s", e.Name, strings.Join(parts, "; "))
}
