package server

import (
	"net/http"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/custodyhq/custody/decisionlog"
)

// EndpointJWKS serves the public keys that verify decision receipts.
const EndpointJWKS = "/.well-known/jwks.json"

// HeaderReceipt carries an allow's receipt in the answer; the agent forwards it to the system it
// calls. receipt.Header has the same value.
const HeaderReceipt = "Custody-Receipt"

// ReceiptSigner signs receipts for allow decisions. *receipt.Issuer implements it.
type ReceiptSigner interface {
	Sign(r *decisionlog.Record) (token string, expires time.Time, err error)
	TTL() time.Duration
	JWKS() ([]byte, error)
}

// WithReceipts makes every allow of POST /v1/authorize carry a signed receipt, and serves the
// verification keys at /.well-known/jwks.json.
func WithReceipts(r ReceiptSigner) Option { return func(s *Server) { s.receipts = r } }

// receiptFor signs rec's receipt and sets it in the Custody-Receipt header. A decision already
// recorded stands: a signing failure is logged and the allow goes out without a receipt.
func (s *Server) receiptFor(c echo.Context, rec *decisionlog.Record) string {
	if s.receipts == nil || !rec.Allow {
		return ""
	}
	tok, _, err := s.receipts.Sign(rec)
	if err != nil {
		s.logger.Error().Err(err).Str("decision_id", rec.DecisionID).Msg("receipt not signed")
		return ""
	}
	c.Response().Header().Set(HeaderReceipt, tok)
	return tok
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
