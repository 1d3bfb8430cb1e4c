package server

import (
	"net"
	"strings"
	"testing"
)

// FuzzHostAllowed: no Host header panics the check, and a Host that names a foreign domain is
// never taken for the loopback listener.
func FuzzHostAllowed(f *testing.F) {
	for _, seed := range []string{"127.0.0.1:8181", "localhost:8181", "[::1]:8181", "attacker.example:8181", "[", "]:", ":8181", "LOCALHOST.:08181", "[::ffff:127.0.0.1]:8181"} {
		f.Add(seed)
	}
	local := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 8181}
	s := &Server{publicURL: "https://pdp.acme.example", allowedHosts: []string{"custody.svc"}}
	f.Fuzz(func(t *testing.T, host string) {
		ok := s.hostAllowed(host, local, false)
		name, _, _ := splitHost(host)
		if ok && strings.Contains(name, "attacker") {
			t.Fatalf("Host %q allowed", host)
		}
	})
}
