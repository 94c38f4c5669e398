package template

import (
	"strings"
	"testing"
)

const hashBase = `# Original formatting.
name: shipping
namespace_name: fulfilment
version: 2.0.0
description: Ship things
metadata: {owner: ops, level: 2}
input_schema:
  type: object
  properties:
    id: {type: string}
    qty: {type: integer}
lifecycle:
  max_duration_minutes: 10
steps:
  - name: pack
    handler:
      callable: ship.pack
      initialization: {box: large, count: 2}
  - name: send
    handler: {callable: ship.send}
    dependencies: [pack]
    publishes_events:
      - name: parcel.sent
        schema: {type: object, required: [id]}
`

func TestContentHashIgnoresFormatting(t *testing.T) {
	t.Parallel()
	base := mustParse(t, hashBase).ContentHash
	same := []struct {
		name string
		doc  string
	}{
		{"reordered and restyled", `
steps:
  - handler:
      initialization:
        count: 2
        box: "large"
      callable: ship.pack
    name: pack
  - publishes_events:
      - schema:
          required:
            - id
          type: object
        name: parcel.sent
    dependencies:
      - pack
    name: send
    handler:
      callable: ship.send
lifecycle:
  max_duration_minutes: 0x0a
input_schema:
  properties:
    qty: {type: integer}
    id: {type: string}
  type: object
metadata: {level: 2, owner: ops}
description: >-
  Ship
  things
version: "2.0.0"
namespace_name: 'fulfilment'
name: shipping
`},
		{"defaults written out", strings.Replace(hashBase, "  - name: pack\n",
			"  - name: pack\n    type: standard\n    retry: {retryable: true, max_attempts: 3, backoff: exponential, backoff_base_ms: 1000, max_backoff_ms: 30000}\n", 1) +
			"identity_strategy: strict\n"},
		{"comments and flow style", `name: shipping # the name
namespace_name: fulfilment
version: 2.0.0
description: "Ship things"
metadata:
  level: 2
  owner: ops
input_schema: {properties: {qty: {type: integer}, id: {type: string}}, type: object}
lifecycle: {max_duration_minutes: 10}
steps:
  # first
  - {name: pack, handler: {initialization: {count: 2, box: large}, callable: ship.pack}}
  - name: send
    dependencies: [pack]
    handler: {callable: ship.send}
    publishes_events: [{schema: {required: [id], type: object}, name: parcel.sent, condition: success}]
`},
	}
	for _, tc := range same {
		if got := mustParse(t, tc.doc).ContentHash; got != base {
			t.Errorf("%s: ContentHash %s, want %s", tc.name, got, base)
		}
	}
}

func TestContentHashChangesWithAnyValue(t *testing.T) {
	t.Parallel()
	base := mustParse(t, hashBase).ContentHash
	edits := []struct{ name, old, new string }{
		{"name", "name: shipping", "name: shipping2"},
		{"namespace", "namespace_name: fulfilment", "namespace_name: fulfilment2"},
		{"version", "version: 2.0.0", "version: 2.0.1"},
		{"description", "description: Ship things", "description: Ship stuff"},
		{"metadata value", "level: 2", "level: 3"},
		{"input schema", "qty: {type: integer}", "qty: {type: number}"},
		{"lifecycle", "max_duration_minutes: 10", "max_duration_minutes: 11"},
		{"identity strategy", "lifecycle:", "identity_strategy: always_unique\nlifecycle:"},
		{"step name", "name: send", "name: send2"},
		{"callable", "callable: ship.send", "callable: ship.post"},
		{"method", "callable: ship.send", "callable: ship.send, method: run"},
		{"initialization", "box: large", "box: small"},
		{"dependencies", "dependencies: [pack]", "dependencies: []"},
		{"step type", "handler: {callable: ship.send}", "handler: {callable: ship.send}\n    type: decision"},
		{"retry", "handler: {callable: ship.send}", "handler: {callable: ship.send}\n    retry: {max_attempts: 4}"},
		{"timeout", "handler: {callable: ship.send}", "handler: {callable: ship.send}\n    timeout_seconds: 5"},
		{"batch config", "handler: {callable: ship.send}", "handler: {callable: ship.send}\n    batch_config: {size: 1}"},
		{"event name", "name: parcel.sent", "name: parcel.shipped"},
		{"event condition", "name: parcel.sent", "name: parcel.sent\n        condition: always"},
		{"event delivery", "name: parcel.sent", "name: parcel.sent\n        delivery_mode: fast"},
		{"event publisher", "name: parcel.sent", "name: parcel.sent\n        publisher: custom"},
		{"event schema", "required: [id]", "required: [id, at]"},
		{"step order", "  - name: pack\n    handler:\n      callable: ship.pack\n      initialization: {box: large, count: 2}\n", ""},
	}
	for _, e := range edits {
		doc := strings.Replace(hashBase, e.old, e.new, 1)
		if doc == hashBase {
			t.Fatalf("%s: edit did not apply", e.name)
		}
		if e.name == "step order" {
			doc += "  - name: pack\n    handler:\n      callable: ship.pack\n      initialization: {box: large, count: 2}\n"
		}
		tmpl, err := Parse([]byte(doc))
		if err != nil {
			t.Fatalf("%s: %v", e.name, err)
		}
		if tmpl.ContentHash == base {
			t.Errorf("%s: ContentHash unchanged", e.name)
		}
	}
}

func TestContentHashCanonicalisesRawJSON(t *testing.T) {
	t.Parallel()
	a := &Template{Name: "a", Namespace: "b", Version: "1.0.0", InputSchema: []byte(`{"type":"object","required":["x"]}`),
		Steps: []Step{{Name: "s", Handler: Handler{Callable: "c", Initialization: []byte(`{"b":1,"a":[1,2]}`)}}}}
	b := &Template{Name: "a", Namespace: "b", Version: "1.0.0", InputSchema: []byte(` { "required" : ["x"], "type" : "object" } `),
		Steps: []Step{{Name: "s", Handler: Handler{Callable: "c", Initialization: []byte(`{"a":[1,2],  "b":1}`)}}}}
	ha, err := a.contentHash()
	if err != nil {
		t.Fatal(err)
	}
	hb, err := b.contentHash()
	if err != nil {
		t.Fatal(err)
	}
	if ha != hb {
		t.Errorf("hashes differ for equivalent JSON: %s vs %s", ha, hb)
	}
	if string(b.Steps[0].Handler.Initialization) != `{"a":[1,2],  "b":1}` {
		t.Errorf("hashing modified the template")
	}
}
