package template

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
)

// contentHash hashes a canonical JSON encoding of the template: the
// exported fields other than ContentHash and Source, with object keys in
// sorted order everywhere. encoding/json already sorts map keys; the raw
// JSON fields are decoded and re-encoded so that their key order and
// spacing do not count either.
func (t *Template) contentHash() (string, error) {
	c := *t
	c.ContentHash = ""
	c.Source = nil
	var err error
	if c.InputSchema, err = canonicalJSON(t.InputSchema); err != nil {
		return "", fmt.Errorf("input_schema: %w", err)
	}
	c.Steps = make([]Step, len(t.Steps))
	for i, s := range t.Steps {
		if s.Handler.Initialization, err = canonicalJSON(s.Handler.Initialization); err != nil {
			return "", fmt.Errorf("step %q: handler.initialization: %w", s.Name, err)
		}
		events := make([]EventDecl, len(s.PublishesEvents))
		for j, ev := range s.PublishesEvents {
			if ev.Schema, err = canonicalJSON(ev.Schema); err != nil {
				return "", fmt.Errorf("step %q: publishes_events[%d].schema: %w", s.Name, j, err)
			}
			events[j] = ev
		}
		s.PublishesEvents = events
		c.Steps[i] = s
	}
	b, err := json.Marshal(&c)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), nil
}

func canonicalJSON(raw json.RawMessage) (json.RawMessage, error) {
	if len(raw) == 0 {
		return nil, nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	return json.Marshal(v)
}
