package jetstream

import (
	"context"
	"errors"
	"fmt"

	"github.com/custodyhq/custody/decisionlog"
)

// DefaultLookupLimit bounds how many of one correlation ID's decisions a lookup reads.
const DefaultLookupLimit = 10_000

// Lookup finds decision records on the stream by decision ID. JetStream cannot fetch a message by
// its Nats-Msg-Id, so Lookup reads the decisions of the report's correlation ID (a server-side
// subject filter), up to Limit of them. Without a correlation ID it does not scan: the whole
// stream is too large to read per request.
//
// A message counts as the decision when its Nats-Msg-Id or its body names the decision ID. It
// is returned only when it verifies (decisionlog.CheckRecord: sealed, decision_id equal to
// Nats-Msg-Id) and no other verified record claims the same ID; otherwise Lookup returns an
// error wrapping decisionlog.ErrUnverified, and the caller must not act on the decision.
type Lookup struct {
	Stream ReadStream
	Limit  int
}

// Lookup returns the decision with ID decisionID, nil when it is not among correlationID's, or
// an error wrapping decisionlog.ErrUnverified when only records that do not verify claim it.
func (l *Lookup) Lookup(ctx context.Context, decisionID, correlationID string) (*decisionlog.Record, error) {
	if correlationID == "" {
		return nil, nil
	}
	limit := l.Limit
	if limit <= 0 {
		limit = DefaultLookupLimit
	}
	var (
		found      *decisionlog.Record
		conflict   bool
		unverified error
	)
	_, err := Read(ctx, l.Stream, ReadOptions{
		Filters: []string{decisionlog.DecisionFilter("", "", "", correlationID)},
		Limit:   limit,
	}, func(m *Msg) error {
		msgID := m.Header.Get(decisionlog.HeaderMsgID)
		r, err := decisionlog.CheckRecord(msgID, m.Data)
		if msgID != decisionID && (r == nil || r.DecisionID != decisionID) {
			return nil
		}
		switch {
		case err != nil:
			if unverified == nil {
				unverified = fmt.Errorf("stream seq %d: %w", m.Seq, err)
			}
		case found != nil && found.Hash != r.Hash:
			conflict = true
		case found == nil:
			found = r
		}
		return nil
	})
	switch {
	case errors.Is(err, ErrReadLimit):
		return nil, fmt.Errorf("jetstream: lookup decision %s: correlation ID %s has more than %d decisions: %w", decisionID, correlationID, limit, err)
	case err != nil:
		return nil, fmt.Errorf("jetstream: lookup decision %s: %w", decisionID, err)
	case conflict:
		return nil, fmt.Errorf("jetstream: lookup decision %s: %w: two different sealed records claim it", decisionID, decisionlog.ErrUnverified)
	case found != nil:
		return found, nil
	case unverified != nil:
		return nil, fmt.Errorf("jetstream: lookup decision %s: %w", decisionID, unverified)
	}
	return nil, nil
}
