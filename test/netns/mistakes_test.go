package netns

import (
	"context"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tether-lb/tether/test/tetherd"
	"github.com/tether-lb/tether/test/topology"
)

// backendsOf asks the VIP from every client address which backend answers.
func backendsOf(t *testing.T, n *topology.Network) map[netip.Addr]string {
	t.Helper()
	out := map[netip.Addr]string{}
	for _, src := range n.ClientAddrs4 {
		name, err := ask(n.Client, src, topology.VIP4)
		if err != nil {
			t.Fatalf("asking the VIP from %s: %v", src, err)
		}
		out[src] = name
	}
	return out
}

// requireSameBackends fails unless every client address still reaches the
// backend it reached before.
func requireSameBackends(t *testing.T, n *topology.Network, before map[netip.Addr]string, after string) {
	t.Helper()
	for src, name := range backendsOf(t, n) {
		if before[src] != name {
			t.Fatalf("after %s, %s reaches %s instead of %s", after, src, name, before[src])
		}
	}
}

// runRefused runs `tether run` in the LB's namespace with args and fails
// unless it exits non-zero within 20 s saying want.
func runRefused(t *testing.T, d *tetherd.Daemon, want string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	full := append([]string{"--net=/run/netns/" + d.LB().Name, tetherBinary}, args...)
	out, err := exec.CommandContext(ctx, "nsenter", full...).CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("tether %s was not refused: it ran for 20 s:\n%s", strings.Join(args, " "), out)
	}
	if err == nil || !strings.Contains(string(out), want) {
		t.Fatalf("tether %s: %v, output %q; want a refusal saying %q", strings.Join(args, " "), err, out, want)
	}
}

// TestSecondDaemonRefused starts a second daemon beside a running one in
// every combination of socket, state directory and pins: each is refused
// before it writes anything, and every client keeps its backend.
func TestSecondDaemonRefused(t *testing.T) {
	n, d := newDaemonNetwork(t, "d2nd", 2)
	d.Start()
	serveVIP(d, n)
	before := backendsOf(t, n)
	other := t.TempDir()
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"same socket, other state", []string{"--socket", d.Socket, "run", "--iface", "eth0", "--bpffs", d.BPFFS, "--state-dir", filepath.Join(other, "s1")},
			"pins are in use"},
		{"other socket, other state, same pins", []string{"--socket", filepath.Join(other, "2.sock"), "run", "--iface", "eth0", "--bpffs", d.BPFFS, "--state-dir", filepath.Join(other, "s2")},
			"pins are in use"},
		{"other socket, same state", []string{"--socket", filepath.Join(other, "3.sock"), "run", "--iface", "eth0", "--bpffs", d.BPFFS, "--state-dir", d.StateDir},
			"another tether daemon is using the state directory"},
	} {
		runRefused(t, d, c.want, c.args...)
		requireSameBackends(t, n, before, "a second daemon ("+c.name+")")
		if st, err := d.Status(); err != nil || len(st.VIPs) != 1 || st.Problem != "" {
			t.Fatalf("after a second daemon (%s) the first reports %+v (%v)", c.name, st, err)
		}
	}
}

// TestDetachRefusedWhileDaemonRuns detaches through another socket than
// the daemon's: refused, and forwarding goes on.
func TestDetachRefusedWhileDaemonRuns(t *testing.T) {
	n, d := newDaemonNetwork(t, "ddt2", 2)
	d.Start()
	serveVIP(d, n)
	before := backendsOf(t, n)
	out, err := exec.Command(tetherBinary, "--socket", filepath.Join(t.TempDir(), "none.sock"),
		"detach", "--iface", "eth0", "--bpffs", d.BPFFS).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "holds") {
		t.Fatalf("detach beside a running daemon: %v, %q; want a refusal", err, out)
	}
	requireSameBackends(t, n, before, "a refused detach")
}

// TestRemovedPinsAreReported removes a pin behind the daemon's back: the
// daemon says so in its status.
func TestRemovedPinsAreReported(t *testing.T) {
	n, d := newDaemonNetwork(t, "dpin", 1)
	d.Start()
	serveVIP(d, n)
	if err := os.Remove(filepath.Join(d.BPFFS, "tether", "eth0", "backends")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the daemon to report the missing pin", 5*time.Second, func() bool {
		st, err := d.Status()
		return err == nil && strings.Contains(st.Problem, "backends")
	})
	if out, err := d.Output("status"); err != nil || !strings.Contains(out, "PROBLEM") {
		t.Fatalf("tether status does not show the problem: %v\n%s", err, out)
	}
}

// TestUnknownPinsAreKept: a daemon started without the state file that
// goes with the pins refuses to start, unless told to discard them.
func TestUnknownPinsAreKept(t *testing.T) {
	n, d := newDaemonNetwork(t, "dunk", 2)
	d.Start()
	serveVIP(d, n)
	before := backendsOf(t, n)
	d.Signal(syscall.SIGTERM)
	if err := os.Remove(filepath.Join(d.StateDir, "state.json")); err != nil {
		t.Fatal(err)
	}
	runRefused(t, d, "--discard-pinned", "--socket", d.Socket, "run", "--iface", "eth0", "--bpffs", d.BPFFS, "--state-dir", d.StateDir)
	requireSameBackends(t, n, before, "a refused start without a state file")
	d.Start("--discard-pinned")
	if st, err := d.Status(); err != nil || len(st.VIPs) != 0 {
		t.Fatalf("with --discard-pinned the daemon serves %+v (%v), want nothing", st, err)
	}
}
