// Package embeddednats runs a NATS server with JetStream inside the custody process, so that
// `custody serve` works with nothing else installed and any NATS client can still subscribe.
package embeddednats

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/rs/zerolog"
)

// Config says where the embedded server listens and stores.
type Config struct {
	// Listen is the client address, HOST:PORT; port 0 picks a free port. ListenNone serves
	// in-process connections only.
	Listen string
	// StoreDir holds JetStream's files.
	StoreDir string
	// ServerName names the server in cluster and monitoring output.
	ServerName string
	// SyncInterval is how often JetStream fsyncs; 0 keeps the server's default. SyncAlways makes
	// it fsync every write.
	SyncInterval time.Duration
	SyncAlways   bool
	// Logger receives the server's log; the default discards it.
	Logger *zerolog.Logger
	// Accounts, when set, makes the server trust only its operator: every client, on TCP or in
	// process, needs a user credential of its account. Unset (tests only), anyone may connect.
	Accounts Accounts
}

// Accounts configures operator-mode authentication on the server's options and names the account
// that holds the CUSTODY stream. natsauth.Trust implements it.
type Accounts interface {
	Configure(opts *server.Options) error
	Account() string
}

// ListenNone is the Listen value that opens no TCP port.
const ListenNone = "none"

// globalAccount is the account of a server without authentication, and the name of its
// JetStream storage directory.
const globalAccount = "$G"

// ReadyTimeout bounds the wait for the server to accept clients.
const ReadyTimeout = 10 * time.Second

// Start runs a server and returns once it accepts clients. Stop it with Shutdown and
// WaitForShutdown.
func Start(cfg Config) (*server.Server, error) {
	host, port, dontListen := "127.0.0.1", server.RANDOM_PORT, cfg.Listen == ListenNone
	if !dontListen {
		h, portStr, err := net.SplitHostPort(cfg.Listen)
		if err != nil {
			return nil, fmt.Errorf("embeddednats: listen address %q: %w", cfg.Listen, err)
		}
		p, err := strconv.Atoi(portStr)
		if err != nil || p < 0 || p > 65535 {
			return nil, fmt.Errorf("embeddednats: listen address %q: bad port", cfg.Listen)
		}
		if p == 0 {
			p = server.RANDOM_PORT // nats-server reads 0 as "the default port", not "any free port"
		}
		host, port = h, p
		// nats-server reports a port in use only as "not ready" after ReadyTimeout; say so at once.
		ln, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(max(p, 0))))
		if err != nil {
			return nil, fmt.Errorf("embeddednats: listen on %s: %w", cfg.Listen, err)
		}
		ln.Close()
	}
	if cfg.StoreDir == "" {
		return nil, errors.New("embeddednats: store dir is required")
	}
	opts := &server.Options{
		ServerName:   cfg.ServerName,
		Host:         host,
		Port:         port,
		DontListen:   dontListen,
		JetStream:    true,
		StoreDir:     cfg.StoreDir,
		NoSigs:       true, // custody owns signal handling
		HTTPPort:     0,
		SyncInterval: cfg.SyncInterval,
		SyncAlways:   cfg.SyncAlways,
	}
	if cfg.Accounts != nil {
		if err := cfg.Accounts.Configure(opts); err != nil {
			return nil, fmt.Errorf("embeddednats: %w", err)
		}
		if err := adoptGlobalStore(cfg.StoreDir, cfg.Accounts.Account()); err != nil {
			return nil, err
		}
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embeddednats: configure: %w", err)
	}
	if cfg.Logger != nil {
		ns.SetLoggerV2(logAdapter{cfg.Logger.With().Str("component", "nats").Logger()}, false, false, false)
	}
	go ns.Start()
	if !ns.ReadyForConnections(ReadyTimeout) {
		ns.Shutdown()
		return nil, fmt.Errorf("embeddednats: not ready for connections on %s within %s", cfg.Listen, ReadyTimeout)
	}
	return ns, nil
}

// logAdapter sends the server's printf-style log to zerolog.
type logAdapter struct{ l zerolog.Logger }

func (a logAdapter) Noticef(format string, v ...any) { a.l.Debug().Msgf(format, v...) }
func (a logAdapter) Warnf(format string, v ...any)   { a.l.Warn().Msgf(format, v...) }
func (a logAdapter) Fatalf(format string, v ...any)  { a.l.Error().Msgf(format, v...) }
func (a logAdapter) Errorf(format string, v ...any)  { a.l.Error().Msgf(format, v...) }
func (a logAdapter) Debugf(format string, v ...any)  { a.l.Debug().Msgf(format, v...) }
func (a logAdapter) Tracef(format string, v ...any)  { a.l.Trace().Msgf(format, v...) }

// adoptGlobalStore moves the JetStream files of a data dir written without authentication (the
// "$G" account) to the CUSTODY account, so that an upgrade keeps its stream. It does nothing
// once the account has its own directory.
func adoptGlobalStore(storeDir, account string) error {
	root := filepath.Join(storeDir, server.JetStreamStoreDir)
	from, to := filepath.Join(root, globalAccount), filepath.Join(root, account)
	if _, err := os.Stat(from); err != nil {
		return nil // nothing written without authentication
	}
	if _, err := os.Stat(to); err == nil {
		return nil
	}
	if err := os.Rename(from, to); err != nil {
		return fmt.Errorf("embeddednats: move unauthenticated store to account %s: %w", account, err)
	}
	return nil
}
