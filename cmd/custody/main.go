// Command custody is a policy-decision point for AI agents: it authorizes each agent tool call
// with Rego policies and records every decision on NATS JetStream before answering.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/custodyhq/custody/internal/app"
)

// errUsage marks errors caused by how custody was invoked; they exit with status 2, as do
// app.ErrConfig errors (a setting the App found it cannot use).
var errUsage = errors.New("usage")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(exitCode(err, os.Stderr))
}

// exitCode is the one place that turns an error into a process exit status.
func exitCode(err error, stderr io.Writer) int {
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage), errors.Is(err, app.ErrConfig):
		fmt.Fprintln(stderr, "custody:", err)
		return 2
	default:
		fmt.Fprintln(stderr, "custody:", err)
		return 1
	}
}

const usage = `custody: a policy-decision point for AI agents

usage: custody <command> [flags]

commands:
  serve    run the PDP: HTTP API, embedded NATS JetStream, default policies
  tail     follow the decision stream
  eval     evaluate one policy input offline, for policy authors
  export   write the decision stream to a file, one message per line (--format json or ocsf)
  forward  deliver the decision stream to a SIEM (HTTP NDJSON, Splunk HEC, files), at least once, in order
  verify   check the stream's hash chains and signed checkpoints; non-zero exit on any break
  trace    'custody trace CORRELATION-ID': the workflow graph of one human request
  evidence 'custody evidence CORRELATION-ID --out FILE': a provable extract; 'custody verify --evidence FILE' checks it offline
  unseal   'custody unseal DECISION-ID --identity FILE --reason TEXT': decrypt a sealed intent (serve --intent-vault); the unseal is recorded first
  correlate 'custody correlate --system-log FILE': join downstream system logs to decisions
  bundle   'custody bundle push FILE': roll a policy bundle out to every 'serve --bundle-source nats'
  receipt  'custody receipt verify --jwks URL|FILE --call FILE RECEIPT': check a receipt against the call about to run
  mcp      an MCP gateway: every upstream tools/call goes through the PDP first
  keys     print the checkpoint verifier key; 'custody keys api-key NAME' makes an API key;
           'custody keys nats-creds --role bundle-pusher --out FILE' a credential for the embedded NATS;
           'custody keys dev-issuer --out DIR' a JWKS and a delegation token, for trying custody (not production)
  approve  answer a pending approval as an approver: 'custody approve <approval-id> --approver-key-file FILE'
  version  print the version

Run 'custody <command> -h' for a command's flags.
`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("%w: no command given", errUsage)
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "serve":
		return runServe(ctx, rest, stdout, stderr)
	case "tail":
		return runTail(ctx, rest, stdout, stderr)
	case "eval":
		return runEval(ctx, rest, stdout, stderr)
	case "export":
		return runExport(ctx, rest, stdout, stderr)
	case "forward":
		return runForward(ctx, rest, stdout, stderr)
	case "verify":
		return runVerify(ctx, rest, stdout, stderr)
	case "trace":
		return runTrace(ctx, rest, stdout, stderr)
	case "evidence":
		return runEvidence(ctx, rest, stdout, stderr)
	case "unseal":
		return runUnseal(ctx, rest, stdout, stderr)
	case "correlate":
		return runCorrelate(ctx, rest, stdout, stderr)
	case "bundle":
		return runBundle(ctx, rest, stdout, stderr)
	case "mcp":
		return runMCP(ctx, rest, stdout, stderr)
	case "keys":
		return runKeys(rest, stdout, stderr)
	case "receipt":
		return runReceipt(ctx, rest, stdout, stderr)
	case "approve":
		return runApprove(ctx, rest, stdout, stderr)
	case "version", "--version":
		fmt.Fprintln(stdout, "custody", version())
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("%w: unknown command %q", errUsage, cmd)
	}
}

// version is the module version the binary was built from, or "devel".
func version() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "devel"
}
