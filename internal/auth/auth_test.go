package auth_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/tasker-go/tasker/internal/auth"
)

const (
	testIssuer   = "https://idp.example.com/"
	testAudience = "tasker"
)

// Keys are generated once per test binary: RSA generation is slow under
// -race and nothing here depends on a key being fresh.
var (
	keysOnce          sync.Once
	rsaKey, rsaKey2   *rsa.PrivateKey
	ecKey, ecKey2     *ecdsa.PrivateKey
	ecP384            *ecdsa.PrivateKey
	rsaPubPEM, ecPubP string
)

func testKeys(t testing.TB) {
	t.Helper()
	keysOnce.Do(func() {
		var err error
		must := func(e error) {
			if e != nil && err == nil {
				err = e
			}
		}
		var e error
		rsaKey, e = rsa.GenerateKey(rand.Reader, 2048)
		must(e)
		rsaKey2, e = rsa.GenerateKey(rand.Reader, 2048)
		must(e)
		ecKey, e = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		must(e)
		ecKey2, e = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		must(e)
		ecP384, e = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
		must(e)
		if err != nil {
			panic(err)
		}
		rsaPubPEM = publicPEM(rsaKey.Public())
		ecPubP = publicPEM(ecKey.Public())
	})
}

func publicPEM(pub crypto.PublicKey) string {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		panic(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

func privatePEM(t *testing.T, key crypto.Signer) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// sign mints a token with the given claims, signed by key with alg.
func sign(t *testing.T, method jwt.SigningMethod, key any, kid string, claims jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(method, claims)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// goodClaims are valid for the test issuer and audience for an hour.
func goodClaims(perms any) jwt.MapClaims {
	now := time.Now()
	c := jwt.MapClaims{
		"sub": "svc-orders",
		"iss": testIssuer,
		"aud": testAudience,
		"iat": now.Unix(),
		"exp": now.Add(time.Hour).Unix(),
	}
	if perms != nil {
		c["permissions"] = perms
	}
	return c
}

func with(c jwt.MapClaims, changes map[string]any) jwt.MapClaims {
	out := jwt.MapClaims{}
	for k, v := range c {
		out[k] = v
	}
	for k, v := range changes {
		if v == nil {
			delete(out, k)
		} else {
			out[k] = v
		}
	}
	return out
}

func bearer(tok string) http.Header {
	return http.Header{"Authorization": {"Bearer " + tok}}
}

func request(h http.Header) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "/v1/tasks", nil)
	for k, vs := range h {
		for _, v := range vs {
			r.Header.Add(k, v)
		}
	}
	return r
}

func newAuth(t *testing.T, cfg auth.Config) *auth.Authenticator {
	t.Helper()
	a, err := auth.New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return a
}

// check asserts Authorize's outcome: wantErr nil for success, otherwise
// the sentinel and a phrase the message must contain.
func check(t *testing.T, a *auth.Authenticator, h http.Header, perm string, wantErr error, wantMsg, wantSub string) {
	t.Helper()
	p, err := a.Authorize(request(h), perm)
	switch {
	case wantErr == nil && err != nil:
		t.Fatalf("Authorize(%s) = %v, want success", perm, err)
	case wantErr == nil:
		if p == nil || p.Subject != wantSub {
			t.Fatalf("principal = %+v, want subject %q", p, wantSub)
		}
	case !errors.Is(err, wantErr):
		t.Fatalf("Authorize(%s) = %v, want %v", perm, err, wantErr)
	case !strings.Contains(err.Error(), wantMsg):
		t.Fatalf("Authorize(%s) = %q, want it to mention %q", perm, err, wantMsg)
	}
}

func TestDisabledAllowsAnonymous(t *testing.T) {
	t.Parallel()
	a := newAuth(t, auth.Config{})
	if a.Enabled() {
		t.Fatal("zero config enabled auth")
	}
	p, err := a.Authorize(request(nil), auth.DLQUpdate)
	if err != nil || p.Subject != auth.Anonymous || !p.Has(auth.TasksCreate) {
		t.Fatalf("Authorize = %+v, %v; want anonymous with every permission", p, err)
	}
}

func TestAPIKeys(t *testing.T) {
	t.Parallel()
	opsKey, opsHash, err := auth.GenerateAPIKey()
	if err != nil {
		t.Fatal(err)
	}
	roKey, roHash, _ := auth.GenerateAPIKey()
	adminKey, adminHash, _ := auth.GenerateAPIKey()
	unknownKey, _, _ := auth.GenerateAPIKey()
	a := newAuth(t, auth.Config{
		Enabled: true,
		APIKeys: []auth.APIKeyConfig{
			{Name: "ops", Hash: opsHash, Permissions: []string{"tasks:*", auth.StepsRead}},
			{Name: "readonly", Hash: roHash, Permissions: []string{auth.TasksRead}},
			{Name: "admin", Hash: adminHash, Permissions: []string{"*"}},
		},
	})
	key := func(k string) http.Header { return http.Header{"X-Api-Key": {k}} }
	tests := []struct {
		name    string
		h       http.Header
		perm    string
		wantErr error
		wantMsg string
		wantSub string
	}{
		{"missing credentials", nil, auth.TasksRead, auth.ErrUnauthenticated, "no credentials", ""},
		{"unknown key", key(unknownKey), auth.TasksRead, auth.ErrUnauthenticated, "unknown API key", ""},
		{"empty key", key(""), auth.TasksRead, auth.ErrUnauthenticated, "empty API key", ""},
		{"hash sent as key", key(opsHash), auth.TasksRead, auth.ErrUnauthenticated, "unknown API key", ""},
		{"exact permission", key(roKey), auth.TasksRead, nil, "", "readonly"},
		{"missing permission", key(roKey), auth.TasksCreate, auth.ErrForbidden, "readonly lacks permission tasks:create", ""},
		{"resource wildcard", key(opsKey), auth.TasksCancel, nil, "", "ops"},
		{"resource wildcard, other resource", key(opsKey), auth.DLQRead, auth.ErrForbidden, "lacks permission dlq:read", ""},
		{"exact next to wildcard", key(opsKey), auth.StepsRead, nil, "", "ops"},
		{"star", key(adminKey), auth.SystemRead, nil, "", "admin"},
		{"both headers", http.Header{"X-Api-Key": {opsKey}, "Authorization": {"Bearer x"}}, auth.TasksRead, auth.ErrUnauthenticated, "both", ""},
		{"repeated header", http.Header{"X-Api-Key": {opsKey, roKey}}, auth.TasksRead, auth.ErrUnauthenticated, "repeated", ""},
		{"bearer without JWT config", bearer("a.b.c"), auth.TasksRead, auth.ErrUnauthenticated, "not accepted", ""},
		{"basic auth", http.Header{"Authorization": {"Basic b3BzOnNlY3JldA=="}}, auth.TasksRead, auth.ErrUnauthenticated, "unsupported Authorization scheme", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			check(t, a, tt.h, tt.perm, tt.wantErr, tt.wantMsg, tt.wantSub)
		})
	}
}

// TestErrorsHideSecrets checks that no failure message repeats the
// credential it was given.
func TestErrorsHideSecrets(t *testing.T) {
	t.Parallel()
	testKeys(t)
	k, h, _ := auth.GenerateAPIKey()
	other, _, _ := auth.GenerateAPIKey()
	a := newAuth(t, auth.Config{Enabled: true,
		APIKeys: []auth.APIKeyConfig{{Name: "k", Hash: h}},
		JWT:     auth.JWTConfig{PublicKeyPEM: rsaPubPEM, Issuer: testIssuer, Audience: testAudience},
	})
	expired := sign(t, jwt.SigningMethodRS256, rsaKey, "", with(goodClaims(nil), map[string]any{"exp": time.Now().Add(-time.Hour).Unix()}))
	for _, secret := range []string{k, other, expired} {
		hdr := http.Header{"X-Api-Key": {secret}}
		if strings.Count(secret, ".") == 2 {
			hdr = bearer(secret)
		}
		_, err := a.Authorize(request(hdr), auth.TasksCreate)
		if err == nil {
			t.Fatal("Authorize succeeded")
		}
		if strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), strings.TrimPrefix(secret, auth.APIKeyPrefix)[:8]) {
			t.Fatalf("error %q repeats the credential", err)
		}
	}
}

func TestJWTStaticKey(t *testing.T) {
	t.Parallel()
	testKeys(t)
	dir := t.TempDir()
	ecFile := filepath.Join(dir, "ec.pem")
	if err := os.WriteFile(ecFile, []byte(ecPubP), 0o600); err != nil {
		t.Fatal(err)
	}
	rsaAuth := newAuth(t, auth.Config{Enabled: true, JWT: auth.JWTConfig{
		PublicKeyPEM: rsaPubPEM, Issuer: testIssuer, Audience: testAudience,
	}})
	ecAuth := newAuth(t, auth.Config{Enabled: true, JWT: auth.JWTConfig{
		PublicKeyFile: ecFile, Issuer: testIssuer, Audience: testAudience, Algorithms: []string{auth.ES256},
		PermissionsClaim: "scope", Leeway: time.Second,
	}})

	perms := []any{"tasks:*", "steps:read"}
	good := goodClaims(perms)
	now := time.Now()
	rs := func(c jwt.MapClaims) string { return sign(t, jwt.SigningMethodRS256, rsaKey, "", c) }
	es := func(c jwt.MapClaims) string { return sign(t, jwt.SigningMethodES256, ecKey, "", c) }

	// A token whose payload was swapped after signing.
	tampered := func() string {
		parts := strings.Split(rs(goodClaims([]any{"tasks:read"})), ".")
		body, _ := json.Marshal(goodClaims([]any{"*"}))
		parts[1] = base64.RawURLEncoding.EncodeToString(body)
		return strings.Join(parts, ".")
	}()
	// The classic confusion attack: HMAC keyed with the public key.
	hsWithPublicKey := sign(t, jwt.SigningMethodHS256, []byte(rsaPubPEM), "", good)
	none := sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, "", good)

	tests := []struct {
		name    string
		a       *auth.Authenticator
		token   string
		perm    string
		wantErr error
		wantMsg string
	}{
		{"valid RS256", rsaAuth, rs(good), auth.TasksCreate, nil, ""},
		{"valid RS256 exact permission", rsaAuth, rs(good), auth.StepsRead, nil, ""},
		{"valid RS256 without permission", rsaAuth, rs(good), auth.StepsResolve, auth.ErrForbidden, "lacks permission steps:resolve"},
		{"no permissions claim", rsaAuth, rs(goodClaims(nil)), auth.TasksRead, auth.ErrForbidden, "lacks permission"},
		{"permissions as space-separated string", rsaAuth, rs(goodClaims("tasks:read dlq:*")), auth.DLQUpdate, nil, ""},
		{"permissions of the wrong type", rsaAuth, rs(goodClaims(42)), auth.TasksRead, auth.ErrUnauthenticated, `claim "permissions"`},
		{"permissions list with a number", rsaAuth, rs(goodClaims([]any{"tasks:read", 1})), auth.TasksRead, auth.ErrUnauthenticated, "not a list of strings"},
		{"expired", rsaAuth, rs(with(good, map[string]any{"exp": now.Add(-time.Hour).Unix()})), auth.TasksRead, auth.ErrUnauthenticated, "token expired"},
		{"expired within leeway", rsaAuth, rs(with(good, map[string]any{"exp": now.Add(-10 * time.Second).Unix()})), auth.TasksRead, nil, ""},
		{"not yet valid", rsaAuth, rs(with(good, map[string]any{"nbf": now.Add(time.Hour).Unix()})), auth.TasksRead, auth.ErrUnauthenticated, "not valid yet"},
		{"no exp", rsaAuth, rs(with(good, map[string]any{"exp": nil})), auth.TasksRead, auth.ErrUnauthenticated, "no exp claim"},
		{"wrong issuer", rsaAuth, rs(with(good, map[string]any{"iss": "https://evil.example.com/"})), auth.TasksRead, auth.ErrUnauthenticated, "issuer mismatch"},
		{"no issuer", rsaAuth, rs(with(good, map[string]any{"iss": nil})), auth.TasksRead, auth.ErrUnauthenticated, "no iss claim"},
		{"wrong audience", rsaAuth, rs(with(good, map[string]any{"aud": "someone-else"})), auth.TasksRead, auth.ErrUnauthenticated, "audience mismatch"},
		{"audience among several", rsaAuth, rs(with(good, map[string]any{"aud": []string{"other", testAudience}})), auth.TasksRead, nil, ""},
		{"no subject", rsaAuth, rs(with(good, map[string]any{"sub": nil})), auth.TasksRead, auth.ErrUnauthenticated, "no sub claim"},
		{"tampered payload", rsaAuth, tampered, auth.TasksRead, auth.ErrUnauthenticated, "invalid token signature"},
		{"signed by another key", rsaAuth, sign(t, jwt.SigningMethodRS256, rsaKey2, "", good), auth.TasksRead, auth.ErrUnauthenticated, "invalid token signature"},
		{"HS256 keyed with the public key", rsaAuth, hsWithPublicKey, auth.TasksRead, auth.ErrUnauthenticated, "algorithm not allowed"},
		{"alg none", rsaAuth, none, auth.TasksRead, auth.ErrUnauthenticated, "algorithm not allowed"},
		{"ES256 token for an RSA key", rsaAuth, es(good), auth.TasksRead, auth.ErrUnauthenticated, "does not match its key"},
		{"malformed", rsaAuth, "not-a-jwt", auth.TasksRead, auth.ErrUnauthenticated, "malformed token"},

		{"valid ES256 from file, scope claim", ecAuth, es(with(good, map[string]any{"scope": "templates:read"})), auth.TemplatesRead, nil, ""},
		{"ES256 permissions claim is configured name", ecAuth, es(good), auth.TasksRead, auth.ErrForbidden, "lacks permission"},
		{"RS256 not in algorithms", ecAuth, rs(good), auth.TasksRead, auth.ErrUnauthenticated, "algorithm not allowed"},
		{"ES256 signed by another key", ecAuth, sign(t, jwt.SigningMethodES256, ecKey2, "", good), auth.TasksRead, auth.ErrUnauthenticated, "invalid token signature"},
		{"ES256 expired beyond small leeway", ecAuth, es(with(good, map[string]any{"exp": now.Add(-10 * time.Second).Unix()})), auth.TasksRead, auth.ErrUnauthenticated, "token expired"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			check(t, tt.a, bearer(tt.token), tt.perm, tt.wantErr, tt.wantMsg, "svc-orders")
		})
	}
}

// jwksServer serves a key set that the test can swap, counting fetches.
type jwksServer struct {
	*httptest.Server
	body    atomic.Value // []byte
	fetches atomic.Int32
	fail    atomic.Bool
}

func newJWKSServer(t *testing.T) *jwksServer {
	t.Helper()
	s := &jwksServer{}
	s.body.Store([]byte(`{"keys":[]}`))
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.fetches.Add(1)
		if s.fail.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(s.body.Load().([]byte))
	}))
	t.Cleanup(s.Close)
	return s
}

// publish serves the public halves of keys under their kids, plus keys
// the authenticator must skip.
func (s *jwksServer) publish(t *testing.T, keys map[string]crypto.Signer) {
	t.Helper()
	set := []map[string]string{
		{"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
		{"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
	}
	for kid, k := range keys {
		switch pub := k.Public().(type) {
		case *rsa.PublicKey:
			set = append(set, map[string]string{"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
				"n": base64.RawURLEncoding.EncodeToString(pub.N.Bytes()),
				"e": base64.RawURLEncoding.EncodeToString(bigEndian(pub.E))})
		case *ecdsa.PublicKey:
			raw, err := pub.Bytes()
			if err != nil {
				t.Fatal(err)
			}
			set = append(set, map[string]string{"kty": "EC", "kid": kid, "crv": pub.Curve.Params().Name,
				"x": base64.RawURLEncoding.EncodeToString(raw[1:33]),
				"y": base64.RawURLEncoding.EncodeToString(raw[33:])})
		}
	}
	body, err := json.Marshal(map[string]any{"keys": set})
	if err != nil {
		t.Fatal(err)
	}
	s.body.Store(body)
}

func bigEndian(e int) []byte {
	var b []byte
	for ; e > 0; e >>= 8 {
		b = append([]byte{byte(e)}, b...)
	}
	return b
}

func jwksAuth(t *testing.T, url string, minRefresh time.Duration) *auth.Authenticator {
	return newAuth(t, auth.Config{Enabled: true, JWT: auth.JWTConfig{
		JWKSURL: url, Issuer: testIssuer, Audience: testAudience, JWKSMinRefreshInterval: minRefresh,
	}})
}

func TestJWKSRotation(t *testing.T) {
	t.Parallel()
	testKeys(t)
	srv := newJWKSServer(t)
	srv.publish(t, map[string]crypto.Signer{"rsa-1": rsaKey, "ec-1": ecKey})
	a := jwksAuth(t, srv.URL+"/jwks.json", time.Nanosecond)
	good := goodClaims([]any{"*"})

	ok := func(tok string) {
		t.Helper()
		check(t, a, bearer(tok), auth.TasksRead, nil, "", "svc-orders")
	}
	fail := func(tok, msg string) {
		t.Helper()
		check(t, a, bearer(tok), auth.TasksRead, auth.ErrUnauthenticated, msg, "")
	}

	ok(sign(t, jwt.SigningMethodRS256, rsaKey, "rsa-1", good))
	ok(sign(t, jwt.SigningMethodES256, ecKey, "ec-1", good))
	if n := srv.fetches.Load(); n != 1 {
		t.Fatalf("JWKS fetched %d times for two known kids, want 1", n)
	}
	fail(sign(t, jwt.SigningMethodRS256, rsaKey, "", good), "no kid header")
	fail(sign(t, jwt.SigningMethodRS256, rsaKey2, "rsa-2", good), "unknown signing key id")
	fail(sign(t, jwt.SigningMethodRS256, rsaKey2, "rsa-1", good), "invalid token signature")
	fail(sign(t, jwt.SigningMethodES256, ecKey, "rsa-1", good), "does not match its key")
	fail(sign(t, jwt.SigningMethodHS256, []byte("c2VjcmV0"), "hmac", good), "algorithm not allowed")
	fail(sign(t, jwt.SigningMethodES384, ecP384, "ed", good), "algorithm not allowed")

	// The identity provider rotates: rsa-2 replaces rsa-1. The first
	// token with the new kid makes the authenticator fetch again.
	srv.publish(t, map[string]crypto.Signer{"rsa-2": rsaKey2, "ec-1": ecKey})
	before := srv.fetches.Load()
	ok(sign(t, jwt.SigningMethodRS256, rsaKey2, "rsa-2", good))
	if srv.fetches.Load() == before {
		t.Fatal("unknown kid did not refresh the JWKS")
	}
	fail(sign(t, jwt.SigningMethodRS256, rsaKey, "rsa-1", good), "unknown signing key id")
	ok(sign(t, jwt.SigningMethodES256, ecKey, "ec-1", good))

	// When the JWKS becomes unreachable, known keys keep working.
	srv.fail.Store(true)
	ok(sign(t, jwt.SigningMethodES256, ecKey, "ec-1", good))
	fail(sign(t, jwt.SigningMethodES256, ecKey2, "ec-2", good), "unknown signing key id")
}

func TestJWKSRefreshIsRateLimited(t *testing.T) {
	t.Parallel()
	testKeys(t)
	srv := newJWKSServer(t)
	srv.publish(t, map[string]crypto.Signer{"ec-1": ecKey})
	a := jwksAuth(t, srv.URL, time.Hour)
	good := goodClaims([]any{"*"})
	check(t, a, bearer(sign(t, jwt.SigningMethodES256, ecKey, "ec-1", good)), auth.TasksRead, nil, "", "svc-orders")
	for i := range 5 {
		tok := sign(t, jwt.SigningMethodES256, ecKey2, fmt.Sprintf("guess-%d", i), good)
		check(t, a, bearer(tok), auth.TasksRead, auth.ErrUnauthenticated, "unknown signing key id", "")
	}
	if n := srv.fetches.Load(); n != 1 {
		t.Fatalf("JWKS fetched %d times, want 1: unknown kids must not refetch within the minimum interval", n)
	}
}

func TestJWKSUnavailable(t *testing.T) {
	t.Parallel()
	testKeys(t)
	srv := newJWKSServer(t)
	srv.fail.Store(true)
	a := jwksAuth(t, srv.URL, time.Nanosecond)
	tok := sign(t, jwt.SigningMethodES256, ecKey, "ec-1", goodClaims([]any{"*"}))
	check(t, a, bearer(tok), auth.TasksRead, auth.ErrUnauthenticated, "signing keys unavailable", "")
	// Once it is back, the next request picks the keys up.
	srv.publish(t, map[string]crypto.Signer{"ec-1": ecKey})
	srv.fail.Store(false)
	check(t, a, bearer(tok), auth.TasksRead, nil, "", "svc-orders")
}

func TestJWKSFailureLogHidesPassword(t *testing.T) {
	t.Parallel()
	testKeys(t)
	srv := newJWKSServer(t)
	srv.fail.Store(true)
	var logs bytes.Buffer
	var mu sync.Mutex
	a := newAuth(t, auth.Config{Enabled: true, Logger: slog.New(slog.NewTextHandler(&lockedWriter{w: &logs, mu: &mu}, nil)),
		JWT: auth.JWTConfig{
			JWKSURL: strings.Replace(srv.URL, "http://", "http://svc:jwks-secret@", 1), Issuer: testIssuer, Audience: testAudience,
		}})
	tok := sign(t, jwt.SigningMethodES256, ecKey, "ec-1", goodClaims(nil))
	check(t, a, bearer(tok), auth.TasksRead, auth.ErrUnauthenticated, "signing keys unavailable", "")
	mu.Lock()
	defer mu.Unlock()
	if !strings.Contains(logs.String(), "fetch JWKS failed") || strings.Contains(logs.String(), "jwks-secret") {
		t.Fatalf("log should report the failure without the password:\n%s", logs.String())
	}
}

type lockedWriter struct {
	w  io.Writer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// TestJWKSConcurrent exercises the cache from many goroutines during a
// rotation, for the race detector.
func TestJWKSConcurrent(t *testing.T) {
	t.Parallel()
	testKeys(t)
	srv := newJWKSServer(t)
	srv.publish(t, map[string]crypto.Signer{"ec-1": ecKey})
	a := jwksAuth(t, srv.URL, time.Nanosecond)
	good := goodClaims([]any{"tasks:read"})
	tok1 := sign(t, jwt.SigningMethodES256, ecKey, "ec-1", good)
	tok2 := sign(t, jwt.SigningMethodES256, ecKey2, "ec-2", good)
	check(t, a, bearer(tok1), auth.TasksRead, nil, "", "svc-orders")
	srv.publish(t, map[string]crypto.Signer{"ec-1": ecKey, "ec-2": ecKey2})
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i := range 40 {
		tok := tok1
		if i%2 == 1 {
			tok = tok2
		}
		wg.Go(func() {
			if _, err := a.Authorize(request(bearer(tok)), auth.TasksRead); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestPermissions(t *testing.T) {
	t.Parallel()
	for _, p := range auth.Known() {
		if err := auth.ValidatePermission(p); err != nil {
			t.Errorf("known permission %s: %v", p, err)
		}
	}
	valid := []string{"*", "tasks:*", "dlq:*", "system:*", "templates:validate"}
	invalid := []string{"", "tasks", "tasks:", ":read", "tasks:delete", "widgets:*", "widgets:read", "*:*", "Tasks:read"}
	for _, p := range valid {
		if err := auth.ValidatePermission(p); err != nil {
			t.Errorf("ValidatePermission(%q) = %v, want nil", p, err)
		}
	}
	for _, p := range invalid {
		if err := auth.ValidatePermission(p); err == nil {
			t.Errorf("ValidatePermission(%q) = nil, want an error", p)
		}
	}

	tests := []struct {
		grants []string
		perm   string
		want   bool
	}{
		{nil, auth.TasksRead, false},
		{[]string{"tasks:read"}, "tasks:read", true},
		{[]string{"tasks:read"}, "tasks:list", false},
		{[]string{"tasks:*"}, "tasks:cancel", true},
		{[]string{"tasks:*"}, "steps:read", false},
		{[]string{"task:*"}, "tasks:read", false},
		{[]string{"tasks*"}, "tasks:read", false},
		{[]string{"*"}, "dlq:update", true},
		{[]string{"steps:read", "dlq:*"}, "dlq:update", true},
	}
	for _, tt := range tests {
		if got := auth.Allows(tt.grants, tt.perm); got != tt.want {
			t.Errorf("Allows(%v, %s) = %v, want %v", tt.grants, tt.perm, got, tt.want)
		}
	}
}

func TestGenerateAPIKey(t *testing.T) {
	t.Parallel()
	k1, h1, err := auth.GenerateAPIKey()
	if err != nil {
		t.Fatal(err)
	}
	k2, h2, _ := auth.GenerateAPIKey()
	if !strings.HasPrefix(k1, auth.APIKeyPrefix) || len(k1) < 40 {
		t.Errorf("key %q: want %s and at least 36 random characters", k1, auth.APIKeyPrefix)
	}
	if k1 == k2 || h1 == h2 {
		t.Error("two generated keys are equal")
	}
	if auth.HashAPIKey(k1) != h1 || !strings.HasPrefix(h1, "sha256:") {
		t.Errorf("hash %q does not match HashAPIKey of the key", h1)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	t.Parallel()
	testKeys(t)
	_, hash, _ := auth.GenerateAPIKey()
	jwtOK := auth.JWTConfig{PublicKeyPEM: rsaPubPEM, Issuer: testIssuer, Audience: testAudience}
	mod := func(f func(*auth.JWTConfig)) auth.JWTConfig { j := jwtOK; f(&j); return j }
	smallRSA, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		cfg  auth.Config
		want string
	}{
		{"enabled without credentials", auth.Config{Enabled: true}, "auth.enabled"},
		{"key without name", auth.Config{Enabled: true, APIKeys: []auth.APIKeyConfig{{Hash: hash}}}, "auth.api_keys[0].name"},
		{"key name with spaces", auth.Config{Enabled: true, APIKeys: []auth.APIKeyConfig{{Name: "a b", Hash: hash}}}, "auth.api_keys[0].name"},
		{"duplicate name", auth.Config{Enabled: true, APIKeys: []auth.APIKeyConfig{{Name: "a", Hash: hash}, {Name: "a", Hash: auth.HashAPIKey("x")}}}, "auth.api_keys[1].name"},
		{"duplicate hash", auth.Config{Enabled: true, APIKeys: []auth.APIKeyConfig{{Name: "a", Hash: hash}, {Name: "b", Hash: hash}}}, "auth.api_keys[1].hash"},
		{"missing hash", auth.Config{Enabled: true, APIKeys: []auth.APIKeyConfig{{Name: "a"}}}, "auth.api_keys[0].hash: required"},
		{"plain key as hash", auth.Config{Enabled: true, APIKeys: []auth.APIKeyConfig{{Name: "a", Hash: "tsk_abc"}}}, "auth.api_keys[0].hash"},
		{"short hash", auth.Config{Enabled: true, APIKeys: []auth.APIKeyConfig{{Name: "a", Hash: "sha256:abcd"}}}, "auth.api_keys[0].hash"},
		{"unknown permission", auth.Config{Enabled: true, APIKeys: []auth.APIKeyConfig{{Name: "a", Hash: hash, Permissions: []string{"tasks:delete"}}}}, "auth.api_keys[0].permissions"},
		{"unknown resource wildcard", auth.Config{Enabled: true, APIKeys: []auth.APIKeyConfig{{Name: "a", Hash: hash, Permissions: []string{"widgets:*"}}}}, "auth.api_keys[0].permissions"},
		{"two key sources", auth.Config{Enabled: true, JWT: mod(func(j *auth.JWTConfig) { j.JWKSURL = "https://idp.example.com/jwks" })}, "auth.jwt: set only one"},
		{"HS256 algorithm", auth.Config{Enabled: true, JWT: mod(func(j *auth.JWTConfig) { j.Algorithms = []string{"HS256"} })}, "auth.jwt.algorithms"},
		{"none algorithm", auth.Config{Enabled: true, JWT: mod(func(j *auth.JWTConfig) { j.Algorithms = []string{"none"} })}, "auth.jwt.algorithms"},
		{"key not allowed by algorithms", auth.Config{Enabled: true, JWT: mod(func(j *auth.JWTConfig) { j.Algorithms = []string{auth.ES256} })}, "auth.jwt.public_key_pem: the key is for RS256"},
		{"no issuer", auth.Config{Enabled: true, JWT: mod(func(j *auth.JWTConfig) { j.Issuer = "" })}, "auth.jwt.issuer"},
		{"no audience", auth.Config{Enabled: true, JWT: mod(func(j *auth.JWTConfig) { j.Audience = "" })}, "auth.jwt.audience"},
		{"huge leeway", auth.Config{Enabled: true, JWT: mod(func(j *auth.JWTConfig) { j.Leeway = time.Hour })}, "auth.jwt.leeway"},
		{"negative cache ttl", auth.Config{Enabled: true, JWT: mod(func(j *auth.JWTConfig) { j.JWKSCacheTTL = -time.Second })}, "auth.jwt.jwks_cache_ttl"},
		{"plain http JWKS", auth.Config{Enabled: true, JWT: mod(func(j *auth.JWTConfig) { j.PublicKeyPEM = ""; j.JWKSURL = "http://idp.example.com/jwks" })}, "auth.jwt.jwks_url: must use https"},
		{"not a PEM", auth.Config{Enabled: true, JWT: mod(func(j *auth.JWTConfig) { j.PublicKeyPEM = "hello" })}, "auth.jwt.public_key_pem: no PEM block"},
		{"private key as public key", auth.Config{Enabled: true, JWT: mod(func(j *auth.JWTConfig) { j.PublicKeyPEM = string(privatePEM(t, ecKey)) })}, "auth.jwt.public_key_pem: PEM block is a private key"},
		{"short RSA key", auth.Config{Enabled: true, JWT: mod(func(j *auth.JWTConfig) { j.PublicKeyPEM = publicPEM(smallRSA.Public()) })}, "auth.jwt.public_key_pem: RSA key has 1024 bits"},
		{"P-384 key", auth.Config{Enabled: true, JWT: mod(func(j *auth.JWTConfig) { j.PublicKeyPEM = publicPEM(ecP384.Public()) })}, "auth.jwt.public_key_pem: ECDSA key is on curve P-384"},
		{"missing key file", auth.Config{Enabled: true, JWT: mod(func(j *auth.JWTConfig) { j.PublicKeyPEM = ""; j.PublicKeyFile = "/nonexistent/key.pem" })}, "auth.jwt.public_key_file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := auth.New(tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New = %v, want an error mentioning %q", err, tt.want)
			}
		})
	}
	// A disabled config is not checked: its keys are never used.
	if _, err := auth.New(auth.Config{APIKeys: []auth.APIKeyConfig{{Name: "a b"}}}); err != nil {
		t.Fatalf("New(disabled) = %v", err)
	}
}

func TestMintToken(t *testing.T) {
	t.Parallel()
	testKeys(t)
	for _, tc := range []struct {
		key crypto.Signer
		alg string
		pub string
	}{{rsaKey, auth.RS256, rsaPubPEM}, {ecKey, auth.ES256, ecPubP}} {
		t.Run(tc.alg, func(t *testing.T) {
			t.Parallel()
			tok, err := auth.MintToken(privatePEM(t, tc.key), auth.TokenParams{
				Subject: "ci", Issuer: testIssuer, Audience: testAudience,
				Permissions: []string{"tasks:*"}, TTL: time.Minute,
			})
			if err != nil {
				t.Fatal(err)
			}
			a := newAuth(t, auth.Config{Enabled: true, JWT: auth.JWTConfig{PublicKeyPEM: tc.pub, Issuer: testIssuer, Audience: testAudience}})
			check(t, a, bearer(tok), auth.TasksCreate, nil, "", "ci")
			check(t, a, bearer(tok), auth.StepsRead, auth.ErrForbidden, "lacks permission", "")
			parsed, _, err := jwt.NewParser().ParseUnverified(tok, jwt.MapClaims{})
			if err != nil || parsed.Method.Alg() != tc.alg {
				t.Fatalf("token alg = %v (%v), want %s", parsed.Method.Alg(), err, tc.alg)
			}
		})
	}
	if _, err := auth.MintToken([]byte(rsaPubPEM), auth.TokenParams{Subject: "x", TTL: time.Minute}); err == nil {
		t.Error("MintToken accepted a public key")
	}
	if _, err := auth.MintToken(privatePEM(t, ecKey), auth.TokenParams{Subject: "x"}); err == nil {
		t.Error("MintToken accepted a zero TTL")
	}
}

// FuzzAuthorizeHeaders feeds arbitrary credentials to an authenticator that
// accepts both kinds: nothing may panic, succeed, or fail with anything but
// ErrUnauthenticated.
func FuzzAuthorizeHeaders(f *testing.F) {
	testKeys(f)
	a, err := auth.New(auth.Config{Enabled: true,
		APIKeys: []auth.APIKeyConfig{{Name: "k", Hash: auth.HashAPIKey("tsk_known"), Permissions: []string{"*"}}},
		JWT:     auth.JWTConfig{PublicKeyPEM: rsaPubPEM, Issuer: testIssuer, Audience: testAudience},
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Add("", "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.")
	f.Add("", "Bearer a.b.c")
	f.Add("", "bearer  ")
	f.Add("tsk_unknown", "")
	f.Add("", "Bearer eyJhbGciOiJSUzI1NiIsImtpZCI6MX0.e30.AAAA")
	f.Fuzz(func(t *testing.T, key, authz string) {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		if key != "" {
			r.Header.Set("X-API-Key", key)
		}
		if authz != "" {
			r.Header.Set("Authorization", authz)
		}
		_, err := a.Authorize(r, auth.TasksRead)
		if key == "tsk_known" && authz == "" {
			if err != nil {
				t.Fatalf("known key refused: %v", err)
			}
			return
		}
		if !errors.Is(err, auth.ErrUnauthenticated) {
			t.Fatalf("Authorize(%q, %q) = %v, want ErrUnauthenticated", key, authz, err)
		}
	})
}
