package auth

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/golang-jwt/jwt/v5"
)

// Anonymous is the subject of every request when auth is disabled.
const Anonymous = "anonymous"

// Authenticator checks API keys and JWT bearer tokens. It implements
// Authorizer and is safe for concurrent use.
type Authenticator struct {
	enabled bool
	keys    []apiKey

	jwtOn     bool
	parser    *jwt.Parser
	static    *verifyKey // set when a PEM public key is configured
	jwks      *keySet    // set when a JWKS URL is configured
	permClaim string
	algs      []string
}

type apiKey struct {
	name   string
	digest []byte
	perms  []string
}

var _ Authorizer = (*Authenticator)(nil)

// New validates cfg, applies its defaults and returns an Authenticator. It
// reads auth.jwt.public_key_file when set; a JWKS is fetched on first use.
func New(cfg Config) (*Authenticator, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	a := &Authenticator{enabled: cfg.Enabled}
	if !cfg.Enabled {
		return a, nil
	}
	for _, k := range cfg.APIKeys {
		digest, _ := parseKeyHash(k.Hash) // validate checked it
		a.keys = append(a.keys, apiKey{name: k.Name, digest: digest, perms: slices.Clone(k.Permissions)})
	}
	j := cfg.JWT
	if !j.keySourceSet() {
		return a, nil
	}
	a.jwtOn = true
	a.permClaim = j.PermissionsClaim
	a.algs = slices.Clone(j.Algorithms)
	a.parser = jwt.NewParser(
		jwt.WithValidMethods(a.algs),
		jwt.WithIssuer(j.Issuer),
		jwt.WithAudience(j.Audience),
		jwt.WithExpirationRequired(),
		jwt.WithLeeway(j.Leeway),
	)
	if j.JWKSURL != "" {
		a.jwks = &keySet{
			url:        j.JWKSURL,
			client:     j.HTTPClient,
			ttl:        j.JWKSCacheTTL,
			minRefresh: j.JWKSMinRefreshInterval,
			logger:     cfg.Logger,
		}
		return a, nil
	}
	key, err := j.loadStaticKey()
	if err != nil {
		return nil, err
	}
	alg, _ := algorithmFor(key) // loadStaticKey checked it
	a.static = &verifyKey{key: key, alg: alg}
	return a, nil
}

// Enabled reports whether requests must authenticate.
func (a *Authenticator) Enabled() bool { return a.enabled }

// Authorize authenticates r from its X-API-Key or "Authorization: Bearer"
// header and checks that the caller holds permission. Errors wrap
// ErrUnauthenticated or ErrForbidden and say what was wrong without
// repeating the credential; with ErrForbidden the caller's Principal is
// returned too. With auth disabled every request is allowed as
// Anonymous with every permission.
func (a *Authenticator) Authorize(r *http.Request, permission string) (*Principal, error) {
	if !a.enabled {
		return &Principal{Subject: Anonymous, Permissions: []string{"*"}}, nil
	}
	p, err := a.authenticate(r)
	if err != nil {
		return nil, err
	}
	if !p.Has(permission) {
		return p, fmt.Errorf("%w: %s lacks permission %s", ErrForbidden, p.Subject, permission)
	}
	return p, nil
}

func (a *Authenticator) authenticate(r *http.Request) (*Principal, error) {
	key := r.Header.Values("X-API-Key")
	authz := r.Header.Values("Authorization")
	switch {
	case len(key) == 0 && len(authz) == 0:
		return nil, unauthenticated("no credentials: send an X-API-Key header or an Authorization: Bearer token")
	case len(key) > 0 && len(authz) > 0:
		return nil, unauthenticated("both X-API-Key and Authorization headers are present; send one")
	case len(key) > 1 || len(authz) > 1:
		return nil, unauthenticated("credential header repeated")
	case len(key) == 1:
		return a.checkAPIKey(key[0])
	}
	scheme, token, _ := strings.Cut(authz[0], " ")
	if !strings.EqualFold(scheme, "Bearer") {
		return nil, unauthenticated("unsupported Authorization scheme (use Bearer)")
	}
	token = strings.TrimSpace(token)
	if token == "" {
		return nil, unauthenticated("empty bearer token")
	}
	if !a.jwtOn {
		return nil, unauthenticated("bearer tokens are not accepted by this server (no JWT key is configured)")
	}
	return a.checkToken(r, token)
}

// checkAPIKey compares the key's digest with every configured digest,
// without stopping at a match, so timing says nothing about which key
// (or how much of a digest) matched.
func (a *Authenticator) checkAPIKey(key string) (*Principal, error) {
	if key == "" {
		return nil, unauthenticated("empty API key")
	}
	sum := sha256.Sum256([]byte(key))
	var found *apiKey
	for i := range a.keys {
		if subtle.ConstantTimeCompare(sum[:], a.keys[i].digest) == 1 {
			found = &a.keys[i]
		}
	}
	if found == nil {
		return nil, unauthenticated("unknown API key")
	}
	return &Principal{Subject: found.name, Permissions: slices.Clone(found.perms)}, nil
}

func (a *Authenticator) checkToken(r *http.Request, raw string) (*Principal, error) {
	claims := jwt.MapClaims{}
	tok, err := a.parser.ParseWithClaims(raw, claims, func(t *jwt.Token) (any, error) {
		alg := t.Method.Alg()
		if a.static != nil {
			if a.static.alg != alg {
				return nil, errKeyAlgorithm
			}
			return a.static.key, nil
		}
		kid, _ := t.Header["kid"].(string)
		if kid == "" {
			return nil, errNoKID
		}
		k, err := a.jwks.key(r.Context(), kid)
		if err != nil {
			return nil, err
		}
		if k.alg != alg {
			return nil, errKeyAlgorithm
		}
		return k.key, nil
	})
	if err != nil {
		return nil, unauthenticated(a.tokenProblem(err, tok, claims))
	}
	sub, _ := claims["sub"].(string)
	if sub == "" {
		return nil, unauthenticated("token has no sub claim")
	}
	perms, err := claimPermissions(claims[a.permClaim])
	if err != nil {
		return nil, unauthenticated(fmt.Sprintf("token claim %q: %v", a.permClaim, err))
	}
	return &Principal{Subject: sub, Permissions: perms}, nil
}

var errNoKID = errors.New("token has no kid header, which is needed to pick a key from the JWKS")

// tokenProblem turns a parse error into a short reason. The order puts the
// most useful reason first when several apply.
func (a *Authenticator) tokenProblem(err error, tok *jwt.Token, claims jwt.MapClaims) string {
	switch {
	case tok != nil && tok.Method != nil && !slices.Contains(a.algs, tok.Method.Alg()):
		return "token algorithm not allowed (allowed: " + strings.Join(a.algs, ", ") + ")"
	case errors.Is(err, jwt.ErrTokenMalformed):
		return "malformed token"
	case errors.Is(err, errNoKID):
		return errNoKID.Error()
	case errors.Is(err, errUnknownKID):
		return errUnknownKID.Error()
	case errors.Is(err, errKeysMissing):
		return "signing keys unavailable (the JWKS could not be fetched)"
	case errors.Is(err, errKeyAlgorithm):
		return errKeyAlgorithm.Error()
	case errors.Is(err, jwt.ErrTokenUnverifiable) && !errors.Is(err, jwt.ErrInvalidType):
		// ParseUnverified reports an algorithm it has no implementation
		// for this way.
		return "token algorithm not allowed (allowed: " + strings.Join(a.algs, ", ") + ")"
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return "invalid token signature"
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		for _, c := range []string{"exp", "iss", "aud"} {
			if _, ok := claims[c]; !ok {
				return "token has no " + c + " claim"
			}
		}
		return "token is missing a required claim"
	case errors.Is(err, jwt.ErrTokenExpired):
		return "token expired"
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return "token not valid yet"
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return "issuer mismatch"
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return "audience mismatch"
	case errors.Is(err, jwt.ErrInvalidType):
		return "token has a claim of the wrong type"
	default:
		return "invalid token"
	}
}

// claimPermissions reads a permissions claim: a JSON array of strings or
// one space-separated string (the OAuth "scope" style). A missing claim
// grants nothing.
func claimPermissions(v any) ([]string, error) {
	switch v := v.(type) {
	case nil:
		return []string{}, nil
	case string:
		return strings.Fields(v), nil
	case []any:
		perms := make([]string, 0, len(v))
		for _, e := range v {
			s, ok := e.(string)
			if !ok {
				return nil, errors.New("not a list of strings")
			}
			perms = append(perms, s)
		}
		return perms, nil
	default:
		return nil, errors.New("not a list of strings or a space-separated string")
	}
}

func unauthenticated(reason string) error {
	return fmt.Errorf("%w: %s", ErrUnauthenticated, reason)
}
