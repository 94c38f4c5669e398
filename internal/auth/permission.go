package auth

import (
	"fmt"
	"slices"
	"strings"
)

// Permissions the API checks. Each route requires exactly one of them.
const (
	TasksCreate       = "tasks:create"
	TasksRead         = "tasks:read"
	TasksList         = "tasks:list"
	TasksCancel       = "tasks:cancel"
	StepsRead         = "steps:read"
	StepsResolve      = "steps:resolve"
	TemplatesRead     = "templates:read"
	TemplatesValidate = "templates:validate"
	DLQRead           = "dlq:read"
	DLQUpdate         = "dlq:update"
	EventsRead        = "events:read"
	SystemRead        = "system:read"
)

var known = []string{
	TasksCreate, TasksRead, TasksList, TasksCancel,
	StepsRead, StepsResolve,
	TemplatesRead, TemplatesValidate,
	DLQRead, DLQUpdate,
	EventsRead,
	SystemRead,
}

// Known returns every permission the API checks, in a fixed order. The
// caller owns the returned slice.
func Known() []string { return slices.Clone(known) }

// ValidatePermission reports whether p can be granted: a known permission,
// "resource:*" for a resource that has known permissions, or "*".
func ValidatePermission(p string) error {
	if p == "*" || slices.Contains(known, p) {
		return nil
	}
	resource, action, ok := strings.Cut(p, ":")
	if !ok || resource == "" || action == "" {
		return fmt.Errorf("permission %q is not of the form resource:action", p)
	}
	if action == "*" {
		for _, k := range known {
			if strings.HasPrefix(k, resource+":") {
				return nil
			}
		}
		return fmt.Errorf("permission %q: unknown resource %q", p, resource)
	}
	return fmt.Errorf("permission %q is not known (known: %s)", p, strings.Join(known, ", "))
}

// Allows reports whether the grants include permission, directly or through
// a "resource:*" or "*" wildcard.
func Allows(grants []string, permission string) bool {
	resource, _, _ := strings.Cut(permission, ":")
	for _, g := range grants {
		switch {
		case g == "*", g == permission:
			return true
		case strings.HasSuffix(g, ":*") && g[:len(g)-2] == resource:
			return true
		}
	}
	return false
}

// Has reports whether the principal holds permission.
func (p *Principal) Has(permission string) bool {
	return p != nil && Allows(p.Permissions, permission)
}
