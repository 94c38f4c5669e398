package api

import (
	"errors"
	"testing"
)

// FuzzDecoders feeds arbitrary bodies to the request decoders: each either
// decodes or fails with a 4xx client error, never a panic or a 5xx.
func FuzzDecoders(f *testing.F) {
	for _, seed := range []string{
		`{"namespace":"math","name":"linear_workflow","context":{"even_number":2}}`,
		`{"namespace":"","name":""}`,
		`{"context":[1,2]}`,
		`{"context":null,"tags":["a"],"priority":-1}`,
		`{"action":"complete_manually","result":{"x":1},"reason":"r"}`,
		`{"status":"cancelled","reason":"done"}`,
		`{"unknown":1}`,
		`{"priority":"high"}`,
		`{"a":1} {"b":2}`,
		`[`, `null`, `"str"`, `{"namespace":"\u0000"}`, ``,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		check := func(err error) {
			if err == nil {
				return
			}
			var ae *apiError
			if !errors.As(err, &ae) || ae.status < 400 || ae.status >= 500 || ae.code == "" || ae.msg == "" {
				t.Fatalf("decoding %q: %v is not a client error", body, err)
			}
		}
		var ct createTaskRequest
		err := decodeStrict(body, &ct)
		if err == nil {
			err = ct.validate()
		}
		check(err)
		var sa stepActionRequest
		check(decodeStrict(body, &sa))
		var du dlqUpdateRequest
		check(decodeStrict(body, &du))
		var rd dlqRedriveRequest
		check(decodeStrict(body, &rd))
	})
}
