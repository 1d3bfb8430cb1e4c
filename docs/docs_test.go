package docs

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite configuration.md from the flag definitions")

// repoRoot is the repository's root: this package is docs/.
const repoRoot = ".."

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// custodyBinary builds cmd/custody once per test binary run and returns its path.
func custodyBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "custody-docs-bin-")
		if buildErr != nil {
			return
		}
		cmd := exec.Command("go", "build", "-o", filepath.Join(binDir, "custody"), "./cmd/custody")
		cmd.Dir = repoRoot
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("docs: build custody: %w\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(binDir, "custody")
}

func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// commands are custody's commands (and two-word subcommands) that take flags, as the
// configuration reference lists them, in order.
var commands = []string{
	"serve", "mcp", "tail", "eval", "export", "forward", "verify", "trace", "evidence", "unseal",
	"correlate", "bundle push", "receipt verify", "approve", "keys", "keys dev-issuer",
	"keys nats-creds",
}

// flagDoc is one flag as `custody CMD -h` prints it.
type flagDoc struct {
	Name, Arg, Usage, Default string
}

// helpFlagLine is the first line of a flag in Go's flag.PrintDefaults output.
var helpFlagLine = regexp.MustCompile(`^  -([a-z0-9][a-z0-9-]*)(?: (.+))?$`)

// commandFlags runs `custody CMD -h` for every command and parses its flags.
func commandFlags(t testing.TB) map[string][]flagDoc {
	t.Helper()
	bin := custodyBinary(t)
	out := map[string][]flagDoc{}
	for _, c := range commands {
		args := append(strings.Fields(c), "-h")
		var buf bytes.Buffer
		cmd := exec.Command(bin, args...)
		cmd.Stdout, cmd.Stderr = &buf, &buf
		cmd.Dir = t.TempDir()
		if err := cmd.Run(); err != nil {
			t.Fatalf("custody %s -h: %v\n%s", c, err, buf.Bytes())
		}
		out[c] = parseHelp(buf.String())
		if len(out[c]) == 0 {
			t.Fatalf("custody %s -h printed no flags:\n%s", c, buf.Bytes())
		}
	}
	return out
}

// parseHelp reads flag.PrintDefaults output: "  -name arg" then tab-indented usage lines.
func parseHelp(help string) []flagDoc {
	var flags []flagDoc
	for _, line := range strings.Split(help, "\n") {
		if m := helpFlagLine.FindStringSubmatch(line); m != nil {
			flags = append(flags, flagDoc{Name: m[1], Arg: m[2]})
			continue
		}
		if len(flags) > 0 && strings.HasPrefix(line, "    \t") {
			f := &flags[len(flags)-1]
			u := strings.TrimPrefix(line, "    \t")
			if f.Usage != "" {
				u = f.Usage + " " + u
			}
			f.Usage = u
		}
	}
	defaultRE := regexp.MustCompile(` \(default (.+)\)$`)
	for i := range flags {
		if m := defaultRE.FindStringSubmatchIndex(flags[i].Usage); m != nil {
			flags[i].Default = strings.Trim(flags[i].Usage[m[2]:m[3]], `"`)
			flags[i].Usage = flags[i].Usage[:m[0]]
		}
	}
	return flags
}

// configurationReference renders docs/configuration.md from the commands' flags.
func configurationReference(flags map[string][]flagDoc) string {
	var b strings.Builder
	b.WriteString(`# Configuration reference

<!-- Generated from the flag definitions by docs/docs_test.go; do not edit. After changing a
flag, run: go generate ./docs -->

Every flag of every command, as ` + "`custody COMMAND -h`" + ` prints it.

**Where settings come from.** Every flag can also be set with an environment variable
` + "`CUSTODY_<FLAG>`" + `, upper case with ` + "`-`" + ` as ` + "`_`" + ` (` + "`--nats-url`" + ` is ` + "`CUSTODY_NATS_URL`" + `; repeatable flags
take a comma-separated list), or, for ` + "`serve`" + ` and ` + "`mcp`" + `, in a YAML file named by ` + "`--config`" + `, whose keys
are flag names. The command line wins over the environment, which wins over the file, which
wins over the defaults. An unknown key in the file is an error, and so is a YAML list: write
several values as one comma-separated string.

` + "```yaml" + `
# custody.yaml: keys are serve's flag names
data-dir: ./custody-data
retention: 2160h          # keep decisions 90 days
stream-max-bytes: 16384   # tiny, to show what a full stream does
publish-timeout: 1s
log-format: console
` + "```" + `
` + "```sh" + `
CUSTODY_LOG_LEVEL=debug custody serve --config custody.yaml --addr 127.0.0.1:9191
` + "```" + `
` + "```" + `
2026-11-27T07:34:44Z INF custody serving component=serve http_addr=127.0.0.1:9191 instance=01a21bed-951b-7be2-… nats_embedded=true nats_url=nats://127.0.0.1:4222 policy_revision=sha256:… policy_source=embedded:policies record_mode=ack require_auth=false tls=false version=devel
` + "```" + `

(` + "`nats stream info CUSTODY`" + ` then shows ` + "`Maximum Bytes: 16 KiB`" + ` and ` + "`Maximum Age: 90d0h0m0s`" + `; the
eleventh decision is refused with a 503 deny, ` + "`decision_log_unavailable`" + `.)

` + "`custody mcp`" + ` without ` + "`--pdp-url`" + ` runs the PDP in-process and takes every ` + "`serve`" + ` flag; its
` + "`--data-dir`" + ` defaults to ` + "`./data-mcp`" + `, so that it never shares a data dir with a running ` + "`serve`" + `.
` + "`custody keys api-key NAME`" + ` and ` + "`custody version`" + ` take no flags.

Exit status: 0 on success, 1 on a failure (` + "`verify`" + ` finding a break, ` + "`eval`" + ` hitting a policy
error, ` + "`correlate`" + ` finding a line no decision explains), 2 on a usage error.

`)
	for _, c := range commands {
		fmt.Fprintf(&b, "## `custody %s`\n\n| flag | default | |\n|---|---|---|\n", c)
		for _, f := range flags[c] {
			name := "`--" + f.Name
			if f.Arg != "" && !strings.Contains(f.Arg, " ") {
				name += " " + f.Arg
			}
			name += "`"
			def := ""
			if f.Default != "" {
				def = "`" + f.Default + "`"
			}
			fmt.Fprintf(&b, "| %s | %s | %s |\n", name, def, strings.ReplaceAll(f.Usage, "|", `\|`))
		}
		b.WriteString("\n")
	}
	return strings.TrimRight(b.String(), "\n") + "\n"
}

// TestConfigurationReference fails when docs/configuration.md is not what the flag definitions
// generate; -update (go generate ./docs) rewrites it.
func TestConfigurationReference(t *testing.T) {
	want := configurationReference(commandFlags(t))
	if *update {
		if err := os.WriteFile("configuration.md", []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	got, err := os.ReadFile("configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Errorf("docs/configuration.md is stale: run go generate ./docs\n%s", firstDiff(string(got), want))
	}
}

// firstDiff names the first line where got and want differ.
func firstDiff(got, want string) string {
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	for i := 0; i < len(g) || i < len(w); i++ {
		var gl, wl string
		if i < len(g) {
			gl = g[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if gl != wl {
			return fmt.Sprintf("line %d:\n  have %q\n  want %q", i+1, gl, wl)
		}
	}
	return ""
}

// pages are the documentation files the checks read: the README and every page in docs/.
func pages(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob("*.md")
	if err != nil {
		t.Fatal(err)
	}
	files = append([]string{filepath.Join(repoRoot, "README.md")}, files...)
	return files
}

// withTimeout is a context for one external command of a test.
func withTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// freePort returns a loopback host:port nothing listens on now.
func freePort(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// sortedKeys returns m's keys in order, for stable messages.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
