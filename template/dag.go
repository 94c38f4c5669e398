package template

import (
	"slices"
)

// graph is the step dependency graph by step index. Edges that cannot be
// followed (unknown names, self-dependencies, repeats) are left out; the
// validator reports those separately. A name declared twice resolves to its
// first declaration.
type graph struct {
	index    map[string]int
	deps     [][]int // deps[i]: steps i depends on, in declared order
	children [][]int // children[i]: steps depending on i, in declaration order
}

func newGraph(t *Template) *graph {
	n := len(t.Steps)
	g := &graph{
		index:    make(map[string]int, n),
		deps:     make([][]int, n),
		children: make([][]int, n),
	}
	for i := range t.Steps {
		if _, dup := g.index[t.Steps[i].Name]; !dup {
			g.index[t.Steps[i].Name] = i
		}
	}
	for i := range t.Steps {
		for _, d := range t.Steps[i].Dependencies {
			j, ok := g.index[d]
			if !ok || j == i || slices.Contains(g.deps[i], j) {
				continue
			}
			g.deps[i] = append(g.deps[i], j)
			g.children[j] = append(g.children[j], i)
		}
	}
	return g
}

// topo returns every step index, each after all of its dependencies; among
// steps that are free to go next, the one declared first goes first. Steps
// caught in a cycle cannot be ordered and come last, in declaration order.
func (g *graph) topo() []int {
	n := len(g.deps)
	waiting := make([]int, n)
	var ready []int // kept sorted, so ready[0] is the earliest declared
	for i := range n {
		waiting[i] = len(g.deps[i])
		if waiting[i] == 0 {
			ready = append(ready, i)
		}
	}
	order := make([]int, 0, n)
	placed := make([]bool, n)
	for len(ready) > 0 {
		v := ready[0]
		ready = ready[1:]
		order = append(order, v)
		placed[v] = true
		for _, c := range g.children[v] {
			waiting[c]--
			if waiting[c] == 0 {
				at, _ := slices.BinarySearch(ready, c)
				ready = slices.Insert(ready, at, c)
			}
		}
	}
	for i := range n {
		if !placed[i] {
			order = append(order, i)
		}
	}
	return order
}

// cyclicComponents returns the strongly connected components that contain a
// cycle (more than one step; self-dependencies are not edges here), each
// sorted, ordered by their earliest-declared step. It is Tarjan's algorithm
// with an explicit stack so that long dependency chains cannot exhaust the
// goroutine stack.
func (g *graph) cyclicComponents() [][]int {
	n := len(g.deps)
	index := make([]int, n)
	low := make([]int, n)
	onStack := make([]bool, n)
	for i := range index {
		index[i] = -1
	}
	var (
		stack   []int
		comps   [][]int
		counter int
	)
	type frame struct{ v, next int }
	visit := func(v int) {
		index[v], low[v] = counter, counter
		counter++
		stack = append(stack, v)
		onStack[v] = true
	}
	for s := range n {
		if index[s] != -1 {
			continue
		}
		visit(s)
		calls := []frame{{v: s}}
		for len(calls) > 0 {
			top := len(calls) - 1
			v := calls[top].v
			if next := calls[top].next; next < len(g.deps[v]) {
				calls[top].next++
				w := g.deps[v][next]
				if index[w] == -1 {
					visit(w)
					calls = append(calls, frame{v: w})
				} else if onStack[w] {
					low[v] = min(low[v], index[w])
				}
				continue
			}
			calls = calls[:top]
			if top > 0 {
				u := calls[top-1].v
				low[u] = min(low[u], low[v])
			}
			if low[v] != index[v] {
				continue
			}
			var comp []int
			for {
				w := stack[len(stack)-1]
				stack = stack[:len(stack)-1]
				onStack[w] = false
				comp = append(comp, w)
				if w == v {
					break
				}
			}
			if len(comp) > 1 {
				slices.Sort(comp)
				comps = append(comps, comp)
			}
		}
	}
	slices.SortFunc(comps, func(a, b []int) int { return a[0] - b[0] })
	return comps
}

// cycleThrough returns a shortest cycle through the first step of comp, as
// a path that starts and ends at that step and follows dependency edges.
func (g *graph) cycleThrough(comp []int) []int {
	start := comp[0]
	inComp := make(map[int]bool, len(comp))
	for _, v := range comp {
		inComp[v] = true
	}
	prev := map[int]int{start: -1}
	queue := []int{start}
	for len(queue) > 0 {
		v := queue[0]
		queue = queue[1:]
		for _, w := range g.deps[v] {
			if w == start {
				var path []int
				for u := v; u != -1; u = prev[u] {
					path = append(path, u)
				}
				slices.Reverse(path)
				return append(path, start)
			}
			if _, seen := prev[w]; seen || !inComp[w] {
				continue
			}
			prev[w] = v
			queue = append(queue, w)
		}
	}
	// Unreachable for a strongly connected component; keep the result
	// well-formed regardless.
	return []int{start, start}
}

func (t *Template) names(idx []int) []string {
	if len(idx) == 0 {
		return nil
	}
	out := make([]string, len(idx))
	for k, i := range idx {
		out[k] = t.Steps[i].Name
	}
	return out
}

// Parents returns the direct dependencies of step, in declared order, or nil
// for an unknown step.
func (t *Template) Parents(step string) []string {
	s, ok := t.Step(step)
	if !ok {
		return nil
	}
	return slices.Clone(s.Dependencies)
}

// Children returns the steps that depend directly on step, in declaration
// order.
func (t *Template) Children(step string) []string {
	g := newGraph(t)
	i, ok := g.index[step]
	if !ok {
		return nil
	}
	return t.names(g.children[i])
}

// Ancestors returns every step that step depends on, directly or through
// other steps, in [Template.TopologicalOrder].
func (t *Template) Ancestors(step string) []string {
	g := newGraph(t)
	i, ok := g.index[step]
	if !ok {
		return nil
	}
	reached := make([]bool, len(t.Steps))
	queue := []int{i}
	for len(queue) > 0 {
		v := queue[0]
		queue = queue[1:]
		for _, d := range g.deps[v] {
			if !reached[d] {
				reached[d] = true
				queue = append(queue, d)
			}
		}
	}
	var out []int
	for _, v := range g.topo() {
		if reached[v] && v != i {
			out = append(out, v)
		}
	}
	return t.names(out)
}

// Roots returns the steps without dependencies, in declaration order.
func (t *Template) Roots() []string {
	var out []string
	for i := range t.Steps {
		if len(t.Steps[i].Dependencies) == 0 {
			out = append(out, t.Steps[i].Name)
		}
	}
	return out
}

// TopologicalOrder returns every step name, each after all of its
// dependencies. The order is deterministic: whenever several steps could go
// next, the one declared first does. (On a template that fails validation
// because of a cycle, the steps that cannot be ordered come last.)
func (t *Template) TopologicalOrder() []string {
	return t.names(newGraph(t).topo())
}
