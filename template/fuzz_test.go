package template

import (
	"encoding/json"
	"errors"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

func FuzzParse(f *testing.F) {
	full, err := os.ReadFile("testdata/full.yaml")
	if err != nil {
		f.Fatal(err)
	}
	for _, seed := range []string{
		string(full), validBase, diamondDoc, treeDoc, hashBase, contextDoc,
		"", "- a\n", "name: x\n  bad: [\n", "a: &a [*a]\n", "<<: {name: x}\n",
		"name: a\nnamespace_name: b\nversion: 1.0.0\nsteps:\n  - &s {name: s, handler: {callable: c}, dependencies: [s]}\n  - *s\n",
		"metadata: &m {x: [*m]}\n",
		"retry: &r {<<: [*r, *r]}\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, doc []byte) {
		var (
			tmpl *Template
			err  error
		)
		done := make(chan struct{})
		go func() {
			defer close(done)
			tmpl, err = Parse(doc)
		}()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatalf("Parse did not finish within 5s")
		}
		if err != nil {
			var verr *ValidationError
			if !errors.As(err, &verr) || len(verr.Problems) == 0 || !errors.Is(err, ErrInvalidTemplate) {
				t.Fatalf("Parse error %T %v, want a *ValidationError with problems", err, err)
			}
			_ = err.Error()
			return
		}
		if err := tmpl.Validate(); err != nil {
			t.Fatalf("Validate on a parsed template: %v", err)
		}
		order := tmpl.TopologicalOrder()
		if len(order) != len(tmpl.Steps) {
			t.Fatalf("TopologicalOrder has %d steps, template %d", len(order), len(tmpl.Steps))
		}
		for i, name := range order {
			for _, dep := range tmpl.Parents(name) {
				if !slices.Contains(order[:i], dep) {
					t.Fatalf("step %q ordered before its dependency %q", name, dep)
				}
			}
		}
		if _, err := json.Marshal(tmpl); err != nil {
			t.Fatalf("marshal parsed template: %v", err)
		}
		again, err := Parse(tmpl.Source)
		if err != nil || again.ContentHash != tmpl.ContentHash {
			t.Fatalf("reparse: hash %v / %v, err %v", again, tmpl.ContentHash, err)
		}
		_ = tmpl.ValidateContext(json.RawMessage(`{"a": 1}`))
	})
}

func TestParseBoundsAliasExpansion(t *testing.T) {
	t.Parallel()
	// Each level names the previous one ten times: 10^9 leaves if expanded.
	var b strings.Builder
	b.WriteString("name: bomb\nnamespace_name: demo\nversion: 1.0.0\nmetadata:\n  l0: &l0 [x, x, x, x, x, x, x, x, x, x]\n")
	for i := 1; i <= 9; i++ {
		b.WriteString("  l" + string(rune('0'+i)) + ": &l" + string(rune('0'+i)) + " [")
		for j := range 10 {
			if j > 0 {
				b.WriteString(", ")
			}
			b.WriteString("*l" + string(rune('0'+i-1)))
		}
		b.WriteString("]\n")
	}
	b.WriteString("steps:\n  - name: s\n    handler: {callable: c}\n")
	problems := parseProblems(t, b.String())
	found := false
	for _, p := range problems {
		found = found || strings.Contains(p.Message, "aliases expand too far")
	}
	if !found {
		t.Errorf("no problem about alias expansion in %v", problems)
	}
}
