package server

import (
	"strconv"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

type metrics struct {
	requests     *prometheus.CounterVec
	duration     *prometheus.HistogramVec
	decisions    *prometheus.CounterVec
	logFailures  prometheus.Counter
	tooLarge     prometheus.Counter
	policyErrors prometheus.Counter
	evalDuration prometheus.Histogram
	// recordDuration is the publish latency of decision records.
	recordDuration prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "custody_http_requests_total", Help: "HTTP requests by route and status code.",
		}, []string{"route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "custody_http_request_duration_seconds", Help: "HTTP request latency by route, including the wait for the decision record.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"route"}),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "custody_decisions_total", Help: "Recorded decisions by endpoint and outcome.",
		}, []string{"endpoint", "outcome"}),
		logFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "custody_decision_log_failures_total", Help: "Decisions answered with 503 because their record could not be made durable.",
		}),
		tooLarge: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "custody_decision_records_too_large_total", Help: "Decisions answered with 503 because their record would exceed the NATS server's max payload (also counted in custody_decision_log_failures_total).",
		}),
		policyErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "custody_policy_errors_total", Help: "Evaluations that failed and were denied with policy_error.",
		}),
		evalDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "custody_policy_eval_duration_seconds", Help: "Time spent evaluating the decision rule.",
			Buckets: []float64{.00001, .000025, .00005, .0001, .00025, .0005, .001, .0025, .005, .01, .1},
		}),
		recordDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "custody_decision_record_duration_seconds", Help: "Time to make a decision record durable (spool fsync or JetStream ack), successful or not.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .5, 1, 5},
		}),
	}
	reg.MustRegister(m.recordDuration, m.requests, m.duration, m.decisions, m.logFailures, m.tooLarge, m.policyErrors, m.evalDuration,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (s *Server) instrument(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		start := time.Now()
		err := next(c)
		if err != nil {
			c.Error(err) // render now so the status below is the one sent
		}
		route := c.Path()
		if route == "" {
			route = "unmatched"
		}
		s.metrics.requests.WithLabelValues(route, strconv.Itoa(c.Response().Status)).Inc()
		s.metrics.duration.WithLabelValues(route).Observe(time.Since(start).Seconds())
		return nil
	}
}
