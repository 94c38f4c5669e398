package main

import (
	"os"

	"github.com/spf13/cobra"

	"github.com/tasker-go/tasker/internal/config"
)

// configFileEnv names the configuration file when --config is not given.
const configFileEnv = "TASKER_CONFIG"

// configFile is the file --config or TASKER_CONFIG names, or "".
func configFile(flag string) string {
	if flag != "" {
		return flag
	}
	return os.Getenv(configFileEnv)
}

func newConfigCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "config",
		Short: "Show the effective configuration or an example file",
		Args:  cobra.NoArgs,
	}
	var file string
	show := &cobra.Command{
		Use:   "show",
		Short: "Print the effective configuration as TOML, secrets redacted",
		Long: `Show merges the defaults, the configuration file (--config or
$TASKER_CONFIG) and the TASKER_* environment variables exactly as serve
does, and prints the result as TOML. Each value that is not a default is
followed by a comment naming where it came from. Passwords in URLs and API
key hashes are replaced by xxxxx.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Load(config.Options{File: configFile(file)})
			if err != nil {
				return err
			}
			_, err = a.stdout.Write(cfg.Redacted().TOML())
			return err
		},
	}
	show.Flags().StringVar(&file, "config", "", "configuration `FILE` [$TASKER_CONFIG]")
	example := &cobra.Command{
		Use:   "example",
		Short: "Print a commented configuration file holding every key at its default",
		Long: `Example prints every configuration key set to its default, with what it
means and the environment variable that overrides it. The repository's
config/tasker.example.toml is its output:

    go run ./cmd/tasker config example > config/tasker.example.toml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := a.stdout.Write(config.Example())
			return err
		},
	}
	cmd.AddCommand(show, example)
	return cmd
}
