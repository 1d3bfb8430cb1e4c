package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/rs/zerolog"

	"github.com/custodyhq/custody/internal/app"
	"github.com/custodyhq/custody/mcpgw"
)

// upstreamList is the repeatable --upstream NAME=COMMAND ARGS… or NAME=URL flag. Unlike
// stringList it never splits on commas, which commands may contain.
type upstreamList []string

func (l *upstreamList) String() string { return strings.Join(*l, " ") }

func (l *upstreamList) Set(v string) error { *l = append(*l, v); return nil }

type mcpConfig struct {
	pdpURL         string
	apiKeyFile     string
	upstreams      upstreamList
	listen         string
	user           string
	userProperties string
	agent          string
	tokenFile      string
	approvalTTL    time.Duration
	serve          serveConfig // the in-process PDP's settings, when no --pdp-url is given
}

func (c *mcpConfig) flags(fs *flag.FlagSet) {
	fs.StringVar(&c.pdpURL, "pdp-url", "", "a running `custody serve` to ask, such as http://127.0.0.1:8181 (default: run the PDP in-process with the serve flags below)")
	fs.StringVar(&c.apiKeyFile, "pdp-api-key-file", "", "file holding an API key for --pdp-url, sent when no delegation token is")
	fs.Var(&c.upstreams, "upstream", "upstream MCP server: `NAME=COMMAND ARGS…` (stdio, started and stopped by custody) or NAME=https://host/mcp; repeat for several (tools are then prefixed NAME__)")
	fs.StringVar(&c.listen, "listen", "", "serve MCP over Streamable HTTP on `host:port` at /mcp (default: stdio)")
	fs.StringVar(&c.user, "user", "", "the delegating user's ID, asserted (recorded as verified: false)")
	fs.StringVar(&c.userProperties, "user-properties", "", "the asserted user's properties, a JSON object such as {\"scopes\":[\"files.read\"]}")
	fs.StringVar(&c.agent, "agent", "", "the acting agent's ID, such as spiffe://acme.example/agents/researcher (default: the token's act.sub)")
	fs.StringVar(&c.tokenFile, "token-file", "", "a delegation token (JWT) for stdio; the PDP verifies it and it is never sent upstream")
	fs.DurationVar(&c.approvalTTL, "approval-ttl", mcpgw.DefaultApprovalTTL, "how long a human has to answer an approval request")
	c.serve.flags(fs)
}

// Validate reports the first setting that cannot work.
func (c *mcpConfig) Validate() error {
	if len(c.upstreams) == 0 {
		return errors.New("--upstream is required")
	}
	seen := map[string]bool{}
	for _, u := range c.upstreams {
		name, target, ok := strings.Cut(u, "=")
		if !ok || name == "" || strings.TrimSpace(target) == "" {
			return fmt.Errorf("--upstream %q: want NAME=COMMAND ARGS… or NAME=URL", u)
		}
		if strings.Contains(name, " ") || strings.Contains(name, "__") {
			return fmt.Errorf("--upstream %q: the name may contain neither spaces nor __", u)
		}
		if seen[name] {
			return fmt.Errorf("--upstream %q: name %q given twice", u, name)
		}
		seen[name] = true
	}
	if c.listen != "" {
		if _, _, err := net.SplitHostPort(c.listen); err != nil {
			return fmt.Errorf("--listen %q: %w", c.listen, err)
		}
		if c.tokenFile != "" {
			return errors.New("--token-file is for stdio; over HTTP each client sends its own bearer token")
		}
	}
	if c.userProperties != "" {
		var m map[string]any
		if err := json.Unmarshal([]byte(c.userProperties), &m); err != nil {
			return fmt.Errorf("--user-properties: want a JSON object: %w", err)
		}
		if c.user == "" {
			return errors.New("--user-properties needs --user")
		}
	}
	if c.agent == "" && c.tokenFile == "" && c.listen == "" {
		return errors.New("--agent is required (or a --token-file whose act claim names the agent)")
	}
	if c.approvalTTL <= 0 {
		return errors.New("--approval-ttl must be positive")
	}
	if c.pdpURL == "" {
		if c.serve.Auth.TLSCert != "" {
			return errors.New("--tls-cert is not for the in-process PDP, which listens on loopback only")
		}
		return c.serve.Validate()
	}
	return nil
}

// principal builds the base principal from the flags.
func (c *mcpConfig) principal() (mcpgw.Principal, error) {
	p := mcpgw.Principal{Agent: mcpgw.Entity{ID: c.agent}}
	if c.user != "" {
		p.User = &mcpgw.Entity{Type: "user", ID: c.user}
		if c.userProperties != "" {
			_ = json.Unmarshal([]byte(c.userProperties), &p.User.Properties) // checked by Validate
		}
	}
	if c.tokenFile != "" {
		raw, err := os.ReadFile(c.tokenFile)
		if err != nil {
			return p, fmt.Errorf("mcp: read token: %w", err)
		}
		p.Token = strings.TrimSpace(string(raw))
		if p.Agent.ID == "" {
			p.Agent.ID = tokenActor(p.Token)
		}
		if p.Agent.ID == "" {
			return p, fmt.Errorf("%w: --agent is required: the token has no act claim", errUsage)
		}
	}
	return p, nil
}

// DefaultMCPDataDir is the data dir of the in-process PDP of `custody mcp`, beside serve's
// DefaultDataDir.
const DefaultMCPDataDir = "./data-mcp"

func runMCP(ctx context.Context, args []string, _ io.Writer, stderr io.Writer) error {
	var cfg mcpConfig
	fs := newFlagSet("mcp", stderr)
	cfg.flags(fs)
	cfg.serve.logLevel = "warn" // stdout is the MCP channel; logs go to stderr, quietly by default
	fs.Lookup("log-level").DefValue = "warn"
	// The in-process PDP is a serve of its own: beside a `custody serve` in the same directory
	// it must not take serve's data dir (it could not: serve holds its lock).
	cfg.serve.DataDir = DefaultMCPDataDir
	fs.Lookup("data-dir").DefValue = DefaultMCPDataDir
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	addrSet := false
	fs.Visit(func(f *flag.Flag) { addrSet = addrSet || f.Name == "addr" })
	if !addrSet {
		cfg.serve.Addr = "127.0.0.1:0"
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	logger, err := newLogger(stderr, cfg.serve.logLevel, cfg.serve.logFormat)
	if err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	base, err := cfg.principal()
	if err != nil {
		return err
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	auth := &mcpgw.HTTPAuthorizer{BaseURL: cfg.pdpURL}
	if cfg.apiKeyFile != "" {
		raw, err := os.ReadFile(cfg.apiKeyFile)
		if err != nil {
			return fmt.Errorf("mcp: read API key: %w", err)
		}
		auth.APIKey = strings.TrimSpace(string(raw))
	}
	if cfg.pdpURL == "" {
		pdp, done, err := startInProcessPDP(ctx, cfg.serve.Config, logger)
		if err != nil {
			return err
		}
		auth.BaseURL = pdp.URL()
		defer func() {
			cancel()
			if err := <-done; err != nil {
				logger.Error().Err(err).Msg("in-process PDP")
			}
		}()
	}

	ups := make([]mcpgw.Upstream, 0, len(cfg.upstreams))
	for _, u := range cfg.upstreams {
		name, target, _ := strings.Cut(u, "=")
		target = strings.TrimSpace(target)
		var t mcp.Transport
		if strings.HasPrefix(target, "https://") || strings.HasPrefix(target, "http://") {
			t = &mcp.StreamableClientTransport{Endpoint: target}
		} else {
			argv := strings.Fields(target)
			cmd := exec.Command(argv[0], argv[1:]...)
			cmd.Stderr = stderr
			t = &mcp.CommandTransport{Command: cmd}
		}
		ups = append(ups, mcpgw.Upstream{Name: name, Transport: t})
	}

	principal := mcpgw.StaticPrincipal(base)
	if cfg.listen != "" {
		principal = requireSomeone(mcpgw.BearerPrincipal(base))
	}
	g := mcpgw.New(auth, mcpgw.WithLogger(logger), mcpgw.WithPrincipal(principal),
		mcpgw.WithApprovalTTL(cfg.approvalTTL), mcpgw.WithVersion(version()))
	if err := g.Connect(ctx, ups); err != nil {
		return err
	}
	defer g.Close()
	log := logger.With().Str("component", "mcp").Logger()

	if cfg.listen == "" {
		log.Info().Str("pdp", auth.BaseURL).Int("upstreams", len(ups)).Msg("custody mcp serving on stdio")
		if err := g.Server().Run(ctx, &mcp.StdioTransport{}); err != nil && ctx.Err() == nil {
			return fmt.Errorf("mcp: %w", err)
		}
		return nil
	}
	ln, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return fmt.Errorf("mcp: listen on %s: %w", cfg.listen, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/mcp", mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return g.Server() }, nil))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	log.Info().Str("url", "http://"+ln.Addr().String()+"/mcp").Str("pdp", auth.BaseURL).Int("upstreams", len(ups)).Msg("custody mcp serving")
	select {
	case err = <-serveErr:
		err = fmt.Errorf("mcp: http: %w", err)
	case <-ctx.Done():
		err = nil
	}
	sdCtx, sdCancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer sdCancel()
	_ = srv.Shutdown(sdCtx)
	return err
}

// startInProcessPDP builds serve's App on a loopback port and runs it until ctx ends. It returns
// the App, whose address is known once New returns (no log line is read for it), and a channel
// that yields the result of Run and Close after ctx ends. The App logs through the gateway's
// logger, so --log-level and --log-format apply to it as to the gateway.
func startInProcessPDP(ctx context.Context, cfg app.Config, logger zerolog.Logger) (*app.App, <-chan error, error) {
	a, err := app.New(ctx, cfg, app.WithLogger(logger), app.WithVersion(version()))
	if err != nil {
		return nil, nil, fmt.Errorf("mcp: in-process PDP: %w", err)
	}
	done := make(chan error, 1)
	go func() {
		err := a.Run(ctx)
		if cerr := a.Close(context.WithoutCancel(ctx)); err == nil {
			err = cerr
		}
		done <- err
	}()
	return a, done, nil
}

// errNoPrincipal answers an HTTP request that names no one: no bearer token, and no --agent for
// the gateway to fall back on. The PDP would refuse it as "subject.id: required", which tells a
// client's author nothing about what to send.
var errNoPrincipal = errors.New("custody mcp: this request names no one: send a delegation token as \"Authorization: Bearer <token>\" (custody keys dev-issuer makes one to try with), or start custody mcp with --agent (and --user) for clients that send none")

// requireSomeone refuses, with errNoPrincipal, a request whose principal names neither a token,
// an agent nor a user.
func requireSomeone(f mcpgw.PrincipalFunc) mcpgw.PrincipalFunc {
	return func(ctx context.Context, extra *mcp.RequestExtra) (mcpgw.Principal, error) {
		p, err := f(ctx, extra)
		if err == nil && p.Token == "" && p.Agent.ID == "" && p.User == nil {
			return mcpgw.Principal{}, errNoPrincipal
		}
		return p, err
	}
}

// tokenActor reads, without verifying, the act.sub claim of a JWT: the agent it names. The PDP
// verifies the token and refuses a mismatch.
func tokenActor(token string) string {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return ""
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return ""
	}
	var c struct {
		Act *struct {
			Sub string `json:"sub"`
		} `json:"act"`
	}
	if json.Unmarshal(raw, &c) != nil || c.Act == nil {
		return ""
	}
	return c.Act.Sub
}
