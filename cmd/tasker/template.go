package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/tasker-go/tasker"
	"github.com/tasker-go/tasker/template"
)

func newTemplateCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "template",
		Short: "Work with task templates",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(newTemplateValidateCmd(a))
	return cmd
}

func newTemplateValidateCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "validate FILE...",
		Short: "Check task template files",
		Long: `Validate checks each YAML task template file exactly as the engine does when
a template is registered, and prints "FILE: ok" or every problem found, one per
line, each prefixed with the file name. Problems include unsupported features:
this build runs only standard steps, without batch_config or publishes_events.

It exits non-zero when any file has problems or cannot be read. Files are
checked against each other too: two files declaring the same
namespace/name/version with different content are refused, as registering
both would be.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, files []string) error {
			return a.validateTemplates(cmd.Context(), files)
		},
	}
}

func (a *app) validateTemplates(ctx context.Context, files []string) error {
	// Registering on a scratch engine applies exactly the checks that
	// RegisterTemplate applies, including the ones for features this build
	// cannot run yet, so validate never approves a template that the engine
	// would refuse.
	dir, err := os.MkdirTemp("", "tasker-validate-*")
	if err != nil {
		return fmt.Errorf("create scratch directory: %w", err)
	}
	defer os.RemoveAll(dir)
	eng, err := tasker.Open(ctx, tasker.Config{
		DatabaseURL: "sqlite://" + filepath.Join(dir, "validate.db"),
		Logger:      slog.New(slog.DiscardHandler),
	})
	if err != nil {
		return fmt.Errorf("open scratch engine: %w", err)
	}
	defer eng.Close()

	bad := 0
	for _, file := range files {
		if !a.validateTemplate(ctx, eng, file) {
			bad++
		}
	}
	if bad > 0 {
		noun := "files have"
		if len(files) == 1 {
			noun = "file has"
		}
		return &reportedError{msg: fmt.Sprintf("%d of %d %s problems", bad, len(files), noun)}
	}
	return nil
}

// validateTemplate reports on one file and says whether it is valid.
func (a *app) validateTemplate(ctx context.Context, eng *tasker.Engine, file string) bool {
	doc, err := os.ReadFile(file)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		fmt.Fprintf(a.stderr, "%s: cannot read: %v\n", file, err)
		return false
	}
	err = eng.RegisterTemplate(ctx, doc)
	var ve *template.ValidationError
	switch {
	case err == nil:
		fmt.Fprintf(a.stdout, "%s: ok\n", file)
		return true
	case errors.As(err, &ve):
		for _, p := range ve.Problems {
			fmt.Fprintf(a.stdout, "%s: %s\n", file, p)
		}
	default:
		fmt.Fprintf(a.stdout, "%s: %v\n", file, err)
	}
	return false
}
