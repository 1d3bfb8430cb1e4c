package server

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/custodyhq/custody/pdp"
)

// Searcher lists the candidates a policy set offers for an AuthZEN search (see pdp.SearchRoot);
// the server decides each candidate with the Decider and answers with the permitted ones.
// *pdp.Engine implements it. A Decider that is not also a Searcher serves no search endpoints.
type Searcher interface {
	Candidates(ctx context.Context, kind pdp.SearchKind, in *pdp.Input) ([]any, error)
}

var _ Searcher = (*pdp.Engine)(nil)

// Bounds of one search request.
const (
	// DefaultSearchLimit is the page size when the request names no page.limit, or 0.
	DefaultSearchLimit = 100
	// MaxSearchLimit caps page.limit.
	MaxSearchLimit = 1000
	// MaxSearchEvaluations caps the candidates one request decides. A page that reaches it
	// before it is full ends early, with a next_token to go on from there.
	MaxSearchEvaluations = 1000
)

// searchBody is an AuthZEN Search API response. page comes first, as the spec recommends.
type searchBody struct {
	Page    *pageBody      `json:"page,omitempty"`
	Context map[string]any `json:"context,omitempty"`
	Results []any          `json:"results"`
}

type pageBody struct {
	NextToken string `json:"next_token"`
	Count     int    `json:"count"`
}

func (s *Server) searchSubject(c echo.Context) error {
	return s.search(c, pdp.SearchSubjects, EndpointSearchSubject)
}

func (s *Server) searchResource(c echo.Context) error {
	return s.search(c, pdp.SearchResources, EndpointSearchResource)
}

func (s *Server) searchAction(c echo.Context) error {
	return s.search(c, pdp.SearchActions, EndpointSearchAction)
}

// search serves one of the Search APIs: it asks the policy set for the candidates of kind, decides
// each one from the page's offset on as its own recorded decision, and answers with the permitted
// ones in the policy set's order.
func (s *Server) search(c echo.Context, kind pdp.SearchKind, endpoint string) error {
	searcher, ok := s.decider.(Searcher)
	if !ok {
		return errorf(CodeNotFound, "search is not supported by this PDP: "+c.Request().Method+" "+c.Request().URL.Path)
	}
	var (
		req    *searchRequest
		fp     string
		offset int
	)
	x, aerr := s.begin(c, endpoint, func(body []byte) (decoded, *apiError) {
		var err *apiError
		if req, err = decodeSearch(kind, body); err != nil {
			return decoded{}, err
		}
		intentSum := ""
		if req.lift.task != nil {
			intentSum = s.intent.Sum(req.lift.task.Intent)
		}
		fp = req.fingerprint(intentSum)
		if req.page != nil && req.page.token != "" {
			if offset, err = parsePageToken(req.page.token, fp); err != nil {
				return decoded{}, err
			}
		}
		return decoded{correlationID: req.lift.correlationID, claimed: authzenCall(req.item, req.lift)}, nil
	})
	if aerr != nil {
		return aerr
	}
	meta := x.meta
	base := x.input(authzenCall(req.item, req.lift), &meta)
	if err := applyIdentity(base, x.caller, true); err != nil {
		return x.refuse(base, err, meta).answerError()
	}
	raw, err := searcher.Candidates(c.Request().Context(), kind, base)
	if err != nil {
		s.logger.Error().Err(err).Str("request_id", meta.requestID).Str("query", kind.Query()).Msg("search candidates failed")
		return errorf(CodeInternal, "the policy set's "+kind.Query()+" could not be evaluated")
	}
	cands := s.candidates(kind, req.item, raw, meta.requestID)

	limit := DefaultSearchLimit
	if req.page != nil && req.page.limit != nil && *req.page.limit > 0 {
		limit = int(min(*req.page.limit, MaxSearchLimit))
	}
	var (
		results   = []any{}
		decided   []*outcome
		evaluated []any
		pos       = min(offset, len(cands))
	)
	for len(results) < limit && pos < len(cands) && len(decided) < MaxSearchEvaluations {
		// Never decide more candidates than the page can still take, so that every decision
		// made is one the answer accounts for.
		window := cands[pos:min(pos+limit-len(results), len(cands), pos+MaxSearchEvaluations-len(decided))]
		outs := runBounded(len(window), func(i int) *outcome {
			it := req.item
			switch kind {
			case pdp.SearchSubjects:
				it.Subject = window[i].(pdp.Entity)
			case pdp.SearchResources:
				it.Resource = window[i].(pdp.Entity)
			case pdp.SearchActions:
				it.Action = window[i].(pdp.Action)
			}
			return x.decideCall(authzenCall(it, req.lift), true)
		})
		if err := unrecorded(outs); err != nil {
			return err
		}
		for i, o := range outs {
			decided = append(decided, o)
			evaluated = append(evaluated, window[i])
			if o.rec.Allow {
				results = append(results, window[i])
			}
		}
		pos += len(window)
	}

	res := searchBody{Results: results}
	next := ""
	if pos < len(cands) {
		next = pageToken{Offset: pos, Fingerprint: fp}.encode()
	}
	if req.page != nil || next != "" {
		res.Page = &pageBody{NextToken: next, Count: len(results)}
	}
	if req.opts.includeReasons {
		list := make([]any, len(decided))
		for i, o := range decided {
			list[i] = map[string]any{
				"decision_id":                         o.rec.DecisionID,
				"decision":                            o.rec.Allow,
				"reasons":                             o.rec.Reasons,
				strings.TrimSuffix(string(kind), "s"): evaluated[i],
			}
		}
		res.Context = map[string]any{"decisions": list}
	}
	if len(decided) > 0 {
		ids := make([]string, len(decided))
		for i, o := range decided {
			ids[i] = o.rec.DecisionID
		}
		c.Response().Header().Set(HeaderDecisionID, strings.Join(ids, ", "))
	}
	return c.JSON(http.StatusOK, res)
}

// candidates keeps the well-formed candidates of the searched type, as entities (pdp.Entity for
// subjects and resources, pdp.Action for actions). A malformed candidate is a mistake in the
// policy set: it is skipped and logged, never guessed at.
func (s *Server) candidates(kind pdp.SearchKind, it evalItem, raw []any, requestID string) []any {
	out := make([]any, 0, len(raw))
	skipped := 0
	for _, v := range raw {
		switch kind {
		case pdp.SearchActions:
			a, err := actionAt("candidate", v)
			if err != nil {
				skipped++
				continue
			}
			out = append(out, a)
		default:
			e, err := entityAt("candidate", v, true)
			if err != nil {
				skipped++
				continue
			}
			want := it.Subject.Type
			if kind == pdp.SearchResources {
				want = it.Resource.Type
			}
			if e.Type == want {
				out = append(out, e)
			}
		}
	}
	if skipped > 0 {
		s.logger.Warn().Str("request_id", requestID).Str("query", kind.Query()).Int("skipped", skipped).Msg("malformed search candidates skipped")
	}
	return out
}

// fingerprint identifies a search across its pages: every entity and the page limit, which the
// spec requires to stay the same while the token changes. A task's intent counts by its keyed
// hash, intentSum, so that no token is a plain hash over prompt text.
func (r *searchRequest) fingerprint(intentSum string) string {
	v := map[string]any{
		"kind":     r.kind,
		"subject":  r.item.Subject,
		"action":   r.item.Action,
		"resource": r.item.Resource,
		"context":  withoutIntent(r.item.Context),
		"intent":   intentSum,
	}
	if r.page != nil && r.page.limit != nil {
		v["limit"] = *r.page.limit
	}
	raw, err := json.Marshal(v) // map keys are sorted: the same request gives the same bytes
	if err != nil {             // decoded JSON always re-encodes
		raw = []byte(err.Error())
	}
	sum := sha256.Sum256(raw)
	return hex.EncodeToString(sum[:12])
}

// pageToken is the opaque next_token: where the next page starts in the candidate list, and the
// fingerprint of the search it continues. It needs no secret: a forged token can only move the
// start, and every candidate is decided anyway.
type pageToken struct {
	Offset      int    `json:"o"`
	Fingerprint string `json:"f"`
}

func (t pageToken) encode() string {
	raw, _ := json.Marshal(t) // two plain fields cannot fail
	return base64.RawURLEncoding.EncodeToString(raw)
}

func parsePageToken(token, fingerprint string) (int, *apiError) {
	bad := errorf(CodeInvalidRequest, "page.token: not a next_token of this search; a continued search must send the same subject, action, resource, context and page.limit as the request that returned the token")
	raw, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil {
		return 0, bad
	}
	var t pageToken
	if err := json.Unmarshal(raw, &t); err != nil || t.Offset < 0 || t.Fingerprint != fingerprint {
		return 0, bad
	}
	return t.Offset, nil
}
