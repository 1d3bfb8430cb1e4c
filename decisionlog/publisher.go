package decisionlog

import (
	"context"
	"errors"
	"sync"
)

// ErrUnavailable is returned, wrapped, when a record could not be made durable. The caller must
// then answer with a deny.
var ErrUnavailable = errors.New("decision log unavailable")

// ErrTooLarge is returned, wrapped together with ErrUnavailable, when a record is larger than
// the NATS server accepts in one message. It is refused before the answer: a record the stream
// can never take would otherwise be answered and then retried forever.
var ErrTooLarge = errors.New("decision record too large for the NATS server's max payload")

// Publisher makes a record durable. Publish returns only once the record is durable (acked by
// JetStream, or in a spool that forwards to it), or with an error wrapping ErrUnavailable.
// Close drains pending work until ctx ends.
type Publisher interface {
	Publish(ctx context.Context, r *Record) error
	Close(ctx context.Context) error
}

// Memory is an in-memory Publisher that keeps every record, for tests and offline evaluation.
type Memory struct {
	mu      sync.Mutex
	records []Record
	// Err, when set, is returned by Publish instead of keeping the record.
	Err error
}

var _ Publisher = (*Memory)(nil)

// Publish keeps a copy of r.
func (m *Memory) Publish(_ context.Context, r *Record) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.Err != nil {
		return m.Err
	}
	m.records = append(m.records, *r)
	return nil
}

// Close does nothing.
func (m *Memory) Close(context.Context) error { return nil }

// Records returns a copy of what was published, in order.
func (m *Memory) Records() []Record {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]Record(nil), m.records...)
}
