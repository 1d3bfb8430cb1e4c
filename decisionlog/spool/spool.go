package spool

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/rs/zerolog"

	"github.com/custodyhq/custody/decisionlog"
)

// File layout under Dir:
//
//	<first-seq>.seg   segments of entries: uint32 length, uint32 CRC-32C, sealed record body
//	cursor            the seq of the last record JetStream acked
//
// Records are chained (seq, prev_hash, hash) as they are appended, so the spool's order is the
// chain's order and the forwarder publishes in that order.

// Defaults for Config.
const (
	DefaultMaxBytes     int64 = 1 << 30
	DefaultSegmentBytes int64 = 16 << 20
)

// ErrFull is returned, wrapped with decisionlog.ErrUnavailable, when the spool holds MaxBytes of
// unforwarded records.
var ErrFull = errors.New("spool full")

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// Config configures a spool.
type Config struct {
	Dir          string
	MaxBytes     int64
	SegmentBytes int64
	Instance     string
	// Head is where the chain stands when the spool holds no records (from the stream).
	Head decisionlog.ChainHead
	// Check, if set, refuses a sealed record before it is written: one the stream could never
	// take (decisionlog.ErrTooLarge) would otherwise be answered and then block the forwarder.
	Check func(r *decisionlog.Record, body []byte) error
	// Permanent, if set, reports a forward error that no retry can cure. Such a record is moved
	// to Dir/rejected, counted (Rejected) and passed over, instead of stopping every record
	// behind it for good.
	Permanent func(error) bool
}

// Spool is a durable, ordered, chained queue of decision records.
type Spool struct {
	cfg    Config
	logger zerolog.Logger

	mu      sync.Mutex
	cond    *sync.Cond // signalled on append and on ack
	seg     *os.File   // current segment, open for append
	segSize int64
	segs    []segment // oldest first
	head    decisionlog.ChainHead
	written uint64 // last seq written (maybe not yet synced)
	synced  uint64 // last seq fsynced
	syncing bool
	syncErr error
	// failed is the first write or fsync error. It is sticky until restart: after a failed
	// fsync the kernel may have dropped the dirty pages and a later fsync reports success, so
	// nothing written since can be trusted to be on disk.
	failed error
	sync   func(*os.File) error // (*os.File).Sync; tests replace it
	acked  uint64               // last seq JetStream acked
	// rejected counts records JetStream refused permanently, kept in Dir/rejected.
	rejected uint64
	pending  int64 // bytes of records not yet acked
	closed   bool
	// checkpointed is the seq of the last published checkpoint.
	checkpointed uint64
}

type segment struct {
	first uint64
	path  string
	size  int64
}

// Open opens or creates the spool in cfg.Dir and recovers its state: the chain head from the
// last complete entry (a torn tail from a crash is cut off: it was never acknowledged), and the
// forwarding position from the cursor file.
func Open(cfg Config, logger zerolog.Logger) (*Spool, error) {
	if cfg.MaxBytes == 0 {
		cfg.MaxBytes = DefaultMaxBytes
	}
	if cfg.SegmentBytes == 0 {
		cfg.SegmentBytes = DefaultSegmentBytes
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("spool: create dir: %w", err)
	}
	s := &Spool{cfg: cfg, logger: logger.With().Str("component", "spool").Logger(), head: cfg.Head, sync: (*os.File).Sync}
	s.cond = sync.NewCond(&s.mu)
	acked, err := readCursor(filepath.Join(cfg.Dir, "cursor"))
	if err != nil {
		return nil, err
	}
	s.acked = acked
	if err := s.recover(); err != nil {
		return nil, err
	}
	if err := s.reconcile(cfg.Head); err != nil {
		return nil, err
	}
	s.written, s.synced = s.head.Seq, s.head.Seq
	s.checkpointed = s.acked // what was forwarded before was checkpointed on shutdown, or will be
	return s, nil
}

// reconcile settles the spool's position against the chain head read from the stream, for every
// state a data dir can be left in, including one another record mode wrote.
func (s *Spool) reconcile(stream decisionlog.ChainHead) error {
	spooled := s.head // the last record on disk, or stream when there is none
	switch {
	case len(s.segs) == 0 || s.acked >= spooled.Seq && stream.Seq >= spooled.Seq:
		// Nothing waits to be forwarded (a fresh spool, or one drained before the instance ran
		// in ack mode): the chain goes on from the stream. Without this, a spool opened at a
		// head it never held counted records it did not have and the forwarder indexed
		// segments that did not exist.
		if stream.Seq > spooled.Seq || len(s.segs) == 0 {
			s.head = stream
		}
		s.acked = s.head.Seq
	case stream.Seq > spooled.Seq:
		// Records wait in the spool, yet the stream's chain went past them: something else
		// (ack mode of an older release) wrote this instance's chain meanwhile. Forwarding
		// them would fork the chain; dropping them would lose answered decisions.
		return fmt.Errorf("spool: open: %d records in %s wait to be forwarded (seq %d to %d), but the stream's chain of this instance is already at seq %d; keep the spool and its data dir and get help: forwarding would fork the chain",
			spooled.Seq-s.acked, s.cfg.Dir, s.acked+1, spooled.Seq, stream.Seq)
	}
	if s.acked > s.head.Seq {
		s.acked = s.head.Seq
	}
	return nil
}

func (s *Spool) recover() error {
	entries, err := os.ReadDir(s.cfg.Dir)
	if err != nil {
		return fmt.Errorf("spool: list: %w", err)
	}
	for _, e := range entries {
		name := e.Name()
		if !strings.HasSuffix(name, ".seg") {
			continue
		}
		first, err := strconv.ParseUint(strings.TrimSuffix(name, ".seg"), 10, 64)
		if err != nil {
			continue
		}
		s.segs = append(s.segs, segment{first: first, path: filepath.Join(s.cfg.Dir, name)})
	}
	sort.Slice(s.segs, func(i, j int) bool { return s.segs[i].first < s.segs[j].first })
	for i := range s.segs {
		last := i == len(s.segs)-1
		valid, lastRec, err := scanSegment(s.segs[i].path, func(r *decisionlog.Record, body []byte) error {
			if r.Seq > s.acked {
				s.pending += int64(8 + len(body))
			}
			return nil
		})
		if err != nil {
			return err
		}
		if lastRec != nil {
			s.head = decisionlog.ChainHead{Seq: lastRec.Seq, Hash: lastRec.Hash}
		}
		s.segs[i].size = valid
		if last {
			if err := os.Truncate(s.segs[i].path, valid); err != nil {
				return fmt.Errorf("spool: cut torn tail: %w", err)
			}
		}
	}
	if len(s.segs) > 0 {
		tail := s.segs[len(s.segs)-1]
		f, err := os.OpenFile(tail.path, os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return fmt.Errorf("spool: open tail: %w", err)
		}
		s.seg, s.segSize = f, tail.size
	}
	return nil
}

// scanSegment calls fn for each complete entry and returns the length of the valid prefix.
func scanSegment(path string, fn func(*decisionlog.Record, []byte) error) (int64, *decisionlog.Record, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, nil, fmt.Errorf("spool: open segment: %w", err)
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, 1<<16)
	var off int64
	var last *decisionlog.Record
	for {
		body, n, err := readEntry(br)
		if err != nil {
			return off, last, nil // end of file, or a torn or corrupt tail
		}
		var r decisionlog.Record
		if err := decodeRecord(body, &r); err != nil {
			return off, last, nil
		}
		if err := fn(&r, body); err != nil {
			return off, last, err
		}
		off += n
		last = &r
	}
}

func readEntry(r io.Reader) ([]byte, int64, error) {
	var hdr [8]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, 0, err
	}
	n := binary.LittleEndian.Uint32(hdr[:4])
	if n == 0 || n > 64<<20 {
		return nil, 0, errors.New("bad entry length")
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, 0, err
	}
	if crc32.Checksum(body, crcTable) != binary.LittleEndian.Uint32(hdr[4:]) {
		return nil, 0, errors.New("bad entry checksum")
	}
	return body, int64(8 + n), nil
}

// Append chains r after the spool's head, writes it, and returns once it is fsynced. Appends
// that arrive while an fsync runs share the next one.
func (s *Spool) Append(_ context.Context, r *decisionlog.Record) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("spool: append: %w: spool closed", decisionlog.ErrUnavailable)
	}
	if s.failed != nil {
		return fmt.Errorf("spool: append: %w: an earlier write failed, restart to recover: %w", decisionlog.ErrUnavailable, s.failed)
	}
	if s.pending >= s.cfg.MaxBytes {
		return fmt.Errorf("spool: append: %w: %w: %d bytes waiting for JetStream", decisionlog.ErrUnavailable, ErrFull, s.pending)
	}
	r.PDP.Instance = s.cfg.Instance
	s.head.Link(r)
	body, err := decisionlog.Seal(r)
	if err != nil {
		return fmt.Errorf("spool: append: %w: %w", decisionlog.ErrUnavailable, err)
	}
	if s.cfg.Check != nil {
		if err := s.cfg.Check(r, body); err != nil { // not written: the next record takes its seq
			return fmt.Errorf("spool: append: %w", err)
		}
	}
	if err := s.writeLocked(r.Seq, body); err != nil {
		// Nothing after this point was acknowledged; the head does not move.
		s.failed = err
		return fmt.Errorf("spool: append: %w: %w", decisionlog.ErrUnavailable, err)
	}
	s.head = decisionlog.After(r)
	s.written = r.Seq
	my := r.Seq
	for s.synced < my {
		if s.syncing {
			s.cond.Wait()
			continue
		}
		// Lead a group commit: fsync everything written so far, outside the lock.
		s.syncing = true
		upTo, f := s.written, s.seg
		s.mu.Unlock()
		err := s.sync(f)
		s.mu.Lock()
		s.syncing = false
		if err != nil {
			s.syncErr, s.failed = err, err
			s.cond.Broadcast()
			return fmt.Errorf("spool: fsync: %w: %w", decisionlog.ErrUnavailable, err)
		}
		if upTo > s.synced {
			s.synced = upTo
		}
		s.cond.Broadcast()
	}
	if s.failed != nil && s.synced < my {
		return fmt.Errorf("spool: fsync: %w: %w", decisionlog.ErrUnavailable, s.failed)
	}
	if s.syncErr != nil && s.synced < my {
		return fmt.Errorf("spool: fsync: %w: %w", decisionlog.ErrUnavailable, s.syncErr)
	}
	return nil
}

func (s *Spool) writeLocked(seq uint64, body []byte) error {
	if s.seg == nil || s.segSize >= s.cfg.SegmentBytes {
		if err := s.rotateLocked(seq); err != nil {
			return err
		}
	}
	buf := make([]byte, 8+len(body))
	binary.LittleEndian.PutUint32(buf[:4], uint32(len(body)))
	binary.LittleEndian.PutUint32(buf[4:8], crc32.Checksum(body, crcTable))
	copy(buf[8:], body)
	if _, err := s.seg.Write(buf); err != nil {
		// A partial write would corrupt the segment for later entries: cut it back.
		_ = s.seg.Truncate(s.segSize)
		return err
	}
	s.segSize += int64(len(buf))
	s.segs[len(s.segs)-1].size = s.segSize
	s.pending += int64(len(buf))
	s.cond.Broadcast()
	return nil
}

func (s *Spool) rotateLocked(first uint64) error {
	if s.seg != nil {
		if err := s.sync(s.seg); err != nil {
			return err
		}
		if err := s.seg.Close(); err != nil {
			return err
		}
	}
	path := filepath.Join(s.cfg.Dir, fmt.Sprintf("%020d.seg", first))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	if err := syncDir(s.cfg.Dir); err != nil {
		f.Close()
		return err
	}
	s.seg, s.segSize = f, 0
	s.segs = append(s.segs, segment{first: first, path: path})
	return nil
}

// Head is the chain head of the spool: the last record appended.
func (s *Spool) Head() decisionlog.ChainHead {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.head
}

// CheckpointedSeq is the seq of the last checkpoint the forwarder published.
func (s *Spool) CheckpointedSeq() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.checkpointed
}

// Err returns the sticky write or fsync error that stops appends until restart, or nil.
func (s *Spool) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.failed
}

// Rejected is how many records JetStream refused permanently since the spool opened; each is
// kept in Dir/rejected.
func (s *Spool) Rejected() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rejected
}

// Stats reports the records and bytes waiting to be forwarded.
func (s *Spool) Stats() (records uint64, bytes int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.synced - s.acked, s.pending
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func readCursor(path string) (uint64, error) {
	raw, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("spool: read cursor: %w", err)
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(raw)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("spool: cursor %s: %w", path, err)
	}
	return v, nil
}

func writeCursor(dir string, seq uint64) error {
	tmp := filepath.Join(dir, "cursor.tmp")
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(strconv.FormatUint(seq, 10) + "\n"); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, "cursor")); err != nil {
		return err
	}
	return syncDir(dir)
}
