package verify

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"golang.org/x/mod/sumdb/note"

	"github.com/custodyhq/custody/decisionlog"
	"github.com/custodyhq/custody/schema"
)

// Message is one message of the decision stream: its subject ("" when unknown, as in an
// export file) and its body.
type Message struct {
	Subject string
	Data    []byte
}

// Check verifies msgs, given in stream order. With verifiers nil, checkpoint signatures are not
// checked: checkpoints are still read and compared with the chains, and the report says so.
func Check(msgs []Message, verifiers note.Verifiers) *Report {
	c := NewChecker(verifiers)
	for _, m := range msgs {
		c.Add(m)
	}
	return c.Report()
}

// Checker verifies a stream one message at a time, for streams too large to hold: it keeps
// about a hundred bytes per record, never the records themselves.
type Checker struct {
	verifiers   note.Verifiers
	messages    int
	records     int
	unchained   int
	chains      map[string]*chain
	decisions   map[string]int // decision_id -> message number where first seen
	checkpoints []checkpoint
	breaks      []Break // found while reading; Report adds those that need the whole stream
	strict      bool
	keyNames    []string // with strict: the names of the keys given
}

// Option changes how a Checker judges the stream.
type Option func(*Checker)

// RequireSigned makes unattested records breaks: an unchained record; an instance none of whose
// checkpoints verifies with its own key (named decisionlog.SigningKeyName(instance)) among the
// given keys, whose names are keyNames; and a stream on which no given key verified anything
// (wiped, or not the stream the keys are for). A given key that verified nothing while others
// did is a warning: a fleet's key file may name retired instances.
func RequireSigned(keyNames ...string) Option {
	return func(c *Checker) { c.strict, c.keyNames = true, keyNames }
}

// NewChecker returns a Checker that verifies checkpoint signatures with verifiers, or does not
// check them when verifiers is nil.
func NewChecker(verifiers note.Verifiers, opts ...Option) *Checker {
	c := &Checker{verifiers: verifiers, chains: map[string]*chain{}, decisions: map[string]int{}}
	for _, o := range opts {
		o(c)
	}
	return c
}

// digest is a SHA-256 hash: a record's hash or prev_hash, decoded.
type digest [sha256.Size]byte

// parseDigest decodes 64 lowercase hex digits, the only form decisionlog.Seal writes.
func parseDigest(s string) (digest, bool) {
	var d digest
	if len(s) != 2*len(d) || strings.ToLower(s) != s {
		return d, false
	}
	if _, err := hex.Decode(d[:], []byte(s)); err != nil {
		return d, false
	}
	return d, true
}

func (d digest) String() string { return hex.EncodeToString(d[:]) }

// short is a hash shortened for reading; details name full hashes only where they matter.
func (d digest) short() string { return hex.EncodeToString(d[:6]) }

// node is what the checker keeps of one chained record.
type node struct {
	hash   digest
	prev   digest
	hashOK bool   // hash is known: sealed, or at least a well-formed claim
	sealed bool   // the body hashes to its hash member
	prevOK bool   // prev is a hash to check (false for seq 1 and for a malformed prev_hash)
	leaf   digest // the record's RFC 6962 leaf hash
	msg    int
}

// chain is what the checker knows of one instance.
type chain struct {
	name        string
	records     map[uint64]node   // the first record seen at each seq
	forks       map[uint64][]node // further, different records claiming a seq already seen
	count       int               // chained records, forks included
	unchained   int
	minSeq      uint64
	maxSeq      uint64 // highest seq so far in stream order
	maxMsg      int    // the message that carried maxSeq
	firstMsg    int    // the message of the first chained record
	checkpoints int    // checkpoints that parsed (and verified, when signatures are checked)
	// firstUnchained is the message of the first unchained record.
	firstUnchained int
	signers        map[string]bool
}

// at appends the records at seq to buf[:0] and returns it: the first seen, then any forks.
func (ch *chain) at(seq uint64, buf []node) []node {
	buf = buf[:0]
	n, ok := ch.records[seq]
	if !ok {
		return buf
	}
	return append(append(buf, n), ch.forks[seq]...)
}

// checkpoint is a checkpoint that parsed and, when signatures are checked, verified.
type checkpoint struct {
	instance string
	head     decisionlog.ChainHead
	digest   digest
	root     []byte   // the signed Merkle root; nil for a v1 checkpoint
	frontier [][]byte // the unsigned compact range, nil when absent or malformed
	witness  bool     // read from a witness copy, not the stream
	msg      int
}

func (c *Checker) chain(instance string) *chain {
	ch := c.chains[instance]
	if ch == nil {
		ch = &chain{name: instance, records: map[uint64]node{}, forks: map[uint64][]node{}, signers: map[string]bool{}}
		c.chains[instance] = ch
	}
	return ch
}

func (c *Checker) report(b Break) { c.breaks = append(c.breaks, b) }

// wire holds the fields of both message schemas that verification reads. Decoding into it,
// rather than into decisionlog.Record, keeps the check independent of the fields it does not
// need and cheap on records with large arguments.
type wire struct {
	Schema string `json:"schema"`
	Seq    uint64 `json:"seq"`
	Hash   string `json:"hash"`

	// custody.decision.v1
	DecisionID    string `json:"decision_id"`
	CorrelationID string `json:"correlation_id"`
	Allow         bool   `json:"allow"`
	Agent         *struct {
		ID string `json:"id"`
	} `json:"agent"`
	Action struct {
		Name string `json:"name"`
	} `json:"action"`
	PDP struct {
		Instance string `json:"instance"`
	} `json:"pdp"`
	PrevHash string `json:"prev_hash"`

	// custody.execution.v1: chained like a decision, identified by its execution ID
	ExecutionID string `json:"execution_id"`
	Execution   *struct {
		Status string `json:"status"`
	} `json:"execution"`

	// custody.unseal.v1: chained like a decision, identified by its unseal ID
	UnsealID string `json:"unseal_id"`

	// custody.checkpoint.v1 and v2
	Instance string   `json:"instance"`
	Note     string   `json:"note"`
	Tree     []string `json:"tree"`
}

// Add checks the next message of the stream.
func (c *Checker) Add(m Message) {
	c.messages++
	msg := c.messages
	var w wire
	if err := json.Unmarshal(m.Data, &w); err != nil {
		c.report(Break{Kind: Unparseable, Msg: msg, Detail: fmt.Sprintf("%scannot be read as a custody message (%v): %s", onSubject(m), err, excerpt(m.Data))})
		return
	}
	switch w.Schema {
	case decisionlog.SchemaDecisionV1, decisionlog.SchemaExecutionV1, decisionlog.SchemaUnsealV1:
		c.addDecision(m, msg, &w)
	case decisionlog.SchemaCheckpointV1, decisionlog.SchemaCheckpointV2:
		c.addCheckpoint(m, msg, &w, false)
	default:
		c.report(Break{Kind: Unparseable, Msg: msg, Detail: fmt.Sprintf("%sunknown schema %s: %s", onSubject(m), excerpt([]byte(w.Schema)), excerpt(m.Data))})
	}
}

func onSubject(m Message) string {
	if m.Subject == "" {
		return ""
	}
	return "on " + printable(m.Subject) + ": "
}

// excerpt quotes the start of b for a detail line.
func excerpt(b []byte) string {
	const max = 60
	if len(b) > max {
		return fmt.Sprintf("%q...", b[:max])
	}
	return fmt.Sprintf("%q", b)
}

func (c *Checker) addDecision(m Message, msg int, w *wire) {
	c.records++
	inst, seq := w.PDP.Instance, w.Seq
	ch := c.chain(inst)
	if m.Subject != "" {
		r := decisionlog.Record{Schema: w.Schema, Allow: w.Allow, Action: schema.Action{Name: w.Action.Name}, CorrelationID: w.CorrelationID,
			DecisionID: w.DecisionID, PDP: decisionlog.Instance{Instance: w.PDP.Instance}}
		if w.Agent != nil {
			r.Agent = &schema.Agent{ID: w.Agent.ID}
		}
		if w.Execution != nil {
			r.Execution = &decisionlog.Execution{Status: w.Execution.Status}
		}
		if want := decisionlog.RecordSubject(&r); m.Subject != want {
			c.report(Break{Instance: inst, Seq: seq, Kind: WrongSubject, Msg: msg, Detail: fmt.Sprintf(
				"published on %s, but its content (outcome, agent, tool, correlation ID) belongs on %s: consumers filtering by subject see it wrongly", printable(m.Subject), want)})
		}
	}

	if seq == 0 {
		c.unchained++
		ch.unchained++
		if ch.firstUnchained == 0 {
			ch.firstUnchained = msg
		}
		c.checkDecisionID(w, inst, seq, msg)
		if w.Hash != "" || w.PrevHash != "" {
			c.report(Break{Instance: inst, Seq: 0, Kind: Edited, Msg: msg, Detail: fmt.Sprintf(
				"decision %s has hash or prev_hash but no seq: custody never writes that", printable(w.DecisionID))})
		} else if ch.count > 0 {
			c.report(Break{Instance: inst, Seq: 0, Kind: Inserted, Msg: msg, Detail: fmt.Sprintf(
				"decision %s is unchained (no seq, no hash) but this instance's chain began at message %d: custody does not go back to unchained records, and nothing vouches for this one", printable(w.DecisionID), ch.firstMsg)})
		}
		return
	}

	n := node{msg: msg, leaf: digest(decisionlog.LeafHash(m.Data))}
	claimed, err := decisionlog.BodyHash(m.Data)
	if err == nil {
		n.hash, n.hashOK = parseDigest(claimed)
		n.sealed = n.hashOK
	} else {
		n.hash, n.hashOK = parseDigest(w.Hash)
		detail := "its content does not hash to its hash member: the record was edited after it was sealed (" + strings.TrimPrefix(err.Error(), decisionlog.ErrBadHash.Error()+": ") + ")"
		if !n.hashOK {
			detail = "it has a seq but no well-formed trailing hash member: the record was edited, or never sealed"
		}
		c.report(Break{Instance: inst, Seq: seq, Kind: Edited, Msg: msg, Detail: detail})
	}

	// The very same record again (same seq, same sealed bytes): report it once and go no further.
	for _, o := range ch.at(seq, nil) {
		if o.sealed && n.sealed && o.hash == n.hash {
			c.report(Break{Instance: inst, Seq: seq, Kind: Duplicate, Msg: msg, Detail: fmt.Sprintf(
				"decision %s appears again, byte for byte (first at message %d): the stream stored it twice", printable(w.DecisionID), o.msg)})
			return
		}
	}
	c.checkDecisionID(w, inst, seq, msg)

	_, seen := ch.records[seq]
	if !seen && seq < ch.maxSeq {
		c.report(Break{Instance: inst, Seq: seq, Kind: Reordered, Msg: msg, Detail: fmt.Sprintf(
			"seq %d comes after seq %d (message %d) in stream order: custody publishes an instance's records in order", seq, ch.maxSeq, ch.maxMsg)})
	}
	if seq > ch.maxSeq {
		ch.maxSeq, ch.maxMsg = seq, msg
	}

	switch {
	case seq == 1 && w.PrevHash != "":
		c.report(Break{Instance: inst, Seq: seq, Kind: Edited, Msg: msg, Detail: "seq 1 has a prev_hash: the first record of a chain has none"})
	case seq > 1 && w.PrevHash == "":
		c.report(Break{Instance: inst, Seq: seq, Kind: Edited, Msg: msg, Detail: fmt.Sprintf("seq %d has no prev_hash: only seq 1 may lack one", seq)})
	case seq > 1:
		if n.prev, n.prevOK = parseDigest(w.PrevHash); !n.prevOK {
			c.report(Break{Instance: inst, Seq: seq, Kind: Edited, Msg: msg, Detail: fmt.Sprintf("prev_hash %s is not 64 lowercase hex digits", excerpt([]byte(w.PrevHash)))})
		}
	}

	if seen {
		ch.forks[seq] = append(ch.forks[seq], n)
	} else {
		ch.records[seq] = n
	}
	if ch.count == 0 || seq < ch.minSeq {
		ch.minSeq = seq
	}
	if ch.count == 0 {
		ch.firstMsg = msg
	}
	ch.count++
}

// checkDecisionID reports a decision ID seen before. custody sets Nats-Msg-Id to the decision
// ID, so the stream's deduplication should make this impossible within its window.
// An execution is identified by its execution_id (its decision_id names the decision it reports on).
func (c *Checker) checkDecisionID(w *wire, inst string, seq uint64, msg int) {
	id, key := w.DecisionID, "decision_id"
	switch w.Schema {
	case decisionlog.SchemaExecutionV1:
		id, key = w.ExecutionID, "execution_id"
	case decisionlog.SchemaUnsealV1:
		id, key = w.UnsealID, "unseal_id"
	}
	if id == "" {
		return
	}
	if first, ok := c.decisions[id]; ok {
		c.report(Break{Instance: inst, Seq: seq, Kind: Duplicate, Msg: msg, Detail: fmt.Sprintf(
			"%s %s was already used at message %d, by a different record", key, printable(id), first)})
		return
	}
	c.decisions[id] = msg
}

// AddWitnessed adds a checkpoint kept by a witness (custody serve --checkpoint-witness): one
// the stream's operator could not rewrite. It is checked like a checkpoint on the stream, so a
// tail removed from the stream together with its checkpoints shows as truncated, and a
// rewritten history as a tree mismatch. Call it before or after the stream's messages.
func (c *Checker) AddWitnessed(data []byte) {
	c.messages++
	var w wire
	if err := json.Unmarshal(data, &w); err != nil || (w.Schema != decisionlog.SchemaCheckpointV1 && w.Schema != decisionlog.SchemaCheckpointV2) {
		c.report(Break{Kind: Unparseable, Msg: c.messages, Detail: "witness entry is not a custody checkpoint: " + excerpt(data)})
		return
	}
	c.addCheckpoint(Message{}, c.messages, &w, true)
}

func (c *Checker) addCheckpoint(m Message, msg int, w *wire, witness bool) {
	inst := w.Instance
	if m.Subject != "" {
		if want := decisionlog.CheckpointSubject(inst); m.Subject != want {
			c.report(Break{Instance: inst, Seq: w.Seq, Kind: WrongSubject, Msg: msg, Detail: fmt.Sprintf(
				"checkpoint published on %s, want %s", printable(m.Subject), want)})
		}
	}
	cp := &decisionlog.Checkpoint{Schema: w.Schema, Instance: inst, Seq: w.Seq, Hash: w.Hash, Note: w.Note, Tree: w.Tree}
	var (
		st      decisionlog.CheckpointState
		err     error
		signers []string
	)
	if c.verifiers != nil {
		rv := &recordingVerifiers{known: c.verifiers}
		st, err = decisionlog.OpenCheckpointState(cp, rv)
		signers = rv.names
	} else {
		st, err = decisionlog.ReadCheckpointStateUnverified(cp)
	}
	head := st.Head
	if err != nil {
		c.report(Break{Instance: inst, Seq: w.Seq, Kind: BadCheckpoint, Msg: msg, Detail: checkpointError(err)})
		return
	}
	if head.Seq != w.Seq || head.Hash != w.Hash {
		c.report(Break{Instance: inst, Seq: w.Seq, Kind: BadCheckpoint, Msg: msg, Detail: fmt.Sprintf(
			"its fields (seq %d, hash %s) disagree with its signed note (seq %d, hash %s)", w.Seq, excerpt([]byte(w.Hash)), head.Seq, head.Hash)})
		return
	}
	d, ok := parseDigest(head.Hash)
	if head.Seq == 0 || !ok {
		c.report(Break{Instance: inst, Seq: w.Seq, Kind: BadCheckpoint, Msg: msg, Detail: "it commits to seq 0: chains start at seq 1"})
		return
	}
	ch := c.chain(inst)
	ch.checkpoints++
	for _, s := range signers {
		ch.signers[s] = true
	}
	if (w.Schema == decisionlog.SchemaCheckpointV2) != (st.Root != nil) {
		c.report(Break{Instance: inst, Seq: w.Seq, Kind: BadCheckpoint, Msg: msg, Detail: "its schema and its signed note disagree on whether it signs a Merkle root"})
		return
	}
	frontier, ferr := cp.Frontier()
	if ferr != nil || len(frontier) == 0 {
		frontier = nil
	}
	c.checkpoints = append(c.checkpoints, checkpoint{instance: inst, head: head, digest: d, root: st.Root, frontier: frontier, witness: witness, msg: msg})
}

// checkpointError explains why a checkpoint did not open.
func checkpointError(err error) string {
	var unverified *note.UnverifiedNoteError
	if errors.As(err, &unverified) {
		var names []string
		for _, s := range unverified.Note.UnverifiedSigs {
			names = append(names, fmt.Sprintf("%s+%08x", s.Name, s.Hash))
		}
		return fmt.Sprintf("signed only by keys not given (%s): a forgery, or a key missing from --pubkey", strings.Join(names, ", "))
	}
	return err.Error()
}

// recordingVerifiers wraps the known verifiers to learn which keys signed a note.
type recordingVerifiers struct {
	known note.Verifiers
	names []string
}

func (r *recordingVerifiers) Verifier(name string, hash uint32) (note.Verifier, error) {
	v, err := r.known.Verifier(name, hash)
	if err != nil {
		return nil, err // an *UnknownVerifierError must reach note.Open unwrapped
	}
	return recordingVerifier{Verifier: v, r: r}, nil
}

type recordingVerifier struct {
	note.Verifier
	r *recordingVerifiers
}

func (v recordingVerifier) Verify(msg, sig []byte) bool {
	ok := v.Verifier.Verify(msg, sig)
	if ok {
		v.r.names = append(v.r.names, v.Name())
	}
	return ok
}

// Report returns what the messages added so far show. The checks that need the whole stream
// (gaps, chain links, forks, checkpoints against records) run here; Add may be called again
// afterwards and Report asked again.
func (c *Checker) Report() *Report {
	r := &Report{
		Messages:          c.messages,
		Records:           c.records,
		Unchained:         c.unchained,
		Checkpoints:       len(c.checkpoints),
		Witnessed:         countFunc(c.checkpoints, func(cp checkpoint) bool { return cp.witness }),
		SignaturesChecked: c.verifiers != nil,
		Breaks:            slices.Clone(c.breaks),
	}
	byInstance := map[string][]checkpoint{}
	for _, cp := range c.checkpoints {
		byInstance[cp.instance] = append(byInstance[cp.instance], cp)
	}
	signedBy := map[string]bool{}
	var unattested []Break
	for _, name := range slices.Sorted(maps.Keys(c.chains)) {
		ch := c.chains[name]
		sum, breaks := ch.verify(byInstance[name], c.verifiers != nil)
		if c.verifiers != nil {
			sum.CheckpointsVerified = sum.Checkpoints
		}
		r.Chains = append(r.Chains, sum)
		r.Breaks = append(r.Breaks, breaks...)
		for s := range ch.signers {
			signedBy[s] = true
		}
		unattested = append(unattested, c.unattested(ch)...)
	}
	var unused []Break
	if c.strict {
		reported := map[string]bool{} // instances already reported as unsigned, by key name
		for _, b := range unattested {
			if b.Kind == Unsigned {
				reported[decisionlog.SigningKeyName(b.Instance)] = true
			}
		}
		for _, k := range c.keyNames {
			if !signedBy[k] && !reported[k] {
				unused = append(unused, Break{Instance: strings.TrimPrefix(k, "custody-"), Kind: Unsigned, Detail: fmt.Sprintf(
					"key %s verified no checkpoint on the stream: its instance's records and checkpoints are gone, or the key is not in use", printable(k))})
			}
		}
		if len(signedBy) == 0 && len(c.keyNames) > 0 {
			// Nothing on the stream is signed by any given key: wiped, or the wrong stream.
			unattested = append(unattested, unused...)
			unused = nil
		}
		r.Breaks = append(r.Breaks, unattested...)
		r.Warnings = unused
	} else {
		r.Warnings = unattested
	}
	order := func(a, b Break) int {
		return cmp.Or(cmp.Compare(a.Instance, b.Instance), cmp.Compare(a.Seq, b.Seq), cmp.Compare(a.Msg, b.Msg), cmp.Compare(a.Kind, b.Kind))
	}
	slices.SortStableFunc(r.Breaks, order)
	slices.SortStableFunc(r.Warnings, order)
	return r
}

// unattested lists what nothing vouches for in ch: unchained records, and chained records
// without a checkpoint verified by the instance's own key.
func (c *Checker) unattested(ch *chain) []Break {
	var out []Break
	if ch.unchained > 0 {
		out = append(out, Break{Instance: ch.name, Kind: Unchained, Msg: ch.firstUnchained, Detail: fmt.Sprintf(
			"%d %s without seq and hash (first at message %d): nothing vouches for them, anyone who may publish could have written them",
			ch.unchained, plural(uint64(ch.unchained), "record", "records"), ch.firstUnchained)})
	}
	if ch.count == 0 && ch.unchained == 0 {
		return out // only checkpoints
	}
	own := decisionlog.SigningKeyName(ch.name)
	switch {
	case c.verifiers == nil:
		out = append(out, Break{Instance: ch.name, Kind: Unsigned, Detail: "no checkpoint signature was checked (no --pubkey): nothing shows custody wrote these records"})
	case ch.checkpoints == 0:
		out = append(out, Break{Instance: ch.name, Kind: Unsigned, Detail: fmt.Sprintf(
			"no checkpoint of this instance verifies with the given keys: a forged instance, or its key %s is missing from --pubkey", printable(own))})
	case c.strict && !ch.signers[own]:
		out = append(out, Break{Instance: ch.name, Kind: Unsigned, Detail: fmt.Sprintf(
			"its checkpoints are signed only by %s, not by its own key %s: the instance is not in --pubkey", strings.Join(slices.Sorted(maps.Keys(ch.signers)), ", "), printable(own))})
	}
	return out
}

// verify runs the whole-stream checks of one instance's chain against its checkpoints.
func (ch *chain) verify(cps []checkpoint, signed bool) (Chain, []Break) {
	sum := Chain{
		Instance:    ch.name,
		Records:     ch.count,
		Unchained:   ch.unchained,
		FirstSeq:    ch.minSeq,
		LastSeq:     ch.maxSeq,
		Checkpoints: ch.checkpoints,
		Signers:     slices.Sorted(maps.Keys(ch.signers)),
	}
	if n, ok := ch.records[ch.maxSeq]; ok && n.hashOK {
		sum.HeadHash = n.hash.String()
	}
	var breaks []Break
	add := func(seq uint64, kind Kind, msg int, format string, args ...any) {
		breaks = append(breaks, Break{Instance: ch.name, Seq: seq, Kind: kind, Msg: msg, Detail: fmt.Sprintf(format, args...)})
	}

	committed := map[uint64][]digest{} // checkpointed hashes by seq
	for _, cp := range cps {
		committed[cp.head.Seq] = append(committed[cp.head.Seq], cp.digest)
	}

	seqs := slices.Sorted(maps.Keys(ch.records))
	var cur, prev, next []node // reused, to spare an allocation per record
	for i, s := range seqs {
		cur = ch.at(s, cur)
		if i > 0 && s > seqs[i-1]+1 {
			from, to := seqs[i-1]+1, s-1
			if from == to {
				add(from, Missing, cur[0].msg, "seq %d is missing: seq %d is followed by seq %d (message %d)", from, seqs[i-1], s, cur[0].msg)
			} else {
				add(from, Missing, cur[0].msg, "seqs %d to %d (%d records) are missing: seq %d is followed by seq %d (message %d)", from, to, to-from+1, seqs[i-1], s, cur[0].msg)
			}
		}
		prev = prev[:0]
		if i > 0 && seqs[i-1] == s-1 {
			prev = ch.at(s-1, prev)
		}
		if len(cur) == 1 {
			n := cur[0]
			if checked, ok := links(n, prev); checked && !ok {
				msg := n.msg
				if len(prev) == 1 {
					msg = prev[0].msg
				}
				add(s-1, Edited, msg, "seq %d (message %d) has prev_hash %s, but seq %d hashes to %s: seq %d was edited and re-hashed, or seq %d was forged",
					s, n.msg, n.prev.short(), s-1, hashes(prev), s-1, s)
			}
			continue
		}
		// A fork: two or more different records claim seq s.
		next = ch.at(s+1, next)
		var parts []string
		var suspects []node
		for _, n := range cur {
			var facts []string
			if checked, ok := links(n, prev); checked && ok {
				facts = append(facts, fmt.Sprintf("links to seq %d", s-1))
			} else if checked {
				facts = append(facts, fmt.Sprintf("does not link to seq %d", s-1))
			}
			linkedFrom := n.hashOK && slices.ContainsFunc(next, func(x node) bool { return x.prevOK && x.prev == n.hash })
			if linkedFrom {
				facts = append(facts, fmt.Sprintf("seq %d links to it", s+1))
			} else if len(next) > 0 {
				facts = append(facts, fmt.Sprintf("seq %d does not link to it", s+1))
			}
			inCheckpoint := n.hashOK && slices.Contains(committed[s], n.hash)
			if inCheckpoint {
				facts = append(facts, "a checkpoint commits to it")
			}
			if !linkedFrom && !inCheckpoint {
				suspects = append(suspects, n)
			}
			part := fmt.Sprintf("message %d, hash %s", n.msg, n.hash.short())
			if !n.hashOK {
				part = fmt.Sprintf("message %d, no valid hash", n.msg)
			}
			if len(facts) > 0 {
				part += " (" + strings.Join(facts, ", ") + ")"
			}
			parts = append(parts, part)
		}
		msg := cur[1].msg
		if len(suspects) == 1 {
			msg = suspects[0].msg
		}
		add(s, Inserted, msg, "%d different records claim seq %d: %s", len(cur), s, strings.Join(parts, "; "))
	}

	// Checkpoints: the chain must reach each one, and hold the hash it commits to.
	var beyond, last *checkpoint
	for i := range cps {
		cp := &cps[i]
		s := cp.head.Seq
		if last == nil || s > last.head.Seq {
			last = cp
		}
		switch {
		case s > ch.maxSeq:
			if beyond == nil || s > beyond.head.Seq {
				beyond = cp
			}
		case s < ch.minSeq:
			// Its record is no longer in the stream (retention) or the input starts later.
		default:
			cur := ch.at(s, nil)
			if len(cur) == 0 {
				continue // reported as missing
			}
			if slices.ContainsFunc(cur, func(n node) bool { return n.hashOK && n.hash == cp.digest }) {
				sum.LastCheckpointSeq = max(sum.LastCheckpointSeq, s)
				continue
			}
			add(s, CheckpointMismatch, cp.msg, "the checkpoint at message %d commits seq %d to hash %s, but the record (message %d) hashes to %s: the record was replaced and re-hashed, or the checkpoint forged",
				cp.msg, s, cp.digest.short(), cur[0].msg, hashes(cur))
		}
	}
	// A verified last checkpoint vouches that its record was written: when that record is no
	// longer on the stream while later ones are, records were removed (or the checkpoint
	// outlived its records under retention, which an idle instance's last checkpoint can).
	if signed && last != nil && ch.count > 0 && last.head.Seq < ch.minSeq {
		add(last.head.Seq, Truncated, last.msg, "the last checkpoint (message %d) commits to seq %d, which is no longer on the stream: the chain now starts at seq %d, so records up to seq %d were removed or expired",
			last.msg, last.head.Seq, ch.minSeq, ch.minSeq-1)
	}
	breaks = append(breaks, ch.verifyTree(cps, &sum)...)
	if beyond != nil {
		s := beyond.head.Seq
		if ch.count == 0 {
			add(1, Truncated, beyond.msg, "the checkpoint at message %d commits to seq %d, but the input holds no chained record of this instance: its records were removed (or the input starts after them)", beyond.msg, s)
		} else {
			from := ch.maxSeq + 1
			removed := fmt.Sprintf("seqs %d to %d were", from, s)
			if from == s {
				removed = fmt.Sprintf("seq %d was", s)
			}
			add(from, Truncated, beyond.msg, "the checkpoint at message %d commits to seq %d, but the chain ends at seq %d (message %d): %s removed from its tail", beyond.msg, s, ch.maxSeq, ch.maxMsg, removed)
		}
	}
	return sum, breaks
}

// links reports whether n's prev_hash could be checked against the records before it, and
// whether it names one of them.
func links(n node, prev []node) (checked, ok bool) {
	if !n.prevOK {
		return false, false
	}
	for _, p := range prev {
		if !p.hashOK {
			continue
		}
		checked = true
		if p.hash == n.prev {
			return true, true
		}
	}
	return checked, false
}

func hashes(ns []node) string {
	var out []string
	for _, n := range ns {
		if n.hashOK {
			out = append(out, n.hash.short())
		}
	}
	return strings.Join(out, " or ")
}

func countFunc[T any](s []T, f func(T) bool) int {
	n := 0
	for _, v := range s {
		if f(v) {
			n++
		}
	}
	return n
}

// verifyTree checks the Merkle checkpoints of ch against its records, in order of tree size.
// The tree is rebuilt leaf by leaf from seq 1, or, when the stream no longer starts at seq 1,
// resumed from the compact range of a checkpoint whose range hashes to its signed root; each
// later checkpoint's root must then be the root of exactly those leaves. So every checkpoint
// is consistent with the one before it (the tree only grew by appending) and with the records.
// Checkpoints past the chain's end are left to the truncation check.
func (ch *chain) verifyTree(cps []checkpoint, sum *Chain) []Break {
	var breaks []Break
	add := func(cp *checkpoint, kind Kind, format string, args ...any) {
		breaks = append(breaks, Break{Instance: ch.name, Seq: cp.head.Seq, Kind: kind, Msg: cp.msg, Detail: fmt.Sprintf(format, args...)})
	}
	var tree []*checkpoint
	for i := range cps {
		if cps[i].root == nil {
			sum.ChainOnlyCheckpoints++
			continue
		}
		tree = append(tree, &cps[i])
	}
	slices.SortStableFunc(tree, func(a, b *checkpoint) int { return cmp.Compare(a.head.Seq, b.head.Seq) })
	var (
		r    *decisionlog.Tree // at size, or nil until a starting point is found
		size uint64
		prev *checkpoint // the last checkpoint the tree matched
	)
	if ch.minSeq == 1 {
		r = decisionlog.NewTree()
	}
	for _, cp := range tree {
		n := cp.head.Seq
		if n > ch.maxSeq {
			break // past the records: the truncation check reports it
		}
		if r != nil {
			for size < n {
				nd, ok := ch.records[size+1]
				if !ok {
					r = nil // a gap, reported as missing
					break
				}
				if err := r.AppendLeaf(nd.leaf[:]); err != nil {
					r = nil
					break
				}
				size++
			}
		}
		if r == nil || size != n {
			// Start (again) here, from this checkpoint's compact range, when it hashes to its root.
			if cp.frontier == nil {
				continue
			}
			t, err := decisionlog.RestoreTree(n, cp.frontier, cp.root)
			if err != nil {
				continue
			}
			r, size, prev = t, n, cp // a start, not yet checked against any record
			continue
		}
		_, root, _, _ := r.State()
		if string(root) != string(cp.root) {
			since := "the records from seq 1"
			if prev != nil {
				since = fmt.Sprintf("the checkpoint at message %d (tree size %d) and the records after it", prev.msg, prev.head.Seq)
			}
			src := "checkpoint"
			if cp.witness {
				src = "witnessed checkpoint"
			}
			add(cp, TreeMismatch, "the %s at message %d signs tree size %d with root %x, but %s give root %x: records up to seq %d were rewritten, or the checkpoint forged",
				src, cp.msg, n, cp.root[:6], since, root[:6], n)
			continue
		}
		prev = cp
		sum.TreeCheckpoints++
	}
	return breaks
}
