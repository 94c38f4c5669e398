// Command tasker is the Tasker command line: it runs the bundled demo,
// serves the HTTP API with the bundled workflows (alone or as part of a
// cluster), migrates the database, validates and lists task templates,
// shows the configuration, and talks to a server to create, inspect and
// repair tasks, steps and dead-letter entries.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

// version is the version `tasker version` prints.
const version = "0.1.0-dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run executes the command line args and returns the process exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := newRootCmd(stdout, stderr)
	root.SetArgs(args)
	if err := root.ExecuteContext(ctx); err != nil {
		var quiet *reportedError
		if !errors.As(err, &quiet) {
			fmt.Fprintf(stderr, "tasker: %v\n", err)
		} else if quiet.msg != "" {
			fmt.Fprintf(stderr, "tasker: %s\n", quiet.msg)
		}
		return 1
	}
	return 0
}

// reportedError fails a command whose output already explained the
// failure; msg is a one-line summary, or "" for none.
type reportedError struct{ msg string }

func (e *reportedError) Error() string {
	if e.msg == "" {
		return "failed"
	}
	return e.msg
}

// app holds what every command shares.
type app struct {
	stdout, stderr io.Writer
	verbose        bool
}

// logger logs to stderr: warnings and errors only, unless -v asks for
// everything.
func (a *app) logger() *slog.Logger {
	level := slog.LevelWarn
	if a.verbose {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(a.stderr, &slog.HandlerOptions{Level: level}))
}

func newRootCmd(stdout, stderr io.Writer) *cobra.Command {
	a := &app{stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:   "tasker",
		Short: "Tasker runs workflows: DAGs of steps declared in YAML task templates",
		Long: `Tasker is a workflow orchestration engine. A workflow (a task) is a DAG of
steps declared in a YAML task template; each step runs a handler, and the
engine runs a step only when its dependencies are done, retries failed steps
with backoff and records every state change.

Start with "tasker demo", which runs the bundled example workflows on a
temporary SQLite database and shows how each one ran.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.PersistentFlags().BoolVarP(&a.verbose, "verbose", "v", false, "log debug messages to stderr")
	root.AddCommand(newDemoCmd(a), newServeCmd(a), newTemplateCmd(a), newVersionCmd(a), newConfigCmd(a), newMigrateCmd(a),
		newTaskCmd(a), newStepCmd(a), newDLQCmd(a))
	root.AddCommand(newAuthCmd(a))
	return root
}

func newVersionCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version of tasker",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintf(a.stdout, "tasker %s\n", version)
			return err
		},
	}
}
