package examples

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"time"

	"github.com/tasker-go/tasker"
)

// handlers maps every callable used by the bundled templates to its handler.
func handlers() map[string]tasker.Handler {
	return map[string]tasker.Handler{
		"math.square":       arithmetic("math.square", false, square),
		"math.power":        arithmetic("math.power", false, power),
		"math.multiply":     arithmetic("math.multiply", true, product),
		"math.add":          arithmetic("math.add", true, sum),
		"math.divide":       arithmetic("math.divide", false, divide),
		"demo.flaky_square": tasker.HandlerFunc(flakySquare),
	}
}

// config is the handler.initialization understood by the example handlers.
// Every field is optional; each handler documents the ones it reads.
type config struct {
	// Inputs names the ancestor steps whose results are the operands, in
	// order. When empty, the single operand is the task context's integer
	// field ContextField.
	Inputs []string `json:"inputs"`
	// ContextField is the context field read when Inputs is empty. Default
	// "even_number".
	ContextField string `json:"context_field"`
	// Exponent is math.power's exponent. Required by math.power.
	Exponent *int64 `json:"exponent"`
	// DivisorField is the context field holding math.divide's divisor.
	// Default "divisor".
	DivisorField string `json:"divisor_field"`
	// SucceedOnAttempt is the first attempt on which demo.flaky_square
	// succeeds. Default 1.
	SucceedOnAttempt int `json:"succeed_on_attempt"`
	// DelayMS makes the handler take at least this long, so that parallel
	// branches visibly overlap in the demo's timeline.
	DelayMS int `json:"delay_ms"`
}

func loadConfig(s *tasker.StepContext) (config, error) {
	cfg := config{ContextField: "even_number", DivisorField: "divisor", SucceedOnAttempt: 1}
	if err := s.HandlerConfig(&cfg); err != nil {
		return cfg, err
	}
	if cfg.DelayMS < 0 {
		return cfg, fmt.Errorf("handler.initialization.delay_ms must not be negative, got %d", cfg.DelayMS)
	}
	return cfg, nil
}

// maxExponent bounds math.power's exponent so that a bad configuration
// cannot make it build an enormous number only to refuse it as overflow.
const maxExponent = 64

// arithmetic builds a handler that collects its integer operands (exactly
// one, or with variadic two or more), applies compute and returns the result
// as an int64. Bad configuration, bad input and overflow are
// permanent failures: running the step again cannot fix them.
func arithmetic(callable string, variadic bool, compute func(s *tasker.StepContext, cfg config, xs []*big.Int) (*big.Int, error)) tasker.HandlerFunc {
	return func(ctx context.Context, s *tasker.StepContext) (any, error) {
		cfg, err := loadConfig(s)
		if err != nil {
			return nil, tasker.Permanent(fmt.Errorf("%s: %w", callable, err))
		}
		if err := pause(ctx, cfg.DelayMS); err != nil {
			return nil, err
		}
		xs, err := operands(s, cfg)
		var rerr *readError
		if errors.As(err, &rerr) {
			return nil, fmt.Errorf("%s: %w", callable, rerr.err)
		}
		if err != nil {
			return nil, tasker.Permanent(fmt.Errorf("%s: %w", callable, err))
		}
		switch {
		case !variadic && len(xs) != 1:
			return nil, tasker.Permanent(fmt.Errorf("%s: needs exactly one operand, got %d (handler.initialization.inputs)", callable, len(xs)))
		case variadic && len(xs) < 2:
			return nil, tasker.Permanent(fmt.Errorf("%s: needs at least two operands, got %d (handler.initialization.inputs)", callable, len(xs)))
		}
		r, err := compute(s, cfg, xs)
		if err != nil {
			return nil, tasker.Permanent(fmt.Errorf("%s: %w", callable, err))
		}
		if !r.IsInt64() {
			return nil, tasker.Permanent(fmt.Errorf("%s: result %s does not fit in a 64-bit integer", callable, r))
		}
		return r.Int64(), nil
	}
}

// operands returns the results of cfg.Inputs, or the context's
// cfg.ContextField when no inputs are named.
func operands(s *tasker.StepContext, cfg config) ([]*big.Int, error) {
	if len(cfg.Inputs) == 0 {
		n, err := contextInt(s, cfg.ContextField)
		if err != nil {
			return nil, err
		}
		return []*big.Int{big.NewInt(n)}, nil
	}
	xs := make([]*big.Int, 0, len(cfg.Inputs))
	for _, name := range cfg.Inputs {
		var n int64
		if err := s.DependencyResult(name, &n); err != nil {
			err = fmt.Errorf("operand from step %q: %w", name, err)
			var syntax *json.SyntaxError
			var typ *json.UnmarshalTypeError
			if !errors.Is(err, tasker.ErrNoDependencyResult) && !errors.As(err, &syntax) && !errors.As(err, &typ) {
				return nil, &readError{err}
			}
			return nil, err
		}
		xs = append(xs, big.NewInt(n))
	}
	return xs, nil
}

// readError is a failure to read an operand from the store (a lost
// database connection, say), as opposed to bad input: another attempt can
// succeed, so it is not permanent.
type readError struct{ err error }

func (e *readError) Error() string { return e.err.Error() }
func (e *readError) Unwrap() error { return e.err }

// contextInt reads an integer field of the task's context.
func contextInt(s *tasker.StepContext, field string) (int64, error) {
	var fields map[string]json.RawMessage
	if err := s.DecodeContext(&fields); err != nil {
		return 0, err
	}
	raw, ok := fields[field]
	if !ok {
		return 0, fmt.Errorf("task context has no %q field", field)
	}
	var n int64
	if err := json.Unmarshal(raw, &n); err != nil {
		return 0, fmt.Errorf("task context field %q must be a 64-bit integer, got %s", field, strings.TrimSpace(string(raw)))
	}
	return n, nil
}

// pause waits d milliseconds or until ctx ends. An interrupted pause is an
// ordinary (retryable) failure: the step did not do its work.
func pause(ctx context.Context, ms int) error {
	if ms <= 0 {
		return nil
	}
	t := time.NewTimer(time.Duration(ms) * time.Millisecond)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("interrupted while pausing: %w", context.Cause(ctx))
	}
}

func square(_ *tasker.StepContext, _ config, xs []*big.Int) (*big.Int, error) {
	return new(big.Int).Mul(xs[0], xs[0]), nil
}

func power(_ *tasker.StepContext, cfg config, xs []*big.Int) (*big.Int, error) {
	switch {
	case cfg.Exponent == nil:
		return nil, errors.New("handler.initialization.exponent is required")
	case *cfg.Exponent < 0 || *cfg.Exponent > maxExponent:
		return nil, fmt.Errorf("handler.initialization.exponent must be between 0 and %d, got %d", maxExponent, *cfg.Exponent)
	}
	return new(big.Int).Exp(xs[0], big.NewInt(*cfg.Exponent), nil), nil
}

func product(_ *tasker.StepContext, _ config, xs []*big.Int) (*big.Int, error) {
	r := big.NewInt(1)
	for _, x := range xs {
		r.Mul(r, x)
	}
	return r, nil
}

func sum(_ *tasker.StepContext, _ config, xs []*big.Int) (*big.Int, error) {
	r := new(big.Int)
	for _, x := range xs {
		r.Add(r, x)
	}
	return r, nil
}

// divide divides its operand by the context's divisor, truncating toward
// zero.
func divide(s *tasker.StepContext, cfg config, xs []*big.Int) (*big.Int, error) {
	d, err := contextInt(s, cfg.DivisorField)
	if err != nil {
		return nil, err
	}
	if d == 0 {
		return nil, fmt.Errorf("cannot divide %s by zero (task context field %q)", xs[0], cfg.DivisorField)
	}
	return new(big.Int).Quo(xs[0], big.NewInt(d)), nil
}

// flakySquare fails with a retryable error until attempt
// handler.initialization.succeed_on_attempt, then behaves like math.square.
func flakySquare(ctx context.Context, s *tasker.StepContext) (any, error) {
	cfg, err := loadConfig(s)
	if err != nil {
		return nil, tasker.Permanent(fmt.Errorf("demo.flaky_square: %w", err))
	}
	if cfg.SucceedOnAttempt < 1 {
		return nil, tasker.Permanent(fmt.Errorf("demo.flaky_square: handler.initialization.succeed_on_attempt must be at least 1, got %d", cfg.SucceedOnAttempt))
	}
	if s.Attempt < cfg.SucceedOnAttempt {
		return nil, fmt.Errorf("simulated transient failure on attempt %d of %d (succeeds on attempt %d)",
			s.Attempt, s.MaxAttempts, cfg.SucceedOnAttempt)
	}
	return arithmetic("demo.flaky_square", false, square)(ctx, s)
}
