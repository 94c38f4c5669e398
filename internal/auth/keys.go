package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// minRSABits is the smallest RSA modulus accepted for signing or
// verifying.
const minRSABits = 2048

// ParsePublicKeyPEM parses the first PEM block of data: a "PUBLIC KEY"
// (PKIX), "RSA PUBLIC KEY" (PKCS #1) or "CERTIFICATE", whose key must be
// RSA or ECDSA.
func ParsePublicKeyPEM(data []byte) (crypto.PublicKey, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM block found")
	}
	var (
		key any
		err error
	)
	switch block.Type {
	case "PUBLIC KEY":
		key, err = x509.ParsePKIXPublicKey(block.Bytes)
	case "RSA PUBLIC KEY":
		key, err = x509.ParsePKCS1PublicKey(block.Bytes)
	case "CERTIFICATE":
		var cert *x509.Certificate
		cert, err = x509.ParseCertificate(block.Bytes)
		if err == nil {
			key = cert.PublicKey
		}
	default:
		if isPrivateBlock(block.Type) {
			return nil, fmt.Errorf("PEM block is a private key (%s); configure the public key", block.Type)
		}
		return nil, fmt.Errorf("PEM block %q is not a public key or certificate", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", block.Type, err)
	}
	if _, err := algorithmFor(key); err != nil {
		return nil, err
	}
	return key, nil
}

// ParsePrivateKeyPEM parses the first PEM block of data: a "PRIVATE KEY"
// (PKCS #8), "RSA PRIVATE KEY" (PKCS #1) or "EC PRIVATE KEY" (SEC 1), and
// returns the key with the algorithm it signs with (RS256 or ES256).
func ParsePrivateKeyPEM(data []byte) (key crypto.Signer, alg string, err error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, "", errors.New("no PEM block found")
	}
	var parsed any
	switch block.Type {
	case "PRIVATE KEY":
		parsed, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		parsed, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		parsed, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		return nil, "", fmt.Errorf("PEM block %q is not a private key", block.Type)
	}
	if err != nil {
		return nil, "", fmt.Errorf("parse %s: %w", block.Type, err)
	}
	signer, ok := parsed.(crypto.Signer)
	if !ok {
		return nil, "", fmt.Errorf("unsupported private key type %T", parsed)
	}
	alg, err = algorithmFor(signer.Public())
	if err != nil {
		return nil, "", err
	}
	return signer, alg, nil
}

func isPrivateBlock(t string) bool {
	return t == "PRIVATE KEY" || t == "RSA PRIVATE KEY" || t == "EC PRIVATE KEY" || t == "ENCRYPTED PRIVATE KEY"
}

// algorithmFor names the one algorithm a public key verifies: RS256 for
// RSA keys of at least 2048 bits, ES256 for P-256 ECDSA keys.
func algorithmFor(key any) (string, error) {
	switch k := key.(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() < minRSABits {
			return "", fmt.Errorf("RSA key has %d bits; at least %d are required", k.N.BitLen(), minRSABits)
		}
		return RS256, nil
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return "", fmt.Errorf("ECDSA key is on curve %s; ES256 needs P-256", k.Curve.Params().Name)
		}
		return ES256, nil
	default:
		return "", fmt.Errorf("unsupported key type %T (use RSA or ECDSA P-256)", key)
	}
}

// TokenParams describes a token for MintToken.
type TokenParams struct {
	Subject  string
	Issuer   string
	Audience string
	// Permissions become the PermissionsClaim claim, a JSON array.
	Permissions []string
	// PermissionsClaim names the claim; default "permissions".
	PermissionsClaim string
	// TTL is how long the token is valid; required.
	TTL time.Duration
	// KeyID, when set, becomes the "kid" header, which a JWKS needs.
	KeyID string
	// Now is the issue time; default time.Now().
	Now time.Time
}

// MintToken signs a JWT with the PEM private key, choosing RS256 or ES256
// from the key's type. It serves `tasker auth token` and tests; production
// tokens normally come from an identity provider.
func MintToken(privateKeyPEM []byte, p TokenParams) (string, error) {
	key, alg, err := ParsePrivateKeyPEM(privateKeyPEM)
	if err != nil {
		return "", fmt.Errorf("private key: %w", err)
	}
	return SignToken(key, alg, p)
}

// SignToken is MintToken for a parsed key and an algorithm (RS256 or
// ES256) matching it.
func SignToken(key crypto.Signer, alg string, p TokenParams) (string, error) {
	if p.Subject == "" {
		return "", errors.New("subject is required")
	}
	if p.TTL <= 0 {
		return "", errors.New("ttl must be positive")
	}
	want, err := algorithmFor(key.Public())
	if err != nil {
		return "", err
	}
	if want != alg {
		return "", fmt.Errorf("algorithm %s does not match the key (use %s)", alg, want)
	}
	now := p.Now
	if now.IsZero() {
		now = time.Now()
	}
	claimName := p.PermissionsClaim
	if claimName == "" {
		claimName = DefaultPermissionsClaim
	}
	perms := p.Permissions
	if perms == nil {
		perms = []string{}
	}
	claims := jwt.MapClaims{
		"sub":     p.Subject,
		"iat":     now.Unix(),
		"nbf":     now.Unix(),
		"exp":     now.Add(p.TTL).Unix(),
		claimName: perms,
	}
	if p.Issuer != "" {
		claims["iss"] = p.Issuer
	}
	if p.Audience != "" {
		claims["aud"] = p.Audience
	}
	tok := jwt.NewWithClaims(jwt.GetSigningMethod(alg), claims)
	if p.KeyID != "" {
		tok.Header["kid"] = p.KeyID
	}
	s, err := tok.SignedString(key)
	if err != nil {
		return "", fmt.Errorf("sign token: %w", err)
	}
	return s, nil
}
