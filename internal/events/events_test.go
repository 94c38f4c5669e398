package events

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tasker-go/tasker/template"
)

func TestMatchPattern(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		pattern, name string
		want          bool
	}{
		{"*", "order.created", true},
		{"*", "audit", true},
		{"order.*", "order.created", true},
		{"order.*", "order.item.added", true},
		{"order.*", "order", false},
		{"order.*", "orders.created", false},
		{"order.*", "user.order.created", false},
		{"order.item.*", "order.item.added", true},
		{"order.item.*", "order.created", false},
		{"order.created", "order.created", true},
		{"order.created", "order.created.late", false},
		{"order.created", "order.create", false},
		{"order.created", "order", false},
	} {
		if got := MatchPattern(c.pattern, c.name); got != c.want {
			t.Errorf("MatchPattern(%q, %q) = %v, want %v", c.pattern, c.name, got, c.want)
		}
	}
}

func TestValidatePattern(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		pattern string
		valid   bool
	}{
		{"*", true},
		{"order.*", true},
		{"order.item.*", true},
		{"order.created", true},
		{"audit", true},
		{"", false},
		{".*", false},
		{"**", false},
		{"order*", false},
		{"order.**", false},
		{"*.created", false},
		{"order.*.added", false},
		{"order.", false},
		{".order", false},
		{"order..created", false},
		{"order created", false},
		{"order.\tcreated", false},
	} {
		err := ValidatePattern(c.pattern)
		if (err == nil) != c.valid {
			t.Errorf("ValidatePattern(%q) = %v, want valid=%v", c.pattern, err, c.valid)
		}
		if err != nil && !strings.Contains(err.Error(), strconv.Quote(c.pattern)) {
			t.Errorf("ValidatePattern(%q) error %q does not quote the pattern", c.pattern, err)
		}
	}
}

// TestOutcomeMatches pins down all five conditions against the three
// outcomes: a retryable failure (one that will be retried) is a failure but
// not a permanent one.
func TestOutcomeMatches(t *testing.T) {
	t.Parallel()
	outcomes := []Outcome{OutcomeSuccess, OutcomeRetryableFailure, OutcomePermanentFailure}
	for _, c := range []struct {
		condition string
		want      []Outcome
	}{
		{template.EventOnSuccess, []Outcome{OutcomeSuccess}},
		{"", []Outcome{OutcomeSuccess}}, // the default condition
		{template.EventOnFailure, []Outcome{OutcomeRetryableFailure, OutcomePermanentFailure}},
		{template.EventOnRetryableFailure, []Outcome{OutcomeRetryableFailure}},
		{template.EventOnPermanentFailure, []Outcome{OutcomePermanentFailure}},
		{template.EventAlways, outcomes},
		{"sometimes", nil},
	} {
		for _, o := range outcomes {
			want := slices.Contains(c.want, o)
			if got := o.Matches(c.condition); got != want {
				t.Errorf("Outcome(%s).Matches(%q) = %v, want %v", o, c.condition, got, want)
			}
		}
	}
}

// eventsTemplate has one step, "charge", whose declarations cover every
// delivery mode, a publisher, and a payload schema.
const eventsTemplate = `
name: checkout
namespace_name: shop
version: 2.1.0
steps:
  - name: charge
    handler: {callable: shop.charge}
    publishes_events:
      - {name: payment.durable}
      - {name: payment.fast, delivery_mode: fast}
      - {name: payment.both, delivery_mode: broadcast}
      - {name: payment.failed, condition: failure, delivery_mode: broadcast}
  - name: publish
    handler: {callable: shop.publish}
    publishes_events:
      - {name: shipment.veto, publisher: veto}
      - {name: shipment.enrich, publisher: enrich}
      - {name: shipment.error, publisher: broken}
      - {name: shipment.panic, publisher: panicky}
      - {name: shipment.hang, publisher: hang}
      - {name: shipment.stubborn, publisher: stubborn}
      - {name: shipment.plain}
  - name: validate
    handler: {callable: shop.validate}
    publishes_events:
      - name: invoice.ready
        schema: {type: object, required: [invoice_id], properties: {invoice_id: {type: integer}}}
      - name: invoice.enriched
        publisher: enrich
        schema: {type: object, required: [enriched]}
  - name: quiet
    handler: {callable: shop.quiet}
`

func parseTemplate(t testing.TB, doc string) *template.Template {
	t.Helper()
	tmpl, err := template.Parse([]byte(doc))
	if err != nil {
		t.Fatalf("parse template: %v", err)
	}
	return tmpl
}

// logBuffer collects log output safely from many goroutines.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func newLogger() (*slog.Logger, *logBuffer) {
	buf := &logBuffer{}
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}

func names(evs []*Event) []string {
	out := make([]string, len(evs))
	for i, ev := range evs {
		out[i] = ev.Name
	}
	return out
}

func outcome(tmpl *template.Template, step string, o Outcome, durable bool) StepOutcome {
	so := StepOutcome{
		Template: tmpl, StepName: step, TaskUUID: "task-1", StepUUID: "step-" + step,
		Context: json.RawMessage(`{"order_id":7}`), Attempt: 2, Outcome: o,
		At: time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC), Durable: durable,
	}
	if o == OutcomeSuccess {
		so.Result = json.RawMessage(`{"charged":true}`)
	} else {
		so.Error = json.RawMessage(`{"message":"card declined","type":"handler_error","retryable":false}`)
	}
	return so
}

// counts reads a builder's counters for one delivery class.
func counts(b *Builder, durable bool) Counters { return b.counters(durable).snapshot() }

// TestBuildDeliveryModes checks which declarations each delivery class
// builds: durable and broadcast in the outbox, fast and broadcast on the
// bus, each only for matching outcomes.
func TestBuildDeliveryModes(t *testing.T) {
	t.Parallel()
	tmpl := parseTemplate(t, eventsTemplate)
	log, _ := newLogger()
	for _, c := range []struct {
		name    string
		outcome Outcome
		durable bool
		want    []string
	}{
		{"durable success", OutcomeSuccess, true, []string{"payment.durable", "payment.both"}},
		{"fast success", OutcomeSuccess, false, []string{"payment.fast", "payment.both"}},
		{"durable retryable failure", OutcomeRetryableFailure, true, []string{"payment.failed"}},
		{"fast permanent failure", OutcomePermanentFailure, false, []string{"payment.failed"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := NewBuilder(log, time.Second)
			evs := b.Build(t.Context(), outcome(tmpl, "charge", c.outcome, c.durable))
			if !slices.Equal(names(evs), c.want) {
				t.Fatalf("built %q, want %q", names(evs), c.want)
			}
			if got := counts(b, c.durable).Published; got != uint64(len(c.want)) {
				t.Errorf("published counter %d, want %d", got, len(c.want))
			}
			if got := counts(b, !c.durable).Published; got != 0 {
				t.Errorf("the other delivery class counted %d published", got)
			}
		})
	}

	b := NewBuilder(log, time.Second)
	if evs := b.Build(t.Context(), outcome(tmpl, "quiet", OutcomeSuccess, true)); len(evs) != 0 {
		t.Errorf("a step without declarations built %q", names(evs))
	}
	if evs := b.Build(t.Context(), outcome(tmpl, "no_such_step", OutcomeSuccess, true)); len(evs) != 0 {
		t.Errorf("an unknown step built %q", names(evs))
	}
}

// TestBuildEventFields checks the payload every event carries.
func TestBuildEventFields(t *testing.T) {
	t.Parallel()
	tmpl := parseTemplate(t, eventsTemplate)
	log, _ := newLogger()
	b := NewBuilder(log, time.Second)

	o := outcome(tmpl, "charge", OutcomeSuccess, true)
	evs := b.Build(t.Context(), o)
	if len(evs) != 2 {
		t.Fatalf("built %q, want 2 events", names(evs))
	}
	ev := evs[0]
	want := Event{
		ID: ev.ID, Name: "payment.durable", Version: "2.1.0", TaskUUID: "task-1", StepUUID: "step-charge",
		StepName: "charge", Namespace: "shop", TaskName: "checkout", CorrelationID: "task-1",
		Condition: "success", DeliveryMode: "durable", Attempt: 2, Payload: o.Result,
		Context: o.Context, FiredAt: o.At,
	}
	got, _ := json.Marshal(ev)
	wantJSON, _ := json.Marshal(want)
	if !bytes.Equal(got, wantJSON) {
		t.Errorf("event\n got %s\nwant %s", got, wantJSON)
	}
	if ev.ID == "" || ev.ID == evs[1].ID {
		t.Errorf("event IDs %q and %q: want distinct, non-empty", ev.ID, evs[1].ID)
	}
	if evs[1].DeliveryMode != "broadcast" {
		t.Errorf("second event delivery mode %q, want broadcast", evs[1].DeliveryMode)
	}

	// On failure the payload is the error, and the error is kept too.
	fo := outcome(tmpl, "charge", OutcomePermanentFailure, true)
	evs = b.Build(t.Context(), fo)
	if len(evs) != 1 {
		t.Fatalf("built %q on failure, want 1 event", names(evs))
	}
	if string(evs[0].Payload) != string(fo.Error) || string(evs[0].Error) != string(fo.Error) {
		t.Errorf("failure event payload %s error %s, want both %s", evs[0].Payload, evs[0].Error, fo.Error)
	}
	if evs[0].Condition != "permanent_failure" {
		t.Errorf("failure event condition %q, want permanent_failure", evs[0].Condition)
	}
}

type publisherFunc func(ctx context.Context, ev *Event) (bool, error)

func (f publisherFunc) Publish(ctx context.Context, ev *Event) (bool, error) { return f(ctx, ev) }

// TestBuildPublishers checks custom publishers: a veto, a transform that
// adds metadata, and an error, a panic, a hang that honours its context and
// one that ignores it; every failure drops only its own event, and is
// counted and logged.
func TestBuildPublishers(t *testing.T) {
	t.Parallel()
	tmpl := parseTemplate(t, eventsTemplate)
	log, logs := newLogger()
	b := NewBuilder(log, 100*time.Millisecond)
	release := make(chan struct{})
	defer close(release)
	b.RegisterPublisher("veto", publisherFunc(func(context.Context, *Event) (bool, error) { return false, nil }))
	b.RegisterPublisher("enrich", publisherFunc(func(_ context.Context, ev *Event) (bool, error) {
		ev.Payload = json.RawMessage(`{"enriched":true}`)
		ev.Metadata = map[string]any{"source": "enrich", "step": ev.StepName}
		return true, nil
	}))
	b.RegisterPublisher("broken", publisherFunc(func(context.Context, *Event) (bool, error) {
		return true, errors.New("downstream is down")
	}))
	b.RegisterPublisher("panicky", publisherFunc(func(context.Context, *Event) (bool, error) { panic("publisher bug") }))
	b.RegisterPublisher("hang", publisherFunc(func(ctx context.Context, _ *Event) (bool, error) {
		<-ctx.Done()
		return true, nil
	}))
	b.RegisterPublisher("stubborn", publisherFunc(func(_ context.Context, ev *Event) (bool, error) {
		<-release // ignores its context; its late edits must not leak
		ev.Payload = json.RawMessage(`{"late":true}`)
		return true, nil
	}))

	start := time.Now()
	evs := b.Build(t.Context(), outcome(tmpl, "publish", OutcomeSuccess, true))
	elapsed := time.Since(start)
	if want := []string{"shipment.enrich", "shipment.plain"}; !slices.Equal(names(evs), want) {
		t.Fatalf("built %q, want %q", names(evs), want)
	}
	if string(evs[0].Payload) != `{"enriched":true}` || evs[0].Metadata["source"] != "enrich" || evs[0].Metadata["step"] != "publish" {
		t.Errorf("transformed event payload %s metadata %v", evs[0].Payload, evs[0].Metadata)
	}
	if string(evs[1].Payload) != `{"charged":true}` || evs[1].Metadata != nil {
		t.Errorf("plain event payload %s metadata %v: another publisher's edits leaked", evs[1].Payload, evs[1].Metadata)
	}
	c := counts(b, true)
	if c.Published != 2 || c.Vetoed != 1 || c.Failed != 4 || c.SchemaRejected != 0 {
		t.Errorf("counters %+v, want published 2, vetoed 1, failed 4", c)
	}
	// Two hangs, each cut off at the 100ms timeout; generous bound.
	if elapsed > 10*time.Second {
		t.Errorf("Build took %s with a 100ms publisher timeout", elapsed)
	}
	out := logs.String()
	for _, want := range []string{"downstream is down", "publisher bug", "timed out", "shipment.error", "shipment.panic", "shipment.hang", "shipment.stubborn"} {
		if !strings.Contains(out, want) {
			t.Errorf("log does not mention %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "shipment.veto") {
		t.Errorf("a veto is not a failure, but it was logged:\n%s", out)
	}
}

// TestBuildSchema checks that a payload failing its schema is not
// published, and is counted and logged with the reason, and that the
// schema sees the payload as the publisher left it.
func TestBuildSchema(t *testing.T) {
	t.Parallel()
	tmpl := parseTemplate(t, eventsTemplate)
	log, logs := newLogger()
	b := NewBuilder(log, time.Second)
	b.RegisterPublisher("enrich", publisherFunc(func(_ context.Context, ev *Event) (bool, error) {
		ev.Payload = json.RawMessage(`{"enriched":true}`)
		return true, nil
	}))

	o := outcome(tmpl, "validate", OutcomeSuccess, true)
	o.Result = json.RawMessage(`{"invoice_id":"INV-1"}`)
	evs := b.Build(t.Context(), o)
	// invoice.enriched passes: its publisher rewrote the payload.
	if want := []string{"invoice.enriched"}; !slices.Equal(names(evs), want) {
		t.Fatalf("built %q, want %q", names(evs), want)
	}
	if c := counts(b, true); c.SchemaRejected != 1 || c.Published != 1 {
		t.Errorf("durable counters %+v, want 1 schema-rejected, 1 published", c)
	}
	out := logs.String()
	for _, want := range []string{"invoice.ready", "invoice_id", "task-1"} {
		if !strings.Contains(out, want) {
			t.Errorf("schema rejection log does not mention %q:\n%s", want, out)
		}
	}

	o.Result = json.RawMessage(`{"invoice_id":42}`)
	if evs := b.Build(t.Context(), o); len(evs) != 2 {
		t.Errorf("a valid payload built %q, want both events", names(evs))
	}
	if c := counts(b, true); c.SchemaRejected != 1 {
		t.Errorf("a valid payload changed schema-rejected to %d", c.SchemaRejected)
	}
}

// TestCheckTemplate checks that a declaration naming an unregistered
// publisher is a problem naming the step, the field and the event.
func TestCheckTemplate(t *testing.T) {
	t.Parallel()
	tmpl := parseTemplate(t, eventsTemplate)
	log, _ := newLogger()
	b := NewBuilder(log, time.Second)
	for _, name := range []string{"veto", "enrich", "broken", "panicky", "hang"} {
		b.RegisterPublisher(name, publisherFunc(func(context.Context, *Event) (bool, error) { return true, nil }))
	}
	problems := b.CheckTemplate(tmpl)
	if len(problems) != 1 {
		t.Fatalf("problems %+v, want one (publisher stubborn)", problems)
	}
	p := problems[0]
	if p.Step != "publish" || p.Field != "publishes_events[5].publisher" || p.Template != "shop/checkout/2.1.0" ||
		!strings.Contains(p.Message, `"stubborn"`) || !strings.Contains(p.Message, "shipment.stubborn") {
		t.Errorf("problem %+v does not name the step, field, publisher and event", p)
	}
	b.RegisterPublisher("stubborn", publisherFunc(func(context.Context, *Event) (bool, error) { return true, nil }))
	if problems := b.CheckTemplate(tmpl); len(problems) != 0 {
		t.Errorf("problems %+v once every publisher is registered", problems)
	}
}
