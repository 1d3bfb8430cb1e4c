package server

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/custodyhq/custody/pdp"
)

// azDecodeCodes are the codes AuthZEN decoding may return.
var azDecodeCodes = map[string]bool{
	CodeInvalidJSON: true, CodeInvalidRequest: true,
	CodeDuplicateField: true, CodeNestingTooDeep: true, CodeNumberOutOfRange: true,
}

// FuzzDecodeEvaluation: for any body, the AuthZEN decoders (single evaluation, batch and every
// item of it, the three searches) never panic; each either accepts a request that keeps the
// validation rules or returns an error with a stable code and a message; and an accepted single
// evaluation, re-encoded, is accepted again and means the same. Seeds are in
// testdata/fuzz/FuzzDecodeEvaluation.
func FuzzDecodeEvaluation(f *testing.F) {
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := decodeEvaluation(body)
		if checkAZError(t, "decodeEvaluation", err) {
			if req != nil {
				t.Fatalf("decodeEvaluation returned a request and error %v", err)
			}
		} else {
			checkAZItem(t, req.item, req.lift)
			again, merr := json.Marshal(reencodeEvaluation(req))
			if merr != nil {
				t.Fatalf("re-encode accepted request: %v", merr)
			}
			req2, aerr := decodeEvaluation(again)
			if aerr != nil {
				t.Fatalf("re-encoded request rejected: %v\nbody: %q", aerr, again)
			}
			opts := []cmp.Option{
				cmp.AllowUnexported(evaluationRequest{}, evalItem{}, lifted{}, authzenOptions{}),
				cmpopts.EquateEmpty(),
			}
			if diff := cmp.Diff(req, req2, opts...); diff != "" {
				t.Fatalf("re-encoded request differs (-first +second):\n%s", diff)
			}
		}

		batch, err := decodeEvaluations(body)
		if !checkAZError(t, "decodeEvaluations", err) {
			switch {
			case batch.single():
				if batch.subject == nil || batch.action == nil || batch.resource == nil {
					t.Fatalf("single evaluation accepted without its entities: %+v", batch)
				}
				checkAZItem(t, evalItem{Subject: *batch.subject, Action: *batch.action, Resource: *batch.resource}, batch.lift)
			case len(batch.items) > MaxBatchEvaluations:
				t.Fatalf("batch of %d items accepted", len(batch.items))
			}
			if s := batch.opts.semantic; s != SemanticExecuteAll && s != SemanticDenyOnFirstDeny && s != SemanticPermitOnFirstPermit {
				t.Fatalf("semantic %q accepted", s)
			}
			for i := range batch.items {
				it, l, ierr := batch.item(i)
				if !checkAZError(t, "item", ierr) {
					checkAZItem(t, it, l)
				}
			}
		}

		for _, kind := range pdp.SearchKinds {
			s, err := decodeSearch(kind, body)
			if checkAZError(t, "decodeSearch", err) {
				continue
			}
			checkAZString(t, "subject.type", s.item.Subject.Type, true)
			checkAZString(t, "resource.type", s.item.Resource.Type, true)
			if s.page != nil && s.page.limit != nil && *s.page.limit < 0 {
				t.Fatalf("negative page.limit %d accepted", *s.page.limit)
			}
		}
	})
}

// checkAZError reports whether err is set, failing t unless it has a stable code and a message.
func checkAZError(t *testing.T, what string, err *apiError) bool {
	t.Helper()
	if err == nil {
		return false
	}
	if !azDecodeCodes[err.Code] {
		t.Fatalf("%s: error code %q is not a decoding code: %v", what, err.Code, err)
	}
	if strings.TrimSpace(err.Message) == "" {
		t.Fatalf("%s: error %q has an empty message", what, err.Code)
	}
	return true
}

// checkAZItem asserts what validation promises of an accepted evaluation.
func checkAZItem(t *testing.T, it evalItem, l lifted) {
	t.Helper()
	checkAZString(t, "subject.type", it.Subject.Type, true)
	checkAZString(t, "subject.id", it.Subject.ID, true)
	checkAZString(t, "action.name", it.Action.Name, true)
	checkAZString(t, "resource.type", it.Resource.Type, true)
	checkAZString(t, "resource.id", it.Resource.ID, true)
	if l.agent != nil {
		checkAZString(t, "context.agent.id", l.agent.ID, true)
		checkAZString(t, "context.agent.type", l.agent.Type, true)
	}
	if l.task != nil {
		checkAZString(t, "context.task.id", l.task.ID, false)
		checkAZString(t, "context.task.parent_id", l.task.ParentID, false)
		checkAZString(t, "context.task.session_id", l.task.SessionID, false)
		if l.task.Attempt < 0 {
			t.Fatalf("accepted context.task.attempt %d", l.task.Attempt)
		}
	}
	if l.correlationID != nil && !validHeaderID(*l.correlationID) {
		t.Fatalf("accepted correlation_id %q, not a valid header ID", *l.correlationID)
	}
}

func checkAZString(t *testing.T, field, v string, required bool) {
	t.Helper()
	if len(v) > maxIDLen || (required && v == "") {
		t.Fatalf("accepted %s of %d bytes", field, len(v))
	}
}

// reencodeEvaluation renders an accepted request back into an AuthZEN body.
func reencodeEvaluation(r *evaluationRequest) map[string]any {
	m := map[string]any{
		"subject":  r.item.Subject,
		"action":   r.item.Action,
		"resource": r.item.Resource,
		"options":  map[string]any{OptionIncludeReasons: r.opts.includeReasons},
	}
	if r.item.Context != nil {
		m["context"] = r.item.Context
	}
	return m
}
