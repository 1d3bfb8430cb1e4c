package server

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/labstack/echo/v4"

	"github.com/custodyhq/custody/decisionlog"
	"github.com/custodyhq/custody/decisionlog/vault"
	"github.com/custodyhq/custody/pdp"
)

// EndpointUnseal names the unseal endpoint in records.
const EndpointUnseal = "/v1/unseal"

// Error codes of the intent vault.
const (
	// CodeIntentVaultUnavailable: the intent could not be sealed (the call is a 503 deny), or a
	// sealed entry could not be read.
	CodeIntentVaultUnavailable = "intent_vault_unavailable"
	// CodeIntentVaultDisabled: serve runs without --intent-vault, so no intent is kept.
	CodeIntentVaultDisabled = "intent_vault_disabled"
	// CodeUnknownDecision: no decision with that ID is known, on the stream or in the vault.
	CodeUnknownDecision = "unknown_decision"
	// CodeIntentNotSealed: the decision is known but its record names no sealed intent (it had
	// none, or was made without the vault).
	CodeIntentNotSealed = "intent_not_sealed"
	// CodeSealedIntentGone: the record names a vault entry the vault no longer holds (expired by
	// --intent-vault-retention, or removed).
	CodeSealedIntentGone = "sealed_intent_gone"
	// CodeSealedIntentMismatch: the vault entry is not the one the decision record's hash
	// vouches for. Nothing is released.
	CodeSealedIntentMismatch = "sealed_intent_mismatch"
)

// The vault's codes are registered here, beside the endpoint, rather than in errors.go's table.
func init() {
	statusOf[CodeIntentVaultUnavailable] = http.StatusServiceUnavailable
	statusOf[CodeIntentVaultDisabled] = http.StatusNotFound
	statusOf[CodeUnknownDecision] = http.StatusNotFound
	statusOf[CodeIntentNotSealed] = http.StatusNotFound
	statusOf[CodeSealedIntentGone] = http.StatusGone
	statusOf[CodeSealedIntentMismatch] = http.StatusConflict
}

// ReasonIntentVaultUnavailable is the reason of a decision denied because its intent could not
// be sealed.
const ReasonIntentVaultUnavailable = "intent_vault_unavailable"

// IntentVault seals task intents and hands sealed entries back for unseal. *vault.Vault
// implements it.
type IntentVault interface {
	// Seal stores intent, encrypted, for the decision and returns the reference its record keeps.
	Seal(ctx context.Context, decisionID, correlationID, intent string) (*pdp.SealedIntent, error)
	// CorrelationID finds the correlation ID of a decision's sealed entry.
	CorrelationID(ctx context.Context, decisionID string) (string, error)
	// Open returns the ciphertext a reference names, once it checked it is that entry.
	Open(ctx context.Context, ref *pdp.SealedIntent) ([]byte, error)
}

// WithVault seals every task intent of /v1/authorize into v before the decision is recorded, and
// serves POST /v1/unseal. v's errors wrap vault.ErrNotFound and vault.ErrMismatch where they apply.
func WithVault(v IntentVault) Option { return func(s *Server) { s.vault = v } }

// sealIntent seals intent, when the vault is on and there is one, and sets the reference on
// rec's task. The reference is part of the record, so its hash covers it. When sealing fails the
// decision is recorded as a deny naming the reason and the call is answered 503: an answer must
// never leave an intent neither kept nor said to be lost.
func (s *Server) sealIntent(c echo.Context, rec *decisionlog.Record, intent string) *apiError {
	if s.vault == nil || intent == "" || rec.Task == nil {
		return nil
	}
	ref, err := s.vault.Seal(c.Request().Context(), rec.DecisionID, rec.CorrelationID, intent)
	if err == nil {
		task := *rec.Task // the policy's input shares the pointer; it must not see the reference
		task.IntentSealed = ref
		rec.Task = &task
		return nil
	}
	recordIDs(s.logger.Error(), rec).Err(err).Bool("policy_allow", rec.Allow).Msg("intent not sealed; answering deny")
	rec.Allow = false
	rec.Reasons = append(rec.Reasons, ReasonIntentVaultUnavailable)
	rec.Error = "intent vault: the intent could not be sealed"
	e := errorf(CodeIntentVaultUnavailable, "the task's intent could not be sealed in the intent vault, so the decision is a deny; retry later")
	if rerr := s.record(c, rec); rerr != nil {
		return rerr
	}
	e.denied = &deniedDecision{decisionID: rec.DecisionID, correlationID: rec.CorrelationID}
	return e
}

// unsealRequest is the body of POST /v1/unseal.
type unsealRequest struct {
	DecisionID    string `json:"decision_id"`
	CorrelationID string `json:"correlation_id"`
	Reason        string `json:"reason"`
}

// unsealResponse is the answer of POST /v1/unseal: the sealed entry, released once its unseal
// record is durable. Ciphertext is the age file, base64 in JSON; custody cannot decrypt it.
type unsealResponse struct {
	UnsealID      string            `json:"unseal_id"`
	DecisionID    string            `json:"decision_id"`
	CorrelationID string            `json:"correlation_id"`
	Sealed        *pdp.SealedIntent `json:"sealed"`
	Ciphertext    []byte            `json:"ciphertext"`
}

// unseal releases a decision's sealed intent to an authenticated caller, after recording who
// asked, for which decision, why and when on the decision stream. It refuses anonymous callers
// even when --require-auth is off: an unseal record naming nobody would not say who read the
// prompt. Refused authentication is recorded as an attempt, as on every endpoint.
func (s *Server) unseal(c echo.Context) error {
	if s.vault == nil {
		return errorf(CodeIntentVaultDisabled, "this instance runs without --intent-vault: intents are not kept")
	}
	var ur unsealRequest
	x, aerr := s.begin(c, EndpointUnseal, func(body []byte) (decoded, *apiError) {
		if err := decodeJSON(body, &ur); err != nil {
			return decoded{}, err
		}
		if ur.CorrelationID == "" {
			return decoded{}, nil
		}
		return decoded{correlationID: &ur.CorrelationID}, nil
	})
	if aerr != nil {
		return aerr
	}
	cl := x.caller
	if cl.ref() == nil {
		return errorf(CodeUnauthenticated, "unseal requires an authenticated caller (an API key, a bearer token or a client certificate), whatever --require-auth says")
	}
	if err := checkID("decision_id", ur.DecisionID, true); err != nil {
		return err
	}
	if ur.CorrelationID != "" {
		if err := checkCorrelationID("correlation_id", ur.CorrelationID); err != nil {
			return err
		}
	}
	ur.Reason = strings.TrimSpace(ur.Reason)
	switch {
	case ur.Reason == "":
		return missing("reason")
	case len(ur.Reason) > decisionlog.MaxUnsealReason || !utf8.ValidString(ur.Reason):
		return errorf(CodeInvalidRequest, "reason: want UTF-8 text of at most 1024 bytes")
	}
	ctx, cancel := context.WithTimeout(c.Request().Context(), 10*time.Second)
	defer cancel()
	v := s.vault
	corr := ur.CorrelationID
	if corr == "" {
		var err error
		corr, err = v.CorrelationID(ctx, ur.DecisionID)
		switch {
		case err != nil && errors.Is(err, vault.ErrNotFound):
			return errorf(CodeUnknownDecision, "no sealed intent is kept for decision "+quoteField(ur.DecisionID)+"; give its correlation_id if the vault entry expired")
		case err != nil:
			s.logger.Error().Err(err).Str("decision_id", ur.DecisionID).Msg("unseal: vault unavailable")
			return errorf(CodeIntentVaultUnavailable, "the intent vault could not be read; retry later")
		}
	}
	dec, err := s.findDecision(ctx, ur.DecisionID, corr)
	switch {
	case errors.Is(err, decisionlog.ErrUnverified):
		return errorf(CodeUnverifiedDecision, "decision "+quoteField(ur.DecisionID)+" is on the stream only as a record that does not verify: run custody verify")
	case err != nil:
		s.logger.Error().Err(err).Str("decision_id", ur.DecisionID).Msg("unseal: decision lookup failed")
		return errorf(CodeDecisionLogUnavailable, "the decision stream could not be read; retry later")
	case dec == nil || dec.Schema != decisionlog.SchemaDecisionV1:
		return errorf(CodeUnknownDecision, "no decision "+quoteField(ur.DecisionID)+" is on the decision stream")
	case dec.Task == nil || dec.Task.IntentSealed == nil:
		return errorf(CodeIntentNotSealed, "decision "+quoteField(ur.DecisionID)+" has no sealed intent: it carried none, or was made without --intent-vault")
	}
	ref := dec.Task.IntentSealed
	ciphertext, err := v.Open(ctx, ref)
	switch {
	case err != nil && errors.Is(err, vault.ErrNotFound):
		return errorf(CodeSealedIntentGone, "the vault no longer holds decision "+quoteField(ur.DecisionID)+"'s sealed intent (expired by --intent-vault-retention, or removed)")
	case err != nil && errors.Is(err, vault.ErrMismatch):
		s.logger.Warn().Err(err).Str("decision_id", ur.DecisionID).Msg("unseal refused: the vault entry is not the one the record names")
		return errorf(CodeSealedIntentMismatch, "the vault entry is not the one decision "+quoteField(ur.DecisionID)+"'s record vouches for; nothing is released")
	case err != nil:
		s.logger.Error().Err(err).Str("decision_id", ur.DecisionID).Msg("unseal: vault unavailable")
		return errorf(CodeIntentVaultUnavailable, "the intent vault could not be read; retry later")
	}

	meta, aerr := s.meta(c, &dec.CorrelationID)
	if aerr != nil {
		return aerr
	}
	rec := s.unsealRecord(dec, ur.Reason, meta)
	rec.Caller = cl.ref()
	if err := s.record(c, rec); err != nil {
		err.denied = nil
		err.Message = "the unseal could not be recorded on the decision stream, so nothing is released; retry later"
		return err
	}
	s.logger.Info().Str("unseal_id", rec.UnsealID).Str("decision_id", rec.DecisionID).Str("correlation_id", rec.CorrelationID).
		Str("caller", rec.Caller.ID).Msg("sealed intent released")
	return c.JSON(http.StatusOK, unsealResponse{
		UnsealID: rec.UnsealID, DecisionID: rec.DecisionID, CorrelationID: rec.CorrelationID, Sealed: ref, Ciphertext: ciphertext,
	})
}

// unsealRecord builds the custody.unseal.v1 record of releasing dec's sealed intent. Agent,
// action, resource and task are the decision's, so the record reads on its own.
func (s *Server) unsealRecord(dec *decisionlog.Record, reason string, m requestMeta) *decisionlog.Record {
	return &decisionlog.Record{
		Schema:        decisionlog.SchemaUnsealV1,
		DecisionID:    dec.DecisionID,
		UnsealID:      s.newID(),
		Timestamp:     s.now().UTC(),
		CorrelationID: dec.CorrelationID,
		RequestID:     m.requestID,
		TraceID:       m.trace.TraceID,
		SpanID:        m.trace.SpanID,
		Endpoint:      EndpointUnseal,
		Subject:       dec.Subject,
		Action:        dec.Action,
		Resource:      dec.Resource,
		Agent:         dec.Agent,
		Delegation:    dec.Delegation,
		Task:          dec.Task,
		Allow:         dec.Allow,
		Reasons:       []string{},
		Policy:        dec.Policy,
		PDP:           s.instance,
		Unseal:        &decisionlog.Unseal{Reason: reason, Sealed: dec.Task.IntentSealed},
	}
}
