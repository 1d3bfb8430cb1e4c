package schema_test

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// goList runs `go list -deps` with format on pkgs (full import paths, so the test's directory
// does not matter beyond being in the module) and returns the non-empty lines.
func goList(t *testing.T, format string, pkgs ...string) []string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	args := append([]string{"list", "-deps", "-f", format}, pkgs...)
	out, err := exec.Command(goBin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	var lines []string
	for _, l := range strings.Split(string(out), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	return lines
}

// TestReadersBuildWithoutOPA: the record's readers must not pull in the policy engine. Before the
// schema package, decisionlog imported pdp for the entity types, and so verify, trace and receipt
// each depended on 75 OPA packages.
func TestReadersBuildWithoutOPA(t *testing.T) {
	readers := []string{
		"github.com/custodyhq/custody/decisionlog",
		"github.com/custodyhq/custody/decisionlog/verify",
		"github.com/custodyhq/custody/decisionlog/trace",
		"github.com/custodyhq/custody/receipt",
	}
	for _, pkg := range readers {
		t.Run(pkg, func(t *testing.T) {
			var opa []string
			for _, dep := range goList(t, "{{.ImportPath}}", pkg) {
				if strings.HasPrefix(dep, "github.com/open-policy-agent/") || dep == "github.com/custodyhq/custody/pdp" {
					opa = append(opa, dep)
				}
			}
			if len(opa) > 0 {
				t.Errorf("%s depends on %d engine packages, want none; first: %v", pkg, len(opa), opa[:min(len(opa), 5)])
			}
		})
	}
}

// TestSchemaIsALeaf: schema imports the standard library only, so that whatever imports it
// stays light.
func TestSchemaIsALeaf(t *testing.T) {
	got := goList(t, "{{if not .Standard}}{{.ImportPath}}{{end}}", "github.com/custodyhq/custody/schema")
	if diff := cmp.Diff([]string{"github.com/custodyhq/custody/schema"}, got); diff != "" {
		t.Errorf("schema's non-standard dependencies (-want +got):\n%s", diff)
	}
}
