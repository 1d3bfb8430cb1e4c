package vault_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/age"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/custodyhq/custody/decisionlog/vault"
	"github.com/custodyhq/custody/internal/natstest"
)

func newVault(t *testing.T, recipients ...age.Recipient) (*vault.Vault, jetstream.JetStream) {
	t.Helper()
	js, err := jetstream.New(natstest.Connect(t, natstest.Start(t)))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	st, err := vault.EnsureStream(ctx, js, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	return vault.New(js, st, recipients, "inst-1", 0), js
}

func TestSealOpenDecrypt(t *testing.T) {
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	other, _ := age.GenerateX25519Identity()
	v, _ := newVault(t, id.Recipient())
	ctx := context.Background()
	const intent = "refund order 1234 to the customer's card"

	ref, err := v.Seal(ctx, "dec-1", "corr-1", intent)
	if err != nil {
		t.Fatal(err)
	}
	if ref.Stream != vault.StreamName || ref.Subject != "custody_vault.inst-1.dec-1" || ref.Seq == 0 || len(ref.SHA256) != 64 {
		t.Fatalf("reference %+v", ref)
	}
	ct, err := v.Open(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(ct, []byte("refund")) {
		t.Fatal("the vault entry holds the intent in the clear")
	}
	got, err := vault.Decrypt(ct, id)
	if err != nil || string(got) != intent {
		t.Fatalf("Decrypt = %q, %v", got, err)
	}
	if got, err := vault.Decrypt(ct, other); err == nil || got != nil {
		t.Fatalf("a wrong identity decrypted %q", got)
	}
	corr, err := v.CorrelationID(ctx, "dec-1")
	if err != nil || corr != "corr-1" {
		t.Fatalf("CorrelationID = %q, %v", corr, err)
	}
	if _, err := v.CorrelationID(ctx, "dec-unknown"); !errors.Is(err, vault.ErrNotFound) {
		t.Fatalf("unknown decision: %v, want ErrNotFound", err)
	}

	// A reference the record's hash does not vouch for is refused, not served.
	bad := *ref
	bad.SHA256 = strings.Repeat("0", 64)
	if _, err := v.Open(ctx, &bad); !errors.Is(err, vault.ErrMismatch) {
		t.Fatalf("edited sha256: %v, want ErrMismatch", err)
	}
	bad = *ref
	bad.Seq = 99
	if _, err := v.Open(ctx, &bad); !errors.Is(err, vault.ErrNotFound) {
		t.Fatalf("missing seq: %v, want ErrNotFound", err)
	}

	// Sealing the same decision again (a retried publish) keeps the first entry.
	again, err := v.Seal(ctx, "dec-1", "corr-1", intent)
	if err != nil || again.Seq != ref.Seq {
		t.Fatalf("resealed at %+v, %v; want seq %d", again, err, ref.Seq)
	}
}

func TestStreamRefusesDeleteAndPurge(t *testing.T) {
	id, _ := age.GenerateX25519Identity()
	v, js := newVault(t, id.Recipient())
	ctx := context.Background()
	ref, err := v.Seal(ctx, "dec-1", "corr-1", "x")
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctx, vault.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.DeleteMsg(ctx, ref.Seq); err == nil {
		t.Fatal("a sealed entry was deleted")
	}
	if err := st.Purge(ctx); err == nil {
		t.Fatal("the vault was purged")
	}
	// Another retention is refused rather than applied: shortening it would drop entries.
	if _, err := vault.EnsureStream(ctx, js, 3600e9, 1); err == nil {
		t.Fatal("EnsureStream accepted a vault with another retention")
	}
}

func TestParseRecipients(t *testing.T) {
	a, _ := age.GenerateX25519Identity()
	b, _ := age.GenerateX25519Identity()
	file := filepath.Join(t.TempDir(), "recipients.txt")
	if err := os.WriteFile(file, []byte("# team\n"+a.Recipient().String()+"\n\n"+b.Recipient().String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	rs, err := vault.ParseRecipients([]string{a.Recipient().String(), "@" + file})
	if err != nil || len(rs) != 3 {
		t.Fatalf("ParseRecipients = %d, %v", len(rs), err)
	}
	for _, bad := range [][]string{{"age1notakey"}, {"@" + filepath.Join(t.TempDir(), "missing")}, {"ssh-ed25519 AAAA"}} {
		if _, err := vault.ParseRecipients(bad); err == nil {
			t.Errorf("ParseRecipients(%q) accepted it", bad)
		}
	}
}

// TestEntryOpensWithAgeCLI: a vault entry is a plain age file, so the age CLI, given a key made
// by age-keygen, opens it: a third party can check an unsealed intent without custody's code.
func TestEntryOpensWithAgeCLI(t *testing.T) {
	bin, err := exec.LookPath("age")
	keygen, kerr := exec.LookPath("age-keygen")
	if err != nil || kerr != nil {
		t.Skip("age CLI not installed")
	}
	keyFile := filepath.Join(t.TempDir(), "key.txt")
	if out, err := exec.Command(keygen, "-o", keyFile).CombinedOutput(); err != nil {
		t.Fatalf("age-keygen: %v: %s", err, out)
	}
	raw, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := vault.ParseIdentities(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	v, _ := newVault(t, ids[0].(*age.X25519Identity).Recipient())
	ref, err := v.Seal(context.Background(), "dec-1", "corr-1", "close the Q3 books")
	if err != nil {
		t.Fatal(err)
	}
	ct, err := v.Open(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	entry := filepath.Join(t.TempDir(), "entry.age")
	if err := os.WriteFile(entry, ct, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "-d", "-i", keyFile, entry).Output()
	if err != nil || string(out) != "close the Q3 books" {
		t.Fatalf("age -d = %q, %v", out, err)
	}
}
