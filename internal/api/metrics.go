package api

import (
	"context"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tasker-go/tasker"
	"github.com/tasker-go/tasker/internal/auth"
)

// metrics holds the API's Prometheus collectors.
type metrics struct {
	gatherer prometheus.Gatherer
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
}

func newMetrics(s *server) *metrics {
	reg, gat := s.opts.Registerer, s.opts.Gatherer
	if reg == nil || gat == nil {
		r := prometheus.NewRegistry()
		r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		reg, gat = r, r
	}
	m := &metrics{
		gatherer: gat,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tasker_http_requests_total", Help: "HTTP requests served by the API, by route and status code.",
		}, []string{"route", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "tasker_http_request_duration_seconds", Help: "Time to serve an API request, by route.",
			Buckets: prometheus.DefBuckets,
		}, []string{"route"}),
	}
	steps := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "tasker_step_duration_seconds",
		Help:    "How long step handlers of this process ran, by namespace, task name and outcome.",
		Buckets: []float64{.001, .005, .01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
	}, []string{"namespace", "task_name", "outcome"})
	s.eng.OnStepFinished(func(f tasker.StepFinished) {
		outcome := "success"
		if !f.Success {
			outcome = "failure"
		}
		steps.WithLabelValues(f.Namespace, f.TaskName, outcome).Observe(f.Duration.Seconds())
	})
	reg.MustRegister(m.requests, m.latency, steps, &engineCollector{s: s})
	return m
}

func (m *metrics) observeRequest(route string, code int, d time.Duration) {
	m.requests.WithLabelValues(route, strconv.Itoa(code)).Inc()
	m.latency.WithLabelValues(route).Observe(d.Seconds())
}

func (s *server) serveMetrics(w http.ResponseWriter, r *http.Request, _ *auth.Principal) {
	promhttp.HandlerFor(s.metrics.gatherer, promhttp.HandlerOpts{ErrorLog: nil}).ServeHTTP(w, r)
}

// engineCollector reads the engine at scrape time: counts from the
// database, queue depths, channel monitors, domain-event counters and the
// connection pools.
type engineCollector struct{ s *server }

var (
	descTasks = prometheus.NewDesc("tasker_tasks", "Tasks by namespace and state.",
		[]string{"namespace", "state"}, nil)
	descSteps = prometheus.NewDesc("tasker_steps", "Steps by namespace and state.",
		[]string{"namespace", "state"}, nil)
	descQueueDepth = prometheus.NewDesc("tasker_queue_depth", "Messages in a queue, visible (waiting) or leased (held by a consumer).",
		[]string{"queue", "status"}, nil)
	descQueueAge = prometheus.NewDesc("tasker_queue_oldest_message_age_seconds", "Age of the oldest message in a queue.",
		[]string{"queue"}, nil)
	descChanDepth = prometheus.NewDesc("tasker_channel_depth", "Items buffered in a bounded channel.",
		[]string{"channel"}, nil)
	descChanCap = prometheus.NewDesc("tasker_channel_capacity", "Capacity of a bounded channel.",
		[]string{"channel"}, nil)
	descChanSat = prometheus.NewDesc("tasker_channel_saturation", "Depth over capacity of a bounded channel (0 to 1).",
		[]string{"channel"}, nil)
	descChanCritical = prometheus.NewDesc("tasker_channel_critical", "1 while a bounded channel is critically saturated.",
		[]string{"channel"}, nil)
	descChanSent = prometheus.NewDesc("tasker_channel_sent_total", "Items sent into a bounded channel.",
		[]string{"channel"}, nil)
	descChanBlocked = prometheus.NewDesc("tasker_channel_blocked_seconds_total", "Time senders spent blocked on a full channel.",
		[]string{"channel"}, nil)
	descEvents = prometheus.NewDesc("tasker_domain_events_total", "Domain events by delivery class and outcome.",
		[]string{"delivery", "outcome"}, nil)
	descPoolConns = prometheus.NewDesc("tasker_db_pool_connections", "Database pool connections by state.",
		[]string{"pool", "state"}, nil)
	descPoolMax = prometheus.NewDesc("tasker_db_pool_max_connections", "Database pool size limit (0: unlimited).",
		[]string{"pool"}, nil)
	descPoolWaits = prometheus.NewDesc("tasker_db_pool_waits_total", "Waits for a free database connection.",
		[]string{"pool"}, nil)
	descPoolWaitTime = prometheus.NewDesc("tasker_db_pool_wait_seconds_total", "Time spent waiting for a free database connection.",
		[]string{"pool"}, nil)
	descScrapeErrors = prometheus.NewDesc("tasker_scrape_errors", "Database reads that failed during this scrape.",
		nil, nil)
)

func (c *engineCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descTasks, descSteps, descQueueDepth, descQueueAge, descChanDepth, descChanCap,
		descChanSat, descChanCritical, descChanSent, descChanBlocked, descEvents, descPoolConns, descPoolMax,
		descPoolWaits, descPoolWaitTime, descScrapeErrors} {
		ch <- d
	}
}

func (c *engineCollector) Collect(ch chan<- prometheus.Metric) {
	// A collector gets no request context; bound the database reads so a
	// slow database cannot hold a scrape forever.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	eng := c.s.eng
	failures := 0
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	if counts, err := eng.StateCounts(ctx); err == nil {
		for _, sc := range counts {
			d := descTasks
			if sc.Kind == "step" {
				d = descSteps
			}
			gauge(d, float64(sc.Count), sc.Namespace, sc.State)
		}
	} else {
		failures++
		c.s.log.Warn("api: metrics: state counts", "error", err)
	}
	if qs, err := eng.QueueStats(ctx); err == nil {
		for _, q := range qs {
			gauge(descQueueDepth, float64(q.Visible), q.Queue, "visible")
			gauge(descQueueDepth, float64(q.Leased), q.Queue, "leased")
			gauge(descQueueAge, q.OldestAge.Seconds(), q.Queue)
		}
	} else {
		failures++
		c.s.log.Warn("api: metrics: queue stats", "error", err)
	}
	for _, cs := range c.s.channelStats() {
		gauge(descChanDepth, float64(cs.Depth), cs.Name)
		gauge(descChanCap, float64(cs.Capacity), cs.Name)
		gauge(descChanSat, cs.Saturation, cs.Name)
		critical := 0.0
		if cs.Level == "critical" {
			critical = 1
		}
		gauge(descChanCritical, critical, cs.Name)
		counter(descChanSent, float64(cs.Sent), cs.Name)
		counter(descChanBlocked, cs.BlockedTime.Seconds(), cs.Name)
	}
	es := eng.EventStats(ctx)
	for _, d := range []struct {
		name string
		c    tasker.EventCounters
	}{{"durable", es.Durable}, {"fast", es.Fast}} {
		counter(descEvents, float64(d.c.Published), d.name, "published")
		counter(descEvents, float64(d.c.Delivered), d.name, "delivered")
		counter(descEvents, float64(d.c.Dropped), d.name, "dropped")
		counter(descEvents, float64(d.c.Failed), d.name, "failed")
		counter(descEvents, float64(d.c.SchemaRejected), d.name, "schema_rejected")
		counter(descEvents, float64(d.c.Vetoed), d.name, "vetoed")
	}
	for _, p := range eng.PoolStats() {
		gauge(descPoolConns, float64(p.InUse), p.Pool, "in_use")
		gauge(descPoolConns, float64(p.Idle), p.Pool, "idle")
		gauge(descPoolMax, float64(p.MaxOpen), p.Pool)
		counter(descPoolWaits, float64(p.WaitCount), p.Pool)
		counter(descPoolWaitTime, p.WaitDuration.Seconds(), p.Pool)
	}
	gauge(descScrapeErrors, float64(failures))
}
