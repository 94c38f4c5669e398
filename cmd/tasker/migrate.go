package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/tasker-go/tasker"
	"github.com/tasker-go/tasker/internal/config"
	"github.com/tasker-go/tasker/store"
)

var migrateFlags = map[string]string{
	"database-url":    "store.database_url",
	"postgres-schema": "store.postgres_schema",
}

func newMigrateCmd(a *app) *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "migrate",
		Short: "Create or upgrade the database schema and print its version",
		Long: `Migrate opens the configured database (as serve would: --config,
TASKER_* variables, flags), applies the migrations this build has that the
database lacks, prints the schema version and exits. Serve migrates at start
too; run migrate to upgrade ahead of a deployment. A database migrated by a
newer build is refused.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd, file, migrateFlags)
			if err != nil {
				return err
			}
			return a.migrate(cmd.Context(), cfg)
		},
	}
	d := config.Default()
	f := cmd.Flags()
	f.StringVar(&file, "config", "", "configuration `FILE` [$TASKER_CONFIG]")
	f.String("database-url", d.Store.DatabaseURL, "database `URL`: sqlite://FILE or postgres://…")
	f.String("postgres-schema", d.Store.PostgresSchema, "PostgreSQL `SCHEMA` holding Tasker's tables")
	describeEnv(f, migrateFlags)
	return cmd
}

func (a *app) migrate(ctx context.Context, cfg *config.Config) error {
	ec := cfg.Engine()
	ec.Logger = a.logger()
	shown := redactURL(ec.DatabaseURL)
	eng, err := tasker.Open(ctx, ec) // Open applies the migrations
	if err != nil {
		if errors.Is(err, store.ErrUnavailable) {
			return fmt.Errorf("cannot reach the database at %s (%s): %w", dbAddress(ec.DatabaseURL), shown, err)
		}
		return fmt.Errorf("migrate %s: %w", shown, err)
	}
	defer eng.Close()
	h := eng.CheckHealth(ctx)
	if h.DatabaseErr != nil {
		return fmt.Errorf("migrate %s: %w", shown, h.DatabaseErr)
	}
	if !h.MigrationsCurrent {
		return fmt.Errorf("migrate %s: migrations are not current after migrating", shown)
	}
	version, name, err := schemaVersion(ctx, ec)
	if err != nil {
		return fmt.Errorf("read the schema version of %s: %w", shown, err)
	}
	_, err = fmt.Fprintf(a.stdout, "%s: schema version %d (%s), up to date\n", shown, version, name)
	return err
}

// schemaVersion reads the newest applied migration from the bookkeeping
// table the drivers keep.
func schemaVersion(ctx context.Context, ec tasker.Config) (int, string, error) {
	const q = `SELECT version, name FROM %stasker_migrations ORDER BY version DESC LIMIT 1`
	var (
		version int
		name    string
	)
	raw := ec.DatabaseURL
	if rest, ok := strings.CutPrefix(raw, "sqlite://"); ok {
		path, _, _ := strings.Cut(rest, "?")
		path, err := url.PathUnescape(path)
		if err != nil {
			return 0, "", err
		}
		db, err := sql.Open("sqlite", "file:"+path+"?mode=ro")
		if err != nil {
			return 0, "", err
		}
		defer db.Close()
		err = db.QueryRowContext(ctx, fmt.Sprintf(q, "")).Scan(&version, &name)
		return version, name, err
	}
	conn, err := pgx.Connect(ctx, raw)
	if err != nil {
		return 0, "", err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	schema := pgx.Identifier{ec.PostgresSchema}.Sanitize() + "."
	err = conn.QueryRow(ctx, fmt.Sprintf(q, schema)).Scan(&version, &name)
	return version, name, err
}
