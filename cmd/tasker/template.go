package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"

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
	seen := map[string]seenTemplate{} // key -> first file and content hash
	bad := 0
	for _, file := range files {
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		if !a.validateTemplate(file, seen) {
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

type seenTemplate struct{ file, hash string }

// validateTemplate reports on one file and says whether it is valid. It
// applies exactly the checks RegisterTemplate applies, and refuses a
// namespace/name/version that an earlier file declared with other content,
// as registering both would.
func (a *app) validateTemplate(file string, seen map[string]seenTemplate) bool {
	doc, err := os.ReadFile(file)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		fmt.Fprintf(a.stderr, "%s: cannot read: %v\n", file, err)
		return false
	}
	err = tasker.ValidateTemplate(doc)
	var ve *template.ValidationError
	switch {
	case err == nil:
	case errors.As(err, &ve):
		for _, p := range ve.Problems {
			fmt.Fprintf(a.stdout, "%s: %s\n", file, p)
		}
		return false
	default:
		fmt.Fprintf(a.stdout, "%s: %v\n", file, err)
		return false
	}
	t, err := template.Parse(doc)
	if err != nil { // cannot happen: ValidateTemplate parsed it
		fmt.Fprintf(a.stdout, "%s: %v\n", file, err)
		return false
	}
	if prev, ok := seen[t.Key()]; ok && prev.hash != t.ContentHash {
		fmt.Fprintf(a.stdout, "%s: %s: version %s is already declared with different content in %s (versions are immutable)\n",
			file, t.Key(), t.Version, prev.file)
		return false
	} else if !ok {
		seen[t.Key()] = seenTemplate{file: file, hash: t.ContentHash}
	}
	fmt.Fprintf(a.stdout, "%s: ok\n", file)
	return true
}
