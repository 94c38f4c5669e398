package auth

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// APIKeyPrefix starts every generated API key, so a leaked key is easy to
// recognise (for example by secret scanners).
const APIKeyPrefix = "tsk_"

const hashPrefix = "sha256:"

// GenerateAPIKey returns a new random API key (APIKeyPrefix and 256 random
// bits) and the hash to configure for it. Only the hash is stored; the key
// is shown once to whoever will use it.
func GenerateAPIKey() (key, hash string, err error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", "", fmt.Errorf("generate API key: %w", err)
	}
	key = APIKeyPrefix + base64.RawURLEncoding.EncodeToString(b[:])
	return key, HashAPIKey(key), nil
}

// HashAPIKey returns the configured form of key's hash: "sha256:" and the
// hex SHA-256 of the key. A plain hash is enough because generated keys
// carry 256 random bits, so there is nothing to brute-force.
func HashAPIKey(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hashPrefix + hex.EncodeToString(sum[:])
}

// parseKeyHash decodes a configured hash into its digest.
func parseKeyHash(h string) ([]byte, error) {
	if h == "" {
		return nil, errors.New("required")
	}
	digest, ok := strings.CutPrefix(h, hashPrefix)
	if !ok {
		return nil, fmt.Errorf("must start with %q (as printed by tasker auth create-key)", hashPrefix)
	}
	b, err := hex.DecodeString(digest)
	if err != nil || len(b) != sha256.Size {
		return nil, fmt.Errorf("must be %q followed by %d hex digits", hashPrefix, 2*sha256.Size)
	}
	return b, nil
}
