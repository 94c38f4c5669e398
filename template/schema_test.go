package template

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"sync"
	"testing"
)

const contextDoc = `name: signup
namespace_name: accounts
version: 1.0.0
input_schema:
  type: object
  required: [email, plan]
  additionalProperties: false
  properties:
    email: {type: string, minLength: 3}
    plan: {enum: [free, pro]}
    seats: {type: integer, minimum: 1}
    address:
      type: object
      required: [country]
      properties:
        country: {type: string}
steps:
  - name: create
    handler: {callable: accounts.create}
`

func TestValidateContext(t *testing.T) {
	t.Parallel()
	tmpl := mustParse(t, contextDoc)
	plain := mustParse(t, "name: plain\nnamespace_name: accounts\nversion: 1.0.0\nsteps:\n  - name: s\n    handler: {callable: c}\n")
	cases := []struct {
		name string
		tmpl *Template
		ctx  string
		want []ContextProblem // nil: valid, unless badJSON
		// badJSON expects a single "is not valid JSON" problem.
		badJSON bool
	}{
		{"valid", tmpl, `{"email": "a@b.c", "plan": "pro", "seats": 3, "address": {"country": "NL"}}`, nil, false},
		{"no schema, empty context", plain, ``, nil, false},
		{"no schema, null context", plain, ` null `, nil, false},
		{"no schema, any object", plain, `{"anything": [1, 2]}`, nil, false},
		{"no schema, not an object", plain, `[1, 2]`, []ContextProblem{{"", "must be a JSON object, got an array"}}, false},
		{"string", tmpl, `"hello"`, []ContextProblem{{"", "must be a JSON object, got a string"}}, false},
		{"number", tmpl, `42`, []ContextProblem{{"", "must be a JSON object, got a number"}}, false},
		{"invalid JSON", tmpl, `{"email": `, nil, true},
		{"trailing garbage", tmpl, `{} {}`, nil, true},
		{"empty context against required fields", tmpl, ``, []ContextProblem{
			{"/email", "is required"}, {"/plan", "is required"}}, false},
		{"wrong types and values", tmpl, `{"email": 7, "plan": "gold", "seats": 0}`, []ContextProblem{
			{"/email", "got number, want string"},
			{"/plan", "value must be one of 'free', 'pro'"},
			{"/seats", "minimum: got 0, want 1"},
		}, false},
		{"nested field", tmpl, `{"email": "a@b.c", "plan": "free", "address": {}}`, []ContextProblem{
			{"/address/country", "is required"}}, false},
		{"unexpected field", tmpl, `{"email": "a@b.c", "plan": "free", "colour": "red"}`, []ContextProblem{
			{"/colour", "is not allowed"}}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			err := tc.tmpl.ValidateContext(json.RawMessage(tc.ctx))
			if tc.want == nil && !tc.badJSON {
				if err != nil {
					t.Fatalf("ValidateContext: %v", err)
				}
				return
			}
			var cerr *ContextError
			if !errors.As(err, &cerr) || !errors.Is(err, ErrInvalidContext) {
				t.Fatalf("ValidateContext = %v, want a *ContextError", err)
			}
			if cerr.Template != tc.tmpl.Key() {
				t.Errorf("Template = %q", cerr.Template)
			}
			if tc.badJSON {
				if len(cerr.Problems) != 1 || !strings.Contains(cerr.Problems[0].Message, "is not valid JSON") {
					t.Errorf("problems = %+v, want one about invalid JSON", cerr.Problems)
				}
				return
			}
			got := append([]ContextProblem(nil), cerr.Problems...)
			if !sameProblems(got, tc.want) {
				t.Errorf("problems = %+v, want %+v", got, tc.want)
			}
		})
	}
}

// sameProblems compares ignoring order: the schema library does not promise
// the order in which it visits properties.
func sameProblems(got, want []ContextProblem) bool {
	if len(got) != len(want) {
		return false
	}
	left := map[ContextProblem]int{}
	for _, p := range got {
		left[p]++
	}
	for _, p := range want {
		if left[p] == 0 {
			return false
		}
		left[p]--
	}
	return true
}

func TestContextErrorMessage(t *testing.T) {
	t.Parallel()
	tmpl := mustParse(t, contextDoc)
	err := tmpl.ValidateContext(json.RawMessage(`{"email": "a@b.c", "plan": "free", "address": {}}`))
	want := "invalid task context for accounts/signup/1.0.0: /address/country: is required"
	if err == nil || err.Error() != want {
		t.Errorf("Error() = %v, want %q", err, want)
	}
	err = tmpl.ValidateContext(json.RawMessage(`[]`))
	want = "invalid task context for accounts/signup/1.0.0: context: must be a JSON object, got an array"
	if err == nil || err.Error() != want {
		t.Errorf("Error() = %v, want %q", err, want)
	}
}

func TestValidateContextConcurrently(t *testing.T) {
	t.Parallel()
	tmpl := mustParse(t, contextDoc)
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := `{"email": "a@b.c", "plan": "free"}`
			if i%2 == 1 {
				ctx = `{"plan": "free"}`
			}
			err := tmpl.ValidateContext(json.RawMessage(ctx))
			if (err != nil) != (i%2 == 1) {
				t.Errorf("goroutine %d: ValidateContext = %v", i, err)
			}
		}()
	}
	wg.Wait()
}

func TestValidateContextAfterSchemaChange(t *testing.T) {
	t.Parallel()
	tmpl := mustParse(t, contextDoc)
	tmpl.InputSchema = json.RawMessage(`{"type": "object", "required": ["token"]}`)
	err := tmpl.ValidateContext(json.RawMessage(`{}`))
	var cerr *ContextError
	if !errors.As(err, &cerr) || !reflect.DeepEqual(cerr.Problems, []ContextProblem{{"/token", "is required"}}) {
		t.Errorf("ValidateContext = %v, want /token required under the new schema", err)
	}
}

func TestSchemaDialects(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, schema string
		ok           bool
	}{
		{"boolean schema", "input_schema: true", true},
		{"draft-07", "input_schema: {$schema: 'http://json-schema.org/draft-07/schema#', type: object}", true},
		{"local reference", "input_schema: {$defs: {id: {type: string}}, properties: {id: {$ref: '#/$defs/id'}}}", true},
		{"remote reference", "input_schema: {$ref: 'https://example.com/schema.json'}", false},
		{"broken local reference", "input_schema: {$ref: '#/$defs/missing'}", false},
		{"invalid pattern", "input_schema: {pattern: '('}", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			doc := "name: s\nnamespace_name: d\nversion: 1.0.0\n" + tc.schema + "\nsteps:\n  - name: s\n    handler: {callable: c}\n"
			_, err := Parse([]byte(doc))
			if (err == nil) != tc.ok {
				t.Errorf("Parse error = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}
