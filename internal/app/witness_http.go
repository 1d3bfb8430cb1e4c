package app

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/custodyhq/custody/decisionlog"
)

// The HTTP witness: serve sends each checkpoint to a C2SP tlog-witness (POST <url>/add-checkpoint
// with "old <size>", a consistency proof from that size, and the signed note), and keeps the
// checkpoint cosigned by the witness's answer in DATA/witness/<host>.jsonl, a file custody verify
// --witness reads like a file witness (with --witness-key it also requires the cosignature).
// Sending is asynchronous: a witness that is slow or down never holds up a decision; the
// checkpoints it missed are covered by the next one it cosigns, whose proof starts at the size it
// last cosigned (the tree keeps the leaf hashes since then, see decisionlog/witness.go).

// witnessQueue bounds the checkpoints waiting for the HTTP witnesses; beyond it the oldest wait
// is dropped, since the next checkpoint covers it.
const witnessQueue = 64

// httpWitness is one --checkpoint-witness https://... and what it last cosigned.
type httpWitness struct {
	url  string
	out  string // cosigned checkpoints, one JSON line each
	size uint64 // the size it last cosigned; 0 while unknown
}

// httpWitnesses sends checkpoints to every HTTP witness, in order, from one goroutine.
type httpWitnesses struct {
	ws     []*httpWitness
	tree   *decisionlog.Tree
	client *http.Client
	log    zerolog.Logger
	queue  chan *decisionlog.Checkpoint
	once   sync.Once
	mu     sync.Mutex // guards closed against enqueue after stop
	closed bool
	done   chan struct{}
}

// checkWitnessURL accepts https, and http to a loopback host only: a checkpoint is not secret,
// but a cosignature fetched in the clear from afar is as good as none.
func checkWitnessURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return configErrorf("--checkpoint-witness %q: not a URL", raw)
	}
	if u.Scheme == "https" {
		return nil
	}
	host := u.Hostname()
	if ip := net.ParseIP(host); u.Scheme == "http" && (host == "localhost" || (ip != nil && ip.IsLoopback())) {
		return nil
	}
	return configErrorf("--checkpoint-witness %q: want https:// (http:// only to a loopback host)", raw)
}

func newHTTPWitnesses(urls []string, dataDir string, tree *decisionlog.Tree, log zerolog.Logger) (*httpWitnesses, error) {
	if len(urls) == 0 {
		return nil, nil
	}
	if tree == nil {
		log.Warn().Msg("HTTP checkpoint witnesses need the Merkle tree, which recovery could not rebuild: not sending checkpoints to them")
		return nil, nil
	}
	dir := filepath.Join(dataDir, "witness")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("app: witness: create %s: %w", dir, err)
	}
	h := &httpWitnesses{tree: tree, client: &http.Client{Timeout: 10 * time.Second}, log: log, queue: make(chan *decisionlog.Checkpoint, witnessQueue)}
	for _, raw := range urls {
		u, _ := url.Parse(raw)
		h.ws = append(h.ws, &httpWitness{url: strings.TrimRight(raw, "/"), out: filepath.Join(dir, decisionlog.Token(u.Host+u.Path)+".jsonl")})
	}
	tree.KeepLeaves()
	return h, nil
}

// start sends queued checkpoints until stop; the App's Run starts it and Close stops it.
func (h *httpWitnesses) start() {
	h.done = make(chan struct{})
	go func() { defer close(h.done); h.run() }()
}

// stop ends the sender once the checkpoints already queued are sent.
func (h *httpWitnesses) stop() {
	h.mu.Lock()
	if !h.closed {
		h.closed = true
		close(h.queue)
	}
	h.mu.Unlock()
	if h.done != nil {
		<-h.done
	}
}

// enqueue is the sink's checkpoint hook: it never blocks.
func (h *httpWitnesses) enqueue(cp *decisionlog.Checkpoint) {
	if cp.Schema != decisionlog.SchemaCheckpointV2 {
		return // a chain-only checkpoint has no tree to be consistent with
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return // the App is closing: the next start's checkpoint covers this one
	}
	for {
		select {
		case h.queue <- cp:
			return
		default:
			select {
			case <-h.queue: // drop the oldest; cp covers it
			default:
			}
		}
	}
}

func (h *httpWitnesses) run() {
	for cp := range h.queue {
		low := cp.Seq
		for _, w := range h.ws {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			err := w.add(ctx, h.client, h.tree, cp)
			cancel()
			if err != nil {
				h.log.Error().Err(err).Str("witness", w.url).Uint64("seq", cp.Seq).Msg("checkpoint not cosigned")
			}
			low = min(low, w.size)
		}
		if low > 0 {
			if err := h.tree.ForgetLeavesBefore(low); err != nil {
				h.log.Warn().Err(err).Msg("witness: kept leaves")
			}
		}
	}
}

// add sends cp to the witness, retrying once from the size a 409 names, and appends the
// cosigned checkpoint to w.out.
func (w *httpWitness) add(ctx context.Context, client *http.Client, tree *decisionlog.Tree, cp *decisionlog.Checkpoint) error {
	old := w.size
	for attempt := 0; ; attempt++ {
		if old > cp.Seq {
			return fmt.Errorf("witness: it has cosigned size %d, beyond this checkpoint's %d", old, cp.Seq)
		}
		proof, err := tree.ConsistencyProof(old, cp.Seq)
		if err != nil {
			return fmt.Errorf("witness: prove %d -> %d: %w", old, cp.Seq, err)
		}
		var body bytes.Buffer
		fmt.Fprintf(&body, "old %d\n", old)
		for _, p := range proof {
			body.WriteString(base64.StdEncoding.EncodeToString(p) + "\n")
		}
		body.WriteString("\n" + cp.Note)
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.url+"/add-checkpoint", &body)
		if err != nil {
			return fmt.Errorf("witness: %w", err)
		}
		resp, err := client.Do(req)
		if err != nil {
			return fmt.Errorf("witness: send: %w", err)
		}
		answer, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		if err != nil {
			return fmt.Errorf("witness: read answer: %w", err)
		}
		switch {
		case resp.StatusCode == http.StatusOK:
			return w.keep(cp, answer)
		case resp.StatusCode == http.StatusConflict && attempt == 0:
			// The witness knows another size: prove from that one.
			s, err := strconv.ParseUint(strings.TrimSpace(string(answer)), 10, 64)
			if err != nil {
				return fmt.Errorf("witness: 409 without a size: %q", excerptString(answer))
			}
			old = s
		default:
			return fmt.Errorf("witness: answered %s: %q", resp.Status, excerptString(answer))
		}
	}
}

// keep appends cp with the witness's signature lines added to its note.
func (w *httpWitness) keep(cp *decisionlog.Checkpoint, sigs []byte) error {
	for line := range strings.Lines(string(sigs)) {
		if !strings.HasPrefix(line, "— ") {
			return fmt.Errorf("witness: answer line %q is not a note signature", excerptString([]byte(line)))
		}
	}
	if !bytes.HasSuffix(sigs, []byte("\n")) {
		sigs = append(sigs, '\n')
	}
	cosigned := *cp
	cosigned.Note = cp.Note + string(sigs)
	if err := (fileWitness{path: w.out}).add(&cosigned); err != nil {
		return err
	}
	w.size = cp.Seq
	return nil
}

func excerptString(b []byte) string {
	if len(b) > 120 {
		return string(b[:120]) + "..."
	}
	return string(b)
}
