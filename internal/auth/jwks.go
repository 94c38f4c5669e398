package auth

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"net/url"
	"sync"
	"time"
)

// maxJWKSBytes bounds a key set response; real ones are a few kilobytes.
const maxJWKSBytes = 1 << 20

// jwksFetchTimeout bounds one key set fetch.
const jwksFetchTimeout = 10 * time.Second

var (
	errUnknownKID   = errors.New("unknown signing key id")
	errKeysMissing  = errors.New("signing keys unavailable")
	errKeyAlgorithm = errors.New("token algorithm does not match its key")
)

// verifyKey is a public key with the one algorithm it verifies.
type verifyKey struct {
	key any
	alg string
}

// keySet caches a JWKS. A token whose kid is not in the cache triggers a
// fetch (at most once per minRefresh), which is how signing key rotation
// at the identity provider is picked up without a restart.
type keySet struct {
	url        string
	client     *http.Client
	ttl        time.Duration
	minRefresh time.Duration
	logger     *slog.Logger

	fetchMu sync.Mutex // one fetch at a time; waiters reuse its result

	mu          sync.RWMutex
	keys        map[string]verifyKey
	fetchedAt   time.Time // last successful fetch
	attemptedAt time.Time // last fetch, successful or not
}

// key returns the key named kid, fetching the set when kid is unknown or
// the cache is older than ttl.
func (s *keySet) key(ctx context.Context, kid string) (verifyKey, error) {
	if k, ok, fresh := s.lookup(kid); ok && fresh {
		return k, nil
	}
	s.fetchMu.Lock()
	defer s.fetchMu.Unlock()
	// A fetch that finished while this call waited may have brought the key.
	k, ok, fresh := s.lookup(kid)
	if ok && fresh {
		return k, nil
	}
	s.mu.RLock()
	attempted := s.attemptedAt
	s.mu.RUnlock()
	if attempted.IsZero() || time.Since(attempted) >= s.minRefresh {
		s.refresh(ctx)
		k, ok, _ = s.lookup(kid)
	}
	if ok {
		// Possibly stale when the refresh failed: a key that verified
		// tokens an hour ago is better than refusing every request while
		// the identity provider is unreachable.
		return k, nil
	}
	s.mu.RLock()
	empty := s.keys == nil
	s.mu.RUnlock()
	if empty {
		return verifyKey{}, errKeysMissing
	}
	return verifyKey{}, errUnknownKID
}

func (s *keySet) lookup(kid string) (k verifyKey, ok, fresh bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	k, ok = s.keys[kid]
	return k, ok, time.Since(s.fetchedAt) < s.ttl
}

// refresh fetches the set; on failure the previous keys stay in use.
func (s *keySet) refresh(ctx context.Context) {
	keys, err := s.fetch(ctx)
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.attemptedAt = now
	if err != nil {
		s.logger.WarnContext(ctx, "auth: fetch JWKS failed; keeping the previous keys", "url", redactURL(s.url), "error", err)
		return
	}
	s.keys = keys
	s.fetchedAt = now
}

func (s *keySet) fetch(ctx context.Context) (map[string]verifyKey, error) {
	// The fetch serves every request waiting on it, so the request that
	// happened to start it must not cancel it by going away.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), jwksFetchTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %s", resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSBytes+1))
	if err != nil {
		return nil, err
	}
	if len(body) > maxJWKSBytes {
		return nil, fmt.Errorf("response is larger than %d bytes", maxJWKSBytes)
	}
	return parseJWKS(body)
}

// redactURL hides a password in the URL's user info, which some
// deployments use to reach a private JWKS endpoint.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}

// jwk holds the members of a JSON Web Key (RFC 7517, 7518) this package
// reads.
type jwk struct {
	Kty string `json:"kty"`
	Kid string `json:"kid"`
	Use string `json:"use"`
	Alg string `json:"alg"`
	N   string `json:"n"`
	E   string `json:"e"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Y   string `json:"y"`
}

// parseJWKS decodes a key set. Keys this package cannot use (encryption
// keys, other key types or curves, keys without kid) are skipped rather than
// failing the set, since identity providers often publish several kinds.
func parseJWKS(body []byte) (map[string]verifyKey, error) {
	var set struct {
		Keys []jwk `json:"keys"`
	}
	if err := json.Unmarshal(body, &set); err != nil {
		return nil, fmt.Errorf("decode JWKS: %w", err)
	}
	if set.Keys == nil {
		return nil, errors.New("decode JWKS: no \"keys\" member")
	}
	keys := make(map[string]verifyKey, len(set.Keys))
	for _, k := range set.Keys {
		if k.Kid == "" || (k.Use != "" && k.Use != "sig") {
			continue
		}
		vk, err := k.verifyKey()
		if err != nil {
			continue
		}
		if k.Alg != "" && k.Alg != vk.alg {
			continue
		}
		keys[k.Kid] = vk
	}
	return keys, nil
}

func (k jwk) verifyKey() (verifyKey, error) {
	var key any
	switch k.Kty {
	case "RSA":
		n, err := base64.RawURLEncoding.DecodeString(k.N)
		if err != nil {
			return verifyKey{}, err
		}
		e, err := base64.RawURLEncoding.DecodeString(k.E)
		if err != nil {
			return verifyKey{}, err
		}
		if len(e) == 0 || len(e) > 4 {
			return verifyKey{}, errors.New("bad RSA exponent")
		}
		exp := new(big.Int).SetBytes(e)
		key = &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(exp.Int64())}
	case "EC":
		if k.Crv != "P-256" {
			return verifyKey{}, fmt.Errorf("curve %q", k.Crv)
		}
		x, err := base64.RawURLEncoding.DecodeString(k.X)
		if err != nil {
			return verifyKey{}, err
		}
		y, err := base64.RawURLEncoding.DecodeString(k.Y)
		if err != nil {
			return verifyKey{}, err
		}
		if len(x) != 32 || len(y) != 32 {
			return verifyKey{}, errors.New("bad P-256 coordinates")
		}
		point := append(append([]byte{4}, x...), y...)
		pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), point)
		if err != nil {
			return verifyKey{}, err
		}
		key = pub
	default:
		return verifyKey{}, fmt.Errorf("key type %q", k.Kty)
	}
	alg, err := algorithmFor(key)
	if err != nil {
		return verifyKey{}, err
	}
	return verifyKey{key: key, alg: alg}, nil
}
