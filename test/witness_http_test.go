package test

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/custodyhq/custody/decisionlog"
	"github.com/custodyhq/custody/internal/natstest"
)

// tlogWitness is a C2SP tlog-witness for the test: POST /add-checkpoint takes "old <size>", a
// consistency proof and a checkpoint signed by the log's key, answers 409 with its own size when
// old is not it, 422 when the proof does not lead from its checkpoint to the new one, and else
// cosigns (an Ed25519 note signature over the checkpoint text) and remembers the new size.
type tlogWitness struct {
	log    note.Verifier
	signer note.Signer

	mu                         sync.Mutex
	size                       map[string]uint64
	root                       map[string][]byte
	cosigned, conflicts, wrong int
}

func (w *tlogWitness) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/add-checkpoint" {
		http.NotFound(rw, r)
		return
	}
	raw, _ := io.ReadAll(r.Body)
	head, signed, ok := strings.Cut(string(raw), "\n\n")
	lines := strings.Split(head, "\n")
	oldText, hasOld := strings.CutPrefix(lines[0], "old ")
	old, err := strconv.ParseUint(oldText, 10, 64)
	if !ok || !hasOld || err != nil {
		http.Error(rw, "malformed request", http.StatusBadRequest)
		return
	}
	var proof [][]byte
	for _, l := range lines[1:] {
		b, err := base64.StdEncoding.DecodeString(l)
		if err != nil {
			http.Error(rw, "malformed proof", http.StatusBadRequest)
			return
		}
		proof = append(proof, b)
	}
	n, err := note.Open([]byte(signed), note.VerifierList(w.log))
	if err != nil {
		http.Error(rw, "checkpoint not signed by the log", http.StatusForbidden)
		return
	}
	text := strings.Split(n.Text, "\n")
	origin := text[0]
	size, err1 := strconv.ParseUint(text[1], 10, 64)
	root, err2 := base64.StdEncoding.DecodeString(text[2])
	if err1 != nil || err2 != nil {
		http.Error(rw, "malformed checkpoint", http.StatusBadRequest)
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if old != w.size[origin] {
		w.conflicts++
		rw.Header().Set("Content-Type", "text/x.tlog.size")
		rw.WriteHeader(http.StatusConflict)
		fmt.Fprintf(rw, "%d\n", w.size[origin])
		return
	}
	if size < old {
		http.Error(rw, "size goes back", http.StatusBadRequest)
		return
	}
	if old > 0 {
		if err := decisionlog.VerifyConsistency(old, size, proof, w.root[origin], root); err != nil {
			w.wrong++
			http.Error(rw, "bad consistency proof: "+err.Error(), http.StatusUnprocessableEntity)
			return
		}
	}
	cosig, err := note.Sign(&note.Note{Text: n.Text}, w.signer)
	if err != nil {
		http.Error(rw, err.Error(), http.StatusInternalServerError)
		return
	}
	w.size[origin], w.root[origin] = size, root
	w.cosigned++
	_, _ = rw.Write(cosig[len(n.Text)+1:]) // the signature lines, after the blank line
}

func (w *tlogWitness) counts() (cosigned, conflicts, wrong int, size uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, s := range w.size {
		size = max(size, s)
	}
	return w.cosigned, w.conflicts, w.wrong, size
}

// TestHTTPWitnessCosignsAcrossRestart: serve sends its checkpoints to a C2SP tlog-witness with
// consistency proofs the witness checks, across a restart (where the witness's 409 tells serve
// the size to prove from); the cosigned checkpoints serve keeps pass verify with the witness's
// key, fail with another key, and catch a tail removed from an export with its checkpoints.
func TestHTTPWitnessCosignsAcrossRestart(t *testing.T) {
	skey, vkey, err := decisionlog.GenerateSigningKey("custody-test-log")
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(t.TempDir(), "checkpoint.key")
	writeFile(t, keyFile, skey+"\n")
	logVerifier, err := note.NewVerifier(vkey)
	if err != nil {
		t.Fatal(err)
	}
	wskey, wvkey, err := note.GenerateKey(rand.Reader, "witness.test")
	if err != nil {
		t.Fatal(err)
	}
	wsigner, _ := note.NewSigner(wskey)
	_, otherKey, _ := note.GenerateKey(rand.Reader, "witness.test")
	w := &tlogWitness{log: logVerifier, signer: wsigner, size: map[string]uint64{}, root: map[string][]byte{}}
	ws := httptest.NewServer(w)
	defer ws.Close()

	dir := t.TempDir()
	args := []string{"--signing-key", keyFile, "--checkpoint-every", "3", "--checkpoint-interval", "200ms", "--checkpoint-witness", ws.URL}
	post := func(c *custody, n int, tag string) {
		for i := range n {
			var d struct{}
			if st := postJSON(t, c.HTTP+"/v1/authorize", fmt.Sprintf(`{"correlation_id":"%s-%d","agent":{"id":"ops"},"tool":{"name":"read_file","arguments":{}}}`, tag, i), &d); st != http.StatusOK {
				t.Fatalf("authorize: status %d", st)
			}
		}
	}
	waitCosigned := func(atLeast uint64) {
		natstest.CheckFor(t, 20*time.Second, 50*time.Millisecond, func() error {
			if _, _, _, size := w.counts(); size < atLeast {
				return fmt.Errorf("witness at size %d, want %d", size, atLeast)
			}
			return nil
		})
	}
	c := startCustody(t, dir, args...)
	post(c, 10, "a")
	waitCosigned(10)
	c.Stop(t)

	c = startCustody(t, dir, args...)
	post(c, 8, "b")
	waitCosigned(18)
	cosigned, conflicts, wrong, _ := w.counts()
	if wrong != 0 || conflicts == 0 || cosigned < 4 {
		t.Fatalf("witness: %d cosigned, %d conflicts (want the restart's), %d bad proofs", cosigned, conflicts, wrong)
	}
	export := filepath.Join(t.TempDir(), "export.jsonl")
	if out, err := runCustody(t, "export", "--nats-url", c.NATS, "--data-dir", dir, "--out", export); err != nil {
		t.Fatalf("export: %v\n%s", err, out)
	}
	c.Stop(t)

	kept, err := filepath.Glob(filepath.Join(dir, "witness", "*.jsonl"))
	if err != nil || len(kept) != 1 {
		t.Fatalf("cosigned checkpoints kept in %v (%v)", kept, err)
	}
	if out, err := runCustody(t, "verify", "--file", export, "--pubkey", vkey, "--witness", kept[0], "--witness-key", wvkey); err != nil {
		t.Fatalf("verify with the witness's cosignatures: %v\n%s", err, out)
	}
	if out, err := runCustody(t, "verify", "--file", export, "--pubkey", vkey, "--witness", kept[0], "--witness-key", otherKey); err == nil {
		t.Fatalf("verify accepted cosignatures by another key:\n%s", out)
	}
	// A tail removed with its checkpoints: the export alone looks whole, the cosigned copy does not.
	lines := readLines(t, export)
	cut := -1
	for i, l := range lines {
		if strings.Contains(l, `"custody.checkpoint.v2"`) {
			cut = i + 1
			break
		}
	}
	if cut < 0 || cut >= len(lines)-1 {
		t.Fatalf("no checkpoint with records after it in the export (%d lines)", len(lines))
	}
	short := filepath.Join(t.TempDir(), "short.jsonl")
	if err := os.WriteFile(short, []byte(strings.Join(lines[:cut], "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := runCustody(t, "verify", "--file", short, "--pubkey", vkey, "--witness", kept[0], "--witness-key", wvkey)
	if err == nil || !strings.Contains(out, "truncated") {
		t.Fatalf("the cosigned checkpoints did not catch the removed tail: %v\n%s", err, out)
	}
}
