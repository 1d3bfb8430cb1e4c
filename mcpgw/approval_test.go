package mcpgw

import (
	"errors"
	"testing"
	"time"
)

func TestApprovalStates(t *testing.T) {
	now := time.Date(2026, 11, 27, 8, 0, 0, 0, time.UTC)
	a := newApprovals(time.Minute, func() time.Time { return now })
	call := approvalState{Tool: "filesystem/delete_file", ArgsSHA256: argsHash(map[string]any{"path": "/a"}), Principal: "agent|alice|"}
	issue := func() string { s := call; s.DecisionID, s.CorrelationID = "d-1", "c-1"; return a.issue(s) }

	tok := issue()
	s, err := a.redeem(tok, call)
	if err != nil || s.DecisionID != "d-1" || s.CorrelationID != "c-1" {
		t.Fatalf("redeem = %+v, %v", s, err)
	}
	if _, err := a.redeem(tok, call); !errors.Is(err, ErrApprovalReplayed) {
		t.Errorf("second redeem: %v, want %v", err, ErrApprovalReplayed)
	}

	other := call
	other.ArgsSHA256 = argsHash(map[string]any{"path": "/b"})
	if _, err := a.redeem(issue(), other); !errors.Is(err, ErrApprovalMismatch) {
		t.Errorf("other arguments: %v, want %v", err, ErrApprovalMismatch)
	}
	other = call
	other.Principal = "agent|mallory|"
	if _, err := a.redeem(issue(), other); !errors.Is(err, ErrApprovalMismatch) {
		t.Errorf("other principal: %v, want %v", err, ErrApprovalMismatch)
	}

	tok = issue()
	tampered := tok[:len(tok)-2] + "AA"
	for _, forged := range []string{"", "x", "a.b", tampered, newApprovals(time.Minute, time.Now).issue(call)} {
		if _, err := a.redeem(forged, call); !errors.Is(err, ErrApprovalForged) {
			t.Errorf("redeem(%q): %v, want %v", forged, err, ErrApprovalForged)
		}
	}

	tok = issue()
	now = now.Add(2 * time.Minute)
	if _, err := a.redeem(tok, call); !errors.Is(err, ErrApprovalExpired) {
		t.Errorf("late redeem: %v, want %v", err, ErrApprovalExpired)
	}
}
