package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"

	"github.com/spf13/cobra"
)

func newDLQCmd(a *app) *cobra.Command {
	o := &clientOptions{}
	cmd := &cobra.Command{
		Use:   "dlq",
		Short: "Inspect and resolve the dead-letter queue on a server",
		Long: `The dead-letter queue holds tasks the staleness sweeper found stuck (kind
task) and step results that kept failing to process (kind message). Each
entry stays pending until it is resolved or redriven.`,
		Args: cobra.NoArgs,
	}
	addClientFlags(cmd, o)

	var filter struct{ status, kind, task, cursor string }
	var limit int
	list := &cobra.Command{
		Use:   "list",
		Short: "List dead-letter entries",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			q := url.Values{}
			for k, v := range map[string]string{"status": filter.status, "kind": filter.kind, "task_uuid": filter.task,
				"cursor": filter.cursor} {
				if v != "" {
					q.Set(k, v)
				}
			}
			if limit > 0 {
				q.Set("limit", strconv.Itoa(limit))
			}
			var page listJSON[dlqJSON]
			raw, err := c.get(cmd.Context(), "/v1/dlq", q, &page)
			if err != nil {
				return err
			}
			if o.output == "json" {
				return printJSON(a.stdout, raw)
			}
			rows := make([][]string, len(page.Items))
			for i, e := range page.Items {
				rows[i] = []string{strconv.FormatInt(e.ID, 10), e.Kind, e.Status, e.TaskUUID,
					e.Namespace + "/" + e.TaskName, oneLine(e.Reason, 50), formatTime(e.CreatedAt)}
			}
			if err := table(a.stdout, []string{"ID", "KIND", "STATUS", "TASK", "TEMPLATE", "REASON", "CREATED"}, rows); err != nil {
				return err
			}
			if page.NextCursor != "" {
				fmt.Fprintf(a.stderr, "More entries match: add --cursor %s for the next page.\n", page.NextCursor)
			}
			return nil
		},
	}
	lf := list.Flags()
	lf.StringVar(&filter.status, "status", "", "only entries with this `STATUS`: pending, manually_resolved, permanently_failed, cancelled")
	lf.StringVar(&filter.kind, "kind", "", "only entries of this `KIND`: task or message")
	lf.StringVar(&filter.task, "task", "", "only entries of this `TASK_UUID`")
	lf.StringVar(&filter.cursor, "cursor", "", "continue after a previous page")
	lf.IntVar(&limit, "limit", 0, "entries per page (server default 50, at most 500)")

	show := &cobra.Command{
		Use:   "show ID",
		Short: "Show a dead-letter entry with the snapshot taken when it was recorded",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			var e dlqJSON
			raw, err := c.get(cmd.Context(), "/v1/dlq/"+url.PathEscape(args[0]), nil, &e)
			if err != nil {
				return err
			}
			return a.showDLQ(o, raw, &e, true)
		},
	}

	var status, reason string
	resolve := &cobra.Command{
		Use:   "resolve ID",
		Short: "Record how a dead-letter entry was dealt with",
		Long: `Resolve sets the entry's status (--status, default manually_resolved; or
permanently_failed, cancelled) with --reason. It does not touch the task:
use redrive to run it again.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			body := map[string]string{"status": status, "reason": reason}
			var e dlqJSON
			raw, err := c.call(cmd.Context(), http.MethodPatch, "/v1/dlq/"+url.PathEscape(args[0]), nil, body, &e)
			if err != nil {
				return err
			}
			return a.showDLQ(o, raw, &e, false)
		},
	}
	resolve.Flags().StringVar(&status, "status", "manually_resolved", "the resolution `STATUS`: manually_resolved, permanently_failed or cancelled")
	resolve.Flags().StringVar(&reason, "reason", "", "why, recorded with the entry")

	var redriveReason string
	redrive := &cobra.Command{
		Use:   "redrive ID",
		Short: "Run a dead-lettered task's failed steps again (or requeue a dead-lettered result)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			body := map[string]string{"reason": redriveReason}
			var e dlqJSON
			raw, err := c.call(cmd.Context(), http.MethodPost, "/v1/dlq/"+url.PathEscape(args[0])+"/redrive", nil, body, &e)
			if err != nil {
				return err
			}
			return a.showDLQ(o, raw, &e, false)
		},
	}
	redrive.Flags().StringVar(&redriveReason, "reason", "", "why, recorded with the entry and the steps")

	cmd.AddCommand(list, show, resolve, redrive)
	return cmd
}

func (a *app) showDLQ(o *clientOptions, raw json.RawMessage, e *dlqJSON, snapshot bool) error {
	if o.output == "json" {
		return printJSON(a.stdout, raw)
	}
	if err := fields(a.stdout, [][2]string{
		{"Entry", strconv.FormatInt(e.ID, 10)},
		{"Kind", e.Kind},
		{"Status", e.Status},
		{"Task", e.TaskUUID},
		{"Step", e.StepUUID},
		{"Template", e.Namespace + "/" + e.TaskName},
		{"Reason", e.Reason},
		{"Original state", e.OriginalState},
		{"Resolved by", e.ResolvedBy},
		{"Resolution note", e.ResolutionNote},
		{"Created", formatTime(e.CreatedAt)},
		{"Resolved", formatTimePtr(e.ResolvedAt)},
	}); err != nil {
		return err
	}
	if snapshot && len(e.Snapshot) > 0 && string(e.Snapshot) != "null" {
		fmt.Fprintln(a.stdout, "Snapshot:")
		return printJSON(a.stdout, e.Snapshot)
	}
	return nil
}
