package docs

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// doc is one markdown file, split into what the checks read.
type doc struct {
	path string
	// prose is the text outside fenced code blocks, one entry per line.
	prose []string
	// spans are the inline code spans of the prose.
	spans []string
	// commands are the logical lines (continuations joined) of sh, bash, shell and console
	// blocks; in a console block only the lines that start with "$ ".
	commands []string
	// blocks are the fenced code blocks, whole, with their language.
	blocks []block
}

type block struct {
	lang, text string
	line       int
}

var spanRE = regexp.MustCompile("`([^`]+)`")

func readDoc(t *testing.T, path string) doc {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	d := doc{path: path}
	var cur *block
	var pending string
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	n := 0
	for sc.Scan() {
		n++
		line := sc.Text()
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			if cur == nil {
				cur = &block{lang: strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(line), "```")), line: n}
			} else {
				d.blocks = append(d.blocks, *cur)
				cur, pending = nil, ""
			}
			continue
		}
		if cur == nil {
			d.prose = append(d.prose, line)
			for _, m := range spanRE.FindAllStringSubmatch(line, -1) {
				d.spans = append(d.spans, m[1])
			}
			continue
		}
		cur.text += line + "\n"
		switch cur.lang {
		case "sh", "bash", "shell":
		case "console":
			if pending == "" && !strings.HasPrefix(line, "$ ") {
				continue
			}
			line = strings.TrimPrefix(line, "$ ")
		default:
			continue
		}
		if strings.HasSuffix(line, `\`) {
			pending += strings.TrimSuffix(line, `\`) + " "
			continue
		}
		d.commands = append(d.commands, pending+line)
		pending = ""
	}
	return d
}

func allDocs(t *testing.T) []doc {
	var docs []doc
	for _, p := range pages(t) {
		docs = append(docs, readDoc(t, p))
	}
	return docs
}

// TestNoDesignOrSharedReferences fails on a page or Go file that names the design document or
// the shared directory of an earlier layout, neither of which is in the repository.
func TestNoDesignOrSharedReferences(t *testing.T) {
	bad := []string{"DESIGN" + ".md", "../" + "shared"}
	err := filepath.WalkDir(repoRoot, func(path string, e os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if e.IsDir() && (e.Name() == ".git" || e.Name() == "testdata" && strings.Contains(path, "fuzz")) {
			return filepath.SkipDir
		}
		if e.IsDir() || !(strings.HasSuffix(path, ".go") || strings.HasSuffix(path, ".md") || strings.HasSuffix(path, ".sh")) {
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, b := range bad {
			if strings.Contains(string(data), b) {
				t.Errorf("%s names %s, which is not in the repository", path, b)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

var linkRE = regexp.MustCompile(`\[[^\]]*\]\(([^)\s]+)\)`)

// TestLinks fails on a relative link to a file that does not exist, or to a heading the target
// page does not have.
func TestLinks(t *testing.T) {
	anchors := map[string]map[string]bool{}
	anchorsOf := func(path string) map[string]bool {
		if a, ok := anchors[path]; ok {
			return a
		}
		a := map[string]bool{}
		if strings.HasSuffix(path, ".md") {
			if _, err := os.Stat(path); err == nil {
				for _, line := range readDoc(t, path).prose {
					if strings.HasPrefix(line, "#") {
						a[slug(strings.TrimLeft(line, "# "))] = true
					}
				}
			}
		}
		anchors[path] = a
		return a
	}
	for _, d := range allDocs(t) {
		for _, line := range d.prose {
			for _, m := range linkRE.FindAllStringSubmatch(line, -1) {
				target := m[1]
				if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
					continue
				}
				file, anchor, _ := strings.Cut(target, "#")
				path := d.path
				if file != "" {
					path = filepath.Join(filepath.Dir(d.path), file)
					if _, err := os.Stat(path); err != nil {
						t.Errorf("%s: link %s: no such file %s", d.path, target, path)
						continue
					}
				}
				if anchor != "" && !anchorsOf(path)[anchor] {
					t.Errorf("%s: link %s: %s has no heading #%s", d.path, target, path, anchor)
				}
			}
		}
	}
}

// slug is GitHub's anchor for a heading: lower case, punctuation dropped, spaces as dashes.
func slug(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(strings.TrimSpace(heading)) {
		switch {
		case r == ' ':
			b.WriteRune('-')
		case r == '-' || r == '_' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r > 127:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// foreignFlags are other tools' flags the pages name in prose (opa's, go test's, the nats CLI's).
var foreignFlags = map[string]bool{
	"verification-key": true, "verification-key-id": true, "signing-alg": true, "scope": true,
	"signing-key": true, "claims-file": true, "revision": true, "bundle": true, "all": true,
	"new": true, "last": true, "start-sequence": true, "raw": true, "max-msgs": true,
	"fail-with-body": true, "cli": true, "method": true, "tool-name": true, "tool-arg": true,
}

// proseWords follow "custody" in messages the pages quote (siem.md's OCSF messages), not commands.
var proseWords = map[string]bool{"allowed": true, "denied": true}

var (
	custodyCmdRE = regexp.MustCompile(`(?:^|[\s(=])(?:custody|go run \./cmd/custody|"\$custody")((?:[ \t]+[a-z][a-z-]*)+)`)
	flagRE       = regexp.MustCompile(`(?:^|[\s'"(\[=])--([a-z][a-z0-9-]*)(\*)?`)
)

// TestCommandsAndFlags fails when a page names a custody command that does not exist, or a flag
// that the command named beside it (or, in prose, any command) does not define.
func TestCommandsAndFlags(t *testing.T) {
	flags := commandFlags(t)
	known := map[string]map[string]bool{}
	any := map[string]bool{}
	for c, fs := range flags {
		known[c] = map[string]bool{}
		for _, f := range fs {
			known[c][f.Name] = true
			any[f.Name] = true
		}
	}
	topLevel := map[string]bool{"keys": true, "bundle": true, "receipt": true, "version": true, "help": true}
	for _, c := range commands {
		topLevel[strings.Fields(c)[0]] = true
	}
	twoWord := map[string][]string{"keys": {"api-key", "dev-issuer", "nats-creds"}, "bundle": {"push"}, "receipt": {"verify"}}

	// command resolves the words after "custody" to a command of the flags table.
	command := func(words []string) (string, bool) {
		if len(words) == 0 {
			return "", false
		}
		if !topLevel[words[0]] {
			return words[0], false
		}
		if subs, ok := twoWord[words[0]]; ok && len(words) > 1 {
			for _, s := range subs {
				if words[1] == s {
					return words[0] + " " + s, true
				}
			}
		}
		return words[0], true
	}
	check := func(where, unit string, prose bool) {
		for _, segment := range splitShell(unit) {
			loc := custodyCmdRE.FindStringSubmatchIndex(segment)
			if loc == nil {
				if !prose || !strings.HasPrefix(strings.TrimSpace(segment), "--") {
					continue // another tool's command line, or prose that names no flag first
				}
				for _, m := range flagRE.FindAllStringSubmatch(segment, -1) {
					if m[2] == "" && !any[m[1]] && !foreignFlags[m[1]] {
						t.Errorf("%s: `%s`: no custody command has --%s", where, unit, m[1])
					}
				}
				continue
			}
			words := strings.Fields(segment[loc[2]:loc[3]])
			name, ok := command(words)
			if !ok && prose && proseWords[name] {
				continue // a message that starts with the word custody, not a command line
			}
			if !ok {
				t.Errorf("%s: `%s`: custody has no command %q", where, unit, name)
				continue
			}
			fs := known[name]
			if fs == nil {
				fs = known[strings.Fields(name)[0]]
			}
			for _, m := range flagRE.FindAllStringSubmatch(segment[loc[1]:], -1) {
				if m[2] != "" { // --bundle-verification-*: some flag with that prefix
					found := false
					for f := range fs {
						found = found || strings.HasPrefix(f, m[1])
					}
					if !found {
						t.Errorf("%s: `%s`: custody %s has no --%s* flag", where, unit, name, m[1])
					}
					continue
				}
				if fs == nil || !fs[m[1]] {
					if name == "version" || name == "keys api-key" {
						t.Errorf("%s: `%s`: custody %s takes no flags", where, unit, name)
						continue
					}
					t.Errorf("%s: `%s`: custody %s has no flag --%s", where, unit, name, m[1])
				}
			}
		}
	}
	for _, d := range allDocs(t) {
		for _, s := range d.spans {
			check(d.path, s, true)
		}
		for _, c := range d.commands {
			check(d.path, c, false)
		}
	}
}

// splitShell cuts a command line at pipes, command lists and substitutions, so that each part
// is one command and its arguments.
func splitShell(s string) []string {
	return regexp.MustCompile(`\|\|?|&&|;|\$\(|\)|\bthen\b|\bdo\b`).Split(s, -1)
}

var (
	routeConstRE = regexp.MustCompile(`(Endpoint\w+)\s*=\s*"([^"]+)"`)
	routeRE      = regexp.MustCompile(`e\.(GET|POST|PUT|DELETE)\(([^,]+),`)
	endpointRE   = regexp.MustCompile(`(?:^|[\s"'(])(?:(GET|POST|PUT|DELETE) )?(?:https?://[\w.:-]+|localhost:\d+|127\.0\.0\.1:\d+)?(/(?:v1|access|\.well-known|healthz|readyz|metrics)[\w./{}:<>…-]*)`)
)

// routes reads the HTTP routes the server registers: "METHOD /path" with echo's :param.
func routes(t *testing.T) map[string]bool {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(repoRoot, "server", "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	consts := map[string]string{}
	var src strings.Builder
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		src.Write(data)
		for _, m := range routeConstRE.FindAllStringSubmatch(string(data), -1) {
			consts[m[1]] = m[2]
		}
	}
	out := map[string]bool{}
	for _, m := range routeRE.FindAllStringSubmatch(src.String(), -1) {
		var path string
		for _, part := range strings.Split(m[2], "+") {
			part = strings.TrimSpace(part)
			if v, ok := consts[part]; ok {
				path += v
			} else {
				path += strings.Trim(part, `"`)
			}
		}
		out[m[1]+" "+path] = true
	}
	if len(out) < 10 {
		t.Fatalf("found only %d routes in server/: %v", len(out), out)
	}
	return out
}

// TestEndpoints fails when a page names an HTTP endpoint (or a method on one) that the server
// does not route.
func TestEndpoints(t *testing.T) {
	rs := routes(t)
	paramRE := regexp.MustCompile(`\{[a-z_]+\}|<[a-z_-]+>|:[a-z]+|ap_…|…`)
	for _, d := range allDocs(t) {
		units := append(append([]string{}, d.spans...), d.commands...)
		for _, u := range units {
			for _, m := range endpointRE.FindAllStringSubmatch(u, -1) {
				method, path := m[1], strings.TrimRight(m[2], ".,:")
				path, _, _ = strings.Cut(path, "?")
				path = paramRE.ReplaceAllString(path, ":id")
				ok := false
				for r := range rs {
					rm, rp, _ := strings.Cut(r, " ")
					rp = regexp.MustCompile(`:[a-z]+`).ReplaceAllString(rp, ":id")
					if (method == "" || method == rm) && (rp == path || method == "" && strings.HasPrefix(rp, path+"/")) {
						ok = true
					}
				}
				if !ok {
					t.Errorf("%s: `%s`: the server has no endpoint %s %s", d.path, u, method, path)
				}
			}
		}
	}
}

var testNameRE = regexp.MustCompile(`\b((?:Test|Benchmark|Fuzz)[A-Z]\w*)`)

// TestTestNames fails when a page names a Go test, benchmark or fuzz target that does not exist.
func TestTestNames(t *testing.T) {
	defined := map[string]bool{}
	defRE := regexp.MustCompile(`(?m)^func ((?:Test|Benchmark|Fuzz)\w+)\(`)
	err := filepath.WalkDir(repoRoot, func(path string, e os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if e.IsDir() && e.Name() == ".git" {
			return filepath.SkipDir
		}
		if !strings.HasSuffix(path, "_test.go") {
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range defRE.FindAllStringSubmatch(string(data), -1) {
			defined[m[1]] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range allDocs(t) {
		for _, u := range append(append([]string{}, d.spans...), d.commands...) {
			for _, m := range testNameRE.FindAllStringSubmatch(u, -1) {
				if !defined[m[1]] {
					t.Errorf("%s: `%s`: no Go test, benchmark or fuzz target %s", d.path, u, m[1])
				}
			}
		}
	}
}

var repoPathRE = regexp.MustCompile(`^\.?/?([a-z][\w-]*)(/[\w.*-]+)+/?$|^[\w-]+\.(?:go|md|sh|rego|json)$`)

// TestRepositoryFiles fails when a code span names a file or directory under one of the
// repository's top-level directories that does not exist.
func TestRepositoryFiles(t *testing.T) {
	top := map[string]bool{}
	entries, err := os.ReadDir(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() && !strings.HasPrefix(e.Name(), ".") {
			top[e.Name()] = true
		}
	}
	for _, d := range allDocs(t) {
		for _, s := range d.spans {
			m := repoPathRE.FindStringSubmatch(s)
			if m == nil || m[1] == "" || !top[m[1]] {
				continue
			}
			p := filepath.Join(repoRoot, strings.TrimPrefix(s, "./"))
			matches, _ := filepath.Glob(p)
			if len(matches) == 0 {
				t.Errorf("%s: `%s`: no such file in the repository", d.path, s)
			}
		}
	}
}

// TestIncludedSnippets fails when a code block marked <!-- include: FILE --> is not exactly
// FILE, so that the snippets on a page are the programs CI runs.
func TestIncludedSnippets(t *testing.T) {
	includeRE := regexp.MustCompile(`<!-- include: (\S+) -->`)
	n := 0
	for _, p := range pages(t) {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		text := string(data)
		for _, m := range includeRE.FindAllStringSubmatchIndex(text, -1) {
			n++
			file := text[m[2]:m[3]]
			rest := text[m[1]:]
			start := strings.Index(rest, "```")
			body := rest[start:]
			body = body[strings.Index(body, "\n")+1:]
			end := strings.Index(body, "```")
			want, err := os.ReadFile(filepath.Join(filepath.Dir(p), file))
			if err != nil {
				t.Errorf("%s: include %s: %v", p, file, err)
				continue
			}
			if body[:end] != string(want) {
				t.Errorf("%s: the block after <!-- include: %s --> is not that file:\n%s", p, file, firstDiff(body[:end], string(want)))
			}
		}
	}
	if n == 0 {
		t.Error("no page includes a snippet; the checks read nothing")
	}
}

// TestReadmeIsShort keeps the README an entry point: the rest lives in docs/.
func TestReadmeIsShort(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(repoRoot, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(data), "\n"); n >= 200 {
		t.Errorf("README.md has %d lines; keep it under 200 and move the rest to docs/", n)
	}
	ci, err := os.ReadFile(filepath.Join(repoRoot, ".ci", "run"))
	if err != nil {
		t.Fatal(err)
	}
	const testCmd = "go test ./..."
	if !strings.Contains(string(ci), "\n"+testCmd+"\n") || !strings.Contains(string(data), "\n"+testCmd+"\n") {
		t.Errorf("README.md and .ci/run must both run %q", testCmd)
	}
	_ = fmt.Sprint()
}
