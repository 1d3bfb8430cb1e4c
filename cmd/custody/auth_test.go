package main

import (
	"flag"
	"io"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/custodyhq/custody/internal/app"
)

// TestIssuerPatternFlags: --issuer-subjects and --issuer-actors take ISS=REGEX, repeatable,
// without splitting a pattern on its commas; the config refuses a pattern for an untrusted
// issuer.
func TestIssuerPatternFlags(t *testing.T) {
	var a app.AuthConfig
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	authFlags(fs, &a)
	err := fs.Parse([]string{
		"--issuer", "https://idp.acme.example", "--jwks", "a.json",
		"--issuer-subjects", `https://idp.acme.example=[a-z]{1,20}@acme\.example`,
		"--issuer-actors", "https://idp.acme.example=spiffe://acme.example/.+",
		"--allowed-host", "custody.svc,lb.acme.example:8443",
	})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]string{"https://idp.acme.example": `[a-z]{1,20}@acme\.example`}, a.IssuerSubjects); diff != "" {
		t.Errorf("subjects (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"custody.svc", "lb.acme.example:8443"}, a.AllowedHosts); diff != "" {
		t.Errorf("allowed hosts (-want +got):\n%s", diff)
	}
	for _, bad := range [][]string{
		{"--issuer-subjects", "no-equals"},
		{"--issuer-subjects", "x=a", "--issuer-subjects", "x=b"},
	} {
		fs := flag.NewFlagSet("serve", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		authFlags(fs, &app.AuthConfig{})
		if err := fs.Parse(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	cfg := app.DefaultConfig()
	cfg.Auth = a
	cfg.Auth.Audience = "custody"
	cfg.Auth.IssuerSubjects = map[string]string{"https://idp.partner.example": ".*"}
	if err := cfg.Validate(); err == nil {
		t.Error("a pattern for an issuer that is not trusted was accepted")
	}
	cfg.Auth.IssuerSubjects = map[string]string{"https://idp.acme.example": "("}
	if err := cfg.Validate(); err == nil {
		t.Error("a pattern that does not compile was accepted")
	}
}
