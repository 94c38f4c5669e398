package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// The environment variables and default of the client commands' flags.
const (
	serverEnv     = "TASKER_SERVER"
	apiKeyEnv     = "TASKER_API_KEY"
	defaultServer = "http://127.0.0.1:8080"
)

// clientOptions are the flags every command that talks to a server takes.
type clientOptions struct {
	server, apiKey, output string
}

// addClientFlags gives a command group --server, --api-key and -o.
func addClientFlags(cmd *cobra.Command, o *clientOptions) {
	server := os.Getenv(serverEnv)
	if server == "" {
		server = defaultServer
	}
	f := cmd.PersistentFlags()
	f.StringVar(&o.server, "server", server, "`URL` of the Tasker server [$"+serverEnv+"]")
	f.StringVar(&o.apiKey, "api-key", os.Getenv(apiKeyEnv), "API `KEY` sent as X-API-Key [$"+apiKeyEnv+"]")
	f.StringVarP(&o.output, "output", "o", "table", "output `FORMAT`: table or json")
}

// client checks the flags and returns a client for the server.
func (o *clientOptions) client() (*apiClient, error) {
	if o.output != "table" && o.output != "json" {
		return nil, fmt.Errorf("--output must be table or json, got %q", o.output)
	}
	u, err := url.Parse(o.server)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("--server must be an http:// or https:// URL, got %q", o.server)
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	return &apiClient{base: u, apiKey: o.apiKey, http: &http.Client{Timeout: 90 * time.Second}}, nil
}

// apiClient calls the REST API described in docs/rest-api.md.
type apiClient struct {
	base   *url.URL
	apiKey string
	http   *http.Client
}

// apiError is an error the server answered with.
type apiError struct {
	Status  int
	Code    string
	Message string
	Details []struct{ Field, Message string }
}

func (e *apiError) Error() string {
	var b strings.Builder
	b.WriteString(e.Message)
	if e.Code != "" {
		fmt.Fprintf(&b, " (%s, HTTP %d)", e.Code, e.Status)
	} else {
		fmt.Fprintf(&b, " (HTTP %d)", e.Status)
	}
	for _, d := range e.Details {
		if d.Field != "" {
			fmt.Fprintf(&b, "\n  %s: %s", d.Field, d.Message)
		} else {
			fmt.Fprintf(&b, "\n  %s", d.Message)
		}
	}
	return b.String()
}

// do sends a request and returns the response body of a 2xx answer. A
// non-nil body is sent as JSON.
func (c *apiClient) do(ctx context.Context, method, path string, query url.Values, body any) (json.RawMessage, error) {
	u := *c.base
	u.Path += path
	u.RawQuery = query.Encode()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.apiKey != "" {
		req.Header.Set("X-API-Key", c.apiKey)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("cannot reach the server at %s: %w", c.base.Redacted(), err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("read the answer to %s %s: %w", method, path, err)
	}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return data, nil
	}
	e := &apiError{Status: resp.StatusCode}
	var env struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
			Details []struct {
				Field   string `json:"field"`
				Message string `json:"message"`
			} `json:"details"`
		} `json:"error"`
	}
	if json.Unmarshal(data, &env) == nil && env.Error.Message != "" {
		e.Code, e.Message = env.Error.Code, env.Error.Message
		for _, d := range env.Error.Details {
			e.Details = append(e.Details, struct{ Field, Message string }{d.Field, d.Message})
		}
	} else {
		e.Message = strings.TrimSpace(string(data))
		if len(e.Message) > 200 {
			e.Message = e.Message[:200] + "…"
		}
		if e.Message == "" {
			e.Message = http.StatusText(resp.StatusCode)
		}
	}
	if ra := resp.Header.Get("Retry-After"); ra != "" && resp.StatusCode == http.StatusServiceUnavailable {
		e.Message += "; retry after " + ra + "s"
	}
	return nil, e
}

// get decodes the answer of a GET into out and returns it raw too.
func (c *apiClient) get(ctx context.Context, path string, query url.Values, out any) (json.RawMessage, error) {
	return c.call(ctx, http.MethodGet, path, query, nil, out)
}

func (c *apiClient) call(ctx context.Context, method, path string, query url.Values, body, out any) (json.RawMessage, error) {
	raw, err := c.do(ctx, method, path, query, body)
	if err != nil {
		return nil, err
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			return nil, fmt.Errorf("the server's answer to %s %s is not what this client understands: %w", method, path, err)
		}
	}
	return raw, nil
}

// The API's JSON shapes, as far as the tables show them.

type taskJSON struct {
	TaskUUID             string          `json:"task_uuid"`
	Namespace            string          `json:"namespace"`
	Name                 string          `json:"name"`
	Version              string          `json:"version"`
	State                string          `json:"state"`
	ExecutionStatus      string          `json:"execution_status"`
	Context              json.RawMessage `json:"context"`
	IdempotencyKey       string          `json:"idempotency_key"`
	Initiator            string          `json:"initiator"`
	SourceSystem         string          `json:"source_system"`
	Reason               string          `json:"reason"`
	Tags                 []string        `json:"tags"`
	Priority             int             `json:"priority"`
	TotalSteps           int             `json:"total_steps"`
	CompletedSteps       int             `json:"completed_steps"`
	FailedSteps          int             `json:"failed_steps"`
	InProgressSteps      int             `json:"in_progress_steps"`
	PendingSteps         int             `json:"pending_steps"`
	CompletionPercentage float64         `json:"completion_percentage"`
	CreatedAt            time.Time       `json:"created_at"`
	UpdatedAt            time.Time       `json:"updated_at"`
	CompletedAt          *time.Time      `json:"completed_at"`
}

type stepJSON struct {
	StepUUID    string          `json:"step_uuid"`
	TaskUUID    string          `json:"task_uuid"`
	Name        string          `json:"name"`
	State       string          `json:"state"`
	Attempts    int             `json:"attempts"`
	MaxAttempts int             `json:"max_attempts"`
	Retryable   bool            `json:"retryable"`
	Result      json.RawMessage `json:"result"`
	Error       *struct {
		Message   string `json:"message"`
		Type      string `json:"type"`
		Retryable bool   `json:"retryable"`
	} `json:"error"`
	CreatedAt   time.Time  `json:"created_at"`
	UpdatedAt   time.Time  `json:"updated_at"`
	StartedAt   *time.Time `json:"started_at"`
	CompletedAt *time.Time `json:"completed_at"`
	NextRetryAt *time.Time `json:"next_retry_at"`
	Readiness   *struct {
		DependenciesSatisfied bool       `json:"dependencies_satisfied"`
		RetryEligible         bool       `json:"retry_eligible"`
		NextRetryAt           *time.Time `json:"next_retry_at"`
		BlockedReason         string     `json:"blocked_reason"`
	} `json:"readiness"`
}

type dlqJSON struct {
	ID             int64           `json:"id"`
	Kind           string          `json:"kind"`
	TaskUUID       string          `json:"task_uuid"`
	StepUUID       string          `json:"step_uuid"`
	Namespace      string          `json:"namespace"`
	TaskName       string          `json:"task_name"`
	Reason         string          `json:"reason"`
	OriginalState  string          `json:"original_state"`
	Snapshot       json.RawMessage `json:"snapshot"`
	Status         string          `json:"status"`
	ResolvedBy     string          `json:"resolved_by"`
	ResolutionNote string          `json:"resolution_note"`
	CreatedAt      time.Time       `json:"created_at"`
	UpdatedAt      time.Time       `json:"updated_at"`
	ResolvedAt     *time.Time      `json:"resolved_at"`
}

type listJSON[T any] struct {
	Items      []T    `json:"items"`
	NextCursor string `json:"next_cursor"`
}
