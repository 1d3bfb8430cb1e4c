package app

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
)

// lockFile is the file in the data dir whose flock marks the dir as taken, and which holds the
// holder's PID for the message a second process prints.
const lockFile = "LOCK"

// errDataDirInUse is returned, wrapped, when another process holds the data dir.
var errDataDirInUse = errors.New("data dir in use")

// dataDirLock is the exclusive hold of one process on a data dir. Two processes on one dir
// would share an instance ID, chain and JetStream store and silently lose each other's records.
type dataDirLock struct{ f *os.File }

// lockDataDir creates dir if needed and takes its lock, before anything else in it is read or
// written. It fails at once, naming the holder's PID, if another process holds it. The lock is
// the kernel's (flock): it goes with the process, so a LOCK file left by a killed process blocks
// nobody.
func lockDataDir(dir string) (*dataDirLock, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("data dir: create %s: %w", dir, err)
	}
	path := filepath.Join(dir, lockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("data dir: open %s: %w", path, err)
	}
	if err := flock(f); err != nil {
		f.Close()
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("data dir: lock %s: %w", path, err)
		}
		return nil, fmt.Errorf("%w: %s is held by another custody process (%s); one data dir serves one process: stop that one, or give this one its own --data-dir", errDataDirInUse, dir, holder(path))
	}
	pid := []byte(strconv.Itoa(os.Getpid()) + "\n")
	if err := f.Truncate(0); err == nil {
		_, err = f.WriteAt(pid, 0)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("data dir: write %s: %w", path, err)
	}
	return &dataDirLock{f: f}, nil
}

// flock takes an exclusive lock on f without waiting, retrying a call a signal interrupted.
func flock(f *os.File) error {
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if !errors.Is(err, syscall.EINTR) {
			return err
		}
	}
}

// holder names the PID in the lock file at path, as far as it can be read: the holder writes
// it just after taking the lock.
func holder(path string) string {
	raw, err := os.ReadFile(path)
	if err != nil {
		return "pid unknown: " + err.Error()
	}
	pid, err := strconv.Atoi(string(bytes.TrimSpace(raw)))
	if err != nil || pid <= 0 {
		return "pid not yet written"
	}
	return "pid " + strconv.Itoa(pid)
}

// release gives the data dir up. The file stays: removing it would let a process that opened
// it meanwhile hold a lock on a file no longer in the dir, beside a third on a new one.
func (l *dataDirLock) release() {
	if l == nil || l.f == nil {
		return
	}
	_ = l.f.Truncate(0)
	_ = syscall.Flock(int(l.f.Fd()), syscall.LOCK_UN)
	_ = l.f.Close()
	l.f = nil
}
