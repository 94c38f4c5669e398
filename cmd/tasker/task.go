package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

func newTaskCmd(a *app) *cobra.Command {
	o := &clientOptions{}
	cmd := &cobra.Command{
		Use:   "task",
		Short: "Create, inspect, cancel and watch tasks on a server",
		Long: `The task commands talk to a Tasker server (tasker serve) over HTTP. They print
tables by default and the server's JSON with -o json, and exit non-zero with
the server's error message when a request fails.`,
		Args: cobra.NoArgs,
	}
	addClientFlags(cmd, o)
	cmd.AddCommand(newTaskCreateCmd(a, o), newTaskGetCmd(a, o), newTaskListCmd(a, o), newTaskCancelCmd(a, o),
		newTaskStepsCmd(a, o), newTaskWatchCmd(a, o))
	return cmd
}

func newTaskCreateCmd(a *app, o *clientOptions) *cobra.Command {
	var (
		req struct {
			Namespace      string          `json:"namespace"`
			Name           string          `json:"name"`
			Version        string          `json:"version,omitempty"`
			Context        json.RawMessage `json:"context,omitempty"`
			IdempotencyKey string          `json:"idempotency_key,omitempty"`
			Initiator      string          `json:"initiator,omitempty"`
			SourceSystem   string          `json:"source_system,omitempty"`
			Reason         string          `json:"reason,omitempty"`
			Tags           []string        `json:"tags,omitempty"`
			Priority       int             `json:"priority,omitempty"`
		}
		contextJSON, contextFile string
	)
	cmd := &cobra.Command{
		Use:   "create NAMESPACE NAME",
		Short: "Create a task from a registered template",
		Long: `Create asks the server for a new task of the template NAMESPACE/NAME (the
highest registered version unless --version says otherwise), with the JSON
object given by --context or --context-file (- reads stdin) as its input.`,
		Example: `  tasker task create math linear_workflow --context '{"even_number": 6}'`,
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			req.Namespace, req.Name = args[0], args[1]
			switch {
			case contextJSON != "" && contextFile != "":
				return fmt.Errorf("give --context or --context-file, not both")
			case contextFile == "-":
				b, err := io.ReadAll(cmd.InOrStdin())
				if err != nil {
					return fmt.Errorf("read the context from stdin: %w", err)
				}
				contextJSON = string(b)
			case contextFile != "":
				b, err := os.ReadFile(contextFile)
				if err != nil {
					return fmt.Errorf("read the context: %w", err)
				}
				contextJSON = string(b)
			}
			if strings.TrimSpace(contextJSON) != "" {
				if !json.Valid([]byte(contextJSON)) {
					return fmt.Errorf("the context is not valid JSON: %s", oneLine(contextJSON, 80))
				}
				req.Context = json.RawMessage(contextJSON)
			}
			var t taskJSON
			raw, err := c.call(cmd.Context(), http.MethodPost, "/v1/tasks", nil, req, &t)
			if err != nil {
				return err
			}
			return a.showTask(o, raw, &t)
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.Version, "version", "", "template `VERSION` (default: the highest registered)")
	f.StringVar(&contextJSON, "context", "", "the task's input, a JSON object")
	f.StringVar(&contextFile, "context-file", "", "read the task's input from `FILE` (- for stdin)")
	f.StringVar(&req.IdempotencyKey, "idempotency-key", "", "the task's identity: a second create with the same `KEY` is refused")
	f.StringVar(&req.Initiator, "initiator", "", "who asked for the task")
	f.StringVar(&req.SourceSystem, "source-system", "", "the system the request came from")
	f.StringVar(&req.Reason, "reason", "", "why the task is created")
	f.StringArrayVar(&req.Tags, "tag", nil, "a `TAG` recorded with the task (repeatable)")
	f.IntVar(&req.Priority, "priority", 0, "claim priority: higher runs first")
	return cmd
}

func newTaskGetCmd(a *app, o *clientOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "get TASK_UUID",
		Short: "Show a task's state and step counts",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			var t taskJSON
			raw, err := c.get(cmd.Context(), "/v1/tasks/"+url.PathEscape(args[0]), nil, &t)
			if err != nil {
				return err
			}
			return a.showTask(o, raw, &t)
		},
	}
}

func newTaskCancelCmd(a *app, o *clientOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "cancel TASK_UUID",
		Short: "Cancel a task and its unfinished steps",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			var t taskJSON
			raw, err := c.call(cmd.Context(), http.MethodDelete, "/v1/tasks/"+url.PathEscape(args[0]), nil, nil, &t)
			if err != nil {
				return err
			}
			return a.showTask(o, raw, &t)
		},
	}
}

func (a *app) showTask(o *clientOptions, raw json.RawMessage, t *taskJSON) error {
	if o.output == "json" {
		return printJSON(a.stdout, raw)
	}
	return fields(a.stdout, [][2]string{
		{"Task", t.TaskUUID},
		{"Template", fmt.Sprintf("%s/%s %s", t.Namespace, t.Name, t.Version)},
		{"State", t.State},
		{"Execution status", t.ExecutionStatus},
		{"Steps", fmt.Sprintf("%d total, %d complete, %d failed, %d in progress, %d pending (%.0f%%)",
			t.TotalSteps, t.CompletedSteps, t.FailedSteps, t.InProgressSteps, t.PendingSteps, t.CompletionPercentage)},
		{"Context", compactJSON(t.Context, 120)},
		{"Idempotency key", t.IdempotencyKey},
		{"Initiator", t.Initiator},
		{"Source system", t.SourceSystem},
		{"Reason", t.Reason},
		{"Tags", strings.Join(t.Tags, ", ")},
		{"Priority", nonZero(t.Priority)},
		{"Created", formatTime(t.CreatedAt)},
		{"Updated", formatTime(t.UpdatedAt)},
		{"Completed", formatTimePtr(t.CompletedAt)},
	})
}

func nonZero(n int) string {
	if n == 0 {
		return ""
	}
	return strconv.Itoa(n)
}

func newTaskListCmd(a *app, o *clientOptions) *cobra.Command {
	var (
		filter struct{ namespace, name, state, after, before, cursor string }
		limit  int
		all    bool
	)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List tasks, newest first",
		Long: `List prints one page of tasks (--limit, default 50) matching the filters.
When more match, it says so on stderr with the --cursor that reads the next
page; --all reads every page.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			q := url.Values{}
			for k, v := range map[string]string{"namespace": filter.namespace, "name": filter.name, "state": filter.state,
				"created_after": filter.after, "created_before": filter.before, "cursor": filter.cursor} {
				if v != "" {
					q.Set(k, v)
				}
			}
			if limit > 0 {
				q.Set("limit", strconv.Itoa(limit))
			}
			var tasks []taskJSON
			var raws []json.RawMessage
			for {
				var page listJSON[taskJSON]
				var rawPage listJSON[json.RawMessage]
				raw, err := c.get(cmd.Context(), "/v1/tasks", q, &page)
				if err != nil {
					return err
				}
				_ = json.Unmarshal(raw, &rawPage)
				tasks = append(tasks, page.Items...)
				raws = append(raws, rawPage.Items...)
				if page.NextCursor == "" {
					break
				}
				if !all {
					if o.output == "json" {
						return printJSON(a.stdout, raw)
					}
					defer fmt.Fprintf(a.stderr, "More tasks match: add --cursor %s for the next page, or --all.\n", page.NextCursor)
					break
				}
				q.Set("cursor", page.NextCursor)
			}
			if o.output == "json" {
				b, err := json.Marshal(map[string]any{"items": raws})
				if err != nil {
					return err
				}
				return printJSON(a.stdout, b)
			}
			rows := make([][]string, len(tasks))
			for i, t := range tasks {
				rows[i] = []string{t.TaskUUID, t.Namespace + "/" + t.Name, t.Version, t.State,
					fmt.Sprintf("%d/%d", t.CompletedSteps, t.TotalSteps), formatTime(t.CreatedAt)}
			}
			return table(a.stdout, []string{"TASK", "TEMPLATE", "VERSION", "STATE", "STEPS", "CREATED"}, rows)
		},
	}
	f := cmd.Flags()
	f.StringVar(&filter.namespace, "namespace", "", "only tasks of this `NAMESPACE`")
	f.StringVar(&filter.name, "name", "", "only tasks of templates with this `NAME`")
	f.StringVar(&filter.state, "state", "", "only tasks in this `STATE`")
	f.StringVar(&filter.after, "created-after", "", "only tasks created after `TIME` (RFC 3339)")
	f.StringVar(&filter.before, "created-before", "", "only tasks created before `TIME` (RFC 3339)")
	f.StringVar(&filter.cursor, "cursor", "", "continue after a previous page")
	f.IntVar(&limit, "limit", 0, "tasks per page (server default 50, at most 500)")
	f.BoolVar(&all, "all", false, "read every page")
	return cmd
}

// taskSteps reads a task's steps.
func taskSteps(ctx context.Context, c *apiClient, taskUUID string) ([]stepJSON, json.RawMessage, error) {
	var page listJSON[stepJSON]
	raw, err := c.get(ctx, "/v1/tasks/"+url.PathEscape(taskUUID)+"/steps", nil, &page)
	return page.Items, raw, err
}

func newTaskStepsCmd(a *app, o *clientOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "steps TASK_UUID",
		Short: "List a task's steps with their states, attempts and results or errors",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			steps, raw, err := taskSteps(cmd.Context(), c, args[0])
			if err != nil {
				return err
			}
			if o.output == "json" {
				return printJSON(a.stdout, raw)
			}
			return stepsTable(a.stdout, steps)
		},
	}
}

func stepsTable(w io.Writer, steps []stepJSON) error {
	rows := make([][]string, len(steps))
	for i, s := range steps {
		rows[i] = []string{s.StepUUID, s.Name, s.State, fmt.Sprintf("%d/%d", s.Attempts, s.MaxAttempts), stepOutcome(s)}
	}
	return table(w, []string{"STEP", "NAME", "STATE", "ATTEMPTS", "RESULT / ERROR"}, rows)
}

// stepOutcome is a step's last error, or else its result, on one line.
func stepOutcome(s stepJSON) string {
	if s.Error != nil && s.State != "complete" && s.State != "resolved_manually" {
		retry := "retryable"
		if !s.Retryable || !s.Error.Retryable {
			retry = "not retryable"
		}
		return oneLine(fmt.Sprintf("%s (%s, %s)", s.Error.Message, s.Error.Type, retry), 80)
	}
	if s.State == "waiting_for_retry" && s.NextRetryAt != nil {
		return "retry at " + formatTime(*s.NextRetryAt)
	}
	return compactJSON(s.Result, 60)
}

// taskSettled reports whether a task will not move without an operator:
// a terminal state, or blocked by failures.
func taskSettled(state string) bool {
	switch state {
	case "complete", "error", "cancelled", "resolved_manually", "blocked_by_failures":
		return true
	}
	return false
}

func newTaskWatchCmd(a *app, o *clientOptions) *cobra.Command {
	var interval time.Duration
	cmd := &cobra.Command{
		Use:   "watch TASK_UUID",
		Short: "Follow a task's steps live until it finishes",
		Long: `Watch polls the task and its steps (every --interval) and redraws a
per-step view each time something changed, until the task is complete,
in error, cancelled, resolved manually or blocked by failures. On a
terminal it redraws in place; otherwise it prints each new view below the
last. It exits 0 when the task completed (or was resolved manually) and 1
otherwise.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			if interval <= 0 {
				return fmt.Errorf("--interval must be positive, got %s", interval)
			}
			return a.watchTask(cmd.Context(), c, o, args[0], interval)
		},
	}
	cmd.Flags().DurationVar(&interval, "interval", 500*time.Millisecond, "how often to poll the server")
	return cmd
}

func (a *app) watchTask(ctx context.Context, c *apiClient, o *clientOptions, taskUUID string, interval time.Duration) error {
	redraw := isTerminal(a.stdout)
	last := ""
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		var t taskJSON
		rawTask, err := c.get(ctx, "/v1/tasks/"+url.PathEscape(taskUUID), nil, &t)
		if err != nil {
			return err
		}
		steps, rawSteps, err := taskSteps(ctx, c, taskUUID)
		if err != nil {
			return err
		}
		var view strings.Builder
		if o.output == "json" {
			b, _ := json.Marshal(map[string]json.RawMessage{"task": rawTask, "steps": rawSteps})
			view.Write(b)
			view.WriteByte('\n')
		} else {
			fmt.Fprintf(&view, "%s  %s/%s %s  %s (%s)  %d/%d steps complete\n\n", t.TaskUUID, t.Namespace, t.Name,
				t.Version, t.State, t.ExecutionStatus, t.CompletedSteps, t.TotalSteps)
			if err := stepsTable(&view, steps); err != nil {
				return err
			}
		}
		if s := view.String(); s != last {
			if redraw {
				fmt.Fprint(a.stdout, "\033[H\033[2J") // home, clear screen
			} else if last != "" && o.output != "json" {
				fmt.Fprintln(a.stdout)
			}
			fmt.Fprint(a.stdout, s)
			last = s
		}
		if taskSettled(t.State) {
			if t.State == "complete" || t.State == "resolved_manually" {
				return nil
			}
			return &reportedError{msg: fmt.Sprintf("task %s ended %s", t.TaskUUID, t.State)}
		}
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-tick.C:
		}
	}
}

// isTerminal reports whether w is a character device, where redrawing in
// place makes sense.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
