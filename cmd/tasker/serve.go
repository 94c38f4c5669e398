package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/tasker-go/tasker"
	"github.com/tasker-go/tasker/examples"
	"github.com/tasker-go/tasker/store"
)

type serveOptions struct {
	databaseURL    string
	postgresSchema string
	roles          []string
	namespaces     []string
	concurrency    int
	stepLease      time.Duration
	pollInterval   time.Duration
	deploymentMode string
	drainTimeout   time.Duration
}

// serveEnv maps each serve flag to the environment variable that sets it
// when the flag is not given.
var serveEnv = map[string]string{
	"database-url":    "TASKER_DATABASE_URL",
	"postgres-schema": "TASKER_POSTGRES_SCHEMA",
	"roles":           "TASKER_ROLES",
	"namespaces":      "TASKER_NAMESPACES",
	"concurrency":     "TASKER_CONCURRENCY",
	"step-lease":      "TASKER_STEP_LEASE",
	"poll-interval":   "TASKER_POLL_INTERVAL",
	"deployment-mode": "TASKER_DEPLOYMENT_MODE",
	"drain-timeout":   "TASKER_DRAIN_TIMEOUT",
}

func newServeCmd(a *app) *cobra.Command {
	var opts serveOptions
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run an orchestrator and a worker for the bundled example workflows",
		Long: `Serve runs Tasker until it receives SIGINT or SIGTERM: by default both roles
(the orchestrator and a worker with the bundled example handlers) on the
SQLite file ./tasker.db.

Point several serve processes at one PostgreSQL database to run a cluster;
--roles picks what each process runs: "orchestrator" (processes results,
runs due retries, rescues steps whose worker died), "worker" (runs
handlers), or both.

Every flag can also be set by the environment variable named in its help;
a flag given on the command line wins.

On SIGINT or SIGTERM, serve stops claiming steps, lets the handlers in
flight finish within --drain-timeout, and exits 0. Steps still running past
the budget are left to their leases and run again elsewhere. A second
signal exits at once.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := flagsFromEnv(cmd.Flags()); err != nil {
				return err
			}
			return a.serve(cmd.Context(), opts)
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.databaseURL, "database-url", "", "database `URL`: sqlite://FILE or postgres://… (default sqlite://tasker.db)")
	f.StringVar(&opts.postgresSchema, "postgres-schema", "", "PostgreSQL `SCHEMA` holding Tasker's tables (default tasker)")
	f.StringSliceVar(&opts.roles, "roles", []string{string(tasker.RoleOrchestrator), string(tasker.RoleWorker)},
		"comma-separated `ROLES` to run: orchestrator, worker")
	f.StringSliceVar(&opts.namespaces, "namespaces", nil,
		"comma-separated `NAMESPACES` the worker claims (default: every namespace with a bundled handler)")
	f.IntVar(&opts.concurrency, "concurrency", 10, "how many step handlers run at once")
	f.DurationVar(&opts.stepLease, "step-lease", 30*time.Second, "how long a claimed step stays owned without a heartbeat")
	f.DurationVar(&opts.pollInterval, "poll-interval", 500*time.Millisecond, "how often to look for work without a wake-up")
	f.StringVar(&opts.deploymentMode, "deployment-mode", "", "how work is found on PostgreSQL: hybrid (default), polling_only or event_driven_only")
	f.DurationVar(&opts.drainTimeout, "drain-timeout", 30*time.Second, "how long in-flight handlers may run after SIGINT/SIGTERM")
	for name, env := range serveEnv {
		fl := f.Lookup(name)
		fl.Usage += " [$" + env + "]"
	}
	return cmd
}

// flagsFromEnv sets each flag that was not given on the command line from
// its environment variable, if that is set.
func flagsFromEnv(fs *pflag.FlagSet) error {
	var errs []error
	fs.VisitAll(func(fl *pflag.Flag) {
		env, ok := serveEnv[fl.Name]
		if !ok || fl.Changed {
			return
		}
		v, ok := os.LookupEnv(env)
		if !ok {
			return
		}
		if sv, isSlice := fl.Value.(pflag.SliceValue); isSlice {
			// Replace the default rather than append to it.
			var items []string
			for _, s := range strings.Split(v, ",") {
				if s = strings.TrimSpace(s); s != "" {
					items = append(items, s)
				}
			}
			if err := sv.Replace(items); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: %w", env, v, err))
			}
			return
		}
		if err := fl.Value.Set(v); err != nil {
			errs = append(errs, fmt.Errorf("%s=%q: %w", env, v, err))
		}
	})
	return errors.Join(errs...)
}

// serve runs the engine until ctx ends, then drains it.
func (a *app) serve(ctx context.Context, opts serveOptions) error {
	if opts.drainTimeout <= 0 {
		return fmt.Errorf("--drain-timeout must be positive, got %s", opts.drainTimeout)
	}
	level := slog.LevelInfo
	if a.verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(a.stderr, &slog.HandlerOptions{Level: level}))
	roles := make([]tasker.Role, 0, len(opts.roles))
	for _, r := range opts.roles {
		roles = append(roles, tasker.Role(strings.TrimSpace(r)))
	}
	dbShown := redactURL(opts.databaseURL)
	eng, err := tasker.Open(ctx, tasker.Config{
		DatabaseURL: opts.databaseURL, PostgresSchema: opts.postgresSchema, Logger: log,
		Roles: roles, Namespaces: opts.namespaces, Concurrency: opts.concurrency,
		StepLease: opts.stepLease, PollInterval: opts.pollInterval, DeploymentMode: tasker.DeploymentMode(opts.deploymentMode),
	})
	if err != nil {
		if errors.Is(err, store.ErrUnavailable) {
			return fmt.Errorf("cannot reach the database at %s (%s): %w", dbAddress(opts.databaseURL), dbShown, err)
		}
		return fmt.Errorf("open %s: %w", dbShown, err)
	}
	defer eng.Close()
	if err := examples.Register(ctx, eng); err != nil {
		return err
	}
	// The engine's services run until Stop, not until the signal.
	if err := eng.Start(context.WithoutCancel(ctx)); err != nil {
		return err
	}
	log.Info("tasker serve started", "database", dbShown, "roles", opts.roles,
		"concurrency", opts.concurrency, "pid", os.Getpid())
	<-ctx.Done()
	// A second signal ends the process at once.
	signal.Reset(os.Interrupt, syscall.SIGTERM)
	log.Info("stopping: no new claims, waiting for handlers in flight", "drain_timeout", opts.drainTimeout)
	stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), opts.drainTimeout)
	defer cancel()
	if err := eng.Stop(stopCtx); err != nil {
		// Steps still running are released through their leases and run
		// again elsewhere: nothing is lost, so this is not a failure.
		log.Warn("drain did not finish within the budget; unfinished steps will be retried after their leases expire",
			"error", err)
	}
	if err := eng.Close(); err != nil {
		return fmt.Errorf("close: %w", err)
	}
	log.Info("tasker serve stopped")
	return nil
}

// redactURL returns a database URL fit for logs: any password is replaced.
func redactURL(raw string) string {
	if raw == "" {
		return "sqlite://tasker.db"
	}
	u, err := url.Parse(raw)
	if err != nil {
		// Unparseable: show only the scheme, since the rest may hold a
		// password.
		if i := strings.Index(raw, "://"); i >= 0 {
			return raw[:i] + "://(unparseable URL)"
		}
		return "(unparseable URL)"
	}
	return u.Redacted()
}

// dbAddress is the host:port a PostgreSQL URL points at.
func dbAddress(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Hostname() == "" {
		return "the default host (localhost:5432)"
	}
	port := u.Port()
	if port == "" {
		port = "5432"
	}
	return net.JoinHostPort(u.Hostname(), port)
}
