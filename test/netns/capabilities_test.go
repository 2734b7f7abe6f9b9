package netns

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/tether-lb/tether/test/topology"
)

// TestDaemonRunsWithMinimalCapabilities runs the daemon with only CAP_BPF,
// CAP_NET_ADMIN and CAP_PERFMON (bpffs is mounted already) and forwards
// through it; with CAP_BPF missing it refuses to start and says so.
func TestDaemonRunsWithMinimalCapabilities(t *testing.T) {
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Fatal("setpriv (util-linux) is needed to drop capabilities")
	}
	n, d := newDaemonNetwork(t, "dcap", 1)

	without := exec.Command("nsenter", "--net=/run/netns/"+n.LB.Name, "setpriv", "--bounding-set", "-all,+net_admin,+perfmon",
		"--inh-caps", "-all", "--", tetherBinary, "--socket", d.Socket, "run", "--iface", "eth0", "--bpffs", d.BPFFS, "--state-dir", d.StateDir)
	out, err := without.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "CAP_BPF") || strings.Contains(string(out), "lacks CAP_BPF and") {
		t.Fatalf("without CAP_BPF: %v, output %q; want a refusal naming only CAP_BPF", err, out)
	}

	d.Wrapper = []string{"setpriv", "--bounding-set", "-all,+bpf,+net_admin,+perfmon", "--inh-caps", "-all", "--"}
	d.Start()
	vip := topology.VIP4.String() + ":8080"
	d.Must("vip", "add", vip)
	d.Must("backend", "add", "--vip", vip, "b1", n.Backends[0].Addr4.String())
	for i := range 5 {
		name, err := ask(n.Client, n.ClientAddrs4[i], topology.VIP4)
		if err != nil || name != "b1" {
			t.Fatalf("connection %d through a daemon with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON only: %q, %v\n%s", i, name, err, d.Log())
		}
	}
	status, err := d.Status()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("daemon with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON only: attached in %s mode, program %d", status.Mode, status.ProgramID)
}
