package test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// refused runs custody with args in dir (the test's working directory when empty) and returns
// what it wrote once it exits. It fails the test if the process serves instead: a refusal must
// come before anything listens.
func refused(t *testing.T, dir string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Dir = dir
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = cmd.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	serving := false
	sc := bufio.NewScanner(stderr)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		out.WriteString(sc.Text() + "\n")
		var e map[string]any
		if json.Unmarshal(sc.Bytes(), &e) == nil && (e["message"] == "custody serving" || e["message"] == "custody mcp serving") {
			serving = true
			_ = cmd.Process.Signal(syscall.SIGTERM)
		}
	}
	_, _ = io.Copy(io.Discard, stderr)
	err = cmd.Wait()
	if serving {
		t.Fatalf("custody %s served, want a refusal to start:\n%s", strings.Join(args, " "), out.String())
	}
	if err == nil {
		t.Fatalf("custody %s exited 0, want a refusal:\n%s", strings.Join(args, " "), out.String())
	}
	return out.String()
}

// TestOneDataDirOneProcess: a second serve, or an in-process custody mcp, on a data dir a serve
// holds exits at once naming the holder; a killed holder leaves a LOCK file that blocks nobody;
// and custody mcp's own default data dir is not serve's.
func TestOneDataDirOneProcess(t *testing.T) {
	dir := t.TempDir()
	first := startCustody(t, dir)
	holder := fmt.Sprintf("pid %d", first.cmd.Process.Pid)

	out := refused(t, "", "serve", "--addr", "127.0.0.1:0", "--nats-listen", "127.0.0.1:0", "--data-dir", dir)
	if !strings.Contains(out, "in use") || !strings.Contains(out, holder) {
		t.Errorf("second serve said %q; want the data dir in use by %s", out, holder)
	}
	up := mcpUpstream(t)
	out = refused(t, "", "mcp", "--listen", "127.0.0.1:0", "--nats-listen", "127.0.0.1:0", "--data-dir", dir, "--upstream", "filesystem="+up)
	if !strings.Contains(out, "in use") || !strings.Contains(out, holder) {
		t.Errorf("in-process custody mcp said %q; want the data dir in use by %s", out, holder)
	}

	// A crash leaves the LOCK file, not the lock.
	first.Kill()
	if _, err := os.Stat(filepath.Join(dir, "LOCK")); err != nil {
		t.Fatalf("LOCK after a crash: %v", err)
	}
	again := startCustody(t, dir)
	raw, err := os.ReadFile(filepath.Join(dir, "LOCK"))
	if err != nil || strings.TrimSpace(string(raw)) != fmt.Sprint(again.cmd.Process.Pid) {
		t.Errorf("LOCK holds %q %v; want the new holder's pid %d", raw, err, again.cmd.Process.Pid)
	}
	again.Stop(t)

	// custody mcp next to a serve, both on their defaults, in one working directory.
	cwd := t.TempDir()
	serve := exec.Command(binary, "serve", "--addr", "127.0.0.1:0", "--nats-listen", "127.0.0.1:0")
	serve.Dir = cwd
	logs, err := serve.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := serve.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = serve.Process.Kill(); _ = serve.Wait() })
	waitLog(t, logs, "custody serving")
	mcpCmd := exec.Command(binary, "mcp", "--listen", "127.0.0.1:0", "--log-level", "info", "--nats-listen", "127.0.0.1:0", "--upstream", "filesystem="+up)
	mcpCmd.Dir = cwd
	mlogs, err := mcpCmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := mcpCmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = mcpCmd.Process.Kill(); _ = mcpCmd.Wait() })
	waitLog(t, mlogs, "custody mcp serving")
	for _, d := range []string{"data", "data-mcp"} {
		if _, err := os.Stat(filepath.Join(cwd, d, "instance.id")); err != nil {
			t.Errorf("%s: %v; want serve in ./data and custody mcp in ./data-mcp", d, err)
		}
	}
}

// waitLog reads JSON log lines from r until one has message msg, and drains r after.
func waitLog(t *testing.T, r io.Reader, msg string) {
	t.Helper()
	found := make(chan struct{})
	var tail strings.Builder
	go func() {
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var e map[string]any
			if json.Unmarshal(sc.Bytes(), &e) == nil && e["message"] == msg {
				close(found)
				break
			}
			if tail.Len() < 8<<10 {
				tail.WriteString(sc.Text() + "\n")
			}
		}
		_, _ = io.Copy(io.Discard, r)
	}()
	select {
	case <-found:
	case <-time.After(60 * time.Second):
		t.Fatalf("no %q logged within 60s", msg)
	}
}
