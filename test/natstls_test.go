package test

import (
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/custodyhq/custody/internal/natstest"
)

// TestFleetOverMutualTLS: a NATS server with a private CA that requires client certificates.
// serve and the reading commands reach it with --nats-ca, --nats-cert and --nats-key; without
// the CA, serve refuses to start rather than connect unverified.
func TestFleetOverMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca, caKey := newCA(t)
	writePEM(t, filepath.Join(dir, "ca.pem"), "CERTIFICATE", ca.Raw)
	loopback := []net.IP{net.ParseIP("127.0.0.1")}
	writeKeyPair(t, dir, "server", issueCert(t, ca, caKey, "", loopback))
	writeKeyPair(t, dir, "client", issueCert(t, ca, caKey, "", nil))

	tlsConfig, err := server.GenTLSConfig(&server.TLSConfigOpts{
		CertFile: filepath.Join(dir, "server.pem"), KeyFile: filepath.Join(dir, "server-key.pem"),
		CaFile: filepath.Join(dir, "ca.pem"), Verify: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true,
		StoreDir: t.TempDir(), NoSigs: true, TLS: true, TLSVerify: true, TLSConfig: tlsConfig, TLSTimeout: 2})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("TLS NATS server not ready")
	}
	t.Cleanup(func() { natstest.Shutdown(ns) })
	url := "tls://" + ns.Addr().String()
	tlsArgs := []string{"--nats-ca", filepath.Join(dir, "ca.pem"), "--nats-cert", filepath.Join(dir, "client.pem"), "--nats-key", filepath.Join(dir, "client-key.pem")}

	c := startCustody(t, "", append([]string{"--nats-url", url, "--record-mode", "ack"}, tlsArgs...)...)
	client := &http.Client{Timeout: 10 * time.Second}
	if a, err := authorize(t, client, c.HTTP, allowBody); err != nil || a.Status != 200 {
		t.Fatalf("authorize over mutual TLS: %+v %v", a, err)
	}
	if out, err := runCustody(t, append([]string{"verify", "--nats-url", url}, tlsArgs...)...); err != nil {
		t.Fatalf("verify over mutual TLS: %v\n%s", err, out)
	}
	out := serveMustFail(t, "--data-dir", t.TempDir(), "--nats-url", url, "--nats-cert", filepath.Join(dir, "client.pem"), "--nats-key", filepath.Join(dir, "client-key.pem"))
	if !strings.Contains(out, "certificate") {
		t.Fatalf("serve without --nats-ca:\n%s", out)
	}
	if out := serveMustFail(t, "--data-dir", t.TempDir(), "--nats-url", url, "--nats-cert", filepath.Join(dir, "client.pem")); !strings.Contains(out, "--nats-cert and --nats-key go together") {
		t.Fatalf("serve with a certificate and no key:\n%s", out)
	}
}
