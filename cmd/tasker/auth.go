package main

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/tasker-go/tasker/internal/auth"
)

func newAuthCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "auth",
		Short: "Create API keys and signed tokens for a server with auth enabled",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(newAuthCreateKeyCmd(a), newAuthTokenCmd(a))
	return cmd
}

func newAuthCreateKeyCmd(a *app) *cobra.Command {
	var (
		name  string
		perms []string
	)
	cmd := &cobra.Command{
		Use:   "create-key --name NAME --permissions PERM[,PERM...]",
		Short: "Generate an API key and the config entry that accepts it",
		Long: `Create-key generates a random API key and prints it once, followed by the
[[auth.api_keys]] entry to add to the server's config file. The entry holds
only the key's SHA-256 hash, so the config file does not reveal the key and
the key cannot be shown again: store it where its user will find it.

Clients send the key in the X-API-Key header (tasker's client commands take
it with --api-key). Permissions are resource:action (tasks:create,
steps:read, ...), resource:* for every action on a resource, or * for all.`,
		Example: `  tasker auth create-key --name ci --permissions tasks:*,steps:read`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.createKey(name, perms)
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "`NAME` of the key, shown in audits (letters, digits, '.', '_', '-')")
	cmd.Flags().StringSliceVar(&perms, "permissions", nil, "comma-separated `PERMISSIONS` to grant ("+strings.Join(auth.Known(), ", ")+", resource:*, *)")
	_ = cmd.MarkFlagRequired("name")
	_ = cmd.MarkFlagRequired("permissions")
	return cmd
}

func (a *app) createKey(name string, perms []string) error {
	if err := auth.ValidateKeyName(name); err != nil {
		return fmt.Errorf("--name: %w", err)
	}
	if err := checkPermissions(perms); err != nil {
		return err
	}
	key, hash, err := auth.GenerateAPIKey()
	if err != nil {
		return err
	}
	quoted := make([]string, len(perms))
	for i, p := range perms {
		quoted[i] = strconv.Quote(p)
	}
	// Names and permissions were validated to plain ASCII without quotes
	// or backslashes, so Go quoting is also valid TOML.
	_, err = fmt.Fprintf(a.stdout, `API key %q (shown only this once; store it now):

%s

Add this entry to the server's config file to accept it:

[[auth.api_keys]]
name = %s
hash = %s
permissions = [%s]
`, name, key, strconv.Quote(name), strconv.Quote(hash), strings.Join(quoted, ", "))
	return err
}

// checkPermissions refuses an empty list and anything the server would
// refuse in its config.
func checkPermissions(perms []string) error {
	var errs []error
	for _, p := range perms {
		if err := auth.ValidatePermission(p); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("--permissions: %w", err)
	}
	return nil
}

type tokenOptions struct {
	privateKey string
	params     auth.TokenParams
}

func newAuthTokenCmd(a *app) *cobra.Command {
	var opts tokenOptions
	cmd := &cobra.Command{
		Use:   "token --private-key FILE --subject S --issuer I --audience A [--permissions PERM,...]",
		Short: "Sign a JWT bearer token with a private key",
		Long: `Token signs a JWT with a PEM private key (PKCS #8, PKCS #1 or SEC 1) and
prints it. An RSA key (2048 bits or more) signs with RS256, an ECDSA P-256
key with ES256. The server accepts the token when its auth.jwt section holds
the matching public key (or a JWKS serving it under --kid) and the same
issuer and audience.

This is meant for development and tests; in production tokens usually come
from an identity provider. Clients send the token as
"Authorization: Bearer TOKEN".`,
		Example: `  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out dev.key
  openssl pkey -in dev.key -pubout -out dev.pub
  tasker auth token --private-key dev.key --subject alice \
      --issuer https://dev.local --audience tasker --permissions tasks:*,steps:read`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.signToken(opts)
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.privateKey, "private-key", "", "PEM private key `FILE` to sign with")
	f.StringVar(&opts.params.Subject, "subject", "", "the token's subject (sub), who the server records as the actor")
	f.StringSliceVar(&opts.params.Permissions, "permissions", nil, "comma-separated `PERMISSIONS` to grant")
	f.StringVar(&opts.params.Issuer, "issuer", "", "issuer (iss); must equal the server's auth.jwt.issuer")
	f.StringVar(&opts.params.Audience, "audience", "", "audience (aud); must equal the server's auth.jwt.audience")
	f.DurationVar(&opts.params.TTL, "ttl", time.Hour, "how long the token is valid")
	f.StringVar(&opts.params.KeyID, "kid", "", "key id header, needed when the server reads keys from a JWKS")
	f.StringVar(&opts.params.PermissionsClaim, "permissions-claim", auth.DefaultPermissionsClaim, "claim that carries the permissions")
	for _, name := range []string{"private-key", "subject", "issuer", "audience"} {
		_ = cmd.MarkFlagRequired(name)
	}
	return cmd
}

func (a *app) signToken(opts tokenOptions) error {
	if err := checkPermissions(opts.params.Permissions); err != nil {
		return err
	}
	if opts.params.TTL <= 0 {
		return fmt.Errorf("--ttl must be positive, got %s", opts.params.TTL)
	}
	pemData, err := os.ReadFile(opts.privateKey)
	if err != nil {
		return fmt.Errorf("--private-key: %w", err)
	}
	key, alg, err := auth.ParsePrivateKeyPEM(pemData)
	if err != nil {
		return fmt.Errorf("--private-key %s: %w", opts.privateKey, err)
	}
	tok, err := auth.SignToken(key, alg, opts.params)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(a.stdout, tok)
	return err
}
