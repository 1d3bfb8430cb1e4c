package server

import (
	"errors"
	"net/http"

	"github.com/labstack/echo/v4"
)

// Stable error codes. Clients branch on these; never rename one.
const (
	CodeInvalidJSON            = "invalid_json"
	CodeInvalidRequest         = "invalid_request"
	CodeBodyTooLarge           = "body_too_large"
	CodeUnsupportedMediaType   = "unsupported_media_type"
	CodeDecisionLogUnavailable = "decision_log_unavailable"
	// CodeDecisionRecordTooLarge: the decision's record would not fit one NATS message, so it
	// cannot be recorded and is a deny. Retrying the same call does not help.
	CodeDecisionRecordTooLarge = "decision_record_too_large"
	CodeNotFound               = "not_found"
	CodeMethodNotAllowed       = "method_not_allowed"
	CodeNotReady               = "not_ready"
	CodeUnauthenticated        = "unauthenticated"
	CodeInvalidToken           = "invalid_token"
	CodeInvalidCredentials     = "invalid_credentials"
	CodeIdentityMismatch       = "identity_mismatch"
	CodeInternal               = "internal_error"
	CodeUnverifiedDecision     = "unverified_decision"
	// CodeReportNotAuthorized: an execution report from neither the decision's caller nor a
	// holder of its receipt.
	CodeReportNotAuthorized = "report_not_authorized"
	// Approvals (approval.go).
	CodeServerControlledField = "server_controlled_field"
	CodeApprovalInvalid       = "approval_invalid"
	CodeApprovalClosed        = "approval_closed"
	CodeNotApprover           = "not_approver"
	CodeSelfApproval          = "self_approval"
	CodeApprovalLinkInvalid   = "approval_link_invalid"
	// CodeSubjectNotAllowed: a valid token names a subject or actor its issuer may not vouch for.
	CodeSubjectNotAllowed = "subject_not_allowed"
	// CodeMisdirectedRequest: the Host header names neither this server nor its public URL.
	CodeMisdirectedRequest = "misdirected_request"
	// CodeUnknownField: a native body has a member its endpoint does not define (names are
	// case-exact). The error's field names it.
	CodeUnknownField = "unknown_field"
	// CodeDuplicateField: an object has the same member twice, or twice in different case.
	CodeDuplicateField = "duplicate_field"
	// CodeNestingTooDeep: the body nests objects and arrays deeper than MaxNestingDepth.
	CodeNestingTooDeep = "nesting_too_deep"
	// CodeNumberOutOfRange: a number is not a finite float64 (such as 1e400).
	CodeNumberOutOfRange = "number_out_of_range"
)

// statusOf is the one table from error code to HTTP status.
var statusOf = map[string]int{
	CodeInvalidJSON:            http.StatusBadRequest,
	CodeInvalidRequest:         http.StatusBadRequest,
	CodeBodyTooLarge:           http.StatusRequestEntityTooLarge,
	CodeUnsupportedMediaType:   http.StatusUnsupportedMediaType,
	CodeDecisionLogUnavailable: http.StatusServiceUnavailable,
	CodeDecisionRecordTooLarge: http.StatusServiceUnavailable,
	CodeNotFound:               http.StatusNotFound,
	CodeMethodNotAllowed:       http.StatusMethodNotAllowed,
	CodeNotReady:               http.StatusServiceUnavailable,
	CodeUnauthenticated:        http.StatusUnauthorized,
	CodeInvalidToken:           http.StatusUnauthorized,
	CodeInvalidCredentials:     http.StatusUnauthorized,
	CodeIdentityMismatch:       http.StatusBadRequest,
	CodeInternal:               http.StatusInternalServerError,
	CodeUnverifiedDecision:     http.StatusConflict,
	CodeReportNotAuthorized:    http.StatusForbidden,
	CodeServerControlledField:  http.StatusBadRequest,
	CodeApprovalInvalid:        http.StatusConflict,
	CodeApprovalClosed:         http.StatusConflict,
	CodeNotApprover:            http.StatusForbidden,
	CodeSelfApproval:           http.StatusForbidden,
	CodeApprovalLinkInvalid:    http.StatusForbidden,
	CodeSubjectNotAllowed:      http.StatusForbidden,
	CodeMisdirectedRequest:     http.StatusMisdirectedRequest,
	CodeUnknownField:           http.StatusBadRequest,
	CodeDuplicateField:         http.StatusBadRequest,
	CodeNestingTooDeep:         http.StatusBadRequest,
	CodeNumberOutOfRange:       http.StatusBadRequest,
}

// apiError is an error with a stable code, rendered as {"error":{"code","message"}}.
type apiError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	// Field names the member at fault, by path (tool.arguments.to, evaluations[2].subject), when
	// the error is about one member of the body.
	Field string `json:"field,omitempty"`
	// denied is set when the error stands for a decision that is answered as a deny.
	denied *deniedDecision
}

type deniedDecision struct{ decisionID, correlationID string }

func (e *apiError) Error() string { return e.Code + ": " + e.Message }

func errorf(code, message string) *apiError { return &apiError{Code: code, Message: message} }

// errorBody is the JSON shape of every error answer. A deny that could not be recorded also
// carries the decision's IDs and allow:false, so that a client reading only "allow" still denies.
type errorBody struct {
	Error         *apiError `json:"error"`
	Allow         *bool     `json:"allow,omitempty"`
	DecisionID    string    `json:"decision_id,omitempty"`
	CorrelationID string    `json:"correlation_id,omitempty"`
}

func writeError(c echo.Context, e *apiError) error {
	body := errorBody{Error: e}
	if e.denied != nil {
		deny := false
		body.Allow, body.DecisionID, body.CorrelationID = &deny, e.denied.decisionID, e.denied.correlationID
	}
	status := statusCode(e.Code)
	if status == http.StatusUnauthorized {
		c.Response().Header().Set("WWW-Authenticate", wwwAuthenticate(e.Code))
	}
	return c.JSON(status, body)
}

func statusCode(code string) int {
	if s, ok := statusOf[code]; ok {
		return s
	}
	return http.StatusInternalServerError
}

// handleError renders errors that escape handlers, including echo's own 404 and 405.
func (s *Server) handleError(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	var ae *apiError
	var he *echo.HTTPError
	switch {
	case errors.As(err, &ae):
	case errors.As(err, &he) && he.Code == http.StatusNotFound:
		ae = errorf(CodeNotFound, "no such endpoint: "+c.Request().Method+" "+c.Request().URL.Path)
	case errors.As(err, &he) && he.Code == http.StatusMethodNotAllowed:
		ae = errorf(CodeMethodNotAllowed, "method "+c.Request().Method+" not allowed on "+c.Request().URL.Path)
	case errors.As(err, &he) && he.Code == http.StatusRequestEntityTooLarge:
		ae = errorf(CodeBodyTooLarge, "request body too large")
	default:
		s.logger.Error().Err(err).Str("path", c.Request().URL.Path).Msg("unhandled error")
		ae = errorf(CodeInternal, "internal error")
	}
	if werr := writeError(c, ae); werr != nil {
		s.logger.Debug().Err(werr).Msg("write error response")
	}
}
