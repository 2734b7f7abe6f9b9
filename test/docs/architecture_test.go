// Package docs keeps docs/ARCHITECTURE.md true: every place it points at
// must exist and say what the page calls it.
package docs

import (
	"bufio"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// reference is a Markdown link into the repository: [text](../path#Lline).
var reference = regexp.MustCompile(`\[([^\]]+)\]\(\.\./([^)#\s]+)(?:#L(\d+))?\)`)

// TestArchitectureReferences: each link names a file that exists, and a
// link to a line names a symbol that the line holds, so a change that
// moves a seam without updating the page fails here.
func TestArchitectureReferences(t *testing.T) {
	const page = "../../docs/ARCHITECTURE.md"
	text, err := os.ReadFile(page)
	if err != nil {
		t.Fatalf("reading the architecture page: %v", err)
	}
	refs := reference.FindAllStringSubmatch(string(text), -1)
	if len(refs) < 20 {
		t.Fatalf("the architecture page has %d references into the code, want at least 20", len(refs))
	}
	for _, ref := range refs {
		name, path, line := strings.Trim(ref[1], "`"), ref[2], ref[3]
		target := filepath.Join("../..", path)
		if _, err := os.Stat(target); err != nil {
			t.Errorf("%s points at %s, which does not exist", ref[0], path)
			continue
		}
		if line == "" {
			continue
		}
		n, _ := strconv.Atoi(line)
		lines := linesOf(t, target)
		symbol := strings.TrimSuffix(name[strings.LastIndex(name, ".")+1:], "()")
		if n < 1 || n > len(lines) || !declares(symbol).MatchString(lines[n-1]) {
			t.Errorf("%s: line %d of %s does not declare %s; %s", ref[0], n, path, symbol, whereNow(lines, symbol))
		}
	}
}

func linesOf(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("opening %s: %v", path, err)
	}
	defer f.Close()
	var lines []string
	scanner := bufio.NewScanner(f)
	scanner.Buffer(make([]byte, 1<<20), 1<<20)
	for scanner.Scan() {
		lines = append(lines, scanner.Text())
	}
	return lines
}

// declares matches a line that declares symbol: a Go func, method, type,
// var or block member, or a C definition starting at the line's start.
func declares(symbol string) *regexp.Regexp {
	name := regexp.QuoteMeta(symbol)
	return regexp.MustCompile(`^(func (\([^)]*\) )?|type |var |\t)` + name + `\b|^(\S.*\b)?` + name + `\(`)
}

// whereNow says where symbol is declared now, to fix the link with.
func whereNow(lines []string, symbol string) string {
	declaration := declares(symbol)
	for i, l := range lines {
		if declaration.MatchString(l) {
			return "it is declared at line " + strconv.Itoa(i+1) + " now"
		}
	}
	return "it is not declared there any more"
}
