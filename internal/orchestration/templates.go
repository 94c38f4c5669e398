package orchestration

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/tasker-go/tasker/store"
	"github.com/tasker-go/tasker/template"
)

// ErrTemplateNotFound is returned when no template matches a
// namespace/name/version.
var ErrTemplateNotFound = errors.New("task template not found")

// Templates is a read-through cache of parsed templates. Versions are
// immutable, so a cached version never goes stale; a template registered by
// another process is loaded on first use.
type Templates struct {
	d  store.Driver
	mu sync.RWMutex
	m  map[string]*template.Template

	// Check, if set, adds problems that only the engine can see (say, a
	// publisher name that is not registered) before a template is stored.
	Check func(*template.Template) []template.Problem
}

// NewTemplates returns an empty cache over d.
func NewTemplates(d store.Driver) *Templates {
	return &Templates{d: d, m: map[string]*template.Template{}}
}

// Register parses and validates doc and stores it. The same content again
// is a no-op; other content under an existing version is an error.
func (c *Templates) Register(ctx context.Context, doc []byte) (*template.Template, error) {
	t, err := ParseTemplate(doc)
	if err != nil {
		return nil, err
	}
	if c.Check != nil {
		if problems := c.Check(t); len(problems) > 0 {
			return nil, &template.ValidationError{Problems: problems}
		}
	}
	tx, err := c.d.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("register template %s: %w", t.Key(), err)
	}
	defer tx.Rollback()
	if _, err := tx.TemplateUpsert(ctx, store.TemplateUpsertParams{
		Namespace: t.Namespace, Name: t.Name, Version: t.Version, ContentHash: t.ContentHash, Source: t.Source,
	}); err != nil {
		if errors.Is(err, store.ErrTemplateConflict) {
			return nil, fmt.Errorf("register template %s: version %s is already registered with different content (versions are immutable; register a new version): %w",
				t.Key(), t.Version, err)
		}
		return nil, fmt.Errorf("register template %s: %w", t.Key(), err)
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("register template %s: %w", t.Key(), err)
	}
	c.mu.Lock()
	if _, ok := c.m[t.Key()]; !ok {
		c.m[t.Key()] = t
	}
	c.mu.Unlock()
	return t, nil
}

// ParseTemplate parses and validates a template the way Register does,
// without storing it.
func ParseTemplate(doc []byte) (*template.Template, error) {
	t, err := template.Parse(doc)
	if err != nil {
		return nil, err
	}
	if err := checkSupported(t); err != nil {
		return nil, err
	}
	return t, nil
}

// checkSupported refuses templates that use step kinds this engine parses
// but does not execute yet, so that no field is accepted and then ignored.
func checkSupported(t *template.Template) error {
	var problems []template.Problem
	for _, s := range t.Steps {
		if s.Type != template.StepStandard && s.Type != "" {
			problems = append(problems, template.Problem{Template: t.Key(), Step: s.Name, Field: "type",
				Message: fmt.Sprintf("step type %q is not supported by this engine yet (only %q)", s.Type, template.StepStandard)})
		}
		if len(s.BatchConfig) > 0 {
			problems = append(problems, template.Problem{Template: t.Key(), Step: s.Name, Field: "batch_config",
				Message: "batch_config is not supported by this engine yet"})
		}
	}
	if len(problems) > 0 {
		return &template.ValidationError{Problems: problems}
	}
	return nil
}

// Get returns the template for namespace/name/version. An empty version
// selects the highest registered version.
func (c *Templates) Get(ctx context.Context, namespace, name, version string) (*template.Template, error) {
	if version == "" {
		rows, err := c.d.Reader().TemplateList(ctx, store.TemplateListParams{Namespace: namespace, Name: name})
		if err != nil {
			return nil, fmt.Errorf("look up template %s/%s: %w", namespace, name, err)
		}
		for _, r := range rows {
			if version == "" || compareVersions(r.Version, version) > 0 {
				version = r.Version
			}
		}
		if version == "" {
			return nil, fmt.Errorf("%w: %s/%s (no version registered)", ErrTemplateNotFound, namespace, name)
		}
	}
	key := namespace + "/" + name + "/" + version
	c.mu.RLock()
	t, ok := c.m[key]
	c.mu.RUnlock()
	if ok {
		return t, nil
	}
	row, err := c.d.Reader().TemplateGet(ctx, store.TemplateGetParams{Namespace: namespace, Name: name, Version: version})
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("%w: %s", ErrTemplateNotFound, key)
	}
	if err != nil {
		return nil, fmt.Errorf("look up template %s: %w", key, err)
	}
	t, err = template.Parse(row.Source)
	if err != nil {
		return nil, fmt.Errorf("stored template %s no longer parses: %w", key, err)
	}
	c.mu.Lock()
	c.m[key] = t
	c.mu.Unlock()
	return t, nil
}

// Loaded returns the templates in the cache.
func (c *Templates) Loaded() []*template.Template {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make([]*template.Template, 0, len(c.m))
	for _, t := range c.m {
		out = append(out, t)
	}
	return out
}

// compareVersions orders MAJOR.MINOR.PATCH[-pre] versions; a prerelease
// sorts before its release.
func compareVersions(a, b string) int {
	ac, ap, _ := strings.Cut(a, "-")
	bc, bp, _ := strings.Cut(b, "-")
	as, bs := strings.Split(ac, "."), strings.Split(bc, ".")
	for i := 0; i < len(as) && i < len(bs); i++ {
		x, _ := strconv.Atoi(as[i])
		y, _ := strconv.Atoi(bs[i])
		if x != y {
			if x < y {
				return -1
			}
			return 1
		}
	}
	switch {
	case ap == bp:
		return 0
	case ap == "":
		return 1
	case bp == "":
		return -1
	}
	return strings.Compare(ap, bp)
}
