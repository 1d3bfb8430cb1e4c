package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/custodyhq/custody/agentcall"
	"github.com/custodyhq/custody/decisionlog"
	"github.com/custodyhq/custody/identity"
	"github.com/custodyhq/custody/pdp"
)

// Refused attempts (a caller that failed authentication) are recorded as a fixed summary
// (decisionlog.Refusal), never with their body, and at a bounded rate: each source has a token
// bucket, and all sources together a second one. An attempt beyond either is not recorded on
// its own but counted, and once per interval one aggregate record carries the count, so that no
// refusal goes uncounted while a flood of them costs the stream at most
// (GlobalBurst + Interval/GlobalEvery + 1) small records per interval. Decisions never wait on
// these limits: they apply to refusals only.

// RefusalLimits bound how many refused attempts are recorded one by one.
type RefusalLimits struct {
	// PerSourceBurst attempts of one source are recorded one by one, then one more every
	// PerSourceEvery.
	PerSourceBurst int
	PerSourceEvery time.Duration
	// GlobalBurst and GlobalEvery bound the same for all sources together.
	GlobalBurst int
	GlobalEvery time.Duration
	// Interval is how often the attempts beyond the limits are recorded as one aggregate.
	Interval time.Duration
}

// DefaultRefusalLimits record 10 attempts of a source and then one a minute, and at most 60 a
// minute in all (a refusal record is about 1 KiB: some 60 KiB a minute under any flood).
var DefaultRefusalLimits = RefusalLimits{
	PerSourceBurst: 10, PerSourceEvery: time.Minute,
	GlobalBurst: 60, GlobalEvery: time.Second,
	Interval: time.Minute,
}

// WithRefusalLimits sets the limits on recorded refusals. The default is DefaultRefusalLimits.
func WithRefusalLimits(l RefusalLimits) Option {
	return func(s *Server) { s.refusals = newRefusalLimiter(l) }
}

// WithRefusalRoom gives the server a check of whether the decision stream has room for
// refusals: room reports false once the stream is near its byte limit. Refusals are then only
// counted, and the count is recorded as one aggregate once there is room again, so that refused
// callers can never take the last of the stream's space from decisions. By default there is
// always room.
func WithRefusalRoom(room func() bool) Option {
	return func(s *Server) { s.refusalRoom = room }
}

// maxTrackedSources bounds the per-source buckets and the distinct sources an aggregate counts:
// past it, an unknown source is over its limit (and still counted).
const maxTrackedSources = 10000

// Caller kinds of a refusal: the credential presented, proven or not.
const (
	CallerAnonymous = "anonymous"
)

type bucket struct {
	tokens float64
	at     time.Time
}

// take spends a token, refilling one every every up to burst.
func (b *bucket) take(now time.Time, burst int, every time.Duration) bool {
	if b.at.IsZero() {
		b.tokens = float64(burst)
	} else if every > 0 && now.After(b.at) {
		b.tokens = min(float64(burst), b.tokens+float64(now.Sub(b.at))/float64(every))
	}
	b.at = now
	if b.tokens >= 1 {
		b.tokens--
		return true
	}
	return false
}

type refusalLimiter struct {
	mu      sync.Mutex
	lim     RefusalLimits
	sources map[string]*bucket
	global  bucket
	dropped uint64
	from    map[string]struct{}
	since   time.Time
	timer   *time.Timer
}

func newRefusalLimiter(l RefusalLimits) *refusalLimiter {
	if l.Interval <= 0 {
		l.Interval = DefaultRefusalLimits.Interval
	}
	return &refusalLimiter{lim: l, sources: map[string]*bucket{}, from: map[string]struct{}{}}
}

// admit reports whether an attempt from source is recorded on its own; when not, it is counted
// and first reports true for armed if the caller must arm the interval's flush.
func (l *refusalLimiter) admit(now time.Time, source string, room bool) (ok, arm bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !room {
		return false, l.count(now, source)
	}
	b := l.sources[source]
	if b == nil && len(l.sources) >= maxTrackedSources {
		for k, v := range l.sources { // forget sources whose bucket has refilled
			if l.lim.PerSourceEvery > 0 && now.Sub(v.at) >= time.Duration(l.lim.PerSourceBurst)*l.lim.PerSourceEvery {
				delete(l.sources, k)
			}
		}
	}
	if b == nil && len(l.sources) < maxTrackedSources {
		b = &bucket{}
		l.sources[source] = b
	}
	if b != nil && b.take(now, l.lim.PerSourceBurst, l.lim.PerSourceEvery) && l.global.take(now, l.lim.GlobalBurst, l.lim.GlobalEvery) {
		return true, false
	}
	return false, l.count(now, source)
}

// count adds an attempt to the next aggregate, reporting whether it is the first of one (the
// caller then arms the interval's flush). l.mu is held.
func (l *refusalLimiter) count(now time.Time, source string) (arm bool) {
	if l.dropped == 0 {
		l.since, arm = now, true
	}
	l.dropped++
	if len(l.from) < maxTrackedSources {
		l.from[source] = struct{}{}
	}
	return arm
}

// restore puts an aggregate that could not be recorded back into the count, so that its
// attempts are recorded with the next one.
func (l *refusalLimiter) restore(agg *decisionlog.Refusal) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.dropped == 0 || (agg.Since != nil && agg.Since.Before(l.since)) {
		l.since = *agg.Since
	}
	l.dropped += agg.Count
}

// due takes the aggregate of the attempts counted so far once the interval is over (or always,
// with force); nil when none is due.
func (l *refusalLimiter) due(now time.Time, force bool) *decisionlog.Refusal {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.dropped == 0 || (!force && now.Sub(l.since) < l.lim.Interval) {
		return nil
	}
	since := l.since
	agg := &decisionlog.Refusal{Code: decisionlog.ReasonRefusalsDropped, CallerKind: "any", Count: l.dropped, Sources: len(l.from), Since: &since}
	l.dropped, l.from = 0, map[string]struct{}{}
	return agg
}

// refuseAttempt records, within the limits, the refusal of a caller that failed authentication
// on endpoint: claimed is the call its body claims, nil when the body did not decode. When the
// attempt is recorded on its own, cause then carries the record's IDs.
func (s *Server) refuseAttempt(c echo.Context, endpoint string, claimed *agentcall.Call, cause *apiError) {
	req := c.Request()
	now := s.now()
	if agg := s.refusals.due(now, false); agg != nil {
		s.publishAggregate(req.Context(), agg)
	}
	source := sourceOf(req)
	ok, arm := s.refusals.admit(now, source, s.roomForRefusals())
	if arm {
		s.refusals.mu.Lock()
		if s.refusals.timer != nil {
			s.refusals.timer.Stop()
		}
		// The interval's count is recorded even when no attempt follows it.
		s.refusals.timer = time.AfterFunc(s.refusals.lim.Interval, func() {
			if agg := s.refusals.due(s.now(), true); agg != nil {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				s.publishAggregate(ctx, agg)
			}
		})
		s.refusals.mu.Unlock()
	}
	if !ok {
		s.logger.Debug().Str("endpoint", endpoint).Str("code", cause.Code).Msg("refused attempt over the rate limit; counted for the aggregate record")
		return
	}
	rec := s.refusalSummary(endpoint, &decisionlog.Refusal{
		Code: cause.Code, CallerKind: presentedKind(req), Source: source, Claimed: s.claimedIDs(claimed), Count: 1,
	})
	if id := req.Header.Get(HeaderRequestID); validHeaderID(id) {
		rec.RequestID = id
	} else if id, ok := c.Get(HeaderRequestID).(string); ok {
		rec.RequestID = id
	}
	if tc, ok := parseTraceparent(req.Header.Get(HeaderTraceparent)); ok {
		rec.TraceID, rec.SpanID = tc.TraceID, tc.SpanID
	}
	if s.record(c, rec) == nil {
		cause.denied = &deniedDecision{decisionID: rec.DecisionID, correlationID: rec.CorrelationID}
	}
}

// refusalSummary is the record of a refused attempt: the summary and what the server itself
// knows (IDs, time, policy), nothing the body said.
func (s *Server) refusalSummary(endpoint string, r *decisionlog.Refusal) *decisionlog.Record {
	rec := &decisionlog.Record{
		Schema:        decisionlog.SchemaDecisionV1,
		DecisionID:    s.newID(),
		Timestamp:     s.now().UTC(),
		CorrelationID: s.newID(), // a refused caller's own correlation ID is not taken
		Endpoint:      endpoint,
		Delegation:    pdp.Delegation{Chain: []any{}},
		Reasons:       []string{refusalReason(r.Code)},
		Error:         refusalText(r.Code),
		PDP:           s.instance,
		Refusal:       r,
	}
	if pol, ok := s.decider.(interface{ Policy() pdp.PolicyInfo }); ok {
		p := pol.Policy()
		rec.Policy = decisionlog.PolicyRef{Query: p.Query, Revision: p.Revision}
	}
	return rec
}

func (s *Server) publishAggregate(ctx context.Context, agg *decisionlog.Refusal) {
	if !s.roomForRefusals() {
		s.refusals.restore(agg) // recorded once the stream has room again
		s.logger.Warn().Uint64("count", agg.Count).Msg("decision stream near its byte limit: refusals are only counted until it has room")
		return
	}
	rec := s.refusalSummary("", agg)
	rec.Reasons = []string{decisionlog.ReasonRefusalsDropped}
	if err := s.publisher.Publish(ctx, rec); err != nil {
		s.logger.Error().Err(err).Uint64("count", agg.Count).Msg("aggregate of rate-limited refusals not recorded")
	}
}

func (s *Server) roomForRefusals() bool { return s.refusalRoom == nil || s.refusalRoom() }

// refusalText is the recorded error of a refusal: fixed per code, since a verifier's message
// can repeat what the credential claimed.
func refusalText(code string) string {
	switch code {
	case CodeInvalidToken:
		return "bearer token refused"
	case CodeInvalidCredentials:
		return "API key refused"
	case CodeUnauthenticated:
		return "no credential presented where one is required"
	case decisionlog.ReasonRefusalsDropped:
		return "refused attempts beyond the rate limit, counted"
	default:
		return "refused: " + code
	}
}

// claimedIDs hashes the IDs call claims with the intent hasher's key, each under its own label
// so that one ID hashes differently as a subject, an agent or an intent.
func (s *Server) claimedIDs(call *agentcall.Call) *decisionlog.ClaimedIDs {
	if call == nil {
		return nil
	}
	sum := func(label, v string) string {
		if v == "" {
			return ""
		}
		return s.intent.Sum("custody.claimed." + label + "\x00" + v)
	}
	ids := &decisionlog.ClaimedIDs{Action: sum("action", call.Action.Name)}
	if call.Subject != nil {
		ids.Subject = sum("subject", call.Subject.ID)
	}
	if call.Agent != nil {
		ids.Agent = sum("agent", call.Agent.ID)
	}
	if *ids == (decisionlog.ClaimedIDs{}) {
		return nil
	}
	return ids
}

// sourceOf is the peer address of req, without its port. Forwarding headers are not read: the
// caller writes them, and rotating them would give each attempt a fresh bucket.
func sourceOf(req *http.Request) string {
	host, _, err := net.SplitHostPort(req.RemoteAddr)
	if err != nil {
		host = req.RemoteAddr
	}
	return truncate(host, 64)
}

// presentedKind names the credential req presents, whether or not it verified.
func presentedKind(req *http.Request) string {
	if h := req.Header.Get("Authorization"); h != "" {
		if _, v, ok := strings.Cut(h, " "); ok && identity.LooksLikeJWT(strings.TrimSpace(v)) {
			return AuthJWT
		}
		return AuthAPIKey
	}
	if req.Header.Get(HeaderAPIKey) != "" {
		return AuthAPIKey
	}
	if req.TLS != nil && len(req.TLS.PeerCertificates) > 0 {
		return AuthMTLS
	}
	return CallerAnonymous
}

// maxRefusedRecordBytes bounds the record of a refused authenticated call (an impersonation
// attempt): it is kept as evidence, in full up to this size.
const maxRefusedRecordBytes = 64 << 10

// boundRecord replaces the free-form properties of rec with their size and digest when rec would
// be larger than maxRefusedRecordBytes.
func boundRecord(rec *decisionlog.Record) {
	b, err := json.Marshal(rec)
	if err != nil || len(b) <= maxRefusedRecordBytes {
		return
	}
	digest := func(m map[string]any) map[string]any {
		if len(m) == 0 {
			return m
		}
		raw, _ := json.Marshal(m)
		sum := sha256.Sum256(raw)
		return map[string]any{"custody_truncated": map[string]any{"bytes": len(raw), "sha256": hex.EncodeToString(sum[:])}}
	}
	rec.Subject.Properties = digest(rec.Subject.Properties)
	rec.Action.Properties = digest(rec.Action.Properties)
	rec.Resource.Properties = digest(rec.Resource.Properties)
	if rec.Agent != nil {
		rec.Agent.Properties = digest(rec.Agent.Properties)
	}
}
