package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"

	"github.com/tasker-go/tasker/internal/auth"
)

func TestAuthCreateKey(t *testing.T) {
	t.Parallel()
	code, out, errOut := runCLI(t, "auth", "create-key", "--name", "ci", "--permissions", "tasks:*,steps:read")
	if code != 0 {
		t.Fatalf("create-key exited %d: %s", code, errOut)
	}
	var key string
	for line := range strings.Lines(out) {
		if strings.HasPrefix(line, auth.APIKeyPrefix) {
			key = strings.TrimSpace(line)
		}
	}
	if key == "" {
		t.Fatalf("no key in the output:\n%s", out)
	}
	_, snippet, ok := strings.Cut(out, "[[auth.api_keys]]")
	if !ok {
		t.Fatalf("no config entry in the output:\n%s", out)
	}
	if strings.Contains(snippet, key) {
		t.Fatal("the config entry contains the key itself")
	}

	// The printed entry, pasted into a config file, accepts the printed key.
	var file struct {
		Auth auth.Config `toml:"auth"`
	}
	if _, err := toml.Decode("[[auth.api_keys]]"+snippet, &file); err != nil {
		t.Fatalf("config entry is not TOML: %v\n%s", err, snippet)
	}
	file.Auth.Enabled = true
	a, err := auth.New(file.Auth)
	if err != nil {
		t.Fatalf("server refuses the printed entry: %v", err)
	}
	r := httptest.NewRequest("GET", "/v1/tasks", nil)
	r.Header.Set("X-API-Key", key)
	if p, err := a.Authorize(r, auth.TasksCreate); err != nil || p.Subject != "ci" {
		t.Fatalf("Authorize(tasks:create) = %+v, %v", p, err)
	}
	if _, err := a.Authorize(r, auth.StepsRead); err != nil {
		t.Fatalf("Authorize(steps:read) = %v", err)
	}
	if _, err := a.Authorize(r, auth.DLQRead); !errors.Is(err, auth.ErrForbidden) {
		t.Fatalf("Authorize(dlq:read) = %v, want forbidden", err)
	}

	// Every run makes a new key.
	_, out2, _ := runCLI(t, "auth", "create-key", "--name", "ci", "--permissions", "*")
	if strings.Contains(out2, key) {
		t.Fatal("a second create-key printed the same key")
	}
}

func TestAuthCreateKeyRejects(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no name", []string{"--permissions", "tasks:read"}, `"name" not set`},
		{"no permissions", []string{"--name", "ci"}, `"permissions" not set`},
		{"bad name", []string{"--name", `c"i`, "--permissions", "tasks:read"}, "--name:"},
		{"unknown permission", []string{"--name", "ci", "--permissions", "tasks:read,tasks:delete"}, `--permissions: permission "tasks:delete" is not known`},
		{"unknown resource", []string{"--name", "ci", "--permissions", "widgets:*"}, `unknown resource "widgets"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			code, out, errOut := runCLI(t, append([]string{"auth", "create-key"}, tt.args...)...)
			if code == 0 || !strings.Contains(errOut, tt.want) {
				t.Fatalf("exit %d, stderr %q; want failure mentioning %q", code, errOut, tt.want)
			}
			if strings.Contains(out, auth.APIKeyPrefix) {
				t.Fatalf("a refused command printed a key:\n%s", out)
			}
		})
	}
}

// writeKey writes key to a temporary PEM file in the given encoding and
// returns its path and the PEM public key.
func writeKey(t *testing.T, key crypto.Signer, blockType string) (path, public string) {
	t.Helper()
	var der []byte
	var err error
	switch blockType {
	case "PRIVATE KEY":
		der, err = x509.MarshalPKCS8PrivateKey(key)
	case "RSA PRIVATE KEY":
		der = x509.MarshalPKCS1PrivateKey(key.(*rsa.PrivateKey))
	case "EC PRIVATE KEY":
		der, err = x509.MarshalECPrivateKey(key.(*ecdsa.PrivateKey))
	}
	if err != nil {
		t.Fatal(err)
	}
	path = filepath.Join(t.TempDir(), "key.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: blockType, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	pubDER, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	return path, string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}))
}

func TestAuthToken(t *testing.T) {
	t.Parallel()
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		key       crypto.Signer
		blockType string
	}{
		{"RSA PKCS8", rsaKey, "PRIVATE KEY"},
		{"RSA PKCS1", rsaKey, "RSA PRIVATE KEY"},
		{"EC PKCS8", ecKey, "PRIVATE KEY"},
		{"EC SEC1", ecKey, "EC PRIVATE KEY"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			keyFile, pub := writeKey(t, tc.key, tc.blockType)
			code, out, errOut := runCLI(t, "auth", "token", "--private-key", keyFile, "--subject", "alice",
				"--issuer", "https://dev.local", "--audience", "tasker", "--permissions", "tasks:*,steps:read", "--ttl", "10m")
			if code != 0 {
				t.Fatalf("token exited %d: %s", code, errOut)
			}
			a, err := auth.New(auth.Config{Enabled: true, JWT: auth.JWTConfig{
				PublicKeyPEM: pub, Issuer: "https://dev.local", Audience: "tasker",
			}})
			if err != nil {
				t.Fatal(err)
			}
			r := httptest.NewRequest("GET", "/v1/tasks", nil)
			r.Header.Set("Authorization", "Bearer "+strings.TrimSpace(out))
			if p, err := a.Authorize(r, auth.TasksCancel); err != nil || p.Subject != "alice" {
				t.Fatalf("server refuses the minted token: %+v, %v", p, err)
			}
			if _, err := a.Authorize(r, auth.DLQUpdate); !errors.Is(err, auth.ErrForbidden) {
				t.Fatalf("Authorize(dlq:update) = %v, want forbidden", err)
			}

			// A server expecting another audience refuses it.
			other, _ := auth.New(auth.Config{Enabled: true, JWT: auth.JWTConfig{
				PublicKeyPEM: pub, Issuer: "https://dev.local", Audience: "billing",
			}})
			if _, err := other.Authorize(r, auth.TasksRead); !errors.Is(err, auth.ErrUnauthenticated) {
				t.Fatalf("other audience: %v, want unauthenticated", err)
			}
		})
	}
}

func TestAuthTokenRejects(t *testing.T) {
	t.Parallel()
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	keyFile, pub := writeKey(t, ecKey, "PRIVATE KEY")
	pubFile := filepath.Join(t.TempDir(), "pub.pem")
	if err := os.WriteFile(pubFile, []byte(pub), 0o600); err != nil {
		t.Fatal(err)
	}
	base := func(keyPath string, extra ...string) []string {
		return append([]string{"auth", "token", "--private-key", keyPath, "--subject", "alice",
			"--issuer", "https://dev.local", "--audience", "tasker"}, extra...)
	}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"missing subject", []string{"auth", "token", "--private-key", keyFile, "--issuer", "i", "--audience", "a"}, `"subject" not set`},
		{"public key", base(pubFile), "is not a private key"},
		{"missing file", base(filepath.Join(t.TempDir(), "nope.pem")), "--private-key:"},
		{"unknown permission", base(keyFile, "--permissions", "tasks:explode"), `permission "tasks:explode" is not known`},
		{"zero ttl", base(keyFile, "--ttl", "0s"), "--ttl must be positive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			code, out, errOut := runCLI(t, tt.args...)
			if code == 0 || !strings.Contains(errOut, tt.want) || out != "" {
				t.Fatalf("exit %d, stdout %q, stderr %q; want failure mentioning %q", code, out, errOut, tt.want)
			}
		})
	}
}
