// Package natsauth gives the embedded NATS server its accounts and the credentials that may reach
// it: an operator, a system account and one CUSTODY account (standard NATS JWTs resolved from
// memory), and user credentials in the standard .creds format, each scoped to one role.
//
// The keys live in one directory (DATA/nats, mode 0700, files 0600) so that credentials handed out
// on one start still work after a restart. Whoever can read that directory can mint any
// credential, exactly as whoever can write DATA/jetstream can edit the stream's files: the data
// dir is the boundary, and the TCP listener is not.
package natsauth

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"

	"github.com/custodyhq/custody/decisionlog"
)

// Role names what a user credential may do.
type Role string

// The roles. Reader is the one credential serve hands out (DATA/nats/reader.creds).
const (
	// RoleService is custody's own connection: everything in the CUSTODY account. It is minted in
	// memory at each start and never written to disk.
	RoleService Role = "service"
	// RoleReader subscribes to custody.>, reads the CUSTODY stream through consumers, direct gets
	// and stream info, and can change no record: no publish on custody.>, no stream create, update,
	// delete or purge, no Object Store writes.
	RoleReader Role = "reader"
	// RoleBundlePusher writes policy bundles into the bundle Object Store bucket and nothing else.
	RoleBundlePusher Role = "bundle-pusher"
)

// ServiceInboxPrefix is the inbox prefix of custody's own connection. Readers may subscribe only
// under _INBOX.>, so they cannot watch the replies custody's connection receives (acks, Object
// Store chunks).
const ServiceInboxPrefix = "_CUSTODY_INBOX"

// ReaderCredsFile is the reader credential's file name in the keys directory.
const ReaderCredsFile = "reader.creds"

// Trust holds the operator and account keys of the embedded server.
type Trust struct {
	operator nkeys.KeyPair
	system   nkeys.KeyPair
	account  nkeys.KeyPair
	dir      string
	existed  bool // the keys were there before this load: not a first start
	// revokedBefore, when set, makes the account refuse every user credential issued at or
	// before it: the credentials handed out before reader.creds was deleted.
	revokedBefore time.Time
}

// revokedFile records when the credentials were last revoked, as Unix seconds.
const revokedFile = "revoked-before"

// LoadOrCreate reads the operator, system and CUSTODY account seeds from dir, creating dir (0700)
// and any missing seed (0600) first.
func LoadOrCreate(dir string) (*Trust, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("natsauth: create %s: %w", dir, err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("natsauth: restrict %s: %w", dir, err)
	}
	_, statErr := os.Stat(filepath.Join(dir, "operator.nk"))
	op, err := loadOrCreateSeed(filepath.Join(dir, "operator.nk"), nkeys.CreateOperator)
	if err != nil {
		return nil, err
	}
	sys, err := loadOrCreateSeed(filepath.Join(dir, "system.nk"), nkeys.CreateAccount)
	if err != nil {
		return nil, err
	}
	acc, err := loadOrCreateSeed(filepath.Join(dir, "account.nk"), nkeys.CreateAccount)
	if err != nil {
		return nil, err
	}
	t := &Trust{operator: op, system: sys, account: acc, dir: dir, existed: statErr == nil}
	if raw, err := os.ReadFile(filepath.Join(dir, revokedFile)); err == nil {
		sec, err := strconv.ParseInt(strings.TrimSpace(string(raw)), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("natsauth: %s: %w", filepath.Join(dir, revokedFile), err)
		}
		t.revokedBefore = time.Unix(sec, 0)
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("natsauth: read %s: %w", revokedFile, err)
	}
	return t, nil
}

// Account is the public key of the CUSTODY account, which is also the name of its JetStream
// storage directory.
func (t *Trust) Account() string {
	pub, _ := t.account.PublicKey() // a key pair made from a seed always has one
	return pub
}

// Configure makes opts trust only this operator and resolve its two accounts from memory.
func (t *Trust) Configure(opts *server.Options) error {
	opPub, _ := t.operator.PublicKey()
	sysPub, _ := t.system.PublicKey()
	oc := jwt.NewOperatorClaims(opPub)
	oc.Name = "custody"
	oc.SystemAccount = sysPub
	opJWT, err := oc.Encode(t.operator)
	if err != nil {
		return fmt.Errorf("natsauth: encode operator: %w", err)
	}
	opClaims, err := jwt.DecodeOperatorClaims(opJWT)
	if err != nil {
		return fmt.Errorf("natsauth: decode operator: %w", err)
	}

	sc := jwt.NewAccountClaims(sysPub)
	sc.Name = "SYS"
	sysJWT, err := sc.Encode(t.operator)
	if err != nil {
		return fmt.Errorf("natsauth: encode system account: %w", err)
	}
	ac := jwt.NewAccountClaims(t.Account())
	ac.Name = "CUSTODY"
	ac.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1}
	if !t.revokedBefore.IsZero() {
		ac.RevokeAt(jwt.All, t.revokedBefore)
	}
	accJWT, err := ac.Encode(t.operator)
	if err != nil {
		return fmt.Errorf("natsauth: encode account: %w", err)
	}
	res := &server.MemAccResolver{}
	if err := res.Store(sysPub, sysJWT); err != nil {
		return fmt.Errorf("natsauth: store system account: %w", err)
	}
	if err := res.Store(t.Account(), accJWT); err != nil {
		return fmt.Errorf("natsauth: store account: %w", err)
	}
	opts.TrustedOperators = []*jwt.OperatorClaims{opClaims}
	opts.AccountResolver = res
	opts.SystemAccount = sysPub
	return nil
}

// Creds returns a user credential for role in the standard .creds format (the user JWT, then its
// seed). Each call mints a new user key.
func (t *Trust) Creds(role Role, name string) ([]byte, error) {
	user, err := nkeys.CreateUser()
	if err != nil {
		return nil, fmt.Errorf("natsauth: create user: %w", err)
	}
	pub, _ := user.PublicKey()
	uc := jwt.NewUserClaims(pub)
	uc.Name = name
	uc.IssuerAccount = ""
	if err := permit(&uc.Permissions, role); err != nil {
		return nil, err
	}
	userJWT, err := uc.Encode(t.account)
	if err != nil {
		return nil, fmt.Errorf("natsauth: encode user: %w", err)
	}
	seed, _ := user.Seed()
	creds, err := jwt.FormatUserConfig(userJWT, seed)
	if err != nil {
		return nil, fmt.Errorf("natsauth: format creds: %w", err)
	}
	return creds, nil
}

// JWTAndSeed splits a .creds file's content into its user JWT and seed, for
// nats.UserJWTAndSeed: custody's own credential never touches the disk.
func JWTAndSeed(creds []byte) (userJWT, seed string, err error) {
	userJWT, err = jwt.ParseDecoratedJWT(creds)
	if err != nil {
		return "", "", fmt.Errorf("natsauth: parse creds: %w", err)
	}
	kp, err := jwt.ParseDecoratedUserNKey(creds)
	if err != nil {
		return "", "", fmt.Errorf("natsauth: parse creds: %w", err)
	}
	s, _ := kp.Seed()
	return userJWT, string(s), nil
}

// WriteCreds writes a credential for role to path (0600), refusing to replace an existing file
// unless replace is set.
func (t *Trust) WriteCreds(path string, role Role, name string, replace bool) error {
	creds, err := t.Creds(role, name)
	if err != nil {
		return err
	}
	return writePrivate(path, creds, replace)
}

// writePrivate writes data to path with mode 0600 and syncs it; an existing file is an error
// unless replace is set.
func writePrivate(path string, data []byte, replace bool) error {
	flags := os.O_WRONLY | os.O_CREATE | os.O_EXCL
	if replace {
		flags = os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	}
	f, err := os.OpenFile(path, flags, 0o600)
	if err != nil {
		return fmt.Errorf("natsauth: write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("natsauth: write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("natsauth: write %s: %w", path, err)
	}
	return f.Close()
}

// EnsureReaderCreds writes reader.creds on first start and leaves an existing one alone, so that
// readers configured with it keep working across restarts. A reader.creds deleted after the
// first start is how an operator revokes credentials: every user credential issued until now
// (the old reader's, a bundle pusher's) is refused from this start on, and a new reader.creds
// is written. Call it before Configure.
func (t *Trust) EnsureReaderCreds() (string, error) {
	path := filepath.Join(t.dir, ReaderCredsFile)
	if _, err := os.Stat(path); err == nil {
		return path, os.Chmod(path, 0o600)
	}
	if t.existed {
		t.revokedBefore = time.Now()
		if err := writePrivate(filepath.Join(t.dir, revokedFile), []byte(strconv.FormatInt(t.revokedBefore.Unix(), 10)+"\n"), true); err != nil {
			return "", err
		}
		// Revocations and issue times are Unix seconds: a credential minted within this second
		// would be revoked too, so the new ones wait for the next.
		time.Sleep(time.Until(t.revokedBefore.Truncate(time.Second).Add(time.Second + 10*time.Millisecond)))
	}
	return path, t.WriteCreds(path, RoleReader, "custody reader", false)
}

// permit fills p with what role may do. Every role is an allow-list: anything not listed is
// refused by the server. The deny lists repeat the destructive calls so that a mistake in an
// allow pattern cannot open them.
func permit(p *jwt.Permissions, role Role) error {
	stream := decisionlog.StreamName
	destructive := []string{
		"$JS.API.STREAM.CREATE.>", "$JS.API.STREAM.UPDATE.>", "$JS.API.STREAM.DELETE.>",
		"$JS.API.STREAM.PURGE.>", "$JS.API.STREAM.MSG.DELETE.>", "$JS.API.STREAM.RESTORE.>",
		"$JS.API.STREAM.SNAPSHOT.>", "$JS.API.STREAM.PEER.REMOVE.>", "$JS.API.STREAM.LEADER.STEPDOWN.>",
		"$JS.API.ACCOUNT.PURGE.>", "$JS.API.META.>", "$JS.API.SERVER.>",
	}
	switch role {
	case RoleService:
		p.Pub.Allow.Add(">")
		p.Sub.Allow.Add(">")
	case RoleReader:
		p.Pub.Allow.Add(
			"$JS.API.INFO",
			"$JS.API.STREAM.NAMES", "$JS.API.STREAM.LIST",
			"$JS.API.STREAM.INFO."+stream,
			"$JS.API.STREAM.MSG.GET."+stream,
			"$JS.API.DIRECT.GET."+stream, "$JS.API.DIRECT.GET."+stream+".>",
			"$JS.API.CONSUMER.CREATE."+stream, "$JS.API.CONSUMER.CREATE."+stream+".>",
			"$JS.API.CONSUMER.INFO."+stream+".>",
			// Ordered consumers delete themselves when done. A reader can thereby also end another
			// reader's consumer (it then resumes with a new one); a consumer holds no records.
			"$JS.API.CONSUMER.DELETE."+stream+".>",
			"$JS.API.CONSUMER.NAMES."+stream, "$JS.API.CONSUMER.LIST."+stream,
			"$JS.API.CONSUMER.MSG.NEXT."+stream+".>",
			"$JS.ACK."+stream+".>",
			"$JS.FC."+stream+".>",
		)
		p.Pub.Deny.Add(append([]string{"custody.>", "$O.>", "$KV.>", "$JS.API.CONSUMER.DURABLE.>"}, destructive...)...)
		p.Sub.Allow.Add("_INBOX.>", "custody.>")
	case RoleBundlePusher:
		bucket := "OBJ_" + BundleBucket
		p.Pub.Allow.Add(
			"$JS.API.INFO",
			"$JS.API.STREAM.INFO."+bucket,
			"$JS.API.STREAM.CREATE."+bucket, // the bucket is made on first push
			"$JS.API.STREAM.MSG.GET."+bucket,
			"$JS.API.DIRECT.GET."+bucket, "$JS.API.DIRECT.GET."+bucket+".>",
			"$JS.API.STREAM.PURGE."+bucket, // replacing an object purges its old chunks
			"$JS.API.CONSUMER.CREATE."+bucket, "$JS.API.CONSUMER.CREATE."+bucket+".>",
			"$JS.API.CONSUMER.MSG.NEXT."+bucket+".>",
			"$JS.API.CONSUMER.INFO."+bucket+".>",
			"$JS.FC."+bucket+".>",
			"$O."+BundleBucket+".>",
		)
		p.Pub.Deny.Add("custody.>", "$JS.API.STREAM.CREATE."+stream, "$JS.API.STREAM.UPDATE."+stream,
			"$JS.API.STREAM.DELETE."+stream, "$JS.API.STREAM.PURGE."+stream)
		p.Sub.Allow.Add("_INBOX.>")
	default:
		return fmt.Errorf("natsauth: unknown role %q", role)
	}
	return nil
}

// BundleBucket is the Object Store bucket the bundle pusher may write. It matches
// bundles/natsobj's default; a pusher credential for another bucket is not offered.
const BundleBucket = "custody-bundles"

// Roles lists the roles a user may ask for by name.
func Roles() []string { return []string{string(RoleReader), string(RoleBundlePusher)} }

// ParseRole reads a role name given on the command line. The service role is custody's own and
// cannot be asked for.
func ParseRole(s string) (Role, error) {
	for _, r := range Roles() {
		if s == r {
			return Role(s), nil
		}
	}
	return "", fmt.Errorf("natsauth: role %q: want one of %s", s, strings.Join(Roles(), ", "))
}

func loadOrCreateSeed(path string, create func() (nkeys.KeyPair, error)) (nkeys.KeyPair, error) {
	raw, err := os.ReadFile(path)
	if err == nil {
		kp, err := nkeys.FromSeed([]byte(strings.TrimSpace(string(raw))))
		if err != nil {
			return nil, fmt.Errorf("natsauth: %s: %w", path, err)
		}
		return kp, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("natsauth: read %s: %w", path, err)
	}
	kp, err := create()
	if err != nil {
		return nil, fmt.Errorf("natsauth: create key: %w", err)
	}
	seed, _ := kp.Seed()
	return kp, writePrivate(path, append(seed, '\n'), false)
}
