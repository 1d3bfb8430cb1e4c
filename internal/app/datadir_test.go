package app

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

// holdLockEnv makes the test binary, run as a child by TestDataDirLockChild, hold the lock of
// the data dir it names until killed.
const holdLockEnv = "CUSTODY_TEST_HOLD_DATA_DIR"

func TestMain(m *testing.M) {
	if dir := os.Getenv(holdLockEnv); dir != "" {
		if _, err := lockDataDir(dir); err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		fmt.Println("locked")
		select {} // until killed
	}
	goleak.VerifyTestMain(m)
}

// TestDataDirLock: a second hold on a held data dir fails at once, naming the holder's PID, and
// succeeds once the first is released.
func TestDataDirLock(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	first, err := lockDataDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	_, err = lockDataDir(dir)
	if !errors.Is(err, errDataDirInUse) || !strings.Contains(err.Error(), fmt.Sprintf("(pid %d)", os.Getpid())) {
		t.Fatalf("second lock: %v; want errDataDirInUse naming pid %d", err, os.Getpid())
	}
	first.release()
	second, err := lockDataDir(dir)
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	second.release()
}

// TestDataDirLockChild: a process killed while holding the data dir leaves its LOCK file,
// which blocks nobody.
func TestDataDirLockChild(t *testing.T) {
	dir := t.TempDir()
	child := exec.Command(os.Args[0], "-test.run=^$")
	child.Env = append(os.Environ(), holdLockEnv+"="+dir)
	out, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = child.Process.Kill(); _ = child.Wait() })
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "locked\n" {
		t.Fatalf("child said %q %v", line, err)
	}
	_, err = lockDataDir(dir)
	if want := fmt.Sprintf("(pid %d)", child.Process.Pid); err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("lock held by the child: %v; want an error naming %s", err, want)
	}
	if err := child.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = child.Wait()
	l, err := lockDataDir(dir)
	if err != nil {
		t.Fatalf("lock after the holder was killed: %v", err)
	}
	l.release()
}

// TestServeLocksFirst: New on a held data dir fails before it writes anything there.
func TestServeLocksFirst(t *testing.T) {
	dir := t.TempDir()
	held, err := lockDataDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer held.release()
	cfg := DefaultConfig()
	cfg.DataDir, cfg.Addr, cfg.NATSListen = dir, "127.0.0.1:0", "127.0.0.1:0"
	_, err = New(t.Context(), cfg)
	if !errors.Is(err, errDataDirInUse) || !strings.HasPrefix(err.Error(), "app: data dir in use: ") {
		t.Fatalf("New: %v; want the data dir in use", err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 || entries[0].Name() != lockFile {
		t.Fatalf("data dir after the refusal holds %v; want only %s", entries, lockFile)
	}
}
