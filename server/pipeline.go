package server

import (
	"fmt"
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/custodyhq/custody/agentcall"
	"github.com/custodyhq/custody/decisionlog"
	"github.com/custodyhq/custody/pdp"
)

// Every endpoint that decides or reports runs the one pipeline in this file: begin reads the
// body, authenticates the caller, decodes the body and settles the request's IDs; decideCall
// applies the proven identity to one call, decides it and records it; refuse makes the record
// of every refused call. The endpoints differ only in how a body becomes calls and how the
// outcomes are answered, so a refusal is recorded alike whichever endpoint saw it.

// exchange is one authenticated request on its way through the pipeline.
type exchange struct {
	s        *Server
	c        echo.Context
	endpoint string
	caller   *caller
	meta     requestMeta
}

// decoded is what an endpoint's decoder makes of a body: the body's correlation ID (nil when it
// names none), and the call it claims (nil when it names none), which is what the record of a
// refused caller shows.
type decoded struct {
	correlationID *string
	claimed       *agentcall.Call
}

// begin checks the content type, reads the body, authenticates the caller and decodes the body
// with decode. A refused caller is recorded as a fixed summary of the attempt, within the refusal
// limits (refusal.go), and answered with the refusal before any decode error: a bad credential is
// an attack or a bug, and is answered as such.
func (s *Server) begin(c echo.Context, endpoint string, decode func(body []byte) (decoded, *apiError)) (*exchange, *apiError) {
	req := c.Request()
	if err := checkContentType(req); err != nil {
		return nil, err
	}
	body, aerr := readBody(req, s.maxBody)
	if aerr != nil {
		return nil, aerr
	}
	cl, authErr := s.authenticate(c)
	d, derr := decode(body)
	if authErr != nil {
		var claimed *agentcall.Call
		if derr == nil {
			claimed = d.claimed
		}
		s.refuseAttempt(c, endpoint, claimed, authErr)
		return nil, authErr
	}
	if derr != nil {
		return nil, derr
	}
	meta, merr := s.meta(c, d.correlationID)
	if merr != nil {
		return nil, merr
	}
	return &exchange{s: s, c: c, endpoint: endpoint, caller: cl, meta: meta}, nil
}

// emptyInput is the input of a request whose call could not be read.
func emptyInput() *pdp.Input { return &pdp.Input{Delegation: pdp.Delegation{Chain: []any{}}} }

// input maps call onto the policy input. A call's own correlation ID (an AuthZEN item's
// context.correlation_id) wins over the request's and becomes m's.
func (x *exchange) input(call *agentcall.Call, m *requestMeta) *pdp.Input {
	if call.CorrelationID != "" {
		m.correlationID = call.CorrelationID
	}
	cc := *call
	cc.CorrelationID = m.correlationID
	return agentcall.Input(&cc, x.s.intent)
}

// decideCall applies the caller's proven identity to call, decides it and records it. bodyUser
// says whether the body named the subject, which must then be the one a token proves.
func (x *exchange) decideCall(call *agentcall.Call, bodyUser bool) *outcome {
	m := x.meta
	in := x.input(call, &m)
	intent := ""
	if call.Task != nil {
		intent = call.Task.Intent
	}
	return x.decideInput(in, bodyUser, m, intent)
}

// decideInput is decideCall for an input already mapped. A task intent is sealed into the
// intent vault (when there is one) before the record is published: the record names the sealed
// entry, and an intent that cannot be kept makes the decision a recorded deny.
func (x *exchange) decideInput(in *pdp.Input, bodyUser bool, m requestMeta, intent string) *outcome {
	if err := applyIdentity(in, x.caller, bodyUser); err != nil {
		return x.refuse(in, err, m)
	}
	// Approval evidence is verified here and only here (approval.go).
	approval, aerr := x.approvalEvidence(in)
	if aerr != nil {
		return x.refuse(in, aerr, m)
	}
	rec, d := x.s.decide(x.c, x.endpoint, in, m)
	rec.Caller = x.caller.ref()
	x.openApproval(rec, d.Obligations, in, approval)
	o := &outcome{rec: rec, obligations: d.Obligations}
	if d.Err != nil {
		o.err = &itemError{Status: http.StatusInternalServerError, Code: pdp.ReasonPolicyError, Message: "the policy could not be evaluated, so the decision is a deny"}
	}
	switch serr := x.s.sealIntent(x.c, rec, intent); {
	case serr == nil:
		o.recordErr = x.s.record(x.c, rec)
	case serr.denied == nil:
		o.recordErr = serr // the intent could not be sealed, nor the deny recorded
	default: // sealIntent recorded the deny
		o.refused = serr
		o.err = &itemError{Status: statusCode(serr.Code), Code: serr.Code, Message: serr.Message}
	}
	if o.recordErr != nil || o.refused != nil {
		x.s.forgetApproval(rec) // no answer stands on an approval opened for this call
	}
	return o
}

// refuse records the deny of a call no policy decided (a refused caller, an identity mismatch,
// an unreadable batch item) and returns its outcome. Once recorded, cause carries the
// decision's IDs, so that even a client reading only "allow" sees the deny it stands for.
func (x *exchange) refuse(in *pdp.Input, cause *apiError, m requestMeta) *outcome {
	rec := x.s.refusalRecord(x.endpoint, in, m, x.caller, cause)
	o := &outcome{rec: rec, refused: cause, err: &itemError{Status: statusCode(cause.Code), Code: cause.Code, Message: cause.Message}}
	o.recordErr = x.s.record(x.c, rec)
	if o.recordErr == nil {
		cause.denied = &deniedDecision{decisionID: rec.DecisionID, correlationID: rec.CorrelationID}
	}
	return o
}

// refusalRecord is the one builder of a refused call's record: what the body claimed (in), the
// caller as far as it was proven, the policy that would have decided, and the refusal as reason
// and error. The credential itself is never recorded.
func (s *Server) refusalRecord(endpoint string, in *pdp.Input, m requestMeta, cl *caller, cause *apiError) *decisionlog.Record {
	rec := s.baseRecord(endpoint, in, m)
	if pol, ok := s.decider.(interface{ Policy() pdp.PolicyInfo }); ok {
		p := pol.Policy()
		rec.Policy = decisionlog.PolicyRef{Query: p.Query, Revision: p.Revision}
	}
	rec.Allow = false
	rec.Reasons = []string{refusalReason(cause.Code)}
	rec.Error = cause.Message
	rec.Caller = cl.ref()
	boundRecord(rec)
	return rec
}

// refuseBatchIdentity refuses a whole batch, as one record, when any of its n calls names
// someone other than the caller proves: the batch is refused for its caller, not item by item
// (once 1,000 items made 1,000 records). call returns nil for an item that does not resolve,
// which is left to be that item's own deny.
func (x *exchange) refuseBatchIdentity(n int, call func(i int) *agentcall.Call) *outcome {
	if x.caller == nil || (x.caller.delegation == nil && x.caller.workload == "") {
		return nil // nothing proven, nothing to mismatch
	}
	for i := range n {
		c := call(i)
		if c == nil {
			continue
		}
		m := x.meta
		in := x.input(c, &m)
		if err := applyIdentity(in, x.caller, true); err != nil {
			err.Message = fmt.Sprintf("evaluations[%d]: %s; the batch is refused", i, err.Message)
			return x.refuse(in, err, m)
		}
	}
	return nil
}

// refusalReason is the recorded reason of a refusal with code: every failed authentication is
// one reason, so that probing is counted alike whatever credential failed.
func refusalReason(code string) string {
	switch code {
	case CodeInvalidToken, CodeInvalidCredentials, CodeUnauthenticated:
		return ReasonAuthenticationFailed
	case CodeIdentityMismatch:
		return ReasonIdentityMismatch
	default:
		return code
	}
}

// answerError is the error a single-call endpoint answers o with, or nil when o is a decision
// to answer. A refusal is answered as such even when its record failed (it is a deny either
// way, and tells the client what to fix); a decision that could not be recorded is a 503 deny.
func (o *outcome) answerError() *apiError {
	if o.refused != nil {
		return o.refused
	}
	return o.recordErr
}
