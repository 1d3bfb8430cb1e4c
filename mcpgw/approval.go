package mcpgw

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"time"
)

// DefaultApprovalTTL is how long an approval request custody issued stays answerable.
const DefaultApprovalTTL = 5 * time.Minute

// Reasons a returned approval does not count.
var (
	ErrApprovalForged   = errors.New("approval state was not issued by custody")
	ErrApprovalExpired  = errors.New("approval request expired")
	ErrApprovalMismatch = errors.New("approval was issued for another call")
	ErrApprovalReplayed = errors.New("approval was already used")
)

// approvalState is what custody signs into an approval request's requestState: the call it is
// for, who makes it, until when, and a one-time nonce.
type approvalState struct {
	Tool          string `json:"tool"`
	ArgsSHA256    string `json:"args_sha256"`
	Principal     string `json:"principal"`
	DecisionID    string `json:"decision_id"`
	CorrelationID string `json:"correlation_id"`
	ApprovalID    string `json:"approval_id"`
	Expires       int64  `json:"exp"`
	Nonce         string `json:"nonce"`
}

// approvals issues and checks signed approval states. Its key lives in memory for the life of
// the process, so a state outlives neither the process nor its TTL.
type approvals struct {
	key []byte
	ttl time.Duration
	now func() time.Time

	mu     sync.Mutex
	issued map[string]time.Time // nonce -> expiry, for nonces not yet used
	// waiting maps a call (pendingKey) to the out-of-band approval the PDP opened for it, so
	// that the call, asked again once an approver answered, carries it.
	waiting map[string]waitingApproval
}

type waitingApproval struct {
	id      string
	expires time.Time
}

// maxWaiting bounds the remembered out-of-band approvals.
const maxWaiting = 1000

// pendingKey names a call among the remembered approvals.
func pendingKey(p Principal, server, tool string, args map[string]any) string {
	return principalKey(p) + "|" + server + "/" + tool + "|" + argsHash(args)
}

// pending is the approval remembered for the call key, or "".
func (a *approvals) pending(key string) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	w, ok := a.waiting[key]
	if !ok || a.now().After(w.expires) {
		delete(a.waiting, key)
		return ""
	}
	return w.id
}

// remember keeps the approval the PDP opened for the call key.
func (a *approvals) remember(key, id string, expires time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.waiting == nil {
		a.waiting = map[string]waitingApproval{}
	}
	if len(a.waiting) >= maxWaiting {
		for k, w := range a.waiting {
			if a.now().After(w.expires) {
				delete(a.waiting, k)
			}
		}
		if len(a.waiting) >= maxWaiting {
			return // the call opens a new approval next time; nothing is lost but a retry
		}
	}
	a.waiting[key] = waitingApproval{id: id, expires: expires}
}

// forget drops the approval remembered for the call key.
func (a *approvals) forget(key string) {
	a.mu.Lock()
	delete(a.waiting, key)
	a.mu.Unlock()
}

func newApprovals(ttl time.Duration, now func() time.Time) *approvals {
	key := make([]byte, 32)
	_, _ = rand.Read(key) // crypto/rand.Read never fails on supported platforms
	return &approvals{key: key, ttl: ttl, now: now, issued: map[string]time.Time{}}
}

// issue signs a state for the call; the nonce is remembered until used or expired.
func (a *approvals) issue(s approvalState) string {
	nonce := make([]byte, 16)
	_, _ = rand.Read(nonce)
	s.Nonce = hex.EncodeToString(nonce)
	exp := a.now().Add(a.ttl)
	s.Expires = exp.Unix()
	payload, _ := json.Marshal(s)
	a.mu.Lock()
	for n, e := range a.issued {
		if a.now().After(e) {
			delete(a.issued, n)
		}
	}
	a.issued[s.Nonce] = exp
	a.mu.Unlock()
	return base64.RawURLEncoding.EncodeToString(payload) + "." + base64.RawURLEncoding.EncodeToString(a.mac(payload))
}

func (a *approvals) mac(payload []byte) []byte {
	m := hmac.New(sha256.New, a.key)
	m.Write([]byte("custody.mcp.approval.v1\n"))
	m.Write(payload)
	return m.Sum(nil)
}

// redeem checks a returned state against the call being retried and uses up its nonce.
func (a *approvals) redeem(token string, want approvalState) (approvalState, error) {
	var s approvalState
	p, sig, ok := strings.Cut(token, ".")
	if !ok {
		return s, ErrApprovalForged
	}
	payload, err1 := base64.RawURLEncoding.DecodeString(p)
	mac, err2 := base64.RawURLEncoding.DecodeString(sig)
	if err1 != nil || err2 != nil || !hmac.Equal(mac, a.mac(payload)) {
		return s, ErrApprovalForged
	}
	if err := json.Unmarshal(payload, &s); err != nil {
		return s, ErrApprovalForged
	}
	if a.now().Unix() > s.Expires {
		return s, ErrApprovalExpired
	}
	if s.Tool != want.Tool || s.ArgsSHA256 != want.ArgsSHA256 || s.Principal != want.Principal {
		return s, ErrApprovalMismatch
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.issued[s.Nonce]; !ok {
		return s, ErrApprovalReplayed
	}
	delete(a.issued, s.Nonce)
	return s, nil
}

// stateHash names a state in records without repeating it.
func stateHash(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// argsHash is the SHA-256 of the arguments' canonical JSON (encoding/json sorts map keys).
func argsHash(args map[string]any) string {
	raw, _ := json.Marshal(orEmpty(args))
	sum := sha256.Sum256(raw)
	return hex.EncodeToString(sum[:])
}

// principalKey names a principal inside an approval state.
func principalKey(p Principal) string {
	user := ""
	if p.User != nil {
		user = p.User.ID
	}
	tok := ""
	if p.Token != "" {
		sum := sha256.Sum256([]byte(p.Token))
		tok = hex.EncodeToString(sum[:8])
	}
	return p.Agent.ID + "|" + user + "|" + tok
}
