// Package auth authenticates API requests (API keys and JWT bearer tokens)
// and checks their permissions.
package auth

import (
	"errors"
	"net/http"
)

// Sentinel errors returned by Authorizer.Authorize; the API maps them to
// HTTP status codes.
var (
	// ErrUnauthenticated: no credentials, or credentials that are not valid
	// (401).
	ErrUnauthenticated = errors.New("unauthenticated")
	// ErrForbidden: valid credentials without the required permission (403).
	ErrForbidden = errors.New("forbidden")
)

// Authorizer decides whether a request may perform an action named by a
// permission of the form "resource:action" (for example "tasks:create").
// It must not read the request body. On success it returns who made the
// request, which the API records in audits of manual actions.
type Authorizer interface {
	Authorize(r *http.Request, permission string) (*Principal, error)
}

// Principal is an authenticated caller.
type Principal struct {
	// Subject names the caller: an API key's name or a token's "sub".
	Subject string
	// Permissions are the caller's grants, "resource:action" or
	// "resource:*" (or "*" for everything).
	Permissions []string
}
