package control

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/tether-lb/tether/userspace/health"
)

// savedStateFile runs a daemon through a few changes and returns the path
// of its state file and the file's contents before the last change.
func savedStateFile(t *testing.T) (path string, previous []byte) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "state.json")
	tb := newTestBed(t, testLimits, path)
	tb.addVIP(webVIP, func(v *VIP) { v.Check = health.Check{Kind: health.KindHTTP, Path: "/healthz"} })
	tb.addBackend(webVIP, "web-1", "10.0.0.1", 1)
	tb.addVIP(mustRef(t, "[2001:db8::1]:443", "udp"), nil)
	previous, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	tb.addBackend(webVIP, "web-2", "10.0.0.2", 3)
	return path, previous
}

// requireCorruptError checks the error LoadState gives for a bad file: one
// line naming the file, its previous good copy and, when given, what is
// wrong.
func requireCorruptError(t *testing.T, path string, err error, problem string) {
	t.Helper()
	switch {
	case err == nil:
		t.Fatal("LoadState accepted the file")
	case strings.ContainsAny(err.Error(), "\n\r"):
		t.Fatalf("error is not one line: %q", err)
	case !strings.Contains(err.Error(), path+" is corrupt") || !strings.Contains(err.Error(), path+".prev"):
		t.Fatalf("error %q names neither the file nor its .prev copy", err)
	case !strings.Contains(err.Error(), problem):
		t.Fatalf("error %q does not say %q", err, problem)
	}
}

// TestLoadStateRejectsEveryTruncation cuts a real state file at every
// length: each cut is refused, unless all that is gone is the final
// newline, and the file's previous good copy is left as it was.
func TestLoadStateRejectsEveryTruncation(t *testing.T) {
	path, previous := savedStateFile(t)
	full, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want := loadSaved(t, path)
	if prev := loadSaved(t, path+".prev"); reflect.DeepEqual(prev, want) {
		t.Fatal("the previous copy holds the current state, want the one before the last change")
	}
	for n := range len(full) {
		if err := os.WriteFile(path, full[:n], 0o600); err != nil {
			t.Fatal(err)
		}
		s, _, err := LoadState(path)
		if len(bytes.TrimSpace(full[n:])) == 0 {
			if err != nil || !reflect.DeepEqual(s, want) {
				t.Fatalf("cut to %d of %d bytes, only whitespace gone: %v", n, len(full), err)
			}
			continue
		}
		if err == nil {
			t.Fatalf("cut to %d of %d bytes: accepted as %+v", n, len(full), s)
		}
		requireCorruptError(t, path, err, "")
	}
	if prev, err := os.ReadFile(path + ".prev"); err != nil || !bytes.Equal(prev, previous) {
		t.Fatalf("the previous good copy changed (%v)", err)
	}
}

// TestLoadStateRejectsCorruption refuses files that decode as JSON but
// are not a state the daemon wrote, or hold values it would refuse: each
// error names the file, its previous copy and the problem, before the
// daemon loads anything into the kernel.
func TestLoadStateRejectsCorruption(t *testing.T) {
	path, _ := savedStateFile(t)
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	replace := func(old, new string) []byte {
		t.Helper()
		if !bytes.Contains(good, []byte(old)) {
			t.Fatalf("state file has no %q", old)
		}
		return bytes.Replace(good, []byte(old), []byte(new), 1)
	}
	vips := good[bytes.Index(good, []byte(`"vips": [`))+len(`"vips": [`) : bytes.LastIndex(good, []byte("]"))]
	for _, tc := range []struct {
		name    string
		content []byte
		problem string
	}{
		{"empty", nil, "the file is empty"},
		{"zeros, as after a crash", make([]byte, len(good)), "invalid character"},
		{"null", []byte("null\n"), "not a JSON object"},
		{"array", []byte("[]\n"), "cannot unmarshal array"},
		{"trailing garbage", append(append([]byte(nil), good...), "garbage"...), "after the state"},
		{"two states", append(append([]byte(nil), good...), good...), "after the state"},
		{"prefix4", replace(`"prefix4": 32`, `"prefix4": 99`), "prefix4 99"},
		{"table size", replace(`"table_size": 4099`, `"table_size": 4`), "table size 4"},
		{"protocol", replace(`"proto": "udp"`, `"proto": "sctp"`), `"sctp"`},
		{"check kind", replace(`"Kind": "http"`, `"Kind": "ping"`), `"ping"`},
		{"backend weight", replace(`"weight": 3`, `"weight": 30000`), "weight 30000"},
		{"backend address", replace(`"addr": "10.0.0.2"`, `"addr": ""`), "backend address is missing"},
		{"backend name", replace(`"name": "web-2"`, `"name": "web 2"`), `"web 2"`},
		{"duplicate VIP", replace(`"vips": [`, `"vips": [`+string(vips)+","), "listed twice"},
		{"duplicate backend id", replace(`"id": 2`, `"id": 1`), "backend id 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.WriteFile(path, tc.content, 0o600); err != nil {
				t.Fatal(err)
			}
			_, _, err := LoadState(path)
			requireCorruptError(t, path, err, tc.problem)
		})
	}
}
