package server_test

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/custodyhq/custody/decisionlog"
	"github.com/custodyhq/custody/server"
)

// TestHostCheck: a request whose Host names neither the listen address nor the public URL is a
// 421 (issue 16: no Host check, so a DNS-rebinding page could use the no-auth loopback API).
func TestHostCheck(t *testing.T) {
	srv := server.New(engine(t), &decisionlog.Memory{}, decisionlog.NewIntentHasher(testKey),
		server.WithPublicURL("https://pdp.acme.example"), server.WithAllowedHosts("custody.svc", "lb.acme.example:8443"))
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(hs.URL, "http://"))
	tests := []struct {
		host string
		want int
	}{
		{"127.0.0.1:" + port, 200},
		{"localhost:" + port, 200},
		{"LocalHost.:" + port, 200},
		{"[::1]:" + port, 200},
		{"pdp.acme.example", 200},
		{"pdp.acme.example:443", 200},
		{"custody.svc:" + port, 200},
		{"custody.svc", 200},
		{"lb.acme.example:8443", 200},
		// DNS rebinding: the attacker's name, re-pointed at 127.0.0.1.
		{"attacker.example:" + port, 421},
		{"attacker.example", 421},
		{"localhost.attacker.example:" + port, 421},
		{"127.0.0.1.attacker.example:" + port, 421},
		{"127.0.0.1:1" + port, 421},
		{"localhost", 421},
		{"pdp.acme.example:8443", 421},
		{"lb.acme.example", 421},
		{"lb.acme.example:9443", 421},
		{"127.0.0.1:" + port + "x", 421},
		{"10.0.0.1:" + port, 421},
	}
	for _, tc := range tests {
		t.Run(tc.host, func(t *testing.T) {
			for _, path := range []string{"/healthz", "/v1/authorize"} {
				method, body := http.MethodPost, strings.NewReader(exampleRequest)
				if path == "/healthz" {
					method, body = http.MethodGet, strings.NewReader("")
				}
				req, err := http.NewRequest(method, hs.URL+path, body)
				if err != nil {
					t.Fatal(err)
				}
				req.Host = tc.host
				req.Header.Set("Content-Type", "application/json")
				resp, err := hs.Client().Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if diff := cmp.Diff(tc.want, resp.StatusCode); diff != "" {
					t.Errorf("%s Host %q status (-want +got):\n%s", path, tc.host, diff)
				}
			}
		})
	}
}

// TestHostCheckRefusalIsAStableError: the 421 is the standard error body, never an allow.
func TestHostCheckRefusalIsAStableError(t *testing.T) {
	mem := &decisionlog.Memory{}
	hs := httptest.NewServer(server.New(engine(t), mem, decisionlog.NewIntentHasher(testKey)).Handler())
	t.Cleanup(hs.Close)
	req, _ := http.NewRequest(http.MethodPost, hs.URL+"/v1/authorize", strings.NewReader(exampleRequest))
	req.Host = "attacker.example"
	req.Header.Set("Content-Type", "application/json")
	resp, err := hs.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	buf := new(strings.Builder)
	_, _ = io.Copy(buf, resp.Body)
	if resp.StatusCode != http.StatusMisdirectedRequest || !strings.Contains(buf.String(), `"code":"misdirected_request"`) || strings.Contains(buf.String(), `"allow":true`) {
		t.Fatalf("status %d %s, want 421 misdirected_request", resp.StatusCode, buf)
	}
	if n := len(mem.Records()); n != 0 {
		t.Fatalf("%d records for a misdirected request, want none: it never reached the pipeline", n)
	}
}
