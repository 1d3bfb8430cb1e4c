// Package embeddednats runs a NATS server with JetStream inside the custody process, so that
// `custody serve` works with nothing else installed and any NATS client can still subscribe.
package embeddednats

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/rs/zerolog"
)

// Config says where the embedded server listens and stores.
type Config struct {
	// Listen is the client address, HOST:PORT; port 0 picks a free port.
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
}

// ReadyTimeout bounds the wait for the server to accept clients.
const ReadyTimeout = 10 * time.Second

// Start runs a server and returns once it accepts clients. Stop it with Shutdown and
// WaitForShutdown.
func Start(cfg Config) (*server.Server, error) {
	host, portStr, err := net.SplitHostPort(cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("embeddednats: listen address %q: %w", cfg.Listen, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 0 || port > 65535 {
		return nil, fmt.Errorf("embeddednats: listen address %q: bad port", cfg.Listen)
	}
	if port == 0 {
		port = server.RANDOM_PORT // nats-server reads 0 as "the default port", not "any free port"
	}
	if cfg.StoreDir == "" {
		return nil, errors.New("embeddednats: store dir is required")
	}
	opts := &server.Options{
		ServerName:   cfg.ServerName,
		Host:         host,
		Port:         port,
		JetStream:    true,
		StoreDir:     cfg.StoreDir,
		NoSigs:       true, // custody owns signal handling
		HTTPPort:     0,
		SyncInterval: cfg.SyncInterval,
		SyncAlways:   cfg.SyncAlways,
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
