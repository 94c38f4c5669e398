package template

import (
	"reflect"
	"testing"
)

// diamond: start -> (left, right) -> join, declared with join before its
// parents so that declaration order and dependency order differ.
const diamondDoc = `name: diamond
namespace_name: demo
version: 1.0.0
steps:
  - name: join
    handler: {callable: c}
    dependencies: [right, left]
  - name: right
    handler: {callable: c}
    dependencies: [start]
  - name: start
    handler: {callable: c}
  - name: left
    handler: {callable: c}
    dependencies: [start]
`

// tree: two roots; a has children b and c; c has child d; e stands alone.
const treeDoc = `name: tree
namespace_name: demo
version: 1.0.0
steps:
  - name: a
    handler: {callable: c}
  - name: b
    handler: {callable: c}
    dependencies: [a]
  - name: c
    handler: {callable: c}
    dependencies: [a]
  - name: d
    handler: {callable: c}
    dependencies: [c]
  - name: e
    handler: {callable: c}
`

func TestGraphQueries(t *testing.T) {
	t.Parallel()
	diamond := mustParse(t, diamondDoc)
	tree := mustParse(t, treeDoc)
	cases := []struct {
		name string
		got  []string
		want []string
	}{
		{"diamond roots", diamond.Roots(), []string{"start"}},
		{"diamond order", diamond.TopologicalOrder(), []string{"start", "right", "left", "join"}},
		{"diamond parents of join", diamond.Parents("join"), []string{"right", "left"}},
		{"diamond parents of start", diamond.Parents("start"), nil},
		{"diamond children of start", diamond.Children("start"), []string{"right", "left"}},
		{"diamond children of join", diamond.Children("join"), nil},
		{"diamond ancestors of join", diamond.Ancestors("join"), []string{"start", "right", "left"}},
		{"diamond ancestors of left", diamond.Ancestors("left"), []string{"start"}},
		{"diamond ancestors of start", diamond.Ancestors("start"), nil},
		{"diamond unknown step", diamond.Parents("nope"), nil},
		{"diamond unknown children", diamond.Children("nope"), nil},
		{"diamond unknown ancestors", diamond.Ancestors("nope"), nil},

		{"tree roots", tree.Roots(), []string{"a", "e"}},
		{"tree order", tree.TopologicalOrder(), []string{"a", "b", "c", "d", "e"}},
		{"tree parents of d", tree.Parents("d"), []string{"c"}},
		{"tree children of a", tree.Children("a"), []string{"b", "c"}},
		{"tree children of c", tree.Children("c"), []string{"d"}},
		{"tree ancestors of d", tree.Ancestors("d"), []string{"a", "c"}},
		{"tree ancestors of e", tree.Ancestors("e"), nil},
	}
	for _, tc := range cases {
		if !reflect.DeepEqual(tc.got, tc.want) {
			t.Errorf("%s = %q, want %q", tc.name, tc.got, tc.want)
		}
	}
}

func TestParentsReturnsACopy(t *testing.T) {
	t.Parallel()
	tmpl := mustParse(t, diamondDoc)
	tmpl.Parents("join")[0] = "changed"
	if got := tmpl.Parents("join"); got[0] != "right" {
		t.Errorf("Parents exposed the template's own slice: %q", got)
	}
}

func TestTopologicalOrderIsStableUnderDeclarationOrder(t *testing.T) {
	t.Parallel()
	// Steps free to run at the same time keep their declared order, at
	// every level of the graph.
	tmpl := &Template{Steps: []Step{
		{Name: "z"},
		{Name: "y", Dependencies: []string{"x"}},
		{Name: "x"},
		{Name: "w", Dependencies: []string{"z"}},
		{Name: "v", Dependencies: []string{"y", "w"}},
	}}
	want := []string{"z", "x", "y", "w", "v"}
	for range 5 {
		if got := tmpl.TopologicalOrder(); !reflect.DeepEqual(got, want) {
			t.Fatalf("TopologicalOrder = %q, want %q", got, want)
		}
	}
}

func TestTopologicalOrderOnCycleKeepsEveryStep(t *testing.T) {
	t.Parallel()
	tmpl := &Template{Steps: []Step{
		{Name: "a", Dependencies: []string{"c"}},
		{Name: "b"},
		{Name: "c", Dependencies: []string{"a"}},
	}}
	if got, want := tmpl.TopologicalOrder(), []string{"b", "a", "c"}; !reflect.DeepEqual(got, want) {
		t.Errorf("TopologicalOrder = %q, want %q", got, want)
	}
}
