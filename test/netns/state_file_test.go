package netns

import (
	"bytes"
	"context"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tether-lb/tether/test/testenv"
	"github.com/tether-lb/tether/userspace/control"
	"github.com/tether-lb/tether/userspace/health"
)

// TestRunRefusesCorruptStateFile starts the real binary's run on a state
// directory whose state file was cut short or holds a value no daemon
// saves. It must refuse before it touches BPF (no bpffs, no pins, no
// control socket) with one line naming the file and its previous good
// copy, and leave both files as they were: the operator restores the
// copy, which holds the state before the last change.
func TestRunRefusesCorruptStateFile(t *testing.T) {
	testenv.RequireBPF(t)
	// If run got past the state file it would attach to this namespace's
	// loopback, not the host's, and the test would end it.
	ns := testenv.NewNetns(t, "tether-corrupt-state")
	older := control.State{Seed: 7, VIPs: []control.VIP{stateVIP(t, "198.18.1.1:80", "b1", "10.0.0.1")}}
	newer := control.State{Seed: 7, VIPs: append(older.VIPs, stateVIP(t, "198.18.1.2:80", "b2", "10.0.0.2"))}
	newer.VIPs[1].ID, newer.VIPs[1].Backends[0].ID = 1, 2

	for _, tc := range []struct {
		name    string
		corrupt func(good []byte) []byte
		problem string
	}{
		{"truncated", func(good []byte) []byte { return good[:len(good)/2] }, "unexpected EOF"},
		{"empty", func([]byte) []byte { return nil }, "the file is empty"},
		{"value no daemon saves", func(good []byte) []byte {
			return bytes.Replace(good, []byte(`"prefix4": 32`), []byte(`"prefix4": 99`), 1)
		}, "prefix4 99"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			statePath := filepath.Join(dir, "state.json")
			for _, s := range []control.State{older, newer} {
				if err := control.SaveState(statePath, s); err != nil {
					t.Fatal(err)
				}
			}
			good, err := os.ReadFile(statePath)
			if err != nil {
				t.Fatal(err)
			}
			corrupt := tc.corrupt(good)
			if err := os.WriteFile(statePath, corrupt, 0o600); err != nil {
				t.Fatal(err)
			}
			previous, err := os.ReadFile(statePath + ".prev")
			if err != nil {
				t.Fatal(err)
			}

			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			bpffs, socket := filepath.Join(dir, "bpffs"), filepath.Join(dir, "tether.sock")
			out, err := exec.CommandContext(ctx, "ip", "netns", "exec", ns.Name, tetherBinary, "--socket", socket,
				"run", "--iface", "lo", "--state-dir", dir, "--bpffs", bpffs).CombinedOutput()
			message := strings.TrimSpace(string(out))
			switch {
			case ctx.Err() != nil:
				t.Fatalf("run did not stop on a corrupt state file:\n%s", out)
			case err == nil:
				t.Fatalf("run succeeded with a corrupt state file:\n%s", out)
			case strings.Contains(message, "\n"):
				t.Errorf("run printed more than one line:\n%s", out)
			case !strings.HasPrefix(message, "tether: state file "+statePath+" is corrupt") ||
				!strings.Contains(message, statePath+".prev") || !strings.Contains(message, tc.problem):
				t.Errorf("run said %q; want the file, its .prev copy and %q", message, tc.problem)
			}
			for _, path := range []string{bpffs, socket} {
				if _, err := os.Stat(path); err == nil {
					t.Errorf("run created %s before refusing the state file", path)
				}
			}
			if after, err := os.ReadFile(statePath); err != nil || !bytes.Equal(after, corrupt) {
				t.Errorf("run changed the corrupt state file (%v)", err)
			}
			if after, err := os.ReadFile(statePath + ".prev"); err != nil || !bytes.Equal(after, previous) {
				t.Errorf("run changed the previous good copy (%v)", err)
			}
			restored, found, err := control.LoadState(statePath + ".prev")
			if err != nil || !found || !reflect.DeepEqual(restored, older) {
				t.Errorf("the previous good copy holds %+v (%v), want the state before the last change %+v", restored, err, older)
			}
			t.Logf("run refused: %s", message)
		})
	}
}

// stateVIP is a VIP as the daemon saves it: defaults filled, ids given.
func stateVIP(t *testing.T, addr, backend, backendAddr string) control.VIP {
	t.Helper()
	v := control.NewVIP(control.VIPRef{Addr: netip.MustParseAddrPort(addr), Proto: "tcp"})
	v.ID, v.TableSize, v.AffinityTimeout = 0, 251, control.DefaultAffinityTimeout
	v.NoBackend, v.AllDown, v.Source = control.NoBackendDrop, control.AllDownFailOpen, control.SourceCLI
	v.Check = health.Check{Kind: health.KindNone}.WithDefaults()
	v.Backends = []control.Backend{{Name: backend, Addr: netip.MustParseAddr(backendAddr), Weight: 1, Source: control.SourceCLI, ID: 1}}
	return v
}
