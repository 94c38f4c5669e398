package events

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tasker-go/tasker/internal/chanmon"
	"github.com/tasker-go/tasker/store"
	"github.com/tasker-go/tasker/store/sqlite"
	"github.com/tasker-go/tasker/template"
)

// waitBudget bounds every wait; generous because tests assert outcomes,
// not speed.
const waitBudget = 20 * time.Second

// relayTemplate has two steps, each publishing one broadcast event.
const relayTemplate = `
name: relay
namespace_name: shop
version: 1.0.0
steps:
  - name: order
    handler: {callable: shop.order}
    publishes_events:
      - {name: order.created, delivery_mode: broadcast}
  - name: user
    handler: {callable: shop.user}
    publishes_events:
      - {name: user.signed_up, delivery_mode: broadcast}
`

func openDriver(t testing.TB, path string) *sqlite.Driver {
	t.Helper()
	d, err := sqlite.Open(context.Background(), sqlite.Config{Path: path})
	if err != nil {
		t.Fatalf("open sqlite: %v", err)
	}
	t.Cleanup(func() { _ = d.Close() })
	if err := d.Migrate(context.Background()); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	return d
}

// fixture is a service on a SQLite file of its own.
type fixture struct {
	t    *testing.T
	path string
	d    *sqlite.Driver
	tmpl *template.Template
	logs *logBuffer
	seq  int
}

func newFixture(t *testing.T) *fixture {
	path := filepath.Join(t.TempDir(), "events.db")
	return &fixture{t: t, path: path, d: openDriver(t, path), tmpl: parseTemplate(t, relayTemplate)}
}

// service returns a stopped service over the fixture's store; it is
// stopped when the test ends.
func (f *fixture) service(cfg Config) *Service {
	log, logs := newLogger()
	f.logs = logs
	if cfg.Logger == nil {
		cfg.Logger = log
	}
	if cfg.PollInterval == 0 {
		cfg.PollInterval = 50 * time.Millisecond
	}
	s := NewService(f.d, NewBuilder(cfg.Logger, time.Second), cfg)
	f.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitBudget)
		defer cancel()
		if err := s.Stop(ctx); err != nil {
			f.t.Errorf("Stop: %v", err)
		}
	})
	return s
}

func (f *fixture) start(s *Service) {
	f.t.Helper()
	if err := s.Start(context.Background()); err != nil {
		f.t.Fatalf("Start: %v", err)
	}
}

func (f *fixture) subscribe(s *Service, name, pattern string, fn Handler) {
	f.t.Helper()
	if err := s.Subscribe(name, pattern, fn); err != nil {
		f.t.Fatalf("Subscribe(%s, %s): %v", name, pattern, err)
	}
}

// stepOutcome is a successful outcome of one of relayTemplate's steps.
func (f *fixture) stepOutcome(step string, at time.Time) StepOutcome {
	f.seq++
	return StepOutcome{
		Template: f.tmpl, StepName: step, TaskUUID: fmt.Sprintf("task-%d", f.seq), StepUUID: fmt.Sprintf("step-%d", f.seq),
		Context: json.RawMessage(`{}`), Attempt: 1, Outcome: OutcomeSuccess,
		Result: json.RawMessage(fmt.Sprintf(`{"n":%d}`, f.seq)), At: at,
	}
}

// commit writes the durable events of one outcome per step, each in its
// own transaction, as the orchestrator does, then wakes the relays.
func (f *fixture) commit(s *Service, at time.Time, steps ...string) {
	f.t.Helper()
	for _, step := range steps {
		o := f.stepOutcome(step, at)
		err := store.InTx(context.Background(), f.d, func(tx store.Tx) error {
			n, err := s.Outbox(context.Background(), tx, o)
			if err == nil && n != 1 {
				err = fmt.Errorf("wrote %d events, want 1", n)
			}
			return err
		})
		if err != nil {
			f.t.Fatalf("outbox %s: %v", step, err)
		}
	}
	s.WakeRelays()
}

// fast builds the fast events of one outcome per step.
func (f *fixture) fast(s *Service, steps ...string) []*Event {
	var out []*Event
	for _, step := range steps {
		out = append(out, s.Build(context.Background(), f.stepOutcome(step, time.Now()))...)
	}
	return out
}

func (f *fixture) stream(s *Service) []*Event {
	f.t.Helper()
	evs, err := s.Read(context.Background(), 0, 1000)
	if err != nil {
		f.t.Fatalf("Read: %v", err)
	}
	return evs
}

func (f *fixture) cursor(name string) int64 {
	f.t.Helper()
	pos, err := f.d.Reader().EventCursorGet(context.Background(), store.EventCursorGetParams{Subscription: name})
	if err != nil {
		f.t.Fatalf("EventCursorGet: %v", err)
	}
	return pos
}

// recorder is a subscriber that keeps what it received.
type recorder struct {
	mu  sync.Mutex
	evs []*Event
}

func (r *recorder) handle(_ context.Context, ev *Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.evs = append(r.evs, ev)
	return nil
}

func (r *recorder) got() []*Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.evs)
}

func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitBudget)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (r *recorder) wait(t testing.TB, n int) []*Event {
	t.Helper()
	eventually(t, fmt.Sprintf("%d events", n), func() bool { return len(r.got()) >= n })
	return r.got()
}

func ids(evs []*Event) []string {
	out := make([]string, len(evs))
	for i, ev := range evs {
		out[i] = ev.ID
	}
	return out
}

func matching(evs []*Event, pattern string) []*Event {
	var out []*Event
	for _, ev := range evs {
		if MatchPattern(pattern, ev.Name) {
			out = append(out, ev)
		}
	}
	return out
}

// TestServiceDurableDelivery checks that each durable subscription gets
// the events matching its pattern, committed before or after Start, once
// each, in commit order, and that its cursor ends past every event, those
// it does not match included.
func TestServiceDurableDelivery(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	s := f.service(Config{})
	all, orders, users := &recorder{}, &recorder{}, &recorder{}
	f.subscribe(s, "all", "*", all.handle)
	f.subscribe(s, "orders", "order.*", orders.handle)
	f.subscribe(s, "users", "user.signed_up", users.handle)
	f.commit(s, time.Now(), "order", "user", "order") // before Start
	f.start(s)
	f.commit(s, time.Now(), "user", "order")

	stream := f.stream(s)
	if len(stream) != 5 {
		t.Fatalf("stream has %d events, want 5", len(stream))
	}
	for i := 1; i < len(stream); i++ {
		if stream[i].Seq <= stream[i-1].Seq {
			t.Fatalf("stream out of order: seq %d after %d", stream[i].Seq, stream[i-1].Seq)
		}
	}
	for _, c := range []struct {
		name    string
		rec     *recorder
		pattern string
	}{{"all", all, "*"}, {"orders", orders, "order.*"}, {"users", users, "user.signed_up"}} {
		want := matching(stream, c.pattern)
		got := c.rec.wait(t, len(want))
		if !slices.Equal(ids(got), ids(want)) {
			t.Errorf("subscription %s got %q, want %q", c.name, ids(got), ids(want))
		}
		for i, ev := range got {
			if i < len(want) && (ev.Seq != want[i].Seq || string(ev.Payload) != string(want[i].Payload) ||
				ev.TaskUUID != want[i].TaskUUID || ev.DeliveryMode != "broadcast" || !ev.FiredAt.Equal(want[i].FiredAt)) {
				t.Errorf("subscription %s event %d = %+v, want %+v", c.name, i, ev, want[i])
			}
		}
		last := stream[len(stream)-1].Seq
		eventually(t, "cursor of "+c.name, func() bool { return f.cursor(c.name) == last })
	}
	// A relay stores its cursor, then notes it in memory, where Stats reads
	// it: the stored cursors seen above can be a moment ahead.
	last := stream[len(stream)-1].Seq
	var st Stats
	eventually(t, "subscription stats at the stored cursors", func() bool {
		st = s.Stats(context.Background())
		return !slices.ContainsFunc(st.Subscriptions, func(ss SubscriptionStats) bool { return ss.Cursor != last })
	})
	if st.Durable.Delivered != 5+3+2 || st.Durable.Published != 5 || st.Durable.Failed != 0 {
		t.Errorf("durable counters %+v, want 10 delivered, 5 published", st.Durable)
	}
	if len(st.Subscriptions) != 3 {
		t.Fatalf("subscription stats %+v, want 3", st.Subscriptions)
	}
	for _, ss := range st.Subscriptions {
		if ss.Lag != 0 || ss.Cursor != stream[len(stream)-1].Seq {
			t.Errorf("caught-up subscription %+v: want lag 0 and cursor %d", ss, stream[len(stream)-1].Seq)
		}
	}
	// Durable events never reach the fast path.
	if st.Fast != (Counters{}) {
		t.Errorf("fast counters %+v after durable-only traffic", st.Fast)
	}
}

// TestServiceFastOverflow checks that a full fast bus drops and counts
// instead of blocking the publisher, and that what it took is delivered.
func TestServiceFastOverflow(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	monitors := chanmon.NewRegistry()
	s := f.service(Config{FastBuffer: 2, DeliveryTimeout: time.Minute, Monitors: monitors})
	entered, gate := make(chan struct{}), make(chan struct{})
	var once sync.Once
	rec := &recorder{}
	f.subscribe(s, "slow", "*", func(ctx context.Context, ev *Event) error {
		once.Do(func() {
			close(entered)
			<-gate
		})
		return rec.handle(ctx, ev)
	})
	f.start(s)

	s.PublishFast(f.fast(s, "order"))
	<-entered // the subscriber holds the first event; the bus is empty
	burst := f.fast(s, "order", "user", "order", "user", "order", "user", "order", "user", "order", "user")
	if len(burst) != 10 {
		t.Fatalf("built %d fast events, want 10", len(burst))
	}
	start := time.Now()
	s.PublishFast(burst)
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("PublishFast blocked for %s on a full bus", d)
	}
	st := s.Stats(context.Background())
	if st.Fast.Dropped != 8 || st.FastBus.Depth != 2 || st.FastBus.Dropped != 8 {
		t.Errorf("fast dropped %d, bus depth %d, bus dropped %d; want 8, 2, 8", st.Fast.Dropped, st.FastBus.Depth, st.FastBus.Dropped)
	}
	var found bool
	for _, m := range monitors.Snapshot() {
		if m.Name == "events.fast_bus" {
			found = m.Saturation == 1 && m.Capacity == 2
		}
	}
	if !found {
		t.Errorf("the fast bus is not in the channel monitors as full: %+v", monitors.Snapshot())
	}
	if !strings.Contains(f.logs.String(), "fast event dropped") {
		t.Errorf("drops were not logged:\n%s", f.logs.String())
	}
	close(gate)
	got := rec.wait(t, 3)
	if want := []string{"order.created", "order.created", "user.signed_up"}; !slices.Equal(names(got), want) {
		t.Errorf("delivered %q, want %q", names(got), want)
	}
	eventually(t, "3 fast deliveries counted", func() bool { return s.Stats(context.Background()).Fast.Delivered == 3 })
}

// TestServiceFastIsolation checks that a subscriber that fails, panics or
// hangs neither stops the others from receiving fast events nor stops the
// bus, and that each failure is counted and logged.
func TestServiceFastIsolation(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	s := f.service(Config{DeliveryTimeout: 100 * time.Millisecond})
	release := make(chan struct{})
	defer close(release)
	f.subscribe(s, "failing", "*", func(context.Context, *Event) error { return errors.New("subscriber says no") })
	f.subscribe(s, "panicking", "order.*", func(context.Context, *Event) error { panic("subscriber bug") })
	f.subscribe(s, "hanging", "user.*", func(context.Context, *Event) error {
		<-release // ignores its context
		return nil
	})
	rec := &recorder{}
	f.subscribe(s, "good", "*", rec.handle)
	f.start(s)

	evs := f.fast(s, "order", "user", "order", "user")
	s.PublishFast(evs)
	got := rec.wait(t, 4)
	if !slices.Equal(ids(got), ids(evs)) {
		t.Errorf("good subscriber got %q, want %q", ids(got), ids(evs))
	}
	// failing: 4, panicking: 2 orders, hanging: 2 users. A delivery is
	// counted after its handler returns, so the good subscriber may have
	// seen its fourth event a moment before the count.
	eventually(t, "8 fast failures and 4 deliveries counted", func() bool {
		st := s.Stats(context.Background()).Fast
		return st.Failed == 8 && st.Delivered == 4
	})
	st := s.Stats(context.Background())
	if st.Fast.Delivered != 4 || st.Fast.Dropped != 0 {
		t.Errorf("fast counters %+v, want 4 delivered, none dropped", st.Fast)
	}
	for _, want := range []string{"subscriber says no", "subscriber panicked", "did not return within"} {
		if !strings.Contains(f.logs.String(), want) {
			t.Errorf("log does not mention %q:\n%s", want, f.logs.String())
		}
	}
}

// TestServiceDurableRetry checks that failing durable deliveries are
// retried with growing delays until they succeed, without holding up
// other subscriptions, and that a subscription stuck on an event keeps
// the progress it made before it.
func TestServiceDurableRetry(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	s := f.service(Config{})
	var mu sync.Mutex
	var attempts []time.Time
	flaky := &recorder{}
	f.subscribe(s, "flaky", "*", func(ctx context.Context, ev *Event) error {
		mu.Lock()
		defer mu.Unlock()
		if ev.Name == "order.created" && len(attempts) < 4 {
			attempts = append(attempts, time.Now())
			if len(attempts) < 4 {
				return fmt.Errorf("attempt %d fails", len(attempts))
			}
		}
		return flaky.handle(ctx, ev)
	})
	panics := 0
	panicky := &recorder{}
	f.subscribe(s, "panicky", "*", func(ctx context.Context, ev *Event) error {
		mu.Lock()
		panics++
		n := panics
		mu.Unlock()
		if n <= 2 {
			panic(fmt.Sprintf("panic %d", n))
		}
		return panicky.handle(ctx, ev)
	})
	stuck := &recorder{}
	f.subscribe(s, "stuck", "*", func(ctx context.Context, ev *Event) error {
		if ev.Name == "order.created" {
			return errors.New("never acknowledged")
		}
		return stuck.handle(ctx, ev)
	})
	good := &recorder{}
	f.subscribe(s, "good", "*", good.handle)
	f.start(s)
	f.commit(s, time.Now(), "user", "order", "user")
	stream := f.stream(s)

	for name, r := range map[string]*recorder{"flaky": flaky, "panicky": panicky, "good": good} {
		if got := r.wait(t, 3); !slices.Equal(ids(got), ids(stream)) {
			t.Errorf("%s got %q, want %q (each once, in order)", name, ids(got), ids(stream))
		}
	}
	mu.Lock()
	if len(attempts) != 4 {
		t.Fatalf("flaky saw %d attempts of the failing event, want 4", len(attempts))
	}
	// Backoff doubles from 50ms. Delays are lower bounds (a timer never
	// fires early), so this is not a timing race.
	for i, least := range []time.Duration{50 * time.Millisecond, 100 * time.Millisecond, 200 * time.Millisecond} {
		if gap := attempts[i+1].Sub(attempts[i]); gap < least {
			t.Errorf("retry %d came %s after the previous attempt, want at least %s", i+1, gap, least)
		}
	}
	mu.Unlock()

	// The stuck subscription got the event before the one it refuses,
	// and keeps that progress: its cursor is past the first event.
	if got := stuck.wait(t, 1); !slices.Equal(ids(got), ids(stream[:1])) {
		t.Errorf("stuck got %q, want only %q", ids(got), ids(stream[:1]))
	}
	eventually(t, "the stuck subscription's progress to be stored", func() bool { return f.cursor("stuck") == stream[0].Seq })
	var lag time.Duration
	for _, ss := range s.Stats(context.Background()).Subscriptions {
		if ss.Name == "stuck" {
			lag = ss.Lag
		}
	}
	if lag <= 0 {
		t.Errorf("stuck subscription lag %s, want > 0", lag)
	}
	st := s.Stats(context.Background())
	if st.Durable.Failed < 3+2+1 {
		t.Errorf("durable failures %d, want at least 6", st.Durable.Failed)
	}
	if st.Durable.Delivered < 3+3+3+1 {
		t.Errorf("durable deliveries %d, want at least 10", st.Durable.Delivered)
	}
	if !strings.Contains(f.logs.String(), "panic 1") || !strings.Contains(f.logs.String(), "never acknowledged") {
		t.Errorf("failures were not logged:\n%s", f.logs.String())
	}
}

// TestServiceCursorResume checks that a new service on the same database
// resumes each subscription after its stored cursor, never delivering
// again what was acknowledged, while a new subscription starts from the
// oldest retained event.
func TestServiceCursorResume(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	s1 := f.service(Config{})
	first := &recorder{}
	f.subscribe(s1, "audit", "*", first.handle)
	f.start(s1)
	f.commit(s1, time.Now(), "order", "user", "order", "user")
	first.wait(t, 4)
	before := f.stream(s1)
	eventually(t, "the cursor to be stored", func() bool { return f.cursor("audit") == before[3].Seq })
	if err := s1.Stop(context.Background()); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	f.commit(s1, time.Now(), "user", "order", "user") // while no relay runs

	// A restart: a new driver and service on the same file.
	f.d = openDriver(t, f.path)
	s2 := f.service(Config{})
	audit, newcomer := &recorder{}, &recorder{}
	f.subscribe(s2, "audit", "*", audit.handle)
	f.subscribe(s2, "newcomer", "*", newcomer.handle)
	f.start(s2)
	stream := f.stream(s2)
	if len(stream) != 7 {
		t.Fatalf("stream has %d events, want 7", len(stream))
	}
	if got := audit.wait(t, 3); !slices.Equal(ids(got), ids(stream[4:])) {
		t.Errorf("audit got %q after the restart, want only the 3 unacknowledged %q", ids(got), ids(stream[4:]))
	}
	if got := newcomer.wait(t, 7); !slices.Equal(ids(got), ids(stream)) {
		t.Errorf("newcomer got %q, want the whole stream", ids(got))
	}
	if got := first.got(); len(got) != 4 {
		t.Errorf("the stopped service delivered %d events, want 4", len(got))
	}
}

// TestServiceStopKeepsProgress checks that a subscription stopped while it
// is blocked in the middle of a batch stores the progress it made: after a
// restart, the events it acknowledged are not delivered again.
func TestServiceStopKeepsProgress(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	s1 := f.service(Config{DeliveryTimeout: time.Minute})
	acked := &recorder{}
	blocked := make(chan struct{})
	var once sync.Once
	f.subscribe(s1, "audit", "*", func(ctx context.Context, ev *Event) error {
		if len(acked.got()) == 2 {
			once.Do(func() { close(blocked) })
			<-ctx.Done() // blocks until the service stops
			return ctx.Err()
		}
		return acked.handle(ctx, ev)
	})
	f.commit(s1, time.Now(), "order", "user", "order", "user", "order")
	f.start(s1)
	<-blocked
	if err := s1.Stop(context.Background()); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	stream := f.stream(s1)
	if got := f.cursor("audit"); got != stream[1].Seq {
		t.Errorf("cursor after stopping mid-batch = %d, want %d (the two acknowledged events)", got, stream[1].Seq)
	}

	f.d = openDriver(t, f.path)
	s2 := f.service(Config{})
	again := &recorder{}
	f.subscribe(s2, "audit", "*", again.handle)
	f.start(s2)
	if got := again.wait(t, 3); !slices.Equal(ids(got), ids(stream[2:])) {
		t.Errorf("after the restart audit got %q, want only the unacknowledged %q", ids(got), ids(stream[2:]))
	}
}

// TestServicePrune checks that pruning removes durable events older than
// the retention that every stored cursor has passed, and nothing else.
func TestServicePrune(t *testing.T) {
	t.Parallel()
	now := time.Now()
	old := now.Add(-2 * time.Hour)
	for _, c := range []struct {
		name    string
		cursors map[string]int // subscription → index of the last acknowledged event (-1: position 0)
		pruned  int
	}{
		{"no subscriptions: by age", nil, 3},
		{"slowest cursor bounds it", map[string]int{"fast": 4, "slow": 1}, 2},
		{"cursor past young events", map[string]int{"only": 4}, 3},
		{"a subscription at the start", map[string]int{"fresh": -1, "done": 4}, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			s := f.service(Config{Retention: time.Hour})
			f.commit(s, old, "order", "user", "order")
			f.commit(s, now, "user", "order")
			stream := f.stream(s)
			for name, i := range c.cursors {
				pos := int64(0)
				if i >= 0 {
					pos = stream[i].Seq
				}
				if err := store.InTx(context.Background(), f.d, func(tx store.Tx) error {
					return tx.EventCursorSet(context.Background(), store.EventCursorSetParams{Subscription: name, Position: pos, Now: now})
				}); err != nil {
					t.Fatal(err)
				}
			}
			n, err := s.Prune(context.Background(), now)
			if err != nil {
				t.Fatalf("Prune: %v", err)
			}
			if n != c.pruned {
				t.Errorf("pruned %d events, want %d", n, c.pruned)
			}
			if left := f.stream(s); !slices.Equal(ids(left), ids(stream[c.pruned:])) {
				t.Errorf("left %q, want %q", ids(left), ids(stream[c.pruned:]))
			}
		})
	}
}

// TestServiceRead checks that Read pages through the durable stream in
// order.
func TestServiceRead(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	s := f.service(Config{})
	for range 5 {
		f.commit(s, time.Now(), "order", "user")
	}
	all := f.stream(s)
	if len(all) != 10 {
		t.Fatalf("stream has %d events, want 10", len(all))
	}
	var paged []*Event
	var after int64
	for {
		page, err := s.Read(context.Background(), after, 3)
		if err != nil {
			t.Fatalf("Read(%d, 3): %v", after, err)
		}
		if len(page) == 0 {
			break
		}
		if len(page) > 3 {
			t.Fatalf("page of %d events with limit 3", len(page))
		}
		paged = append(paged, page...)
		after = page[len(page)-1].Seq
	}
	if !slices.Equal(ids(paged), ids(all)) {
		t.Errorf("paged %q, want %q", ids(paged), ids(all))
	}
	for i, ev := range all {
		wantStep, wantName := []string{"order", "user"}[i%2], []string{"order.created", "user.signed_up"}[i%2]
		if ev.Name != wantName || ev.StepName != wantStep {
			t.Errorf("event %d: %s from step %s, want %s from step %s", i, ev.Name, ev.StepName, wantName, wantStep)
		}
	}
}

// TestServiceLifecycle checks bad subscriptions, double start and stop,
// a restart, and that the fast bus drains on Stop and refuses (and
// counts) events after it.
func TestServiceLifecycle(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	s := f.service(Config{})
	ok := func(context.Context, *Event) error { return nil }
	if err := s.Stop(context.Background()); err != nil {
		t.Errorf("Stop before Start: %v", err)
	}
	if err := s.Subscribe("bad", "order.", ok); err == nil {
		t.Error("Subscribe accepted the pattern \"order.\"")
	}
	if err := s.Subscribe("nil", "*", nil); err == nil {
		t.Error("Subscribe accepted a nil handler")
	}
	slow := &recorder{}
	f.subscribe(s, "slow", "*", func(ctx context.Context, ev *Event) error {
		time.Sleep(2 * time.Millisecond)
		return slow.handle(ctx, ev)
	})
	if err := s.Subscribe("slow", "order.*", ok); err == nil {
		t.Error("Subscribe accepted a second subscription named \"slow\"")
	}
	f.start(s)
	f.start(s) // a second Start is a no-op

	evs := f.fast(s, "order", "user", "order", "user", "order", "user", "order", "user", "order", "user")
	s.PublishFast(evs)
	if err := s.Stop(context.Background()); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if got := slow.got(); !slices.Equal(ids(got), ids(evs)) {
		t.Errorf("Stop returned with %d of %d fast events delivered", len(got), len(evs))
	}
	if err := s.Stop(context.Background()); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	s.PublishFast(f.fast(s, "order"))
	if st := s.Stats(context.Background()); st.Fast.Dropped != 1 {
		t.Errorf("a fast event published after Stop: dropped %d, want 1", st.Fast.Dropped)
	}

	// Started again, it relays durable events.
	f.start(s)
	f.commit(s, time.Now(), "order")
	slow.wait(t, len(evs)+1)
}

// TestServicePruneKeepsUndelivered checks that pruning never deletes an
// event a running subscription has not acknowledged, even one that has
// acknowledged nothing yet, while another subscription is done with it.
func TestServicePruneKeepsUndelivered(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	s := f.service(Config{Retention: time.Hour})
	f.commit(s, time.Now().Add(-2*time.Hour), "order", "user", "order")
	done := &recorder{}
	f.subscribe(s, "done", "*", done.handle)
	failing := make(chan struct{}, 1)
	f.subscribe(s, "stuck", "*", func(context.Context, *Event) error {
		select {
		case failing <- struct{}{}:
		default:
		}
		return errors.New("not yet")
	})
	f.start(s)
	done.wait(t, 3)
	stream := f.stream(s)
	eventually(t, "the done subscription's cursor", func() bool { return f.cursor("done") == stream[2].Seq })
	<-failing // the stuck subscription's relay is running and has seen the first event

	n, err := s.Prune(context.Background(), time.Now())
	if err != nil {
		t.Fatalf("Prune: %v", err)
	}
	if n != 0 {
		t.Errorf("pruned %d events that the stuck subscription never acknowledged", n)
	}
	if left := f.stream(s); len(left) != 3 {
		t.Errorf("%d events left, want 3", len(left))
	}
}
