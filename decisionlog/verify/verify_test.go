package verify_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"golang.org/x/mod/sumdb/note"

	"github.com/custodyhq/custody/decisionlog"
	"github.com/custodyhq/custody/decisionlog/verify"
	"github.com/custodyhq/custody/pdp"
)

var epoch = time.Date(2026, 11, 27, 6, 0, 0, 0, time.UTC)

// stream builds a decision stream the way custody writes it: sealed, linked records and signed
// checkpoints, from any number of instances.
type stream struct {
	t       testing.TB
	heads   map[string]decisionlog.ChainHead
	signers map[string]note.Signer
	vkeys   []string
	msgs    []verify.Message
	n       int
}

func newStream(t testing.TB, instances ...string) *stream {
	t.Helper()
	s := &stream{t: t, heads: map[string]decisionlog.ChainHead{}, signers: map[string]note.Signer{}}
	for _, inst := range instances {
		signer, vkey := newKey(t, decisionlog.SigningKeyName(inst))
		s.signers[inst] = signer
		s.vkeys = append(s.vkeys, vkey)
	}
	return s
}

func newKey(t testing.TB, name string) (note.Signer, string) {
	t.Helper()
	skey, vkey, err := decisionlog.GenerateSigningKey(name)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := note.NewSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	return signer, vkey
}

func (s *stream) verifiers() note.Verifiers {
	s.t.Helper()
	vs, err := decisionlog.NewVerifiers(s.vkeys...)
	if err != nil {
		s.t.Fatal(err)
	}
	return vs
}

// newRecord is a decision as custody would record it, not yet linked.
func newRecord(inst string, n int) *decisionlog.Record {
	return &decisionlog.Record{
		Schema:        decisionlog.SchemaDecisionV1,
		DecisionID:    fmt.Sprintf("0190-%s-%03d", inst, n),
		Timestamp:     epoch.Add(time.Duration(n) * time.Second),
		CorrelationID: fmt.Sprintf("corr-%d", n%3),
		Endpoint:      "/v1/authorize",
		Subject:       pdp.Entity{Type: "user", ID: "alice@acme.example"},
		Action:        pdp.Action{Name: "send_email", Properties: map[string]any{"server": "mail"}},
		Resource:      pdp.Entity{Type: "mailbox", ID: "alice"},
		Agent:         &pdp.Agent{ID: "spiffe://acme.example/agents/mailer"},
		Delegation:    pdp.Delegation{Verified: true, Chain: []any{}},
		Allow:         n%2 == 1,
		Reasons:       []string{},
		Policy:        decisionlog.PolicyRef{Query: "data.custody.authz.decision", Revision: "r1"},
		PDP:           decisionlog.Instance{Instance: inst, Version: "test"},
	}
}

// record appends inst's next record and returns its message.
func (s *stream) record(inst string) verify.Message {
	s.t.Helper()
	s.n++
	r := newRecord(inst, s.n)
	s.heads[inst].Link(r)
	m := seal(s.t, r)
	s.heads[inst] = decisionlog.After(r)
	s.msgs = append(s.msgs, m)
	return m
}

func seal(t testing.TB, r *decisionlog.Record) verify.Message {
	t.Helper()
	body, err := decisionlog.Seal(r)
	if err != nil {
		t.Fatal(err)
	}
	return verify.Message{Subject: decisionlog.DecisionSubject(r), Data: body}
}

// checkpoint appends a checkpoint of inst's current head, signed with inst's key.
func (s *stream) checkpoint(inst string) verify.Message {
	s.t.Helper()
	m := checkpointMsg(s.t, inst, s.heads[inst], s.signers[inst])
	s.msgs = append(s.msgs, m)
	return m
}

func checkpointMsg(t testing.TB, inst string, head decisionlog.ChainHead, signer note.Signer) verify.Message {
	t.Helper()
	cp, err := decisionlog.NewCheckpoint(inst, head, epoch, signer)
	if err != nil {
		t.Fatal(err)
	}
	body, err := json.Marshal(cp)
	if err != nil {
		t.Fatal(err)
	}
	return verify.Message{Subject: decisionlog.CheckpointSubject(inst), Data: body}
}

// baseStream is two instances, interleaved, each checkpointed at seq 4:
//
//	1 a1  2 b1  3 a2  4 b2  5 a3  6 b3  7 a4  8 b4  9 cp(a,4)  10 cp(b,4)  11 a5  12 b5
func baseStream(t testing.TB) *stream {
	s := newStream(t, "a", "b")
	for i := 1; i <= 5; i++ {
		if i == 5 {
			s.checkpoint("a")
			s.checkpoint("b")
		}
		s.record("a")
		s.record("b")
	}
	return s
}

// at returns msgs[i-1], by 1-based message number as reports count them.
func at(msgs []verify.Message, i int) verify.Message { return msgs[i-1] }

func remove(msgs []verify.Message, i int) []verify.Message { return slices.Delete(msgs, i-1, i) }

func insert(msgs []verify.Message, i int, m verify.Message) []verify.Message {
	return slices.Insert(msgs, i-1, m)
}

// decode reads a record back from a message body.
func decode(t testing.TB, m verify.Message) *decisionlog.Record {
	t.Helper()
	var r decisionlog.Record
	if err := json.Unmarshal(m.Data, &r); err != nil {
		t.Fatal(err)
	}
	return &r
}

// reseal is what a forger who can compute SHA-256 does after an edit: re-hash the record.
func reseal(t testing.TB, m verify.Message, edit func(*decisionlog.Record)) verify.Message {
	t.Helper()
	r := decode(t, m)
	edit(r)
	return seal(t, r)
}

// got is the part of a Break that tests compare; details are for people.
type got struct {
	Instance string
	Seq      uint64
	Kind     verify.Kind
	Msg      int
}

func project(bs []verify.Break) []got {
	var out []got
	for _, b := range bs {
		out = append(out, got{b.Instance, b.Seq, b.Kind, b.Msg})
	}
	return out
}

func TestCheck(t *testing.T) {
	tests := []struct {
		name     string
		unsigned bool // verify without public keys
		tamper   func(t *testing.T, s *stream) []verify.Message
		want     []got
	}{
		{
			name:   "intact, two instances interleaved",
			tamper: func(t *testing.T, s *stream) []verify.Message { return s.msgs },
		},
		{
			name: "edited record: content no longer matches its hash",
			tamper: func(t *testing.T, s *stream) []verify.Message {
				m := at(s.msgs, 5) // a3
				m.Data = bytes.Replace(m.Data, []byte(`"alice@acme.example"`), []byte(`"mallory@acme.example"`), 1)
				s.msgs[4] = m
				return s.msgs
			},
			want: []got{{"a", 3, verify.Edited, 5}},
		},
		{
			name: "edited and re-hashed record: the next record's prev_hash no longer fits",
			tamper: func(t *testing.T, s *stream) []verify.Message {
				s.msgs[4] = reseal(t, at(s.msgs, 5), func(r *decisionlog.Record) { r.Allow = !r.Allow })
				return s.msgs
			},
			want: []got{{"a", 3, verify.Edited, 5}},
		},
		{
			name: "removed record leaves a gap",
			tamper: func(t *testing.T, s *stream) []verify.Message {
				return remove(s.msgs, 5) // a3; a4 is now message 6
			},
			want: []got{{"a", 3, verify.Missing, 6}},
		},
		{
			name: "removed run of records",
			tamper: func(t *testing.T, s *stream) []verify.Message {
				return remove(remove(s.msgs, 5), 3) // a2, a3; a4 is now message 5
			},
			want: []got{{"a", 2, verify.Missing, 5}},
		},
		{
			name: "forged record re-using a seq, after the real one",
			tamper: func(t *testing.T, s *stream) []verify.Message {
				forged := reseal(t, at(s.msgs, 5), func(r *decisionlog.Record) { r.DecisionID = "forged"; r.Allow = true })
				return insert(s.msgs, 6, forged)
			},
			want: []got{{"a", 3, verify.Inserted, 6}},
		},
		{
			name: "forged record re-using a seq, before the real one",
			tamper: func(t *testing.T, s *stream) []verify.Message {
				forged := reseal(t, at(s.msgs, 5), func(r *decisionlog.Record) { r.DecisionID = "forged"; r.Allow = true })
				return insert(s.msgs, 5, forged)
			},
			want: []got{{"a", 3, verify.Inserted, 5}},
		},
		{
			name: "forged record re-using a decision ID and a seq",
			tamper: func(t *testing.T, s *stream) []verify.Message {
				forged := reseal(t, at(s.msgs, 5), func(r *decisionlog.Record) { r.Allow = !r.Allow })
				return insert(s.msgs, 6, forged)
			},
			want: []got{{"a", 3, verify.Duplicate, 6}, {"a", 3, verify.Inserted, 6}},
		},
		{
			name: "forged record re-using the last seq: either could be the forgery",
			tamper: func(t *testing.T, s *stream) []verify.Message {
				forged := reseal(t, at(s.msgs, 11), func(r *decisionlog.Record) { r.DecisionID = "forged"; r.Allow = !r.Allow })
				return append(s.msgs, forged) // message 13
			},
			want: []got{{"a", 5, verify.Inserted, 13}},
		},
		{
			name: "hash member stripped",
			tamper: func(t *testing.T, s *stream) []verify.Message {
				m := at(s.msgs, 5) // a3
				i := bytes.LastIndex(m.Data, []byte(`,"hash":"`))
				m.Data = append(m.Data[:i:i], '}')
				s.msgs[4] = m
				return s.msgs
			},
			want: []got{{"a", 3, verify.Edited, 5}},
		},
		{
			name: "two records swapped",
			tamper: func(t *testing.T, s *stream) []verify.Message {
				s.msgs[4], s.msgs[6] = s.msgs[6], s.msgs[4] // a3 <-> a4
				return s.msgs
			},
			want: []got{{"a", 3, verify.Reordered, 7}},
		},
		{
			name: "tail removed up to a checkpoint",
			tamper: func(t *testing.T, s *stream) []verify.Message {
				// remove a5 (11) and a4 (7); cp(a,4) is now message 8
				return remove(remove(s.msgs, 11), 7)
			},
			want: []got{{"a", 4, verify.Truncated, 8}},
		},
		{
			name: "tail removed past the last checkpoint is not detectable",
			tamper: func(t *testing.T, s *stream) []verify.Message {
				return remove(s.msgs, 11) // a5
			},
		},
		{
			name: "every record of an instance removed, its checkpoint left",
			tamper: func(t *testing.T, s *stream) []verify.Message {
				var out []verify.Message
				for _, m := range s.msgs {
					if !bytes.Contains(m.Data, []byte(`"instance":"a","version"`)) {
						out = append(out, m)
					}
				}
				return out // cp(a,4) is message 5
			},
			want: []got{{"a", 1, verify.Truncated, 5}},
		},
		{
			name: "last record edited and re-hashed, caught by the checkpoint that follows it",
			tamper: func(t *testing.T, s *stream) []verify.Message {
				s.checkpoint("a") // message 13: cp(a,5)
				s.msgs[10] = reseal(t, at(s.msgs, 11), func(r *decisionlog.Record) { r.Allow = !r.Allow })
				return s.msgs
			},
			want: []got{{"a", 5, verify.CheckpointMismatch, 13}},
		},
		{
			name: "checkpoint, signed with the real key, commits to another hash",
			tamper: func(t *testing.T, s *stream) []verify.Message {
				head := decisionlog.ChainHead{Seq: 2, Hash: strings.Repeat("ab", 32)}
				return append(s.msgs, checkpointMsg(t, "a", head, s.signers["a"])) // message 13
			},
			want: []got{{"a", 2, verify.CheckpointMismatch, 13}},
		},
		{
			name: "checkpoint forged with another key of the same name",
			tamper: func(t *testing.T, s *stream) []verify.Message {
				forger, _ := newKey(t, decisionlog.SigningKeyName("a"))
				head := decisionlog.ChainHead{Seq: 5, Hash: decode(t, at(s.msgs, 11)).Hash}
				return append(s.msgs, checkpointMsg(t, "a", head, forger))
			},
			want: []got{{"a", 5, verify.BadCheckpoint, 13}},
		},
		{
			name: "checkpoint note altered after signing",
			tamper: func(t *testing.T, s *stream) []verify.Message {
				m := at(s.msgs, 9) // cp(a,4)
				m.Data = bytes.Replace(m.Data, []byte(`\n4\n`), []byte(`\n3\n`), 1)
				m.Data = bytes.Replace(m.Data, []byte(`"seq":4`), []byte(`"seq":3`), 1)
				s.msgs[8] = m
				return s.msgs
			},
			want: []got{{"a", 3, verify.BadCheckpoint, 9}},
		},
		{
			name: "checkpoint fields disagree with its note",
			tamper: func(t *testing.T, s *stream) []verify.Message {
				m := at(s.msgs, 9) // cp(a,4)
				m.Data = bytes.Replace(m.Data, []byte(`"seq":4`), []byte(`"seq":5`), 1)
				s.msgs[8] = m
				return s.msgs
			},
			want: []got{{"a", 5, verify.BadCheckpoint, 9}},
		},
		{
			name:     "without keys, a forged checkpoint is only compared with the chain",
			unsigned: true,
			tamper: func(t *testing.T, s *stream) []verify.Message {
				forger, _ := newKey(t, decisionlog.SigningKeyName("a"))
				head := decisionlog.ChainHead{Seq: 5, Hash: decode(t, at(s.msgs, 11)).Hash}
				return append(s.msgs, checkpointMsg(t, "a", head, forger))
			},
		},
		{
			name:     "without keys, a truncation against a checkpoint is still found",
			unsigned: true,
			tamper: func(t *testing.T, s *stream) []verify.Message {
				return remove(remove(s.msgs, 11), 7)
			},
			want: []got{{"a", 4, verify.Truncated, 8}},
		},
		{
			name: "the same record stored twice",
			tamper: func(t *testing.T, s *stream) []verify.Message {
				return append(s.msgs, at(s.msgs, 5))
			},
			want: []got{{"a", 3, verify.Duplicate, 13}},
		},
		{
			name: "not JSON, and an unknown schema",
			tamper: func(t *testing.T, s *stream) []verify.Message {
				s.msgs = insert(s.msgs, 3, verify.Message{Subject: "custody.decision.x", Data: []byte("not json")})
				return append(s.msgs, verify.Message{Data: []byte(`{"schema":"custody.decision.v0"}`)})
			},
			want: []got{{"", 0, verify.Unparseable, 3}, {"", 0, verify.Unparseable, 14}},
		},
		{
			name: "record on a subject its content does not give",
			tamper: func(t *testing.T, s *stream) []verify.Message {
				s.msgs[4].Subject = strings.Replace(s.msgs[4].Subject, ".allow.", ".deny.", 1)
				return s.msgs
			},
			want: []got{{"a", 3, verify.WrongSubject, 5}},
		},
		{
			name: "chain start not in the input (retention, --since)",
			tamper: func(t *testing.T, s *stream) []verify.Message {
				return remove(remove(s.msgs, 3), 1) // a1, a2
			},
		},
		{
			name: "unchained records from before the chain are a warning",
			tamper: func(t *testing.T, s *stream) []verify.Message {
				old := seal(t, newRecord("a", 100))
				old.Data, _ = json.Marshal(newRecord("a", 100))
				return insert(s.msgs, 1, old)
			},
		},
		{
			name: "unchained record after the chain began",
			tamper: func(t *testing.T, s *stream) []verify.Message {
				old := seal(t, newRecord("a", 100))
				old.Data, _ = json.Marshal(newRecord("a", 100))
				return insert(s.msgs, 6, old)
			},
			want: []got{{"a", 0, verify.Inserted, 6}},
		},
		{
			name: "seq 1 with a prev_hash",
			tamper: func(t *testing.T, s *stream) []verify.Message {
				s.msgs[0] = reseal(t, at(s.msgs, 1), func(r *decisionlog.Record) { r.PrevHash = strings.Repeat("00", 32) })
				return s.msgs
			},
			// a2 no longer links to a1's new hash either.
			want: []got{{"a", 1, verify.Edited, 1}, {"a", 1, verify.Edited, 1}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := baseStream(t)
			var vs note.Verifiers
			if !tc.unsigned {
				vs = s.verifiers()
			}
			msgs := tc.tamper(t, s)
			rep := verify.Check(msgs, vs)
			if diff := cmp.Diff(tc.want, project(rep.Breaks), cmpopts.EquateEmpty()); diff != "" {
				var sum strings.Builder
				_ = rep.Summary(&sum)
				t.Errorf("breaks (-want +got):\n%s\n%s", diff, sum.String())
			}
			if rep.OK() != (len(tc.want) == 0) {
				t.Errorf("OK() = %v with %d breaks", rep.OK(), len(rep.Breaks))
			}
			for _, b := range rep.Breaks {
				if b.Detail == "" {
					t.Errorf("break %+v has no detail", b)
				}
			}
		})
	}
}

func TestCheckReportsChains(t *testing.T) {
	s := baseStream(t)
	rep := verify.Check(s.msgs, s.verifiers())
	want := []verify.Chain{
		{
			Instance: "a", Records: 5, FirstSeq: 1, LastSeq: 5, HeadHash: s.heads["a"].Hash,
			Checkpoints: 1, CheckpointsVerified: 1, LastCheckpointSeq: 4, ChainOnlyCheckpoints: 1, Signers: []string{"custody-a"},
		},
		{
			Instance: "b", Records: 5, FirstSeq: 1, LastSeq: 5, HeadHash: s.heads["b"].Hash,
			Checkpoints: 1, CheckpointsVerified: 1, LastCheckpointSeq: 4, ChainOnlyCheckpoints: 1, Signers: []string{"custody-b"},
		},
	}
	if diff := cmp.Diff(want, rep.Chains); diff != "" {
		t.Errorf("chains (-want +got):\n%s", diff)
	}
	if rep.Messages != 12 || rep.Records != 10 || rep.Checkpoints != 2 || !rep.SignaturesChecked {
		t.Errorf("totals = %d messages, %d records, %d checkpoints, signatures checked %v; want 12, 10, 2, true",
			rep.Messages, rep.Records, rep.Checkpoints, rep.SignaturesChecked)
	}
}

// A Checker fed one message at a time reports what Check does, and may be asked midway.
func TestCheckerIsIncremental(t *testing.T) {
	s := baseStream(t)
	vs := s.verifiers()
	c := verify.NewChecker(vs)
	for i, m := range s.msgs {
		c.Add(m)
		if mid := c.Report(); !mid.OK() {
			t.Fatalf("after message %d: %v", i+1, mid.Breaks)
		}
	}
	if diff := cmp.Diff(verify.Check(s.msgs, vs), c.Report()); diff != "" {
		t.Errorf("incremental report (-want +got):\n%s", diff)
	}
}

func TestSummary(t *testing.T) {
	tests := []struct {
		name     string
		unsigned bool
		tamper   func(s *stream) []verify.Message
		want     []string // lines, or starts of lines, that must appear
	}{
		{
			name:   "intact",
			tamper: func(s *stream) []verify.Message { return s.msgs },
			want: []string{
				"read 12 messages: 10 decision records, 2 checkpoints",
				"checkpoint signatures: verified with the given public keys",
				"instance a",
				"  checkpoints  1 (verified, signed by custody-a); the last that matches the chain commits to seq 4",
				"  unattested   1 record after the last checkpoint: a removal there is detectable only against a later checkpoint",
				"OK: no breaks",
			},
		},
		{
			name:     "unsigned, broken",
			unsigned: true,
			tamper:   func(s *stream) []verify.Message { return remove(s.msgs, 5) },
			want: []string{
				"checkpoint signatures: NOT CHECKED",
				"  checkpoints  1 (read, not verified)",
				"FAIL: 1 break",
				"missing             instance=a seq=3 message=6: seq 3 is missing: seq 2 is followed by seq 4 (message 6)",
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := baseStream(t)
			var vs note.Verifiers
			if !tc.unsigned {
				vs = s.verifiers()
			}
			var out strings.Builder
			if err := verify.Check(tc.tamper(s), vs).Summary(&out); err != nil {
				t.Fatal(err)
			}
			lines := strings.Split(out.String(), "\n")
			for _, w := range tc.want {
				if !slices.ContainsFunc(lines, func(l string) bool { return strings.HasPrefix(l, w) }) {
					t.Errorf("summary has no line starting %q:\n%s", w, out.String())
				}
			}
		})
	}
}
