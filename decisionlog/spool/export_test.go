package spool

import "os"

// SetSync replaces the fsync the spool calls, so a test can make one fail.
func SetSync(s *Spool, sync func(*os.File) error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sync = sync
}
