package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// shape is a workflow's form, which both engines build: a chain of steps
// (chain > 0) or a root that fans out to fan children joined by one last
// step (fan > 0). diamond4 is the fan-out of two.
type shape struct {
	name  string
	chain int
	fan   int
}

var (
	shapeSingle    = shape{name: "single", chain: 1}
	shapeLinear4   = shape{name: "linear4", chain: 4}
	shapeDiamond4  = shape{name: "diamond4", fan: 2}
	shapeFanout10k = shape{name: "fanout10k", fan: 10000}
)

// steps is how many steps one workflow of the shape runs.
func (s shape) steps() int {
	if s.fan > 0 {
		return s.fan + 2
	}
	return s.chain
}

// terminal is the Tasker step name whose completion ends the workflow.
func (s shape) terminal() string {
	if s.fan > 0 {
		return "join"
	}
	return "s" + strconv.Itoa(s.chain)
}

// yaml is the shape's Tasker template.
func (s shape) yaml() string {
	if s.fan > 0 {
		return fanYAML(s.name, s.fan)
	}
	return chainYAML(s.name, s.chain)
}

func chainYAML(name string, steps int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "name: %s\nnamespace_name: bench\nversion: 1.0.0\nidentity_strategy: always_unique\nsteps:\n", name)
	for i := 1; i <= steps; i++ {
		fmt.Fprintf(&b, "  - name: s%d\n    handler: {callable: bench.noop}\n", i)
		if i > 1 {
			fmt.Fprintf(&b, "    dependencies: [s%d]\n", i-1)
		}
	}
	return b.String()
}

// fanYAML is a template with one root, n children of the root and a join
// that depends on every child: n+2 steps.
func fanYAML(name string, n int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "name: %s\nnamespace_name: bench\nversion: 1.0.0\nidentity_strategy: always_unique\nsteps:\n", name)
	b.WriteString("  - name: root\n    handler: {callable: bench.noop}\n")
	deps := make([]string, n)
	for i := 1; i <= n; i++ {
		deps[i-1] = "c" + strconv.Itoa(i)
		fmt.Fprintf(&b, "  - name: c%d\n    handler: {callable: bench.noop}\n    dependencies: [root]\n", i)
	}
	fmt.Fprintf(&b, "  - name: join\n    handler: {callable: bench.noop}\n    dependencies: [%s]\n", strings.Join(deps, ", "))
	return b.String()
}

var diamond4YAML = fanYAML("diamond4", 2)

func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted)-1) * p)
	return sorted[i]
}

// peakRSSMB reads VmHWM, the peak resident set size, from /proc.
func peakRSSMB() float64 { return procStatusMB("VmHWM:") }

// rssMB reads VmRSS, the current resident set size, from /proc.
func rssMB() float64 { return procStatusMB("VmRSS:") }

func procStatusMB(field string) float64 {
	raw, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if strings.HasPrefix(line, field) {
			f := strings.Fields(line)
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return -1
}
