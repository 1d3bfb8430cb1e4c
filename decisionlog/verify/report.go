package verify

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"unicode"
)

// Kind names what a Break found.
type Kind string

// The kinds of break. Each names the attack or fault it is the evidence of.
const (
	// Edited: a record's content does not hash to its hash member (edited after sealing), or
	// the record after it links to another hash (edited and re-hashed), or its chain fields are
	// malformed.
	Edited Kind = "edited"
	// Missing: a gap in an instance's seq numbers, a record removed from inside the chain.
	Missing Kind = "missing"
	// Inserted: a second, different record for a seq already seen (a forgery or a fork), or an
	// unchained record after the instance's chain began.
	Inserted Kind = "inserted"
	// Duplicate: a decision ID seen twice, whether as the same bytes or in a different record.
	Duplicate Kind = "duplicate"
	// Reordered: an instance's seq going backwards in stream order.
	Reordered Kind = "reordered"
	// Truncated: a checkpoint commits to a seq past the end of the chain: the tail was removed.
	Truncated Kind = "truncated"
	// CheckpointMismatch: the record at a checkpoint's seq has another hash than the checkpoint.
	CheckpointMismatch Kind = "checkpoint_mismatch"
	// TreeMismatch: a Merkle checkpoint's root is not the root of the instance's records up to
	// its tree size, or not consistent with the checkpoint before it (the history was rewritten).
	TreeMismatch Kind = "tree_mismatch"
	// BadCheckpoint: a checkpoint whose signature does not verify with the given keys, or that
	// is malformed.
	BadCheckpoint Kind = "bad_checkpoint"
	// WrongSubject: a message on a subject its content does not give, so that consumers
	// filtering by subject miss or misread it. Only checked when subjects are known.
	WrongSubject Kind = "wrong_subject"
	// Unparseable: a message that is not JSON, or not of a known schema.
	Unparseable Kind = "unparseable"
	// Unchained: records without seq and hash, which nothing vouches for (anyone who may publish
	// can write one). A break under RequireSigned, else a warning.
	Unchained Kind = "unchained"
	// Unsigned: an instance with records but no checkpoint verified by its own key, or a given
	// key that verified no checkpoint at all (its instance's records are gone). A break under
	// RequireSigned, else a warning.
	Unsigned Kind = "unsigned"
)

// Break is one piece of evidence that the stream is not what custody wrote.
type Break struct {
	Instance string // the custody instance whose chain is broken ("" for an unparseable message)
	Seq      uint64 // the seq at fault (0 for an unchained record or an unparseable message)
	Kind     Kind
	Msg      int // 1-based position of the message that shows it (a line of an export file)
	Detail   string
}

// String formats b on one line.
func (b Break) String() string {
	if b.Kind == Unparseable {
		return fmt.Sprintf("%-19s message=%d: %s", b.Kind, b.Msg, b.Detail)
	}
	return fmt.Sprintf("%-19s instance=%s seq=%d message=%d: %s", b.Kind, printable(b.Instance), b.Seq, b.Msg, b.Detail)
}

// Chain is what the stream holds of one instance's chain.
type Chain struct {
	Instance  string
	Records   int // chained records, any forged ones included
	Unchained int // records without seq and hash, from before the chain existed
	// FirstSeq and LastSeq are the lowest and highest seq present; HeadHash is the hash of the
	// record at LastSeq.
	FirstSeq, LastSeq uint64
	HeadHash          string
	// Checkpoints counts the checkpoints that were read; with signatures checked, only those
	// that verified, which CheckpointsVerified then counts too.
	Checkpoints         int
	CheckpointsVerified int
	// LastCheckpointSeq is the highest seq at which a checkpoint matched the chain.
	LastCheckpointSeq uint64
	// TreeCheckpoints counts Merkle (v2) checkpoints whose root was recomputed from the records
	// and matched; ChainOnlyCheckpoints the v1 checkpoints, which sign the chain head only.
	TreeCheckpoints, ChainOnlyCheckpoints int
	// Signers names the keys that signed this instance's verified checkpoints.
	Signers []string
}

// Report is the outcome of a verification.
type Report struct {
	Messages          int
	Records           int // decision records, chained or not
	Unchained         int
	Checkpoints       int // checkpoints read (with signatures checked: verified)
	Witnessed         int // of them, checkpoints read from a witness copy
	SignaturesChecked bool
	Chains            []Chain // by instance name
	Breaks            []Break // by instance, seq, message
	// Warnings are what RequireSigned would make breaks: unchained records and instances
	// without a verified checkpoint. They do not fail the report, but nothing attests them.
	Warnings []Break
}

// OK reports whether the stream showed no break.
func (r *Report) OK() bool { return len(r.Breaks) == 0 }

// Summary writes the report for people: totals, one paragraph per instance, then each break on
// its own line.
func (r *Report) Summary(w io.Writer) error {
	p := &printer{w: w}
	p.printf("read %d %s: %d decision %s, %d %s\n", r.Messages, plural(uint64(r.Messages), "message", "messages"),
		r.Records, plural(uint64(r.Records), "record", "records"), r.Checkpoints, plural(uint64(r.Checkpoints), "checkpoint", "checkpoints"))
	if r.Witnessed > 0 {
		p.printf("witness: %d %s read from witness copies, checked against the stream\n", r.Witnessed, plural(uint64(r.Witnessed), "checkpoint", "checkpoints"))
	}
	if r.SignaturesChecked {
		p.printf("checkpoint signatures: verified with the given public keys\n")
	} else {
		p.printf("checkpoint signatures: NOT CHECKED (no public key given): checkpoints were compared with the chains, but anyone could have written them\n")
	}
	for _, c := range r.Chains {
		p.printf("instance %s\n", printable(c.Instance))
		if c.Records == 0 {
			p.printf("  chain        no chained records\n")
		} else {
			p.printf("  chain        seq %d to %d, %d %s, head hash %s\n", c.FirstSeq, c.LastSeq, c.Records, plural(uint64(c.Records), "record", "records"), orDash(c.HeadHash))
			if c.FirstSeq > 1 {
				p.printf("  start        seqs 1 to %d are not in the input (expired by retention, or before an export's --since): the chain is checked from seq %d\n", c.FirstSeq-1, c.FirstSeq)
			}
		}
		switch {
		case c.Checkpoints == 0 && r.SignaturesChecked:
			p.printf("  checkpoints  none verified: a removed tail or a rewritten chain would not show\n")
		case c.Checkpoints == 0:
			p.printf("  checkpoints  none: a removed tail or a rewritten chain would not show\n")
		default:
			state := "read, not verified"
			if r.SignaturesChecked {
				state = "verified"
				if len(c.Signers) > 0 {
					names := make([]string, len(c.Signers))
					for i, n := range c.Signers {
						names[i] = printable(n)
					}
					state += ", signed by " + strings.Join(names, ", ")
				}
			}
			last := fmt.Sprintf("the last that matches the chain commits to seq %d", c.LastCheckpointSeq)
			if c.LastCheckpointSeq == 0 {
				last = "none matches the chain"
			}
			p.printf("  checkpoints  %d (%s); %s\n", c.Checkpoints, state, last)
			if c.TreeCheckpoints > 0 || c.ChainOnlyCheckpoints > 0 {
				p.printf("  merkle       %d %s whose root matches the records and the checkpoint before (append-only); %d v1 %s signing the chain head only\n",
					c.TreeCheckpoints, plural(uint64(c.TreeCheckpoints), "checkpoint", "checkpoints"), c.ChainOnlyCheckpoints, plural(uint64(c.ChainOnlyCheckpoints), "checkpoint", "checkpoints"))
			}
		}
		switch {
		case c.Records == 0 || c.LastSeq <= c.LastCheckpointSeq:
		case c.LastCheckpointSeq < c.FirstSeq:
			n := c.LastSeq - c.FirstSeq + 1
			p.printf("  unattested   seq %d to %d (%d %s): no checkpoint matches them, so a removal or rewrite would not show\n", c.FirstSeq, c.LastSeq, n, plural(n, "seq", "seqs"))
		default:
			n := c.LastSeq - c.LastCheckpointSeq
			p.printf("  unattested   %d %s after the last checkpoint: a removal there is detectable only against a later checkpoint\n", n, plural(n, "record", "records"))
		}
		if c.Unchained > 0 {
			p.printf("  unchained    %d %s without seq and hash (from before the chain): nothing protects them\n", c.Unchained, plural(uint64(c.Unchained), "record", "records"))
		}
	}
	for _, w := range r.Warnings {
		p.printf("WARNING: %s\n", w)
	}
	if r.OK() {
		p.printf("OK: no breaks\n")
	} else {
		p.printf("FAIL: %d %s\n", len(r.Breaks), plural(uint64(len(r.Breaks)), "break", "breaks"))
		for _, b := range r.Breaks {
			p.printf("%s\n", b)
		}
	}
	return p.err
}

// printer keeps the first write error, so that Summary reads as a list of lines.
type printer struct {
	w   io.Writer
	err error
}

func (p *printer) printf(format string, args ...any) {
	if p.err == nil {
		_, p.err = fmt.Fprintf(p.w, format, args...)
	}
}

func plural(n uint64, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// printable returns s as it is when it prints as one plain word, else quoted: names come from
// the stream, and a forged one must not be able to fake or split a line of the summary.
func printable(s string) string {
	if s == "" {
		return `""`
	}
	for _, r := range s {
		if !unicode.IsPrint(r) || unicode.IsSpace(r) || r == '"' {
			return strconv.Quote(s)
		}
	}
	return s
}
