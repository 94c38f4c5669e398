package worker

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/tasker-go/tasker/store"
)

// TestClassify pins the failure classification of worker rule 4, including
// that a database outage is retryable even when a handler marked it
// permanent.
func TestClassify(t *testing.T) {
	outage := fmt.Errorf("read dependency: %w", store.ErrUnavailable)
	cases := []struct {
		name      string
		err       error
		wantType  string
		retryable bool
	}{
		{"plain error", errors.New("boom"), store.ErrorTypeHandler, true},
		{"permanent", Permanent(errors.New("bad input")), store.ErrorTypePermanent, false},
		{"retry after", RetryAfter(errors.New("slow down"), time.Second), store.ErrorTypeHandler, true},
		{"handler not found", &HandlerNotFoundError{Callable: "x.y"}, store.ErrorTypeHandlerNotFound, false},
		{"database outage", outage, store.ErrorTypeHandler, true},
		{"database outage marked permanent", Permanent(outage), store.ErrorTypeHandler, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := classify(c.err, nil)
			if got.Type != c.wantType || got.Retryable != c.retryable {
				t.Fatalf("classify(%v) = %s retryable=%v, want %s retryable=%v", c.err, got.Type, got.Retryable, c.wantType, c.retryable)
			}
		})
	}
}
