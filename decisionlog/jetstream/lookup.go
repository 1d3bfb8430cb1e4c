package jetstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/custodyhq/custody/decisionlog"
)

// DefaultLookupLimit bounds how many of one correlation ID's decisions a lookup reads.
const DefaultLookupLimit = 10_000

// Lookup finds decision records on the stream by decision ID. JetStream cannot fetch a message by
// its Nats-Msg-Id, so Lookup reads the decisions of the report's correlation ID (a server-side
// subject filter) and stops at the first match or after Limit messages. Without a correlation
// ID it does not scan: the whole stream is too large to read per request.
type Lookup struct {
	Stream interface {
		OrderedConsumer(ctx context.Context, cfg jetstream.OrderedConsumerConfig) (jetstream.Consumer, error)
		Info(ctx context.Context, opts ...jetstream.StreamInfoOpt) (*jetstream.StreamInfo, error)
	}
	Limit int
}

// Lookup returns the decision with ID decisionID, or nil when it is not among correlationID's.
func (l *Lookup) Lookup(ctx context.Context, decisionID, correlationID string) (*decisionlog.Record, error) {
	if correlationID == "" {
		return nil, nil
	}
	limit := l.Limit
	if limit <= 0 {
		limit = DefaultLookupLimit
	}
	info, err := l.Stream.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("jetstream: lookup decision: stream info: %w", err)
	}
	if info.State.Msgs == 0 {
		return nil, nil
	}
	cons, err := l.Stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{decisionlog.DecisionFilter("", "", "", correlationID)},
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return nil, fmt.Errorf("jetstream: lookup decision: consumer: %w", err)
	}
	for read := 0; read < limit; {
		batch, err := cons.FetchNoWait(min(500, limit-read))
		if err != nil {
			return nil, fmt.Errorf("jetstream: lookup decision: fetch: %w", err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			if m.Headers().Get(decisionlog.HeaderMsgID) != decisionID {
				continue
			}
			var r decisionlog.Record
			if err := json.Unmarshal(m.Data(), &r); err != nil {
				return nil, fmt.Errorf("jetstream: lookup decision %s: %w", decisionID, err)
			}
			return &r, nil
		}
		if err := batch.Error(); err != nil && !errors.Is(err, context.DeadlineExceeded) {
			return nil, fmt.Errorf("jetstream: lookup decision: fetch: %w", err)
		}
		if n == 0 {
			return nil, nil
		}
		read += n
	}
	return nil, nil
}
