package storetest

import (
	"fmt"
	"slices"
	"time"

	"github.com/tasker-go/tasker/store"
)

// The Querier cases join the suite here so that they live beside the
// helpers they use.
func init() {
	cases = append(cases, []struct {
		name string
		run  func(s *suite)
	}{
		{"TaskPageFilters", testTaskPageFilters},
		{"TaskPageCursor", testTaskPageCursor},
		{"StateCounts", testStateCounts},
		{"PingAndMigrations", testPingAndMigrations},
		{"PoolStats", testPoolStats},
	}...)
}

func (s *suite) taskPage(p store.TaskPageParams) []string {
	s.t.Helper()
	rows, err := s.d.TaskPage(s.ctx, p)
	if err != nil {
		s.t.Fatalf("TaskPage %+v: %v", p, err)
	}
	var out []string
	for _, r := range rows {
		out = append(out, r.UUID)
	}
	return out
}

func testTaskPageFilters(s *suite) {
	mk := func(ns, name, state string, sec int) string {
		return s.newTask(store.TaskInsertParams{Namespace: ns, Name: name, State: state, Now: at(time.Duration(sec) * time.Second)})
	}
	t1 := mk("ns1", "alpha", "pending", 0)
	t2 := mk("ns1", "alpha", "complete", 1)
	t3 := mk("ns1", "beta", "pending", 2)
	t4 := mk("ns2", "alpha", "error", 3)
	t5 := mk("ns1", "alpha", "steps_in_process", 4)
	for _, c := range []struct {
		p    store.TaskPageParams
		want []string
	}{
		{store.TaskPageParams{}, []string{t5, t4, t3, t2, t1}},
		{store.TaskPageParams{Namespace: "ns1", Name: "alpha"}, []string{t5, t2, t1}},
		{store.TaskPageParams{States: []string{"pending", "error"}}, []string{t4, t3, t1}},
		{store.TaskPageParams{CreatedAfter: at(1 * time.Second)}, []string{t5, t4, t3}},
		{store.TaskPageParams{CreatedBefore: at(3 * time.Second)}, []string{t3, t2, t1}},
		{store.TaskPageParams{CreatedAfter: at(0), CreatedBefore: at(4 * time.Second)}, []string{t4, t3, t2}},
		{store.TaskPageParams{Limit: 2}, []string{t5, t4}},
		{store.TaskPageParams{Namespace: "none"}, nil},
	} {
		s.wantStrings(fmt.Sprintf("TaskPage %+v", c.p), s.taskPage(c.p), c.want)
	}
}

// testTaskPageCursor walks a list page by page, with tasks that share a
// creation time, and expects every task exactly once, in order.
func testTaskPageCursor(s *suite) {
	var want []string
	for i := range 7 {
		// Pairs share a timestamp so the UUID tie-break is exercised.
		want = append(want, s.newTask(store.TaskInsertParams{Now: at(time.Duration(i/2) * time.Second)}))
	}
	rows, err := s.d.TaskPage(s.ctx, store.TaskPageParams{Limit: 100})
	if err != nil {
		s.t.Fatal(err)
	}
	var all []string
	for _, r := range rows {
		all = append(all, r.UUID)
	}
	if len(all) != len(want) {
		s.t.Fatalf("TaskPage returned %d tasks, want %d", len(all), len(want))
	}
	for i := 1; i < len(rows); i++ {
		a, b := rows[i-1], rows[i]
		if a.CreatedAt.Before(b.CreatedAt) || (a.CreatedAt.Equal(b.CreatedAt) && a.UUID < b.UUID) {
			s.t.Fatalf("TaskPage order: %s (%s) before %s (%s)", a.UUID, a.CreatedAt, b.UUID, b.CreatedAt)
		}
	}
	var paged []string
	var after *store.TaskCursor
	for range 10 {
		rows, err := s.d.TaskPage(s.ctx, store.TaskPageParams{Limit: 3, After: after})
		if err != nil {
			s.t.Fatal(err)
		}
		for _, r := range rows {
			paged = append(paged, r.UUID)
		}
		if len(rows) < 3 {
			break
		}
		last := rows[len(rows)-1]
		after = &store.TaskCursor{CreatedAt: last.CreatedAt, UUID: last.UUID}
	}
	s.wantStrings("TaskPage pages", paged, all)
}

func testStateCounts(s *suite) {
	a := s.newTask(store.TaskInsertParams{Namespace: "ns1", State: "pending"})
	s.newTask(store.TaskInsertParams{Namespace: "ns1", State: "pending"})
	s.newTask(store.TaskInsertParams{Namespace: "ns2", State: "complete"})
	steps := s.newSteps(a, "ns1", "x", "y", "z")
	s.enqueueSteps(a, "ns1", steps[:1], at(time.Second))
	rows, err := s.d.StateCounts(s.ctx, store.StateCountsParams{})
	if err != nil {
		s.t.Fatal(err)
	}
	got := map[string]int64{}
	for _, r := range rows {
		got[r.Kind+"/"+r.Namespace+"/"+r.State] = r.Count
	}
	want := map[string]int64{
		"task/ns1/pending": 2, "task/ns2/complete": 1,
		"step/ns1/pending": 2, "step/ns1/enqueued": 1,
	}
	if len(got) != len(want) {
		s.t.Errorf("StateCounts = %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			s.t.Errorf("StateCounts[%s] = %d, want %d (all: %v)", k, got[k], v, got)
		}
	}
}

func testPingAndMigrations(s *suite) {
	if err := s.d.Ping(s.ctx); err != nil {
		s.t.Errorf("Ping: %v", err)
	}
	current, err := s.d.MigrationsCurrent(s.ctx)
	if err != nil || !current {
		s.t.Errorf("MigrationsCurrent on a migrated store = %v, %v; want true, nil", current, err)
	}
}

func testPoolStats(s *suite) {
	if err := s.d.Ping(s.ctx); err != nil {
		s.t.Fatalf("Ping: %v", err)
	}
	stats := s.d.PoolStats()
	if len(stats) == 0 {
		s.t.Fatal("PoolStats returned no pools")
	}
	var names []string
	for _, p := range stats {
		if p.Pool == "" || p.Open < 0 || p.InUse < 0 || p.Idle < 0 || p.InUse+p.Idle > p.Open {
			s.t.Errorf("PoolStats row %+v is inconsistent", p)
		}
		names = append(names, p.Pool)
	}
	if distinct := slices.Compact(slices.Sorted(slices.Values(names))); len(distinct) != len(stats) {
		s.t.Errorf("PoolStats pool names %v are not distinct", names)
	}
}
