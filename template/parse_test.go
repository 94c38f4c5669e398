package template

import (
	"encoding/json"
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"
)

func mustParse(t *testing.T, doc string) *Template {
	t.Helper()
	tmpl, err := Parse([]byte(doc))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return tmpl
}

func parseProblems(t *testing.T, doc string) []Problem {
	t.Helper()
	tmpl, err := Parse([]byte(doc))
	if err == nil {
		t.Fatalf("Parse succeeded, want an error")
	}
	if tmpl != nil {
		t.Errorf("Parse returned a template along with an error")
	}
	if !errors.Is(err, ErrInvalidTemplate) {
		t.Errorf("errors.Is(err, ErrInvalidTemplate) = false for %v", err)
	}
	var verr *ValidationError
	if !errors.As(err, &verr) {
		t.Fatalf("error is %T, want *ValidationError", err)
	}
	return verr.Problems
}

func TestParseFullTemplate(t *testing.T) {
	t.Parallel()
	doc, err := os.ReadFile("testdata/full.yaml")
	if err != nil {
		t.Fatal(err)
	}
	tmpl, err := Parse(doc)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}

	if got, want := tmpl.Key(), "ecommerce/order_fulfillment/1.2.0-beta.1"; got != want {
		t.Errorf("Key() = %q, want %q", got, want)
	}
	if tmpl.Description != "Validate, charge and ship an order." {
		t.Errorf("Description = %q", tmpl.Description)
	}
	wantMeta := map[string]any{"owner": "fulfilment-team", "tags": []any{"orders", "payments"}, "priority": 7}
	if !reflect.DeepEqual(tmpl.Metadata, wantMeta) {
		t.Errorf("Metadata = %#v, want %#v", tmpl.Metadata, wantMeta)
	}
	assertJSON(t, "InputSchema", tmpl.InputSchema, `{"type":"object","required":["order_id","customer"],
		"properties":{"order_id":{"type":"integer","minimum":1},
		"customer":{"type":"object","required":["email"],"properties":{"email":{"type":"string"}}}}}`)
	if tmpl.IdentityStrategy != IdentityCallerProvided {
		t.Errorf("IdentityStrategy = %q", tmpl.IdentityStrategy)
	}
	wantLife := Lifecycle{MaxDurationMinutes: 120, MaxStepsInProcessMinutes: 30, MaxWaitingForDependenciesMinutes: 60, MaxWaitingForRetryMinutes: 15}
	if tmpl.Lifecycle != wantLife {
		t.Errorf("Lifecycle = %+v, want %+v", tmpl.Lifecycle, wantLife)
	}
	if string(tmpl.Source) != string(doc) {
		t.Errorf("Source differs from the document")
	}
	if len(tmpl.ContentHash) != 64 {
		t.Errorf("ContentHash = %q, want 64 hex digits", tmpl.ContentHash)
	}

	if len(tmpl.Steps) != 5 {
		t.Fatalf("got %d steps, want 5", len(tmpl.Steps))
	}
	validate := tmpl.Steps[0]
	assertJSON(t, "validate_order initialization", validate.Handler.Initialization, `{"strict":true,"limits":{"max_items":50}}`)
	validate.Handler.Initialization = nil
	wantValidate := Step{
		Name:           "validate_order",
		Description:    "Check the order is complete.",
		Type:           StepStandard,
		Handler:        Handler{Callable: "orders.validate", Method: "call"},
		Retry:          Retry{Retryable: false, MaxAttempts: 1, Backoff: BackoffNone, BackoffBaseMS: 0, MaxBackoffMS: 0},
		TimeoutSeconds: 10,
	}
	if !reflect.DeepEqual(validate, wantValidate) {
		t.Errorf("step validate_order =\n%+v\nwant\n%+v", validate, wantValidate)
	}

	charge := tmpl.Steps[1]
	if charge.Type != StepDecision || charge.Handler.Callable != "payments.charge" || charge.TimeoutSeconds != 30 {
		t.Errorf("step charge_payment = %+v", charge)
	}
	if !reflect.DeepEqual(charge.Dependencies, []string{"validate_order"}) {
		t.Errorf("charge_payment dependencies = %v", charge.Dependencies)
	}
	wantRetry := Retry{Retryable: true, MaxAttempts: 5, Backoff: BackoffFibonacci, BackoffBaseMS: 500, MaxBackoffMS: 60000}
	if charge.Retry != wantRetry {
		t.Errorf("charge_payment retry = %+v, want %+v", charge.Retry, wantRetry)
	}
	if len(charge.PublishesEvents) != 2 {
		t.Fatalf("charge_payment events = %+v", charge.PublishesEvents)
	}
	ev := charge.PublishesEvents[0]
	assertJSON(t, "payment.charged schema", ev.Schema, `{"type":"object","required":["amount"],"properties":{"amount":{"type":"number"}}}`)
	ev.Schema = nil
	if want := (EventDecl{Name: "payment.charged", Condition: EventOnSuccess, DeliveryMode: DeliveryBroadcast, Publisher: "payments_publisher"}); !reflect.DeepEqual(ev, want) {
		t.Errorf("event 0 = %+v, want %+v", ev, want)
	}
	if want := (EventDecl{Name: "payment.failed", Condition: EventOnPermanentFailure, DeliveryMode: DeliveryFast}); !reflect.DeepEqual(charge.PublishesEvents[1], want) {
		t.Errorf("event 1 = %+v, want %+v", charge.PublishesEvents[1], want)
	}

	split := tmpl.Steps[2]
	if split.Type != StepBatchable || !reflect.DeepEqual(split.BatchConfig, map[string]any{"batch_size": 100, "parallelism": 4}) {
		t.Errorf("split_shipments = %+v", split)
	}
	if tmpl.Steps[3].Type != StepBatchWorker || tmpl.Steps[3].Retry.Backoff != BackoffLinear {
		t.Errorf("ship_batch = %+v", tmpl.Steps[3])
	}
	notify := tmpl.Steps[4]
	if notify.Type != StepDeferredConvergence || !reflect.DeepEqual(notify.Dependencies, []string{"ship_batch", "charge_payment"}) {
		t.Errorf("notify_customer = %+v", notify)
	}
	if want := []EventDecl{{Name: "order.completed", Condition: EventAlways, DeliveryMode: DeliveryDurable}}; !reflect.DeepEqual(notify.PublishesEvents, want) {
		t.Errorf("notify_customer events = %+v", notify.PublishesEvents)
	}

	if err := tmpl.Validate(); err != nil {
		t.Errorf("Validate on a parsed template: %v", err)
	}
	if s, ok := tmpl.Step("ship_batch"); !ok || s != &tmpl.Steps[3] {
		t.Errorf("Step(ship_batch) = %v, %v", s, ok)
	}
	if _, ok := tmpl.Step("missing"); ok {
		t.Errorf("Step(missing) found a step")
	}
}

func assertJSON(t *testing.T, what string, got json.RawMessage, want string) {
	t.Helper()
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Errorf("%s: %s is not JSON: %v", what, got, err)
		return
	}
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatalf("%s: bad expectation: %v", what, err)
	}
	if !reflect.DeepEqual(g, w) {
		t.Errorf("%s = %s, want %s", what, got, want)
	}
}

func TestParseDefaults(t *testing.T) {
	t.Parallel()
	tmpl := mustParse(t, `
name: minimal
namespace_name: demo
version: 0.1.0
steps:
  - name: only
    handler: {callable: demo.only}
    publishes_events:
      - name: demo.done
`)
	if tmpl.IdentityStrategy != IdentityStrict {
		t.Errorf("IdentityStrategy = %q, want strict", tmpl.IdentityStrategy)
	}
	if tmpl.Metadata != nil || tmpl.InputSchema != nil || tmpl.Lifecycle != (Lifecycle{}) {
		t.Errorf("optional template fields not empty: %+v", tmpl)
	}
	s := tmpl.Steps[0]
	want := Step{
		Name:            "only",
		Type:            StepStandard,
		Handler:         Handler{Callable: "demo.only"},
		Retry:           Retry{Retryable: true, MaxAttempts: 3, Backoff: BackoffExponential, BackoffBaseMS: 1000, MaxBackoffMS: 30000},
		PublishesEvents: []EventDecl{{Name: "demo.done", Condition: EventOnSuccess, DeliveryMode: DeliveryDurable}},
	}
	if !reflect.DeepEqual(s, want) {
		t.Errorf("step =\n%+v\nwant\n%+v", s, want)
	}
}

func TestParseRetryDefaultsPerField(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name  string
		retry string
		want  Retry
	}{
		{"null retry", "retry:", Retry{true, 3, BackoffExponential, 1000, 30000}},
		{"empty mapping", "retry: {}", Retry{true, 3, BackoffExponential, 1000, 30000}},
		{"only attempts", "retry: {max_attempts: 7}", Retry{true, 7, BackoffExponential, 1000, 30000}},
		{"explicit zero attempts", "retry: {max_attempts: 0}", Retry{true, 0, BackoffExponential, 1000, 30000}},
		{"not retryable", "retry: {retryable: false}", Retry{false, 3, BackoffExponential, 1000, 30000}},
		{"large base raises the default cap", "retry: {backoff_base_ms: 45000}", Retry{true, 3, BackoffExponential, 45000, 45000}},
		{"small base keeps the default cap", "retry: {backoff_base_ms: 10}", Retry{true, 3, BackoffExponential, 10, 30000}},
		{"only cap", "retry: {max_backoff_ms: 2000}", Retry{true, 3, BackoffExponential, 1000, 2000}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tmpl := mustParse(t, "name: r\nnamespace_name: d\nversion: 1.0.0\nsteps:\n  - name: s\n    handler: {callable: c}\n    "+tc.retry+"\n")
			if got := tmpl.Steps[0].Retry; got != tc.want {
				t.Errorf("Retry = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestParseAnchorsAndMergeKeys(t *testing.T) {
	t.Parallel()
	tmpl := mustParse(t, `
name: anchors
namespace_name: demo
version: 1.0.0
steps:
  - name: first
    handler: &h {callable: demo.shared, initialization: {region: eu}}
    retry: &r {max_attempts: 9, backoff: linear}
  - name: second
    handler: *h
    retry:
      <<: *r
      backoff: none
`)
	second := tmpl.Steps[1]
	if second.Handler.Callable != "demo.shared" {
		t.Errorf("aliased handler = %+v", second.Handler)
	}
	assertJSON(t, "aliased initialization", second.Handler.Initialization, `{"region":"eu"}`)
	if second.Retry.MaxAttempts != 9 || second.Retry.Backoff != BackoffNone {
		t.Errorf("merged retry = %+v, want 9 attempts and the explicit backoff", second.Retry)
	}
}

// validBase is a valid template; cases below break one thing in it.
const validBase = `name: charge
namespace_name: payments
version: 1.0.0
steps:
  - name: authorize
    handler: {callable: payments.authorize}
  - name: capture
    handler: {callable: payments.capture}
    dependencies: [authorize]
`

func TestParseReportsEachProblem(t *testing.T) {
	t.Parallel()
	step := func(body string) string {
		return "name: charge\nnamespace_name: payments\nversion: 1.0.0\nsteps:\n  - name: capture\n" + body
	}
	top := func(fields string) string {
		return fields + "\nsteps:\n  - name: capture\n    handler: {callable: payments.capture}\n"
	}
	const ok = "    handler: {callable: c}\n"
	cases := []struct {
		name      string
		doc       string
		step      string
		field     string
		fragment  string
		line      int // checked when not 0
		template  string
		checkTmpl bool
	}{
		{name: "duplicate step name",
			doc:  step(ok + "  - name: capture\n" + ok),
			step: "capture", field: "name", fragment: `duplicate step name "capture" (first declared at line 5)`, line: 7},
		{name: "dependency on unknown step",
			doc:  step(ok + "    dependencies:\n      - authorize\n"),
			step: "capture", field: "dependencies", fragment: `unknown step "authorize"`, line: 8},
		{name: "self dependency",
			doc:  step(ok + "    dependencies: [capture]\n"),
			step: "capture", field: "dependencies", fragment: `depends on itself`},
		{name: "dependency listed twice",
			doc:  step(ok + "    dependencies: [other, other]\n  - name: other\n" + ok),
			step: "capture", field: "dependencies", fragment: `lists step "other" more than once`},
		{name: "missing callable",
			doc:  step("    handler: {method: run}\n"),
			step: "capture", field: "handler.callable", fragment: "is required", line: 6},
		{name: "missing handler",
			doc:  step("    description: no handler\n"),
			step: "capture", field: "handler.callable", fragment: "is required", line: 5},
		{name: "unknown step type",
			doc:  step(ok + "    type: parallel\n"),
			step: "capture", field: "type", fragment: `unknown step type "parallel"`, line: 7},
		{name: "unknown backoff",
			doc:  step(ok + "    retry: {backoff: quadratic}\n"),
			step: "capture", field: "retry.backoff", fragment: `unknown backoff "quadratic"`},
		{name: "negative max attempts",
			doc:  step(ok + "    retry: {max_attempts: -1}\n"),
			step: "capture", field: "retry.max_attempts", fragment: "must not be negative"},
		{name: "negative backoff base",
			doc:  step(ok + "    retry: {backoff_base_ms: -5}\n"),
			step: "capture", field: "retry.backoff_base_ms", fragment: "must not be negative"},
		{name: "negative max backoff",
			doc:  step(ok + "    retry: {max_backoff_ms: -5}\n"),
			step: "capture", field: "retry.max_backoff_ms", fragment: "must not be negative"},
		{name: "max backoff below base",
			doc:  step(ok + "    retry: {backoff_base_ms: 5000, max_backoff_ms: 100}\n"),
			step: "capture", field: "retry.max_backoff_ms", fragment: "must not be smaller than retry.backoff_base_ms"},
		{name: "negative timeout",
			doc:  step(ok + "    timeout_seconds: -1\n"),
			step: "capture", field: "timeout_seconds", fragment: "must not be negative", line: 7},
		{name: "negative lifecycle",
			doc:   top("name: charge\nnamespace_name: payments\nversion: 1.0.0\nlifecycle:\n  max_waiting_for_retry_minutes: -3"),
			field: "lifecycle.max_waiting_for_retry_minutes", fragment: "must not be negative", line: 5},
		{name: "upper-case name",
			doc:   top("name: Charge\nnamespace_name: payments\nversion: 1.0.0"),
			field: "name", fragment: "must be lowercase", line: 1},
		{name: "name with space",
			doc:   top("name: charge card\nnamespace_name: payments\nversion: 1.0.0"),
			field: "name", fragment: "must be lowercase"},
		{name: "name starting with a digit",
			doc:   top("name: 1charge\nnamespace_name: payments\nversion: 1.0.0"),
			field: "name", fragment: "must be lowercase"},
		{name: "name too long",
			doc:   top("name: " + strings.Repeat("a", 65) + "\nnamespace_name: payments\nversion: 1.0.0"),
			field: "name", fragment: "at most 64"},
		{name: "malformed namespace",
			doc:   top("name: charge\nnamespace_name: pay/ments\nversion: 1.0.0"),
			field: "namespace_name", fragment: "must be lowercase", line: 2},
		{name: "malformed version",
			doc:   top("name: charge\nnamespace_name: payments\nversion: v1"),
			field: "version", fragment: "not a semantic version", line: 3},
		{name: "version with leading zero",
			doc:   top("name: charge\nnamespace_name: payments\nversion: 1.02.0"),
			field: "version", fragment: "not a semantic version"},
		{name: "version that YAML reads as a number",
			doc:   top("name: charge\nnamespace_name: payments\nversion: 1.0"),
			field: "version", fragment: "must be a string, got a number (quote it", line: 3},
		{name: "missing name",
			doc:   top("namespace_name: payments\nversion: 1.0.0"),
			field: "name", fragment: "is required", template: "payments/?/1.0.0", checkTmpl: true},
		{name: "missing namespace",
			doc:   top("name: charge\nversion: 1.0.0"),
			field: "namespace_name", fragment: "is required"},
		{name: "missing version",
			doc:   top("name: charge\nnamespace_name: payments"),
			field: "version", fragment: "is required", template: "payments/charge/?", checkTmpl: true},
		{name: "no steps",
			doc:   "name: charge\nnamespace_name: payments\nversion: 1.0.0\nsteps: []\n",
			field: "steps", fragment: "at least one step", line: 4},
		{name: "steps absent",
			doc:   "name: charge\nnamespace_name: payments\nversion: 1.0.0\n",
			field: "steps", fragment: "at least one step"},
		{name: "steps not a list",
			doc:   "name: charge\nnamespace_name: payments\nversion: 1.0.0\nsteps: {a: 1}\n",
			field: "steps", fragment: "must be a list of steps"},
		{name: "step not a mapping",
			doc:  step(ok + "  - just a string\n"),
			step: "steps[1]", field: "", fragment: "must be a mapping of step fields", line: 7},
		{name: "missing step name",
			doc:  "name: charge\nnamespace_name: payments\nversion: 1.0.0\nsteps:\n  - handler: {callable: c}\n",
			step: "steps[0]", field: "name", fragment: "is required"},
		{name: "malformed step name",
			doc:  step(ok + "  - name: Capture-Again\n" + ok),
			step: "Capture-Again", field: "name", fragment: "must be lowercase"},
		{name: "unknown identity strategy",
			doc:   top("name: charge\nnamespace_name: payments\nversion: 1.0.0\nidentity_strategy: sometimes"),
			field: "identity_strategy", fragment: `unknown identity strategy "sometimes"`},
		{name: "event name not dotted lowercase",
			doc:  step(ok + "    publishes_events:\n      - name: Order.Done\n"),
			step: "capture", field: "publishes_events[0].name", fragment: "dotted lowercase identifier", line: 8},
		{name: "event name with hyphen",
			doc:  step(ok + "    publishes_events:\n      - name: order.is-done\n"),
			step: "capture", field: "publishes_events[0].name", fragment: "dotted lowercase identifier"},
		{name: "event without name",
			doc:  step(ok + "    publishes_events:\n      - condition: failure\n"),
			step: "capture", field: "publishes_events[0].name", fragment: "is required"},
		{name: "unknown event condition",
			doc:  step(ok + "    publishes_events:\n      - {name: order.done, condition: sometimes}\n"),
			step: "capture", field: "publishes_events[0].condition", fragment: `unknown condition "sometimes"`},
		{name: "unknown delivery mode",
			doc:  step(ok + "    publishes_events:\n      - {name: order.done, delivery_mode: pigeon}\n"),
			step: "capture", field: "publishes_events[0].delivery_mode", fragment: `unknown delivery mode "pigeon"`},
		{name: "event schema does not compile",
			doc:  step(ok + "    publishes_events:\n      - name: order.done\n        schema: {type: 12}\n"),
			step: "capture", field: "publishes_events[0].schema", fragment: "not a usable JSON Schema", line: 9},
		{name: "event declared twice",
			doc:  step(ok + "    publishes_events:\n      - name: order.done\n      - name: order.done\n"),
			step: "capture", field: "publishes_events[1].name", fragment: "declared more than once"},
		{name: "unknown top-level field",
			doc:   top("name: charge\nnamespace_name: payments\nversion: 1.0.0\nversoin: 2.0.0"),
			field: "versoin", fragment: `unknown field "versoin" (did you mean "version"?)`, line: 4},
		{name: "unknown step field",
			doc:  step(ok + "    timeout: 5\n"),
			step: "capture", field: "timeout", fragment: `unknown field "timeout"`, line: 7},
		{name: "unknown handler field",
			doc:  step("    handler: {callable: c, class: X}\n"),
			step: "capture", field: "handler.class", fragment: `unknown field "class"`},
		{name: "unknown retry field",
			doc:  step(ok + "    retry: {max_attempt: 3}\n"),
			step: "capture", field: "retry.max_attempt", fragment: `(did you mean "max_attempts"?)`},
		{name: "unknown event field",
			doc:  step(ok + "    publishes_events:\n      - {name: a.b, mode: fast}\n"),
			step: "capture", field: "publishes_events[0].mode", fragment: `unknown field "mode"`},
		{name: "unknown lifecycle field",
			doc:   top("name: charge\nnamespace_name: payments\nversion: 1.0.0\nlifecycle: {max_minutes: 3}"),
			field: "lifecycle.max_minutes", fragment: `unknown field "max_minutes"`},
		{name: "input schema does not compile",
			doc:   top("name: charge\nnamespace_name: payments\nversion: 1.0.0\ninput_schema:\n  type: object\n  properties: {a: {minimum: x}}"),
			field: "input_schema", fragment: "not a usable JSON Schema", line: 4},
		{name: "input schema not a mapping",
			doc:   top("name: charge\nnamespace_name: payments\nversion: 1.0.0\ninput_schema: [1]"),
			field: "input_schema", fragment: "must be a mapping (a JSON Schema) or a boolean"},
		{name: "input schema referring outside itself",
			doc:   top("name: charge\nnamespace_name: payments\nversion: 1.0.0\ninput_schema: {$ref: 'file:///etc/passwd'}"),
			field: "input_schema", fragment: "only references within the schema itself"},
		{name: "key written twice",
			doc:   top("name: charge\nnamespace_name: payments\nversion: 1.0.0\nname: charge"),
			field: "name", fragment: "written more than once (first at line 1)", line: 4},
		{name: "integer field given text",
			doc:  step(ok + "    timeout_seconds: soon\n"),
			step: "capture", field: "timeout_seconds", fragment: "must be an integer, got a string"},
		{name: "integer field given a fraction",
			doc:  step(ok + "    retry: {max_attempts: 2.5}\n"),
			step: "capture", field: "retry.max_attempts", fragment: "must be an integer, got a number"},
		{name: "integer out of range",
			doc:  step(ok + "    retry: {backoff_base_ms: 99999999999999999999}\n"),
			step: "capture", field: "retry.backoff_base_ms", fragment: "must be an integer"},
		{name: "boolean field given text",
			doc:  step(ok + "    retry: {retryable: sometimes}\n"),
			step: "capture", field: "retry.retryable", fragment: "must be true or false"},
		{name: "handler not a mapping",
			doc:  step("    handler: payments.capture\n"),
			step: "capture", field: "handler", fragment: "must be a mapping, got a string", line: 6},
		{name: "dependencies not a list",
			doc:  step(ok + "    dependencies: authorize\n"),
			step: "capture", field: "dependencies", fragment: "must be a list of step names"},
		{name: "initialization not a mapping",
			doc:  step("    handler: {callable: c, initialization: [1, 2]}\n"),
			step: "capture", field: "handler.initialization", fragment: "must be a mapping, got a list"},
		{name: "metadata not a mapping",
			doc:   top("name: charge\nnamespace_name: payments\nversion: 1.0.0\nmetadata: owner"),
			field: "metadata", fragment: "must be a mapping"},
		{name: "batch config not a mapping",
			doc:  step(ok + "    batch_config: 10\n"),
			step: "capture", field: "batch_config", fragment: "must be a mapping"},
		{name: "non-finite number in free-form data",
			doc:  step(ok + "    batch_config: {ratio: .inf}\n"),
			step: "capture", field: "batch_config", fragment: "not a finite number"},
		{name: "self-referencing alias in free-form data",
			doc:   top("name: charge\nnamespace_name: payments\nversion: 1.0.0\nmetadata: &m {self: *m}"),
			field: "metadata", fragment: "refers to a value that contains it"},
		{name: "self-merging mapping",
			doc:  step(ok + "    retry: &r {<<: *r}\n"),
			step: "capture", field: "retry", fragment: "merge key refers to the mapping that contains it"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			problems := parseProblems(t, tc.doc)
			for _, p := range problems {
				if p.Step == tc.step && p.Field == tc.field && strings.Contains(p.Message, tc.fragment) {
					if tc.line != 0 && p.Line != tc.line {
						t.Errorf("problem %q: line %d, want %d", p, p.Line, tc.line)
					}
					if tc.checkTmpl && p.Template != tc.template {
						t.Errorf("problem %q: template %q, want %q", p, p.Template, tc.template)
					}
					return
				}
			}
			t.Errorf("no problem with step %q, field %q, message containing %q; got:\n%s",
				tc.step, tc.field, tc.fragment, (&ValidationError{Problems: problems}).Error())
		})
	}
}

func TestParseAcceptsNameVariants(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"a", "charge_card", "charge-card", "billing.v2", "a1.b_2.c-3", strings.Repeat("a", 64)} {
		doc := "name: " + name + "\nnamespace_name: " + name + "\nversion: 10.20.30-rc.1\nsteps:\n  - name: " + name + "\n    handler: {callable: c}\n"
		if _, err := Parse([]byte(doc)); err != nil {
			t.Errorf("name %q: %v", name, err)
		}
	}
}

func TestParseReportsAllProblemsTogether(t *testing.T) {
	t.Parallel()
	problems := parseProblems(t, `name: Charge
namespace_name: payments
version: one
steps:
  - name: authorize
    handler: {}
    retry: {backoff: sometimes}
  - name: capture
    handler: {callable: payments.capture}
    dependencies: [authorise]
    colour: blue
`)
	want := []struct {
		step, field string
		line        int
	}{
		{"", "name", 1},
		{"", "version", 3},
		{"authorize", "handler.callable", 6},
		{"authorize", "retry.backoff", 7},
		{"capture", "dependencies", 10},
		{"capture", "colour", 11},
	}
	if len(problems) != len(want) {
		t.Fatalf("got %d problems, want %d:\n%s", len(problems), len(want), (&ValidationError{Problems: problems}).Error())
	}
	for i, w := range want {
		p := problems[i]
		if p.Step != w.step || p.Field != w.field || p.Line != w.line || p.Template != "payments/Charge/one" {
			t.Errorf("problem %d = %+v, want step %q field %q line %d", i, p, w.step, w.field, w.line)
		}
	}
}

func TestParseCyclePrintsPath(t *testing.T) {
	t.Parallel()
	problems := parseProblems(t, `name: loop
namespace_name: demo
version: 1.0.0
steps:
  - name: start
    handler: {callable: c}
  - name: a
    handler: {callable: c}
    dependencies: [start, b]
  - name: b
    handler: {callable: c}
    dependencies: [c]
  - name: c
    handler: {callable: c}
    dependencies: [a]
  - name: x
    handler: {callable: c}
    dependencies: [y]
  - name: "y"
    handler: {callable: c}
    dependencies: [x]
`)
	if len(problems) != 2 {
		t.Fatalf("got %d problems, want one per cycle:\n%s", len(problems), (&ValidationError{Problems: problems}).Error())
	}
	want := []Problem{
		{Template: "demo/loop/1.0.0", Step: "a", Field: "dependencies", Line: 9, Message: "dependency cycle: a -> b -> c -> a"},
		{Template: "demo/loop/1.0.0", Step: "x", Field: "dependencies", Line: 18, Message: "dependency cycle: x -> y -> x"},
	}
	if !reflect.DeepEqual(problems, want) {
		t.Errorf("problems =\n%+v\nwant\n%+v", problems, want)
	}
}

func TestParseDocumentProblems(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name     string
		doc      string
		fragment string
		line     int
	}{
		{"empty", "", "document is empty", 0},
		{"whitespace", "  \n\t\n", "document is empty", 0},
		{"only comments", "# nothing here\n", "document is empty", 0},
		{"list at top level", "- a\n- b\n", "top level must be a mapping of template fields, got a list", 1},
		{"scalar at top level", "just text", "top level must be a mapping of template fields, got a string", 1},
		{"syntax error", "name: x\nsteps:\n  - name: a\n    handler: {callable: c\n", "YAML syntax error: did not find expected ',' or '}'", 4},
		{"bad indentation", "name: x\n  version: 1.0.0\n", "YAML syntax error", 2},
		{"tab indentation", "name: x\nsteps:\n\t- name: a\n", "YAML syntax error", 3},
		{"two documents", "name: a\n---\nname: b\n", "more than one YAML document", 2},
		{"second document after an empty one", "name: a\n---\n---\nname: b\n", "more than one YAML document", 3},
		{"misplaced list item", "name: x\n- y\n", "YAML syntax error: did not find expected key", 2},
		{"unknown alias", "name: x\nversion: *v\n", "YAML syntax error: unknown anchor 'v' referenced", 2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			problems := parseProblems(t, tc.doc)
			if len(problems) != 1 {
				t.Fatalf("got %d problems, want 1: %v", len(problems), problems)
			}
			p := problems[0]
			if !strings.Contains(p.Message, tc.fragment) || p.Line != tc.line || p.Step != "" || p.Field != "" {
				t.Errorf("problem = %+v, want message containing %q at line %d", p, tc.fragment, tc.line)
			}
		})
	}
}

func TestProblemString(t *testing.T) {
	t.Parallel()
	cases := []struct {
		p    Problem
		want string
	}{
		{Problem{Template: "payments/charge/1.0.0", Step: "capture", Field: "handler.callable", Line: 12, Message: "is required"},
			`payments/charge/1.0.0: step "capture": handler.callable: is required (line 12)`},
		{Problem{Template: "payments/charge/1.0.0", Field: "version", Message: "is required"},
			`payments/charge/1.0.0: version: is required`},
		{Problem{Line: 3, Message: "YAML syntax error: oops"}, `YAML syntax error: oops (line 3)`},
	}
	for _, tc := range cases {
		if got := tc.p.String(); got != tc.want {
			t.Errorf("String() = %q, want %q", got, tc.want)
		}
	}
	err := &ValidationError{Problems: []Problem{cases[0].p, cases[1].p}}
	want := "invalid task template: 2 problems\n" +
		`  - payments/charge/1.0.0: step "capture": handler.callable: is required (line 12)` + "\n" +
		`  - payments/charge/1.0.0: version: is required`
	if got := err.Error(); got != want {
		t.Errorf("Error() =\n%s\nwant\n%s", got, want)
	}
}

func TestValidateBuiltTemplate(t *testing.T) {
	t.Parallel()
	tmpl := &Template{
		Name: "built", Namespace: "code", Version: "1.0.0",
		Steps: []Step{
			{Name: "a", Handler: Handler{Callable: "c"}},
			{Name: "b", Handler: Handler{Callable: "c"}, Dependencies: []string{"a"}},
		},
	}
	if err := tmpl.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	tmpl.Steps[0].Dependencies = []string{"b"}
	tmpl.Steps[1].Retry.Backoff = "random"
	err := tmpl.Validate()
	var verr *ValidationError
	if !errors.As(err, &verr) || !errors.Is(err, ErrInvalidTemplate) {
		t.Fatalf("Validate = %v, want a *ValidationError", err)
	}
	want := []Problem{
		{Template: "code/built/1.0.0", Step: "b", Field: "retry.backoff", Message: `unknown backoff "random" (want none, linear, exponential, fibonacci)`},
		{Template: "code/built/1.0.0", Step: "a", Field: "dependencies", Message: "dependency cycle: a -> b -> a"},
	}
	if !reflect.DeepEqual(verr.Problems, want) {
		t.Errorf("problems =\n%+v\nwant\n%+v", verr.Problems, want)
	}
}
