package embeddednats_test

import (
	"net"
	"strings"
	"testing"

	"github.com/custodyhq/custody/internal/embeddednats"
)

// TestPortInUseSaysSo: nats-server reports a busy port only as "not ready" after its ready
// timeout; Start names the cause at once.
func TestPortInUseSaysSo(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, err = embeddednats.Start(embeddednats.Config{Listen: ln.Addr().String(), StoreDir: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("Start on a busy port = %v, want address already in use", err)
	}
}

// TestListenNoneOpensNoPort serves in-process connections only.
func TestListenNoneOpensNoPort(t *testing.T) {
	ns, err := embeddednats.Start(embeddednats.Config{Listen: embeddednats.ListenNone, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
	if addr := ns.Addr(); addr != nil {
		t.Fatalf("listening on %v", addr)
	}
}
