package server

import (
	"net/http"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
)

// EndpointPolicy serves the status of the policy set.
const EndpointPolicy = "/v1/policy"

// PolicyStatus is the body of GET /v1/policy: the policy set serving and the last attempt to
// replace it that failed.
type PolicyStatus struct {
	// Revision names the policy set that makes decisions, as every record does; empty while
	// none is loaded.
	Revision string `json:"revision"`
	// Source is where it came from: a path, or nats:<bucket>/<object>.
	Source string `json:"source"`
	// Query is the decision rule evaluated.
	Query string `json:"query,omitempty"`
	// LoadedAt is when the serving set was swapped in.
	LoadedAt time.Time `json:"loaded_at,omitzero"`
	// LastError says why the last refused policy set was refused, LastErrorAt when.
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
	// Reloads counts policy sets swapped in after the first; Failures counts those refused.
	Reloads  uint64 `json:"reloads"`
	Failures uint64 `json:"failures"`
	// Memo says whether repeated decisions are answered from memory ("on"), or why not;
	// InputPaths are then the parts of the input the policy set reads, which key the memo.
	Memo       string   `json:"memo,omitempty"`
	InputPaths []string `json:"input_paths,omitempty"`
	MemoHits   uint64   `json:"memo_hits"`
	MemoMisses uint64   `json:"memo_misses"`
}

// PolicyReporter reports the policy status. It must be cheap: /metrics calls it on every scrape.
type PolicyReporter interface {
	PolicyStatus() PolicyStatus
}

// PolicyReporterFunc adapts a function to PolicyReporter.
type PolicyReporterFunc func() PolicyStatus

// PolicyStatus calls f.
func (f PolicyReporterFunc) PolicyStatus() PolicyStatus { return f() }

// WithPolicyStatus serves GET /v1/policy from p and exports its reload counters as
// custody_policy_reloads_total and custody_policy_reload_failures_total. Without it there is no
// such endpoint.
func WithPolicyStatus(p PolicyReporter) Option { return func(s *Server) { s.policy = p } }

// routePolicy adds GET /v1/policy and the policy metrics when a PolicyReporter was given.
func (s *Server) routePolicy(e *echo.Echo) {
	if s.policy == nil {
		return
	}
	e.GET(EndpointPolicy, s.policyStatus)
	s.registry.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "custody_policy_reloads_total", Help: "Policy sets swapped in after the first, from a changed file or a pushed bundle.",
		}, func() float64 { return float64(s.policy.PolicyStatus().Reloads) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "custody_policy_reload_failures_total", Help: "Policy sets refused (unreadable, badly signed or not compiling); the previous one kept serving.",
		}, func() float64 { return float64(s.policy.PolicyStatus().Failures) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "custody_decision_memo_hits_total", Help: "Decisions answered from the decision memo, without evaluating the policy.",
		}, func() float64 { return float64(s.policy.PolicyStatus().MemoHits) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "custody_decision_memo_misses_total", Help: "Decisions evaluated while the decision memo was on.",
		}, func() float64 { return float64(s.policy.PolicyStatus().MemoMisses) }),
	)
}

func (s *Server) policyStatus(c echo.Context) error {
	c.Response().Header().Set("Cache-Control", "no-store")
	return c.JSON(http.StatusOK, s.policy.PolicyStatus())
}
