package spool

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/custodyhq/custody/decisionlog"
)

// SealedPublisher publishes an already chained and sealed record and waits for the ack. The
// JetStream sink implements it; Nats-Msg-Id makes a replay after a crash a no-op.
type SealedPublisher interface {
	PublishSealed(ctx context.Context, r *decisionlog.Record, body []byte) error
}

// Checkpointer publishes a signed checkpoint of a chain head.
type Checkpointer func(ctx context.Context, head decisionlog.ChainHead) error

// Retry bounds for forwarding while JetStream is away.
const (
	minRetry = 50 * time.Millisecond
	maxRetry = 2 * time.Second
)

// Forward publishes spooled records in order, oldest first, until ctx ends. A record leaves the
// spool only once JetStream acked it; while NATS is away, Forward retries with backoff and
// records keep accumulating durably. checkpoint, if set, is called with the acked head every
// checkpointEvery records and every checkpointInterval while records flow.
func (s *Spool) Forward(ctx context.Context, pub SealedPublisher, checkpoint Checkpointer, checkpointEvery uint64, checkpointInterval time.Duration) error {
	stop := context.AfterFunc(ctx, func() {
		s.mu.Lock()
		s.cond.Broadcast()
		s.mu.Unlock()
	})
	defer stop()
	var (
		curFirst   uint64 // first seq of the segment being read; 0 for none
		offset     int64
		lastCursor = time.Now()
		cursorAt   = s.ackedSeq()
		ckptAt     = s.ackedSeq()
		lastCkpt   = time.Now()
		ackedHead  decisionlog.ChainHead
		retry      = minRetry
	)
	for {
		s.mu.Lock()
		for s.synced <= s.acked && ctx.Err() == nil {
			s.mu.Unlock()
			if ackedHead.Seq > ckptAt && checkpoint != nil && time.Since(lastCkpt) >= checkpointInterval {
				if checkpoint(ctx, ackedHead) == nil {
					ckptAt, lastCkpt = ackedHead.Seq, time.Now()
					s.setCheckpointed(ckptAt)
				}
			}
			s.mu.Lock()
			if s.synced <= s.acked && ctx.Err() == nil {
				waitWithTimeout(s, checkpointInterval)
			}
		}
		if ctx.Err() != nil {
			s.mu.Unlock()
			s.saveCursor(&cursorAt)
			return ctx.Err()
		}
		acked, synced := s.acked, s.synced
		segIdx := s.indexOf(curFirst)
		if segIdx < 0 && len(s.segs) == 0 {
			s.mu.Unlock()
			return fmt.Errorf("spool: forward: records %d to %d are counted but no segment holds them", acked+1, synced)
		}
		if segIdx < 0 {
			segIdx, offset = s.segmentFor(acked+1), 0
			curFirst = s.segs[segIdx].first
		}
		path := s.segs[segIdx].path
		hasNext := segIdx+1 < len(s.segs)
		var nextFirst uint64
		if hasNext {
			nextFirst = s.segs[segIdx+1].first
		}
		s.mu.Unlock()

		batch, next, err := readBatch(path, offset, acked, synced, 256)
		if err != nil {
			return fmt.Errorf("spool: forward: %w", err)
		}
		if len(batch) == 0 {
			// This segment is exhausted: move on to the next one.
			if hasNext {
				curFirst, offset = nextFirst, 0
			}
			continue
		}
		for _, e := range batch {
			for {
				err := pub.PublishSealed(ctx, e.rec, e.body)
				if err == nil {
					retry = minRetry
					break
				}
				if ctx.Err() != nil {
					s.saveCursor(&cursorAt)
					return ctx.Err()
				}
				if s.cfg.Permanent != nil && s.cfg.Permanent(err) {
					if qerr := s.reject(e, err); qerr != nil {
						return fmt.Errorf("spool: forward: %w", qerr)
					}
					break
				}
				s.logger.Warn().Err(err).Uint64("seq", e.rec.Seq).Dur("retry_in", retry).Msg("forward to JetStream failed; will retry")
				select {
				case <-ctx.Done():
				case <-time.After(retry):
				}
				retry = min(retry*2, maxRetry)
			}
			s.mu.Lock()
			s.acked = e.rec.Seq
			s.pending -= int64(8 + len(e.body))
			s.cond.Broadcast()
			s.mu.Unlock()
			ackedHead = decisionlog.After(e.rec)
			if checkpoint != nil && (ackedHead.Seq-ckptAt >= checkpointEvery || time.Since(lastCkpt) >= checkpointInterval) {
				if checkpoint(ctx, ackedHead) == nil {
					ckptAt, lastCkpt = ackedHead.Seq, time.Now()
					s.setCheckpointed(ckptAt)
				}
			}
		}
		offset = next
		if time.Since(lastCursor) >= 50*time.Millisecond || s.ackedSeq()-cursorAt >= 256 {
			s.saveCursor(&cursorAt)
			lastCursor = time.Now()
		}
	}
}

// reject keeps a record JetStream can never take in Dir/rejected/<seq>.json, so that the
// records behind it flow again. It is not lost: an operator finds it there, /readyz and the
// rejected count say so, and the chain on the stream shows the seq missing.
func (s *Spool) reject(e entry, cause error) error {
	dir := filepath.Join(s.cfg.Dir, "rejected")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("keep rejected record: %w", err)
	}
	path := filepath.Join(dir, fmt.Sprintf("%020d.json", e.rec.Seq))
	if err := os.WriteFile(path, e.body, 0o600); err != nil {
		return fmt.Errorf("keep rejected record: %w", err)
	}
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("keep rejected record: %w", err)
	}
	s.mu.Lock()
	s.rejected++
	s.mu.Unlock()
	s.logger.Error().Err(cause).Uint64("seq", e.rec.Seq).Str("decision_id", e.rec.DecisionID).Str("kept_in", path).
		Msg("JetStream refuses this record permanently; kept on disk and passed over")
	return nil
}

func (s *Spool) setCheckpointed(seq uint64) {
	s.mu.Lock()
	s.checkpointed = seq
	s.mu.Unlock()
}

func waitWithTimeout(s *Spool, d time.Duration) {
	t := time.AfterFunc(d, func() {
		s.mu.Lock()
		s.cond.Broadcast()
		s.mu.Unlock()
	})
	s.cond.Wait()
	t.Stop()
}

func (s *Spool) ackedSeq() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.acked
}

// saveCursor persists the acked position and removes segments that hold only acked records.
// A lost cursor write only means records are published again, and Nats-Msg-Id drops them.
func (s *Spool) saveCursor(at *uint64) {
	acked := s.ackedSeq()
	if acked == *at {
		return
	}
	if err := writeCursor(s.cfg.Dir, acked); err != nil {
		s.logger.Error().Err(err).Msg("write spool cursor")
		return
	}
	*at = acked
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.segs) > 1 && s.segs[1].first <= acked+1 {
		if err := os.Remove(s.segs[0].path); err != nil {
			s.logger.Error().Err(err).Msg("remove forwarded spool segment")
			return
		}
		s.segs = s.segs[1:]
	}
}

// indexOf returns the index of the segment starting at first, or -1. Called with mu held.
func (s *Spool) indexOf(first uint64) int {
	for i, sg := range s.segs {
		if sg.first == first && first != 0 {
			return i
		}
	}
	return -1
}

// segmentFor returns the index of the segment holding seq. Called with mu held.
func (s *Spool) segmentFor(seq uint64) int {
	idx := 0
	for i, sg := range s.segs {
		if sg.first <= seq {
			idx = i
		}
	}
	return idx
}

type entry struct {
	rec  *decisionlog.Record
	body []byte
}

// readBatch reads up to max entries with acked < seq <= synced from path at offset, returning
// them and the offset after the last one returned.
func readBatch(path string, offset int64, acked, synced uint64, max int) ([]entry, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, offset, err
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return nil, offset, err
	}
	br := bufio.NewReaderSize(f, 1<<16)
	var out []entry
	for len(out) < max {
		body, n, err := readEntry(br)
		if err != nil {
			break // end of what is written so far
		}
		var r decisionlog.Record
		if err := decodeRecord(body, &r); err != nil {
			return nil, offset, fmt.Errorf("corrupt spool entry at %s:%d: %w", path, offset, err)
		}
		if r.Seq > synced {
			break
		}
		offset += n
		if r.Seq <= acked {
			continue
		}
		out = append(out, entry{rec: &r, body: body})
	}
	return out, offset, nil
}

func decodeRecord(body []byte, r *decisionlog.Record) error {
	if err := json.Unmarshal(body, r); err != nil {
		return err
	}
	if r.Seq == 0 {
		return errors.New("entry has no seq")
	}
	return nil
}

// Publish appends r to the spool: custody answers once it is on local disk.
func (s *Spool) Publish(ctx context.Context, r *decisionlog.Record) error { return s.Append(ctx, r) }

// Close stops new appends and waits until ctx ends for the forwarder to drain the spool. What
// remains is kept on disk and forwarded after the next start.
func (s *Spool) Close(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	stop := context.AfterFunc(ctx, func() {
		s.mu.Lock()
		s.cond.Broadcast()
		s.mu.Unlock()
	})
	defer stop()
	for s.acked < s.synced && ctx.Err() == nil {
		s.cond.Wait()
	}
	remaining := s.synced - s.acked
	var err error
	if s.seg != nil {
		err = s.seg.Close()
		s.seg = nil
	}
	s.mu.Unlock()
	if remaining > 0 {
		return fmt.Errorf("spool: close: %d records not yet forwarded stay in %s for the next start", remaining, s.cfg.Dir)
	}
	return err
}

var _ decisionlog.Publisher = (*Spool)(nil)
