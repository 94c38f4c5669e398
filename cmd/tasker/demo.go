package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/tasker-go/tasker"
	"github.com/tasker-go/tasker/examples"
)

const (
	barWidth     = 32
	resultWidth  = 28
	stopDeadline = 10 * time.Second
)

type demoOptions struct {
	keepDB  string
	timeout time.Duration
}

func newDemoCmd(a *app) *cobra.Command {
	var opts demoOptions
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run the bundled example workflows and show how each one ran",
		Long: `Demo runs every bundled example workflow at once on an embedded SQLite
database, waits for each to settle, and prints its outcome and a timeline of
its steps: when each step started and ended (relative to the task's creation),
how many attempts it took, its state, its result and, for failed steps, the
error.

The database is a temporary file, removed at the end, unless --keep-db names a
file to keep. Demo exits 0 when every workflow ended as expected: some are
meant to fail, to show retries and blocked tasks.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.runDemo(cmd.Context(), opts, examples.Workflows())
		},
	}
	cmd.Flags().StringVar(&opts.keepDB, "keep-db", "", "write the database to `PATH` and keep it")
	cmd.Flags().DurationVar(&opts.timeout, "timeout", time.Minute, "how long to wait for each workflow to settle")
	return cmd
}

// demoRun is what one workflow did.
type demoRun struct {
	workflow examples.Workflow
	task     *tasker.Task
	steps    []stepTimeline
	wall     time.Duration // from CreateTask to WaitTask's return
	err      error         // the task could not be created, awaited or read
	mismatch error         // how the outcome differs from the expected one
}

// stepTimeline is a step with its attempts placed in time, as offsets from
// the task's creation.
type stepTimeline struct {
	step     tasker.Step
	started  bool
	start    time.Duration // the first attempt's start
	end      time.Duration // the step's last state change
	attempts []span        // each attempt's handler run
}

type span struct{ from, to time.Duration }

// runDemo runs workflows, which must be bundled ones, and reports on them.
func (a *app) runDemo(ctx context.Context, opts demoOptions, workflows []examples.Workflow) error {
	if opts.timeout <= 0 {
		return fmt.Errorf("--timeout must be positive, got %s", opts.timeout)
	}
	dbPath, where := opts.keepDB, "kept"
	if dbPath == "" {
		dir, err := os.MkdirTemp("", "tasker-demo-*")
		if err != nil {
			return fmt.Errorf("create temporary directory: %w", err)
		}
		defer os.RemoveAll(dir)
		dbPath, where = filepath.Join(dir, "demo.db"), "removed at exit"
	}
	dbPath, err := filepath.Abs(dbPath)
	if err != nil {
		return fmt.Errorf("database path: %w", err)
	}
	eng, err := tasker.Open(ctx, tasker.Config{DatabaseURL: "sqlite://" + dbPath, Logger: a.logger()})
	if err != nil {
		return err
	}
	defer eng.Close()
	if err := examples.Register(ctx, eng); err != nil {
		return err
	}
	if err := eng.Start(ctx); err != nil {
		return err
	}

	fmt.Fprintf(a.stdout, "Running %d example workflows concurrently on %s (%s).\n", len(workflows), dbPath, where)
	fmt.Fprintln(a.stdout, "Times are offsets from each task's creation. Timeline: # a handler is running, . waiting (for a retry or the orchestrator).")
	runs := make([]demoRun, len(workflows))
	began := time.Now()
	var wg sync.WaitGroup
	for i, w := range workflows {
		wg.Go(func() { runs[i] = runWorkflow(ctx, eng, w, opts.timeout) })
	}
	wg.Wait()
	total := time.Since(began)

	stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), stopDeadline)
	defer cancel()
	if err := eng.Stop(stopCtx); err != nil {
		fmt.Fprintf(a.stderr, "tasker: stop engine: %v\n", err)
	}

	failed := 0
	for i := range runs {
		printRun(a.stdout, i+1, len(runs), &runs[i])
		if runs[i].err != nil || runs[i].mismatch != nil {
			failed++
		}
	}
	fmt.Fprintln(a.stdout)
	if failed > 0 {
		return &reportedError{msg: fmt.Sprintf("%d of %d workflows did not end as expected", failed, len(runs))}
	}
	fmt.Fprintf(a.stdout, "All %d workflows ended as expected in %s.\n", len(runs), roundDuration(total))
	return nil
}

// runWorkflow creates a task for w, waits for it to settle and reads its
// steps' history.
func runWorkflow(ctx context.Context, eng *tasker.Engine, w examples.Workflow, timeout time.Duration) demoRun {
	r := demoRun{workflow: w}
	ctx, cancel := context.WithTimeoutCause(ctx, timeout, fmt.Errorf("not settled after --timeout %s", timeout))
	defer cancel()
	began := time.Now()
	task, err := eng.CreateTask(ctx, tasker.TaskRequest{
		Namespace: w.Namespace, Name: w.Name, Version: w.Version, Context: w.Context,
		Initiator: "tasker demo", Reason: "demo",
	})
	if err != nil {
		r.err = fmt.Errorf("create task: %w", err)
		return r
	}
	r.task = task
	settled, err := eng.WaitTask(ctx, task.UUID)
	r.wall = time.Since(began)
	if err != nil {
		r.err = fmt.Errorf("wait for task %s: %w", task.UUID, err)
	} else {
		r.task = settled
	}
	// Read the history even when waiting failed: it shows where the task
	// got stuck.
	readCtx, cancelRead := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancelRead()
	steps, err := eng.TaskSteps(readCtx, task.UUID)
	if err != nil {
		r.err = errors.Join(r.err, fmt.Errorf("read steps: %w", err))
		return r
	}
	for _, s := range steps {
		tl, err := timeline(readCtx, eng, r.task.CreatedAt, s)
		if err != nil {
			r.err = errors.Join(r.err, err)
		}
		r.steps = append(r.steps, tl)
	}
	if r.err == nil {
		r.mismatch = w.Verify(r.task, steps)
	}
	return r
}

// timeline places a step's attempts in time from its recorded transitions:
// an attempt runs from its in_progress transition to the next one.
func timeline(ctx context.Context, eng *tasker.Engine, origin time.Time, s tasker.Step) (stepTimeline, error) {
	tl := stepTimeline{step: s}
	trs, err := eng.StepTransitions(ctx, s.UUID)
	if err != nil {
		return tl, fmt.Errorf("read transitions of step %s: %w", s.Name, err)
	}
	running := false
	for _, tr := range trs {
		at := max(tr.CreatedAt.Sub(origin), 0)
		if running {
			tl.attempts[len(tl.attempts)-1].to = at
			running = false
		}
		if tr.To == "in_progress" {
			if !tl.started {
				tl.started, tl.start = true, at
			}
			tl.attempts = append(tl.attempts, span{from: at, to: at})
			running = true
		}
		tl.end = at
	}
	return tl, nil
}

func printRun(w io.Writer, n, of int, r *demoRun) {
	wf := r.workflow
	fmt.Fprintf(w, "\n[%d/%d] %s/%s %s: %s\n", n, of, wf.Namespace, wf.Name, wf.Version, wf.Description)
	if r.task == nil {
		fmt.Fprintf(w, "      FAILED: %v\n", r.err)
		return
	}
	verdict := "as expected"
	if r.err != nil || r.mismatch != nil {
		verdict = "NOT AS EXPECTED (expected " + wf.ExpectState + ")"
	}
	fmt.Fprintf(w, "      %s in %s, %s; %d of %d steps complete; task %s\n",
		r.task.State, roundDuration(r.wall), verdict, r.task.CompletedSteps, r.task.TotalSteps, r.task.UUID)
	for _, err := range []error{r.err, r.mismatch} {
		if err != nil {
			for _, line := range strings.Split(err.Error(), "\n") {
				fmt.Fprintf(w, "      ! %s\n", line)
			}
		}
	}
	if len(r.steps) == 0 {
		return
	}

	var scale time.Duration
	for _, s := range r.steps {
		scale = max(scale, s.end)
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "      STEP\tSTATE\tTRIES\tSTART\tEND\t%s\tRESULT\n", centre("TIMELINE", barWidth+2))
	for _, s := range r.steps {
		start, end := "-", "-"
		if s.started {
			start, end = offset(s.start), offset(s.end)
		}
		fmt.Fprintf(tw, "      %s\t%s\t%d/%d\t%s\t%s\t%s\t%s\n", s.step.Name, s.step.State, s.step.Attempts, s.step.MaxAttempts,
			start, end, bar(s, scale), resultText(s.step))
	}
	tw.Flush()

	var failures []tasker.Step
	for _, s := range r.steps {
		if s.step.Error != nil {
			failures = append(failures, s.step)
		}
	}
	if len(failures) > 0 {
		fmt.Fprintln(w)
		for _, s := range failures {
			what := "failed"
			if s.State != "error" {
				what = "last attempt failed"
			}
			kind := s.Error.Type
			if !s.Error.Retryable {
				kind += ", not retryable"
			}
			fmt.Fprintf(w, "      %s %s (%s): %s\n", s.Name, what, kind, s.Error.Message)
		}
	}
}

// bar draws a step's attempts on a scale from the task's creation (left
// edge) to its last step change (right edge): '#' while a handler ran, '.'
// while the step waited for a retry or for the orchestrator.
func bar(s stepTimeline, scale time.Duration) string {
	cells := []byte(strings.Repeat(" ", barWidth))
	if !s.started || scale <= 0 {
		return "|" + string(cells) + "|"
	}
	col := func(d time.Duration) int {
		return min(int(int64(d)*int64(barWidth)/int64(scale)), barWidth-1)
	}
	for i := col(s.start); i <= col(s.end); i++ {
		cells[i] = '.'
	}
	for _, a := range s.attempts {
		for i := col(a.from); i <= col(a.to); i++ {
			cells[i] = '#'
		}
	}
	return "|" + string(cells) + "|"
}

func resultText(s tasker.Step) string {
	switch {
	case len(s.Result) > 0:
		return truncate(string(s.Result), resultWidth)
	case s.State == "error":
		return "(failed, see below)"
	case s.BlockedReason != "":
		return truncate("("+s.BlockedReason+")", resultWidth+24)
	}
	return ""
}

func truncate(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-3]) + "..."
}

func centre(s string, width int) string {
	pad := max(width-len(s), 0)
	return strings.Repeat(" ", pad/2) + s + strings.Repeat(" ", pad-pad/2)
}

func offset(d time.Duration) string {
	return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
}

func roundDuration(d time.Duration) time.Duration {
	if d < time.Second {
		return d.Round(100 * time.Microsecond)
	}
	return d.Round(time.Millisecond)
}
