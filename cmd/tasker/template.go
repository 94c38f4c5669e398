package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

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
	cmd.AddCommand(newTemplateValidateCmd(a), newTemplateListCmd(a), newTemplateShowCmd(a))
	return cmd
}

// localTemplate is a valid template found in a file.
type localTemplate struct {
	file string
	t    *template.Template
}

// findTemplates reads every *.yml and *.yaml file under the paths (files
// or directories, recursively) and returns the valid templates; each
// invalid or unreadable file is reported on stderr and counted.
func (a *app) findTemplates(paths []string) ([]localTemplate, int, error) {
	var (
		found []localTemplate
		bad   int
	)
	for _, root := range paths {
		err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			ext := strings.ToLower(filepath.Ext(path))
			if d.IsDir() || (path != root && ext != ".yml" && ext != ".yaml") {
				return nil
			}
			doc, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			if err := tasker.ValidateTemplate(doc); err != nil {
				fmt.Fprintf(a.stderr, "%s: not a valid template (see tasker template validate %s)\n", path, path)
				bad++
				return nil
			}
			t, err := template.Parse(doc)
			if err != nil {
				return err
			}
			found = append(found, localTemplate{file: path, t: t})
			return nil
		})
		if err != nil {
			return nil, 0, err
		}
	}
	sort.SliceStable(found, func(i, j int) bool { return found[i].t.Key() < found[j].t.Key() })
	return found, bad, nil
}

func newTemplateListCmd(a *app) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "list [PATH...]",
		Short: "List the task templates in local files and directories",
		Long: `List reads the YAML task templates in the given files and directories
(recursively; default the current directory) and prints each valid one with
its namespace, name, version, step count and file. Files that are not valid
templates are named on stderr, and the exit status is then non-zero.`,
		RunE: func(cmd *cobra.Command, paths []string) error {
			if output != "table" && output != "json" {
				return fmt.Errorf("--output must be table or json, got %q", output)
			}
			if len(paths) == 0 {
				paths = []string{"."}
			}
			found, bad, err := a.findTemplates(paths)
			if err != nil {
				return err
			}
			if output == "json" {
				items := make([]map[string]any, len(found))
				for i, f := range found {
					items[i] = map[string]any{"namespace": f.t.Namespace, "name": f.t.Name, "version": f.t.Version,
						"description": f.t.Description, "steps": len(f.t.Steps), "file": f.file}
				}
				b, err := json.Marshal(map[string]any{"items": items})
				if err != nil {
					return err
				}
				if err := printJSON(a.stdout, b); err != nil {
					return err
				}
			} else {
				rows := make([][]string, len(found))
				for i, f := range found {
					rows[i] = []string{f.t.Namespace, f.t.Name, f.t.Version, strconv.Itoa(len(f.t.Steps)), f.file}
				}
				if err := table(a.stdout, []string{"NAMESPACE", "NAME", "VERSION", "STEPS", "FILE"}, rows); err != nil {
					return err
				}
			}
			if bad > 0 {
				return &reportedError{msg: fmt.Sprintf("%d files are not valid templates", bad)}
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output `FORMAT`: table or json")
	return cmd
}

func newTemplateShowCmd(a *app) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "show FILE | NAMESPACE/NAME[@VERSION] [PATH...]",
		Short: "Show one local task template with its steps",
		Long: `Show prints a template's description, identity strategy, input schema and
steps (handler, dependencies, retry policy, timeout). Name it by its file,
or by NAMESPACE/NAME, with @VERSION when several versions are found, looked
up in the given files and directories (default the current directory).`,
		Example: `  tasker template show examples/templates/linear.yaml
  tasker template show math/linear_workflow examples/templates`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "table" && output != "json" {
				return fmt.Errorf("--output must be table or json, got %q", output)
			}
			lt, err := a.lookupTemplate(args[0], args[1:])
			if err != nil {
				return err
			}
			if output == "json" {
				b, err := json.Marshal(lt.t)
				if err != nil {
					return err
				}
				return printJSON(a.stdout, b)
			}
			return a.showTemplate(lt)
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output `FORMAT`: table or json")
	return cmd
}

func (a *app) lookupTemplate(ref string, paths []string) (localTemplate, error) {
	if st, err := os.Stat(ref); err == nil && !st.IsDir() {
		if len(paths) > 0 {
			return localTemplate{}, fmt.Errorf("%s is a file: give no PATH after it", ref)
		}
		found, _, err := a.findTemplates([]string{ref})
		if err != nil {
			return localTemplate{}, err
		}
		if len(found) == 0 {
			return localTemplate{}, &reportedError{msg: ref + " is not a valid template"}
		}
		return found[0], nil
	}
	key, version, _ := strings.Cut(ref, "@")
	ns, name, ok := strings.Cut(key, "/")
	if !ok || ns == "" || name == "" {
		return localTemplate{}, fmt.Errorf("%q is neither a file nor NAMESPACE/NAME[@VERSION]", ref)
	}
	if len(paths) == 0 {
		paths = []string{"."}
	}
	found, _, err := a.findTemplates(paths)
	if err != nil {
		return localTemplate{}, err
	}
	var matches []localTemplate
	var versions []string
	for _, f := range found {
		if f.t.Namespace == ns && f.t.Name == name && (version == "" || f.t.Version == version) {
			matches = append(matches, f)
			versions = append(versions, f.t.Version+" ("+f.file+")")
		}
	}
	switch {
	case len(matches) == 0:
		return localTemplate{}, fmt.Errorf("no template %s under %s", ref, strings.Join(paths, ", "))
	case len(matches) > 1 && version == "":
		return localTemplate{}, fmt.Errorf("%s has several versions: %s; add @VERSION", ref, strings.Join(versions, ", "))
	}
	return matches[0], nil
}

func (a *app) showTemplate(lt localTemplate) error {
	t := lt.t
	if err := fields(a.stdout, [][2]string{
		{"Template", fmt.Sprintf("%s/%s %s", t.Namespace, t.Name, t.Version)},
		{"Description", t.Description},
		{"Identity", string(t.IdentityStrategy)},
		{"Input schema", compactJSON(t.InputSchema, 200)},
		{"File", lt.file},
	}); err != nil {
		return err
	}
	fmt.Fprintln(a.stdout)
	rows := make([][]string, len(t.Steps))
	for i, s := range t.Steps {
		deps := strings.Join(s.Dependencies, ", ")
		if deps == "" {
			deps = "-"
		}
		retry := "not retried"
		if s.Retry.Retryable && s.Retry.MaxAttempts > 1 {
			retry = fmt.Sprintf("%d attempts, %s from %dms to %dms", s.Retry.MaxAttempts, s.Retry.Backoff,
				s.Retry.BackoffBaseMS, s.Retry.MaxBackoffMS)
		}
		timeout := "default"
		if s.TimeoutSeconds > 0 {
			timeout = (time.Duration(s.TimeoutSeconds) * time.Second).String()
		}
		rows[i] = []string{s.Name, s.Handler.Callable, deps, retry, timeout}
	}
	return table(a.stdout, []string{"STEP", "HANDLER", "DEPENDS ON", "RETRY", "TIMEOUT"}, rows)
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
