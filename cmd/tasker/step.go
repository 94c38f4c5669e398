package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"

	"github.com/google/uuid"
	"github.com/spf13/cobra"
)

func newStepCmd(a *app) *cobra.Command {
	o := &clientOptions{}
	cmd := &cobra.Command{
		Use:   "step",
		Short: "Show a step or fix it by hand: reset for retry, resolve, complete",
		Long: `The step commands act on one step of a task on a Tasker server. STEP is the
step's UUID or its name in the task. Each manual action is recorded in the
step's history with who did it (the API key or token's subject) and
--reason.`,
		Args: cobra.NoArgs,
	}
	addClientFlags(cmd, o)
	get := &cobra.Command{
		Use:   "get TASK_UUID STEP",
		Short: "Show a step, with why it is not running if it is not",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			stepUUID, err := resolveStep(cmd.Context(), c, args[0], args[1])
			if err != nil {
				return err
			}
			var s stepJSON
			raw, err := c.get(cmd.Context(), stepPath(args[0], stepUUID), nil, &s)
			if err != nil {
				return err
			}
			return a.showStep(o, raw, &s)
		},
	}
	cmd.AddCommand(get,
		newStepActionCmd(a, o, "reset", "reset_for_retry", "Put a failed step back to pending with its attempts reset",
			`Reset gives a step in error a fresh set of attempts: it returns to pending
and runs again once its dependencies allow, and the task leaves
blocked_by_failures if nothing else blocks it.`),
		newStepActionCmd(a, o, "resolve", "resolve_manually", "Mark a step resolved without running it",
			`Resolve marks the step resolved_manually: its dependents may run as if it
had completed, without a result.`),
		newStepActionCmd(a, o, "complete", "complete_manually", "Complete a step by hand with a result",
			`Complete marks the step complete with the JSON value given by --result as
its result, which its dependents read as if its handler had returned it.`),
	)
	return cmd
}

func newStepActionCmd(a *app, o *clientOptions, use, action, short, long string) *cobra.Command {
	var reason, result string
	cmd := &cobra.Command{
		Use:   use + " TASK_UUID STEP",
		Short: short,
		Long:  long,
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			body := struct {
				Action string          `json:"action"`
				Result json.RawMessage `json:"result,omitempty"`
				Reason string          `json:"reason,omitempty"`
			}{Action: action, Reason: reason}
			if action == "complete_manually" {
				if !json.Valid([]byte(result)) {
					return fmt.Errorf("--result must be a JSON value, got %q", result)
				}
				body.Result = json.RawMessage(result)
			}
			stepUUID, err := resolveStep(cmd.Context(), c, args[0], args[1])
			if err != nil {
				return err
			}
			var s stepJSON
			raw, err := c.call(cmd.Context(), http.MethodPatch, stepPath(args[0], stepUUID), nil, body, &s)
			if err != nil {
				return err
			}
			return a.showStep(o, raw, &s)
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why, recorded with the action")
	if action == "complete_manually" {
		cmd.Flags().StringVar(&result, "result", "", "the step's result, a JSON value")
		_ = cmd.MarkFlagRequired("result")
	}
	return cmd
}

func stepPath(taskUUID, stepUUID string) string {
	return "/v1/tasks/" + url.PathEscape(taskUUID) + "/steps/" + url.PathEscape(stepUUID)
}

// resolveStep returns the UUID of the step named step in the task, or step
// itself when it is a UUID.
func resolveStep(ctx context.Context, c *apiClient, taskUUID, step string) (string, error) {
	if uuid.Validate(step) == nil {
		return step, nil
	}
	steps, _, err := taskSteps(ctx, c, taskUUID)
	if err != nil {
		return "", err
	}
	for _, s := range steps {
		if s.Name == step {
			return s.StepUUID, nil
		}
	}
	return "", fmt.Errorf("task %s has no step named %q", taskUUID, step)
}

func (a *app) showStep(o *clientOptions, raw json.RawMessage, s *stepJSON) error {
	if o.output == "json" {
		return printJSON(a.stdout, raw)
	}
	kv := [][2]string{
		{"Step", s.StepUUID},
		{"Name", s.Name},
		{"Task", s.TaskUUID},
		{"State", s.State},
		{"Attempts", fmt.Sprintf("%d of %d", s.Attempts, s.MaxAttempts)},
		{"Result", compactJSON(s.Result, 200)},
	}
	if s.Error != nil {
		kv = append(kv, [2]string{"Last error", fmt.Sprintf("%s (%s)", s.Error.Message, s.Error.Type)})
	}
	if r := s.Readiness; r != nil {
		kv = append(kv,
			[2]string{"Dependencies satisfied", fmt.Sprint(r.DependenciesSatisfied)},
			[2]string{"Retry eligible", fmt.Sprint(r.RetryEligible)},
			[2]string{"Next retry", formatTimePtr(r.NextRetryAt)},
			[2]string{"Blocked because", r.BlockedReason})
	} else {
		kv = append(kv, [2]string{"Next retry", formatTimePtr(s.NextRetryAt)})
	}
	kv = append(kv,
		[2]string{"Created", formatTime(s.CreatedAt)},
		[2]string{"Started", formatTimePtr(s.StartedAt)},
		[2]string{"Completed", formatTimePtr(s.CompletedAt)})
	return fields(a.stdout, kv)
}
