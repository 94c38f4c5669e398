package api

import (
	"context"
	_ "embed"
	"net/http"
	"time"

	"github.com/tasker-go/tasker"
	"github.com/tasker-go/tasker/internal/auth"
)

//go:embed openapi.json
var openAPIDoc []byte

func (s *server) openAPI(w http.ResponseWriter, _ *http.Request, _ *auth.Principal) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(openAPIDoc)
}

// overloaded returns why task creation should wait, or "": a channel
// monitor at critical saturation, or more queued steps than MaxQueueDepth.
func (s *server) overloaded(r *http.Request) string {
	for _, c := range s.channelStats() {
		if c.Level == "critical" {
			return "the engine is overloaded (channel " + c.Name + " is critically saturated)"
		}
	}
	if s.opts.MaxQueueDepth <= 0 {
		return ""
	}
	depth, err := s.queueDepth(r.Context())
	if err != nil {
		s.log.Warn("api: read queue depth for backpressure", "error", err)
		return ""
	}
	if depth > s.opts.MaxQueueDepth {
		return "the work queues are full"
	}
	return ""
}

// queueDepth is the number of steps waiting in the worker queues, reused
// for DepthCheckInterval.
func (s *server) queueDepth(ctx context.Context) (int, error) {
	s.depthMu.Lock()
	defer s.depthMu.Unlock()
	if s.opts.DepthCheckInterval > 0 && !s.depthRead.IsZero() && time.Since(s.depthRead) < s.opts.DepthCheckInterval {
		return s.depth, nil
	}
	stats, err := s.eng.QueueStats(ctx)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, q := range stats {
		if q.Queue != "orchestration_step_results" {
			n += q.Visible
		}
	}
	s.depth, s.depthRead = n, time.Now()
	return n, nil
}

func (s *server) live(w http.ResponseWriter, _ *http.Request, _ *auth.Principal) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

type readyJSON struct {
	Status  string   `json:"status"`
	Reasons []string `json:"reasons,omitempty"`
}

func (s *server) health(r *http.Request) tasker.Health {
	ctx, cancel := context.WithTimeout(r.Context(), s.opts.HealthTimeout)
	defer cancel()
	h := s.eng.CheckHealth(ctx)
	h.Channels = s.channelStats()
	return h
}

func (s *server) ready(w http.ResponseWriter, r *http.Request, _ *auth.Principal) {
	h := s.health(r)
	if ok, reasons := h.Ready(); !ok {
		if h.DatabaseErr != nil {
			s.log.Warn("api: readiness: database check failed", "error", h.DatabaseErr)
		}
		writeJSON(w, http.StatusServiceUnavailable, readyJSON{Status: "unavailable", Reasons: reasons})
		return
	}
	writeJSON(w, http.StatusOK, readyJSON{Status: "ok"})
}

type componentJSON struct {
	Name    string         `json:"name"`
	Status  string         `json:"status"`
	Message string         `json:"message,omitempty"`
	Details map[string]any `json:"details,omitempty"`
}

type detailedJSON struct {
	Status     string          `json:"status"`
	Components []componentJSON `json:"components"`
}

// detailed reports every component: "ok", "degraded" (working, but near a
// limit) or "unavailable". The overall status is the worst of them.
func (s *server) detailed(w http.ResponseWriter, r *http.Request, _ *auth.Principal) {
	h := s.health(r)
	var comps []componentJSON
	db := componentJSON{Name: "database", Status: "ok", Details: map[string]any{"driver": h.Driver}}
	switch {
	case h.DatabaseErr != nil:
		s.log.Warn("api: health: database check failed", "error", h.DatabaseErr)
		db.Status, db.Message = "unavailable", "database unreachable"
	case !h.MigrationsCurrent:
		db.Status, db.Message = "unavailable", "database migrations are not current"
	}
	comps = append(comps, db)
	engine := componentJSON{Name: "engine", Status: "ok", Details: map[string]any{"started": h.Started}}
	if !h.Started {
		engine.Message = "not started in this process (client mode)"
	}
	comps = append(comps, engine)
	for _, c := range h.Channels {
		cj := componentJSON{Name: "channel:" + c.Name, Status: "ok", Details: map[string]any{
			"capacity": c.Capacity, "depth": c.Depth, "saturation": c.Saturation, "level": c.Level}}
		switch c.Level {
		case "degraded":
			cj.Status = "degraded"
		case "critical":
			cj.Status, cj.Message = "unavailable", "critically saturated"
		}
		comps = append(comps, cj)
	}
	if h.DatabaseErr == nil {
		if qs, err := s.eng.QueueStats(r.Context()); err == nil {
			for _, q := range qs {
				comps = append(comps, componentJSON{Name: "queue:" + q.Queue, Status: "ok", Details: map[string]any{
					"visible": q.Visible, "leased": q.Leased, "oldest_age_seconds": q.OldestAge.Seconds()}})
			}
		}
	}
	overall, code := "ok", http.StatusOK
	for _, c := range comps {
		switch {
		case c.Status == "unavailable":
			overall, code = "unavailable", http.StatusServiceUnavailable
		case c.Status == "degraded" && overall == "ok":
			overall = "degraded"
		}
	}
	writeJSON(w, code, detailedJSON{Status: overall, Components: comps})
}
