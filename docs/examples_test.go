package docs

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"
)

// TestExamples runs the pages' examples, docs/testdata/*.txt, against the built binary: each
// script starts its own custody serve on free ports in its own directory. IDs, times and policy
// revisions differ on every run, so the scripts match them with regular expressions.
func TestExamples(t *testing.T) {
	bin := custodyBinary(t)
	docsDir, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	testscript.Run(t, testscript.Params{
		Dir: "testdata",
		Setup: func(env *testscript.Env) error {
			http, nats := freePort(t), freePort(t)
			env.Setenv("PATH", filepath.Dir(bin)+string(os.PathListSeparator)+env.Getenv("PATH"))
			env.Setenv("HTTP", http)
			env.Setenv("CUSTODY_URL", "http://"+http)
			env.Setenv("NATS", "nats://"+nats)
			env.Setenv("NATS_LISTEN", nats)
			env.Setenv("DOCS", docsDir)
			for _, k := range []string{"GOCACHE", "GOMODCACHE", "GOPATH", "GOFLAGS", "GOPROXY", "GOTOOLCHAIN"} {
				out, err := exec.Command("go", "env", k).Output()
				if err != nil {
					return fmt.Errorf("docs: go env %s: %w", k, err)
				}
				env.Setenv(k, strings.TrimSpace(string(out)))
			}
			return nil
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"waitready": cmdWaitReady,
			"http":      cmdHTTP,
			"sleep": func(ts *testscript.TestScript, neg bool, args []string) {
				d, err := time.ParseDuration(args[0])
				ts.Check(err)
				time.Sleep(d)
			},
		},
	})
}

// cmdWaitReady waits up to 60s for GET URL/readyz to answer 200: waitready URL.
func cmdWaitReady(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 1 {
		ts.Fatalf("usage: waitready URL")
	}
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get(args[0] + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	ts.Fatalf("custody at %s not ready after 60s", args[0])
}

// cmdHTTP is the scripts' curl: http METHOD URL [BODY-FILE] [Header:value ...], where a value
// "Bearer @FILE" is "Bearer " and FILE's content. It prints the
// status line and then the body to stdout, so a script matches either; a JSON body is sent
// with Content-Type application/json.
func cmdHTTP(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) < 2 {
		ts.Fatalf("usage: http METHOD URL [BODY-FILE] [Header:value ...]")
	}
	method, url, rest := args[0], args[1], args[2:]
	var body io.Reader
	if len(rest) > 0 && !strings.Contains(rest[0], ":") {
		body = strings.NewReader(ts.ReadFile(rest[0]))
		rest = rest[1:]
	}
	req, err := http.NewRequest(method, url, body)
	ts.Check(err)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for _, h := range rest {
		k, v, _ := strings.Cut(h, ":")
		if before, file, ok := strings.Cut(v, "@"); ok { // Authorization:Bearer @token reads the file token
			v = before + strings.TrimSpace(ts.ReadFile(file))
		}
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	ts.Check(err)
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	ts.Check(err)
	var out bytes.Buffer
	fmt.Fprintf(&out, "HTTP %d\n", resp.StatusCode)
	for _, k := range []string{"X-Correlation-Id", "Custody-Decision-Id"} {
		if v := resp.Header.Get(k); v != "" {
			fmt.Fprintf(&out, "%s: %s\n", k, v)
		}
	}
	out.Write(data)
	out.WriteString("\n")
	ts.Stdout().Write(out.Bytes())
	failed := resp.StatusCode >= 400
	if failed != neg {
		ts.Fatalf("%s %s: HTTP %d: %s", method, url, resp.StatusCode, data)
	}
}
