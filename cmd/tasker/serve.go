package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
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
	"github.com/tasker-go/tasker/internal/api"
	"github.com/tasker-go/tasker/internal/auth"
	"github.com/tasker-go/tasker/internal/config"
	"github.com/tasker-go/tasker/store"
)

type serveOptions struct {
	configFile string
}

// serveFlags maps each serve flag to the configuration key it sets. The
// key's TASKER_<SECTION>_<KEY> variable, and the older variable the flag
// used to name (TASKER_DATABASE_URL…), set it when the flag is not given.
var serveFlags = map[string]string{
	"addr":            "api.addr",
	"templates":       "api.templates",
	"database-url":    "store.database_url",
	"postgres-schema": "store.postgres_schema",
	"roles":           "worker.roles",
	"namespaces":      "worker.namespaces",
	"concurrency":     "worker.max_concurrent_handlers",
	"step-lease":      "orchestration.step_lease",
	"poll-interval":   "orchestration.poll_interval",
	"deployment-mode": "worker.deployment_mode",
	"drain-timeout":   "worker.drain_timeout",
}

func newServeCmd(a *app) *cobra.Command {
	var opts serveOptions
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the HTTP API, an orchestrator and a worker for the bundled example workflows",
		Long: `Serve runs Tasker until it receives SIGINT or SIGTERM: by default the HTTP
API on 127.0.0.1:8080 and both roles (the orchestrator and a worker with the
bundled example handlers) on the SQLite file ./tasker.db.

Point several serve processes at one PostgreSQL database to run a cluster;
--roles picks what each process runs: "orchestrator" (processes results,
runs due retries, rescues steps whose worker died), "worker" (runs
handlers), or both.

Settings come from the configuration file (--config or $TASKER_CONFIG; see
"tasker config example"), then the TASKER_* environment variables, then
the flags, each overriding the one before. Every flag names its variable in
its help.

On SIGINT or SIGTERM, serve stops accepting HTTP requests, stops claiming
steps, lets the handlers in flight finish within --drain-timeout, and exits
0. Steps still running past the budget are left to their leases and run
again elsewhere. A second signal exits at once.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd, opts.configFile, serveFlags)
			if err != nil {
				return err
			}
			return a.serve(cmd.Context(), cfg)
		},
	}
	d := config.Default()
	f := cmd.Flags()
	f.StringVar(&opts.configFile, "config", "", "configuration `FILE` [$TASKER_CONFIG]")
	f.String("addr", d.API.Addr, "`HOST:PORT` the HTTP API listens on")
	f.StringArray("templates", nil, "register every task template under `DIR` at start (repeatable)")
	f.String("database-url", d.Store.DatabaseURL, "database `URL`: sqlite://FILE or postgres://…")
	f.String("postgres-schema", d.Store.PostgresSchema, "PostgreSQL `SCHEMA` holding Tasker's tables")
	f.StringSlice("roles", d.Worker.Roles, "comma-separated `ROLES` to run: orchestrator, worker")
	f.StringSlice("namespaces", nil,
		"comma-separated `NAMESPACES` the worker claims (default: every namespace with a bundled handler)")
	f.Int("concurrency", d.Worker.MaxConcurrentHandlers, "how many step handlers run at once")
	f.Duration("step-lease", d.Orchestration.StepLease, "how long a claimed step stays owned without a heartbeat")
	f.Duration("poll-interval", d.Orchestration.PollInterval, "how often to look for work without a wake-up")
	f.String("deployment-mode", d.Worker.DeploymentMode, "how work is found on PostgreSQL: hybrid, polling_only or event_driven_only")
	f.Duration("drain-timeout", d.Worker.DrainTimeout, "how long in-flight handlers may run after SIGINT/SIGTERM")
	describeEnv(f, serveFlags)
	return cmd
}

// describeEnv appends to each flag's help the variables that set its key.
func describeEnv(fs *pflag.FlagSet, flags map[string]string) {
	for name, key := range flags {
		fl := fs.Lookup(name)
		fl.Usage += " [$" + strings.Join(config.EnvNames(key), ", $") + "]"
	}
}

// loadConfig merges the defaults, the configuration file (flag, or
// $TASKER_CONFIG), the environment and the flags given on the command line
// that flags maps to configuration keys.
func loadConfig(cmd *cobra.Command, file string, flags map[string]string) (*config.Config, error) {
	var overrides []config.Override
	cmd.Flags().Visit(func(fl *pflag.Flag) {
		key, ok := flags[fl.Name]
		if !ok {
			return
		}
		v := fl.Value.String()
		if sv, isSlice := fl.Value.(pflag.SliceValue); isSlice {
			v = strings.Join(sv.GetSlice(), ",")
		}
		overrides = append(overrides, config.Override{Key: key, Value: v, Source: "--" + fl.Name})
	})
	return config.Load(config.Options{File: configFile(file), Overrides: overrides})
}

// serve runs the engine until ctx ends, then drains it.
func (a *app) serve(ctx context.Context, cfg *config.Config) error {
	if a.verbose {
		cfg.Logging.Level = "debug"
	}
	log := cfg.Logger(a.stderr)
	ec := cfg.Engine()
	ec.Logger = log
	dbShown := redactURL(ec.DatabaseURL)
	eng, err := tasker.Open(ctx, ec)
	if err != nil {
		if errors.Is(err, store.ErrUnavailable) {
			return fmt.Errorf("cannot reach the database at %s (%s): %w", dbAddress(ec.DatabaseURL), dbShown, err)
		}
		return fmt.Errorf("open %s: %w", dbShown, err)
	}
	defer eng.Close()
	if err := examples.Register(ctx, eng); err != nil {
		return err
	}
	for _, dir := range cfg.API.Templates {
		if err := eng.RegisterTemplatesDir(ctx, dir); err != nil {
			return fmt.Errorf("register templates under %s: %w", dir, err)
		}
	}
	handler, err := apiHandler(eng, cfg, log)
	if err != nil {
		return err
	}
	// Listen before starting the engine, so that an address in use fails
	// the start rather than a running process.
	ln, err := net.Listen("tcp", cfg.API.Addr)
	if err != nil {
		return fmt.Errorf("api.addr (%s): %w", cfg.Source("api.addr"), err)
	}
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	// The engine's services run until Stop, not until the signal.
	if err := eng.Start(context.WithoutCancel(ctx)); err != nil {
		ln.Close()
		return err
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	log.Info("tasker serve started", "addr", ln.Addr().String(), "database", dbShown, "roles", cfg.Worker.Roles,
		"concurrency", cfg.Worker.MaxConcurrentHandlers, "pid", os.Getpid())
	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-served:
		log.Error("the HTTP server failed; stopping", "error", serveErr)
	}
	// A second signal ends the process at once.
	signal.Reset(os.Interrupt, syscall.SIGTERM)
	drain := cfg.Worker.DrainTimeout
	log.Info("stopping: no new requests or claims, waiting for requests and handlers in flight", "drain_timeout", drain)
	stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), drain)
	defer cancel()
	// Requests in flight and handlers in flight finish side by side, within
	// one budget.
	httpDone := make(chan error, 1)
	go func() { httpDone <- srv.Shutdown(stopCtx) }()
	if err := eng.Stop(stopCtx); err != nil {
		// Steps still running are released through their leases and run
		// again elsewhere: nothing is lost, so this is not a failure.
		log.Warn("drain did not finish within the budget; unfinished steps will be retried after their leases expire",
			"error", err)
	}
	if err := <-httpDone; err != nil {
		log.Warn("HTTP requests still in flight after the drain budget were cut off", "error", err)
		srv.Close()
	}
	if err := eng.Close(); err != nil {
		return fmt.Errorf("close: %w", err)
	}
	if serveErr != nil {
		return fmt.Errorf("HTTP server: %w", serveErr)
	}
	log.Info("tasker serve stopped")
	return nil
}

// apiHandler builds the HTTP API over eng as cfg says.
func apiHandler(eng *tasker.Engine, cfg *config.Config, log *slog.Logger) (http.Handler, error) {
	opts := api.Options{
		PublicHealth: &cfg.API.PublicHealth, PublicMetrics: &cfg.API.PublicMetrics,
		MaxBodyBytes: cfg.API.MaxBodyBytes, MaxQueueDepth: cfg.API.MaxQueueDepth, Logger: log,
	}
	if cfg.Auth.Enabled {
		ac := cfg.Auth
		ac.Logger = log
		authenticator, err := auth.New(ac)
		if err != nil {
			return nil, err
		}
		opts.Auth = authenticator
	}
	return api.New(eng, opts), nil
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
