package template

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"regexp"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// maxNodeVisits bounds the work of reading one document. YAML aliases and
// merge keys let a small file name the same subtree many times over; without
// a bound a few hundred bytes could expand into gigabytes.
const maxNodeVisits = 1 << 20

// Parse reads a YAML task template, fills in defaults and validates it.
// When anything is wrong it returns a nil template and a [*ValidationError]
// listing every problem found, each with its step, field and line.
func Parse(doc []byte) (*Template, error) {
	t := &Template{Source: bytes.Clone(doc)}
	root, bad := readDocument(doc)
	if bad != nil {
		return nil, &ValidationError{Problems: t.problems([]issue{*bad})}
	}

	p := &parser{pos: newPositions(), budget: maxNodeVisits}
	p.template(t, root)
	t.pos = p.pos

	issues := p.issues
	checked, input := t.check()
	for _, is := range checked {
		if !p.pos.suppressed(is.step, is.field) {
			issues = append(issues, is)
		}
	}
	if len(issues) > 0 {
		return nil, &ValidationError{Problems: t.problems(issues)}
	}
	t.input = input
	sum, err := t.contentHash()
	if err != nil {
		return nil, fmt.Errorf("hash template %s: %w", t.Key(), err)
	}
	t.ContentHash = sum
	t.byName = make(map[string]int, len(t.Steps))
	for i := range t.Steps {
		t.byName[t.Steps[i].Name] = i
	}
	return t, nil
}

// readDocument decodes the single YAML document in doc and returns its
// top-level mapping.
func readDocument(doc []byte) (*yaml.Node, *issue) {
	if len(bytes.TrimSpace(doc)) == 0 {
		return nil, &issue{step: tmplLevel, msg: "document is empty"}
	}
	dec := yaml.NewDecoder(bytes.NewReader(doc))
	var first yaml.Node
	if err := dec.Decode(&first); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, &issue{step: tmplLevel, msg: "document is empty"}
		}
		return nil, syntaxIssue(err, doc)
	}
	for {
		// Later documents must be empty: a stray "---" at the end of a
		// file is harmless, a second template is not.
		var next yaml.Node
		err := dec.Decode(&next)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, syntaxIssue(err, doc)
		}
		if !emptyDocument(&next) {
			return nil, &issue{step: tmplLevel, line: next.Line,
				msg: "holds more than one YAML document; put each template in its own file"}
		}
	}

	root := &first
	if root.Kind == yaml.DocumentNode {
		if len(root.Content) == 0 {
			return nil, &issue{step: tmplLevel, msg: "document is empty"}
		}
		root = root.Content[0]
	}
	if root.Kind == yaml.AliasNode && root.Alias != nil {
		root = root.Alias
	}
	if root.Kind != yaml.MappingNode {
		return nil, &issue{step: tmplLevel, line: root.Line,
			msg: fmt.Sprintf("top level must be a mapping of template fields, got %s", describe(root))}
	}
	return root, nil
}

func emptyDocument(n *yaml.Node) bool {
	if len(n.Content) == 0 {
		return true
	}
	c := n.Content[0]
	return len(n.Content) == 1 && c.Kind == yaml.ScalarNode && c.Tag == "!!null" && c.Value == ""
}

var (
	yamlLine      = regexp.MustCompile(`^line (\d+): `)
	unknownAnchor = regexp.MustCompile(`^unknown anchor '(.*)' referenced$`)
)

// yamlParserErrors start the messages of the YAML parser proper (as opposed
// to its scanner). The library prints their lines counting from zero, and
// prints none at all for the first line, so those lines are shifted here.
var yamlParserErrors = []string{
	"did not find expected",
	"found duplicate %",
	"found incompatible YAML document",
	"found undefined tag handle",
}

// syntaxIssue turns a YAML decoding error into an issue carrying its line.
func syntaxIssue(err error, doc []byte) *issue {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 0
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = msg[len(m[0]):]
	}
	for _, prefix := range yamlParserErrors {
		if strings.HasPrefix(msg, prefix) {
			line++
			break
		}
	}
	if m := unknownAnchor.FindStringSubmatch(msg); m != nil {
		if at := bytes.Index(doc, []byte("*"+m[1])); at >= 0 {
			line = 1 + bytes.Count(doc[:at], []byte("\n"))
		}
	}
	return &issue{step: tmplLevel, line: line, msg: "YAML syntax error: " + msg}
}

// parser walks a decoded YAML tree into a Template, collecting problems
// about the document's shape (unknown fields, wrong kinds of values) as it
// goes instead of stopping at the first.
type parser struct {
	pos    *positions
	issues []issue
	budget int
	// merging holds the mappings whose merge keys are being expanded, to
	// stop a mapping that merges itself.
	merging map[*yaml.Node]bool
	// expanding holds the collections whose contents are being converted
	// in a free-form value, to stop an alias back into one of them.
	expanding map[*yaml.Node]bool
}

func (p *parser) report(step int, field string, n *yaml.Node, format string, args ...any) {
	line := 0
	if n != nil {
		line = n.Line
	}
	p.issues = append(p.issues, issue{step: step, field: field, line: line, msg: fmt.Sprintf(format, args...)})
}

// unreadable reports a field whose value could not be read at all, so that
// validation does not also complain that it is missing.
func (p *parser) unreadable(step int, field string, n *yaml.Node, format string, args ...any) {
	p.report(step, field, n, format, args...)
	p.pos.unread[fieldRef{step, field}] = true
}

// spend accounts for visiting one node and reports whether the budget
// allows it.
func (p *parser) spend(n *yaml.Node) bool {
	if p.budget <= 0 {
		return false
	}
	p.budget--
	if p.budget == 0 {
		p.report(tmplLevel, "", n, "document is too large or its aliases expand too far (more than %d nodes)", maxNodeVisits)
		return false
	}
	return true
}

// deref follows aliases to the node they name. The YAML library never
// anchors an alias itself, so chains are one link long; the bound only
// guards against a tree built some other way.
func deref(n *yaml.Node) *yaml.Node {
	for range 8 {
		if n == nil || n.Kind != yaml.AliasNode {
			return n
		}
		n = n.Alias
	}
	return nil
}

func isNull(n *yaml.Node) bool {
	return n == nil || (n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null")
}

func isMergeKey(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.Value == "<<" && n.ShortTag() == "!!merge"
}

// describe names the kind of a YAML value for messages.
func describe(n *yaml.Node) string {
	n = deref(n)
	if n == nil {
		return "nothing"
	}
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!null":
			return "null"
		case "!!bool":
			return "a boolean"
		case "!!int":
			return "an integer"
		case "!!float":
			return "a number"
		case "!!str":
			return "a string"
		case "!!timestamp":
			return "a timestamp"
		default:
			return "a " + n.ShortTag() + " value"
		}
	}
	return "an unexpected YAML node"
}

func joinField(parent, key string) string {
	if parent == "" {
		return key
	}
	return parent + "." + key
}

type pair struct {
	key, val *yaml.Node
}

// pairs lists the entries of mapping n, with merge keys ("<<") expanded:
// entries written in n win over merged ones, and earlier merge sources win
// over later ones. Keys written twice are reported under field.
func (p *parser) pairs(step int, field string, n *yaml.Node) []pair {
	if p.merging[n] {
		p.report(step, field, n, "merge key refers to the mapping that contains it")
		return nil
	}
	var out []pair
	seen := map[string]*yaml.Node{}
	var merged [][]pair
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := deref(n.Content[i]), n.Content[i+1]
		if k == nil {
			continue
		}
		if !p.spend(k) {
			return out
		}
		if isMergeKey(k) {
			if p.merging == nil {
				p.merging = map[*yaml.Node]bool{}
			}
			p.merging[n] = true
			merged = append(merged, p.mergeSources(step, field, v)...)
			delete(p.merging, n)
			continue
		}
		if k.Kind != yaml.ScalarNode {
			p.report(step, field, k, "mapping keys must be plain strings, got %s", describe(k))
			continue
		}
		if prev, dup := seen[k.Value]; dup {
			p.report(step, joinField(field, k.Value), k, "is written more than once (first at line %d)", prev.Line)
			continue
		}
		seen[k.Value] = k
		out = append(out, pair{k, v})
	}
	for _, src := range merged {
		for _, kv := range src {
			if _, ok := seen[kv.key.Value]; !ok {
				seen[kv.key.Value] = kv.key
				out = append(out, kv)
			}
		}
	}
	return out
}

// mergeSources returns the entries of each mapping named by a merge key's
// value, which is a mapping or a list of mappings.
func (p *parser) mergeSources(step int, field string, v *yaml.Node) [][]pair {
	v = deref(v)
	switch {
	case v != nil && v.Kind == yaml.MappingNode:
		return [][]pair{p.pairs(step, field, v)}
	case v != nil && v.Kind == yaml.SequenceNode:
		var out [][]pair
		for _, item := range v.Content {
			item = deref(item)
			if item == nil || item.Kind != yaml.MappingNode {
				p.report(step, field, item, "merge key (<<) list items must be mappings, got %s", describe(item))
				continue
			}
			out = append(out, p.pairs(step, field, item))
		}
		return out
	default:
		p.report(step, field, v, "merge key (<<) must name a mapping or a list of mappings, got %s", describe(v))
		return nil
	}
}

// mapping returns the entries of n, which must be a mapping or null.
func (p *parser) mapping(step int, field string, n *yaml.Node) ([]pair, bool) {
	n = deref(n)
	if isNull(n) {
		return nil, true
	}
	if n.Kind != yaml.MappingNode {
		p.unreadable(step, field, n, "must be a mapping, got %s", describe(n))
		return nil, false
	}
	return p.pairs(step, field, n), true
}

func (p *parser) str(step int, field string, n *yaml.Node) string {
	n = deref(n)
	if isNull(n) {
		return ""
	}
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!str" {
		hint := ""
		if n.Kind == yaml.ScalarNode {
			hint = " (quote it to make it one)"
		}
		p.unreadable(step, field, n, "must be a string, got %s%s", describe(n), hint)
		return ""
	}
	return n.Value
}

// integer reads an integer; ok is false when the value is absent or unusable.
func (p *parser) integer(step int, field string, n *yaml.Node) (v int64, ok bool) {
	n = deref(n)
	if isNull(n) {
		return 0, false
	}
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" {
		p.unreadable(step, field, n, "must be an integer, got %s", describe(n))
		return 0, false
	}
	if err := n.Decode(&v); err != nil {
		p.unreadable(step, field, n, "must be an integer between %d and %d", int64(math.MinInt64), int64(math.MaxInt64))
		return 0, false
	}
	return v, true
}

// smallInt reads an integer that must fit Go's int.
func (p *parser) smallInt(step int, field string, n *yaml.Node, dst *int) {
	v, ok := p.integer(step, field, n)
	if !ok {
		return
	}
	if v < math.MinInt || v > math.MaxInt {
		p.unreadable(step, field, n, "is out of range")
		return
	}
	*dst = int(v)
}

func (p *parser) boolean(step int, field string, n *yaml.Node, dst *bool) {
	n = deref(n)
	if isNull(n) {
		return
	}
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!bool" {
		p.unreadable(step, field, n, "must be true or false, got %s", describe(n))
		return
	}
	if err := n.Decode(dst); err != nil {
		p.unreadable(step, field, n, "must be true or false")
	}
}

// object reads a free-form mapping (metadata, batch_config).
func (p *parser) object(step int, field string, n *yaml.Node) map[string]any {
	n = deref(n)
	if isNull(n) {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		p.unreadable(step, field, n, "must be a mapping, got %s", describe(n))
		return nil
	}
	v, ok := p.value(step, field, n)
	if !ok {
		p.pos.unread[fieldRef{step, field}] = true
		return nil
	}
	m, _ := v.(map[string]any)
	return m
}

// rawJSON reads a free-form mapping as JSON. allowBool admits true and
// false, which JSON Schema accepts as schemas.
func (p *parser) rawJSON(step int, field string, n *yaml.Node, allowBool bool) json.RawMessage {
	n = deref(n)
	if isNull(n) {
		return nil
	}
	isBool := n.Kind == yaml.ScalarNode && n.ShortTag() == "!!bool"
	if n.Kind != yaml.MappingNode && !(allowBool && isBool) {
		want := "a mapping"
		if allowBool {
			want = "a mapping (a JSON Schema) or a boolean"
		}
		p.unreadable(step, field, n, "must be %s, got %s", want, describe(n))
		return nil
	}
	v, ok := p.value(step, field, n)
	if !ok {
		p.pos.unread[fieldRef{step, field}] = true
		return nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		p.unreadable(step, field, n, "cannot be expressed as JSON: %v", err)
		return nil
	}
	return b
}

// value converts a YAML subtree to the values encoding/json produces
// (map[string]any, []any, string, bool, nil and numbers), reporting
// anything JSON cannot hold.
func (p *parser) value(step int, field string, n *yaml.Node) (any, bool) {
	if n == nil || !p.spend(n) {
		return nil, false
	}
	switch n.Kind {
	case yaml.AliasNode:
		if n.Alias == nil {
			p.report(step, field, n, "alias names nothing")
			return nil, false
		}
		// Collections mark themselves while their contents are converted,
		// so an alias back to an enclosing one would never finish.
		if p.expanding[n.Alias] {
			p.report(step, field, n, "alias *%s refers to a value that contains it", n.Value)
			return nil, false
		}
		return p.value(step, field, n.Alias)
	case yaml.MappingNode:
		p.enter(n)
		defer delete(p.expanding, n)
		m := map[string]any{}
		ok := true
		for _, kv := range p.pairs(step, field, n) {
			v, vok := p.value(step, field, kv.val)
			ok = ok && vok
			m[kv.key.Value] = v
		}
		return m, ok
	case yaml.SequenceNode:
		p.enter(n)
		defer delete(p.expanding, n)
		s := make([]any, 0, len(n.Content))
		ok := true
		for _, item := range n.Content {
			v, vok := p.value(step, field, item)
			ok = ok && vok
			s = append(s, v)
		}
		return s, ok
	case yaml.ScalarNode:
		return p.scalar(step, field, n)
	}
	p.report(step, field, n, "holds an unexpected YAML node")
	return nil, false
}

func (p *parser) enter(n *yaml.Node) {
	if p.expanding == nil {
		p.expanding = map[*yaml.Node]bool{}
	}
	p.expanding[n] = true
}

func (p *parser) scalar(step int, field string, n *yaml.Node) (any, bool) {
	switch tag := n.ShortTag(); tag {
	case "!!null":
		return nil, true
	case "!!str", "!!timestamp", "!!binary":
		// Kept as written: JSON has no timestamp type, and base64 text is
		// the usual JSON spelling of binary data.
		return n.Value, true
	case "!!bool", "!!int", "!!float":
		var v any
		if err := n.Decode(&v); err != nil {
			p.report(step, field, n, "value %q is not a valid %s", n.Value, strings.TrimPrefix(tag, "!!"))
			return nil, false
		}
		switch x := v.(type) {
		case float64:
			if math.IsNaN(x) || math.IsInf(x, 0) {
				p.report(step, field, n, "value %q is not a finite number, which JSON cannot hold", n.Value)
				return nil, false
			}
		case time.Time:
			return n.Value, true
		}
		return v, true
	default:
		p.report(step, field, n, "YAML tag %s is not supported here", tag)
		return nil, false
	}
}

// template reads the top-level mapping into t.
func (p *parser) template(t *Template, root *yaml.Node) {
	t.IdentityStrategy = IdentityStrict
	const lvl = tmplLevel
	for _, kv := range p.pairs(lvl, "", root) {
		k := kv.key.Value
		switch k {
		case "name":
			t.Name = p.str(lvl, k, kv.val)
		case "namespace_name":
			t.Namespace = p.str(lvl, k, kv.val)
		case "version":
			t.Version = p.str(lvl, k, kv.val)
		case "description":
			t.Description = p.str(lvl, k, kv.val)
		case "metadata":
			t.Metadata = p.object(lvl, k, kv.val)
		case "input_schema":
			t.InputSchema = p.rawJSON(lvl, k, kv.val, true)
		case "identity_strategy":
			if s := p.str(lvl, k, kv.val); s != "" {
				t.IdentityStrategy = IdentityStrategy(s)
			}
		case "lifecycle":
			p.lifecycle(&t.Lifecycle, kv.val)
		case "steps":
			p.steps(t, kv.val)
		default:
			p.unknownField(lvl, k, kv.key, topFields)
			continue
		}
		p.pos.set(lvl, k, kv.key.Line)
	}
}

func (p *parser) lifecycle(l *Lifecycle, n *yaml.Node) {
	const lvl = tmplLevel
	entries, _ := p.mapping(lvl, "lifecycle", n)
	for _, kv := range entries {
		k := kv.key.Value
		field := "lifecycle." + k
		switch k {
		case "max_duration_minutes":
			p.smallInt(lvl, field, kv.val, &l.MaxDurationMinutes)
		case "max_steps_in_process_minutes":
			p.smallInt(lvl, field, kv.val, &l.MaxStepsInProcessMinutes)
		case "max_waiting_for_dependencies_minutes":
			p.smallInt(lvl, field, kv.val, &l.MaxWaitingForDependenciesMinutes)
		case "max_waiting_for_retry_minutes":
			p.smallInt(lvl, field, kv.val, &l.MaxWaitingForRetryMinutes)
		default:
			p.unknownField(lvl, field, kv.key, lifecycleFields)
			continue
		}
		p.pos.set(lvl, field, kv.key.Line)
	}
}

func (p *parser) steps(t *Template, n *yaml.Node) {
	n = deref(n)
	if isNull(n) {
		return
	}
	if n.Kind != yaml.SequenceNode {
		p.unreadable(tmplLevel, "steps", n, "must be a list of steps, got %s", describe(n))
		return
	}
	for _, item := range n.Content {
		if !p.spend(item) {
			return
		}
		item = deref(item)
		i := len(t.Steps)
		p.pos.addStep(item.Line)
		t.Steps = append(t.Steps, Step{Type: StepStandard, Retry: defaultRetry()})
		if item.Kind != yaml.MappingNode {
			p.unreadable(i, "", item, "must be a mapping of step fields, got %s", describe(item))
			continue
		}
		p.step(&t.Steps[i], i, item)
	}
}

func defaultRetry() Retry {
	return Retry{
		Retryable:     true,
		MaxAttempts:   DefaultMaxAttempts,
		Backoff:       BackoffExponential,
		BackoffBaseMS: DefaultBackoffBaseMS,
		MaxBackoffMS:  DefaultMaxBackoffMS,
	}
}

func (p *parser) step(s *Step, i int, n *yaml.Node) {
	for _, kv := range p.pairs(i, "", n) {
		k := kv.key.Value
		switch k {
		case "name":
			s.Name = p.str(i, k, kv.val)
		case "description":
			s.Description = p.str(i, k, kv.val)
		case "type":
			if v := p.str(i, k, kv.val); v != "" {
				s.Type = StepType(v)
			}
		case "handler":
			p.handler(&s.Handler, i, kv.val)
		case "dependencies":
			s.Dependencies = p.dependencies(i, kv.val)
		case "retry":
			p.retry(&s.Retry, i, kv.val)
		case "timeout_seconds":
			p.smallInt(i, k, kv.val, &s.TimeoutSeconds)
		case "publishes_events":
			s.PublishesEvents = p.events(i, kv.val)
		case "batch_config":
			s.BatchConfig = p.object(i, k, kv.val)
		default:
			p.unknownField(i, k, kv.key, stepFields)
			continue
		}
		p.pos.set(i, k, kv.key.Line)
	}
}

func (p *parser) handler(h *Handler, i int, n *yaml.Node) {
	entries, _ := p.mapping(i, "handler", n)
	for _, kv := range entries {
		k := kv.key.Value
		field := "handler." + k
		switch k {
		case "callable":
			h.Callable = p.str(i, field, kv.val)
		case "method":
			h.Method = p.str(i, field, kv.val)
		case "initialization":
			h.Initialization = p.rawJSON(i, field, kv.val, false)
		default:
			p.unknownField(i, field, kv.key, handlerFields)
			continue
		}
		p.pos.set(i, field, kv.key.Line)
	}
}

func (p *parser) dependencies(i int, n *yaml.Node) []string {
	n = deref(n)
	if isNull(n) {
		return nil
	}
	if n.Kind != yaml.SequenceNode {
		p.unreadable(i, "dependencies", n, "must be a list of step names, got %s", describe(n))
		return nil
	}
	var deps []string
	for j, item := range n.Content {
		if !p.spend(item) {
			break
		}
		field := fmt.Sprintf("dependencies[%d]", j)
		p.pos.set(i, field, item.Line)
		if d := p.str(i, field, item); d != "" {
			deps = append(deps, d)
		}
	}
	return deps
}

func (p *parser) retry(r *Retry, i int, n *yaml.Node) {
	entries, _ := p.mapping(i, "retry", n)
	baseGiven, maxGiven := false, false
	for _, kv := range entries {
		k := kv.key.Value
		field := "retry." + k
		switch k {
		case "retryable":
			p.boolean(i, field, kv.val, &r.Retryable)
		case "max_attempts":
			p.smallInt(i, field, kv.val, &r.MaxAttempts)
		case "backoff":
			if v := p.str(i, field, kv.val); v != "" {
				r.Backoff = Backoff(v)
			}
		case "backoff_base_ms":
			if v, ok := p.integer(i, field, kv.val); ok {
				r.BackoffBaseMS, baseGiven = v, true
			}
		case "max_backoff_ms":
			if v, ok := p.integer(i, field, kv.val); ok {
				r.MaxBackoffMS, maxGiven = v, true
			}
		default:
			p.unknownField(i, field, kv.key, retryFields)
			continue
		}
		p.pos.set(i, field, kv.key.Line)
	}
	// A base delay above the default cap would otherwise be silently cut
	// down to the cap; raise the default cap instead.
	if baseGiven && !maxGiven && r.BackoffBaseMS > r.MaxBackoffMS {
		r.MaxBackoffMS = r.BackoffBaseMS
	}
}

func (p *parser) events(i int, n *yaml.Node) []EventDecl {
	n = deref(n)
	if isNull(n) {
		return nil
	}
	if n.Kind != yaml.SequenceNode {
		p.unreadable(i, "publishes_events", n, "must be a list of events, got %s", describe(n))
		return nil
	}
	var out []EventDecl
	for j, item := range n.Content {
		if !p.spend(item) {
			break
		}
		prefix := fmt.Sprintf("publishes_events[%d]", j)
		p.pos.set(i, prefix, item.Line)
		ev := EventDecl{Condition: EventOnSuccess, DeliveryMode: DeliveryDurable}
		entries, ok := p.mapping(i, prefix, item)
		if !ok {
			out = append(out, ev)
			continue
		}
		for _, kv := range entries {
			k := kv.key.Value
			field := prefix + "." + k
			switch k {
			case "name":
				ev.Name = p.str(i, field, kv.val)
			case "condition":
				if v := p.str(i, field, kv.val); v != "" {
					ev.Condition = v
				}
			case "delivery_mode":
				if v := p.str(i, field, kv.val); v != "" {
					ev.DeliveryMode = v
				}
			case "schema":
				ev.Schema = p.rawJSON(i, field, kv.val, true)
			case "publisher":
				ev.Publisher = p.str(i, field, kv.val)
			default:
				p.unknownField(i, field, kv.key, eventFields)
				continue
			}
			p.pos.set(i, field, kv.key.Line)
		}
		out = append(out, ev)
	}
	return out
}

// Keys each mapping accepts, for suggesting a fix when a key is misspelt.
var (
	topFields       = []string{"name", "namespace_name", "version", "description", "metadata", "input_schema", "identity_strategy", "lifecycle", "steps"}
	lifecycleFields = []string{"max_duration_minutes", "max_steps_in_process_minutes", "max_waiting_for_dependencies_minutes", "max_waiting_for_retry_minutes"}
	stepFields      = []string{"name", "description", "type", "handler", "dependencies", "retry", "timeout_seconds", "publishes_events", "batch_config"}
	handlerFields   = []string{"callable", "method", "initialization"}
	retryFields     = []string{"retryable", "max_attempts", "backoff", "backoff_base_ms", "max_backoff_ms"}
	eventFields     = []string{"name", "condition", "delivery_mode", "schema", "publisher"}
)

// unknownField reports a key the format does not define, suggesting the
// known key it most likely misspells.
func (p *parser) unknownField(step int, field string, key *yaml.Node, known []string) {
	best, bestDist := "", 3 // suggest only close matches
	for _, k := range known {
		if d := editDistance(key.Value, k); d < bestDist {
			best, bestDist = k, d
		}
	}
	if best != "" {
		p.report(step, field, key, "unknown field %q (did you mean %q?)", key.Value, best)
		return
	}
	p.report(step, field, key, "unknown field %q", key.Value)
}

// editDistance is the Levenshtein distance between a and b, in bytes.
func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return max(len(a), len(b))
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
