package orchestration

import (
	"testing"
	"time"

	"github.com/tasker-go/tasker/template"
)

func TestBackoffShapes(t *testing.T) {
	t.Parallel()
	policy := func(b template.Backoff) template.Retry {
		return template.Retry{Retryable: true, MaxAttempts: 10, Backoff: b, BackoffBaseMS: 100, MaxBackoffMS: 1_000_000}
	}
	tests := []struct {
		backoff template.Backoff
		want    []int64 // ms for attempts 1..6
	}{
		{template.BackoffNone, []int64{0, 0, 0, 0, 0, 0}},
		{template.BackoffLinear, []int64{100, 200, 300, 400, 500, 600}},
		{template.BackoffExponential, []int64{100, 200, 400, 800, 1600, 3200}},
		{template.BackoffFibonacci, []int64{100, 100, 200, 300, 500, 800}},
		{"", []int64{100, 200, 400, 800, 1600, 3200}}, // unset means exponential
	}
	for _, tc := range tests {
		t.Run(string(tc.backoff), func(t *testing.T) {
			t.Parallel()
			for i, ms := range tc.want {
				attempt := i + 1
				if got := Backoff(policy(tc.backoff), attempt, 0, 0); got != time.Duration(ms)*time.Millisecond {
					t.Errorf("attempt %d: Backoff = %s, want %dms", attempt, got, ms)
				}
			}
		})
	}
}

func TestBackoffAttemptBelowOneCountsAsFirst(t *testing.T) {
	t.Parallel()
	r := template.Retry{Backoff: template.BackoffExponential, BackoffBaseMS: 250, MaxBackoffMS: 10_000}
	for _, attempt := range []int{0, -3} {
		if got := Backoff(r, attempt, 0, 0); got != 250*time.Millisecond {
			t.Errorf("attempt %d: Backoff = %s, want 250ms", attempt, got)
		}
	}
}

func TestBackoffCap(t *testing.T) {
	t.Parallel()
	tests := []struct {
		backoff template.Backoff
		attempt int
		want    time.Duration
	}{
		{template.BackoffExponential, 3, 4 * time.Second},  // under the cap
		{template.BackoffExponential, 4, 5 * time.Second},  // 8s capped
		{template.BackoffExponential, 60, 5 * time.Second}, // huge, capped
		{template.BackoffLinear, 5, 5 * time.Second},       // exactly the cap
		{template.BackoffLinear, 9, 5 * time.Second},
		{template.BackoffFibonacci, 6, 5 * time.Second}, // 8s capped
		{template.BackoffFibonacci, 200, 5 * time.Second},
	}
	for _, tc := range tests {
		r := template.Retry{Backoff: tc.backoff, BackoffBaseMS: 1000, MaxBackoffMS: 5000}
		if got := Backoff(r, tc.attempt, 0, 0); got != tc.want {
			t.Errorf("%s attempt %d: Backoff = %s, want %s", tc.backoff, tc.attempt, got, tc.want)
		}
	}
}

func TestBackoffJitter(t *testing.T) {
	t.Parallel()
	r := template.Retry{Backoff: template.BackoffLinear, BackoffBaseMS: 1000, MaxBackoffMS: 60_000}
	const frac = 0.2
	tests := []struct {
		name   string
		jitter float64
		want   time.Duration
	}{
		{"jitter 0 takes the full fraction off", 0, 1600 * time.Millisecond}, // 2000 * 0.8
		{"jitter 0.5 is the plain delay", 0.5, 2000 * time.Millisecond},
		{"jitter near 1 adds the full fraction", 0.999999, 2400 * time.Millisecond},
	}
	for _, tc := range tests {
		got := Backoff(r, 2, frac, tc.jitter)
		if diff := got - tc.want; diff < -time.Millisecond || diff > time.Millisecond {
			t.Errorf("%s: Backoff = %s, want %s", tc.name, got, tc.want)
		}
	}
	// Every jitter value stays within ±frac of the plain delay.
	for j := 0.0; j < 1; j += 0.01 {
		got := Backoff(r, 2, frac, j)
		if got < 1600*time.Millisecond || got > 2400*time.Millisecond {
			t.Fatalf("jitter %.2f: Backoff = %s, outside [1.6s, 2.4s]", j, got)
		}
	}
	// Jitter never pushes a delay above the maximum.
	capped := template.Retry{Backoff: template.BackoffExponential, BackoffBaseMS: 1000, MaxBackoffMS: 3000}
	for j := 0.0; j < 1; j += 0.01 {
		if got := Backoff(capped, 2, 0.9, j); got > 3*time.Second { // 2s ± 1.8s
			t.Fatalf("jitter %.2f: Backoff = %s, above the 3s maximum", j, got)
		}
	}
	if got := Backoff(capped, 2, 0.9, 0.999); got != 3*time.Second {
		t.Errorf("high jitter on a near-cap delay: Backoff = %s, want the 3s maximum", got)
	}
	// No jitter fraction: the jitter value is ignored.
	if a, b := Backoff(r, 2, 0, 0), Backoff(r, 2, 0, 0.99); a != b || a != 2*time.Second {
		t.Errorf("jitterFrac 0: Backoff = %s and %s, want 2s for any jitter", a, b)
	}
	// None stays zero whatever the jitter.
	if got := Backoff(template.Retry{Backoff: template.BackoffNone, BackoffBaseMS: 1000}, 3, 0.5, 0.9); got != 0 {
		t.Errorf("none with jitter: Backoff = %s, want 0", got)
	}
}

// TestBackoffUncappedNeverWrapsAround covers max_backoff_ms: 0, which the
// template accepts and Backoff reads as "no cap": a delay too long for a
// time.Duration must saturate, not wrap into a negative (immediate) retry.
func TestBackoffUncappedNeverWrapsAround(t *testing.T) {
	t.Parallel()
	for _, b := range []template.Backoff{template.BackoffExponential, template.BackoffFibonacci, template.BackoffLinear} {
		r := template.Retry{Backoff: b, BackoffBaseMS: 1000}
		prev := time.Duration(0)
		for attempt := 1; attempt <= 2000; attempt++ {
			got := Backoff(r, attempt, 0.5, 0.99)
			if got < prev {
				t.Fatalf("%s attempt %d: Backoff = %s, shorter than attempt %d's %s", b, attempt, got, attempt-1, prev)
			}
			prev = got
		}
	}
	huge := template.Retry{Backoff: template.BackoffLinear, BackoffBaseMS: 1 << 62}
	if got := Backoff(huge, 1, 0, 0); got <= 0 {
		t.Errorf("huge base: Backoff = %s, want a positive delay", got)
	}
}
