package auth

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Defaults applied by New to zero-valued fields.
const (
	DefaultPermissionsClaim       = "permissions"
	DefaultLeeway                 = 30 * time.Second
	DefaultJWKSCacheTTL           = time.Hour
	DefaultJWKSMinRefreshInterval = 30 * time.Second
)

// Signing algorithms a JWT may use. Symmetric (HS*) algorithms and "none"
// are never accepted: a server holding a shared secret could mint tokens.
const (
	RS256 = "RS256"
	ES256 = "ES256"
)

// Config configures authentication. The zero value disables it, and then
// every request is allowed as the principal "anonymous".
type Config struct {
	// Enabled turns authentication on. Default false. When true, at least
	// one API key or a JWT key source must be configured.
	Enabled bool `toml:"enabled"`
	// APIKeys are the keys accepted in the X-API-Key header. Default none.
	APIKeys []APIKeyConfig `toml:"api_keys"`
	// JWT configures bearer tokens. Tokens are accepted only when a key
	// source (PublicKeyPEM, PublicKeyFile or JWKSURL) is set.
	JWT JWTConfig `toml:"jwt"`
	// Logger receives JWKS refresh failures; default slog.Default().
	Logger *slog.Logger `toml:"-"`
}

// APIKeyConfig is one accepted API key. The key itself is never stored:
// `tasker auth create-key` prints a key and the entry to paste here.
type APIKeyConfig struct {
	// Name identifies the key in audits and logs; required, unique,
	// letters, digits, '.', '_' and '-' only.
	Name string `toml:"name"`
	// Hash is "sha256:" followed by the hex SHA-256 of the key; required.
	Hash string `toml:"hash"`
	// Permissions granted to the key; each a known permission,
	// "resource:*" or "*". Default none (the key authenticates but may do
	// nothing).
	Permissions []string `toml:"permissions"`
}

// JWTConfig configures bearer token verification.
type JWTConfig struct {
	// Algorithms a token may be signed with: "RS256", "ES256" or both.
	// Default both.
	Algorithms []string `toml:"algorithms"`
	// PublicKeyPEM is a PEM public key (or certificate) verifying every
	// token. Set at most one of PublicKeyPEM, PublicKeyFile and JWKSURL.
	PublicKeyPEM string `toml:"public_key_pem"`
	// PublicKeyFile is a file holding a PEM public key (or certificate),
	// read once by New.
	PublicKeyFile string `toml:"public_key_file"`
	// JWKSURL is an https URL (http only for a loopback host) serving a
	// JSON Web Key Set; a token's "kid" header picks its key.
	JWKSURL string `toml:"jwks_url"`
	// JWKSCacheTTL is how long a fetched key set is used before it is
	// fetched again. Default 1h.
	JWKSCacheTTL time.Duration `toml:"jwks_cache_ttl"`
	// JWKSMinRefreshInterval bounds how often a token with an unknown
	// "kid" makes the key set be fetched again. Default 30s.
	JWKSMinRefreshInterval time.Duration `toml:"jwks_min_refresh_interval"`
	// Issuer must equal a token's "iss"; required when tokens are
	// accepted.
	Issuer string `toml:"issuer"`
	// Audience must be among a token's "aud"; required when tokens are
	// accepted.
	Audience string `toml:"audience"`
	// PermissionsClaim names the claim holding the token's permissions,
	// as a JSON array of strings or one space-separated string. Default
	// "permissions".
	PermissionsClaim string `toml:"permissions_claim"`
	// Leeway tolerates clock skew when checking "exp" and "nbf". Default
	// 30s; at most 5m.
	Leeway time.Duration `toml:"leeway"`
	// HTTPClient fetches the JWKS; default a client with a 10s timeout.
	// A fetch never takes longer than 10s either way.
	HTTPClient *http.Client `toml:"-"`
}

// keySourceSet reports whether tokens are accepted at all.
func (c *JWTConfig) keySourceSet() bool {
	return c.PublicKeyPEM != "" || c.PublicKeyFile != "" || c.JWKSURL != ""
}

var keyNameRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// ValidateKeyName reports whether name can name an API key.
func ValidateKeyName(name string) error {
	if !keyNameRE.MatchString(name) {
		return fmt.Errorf("%q must be 1 to 64 letters, digits, '.', '_' or '-'", name)
	}
	return nil
}

// withDefaults returns a copy of c with defaults filled in.
func (c Config) withDefaults() Config {
	j := &c.JWT
	if len(j.Algorithms) == 0 {
		j.Algorithms = []string{RS256, ES256}
	}
	if j.JWKSCacheTTL == 0 {
		j.JWKSCacheTTL = DefaultJWKSCacheTTL
	}
	if j.JWKSMinRefreshInterval == 0 {
		j.JWKSMinRefreshInterval = DefaultJWKSMinRefreshInterval
	}
	if j.PermissionsClaim == "" {
		j.PermissionsClaim = DefaultPermissionsClaim
	}
	if j.Leeway == 0 {
		j.Leeway = DefaultLeeway
	}
	if j.HTTPClient == nil {
		j.HTTPClient = &http.Client{
			Timeout: jwksFetchTimeout,
			// A redirect must not downgrade the fetch to plain http.
			CheckRedirect: func(req *http.Request, via []*http.Request) error {
				if len(via) >= 5 {
					return errors.New("too many redirects")
				}
				return checkJWKSURL(req.URL.String())
			},
		}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// validate checks a config with defaults applied; every error names the
// offending key as it is written in the config file.
func (c *Config) validate() error {
	if !c.Enabled {
		return nil
	}
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("auth.%s: %s", field, fmt.Sprintf(format, args...)))
	}
	if len(c.APIKeys) == 0 && !c.JWT.keySourceSet() {
		bad("enabled", "auth is enabled but no api_keys and no jwt key source (public_key_pem, public_key_file, jwks_url) are configured, so no request could succeed")
	}
	names := map[string]bool{}
	hashes := map[string]bool{}
	for i, k := range c.APIKeys {
		field := fmt.Sprintf("api_keys[%d]", i)
		if err := ValidateKeyName(k.Name); err != nil {
			bad(field+".name", "%v", err)
		} else if names[k.Name] {
			bad(field+".name", "%q is used by another key", k.Name)
		}
		names[k.Name] = true
		if _, err := parseKeyHash(k.Hash); err != nil {
			bad(field+".hash", "%v", err)
		} else if hashes[k.Hash] {
			bad(field+".hash", "the same hash is configured for another key")
		}
		hashes[k.Hash] = true
		for _, p := range k.Permissions {
			if err := ValidatePermission(p); err != nil {
				bad(field+".permissions", "%v", err)
			}
		}
	}

	j := &c.JWT
	if !j.keySourceSet() {
		return errors.Join(errs...)
	}
	sources := 0
	for _, s := range []string{j.PublicKeyPEM, j.PublicKeyFile, j.JWKSURL} {
		if s != "" {
			sources++
		}
	}
	if sources > 1 {
		bad("jwt", "set only one of public_key_pem, public_key_file and jwks_url")
	}
	for _, alg := range j.Algorithms {
		if alg != RS256 && alg != ES256 {
			bad("jwt.algorithms", "%q is not supported (use %s or %s)", alg, RS256, ES256)
		}
	}
	if j.JWKSURL != "" {
		if err := checkJWKSURL(j.JWKSURL); err != nil {
			bad("jwt.jwks_url", "%v", err)
		}
	}
	if j.JWKSCacheTTL < 0 {
		bad("jwt.jwks_cache_ttl", "must not be negative")
	}
	if j.JWKSMinRefreshInterval < 0 {
		bad("jwt.jwks_min_refresh_interval", "must not be negative")
	}
	if j.Issuer == "" {
		bad("jwt.issuer", "required when tokens are accepted")
	}
	if j.Audience == "" {
		bad("jwt.audience", "required when tokens are accepted")
	}
	if strings.TrimSpace(j.PermissionsClaim) != j.PermissionsClaim {
		bad("jwt.permissions_claim", "must not have surrounding spaces")
	}
	if j.Leeway < 0 || j.Leeway > 5*time.Minute {
		bad("jwt.leeway", "must be between 0 and 5m, got %s", j.Leeway)
	}
	return errors.Join(errs...)
}

// checkJWKSURL insists on https so keys cannot be swapped in transit;
// plain http is allowed only to the local machine.
func checkJWKSURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		// url.Parse's error repeats the URL, which may hold a password.
		return errors.New("not a valid URL")
	}
	switch u.Scheme {
	case "https":
	case "http":
		host := u.Hostname()
		ip := net.ParseIP(host)
		if host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return errors.New("must use https (http is allowed only for localhost)")
		}
	default:
		return fmt.Errorf("scheme %q is not https", u.Scheme)
	}
	if u.Host == "" {
		return errors.New("has no host")
	}
	return nil
}

// loadStaticKey reads the configured PEM public key, if any.
func (c *JWTConfig) loadStaticKey() (any, error) {
	switch {
	case c.PublicKeyPEM != "":
		key, err := ParsePublicKeyPEM([]byte(c.PublicKeyPEM))
		if err != nil {
			return nil, fmt.Errorf("auth.jwt.public_key_pem: %w", err)
		}
		return key, c.checkKeyUsable(key, "public_key_pem")
	case c.PublicKeyFile != "":
		data, err := os.ReadFile(c.PublicKeyFile)
		if err != nil {
			return nil, fmt.Errorf("auth.jwt.public_key_file: %w", err)
		}
		key, err := ParsePublicKeyPEM(data)
		if err != nil {
			return nil, fmt.Errorf("auth.jwt.public_key_file: %s: %w", c.PublicKeyFile, err)
		}
		return key, c.checkKeyUsable(key, "public_key_file")
	}
	return nil, nil
}

// checkKeyUsable refuses a static key no allowed algorithm could verify
// with, which would otherwise reject every token without saying why.
func (c *JWTConfig) checkKeyUsable(key any, field string) error {
	alg, err := algorithmFor(key)
	if err != nil {
		return fmt.Errorf("auth.jwt.%s: %w", field, err)
	}
	if !slices.Contains(c.Algorithms, alg) {
		return fmt.Errorf("auth.jwt.%s: the key is for %s, which auth.jwt.algorithms does not allow", field, alg)
	}
	return nil
}
