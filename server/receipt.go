package server

import (
	"fmt"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/custodyhq/custody/decisionlog"
	"github.com/custodyhq/custody/receipt"
)

// EndpointJWKS serves the public keys that verify decision receipts.
const EndpointJWKS = "/.well-known/jwks.json"

// HeaderReceipt carries an allow's receipt in the answer; the agent forwards it to the system it
// calls. receipt.Header has the same value.
const HeaderReceipt = "Custody-Receipt"

// HeaderReceiptAudience names, on POST /v1/authorize, the enforcement point the allow's receipt
// is for (its aud claim): a receipt for one gateway is then refused by every other.
const HeaderReceiptAudience = "Custody-Receipt-Audience"

// maxAudienceLen bounds an audience: a host name or URL.
const maxAudienceLen = 256

// ReceiptSigner signs receipts for allow decisions. *receipt.Issuer implements it.
type ReceiptSigner interface {
	Sign(r *decisionlog.Record, b receipt.Binding) (token string, expires time.Time, err error)
	TTL() time.Duration
	JWKS() ([]byte, error)
}

// WithReceipts makes every allow of POST /v1/authorize carry a signed receipt, and serves the
// verification keys at /.well-known/jwks.json.
func WithReceipts(r ReceiptSigner) Option { return func(s *Server) { s.receipts = r } }

// receiptCall is what an allow's receipt binds beyond its record: the call as the policy saw it
// (the record masks the arguments) and the audience the caller named.
type receiptCall struct {
	server   string
	args     map[string]any
	audience string
}

// receiptAudience reads the Custody-Receipt-Audience header: 1 to 256 visible ASCII characters,
// or absent. Checked before the decision, so a bad one is a 400 and never an allow.
func receiptAudience(c echo.Context) (string, *apiError) {
	v := c.Request().Header.Get(HeaderReceiptAudience)
	if v == "" {
		return "", nil
	}
	ok := len(v) <= maxAudienceLen
	for i := 0; ok && i < len(v); i++ {
		ok = v[i] >= 0x21 && v[i] <= 0x7e
	}
	if !ok {
		return "", errorf(CodeInvalidRequest, fmt.Sprintf("%s header: want 1 to %d visible ASCII characters", HeaderReceiptAudience, maxAudienceLen))
	}
	return v, nil
}

// receiptFor signs rec's receipt and sets it in the Custody-Receipt header. A decision already
// recorded stands: a signing failure is logged and the allow goes out without a receipt.
func (s *Server) receiptFor(c echo.Context, rec *decisionlog.Record, call receiptCall) string {
	if s.receipts == nil || !rec.Allow {
		return ""
	}
	tok, _, err := s.receipts.Sign(rec, receipt.Binding{
		Server:             call.server,
		Arguments:          call.args,
		DelegationVerified: delegationVerified(rec),
		Audience:           call.audience,
	})
	if err != nil {
		s.logger.Error().Err(err).Str("decision_id", rec.DecisionID).Msg("receipt not signed")
		return ""
	}
	c.Response().Header().Set(HeaderReceipt, tok)
	return tok
}

// delegationVerified says custody proved, rather than read in the body, who the decision's
// subject is and which agent acts for it: a token's act chain; a chain whose every link a
// credential verified (a token's subject and a client certificate's agent); or, with no agent
// acting for someone else, a token or certificate that proved the subject itself. An API key
// proves the caller, not on whose behalf it asks, so it proves no delegation.
func delegationVerified(rec *decisionlog.Record) bool {
	d := rec.Delegation
	if d.Verified {
		return true
	}
	if len(d.Chain) > 0 {
		for _, l := range d.Chain {
			m, ok := l.(map[string]any)
			if !ok {
				return false
			}
			if v, _ := m["verified_by"].(string); v == "" {
				return false
			}
		}
		return true
	}
	cl := rec.Caller
	if cl == nil || rec.Subject.ID == "" {
		return false
	}
	switch {
	case cl.Method == AuthJWT && cl.ID == rec.Subject.ID:
		return true
	case cl.Method == AuthMTLS && cl.ID == rec.Subject.ID, cl.Workload != "" && cl.Workload == rec.Subject.ID:
		return rec.Agent != nil && rec.Agent.ID == rec.Subject.ID // the agent acting for itself
	}
	return false
}

func (s *Server) jwks(c echo.Context) error {
	if s.receipts == nil {
		return errorf(CodeNotFound, "no receipt keys: this custody does not sign receipts")
	}
	b, err := s.receipts.JWKS()
	if err != nil {
		return err
	}
	c.Response().Header().Set("Cache-Control", "public, max-age=300")
	return c.Blob(http.StatusOK, "application/jwk-set+json", b)
}
