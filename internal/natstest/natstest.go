// Package natstest starts real embedded NATS JetStream servers for tests: a random port, storage
// in a temporary directory, shut down when the test ends.
package natstest

import (
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/custodyhq/custody/internal/embeddednats"
)

// Start runs a JetStream server for the duration of t.
func Start(t testing.TB) *server.Server {
	t.Helper()
	return StartAt(t, "127.0.0.1:0", t.TempDir())
}

// StartAt runs a JetStream server on listen with its store in dir, so a test can restart a server
// on the same port and data.
func StartAt(t testing.TB, listen, dir string) *server.Server {
	t.Helper()
	ns, err := embeddednats.Start(embeddednats.Config{Listen: listen, StoreDir: dir})
	if err != nil {
		t.Fatalf("start embedded NATS: %v", err)
	}
	t.Cleanup(func() { Shutdown(ns) })
	return ns
}

// Shutdown stops ns and waits until it has.
func Shutdown(ns *server.Server) {
	ns.Shutdown()
	ns.WaitForShutdown()
}

// Connect opens a client connection to ns, closed when t ends.
func Connect(t testing.TB, ns *server.Server) *nats.Conn {
	t.Helper()
	return ConnectURL(t, ns.ClientURL())
}

// ConnectURL opens a client connection to url that keeps reconnecting, closed when t ends.
func ConnectURL(t testing.TB, url string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, nats.Timeout(5*time.Second), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatalf("connect to NATS: %v", err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// CheckFor polls f every interval until it returns nil or total elapses, then fails t with f's
// last error. Use it for anything asynchronous instead of sleeping.
func CheckFor(t testing.TB, total, interval time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(total)
	var err error
	for time.Now().Before(deadline) {
		if err = f(); err == nil {
			return
		}
		time.Sleep(interval)
	}
	t.Fatalf("condition not met within %s: %v", total, err)
}
