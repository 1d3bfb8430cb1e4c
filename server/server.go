package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"runtime/debug"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"

	"github.com/custodyhq/custody/decisionlog"
	"github.com/custodyhq/custody/pdp"
)

// Decider decides one request. *pdp.Engine implements it.
type Decider interface {
	Decide(ctx context.Context, in *pdp.Input) pdp.Decision
}

// Degraded wraps what a ReadyCheck wants shown in /readyz without failing it: something an
// operator must see (a record JetStream refused for good) that does not stop decisions from
// being recorded now.
func Degraded(err error) error { return degraded{err} }

type degraded struct{ err error }

func (d degraded) Error() string { return d.err.Error() }
func (d degraded) Unwrap() error { return d.err }

// ReadyCheck reports whether a dependency can serve; a non-nil error makes /readyz fail.
type ReadyCheck func(ctx context.Context) error

// Header names the API reads and echoes.
const (
	HeaderRequestID     = "X-Request-ID"
	HeaderCorrelationID = "X-Correlation-ID"
	HeaderTraceparent   = "traceparent"
)

// Server is the HTTP API. Create it with New and serve Handler.
type Server struct {
	decider   Decider
	publisher decisionlog.Publisher
	intent    *decisionlog.IntentHasher

	logger   zerolog.Logger
	now      func() time.Time
	newID    func() string
	instance decisionlog.Instance
	maxBody  int64
	ready    map[string]ReadyCheck
	registry *prometheus.Registry
	metrics  *metrics
	policy   PolicyReporter // serves GET /v1/policy when set
	// publicURL is the base URL AuthZEN metadata names; "" derives it from each request.
	publicURL string

	tokens      TokenVerifier
	apiKeys     APIKeyLookup
	requireAuth bool
	// allowedHosts are further Host names the API answers to (host.go).
	allowedHosts []string

	// Execution reports and receipts (execution.go, receipt.go).
	receipts   ReceiptSigner
	rkeys      receiptKeyCache
	lookup     DecisionLookup
	execWindow time.Duration
	recent     *decisionCache

	vault IntentVault // the intent vault (unseal.go), when serve runs with --intent-vault
	// Approvals (approval.go).
	approvalCfg ApprovalConfig
	approvals   *approvalStore
	refusals    *refusalLimiter // refusal.go
	refusalRoom func() bool     // nil: always room (refusal.go)

	echo *echo.Echo
	// echoJSON makes answerJSON answer through echo's c.JSON: tests hold the encoders to it.
	echoJSON bool
}

// Option configures a Server.
type Option func(*Server)

// WithLogger sets the logger. The default discards.
func WithLogger(l zerolog.Logger) Option { return func(s *Server) { s.logger = l } }

// WithClock sets the clock that stamps records.
func WithClock(now func() time.Time) Option { return func(s *Server) { s.now = now } }

// WithIDFunc sets the generator of decision, correlation and request IDs. The default makes UUIDv7s.
func WithIDFunc(f func() string) Option { return func(s *Server) { s.newID = f } }

// WithInstance names this custody process in every record.
func WithInstance(i decisionlog.Instance) Option { return func(s *Server) { s.instance = i } }

// WithMaxBodyBytes bounds request bodies. The default is DefaultMaxBodyBytes.
func WithMaxBodyBytes(n int64) Option { return func(s *Server) { s.maxBody = n } }

// WithReadyCheck adds a named check to /readyz.
func WithReadyCheck(name string, check ReadyCheck) Option {
	return func(s *Server) { s.ready[name] = check }
}

// WithRegistry registers the server's metrics in reg and serves reg at /metrics. The default is a
// fresh registry.
func WithRegistry(reg *prometheus.Registry) Option { return func(s *Server) { s.registry = reg } }

// WithPublicURL sets the base URL, such as https://pdp.example.com, that the AuthZEN metadata
// document names as policy_decision_point and builds its endpoint URLs from. The default is the
// scheme and host each client reached, which is wrong behind a proxy that rewrites either.
func WithPublicURL(u string) Option {
	return func(s *Server) { s.publicURL = strings.TrimRight(u, "/") }
}

// New returns a server that decides with decider, records with publisher, and hashes task
// intents with intent.
func New(decider Decider, publisher decisionlog.Publisher, intent *decisionlog.IntentHasher, opts ...Option) *Server {
	s := &Server{
		decider:   decider,
		publisher: publisher,
		intent:    intent,
		logger:    zerolog.Nop(),
		now:       time.Now,
		newID:     NewUUIDv7,
		maxBody:   DefaultMaxBodyBytes,
		ready:     map[string]ReadyCheck{},
		refusals:  newRefusalLimiter(DefaultRefusalLimits),
	}
	for _, o := range opts {
		o(s)
	}
	s.logger = s.logger.With().Str("component", "server").Logger()
	if s.registry == nil {
		s.registry = prometheus.NewRegistry()
	}
	s.metrics = newMetrics(s.registry)
	s.recent = newDecisionCache(DefaultDecisionCacheSize)
	s.approvals = newApprovalStore(s.approvalCfg)

	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = s.handleError
	e.Use(s.recoverer, s.requestID, s.checkHost, s.instrument)
	e.POST("/v1/authorize", s.authorize)
	e.POST(EndpointExecutions, s.executions)
	e.POST(EndpointUnseal, s.unseal)
	e.GET(EndpointJWKS, s.jwks)
	e.POST(EndpointEvaluation, s.evaluation)
	e.POST(EndpointEvaluations, s.evaluations)
	e.POST(EndpointSearchSubject, s.searchSubject)
	e.POST(EndpointSearchResource, s.searchResource)
	e.POST(EndpointSearchAction, s.searchAction)
	e.GET(EndpointAuthZENConfig, s.authzenConfiguration)
	e.GET("/healthz", s.healthz)
	e.GET("/readyz", s.readyz)
	s.routePolicy(e)
	s.routeApprovals(e)
	e.GET("/metrics", echo.WrapHandler(promhttp.HandlerFor(s.registry, promhttp.HandlerOpts{})))
	s.echo = e
	return s
}

// Handler returns the HTTP handler serving the API.
func (s *Server) Handler() http.Handler { return s.echo }

// NewUUIDv7 returns a time-ordered UUID, so that IDs sort by creation in logs and streams.
func NewUUIDv7() string {
	id, err := uuid.NewV7()
	if err != nil { // only when the system's random source fails
		return uuid.NewString()
	}
	return id.String()
}

// requestID echoes a valid X-Request-ID, or mints one, on every response.
func (s *Server) requestID(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		id := c.Request().Header.Get(HeaderRequestID)
		if !validHeaderID(id) {
			id = s.newID()
		}
		c.Set(HeaderRequestID, id)
		c.Response().Header().Set(HeaderRequestID, id)
		if cid := c.Request().Header.Get(HeaderCorrelationID); validHeaderID(cid) {
			c.Response().Header().Set(HeaderCorrelationID, cid)
		}
		return next(c)
	}
}

// recoverer turns a panic into a 500 with the standard error body. A panic is never an allow.
func (s *Server) recoverer(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) (err error) {
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				s.logger.Error().Str("panic", fmt.Sprint(p)).Bytes("stack", debug.Stack()).Msg("handler panicked")
				err = errorf(CodeInternal, "internal error")
			}
		}()
		return next(c)
	}
}

func (s *Server) healthz(c echo.Context) error {
	return c.JSON(http.StatusOK, map[string]string{"status": "ok"})
}

func (s *Server) readyz(c echo.Context) error {
	ctx, cancel := context.WithTimeout(c.Request().Context(), 2*time.Second)
	defer cancel()
	checks := map[string]string{}
	var failed []error
	for name, check := range s.ready {
		if err := check(ctx); err != nil {
			var d degraded
			if errors.As(err, &d) {
				checks[name] = "degraded: " + d.err.Error() // shown, still ready
				continue
			}
			checks[name] = err.Error()
			failed = append(failed, fmt.Errorf("%s: %w", name, err))
			continue
		}
		checks[name] = "ok"
	}
	if len(failed) > 0 {
		return c.JSON(http.StatusServiceUnavailable, map[string]any{
			"status": "not_ready",
			"checks": checks,
			"error":  &apiError{Code: CodeNotReady, Message: errors.Join(failed...).Error()},
		})
	}
	return c.JSON(http.StatusOK, map[string]any{"status": "ready", "checks": checks})
}
