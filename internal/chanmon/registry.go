package chanmon

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
)

// ErrDuplicateName is returned by Registry.Register for a name already in use.
var ErrDuplicateName = errors.New("chanmon: duplicate monitor name")

// Monitor is what a Registry lists; every *Chan is one, whatever its item type.
type Monitor interface {
	Name() string
	Stats() Stats
}

// Registry holds the engine's monitored channels by name so that metrics and
// health checks can list them. It is safe for concurrent use.
type Registry struct {
	mu       sync.RWMutex
	monitors map[string]Monitor
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry {
	return &Registry{monitors: make(map[string]Monitor)}
}

// Register adds m under m.Name(). Names identify channels in metrics, so a
// second monitor with the same name is refused with ErrDuplicateName rather
// than silently hiding the first.
func (r *Registry) Register(m Monitor) error {
	name := m.Name()
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.monitors[name]; ok {
		return fmt.Errorf("register channel %q: %w", name, ErrDuplicateName)
	}
	r.monitors[name] = m
	return nil
}

// Unregister removes the monitor registered under name, if any, so that a
// component that is stopped and started again can register fresh channels.
func (r *Registry) Unregister(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.monitors, name)
}

// Snapshot returns the current Stats of every registered monitor, sorted by
// name.
func (r *Registry) Snapshot() []Stats {
	r.mu.RLock()
	out := make([]Stats, 0, len(r.monitors))
	for _, m := range r.monitors {
		out = append(out, m.Stats())
	}
	r.mu.RUnlock()
	slices.SortFunc(out, func(a, b Stats) int { return strings.Compare(a.Name, b.Name) })
	return out
}
