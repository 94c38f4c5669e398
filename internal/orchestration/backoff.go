package orchestration

import (
	"math"
	"time"

	"github.com/tasker-go/tasker/template"
)

// Backoff returns how long to wait before attempt number attempt+1, after
// attempt (1-based) failed, following the step's retry policy. jitter in
// [0, 1) spreads the delay by up to ±jitterFrac of its value so that many
// steps failing together do not retry in lockstep; the result never exceeds
// the policy's maximum.
func Backoff(r template.Retry, attempt int, jitterFrac, jitter float64) time.Duration {
	if attempt < 1 {
		attempt = 1
	}
	base := float64(r.BackoffBaseMS)
	var ms float64
	switch r.Backoff {
	case template.BackoffNone:
		return 0
	case template.BackoffLinear:
		ms = base * float64(attempt)
	case template.BackoffFibonacci:
		ms = base * fib(attempt)
	default: // exponential
		ms = base * math.Pow(2, float64(attempt-1))
	}
	if jitterFrac > 0 {
		ms *= 1 + jitterFrac*(2*jitter-1)
	}
	if r.MaxBackoffMS > 0 && ms > float64(r.MaxBackoffMS) {
		ms = float64(r.MaxBackoffMS)
	}
	if ms < 0 {
		ms = 0
	}
	// Without a cap the delay can outgrow time.Duration, and converting an
	// out-of-range float yields a negative duration: an immediate retry.
	if ms >= float64(math.MaxInt64)/float64(time.Millisecond) {
		return time.Duration(math.MaxInt64)
	}
	return time.Duration(ms * float64(time.Millisecond))
}

// fib returns the n-th Fibonacci number with fib(1) = fib(2) = 1.
func fib(n int) float64 {
	a, b := 1.0, 1.0
	for i := 2; i < n; i++ {
		a, b = b, a+b
		if b > 1e15 {
			return b
		}
	}
	if n <= 2 {
		return 1
	}
	return b
}
