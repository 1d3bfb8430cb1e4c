package forward

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Item is one formatted record ready to deliver.
type Item struct {
	Seq   uint64    // stream sequence
	Time  time.Time // the record's time, for sinks that index by it (Splunk HEC)
	Event []byte    // one JSON object, no newline
}

// Sink delivers a batch. A nil error means every item is stored by the receiver; any error
// means the batch must be delivered again (at least once).
type Sink interface {
	Deliver(ctx context.Context, batch []Item) error
	// Name describes the destination for logs, without secrets.
	Name() string
}

// StatusError is a receiver's non-2xx answer.
type StatusError struct {
	Code       int
	RetryAfter time.Duration // from a Retry-After header, 0 when absent
	Body       string        // the start of the answer, for the operator
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("receiver answered %d: %s", e.Code, e.Body)
}

// Rejected reports a 4xx other than 408, 413 (the batch is split) and 429: the receiver refuses this request as it is,
// which a plain retry does not mend (a wrong token, a malformed event). The forwarder still
// never drops the batch: it retries at the capped backoff and reports itself unhealthy.
func (e *StatusError) Rejected() bool {
	return e.Code >= 400 && e.Code < 500 && e.Code != http.StatusRequestTimeout && e.Code != http.StatusTooManyRequests && e.Code != http.StatusRequestEntityTooLarge
}

// HTTPSink POSTs each batch as one request: newline-delimited JSON events
// (application/x-ndjson), or Splunk HTTP Event Collector events when SplunkToken is set.
type HTTPSink struct {
	URL    string
	Client *http.Client
	// SplunkToken switches to the HEC format and its "Authorization: Splunk <token>" header.
	SplunkToken string
	// SourceType is the HEC sourcetype of each event.
	SourceType string
}

// Name is the URL without credentials or query.
func (s *HTTPSink) Name() string {
	u := s.URL
	if i := strings.IndexAny(u, "?#"); i >= 0 {
		u = u[:i]
	}
	if at := strings.Index(u, "@"); at >= 0 {
		if scheme := strings.Index(u, "://"); scheme >= 0 && scheme < at {
			u = u[:scheme+3] + u[at+1:]
		}
	}
	return u
}

// hecEvent is one event in Splunk HEC's /services/collector/event format.
type hecEvent struct {
	Time       string          `json:"time"`
	Source     string          `json:"source"`
	SourceType string          `json:"sourcetype"`
	Event      json.RawMessage `json:"event"`
}

// Deliver implements Sink.
func (s *HTTPSink) Deliver(ctx context.Context, batch []Item) error {
	var body bytes.Buffer
	for _, it := range batch {
		if s.SplunkToken != "" {
			b, err := json.Marshal(hecEvent{
				Time:   strconv.FormatFloat(float64(it.Time.UnixMilli())/1000, 'f', 3, 64),
				Source: "custody", SourceType: s.SourceType, Event: it.Event,
			})
			if err != nil {
				return fmt.Errorf("forward: encode HEC event for seq %d: %w", it.Seq, err)
			}
			body.Write(b)
		} else {
			body.Write(it.Event)
		}
		body.WriteByte('\n')
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.URL, &body)
	if err != nil {
		return fmt.Errorf("forward: build request: %w", err)
	}
	if s.SplunkToken != "" {
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Splunk "+s.SplunkToken)
	} else {
		req.Header.Set("Content-Type", "application/x-ndjson")
	}
	resp, err := s.Client.Do(req)
	if err != nil {
		// The URL in err is the configured one; it holds no token (that is a header).
		return fmt.Errorf("forward: post batch: %w", err)
	}
	defer resp.Body.Close()
	head, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20)) // let the connection be reused
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return nil
	}
	se := &StatusError{Code: resp.StatusCode, Body: strings.TrimSpace(string(head))}
	if ra := resp.Header.Get("Retry-After"); ra != "" {
		if secs, err := strconv.Atoi(ra); err == nil && secs > 0 {
			se.RetryAfter = time.Duration(secs) * time.Second
		}
	}
	return fmt.Errorf("forward: post batch: %w", se)
}

// FileSink appends batches to NDJSON files in Dir, starting a new file when the current one
// reaches MaxBytes. A batch is delivered once it is written and synced to disk. Each run starts
// a new file, so that a line torn by a crash is never continued.
type FileSink struct {
	Dir      string
	MaxBytes int64

	f    *os.File
	size int64
}

// Name is the directory.
func (s *FileSink) Name() string { return "file:" + s.Dir }

// Deliver implements Sink.
func (s *FileSink) Deliver(_ context.Context, batch []Item) error {
	if len(batch) == 0 {
		return nil
	}
	if s.f == nil || (s.MaxBytes > 0 && s.size >= s.MaxBytes) {
		if err := s.rotate(batch[0].Seq); err != nil {
			return err
		}
	}
	var buf bytes.Buffer
	for _, it := range batch {
		buf.Write(it.Event)
		buf.WriteByte('\n')
	}
	n, err := s.f.Write(buf.Bytes())
	s.size += int64(n)
	if err == nil {
		err = s.f.Sync()
	}
	if err != nil {
		s.f.Close()
		s.f = nil // a file in an unknown state is not written again
		return fmt.Errorf("forward: write %s: %w", s.Dir, err)
	}
	return nil
}

func (s *FileSink) rotate(firstSeq uint64) error {
	if s.f != nil {
		if err := s.f.Close(); err != nil {
			return fmt.Errorf("forward: close %s: %w", s.f.Name(), err)
		}
		s.f = nil
	}
	if err := os.MkdirAll(s.Dir, 0o750); err != nil {
		return fmt.Errorf("forward: create %s: %w", s.Dir, err)
	}
	// The name sorts in stream order: the first sequence, zero-padded, then a time for
	// uniqueness across restarts that begin at the same record.
	name := fmt.Sprintf("custody-%020d-%s.ndjson", firstSeq, time.Now().UTC().Format("20060102T150405.000000000"))
	f, err := os.OpenFile(filepath.Join(s.Dir, name), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o640)
	if err != nil {
		return fmt.Errorf("forward: create file: %w", err)
	}
	s.f, s.size = f, 0
	return nil
}

// Close closes the current file.
func (s *FileSink) Close() error {
	if s.f == nil {
		return nil
	}
	err := s.f.Close()
	s.f = nil
	if err != nil {
		return fmt.Errorf("forward: close file: %w", err)
	}
	return nil
}

// errTooLarge is how a sink says the batch must be split.
var errTooLarge = errors.New("batch too large")

func tooLarge(err error) bool {
	var se *StatusError
	return errors.Is(err, errTooLarge) || (errors.As(err, &se) && se.Code == http.StatusRequestEntityTooLarge)
}
