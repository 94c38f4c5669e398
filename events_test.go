package tasker_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tasker-go/tasker"
)

// eventLog is a subscriber that keeps what it received, durable and fast
// events apart.
type eventLog struct {
	mu            sync.Mutex
	durable, fast []tasker.DomainEvent
}

func (l *eventLog) handle(_ context.Context, ev tasker.DomainEvent) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if ev.Seq > 0 {
		l.durable = append(l.durable, ev)
	} else {
		l.fast = append(l.fast, ev)
	}
	return nil
}

// forTask returns the durable and fast events received about a task.
func (l *eventLog) forTask(taskUUID string) (durable, fast []tasker.DomainEvent) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, ev := range l.durable {
		if ev.TaskUUID == taskUUID {
			durable = append(durable, ev)
		}
	}
	for _, ev := range l.fast {
		if ev.TaskUUID == taskUUID {
			fast = append(fast, ev)
		}
	}
	return durable, fast
}

func (l *eventLog) counts() (durable, fast int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.durable), len(l.fast)
}

// stream reads the whole durable stream, page by page.
func stream(t testing.TB, eng *tasker.Engine) []tasker.DomainEvent {
	t.Helper()
	var out []tasker.DomainEvent
	var after int64
	for {
		page, err := eng.Events(context.Background(), after, 500)
		if err != nil {
			t.Fatalf("Events(%d): %v", after, err)
		}
		if len(page) == 0 {
			return out
		}
		out = append(out, page...)
		after = page[len(page)-1].Seq
	}
}

func streamFor(t testing.TB, eng *tasker.Engine, taskUUID string) []tasker.DomainEvent {
	t.Helper()
	var out []tasker.DomainEvent
	for _, ev := range stream(t, eng) {
		if ev.TaskUUID == taskUUID {
			out = append(out, ev)
		}
	}
	return out
}

// signatures returns "name@attempt:condition" per event, sorted.
func signatures(evs []tasker.DomainEvent) []string {
	out := make([]string, len(evs))
	for i, ev := range evs {
		out[i] = fmt.Sprintf("%s@%d:%s", ev.Name, ev.Attempt, ev.Condition)
	}
	sort.Strings(out)
	return out
}

// distinctEvents drops repeated deliveries of an event (same ID).
func distinctEvents(evs []tasker.DomainEvent) []tasker.DomainEvent {
	seen := map[string]bool{}
	var out []tasker.DomainEvent
	for _, ev := range evs {
		if !seen[ev.ID] {
			seen[ev.ID] = true
			out = append(out, ev)
		}
	}
	return out
}

func eventIDs(evs []tasker.DomainEvent) []string {
	out := make([]string, len(evs))
	for i, ev := range evs {
		out[i] = ev.ID
	}
	return out
}

// sameJSON compares JSON documents by value.
func sameJSON(a, b json.RawMessage) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	return reflect.DeepEqual(x, y)
}

// syncBuffer is a log destination safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// capturingLogger logs warnings and errors to a buffer the test can read.
func capturingLogger() (*slog.Logger, *syncBuffer) {
	buf := &syncBuffer{}
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelWarn})), buf
}

// condTemplate is a one-step template in namespace "evt" that publishes a
// broadcast event for each of the five conditions; retry is its retry
// policy.
func condTemplate(name, retry string) string {
	return fmt.Sprintf(`
name: %s
namespace_name: evt
version: 1.0.0
steps:
  - name: only
    handler: {callable: evt.mode}
    retry: %s
    publishes_events:
      - {name: step.ok, condition: success, delivery_mode: broadcast}
      - {name: step.failed, condition: failure, delivery_mode: broadcast}
      - {name: step.retrying, condition: retryable_failure, delivery_mode: broadcast}
      - {name: step.dead, condition: permanent_failure, delivery_mode: broadcast}
      - {name: step.any, condition: always, delivery_mode: broadcast}
`, name, retry)
}

// modeHandler does what the task context's "mode" says: ok, flaky (fails
// retryably before attempt 3), fail (always fails retryably) or permanent.
func modeHandler(_ context.Context, s *tasker.StepContext) (any, error) {
	var in struct{ Mode string }
	if err := s.DecodeContext(&in); err != nil {
		return nil, tasker.Permanent(err)
	}
	switch in.Mode {
	case "ok":
		return map[string]any{"mode": in.Mode, "attempt": s.Attempt}, nil
	case "flaky":
		if s.Attempt < 3 {
			return nil, fmt.Errorf("attempt %d: %w", s.Attempt, errFlaky)
		}
		return map[string]any{"mode": in.Mode, "attempt": s.Attempt}, nil
	case "fail":
		return nil, fmt.Errorf("attempt %d: %w", s.Attempt, errFlaky)
	case "permanent":
		return nil, tasker.Permanent(errors.New("card declined"))
	}
	return nil, tasker.Permanent(fmt.Errorf("unknown mode %q", in.Mode))
}

// checkCommitted reports what is wrong with a durable event given what the
// step's committed state says, or "" when the state shows the outcome the
// event describes.
func checkCommitted(eng *tasker.Engine, ev tasker.DomainEvent) string {
	ctx := context.Background()
	steps, err := eng.TaskSteps(ctx, ev.TaskUUID)
	if err != nil {
		return fmt.Sprintf("TaskSteps: %v", err)
	}
	var step *tasker.Step
	for i := range steps {
		if steps[i].UUID == ev.StepUUID {
			step = &steps[i]
		}
	}
	if step == nil {
		return "step not found"
	}
	switch ev.Condition {
	case "success":
		if step.State != "complete" || !sameJSON(step.Result, ev.Payload) {
			return fmt.Sprintf("success event with payload %s, but the step is %s with result %s", ev.Payload, step.State, step.Result)
		}
	case "permanent_failure":
		if step.State != "error" || step.Error == nil || step.Attempts != ev.Attempt {
			return fmt.Sprintf("permanent failure event at attempt %d, but the step is %s after %d attempts (error %+v)",
				ev.Attempt, step.State, step.Attempts, step.Error)
		}
		var payload struct{ Message string }
		if err := json.Unmarshal(ev.Payload, &payload); err != nil || payload.Message != step.Error.Message {
			return fmt.Sprintf("permanent failure event payload %s, but the recorded error is %q", ev.Payload, step.Error.Message)
		}
	case "retryable_failure":
		trs, err := eng.StepTransitions(ctx, ev.StepUUID)
		if err != nil {
			return fmt.Sprintf("StepTransitions: %v", err)
		}
		for _, tr := range trs {
			var md struct{ Attempt int }
			_ = json.Unmarshal(tr.Metadata, &md)
			if tr.To == "waiting_for_retry" && md.Attempt == ev.Attempt {
				return ""
			}
		}
		return fmt.Sprintf("retryable failure event at attempt %d, but no retry of that attempt is recorded", ev.Attempt)
	default:
		return fmt.Sprintf("unexpected condition %q", ev.Condition)
	}
	return ""
}

// TestEventConditions checks that each of the five conditions fires
// exactly where it should, on the durable stream, through a durable
// subscription and on the fast bus alike: success; retryable failures
// then success; exhaustion, whose last failure is the permanent one; a
// Permanent error; a retryable error on a step that may not retry; and a
// retryable error on its only attempt.
//
// It runs on SQLite and on PostgreSQL, whose driver records a success and
// completes its step in one write (CompleteAndLoadParams.SettleSuccesses):
// the events must not tell the two apart.
func TestEventConditions(t *testing.T) {
	t.Parallel()
	opts := engineOptions{
		cfg: tasker.Config{RetryJitter: -1},
		templates: []string{
			condTemplate("conds", "{max_attempts: 3, backoff: none}"),
			condTemplate("conds_strict", "{retryable: false, max_attempts: 3, backoff: none}"),
			condTemplate("conds_once", "{max_attempts: 1}"),
		},
		handlers: map[string]tasker.HandlerFunc{"evt.mode": modeHandler},
	}
	t.Run("sqlite", func(t *testing.T) {
		t.Parallel()
		eng, _ := openEngine(t, opts)
		testEventConditions(t, eng)
	})
	t.Run("postgres", func(t *testing.T) {
		t.Parallel()
		testEventConditions(t, openPostgresEngine(t, opts))
	})
}

func testEventConditions(t *testing.T, eng *tasker.Engine) {
	log := &eventLog{}
	var mu sync.Mutex
	var violations []string
	eng.Subscribe("step.*", func(ctx context.Context, ev tasker.DomainEvent) error {
		if ev.Seq > 0 {
			if v := checkCommitted(eng, ev); v != "" {
				mu.Lock()
				violations = append(violations, fmt.Sprintf("%s@%d: %s", ev.Name, ev.Attempt, v))
				mu.Unlock()
			}
		}
		return log.handle(ctx, ev)
	})

	for _, c := range []struct {
		name, template, mode string
		state                string
		attempts             int
		want                 []string
	}{
		{"success", "conds", "ok", "complete", 1, []string{
			"step.ok@1:success", "step.any@1:success"}},
		{"retryable failures then success", "conds", "flaky", "complete", 3, []string{
			"step.retrying@1:retryable_failure", "step.failed@1:retryable_failure", "step.any@1:retryable_failure",
			"step.retrying@2:retryable_failure", "step.failed@2:retryable_failure", "step.any@2:retryable_failure",
			"step.ok@3:success", "step.any@3:success"}},
		{"exhaustion", "conds", "fail", "error", 3, []string{
			"step.retrying@1:retryable_failure", "step.failed@1:retryable_failure", "step.any@1:retryable_failure",
			"step.retrying@2:retryable_failure", "step.failed@2:retryable_failure", "step.any@2:retryable_failure",
			"step.dead@3:permanent_failure", "step.failed@3:permanent_failure", "step.any@3:permanent_failure"}},
		{"permanent error", "conds", "permanent", "error", 1, []string{
			"step.dead@1:permanent_failure", "step.failed@1:permanent_failure", "step.any@1:permanent_failure"}},
		{"retryable error, step not retryable", "conds_strict", "fail", "error", 1, []string{
			"step.dead@1:permanent_failure", "step.failed@1:permanent_failure", "step.any@1:permanent_failure"}},
		{"retryable error, single attempt", "conds_once", "fail", "error", 1, []string{
			"step.dead@1:permanent_failure", "step.failed@1:permanent_failure", "step.any@1:permanent_failure"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			task, steps := runTask(t, eng, tasker.TaskRequest{Namespace: "evt", Name: c.template,
				Context: map[string]string{"mode": c.mode}})
			s := wantStep(t, steps, "only", c.state, c.attempts)
			want := slices.Sorted(slices.Values(c.want))

			// The outbox is written with each outcome: once the task has
			// settled, its durable events are all there.
			durable := streamFor(t, eng, task.UUID)
			if got := signatures(durable); !slices.Equal(got, want) {
				t.Errorf("durable stream:\n got %q\nwant %q", got, want)
			}
			for i, ev := range durable {
				if ev.Seq <= 0 || ev.StepUUID != s.UUID || ev.StepName != "only" || ev.Namespace != "evt" ||
					ev.TaskName != c.template || ev.Version != "1.0.0" || ev.CorrelationID != task.UUID ||
					ev.DeliveryMode != "broadcast" || ev.ID == "" || ev.FiredAt.IsZero() {
					t.Errorf("durable event %d: %+v", i, ev)
				}
				if i > 0 && ev.Seq <= durable[i-1].Seq {
					t.Errorf("durable events of one task out of order: seq %d after %d", ev.Seq, durable[i-1].Seq)
				}
				if ev.Condition == "success" {
					if !sameJSON(ev.Payload, s.Result) {
						t.Errorf("success event payload %s, want the result %s", ev.Payload, s.Result)
					}
				} else if !strings.Contains(string(ev.Payload), "message") || !sameJSON(ev.Payload, ev.Error) {
					t.Errorf("failure event payload %s error %s: want the error in both", ev.Payload, ev.Error)
				}
			}

			// The durable subscription and the fast bus see the same
			// events, each once.
			eventually(t, "the subscriber to receive the task's events", func() bool {
				d, f := log.forTask(task.UUID)
				return len(d) >= len(want) && len(f) >= len(want)
			})
			d, f := log.forTask(task.UUID)
			if got := signatures(d); !slices.Equal(got, want) {
				t.Errorf("durable deliveries:\n got %q\nwant %q", got, want)
			}
			if !slices.Equal(slices.Sorted(slices.Values(eventIDs(d))), slices.Sorted(slices.Values(eventIDs(durable)))) {
				t.Errorf("durable deliveries are not the stream's events")
			}
			if got := signatures(f); !slices.Equal(got, want) {
				t.Errorf("fast events:\n got %q\nwant %q", got, want)
			}
		})
	}
	mu.Lock()
	defer mu.Unlock()
	for _, v := range violations {
		t.Errorf("a durable event was delivered before its outcome was readable: %s", v)
	}
}

// orderTemplate is a one-step template whose step publishes a durable
// event on success and on permanent failure, and a fast event on success.
const orderTemplate = `
name: ordering
namespace_name: ord
version: 1.0.0
steps:
  - name: only
    handler: {callable: ord.work}
    retry: {max_attempts: 1}
    publishes_events:
      - {name: ord.done}
      - {name: ord.failed, condition: permanent_failure}
      - {name: ord.fast, delivery_mode: fast}
`

// orderingTasks is how many single-step tasks TestEventOrdering runs: 600
// keeps it near 10s under -race on two cores.
const orderingTasks = 600

// TestEventOrdering runs many single-step tasks through a completion
// channel of size 1 and checks, from the subscriber's side, the two
// ordering rules: a durable event is delivered only once the outcome it
// describes is committed (the subscriber always reads the step's result,
// or its recorded error), and a fast event is published only after its
// result entered the completion channel (when the k-th fast event arrives,
// at least k results have been sent).
func TestEventOrdering(t *testing.T) {
	if testing.Short() {
		t.Skip("runs hundreds of tasks")
	}
	t.Parallel()
	eng, _ := openEngine(t, engineOptions{
		cfg:       tasker.Config{CompletionBuffer: 1, Concurrency: 8},
		templates: []string{orderTemplate},
		handlers: map[string]tasker.HandlerFunc{"ord.work": func(_ context.Context, s *tasker.StepContext) (any, error) {
			var in struct{ N int }
			if err := s.DecodeContext(&in); err != nil {
				return nil, tasker.Permanent(err)
			}
			if in.N%10 == 0 {
				return nil, tasker.Permanent(fmt.Errorf("task %d refused", in.N))
			}
			return map[string]int{"n": in.N, "square": in.N * in.N}, nil
		}},
	})
	completionSent := func() uint64 {
		for _, c := range eng.ChannelStats() {
			if c.Name == "worker.completion" {
				return c.Sent
			}
		}
		t.Error("no worker.completion channel in ChannelStats")
		return 0
	}

	var mu sync.Mutex
	var violations []string
	var durableSeen, fastSeen int
	fastPayload := map[string]json.RawMessage{}
	eng.Subscribe("ord.*", func(_ context.Context, ev tasker.DomainEvent) error {
		if ev.Seq == 0 {
			sent := completionSent()
			mu.Lock()
			defer mu.Unlock()
			fastSeen++
			if sent < uint64(fastSeen) {
				violations = append(violations, fmt.Sprintf("fast event %d arrived when only %d results had been sent", fastSeen, sent))
			}
			fastPayload[ev.StepUUID] = ev.Payload
			return nil
		}
		v := checkCommitted(eng, ev)
		mu.Lock()
		defer mu.Unlock()
		durableSeen++
		if v != "" {
			violations = append(violations, fmt.Sprintf("%s for task %s: %s", ev.Name, ev.TaskUUID, v))
		}
		return nil
	})

	start := time.Now()
	ids := make([]string, orderingTasks)
	for i := range ids {
		ids[i] = createTask(t, eng, tasker.TaskRequest{Namespace: "ord", Name: "ordering", Context: map[string]int{"n": i}}).UUID
	}
	failed := 0
	for i, id := range ids {
		task := waitTask(t, eng, id)
		if i%10 == 0 {
			failed++
			wantTask(t, task, "blocked_by_failures", "blocked_by_failures")
		} else {
			wantTask(t, task, "complete", "all_complete")
		}
	}
	eventually(t, "every durable and fast event", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return durableSeen >= orderingTasks && fastSeen >= orderingTasks-failed
	})
	t.Logf("%d tasks, %d durable and %d fast events in %s", orderingTasks, durableSeen, fastSeen, time.Since(start).Round(time.Millisecond))
	st := eng.EventStats(context.Background())
	if st.Fast.Dropped != 0 {
		t.Errorf("%d fast events dropped; the test needs them all", st.Fast.Dropped)
	}
	if st.Durable.Published != orderingTasks || st.Fast.Published != uint64(orderingTasks-failed) {
		t.Errorf("published %d durable and %d fast events, want %d and %d", st.Durable.Published, st.Fast.Published,
			orderingTasks, orderingTasks-failed)
	}

	mu.Lock()
	defer mu.Unlock()
	if durableSeen != orderingTasks || fastSeen != orderingTasks-failed {
		t.Errorf("received %d durable and %d fast events, want %d and %d", durableSeen, fastSeen, orderingTasks, orderingTasks-failed)
	}
	for i, v := range violations {
		if i == 10 {
			t.Errorf("… and %d more", len(violations)-10)
			break
		}
		t.Error(v)
	}
	// A fast event carries the result that was then committed.
	for i, id := range ids {
		if i%10 == 0 {
			continue
		}
		s := stepsByName(t, eng, id)["only"]
		if p, ok := fastPayload[s.UUID]; !ok || !sameJSON(p, s.Result) {
			t.Errorf("task %d: fast event payload %s, committed result %s", i, p, s.Result)
		}
	}
}

// isoTemplate is a linear pair of steps; each publishes events through
// publishers that fail, panic and hang, and one plain durable and one
// fast event.
const isoTemplate = `
name: isolation
namespace_name: iso
version: 1.0.0
identity_strategy: always_unique
steps:
  - name: first
    handler: {callable: iso.work}
    publishes_events: &events
      - {name: iso.error, publisher: failing}
      - {name: iso.panic, publisher: panicking}
      - {name: iso.hang, publisher: hanging}
      - {name: iso.fast_panic, delivery_mode: fast, publisher: panicking}
      - {name: iso.ok}
      - {name: iso.fast, delivery_mode: fast}
  - name: second
    handler: {callable: iso.work}
    dependencies: [first]
    publishes_events: *events
`

// TestEventFailuresIsolated checks that publishers and subscribers that
// fail, panic or hang change no step: every task completes with one
// attempt per step and its results, the well-behaved events still reach
// the well-behaved subscriber, and the failures are counted.
func TestEventFailuresIsolated(t *testing.T) {
	t.Parallel()
	const tasks = 4
	release := make(chan struct{})
	logger, logs := capturingLogger()
	eng, _ := openEngine(t, engineOptions{
		cfg: tasker.Config{EventPublisherTimeout: 100 * time.Millisecond, EventDeliveryTimeout: 100 * time.Millisecond,
			Logger: logger},
		noStart: true,
	})
	// Let hung subscribers return once the test is over (t.Cleanup runs
	// last-registered first: before the engine closes).
	t.Cleanup(func() { close(release) })
	eng.RegisterPublisher("failing", tasker.PublisherFunc(func(context.Context, *tasker.DomainEvent) (bool, error) {
		return true, errors.New("publisher backend down")
	}))
	eng.RegisterPublisher("panicking", tasker.PublisherFunc(func(context.Context, *tasker.DomainEvent) (bool, error) {
		panic("publisher bug")
	}))
	eng.RegisterPublisher("hanging", tasker.PublisherFunc(func(ctx context.Context, _ *tasker.DomainEvent) (bool, error) {
		<-ctx.Done()
		return true, nil
	}))
	ctx := context.Background()
	if err := eng.RegisterTemplate(ctx, []byte(isoTemplate)); err != nil {
		t.Fatalf("RegisterTemplate: %v", err)
	}
	eng.Handle("iso.work", tasker.HandlerFunc(func(_ context.Context, s *tasker.StepContext) (any, error) {
		return map[string]string{"step": s.StepName}, nil
	}))
	eng.Subscribe("*", func(context.Context, tasker.DomainEvent) error { return errors.New("subscriber backend down") })
	eng.Subscribe("*", func(context.Context, tasker.DomainEvent) error { panic("subscriber bug") })
	eng.Subscribe("*", func(context.Context, tasker.DomainEvent) error {
		<-release // ignores its context
		return nil
	})
	good := &eventLog{}
	eng.Subscribe("iso.*", good.handle)
	if err := eng.Start(ctx); err != nil {
		t.Fatalf("Start: %v", err)
	}

	var ids []string
	for range tasks {
		task, steps := runTask(t, eng, tasker.TaskRequest{Namespace: "iso", Name: "isolation"})
		wantTask(t, task, "complete", "all_complete")
		for _, name := range []string{"first", "second"} {
			s := wantStep(t, steps, name, "complete", 1)
			wantResult(t, steps, name, map[string]string{"step": name})
			for _, tr := range stepTransitions(t, eng, s.UUID) {
				if strings.Contains(tr.To, "error") || tr.To == "waiting_for_retry" {
					t.Errorf("step %s went through %s", name, tr.To)
				}
			}
		}
		ids = append(ids, task.UUID)
	}

	for _, ev := range stream(t, eng) {
		if ev.Name != "iso.ok" {
			t.Errorf("the durable stream holds %s, whose publisher failed", ev.Name)
		}
	}
	eventually(t, "the good subscriber to get every good event", func() bool {
		d, f := good.counts()
		return d >= 2*tasks && f >= 2*tasks
	})
	for _, id := range ids {
		d, f := good.forTask(id)
		// Durable delivery is at least once: with a 100 ms delivery
		// timeout, a delivery the scheduler delays past it (this test runs
		// beside the rest of the suite, under -race) counts as failed and
		// the same event comes again. Each event is counted once.
		d = distinctEvents(d)
		if got := signatures(d); !slices.Equal(got, []string{"iso.ok@1:success", "iso.ok@1:success"}) {
			t.Errorf("good subscriber's durable events for task %s: %q", id, got)
		}
		if got := signatures(f); !slices.Equal(got, []string{"iso.fast@1:success", "iso.fast@1:success"}) {
			t.Errorf("good subscriber's fast events for task %s: %q", id, got)
		}
	}
	// Fast: per step, one publisher failure, and three subscribers failing
	// iso.fast. Durable: per step, three publisher failures, and subscriber
	// failures that keep growing as deliveries are retried.
	eventually(t, "every fast failure to be counted", func() bool {
		return eng.EventStats(ctx).Fast.Failed == (1+3)*2*tasks
	})
	st := eng.EventStats(ctx)
	if st.Durable.Failed <= 3*2*tasks {
		t.Errorf("durable failures counted: %d, want publisher failures (%d) plus subscriber failures", st.Durable.Failed, 3*2*tasks)
	}
	if st.Durable.Published != 2*tasks || st.Fast.Published != 2*tasks {
		t.Errorf("published: durable %d, fast %d; want %d each", st.Durable.Published, st.Fast.Published, 2*tasks)
	}
	for _, want := range []string{"publisher backend down", "publisher bug", "timed out", "subscriber backend down", "subscriber bug"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("the log does not mention %q", want)
		}
	}
}

// TestEventSchemaRejected checks that a payload failing its event's schema
// is not published, is counted and logged with the reason, and leaves the
// step and the step's other events alone.
func TestEventSchemaRejected(t *testing.T) {
	t.Parallel()
	logger, logs := capturingLogger()
	eng, _ := openEngine(t, engineOptions{
		cfg: tasker.Config{Logger: logger},
		templates: []string{`
name: schema
namespace_name: sch
version: 1.0.0
steps:
  - name: invoice
    handler: {callable: sch.invoice}
    publishes_events:
      - name: invoice.issued
        schema: {type: object, required: [invoice_id], properties: {invoice_id: {type: integer}}}
      - {name: invoice.audit}
      - name: invoice.fast
        delivery_mode: fast
        schema: {type: object, properties: {invoice_id: {type: integer}}}
`},
		handlers: map[string]tasker.HandlerFunc{"sch.invoice": func(context.Context, *tasker.StepContext) (any, error) {
			return map[string]string{"invoice_id": "INV-7"}, nil
		}},
	})
	log := &eventLog{}
	eng.Subscribe("invoice.*", log.handle)
	task, steps := runTask(t, eng, tasker.TaskRequest{Namespace: "sch", Name: "schema"})
	wantTask(t, task, "complete", "all_complete")
	wantStep(t, steps, "invoice", "complete", 1)
	wantResult(t, steps, "invoice", map[string]string{"invoice_id": "INV-7"})

	if got := signatures(streamFor(t, eng, task.UUID)); !slices.Equal(got, []string{"invoice.audit@1:success"}) {
		t.Errorf("durable stream %q, want only invoice.audit", got)
	}
	eventually(t, "the fast event to be rejected", func() bool {
		return eng.EventStats(context.Background()).Fast.SchemaRejected == 1
	})
	st := eng.EventStats(context.Background())
	if st.Durable.SchemaRejected != 1 || st.Durable.Published != 1 || st.Fast.Published != 0 {
		t.Errorf("counters durable %+v fast %+v; want 1 durable rejected, 1 published, no fast published", st.Durable, st.Fast)
	}
	eventually(t, "invoice.audit to be delivered", func() bool { d, _ := log.counts(); return d == 1 })
	if _, f := log.counts(); f != 0 {
		t.Errorf("%d fast events delivered, want none", f)
	}
	out := logs.String()
	for _, want := range []string{"invoice.issued", "invoice_id", "invoice.fast", task.UUID} {
		if !strings.Contains(out, want) {
			t.Errorf("the rejection log does not mention %q:\n%s", want, out)
		}
	}
}

// TestEventTemplateBadInput checks that bad event declarations are
// template validation errors naming the step and the event.
func TestEventTemplateBadInput(t *testing.T) {
	t.Parallel()
	eng, _ := openEngine(t, engineOptions{noStart: true})
	eng.RegisterPublisher("known", tasker.PublisherFunc(func(context.Context, *tasker.DomainEvent) (bool, error) { return true, nil }))
	doc := func(event string) string {
		return `
name: bad_events
namespace_name: bad
version: 1.0.0
steps:
  - name: charge
    handler: {callable: bad.charge}
    publishes_events:
      - {name: payment.ok}
      - ` + event + "\n"
	}
	for _, c := range []struct {
		name, event string
		want        []string
	}{
		{"space in the name", `{name: "payment captured"}`, []string{"publishes_events[1].name", "payment captured"}},
		{"empty segment", `{name: payment..captured}`, []string{"publishes_events[1].name", "payment..captured"}},
		{"leading dot", `{name: .payment}`, []string{"publishes_events[1].name", ".payment"}},
		{"trailing dot", `{name: payment.}`, []string{"publishes_events[1].name", "payment."}},
		{"empty name", `{name: ""}`, []string{"publishes_events[1].name", "required"}},
		{"unknown condition", `{name: payment.late, condition: sometimes}`, []string{"publishes_events[1].condition", "sometimes"}},
		{"unknown delivery mode", `{name: payment.late, delivery_mode: pigeon}`, []string{"publishes_events[1].delivery_mode", "pigeon"}},
		{"invalid schema", `{name: payment.late, schema: {type: 12}}`, []string{"publishes_events[1].schema"}},
		{"unknown schema type", `{name: payment.late, schema: {type: objekt}}`, []string{"publishes_events[1].schema"}},
		{"unknown publisher", `{name: payment.late, publisher: nobody}`, []string{"publishes_events[1].publisher", "nobody", "payment.late"}},
		{"duplicate event", `{name: payment.ok}`, []string{"publishes_events[1].name", "payment.ok"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := eng.RegisterTemplate(context.Background(), []byte(doc(c.event)))
			if !errors.Is(err, tasker.ErrInvalidTemplate) {
				t.Fatalf("RegisterTemplate: %v, want ErrInvalidTemplate", err)
			}
			for _, want := range append([]string{`step "charge"`}, c.want...) {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error does not mention %q:\n%v", want, err)
				}
			}
			if strings.Contains(err.Error(), "publishes_events[0]") {
				t.Errorf("error blames the valid declaration:\n%v", err)
			}
		})
	}
	// The same template with a known publisher is accepted.
	if err := eng.RegisterTemplate(context.Background(), []byte(doc(`{name: payment.late, publisher: known}`))); err != nil {
		t.Errorf("RegisterTemplate with a registered publisher: %v", err)
	}
}

// TestEventsPaging checks that Events pages through the durable stream in
// commit order, without gaps or repeats, and that it agrees with what a
// durable subscription received.
func TestEventsPaging(t *testing.T) {
	t.Parallel()
	eng, _ := openEngine(t, engineOptions{
		templates: []string{condTemplate("paging", "{max_attempts: 2, backoff: none}")},
		handlers:  map[string]tasker.HandlerFunc{"evt.mode": modeHandler},
	})
	log := &eventLog{}
	eng.Subscribe("*", log.handle)
	for i := range 6 {
		mode := []string{"ok", "flaky", "fail"}[i%3]
		runTask(t, eng, tasker.TaskRequest{Namespace: "evt", Name: "paging", Context: map[string]any{"mode": mode, "i": i}})
	}
	all := stream(t, eng)
	// ok: 2 events; flaky (2 attempts): 3 + 3 for its exhaustion; fail: 3 + 3.
	if len(all) != 2*(2+6+6) {
		t.Fatalf("stream has %d events, want %d", len(all), 2*(2+6+6))
	}
	var paged []tasker.DomainEvent
	var after int64
	for {
		page, err := eng.Events(context.Background(), after, 7)
		if err != nil {
			t.Fatalf("Events(%d, 7): %v", after, err)
		}
		if len(page) == 0 {
			break
		}
		if len(page) > 7 {
			t.Fatalf("page of %d with limit 7", len(page))
		}
		for _, ev := range page {
			if ev.Seq <= after {
				t.Fatalf("seq %d in the page after %d", ev.Seq, after)
			}
			after = ev.Seq
		}
		paged = append(paged, page...)
	}
	if !slices.Equal(eventIDs(paged), eventIDs(all)) {
		t.Errorf("paging returned %d events, not the stream's %d in order", len(paged), len(all))
	}
	seen := map[string]bool{}
	for _, ev := range all {
		if seen[ev.ID] {
			t.Errorf("event %s twice in the stream", ev.ID)
		}
		seen[ev.ID] = true
	}
	// A durable subscription receives the stream in the same order.
	eventually(t, "the subscriber to catch up", func() bool { d, _ := log.counts(); return d >= len(all) })
	log.mu.Lock()
	got := eventIDs(log.durable)
	log.mu.Unlock()
	if !slices.Equal(got, eventIDs(all)) {
		t.Errorf("the durable subscription received %d events in a different order than the stream", len(got))
	}
	// The default page size is 100; a cursor past the end reads nothing.
	if page, err := eng.Events(context.Background(), 0, 0); err != nil || len(page) != len(all) {
		t.Errorf("Events(0, 0) = %d events, %v; want %d", len(page), err, len(all))
	}
	if page, err := eng.Events(context.Background(), all[len(all)-1].Seq, 10); err != nil || len(page) != 0 {
		t.Errorf("Events past the end = %d events, %v", len(page), err)
	}
	// The subscription's stats end caught up: cursor at the last event, no
	// lag.
	eventually(t, "the cursor of *#0 to reach the end", func() bool {
		for _, s := range eng.EventStats(context.Background()).Subscriptions {
			if s.Name == "*#0" {
				return s.Cursor == all[len(all)-1].Seq && s.Lag == 0
			}
		}
		return false
	})
}
