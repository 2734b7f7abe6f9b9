package netns

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/tether-lb/tether/loader"
	"github.com/tether-lb/tether/maps"
	"github.com/tether-lb/tether/test/testenv"
	"github.com/tether-lb/tether/test/tetherd"
	"github.com/tether-lb/tether/test/topology"
)

// tetherBinary is built once for the package's tests.
var tetherBinary string

func TestMain(m *testing.M) { tetherd.Main(m, &tetherBinary) }

// traffic opens connections from every client address round-robin until
// stopped, recording failures and which backend each address reached.
type traffic struct {
	failures atomic.Int64
	total    atomic.Int64
	mu       sync.Mutex
	seen     map[netip.Addr]map[string]int
	lastErr  error
	stop     context.CancelFunc
	done     chan struct{}
}

func startTraffic(n *topology.Network, vip netip.Addr, clients []netip.Addr) *traffic {
	ctx, cancel := context.WithCancel(context.Background())
	tr := &traffic{seen: map[netip.Addr]map[string]int{}, stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(tr.done)
		for i := 0; ctx.Err() == nil; i++ {
			src := clients[i%len(clients)]
			name, err := ask(n.Client, src, vip)
			tr.total.Add(1)
			tr.mu.Lock()
			if err != nil {
				tr.failures.Add(1)
				tr.lastErr = err
			} else {
				if tr.seen[src] == nil {
					tr.seen[src] = map[string]int{}
				}
				tr.seen[src][name]++
			}
			tr.mu.Unlock()
			time.Sleep(5 * time.Millisecond)
		}
	}()
	return tr
}

func (tr *traffic) finish() {
	tr.stop()
	<-tr.done
}

// backendOf returns the single backend an address reached, or "" if it
// reached several.
func (tr *traffic) backendOf(src netip.Addr) string {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if len(tr.seen[src]) != 1 {
		return ""
	}
	for name := range tr.seen[src] {
		return name
	}
	return ""
}

// serveVIP adds the IPv4 VIP on port 8080 with every backend, b1, b2, …
func serveVIP(d *tetherd.Daemon, n *topology.Network) string {
	vip := topology.VIP4.String() + ":8080"
	d.Must("vip", "add", vip)
	for i, b := range n.Backends {
		d.Must("backend", "add", "--vip", vip, fmt.Sprintf("b%d", i+1), b.Addr4.String())
	}
	return vip
}

func newDaemonNetwork(t *testing.T, prefix string, backends int) (*topology.Network, *tetherd.Daemon) {
	testenv.RequireBPF(t)
	n := topology.New(t, topology.Options{Prefix: prefix, Backends: backends, ClientCount: 12})
	for i, b := range n.Backends {
		serveName(t, b, fmt.Sprintf("b%d", i+1))
	}
	return n, tetherd.New(t, tetherBinary, n.LB)
}

func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestDaemonManagesVIPsAndBackends adds and removes VIPs and backends
// through the CLI while traffic flows; removing a backend moves only its
// own clients.
func TestDaemonManagesVIPsAndBackends(t *testing.T) {
	n, d := newDaemonNetwork(t, "dmgr", 3)
	d.Start()
	vip := serveVIP(d, n)
	tr := startTraffic(n, topology.VIP4, n.ClientAddrs4)
	waitFor(t, "every client address to connect 3 times", 20*time.Second, func() bool { return tr.total.Load() >= int64(3*len(n.ClientAddrs4)) })
	before := map[netip.Addr]string{}
	for _, src := range n.ClientAddrs4 {
		before[src] = tr.backendOf(src)
		if before[src] == "" {
			t.Fatalf("%s reached several backends before any change: %v", src, tr.seen[src])
		}
	}
	tr.finish()
	if f := tr.failures.Load(); f != 0 {
		t.Fatalf("%d of %d connections failed: %v", f, tr.total.Load(), tr.lastErr)
	}

	d.Must("backend", "remove", "--vip", vip, "b2")
	moved, kept := 0, 0
	for _, src := range n.ClientAddrs4 {
		name, err := ask(n.Client, src, topology.VIP4)
		if err != nil {
			t.Fatalf("after removing b2, %s: %v", src, err)
		}
		switch {
		case before[src] == "b2" && name != "b2":
			moved++
		case before[src] != "b2" && name == before[src]:
			kept++
		default:
			t.Fatalf("after removing b2, %s went from %s to %s", src, before[src], name)
		}
	}
	t.Logf("removing b2 moved its %d clients and kept the other %d", moved, kept)

	st, err := d.Status()
	if err != nil {
		t.Fatal(err)
	}
	if len(st.VIPs) != 1 || len(st.VIPs[0].Backends) != 2 || st.Mode != "native" {
		t.Fatalf("status after removal: %+v", st)
	}
	d.Must("vip", "remove", vip)
	if st, err := d.Status(); err != nil || len(st.VIPs) != 0 {
		t.Fatalf("status after removing the VIP: %+v, %v", st, err)
	}
}

// TestDaemonRestartAndUpgradeKeepForwarding kills the daemon, starts it
// again and upgrades the program while a client keeps opening connections:
// none may fail and no client may change backend.
func TestDaemonRestartAndUpgradeKeepForwarding(t *testing.T) {
	n, d := newDaemonNetwork(t, "drst", 2)
	d.Start()
	serveVIP(d, n)
	first, err := d.Status()
	if err != nil {
		t.Fatal(err)
	}
	tr := startTraffic(n, topology.VIP4, n.ClientAddrs4)
	defer tr.finish()
	waitFor(t, "traffic", 10*time.Second, func() bool { return tr.total.Load() >= 50 })

	d.Kill()
	afterKill := tr.total.Load()
	waitFor(t, "traffic with the daemon dead", 10*time.Second, func() bool { return tr.total.Load() >= afterKill+50 })
	d.Start() // adopts the pins; replaces the program with link.Update
	second, err := d.Status()
	if err != nil {
		t.Fatal(err)
	}
	afterStart := tr.total.Load()
	waitFor(t, "traffic after the restart", 10*time.Second, func() bool { return tr.total.Load() >= afterStart+50 })
	d.Signal(syscall.SIGTERM)
	d.Start()
	third, err := d.Status()
	if err != nil {
		t.Fatal(err)
	}
	afterUpgrade := tr.total.Load()
	waitFor(t, "traffic after the upgrade", 10*time.Second, func() bool { return tr.total.Load() >= afterUpgrade+50 })
	tr.finish()

	if first.ProgramID == second.ProgramID || second.ProgramID == third.ProgramID {
		t.Fatalf("program ids %d, %d, %d: each start must replace the program", first.ProgramID, second.ProgramID, third.ProgramID)
	}
	if f := tr.failures.Load(); f != 0 {
		t.Fatalf("%d of %d connections failed across kill, restart and upgrade: %v", f, tr.total.Load(), tr.lastErr)
	}
	for _, src := range n.ClientAddrs4 {
		if tr.backendOf(src) == "" {
			t.Fatalf("%s changed backend: %v", src, tr.seen[src])
		}
	}
	t.Logf("%d connections, 0 failed, no client moved; program ids %d -> %d -> %d",
		tr.total.Load(), first.ProgramID, second.ProgramID, third.ProgramID)
}

// TestDetachLeavesNothing checks tether detach removes the program and pins.
func TestDetachLeavesNothing(t *testing.T) {
	n, d := newDaemonNetwork(t, "ddet", 1)
	d.Start()
	if err := d.CLI("detach", "--iface", "eth0", "--bpffs", d.BPFFS); err == nil {
		t.Fatal("detach succeeded while the daemon was running")
	}
	d.Signal(syscall.SIGTERM)
	d.Must("detach", "--iface", "eth0", "--bpffs", d.BPFFS)
	var out bytes.Buffer
	cmd := exec.Command("ip", "-n", n.LB.Name, "link", "show", "eth0")
	cmd.Stdout = &out
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out.String(), "xdp") {
		t.Fatalf("eth0 still has an XDP program after detach:\n%s", out.String())
	}
	if _, err := os.Stat(filepath.Join(d.BPFFS, "tether")); !os.IsNotExist(err) {
		entries, _ := os.ReadDir(filepath.Join(d.BPFFS, "tether"))
		t.Fatalf("pins left after detach: %v", entries)
	}
}

// TestInterfaceRecreated deletes the LB's interface under a running daemon
// and creates it again: the daemon attaches to the new interface and
// forwarding resumes, with the same client on the same backend.
func TestInterfaceRecreated(t *testing.T) {
	n, d := newDaemonNetwork(t, "dirc", 2)
	d.Start()
	serveVIP(d, n)
	before := map[netip.Addr]string{}
	for _, src := range n.ClientAddrs4 {
		name, err := ask(n.Client, src, topology.VIP4)
		if err != nil {
			t.Fatal(err)
		}
		before[src] = name
	}
	first, err := d.Status()
	if err != nil {
		t.Fatal(err)
	}

	n.RecreateLBLink(t, "dirc")
	waitFor(t, "the daemon to attach to the new interface", 10*time.Second, func() bool {
		var out bytes.Buffer
		cmd := exec.Command("ip", "-n", n.LB.Name, "link", "show", "eth0")
		cmd.Stdout = &out
		return cmd.Run() == nil && strings.Contains(out.String(), "xdp")
	})
	for _, src := range n.ClientAddrs4 {
		var name string
		waitFor(t, "forwarding through the new interface", 10*time.Second, func() bool {
			name, err = ask(n.Client, src, topology.VIP4)
			return err == nil
		})
		if name != before[src] {
			t.Fatalf("%s moved from %s to %s when the interface was re-created", src, before[src], name)
		}
	}
	if second, err := d.Status(); err != nil || second.ProgramID != first.ProgramID {
		t.Fatalf("status after re-creation: %+v, %v", second, err)
	}
	t.Logf("interface re-created; %d clients kept their backends", len(before))
}

// TestKillDuringTableSwaps SIGKILLs the daemon while it swaps tables as
// fast as a client can change weights: whenever it dies, the live table is
// whole (every slot a backend of the VIP), and a new daemon goes on.
func TestKillDuringTableSwaps(t *testing.T) {
	n, d := newDaemonNetwork(t, "dkil", 2)
	vip := topology.VIP4.String() + ":8080"
	for round := range 5 {
		d.Start()
		if round == 0 {
			d.Must("vip", "add", vip, "--table-size", "65537")
			d.Must("backend", "add", "--vip", vip, "b1", n.Backends[0].Addr4.String())
			d.Must("backend", "add", "--vip", vip, "b2", n.Backends[1].Addr4.String())
		}
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				_ = d.CLI("backend", "set", "--vip", vip, "b1", "--weight", fmt.Sprint(1+i%7))
			}
		}()
		time.Sleep(time.Duration(100+round*70) * time.Millisecond)
		d.Kill()
		close(stop)
		<-done
		requireWholeTable(t, d, vip)
		for i, src := range n.ClientAddrs4[:4] {
			if _, err := ask(n.Client, src, topology.VIP4); err != nil {
				t.Fatalf("round %d: connection %d after SIGKILL mid-swap: %v", round, i, err)
			}
		}
	}
	d.Start()
	st, err := d.Status()
	if err != nil || len(st.VIPs) != 1 || len(st.VIPs[0].Backends) != 2 {
		t.Fatalf("status after 5 kills: %+v, %v", st, err)
	}
	for i, src := range n.ClientAddrs4 {
		if _, err := ask(n.Client, src, topology.VIP4); err != nil {
			t.Fatalf("connection %d after the last restart: %v", i, err)
		}
	}
}

// requireWholeTable reads the VIP's live Maglev table from the pins and
// fails unless every slot holds one of the VIP's two backends.
func requireWholeTable(t *testing.T, d *tetherd.Daemon, vip string) {
	t.Helper()
	dir := loader.PinDir(d.BPFFS, "eth0")
	var pinned loader.TetherMaps
	for name, m := range map[string]**ebpf.Map{
		loader.TetherMapVips: &pinned.Vips, loader.TetherMapVipEpoch: &pinned.VipEpoch, loader.TetherMapMaglev: &pinned.Maglev,
		loader.TetherMapAffinity: &pinned.Affinity, loader.TetherMapAffinitySalt: &pinned.AffinitySalt,
	} {
		var err error
		if *m, err = ebpf.LoadPinnedMap(filepath.Join(dir, name), nil); err != nil {
			t.Fatal(err)
		}
		defer (*m).Close()
	}
	m, err := maps.NewKernel(&pinned, maps.LimitsOf(loader.DefaultOptions()))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ap := netip.MustParseAddrPort(vip)
	info, err := m.VIP(maps.VIPKey{Addr: ap.Addr(), Port: ap.Port(), Proto: maps.TCP})
	if err != nil {
		t.Fatal(err)
	}
	table, err := m.Table(info.ID, info.TableSlot, info.TableSize)
	if err != nil {
		t.Fatal(err)
	}
	counts := map[maps.BackendID]int{}
	for _, id := range table {
		counts[id]++
	}
	if len(counts) != 2 || counts[0] != 0 {
		t.Fatalf("live table after SIGKILL holds %v, want exactly the two backends", counts)
	}
}
