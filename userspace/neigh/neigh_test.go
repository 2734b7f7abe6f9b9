package neigh_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/tether-lb/tether/test/testenv"
	"github.com/tether-lb/tether/userspace/neigh"
)

// The test network: namespace A holds the load balancer's side, ngh0, and
// namespace B the backend's side, ngh1, of one veth pair.
var (
	backend4 = netip.MustParseAddr("198.18.4.2")
	backend6 = netip.MustParseAddr("2001:db8:4::2")
)

// veth is the test network, with what the assertions compare against.
type veth struct {
	lb, backend *testenv.Netns
	lbIfindex   int
	lbMAC       net.HardwareAddr // of ngh0, in the load balancer's namespace
	backendMAC  net.HardwareAddr // of ngh1, in the backend's namespace
}

// requireRoot skips the test when it cannot create network namespaces,
// unless TETHER_REQUIRE_BPF=1 says this machine must run every test.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("TETHER_REQUIRE_BPF") == "1" {
		t.Fatal("TETHER_REQUIRE_BPF=1 but these tests need root to create network namespaces")
	}
	t.Skip("skipping: needs root to create network namespaces (set TETHER_REQUIRE_BPF=1 to make this an error)")
}

// newVeth builds the test network in two namespaces named after suffix and
// deletes them when the test ends.
func newVeth(t *testing.T, suffix string) *veth {
	t.Helper()
	requireRoot(t)
	v := &veth{
		lb:      testenv.NewNetns(t, "tether-ngh-"+suffix+"-a"),
		backend: testenv.NewNetns(t, "tether-ngh-"+suffix+"-b"),
	}
	v.lb.MustExec(t,
		"ip link set lo up",
		"ip link add ngh0 type veth peer name ngh1 netns "+v.backend.Name,
		"ip addr add 198.18.4.1/24 dev ngh0",
		"ip -6 addr add 2001:db8:4::1/64 dev ngh0 nodad",
	)
	v.backend.MustExec(t,
		"ip link set lo up",
		"ip addr add 198.18.4.2/24 dev ngh1",
		"ip -6 addr add 2001:db8:4::2/64 dev ngh1 nodad",
		"ip link set ngh1 up",
	)
	v.lb.MustExec(t, "ip link set ngh0 up")
	lbLink := linkIn(t, v.lb, "ngh0")
	v.lbIfindex = lbLink.Index
	v.lbMAC = lbLink.HardwareAddr
	v.backendMAC = linkIn(t, v.backend, "ngh1").HardwareAddr
	return v
}

// linkIn reads the attributes of the interface name in namespace ns.
func linkIn(t *testing.T, ns *testenv.Netns, name string) netlink.LinkAttrs {
	t.Helper()
	var attrs netlink.LinkAttrs
	err := ns.Do(func() error {
		link, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		attrs = *link.Attrs()
		return nil
	})
	if err != nil {
		t.Fatalf("reading interface %s: %v", name, err)
	}
	return attrs
}

// resolveIn runs Resolve with timeout in namespace ns.
func resolveIn(ns *testenv.Netns, addr netip.Addr, timeout time.Duration) (neigh.Target, error) {
	var target neigh.Target
	err := ns.Do(func() error {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		var err error
		target, err = neigh.Resolve(ctx, addr)
		return err
	})
	return target, err
}

// hasNeighbourEntry reports whether the load balancer's namespace has any
// neighbour entry for addr on ngh0.
func hasNeighbourEntry(t *testing.T, v *veth, addr netip.Addr) bool {
	t.Helper()
	found := false
	err := v.lb.Do(func() error {
		entries, err := netlink.NeighList(v.lbIfindex, netlink.FAMILY_ALL)
		if err != nil {
			return err
		}
		for _, entry := range entries {
			if entryAddr, ok := netip.AddrFromSlice(entry.IP); ok && entryAddr.Unmap() == addr {
				found = true
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("listing neighbours of ngh0: %v", err)
	}
	return found
}

func TestResolveTriggersResolution(t *testing.T) {
	v := newVeth(t, "res")
	for _, addr := range []netip.Addr{backend4, backend6} {
		t.Run(addr.String(), func(t *testing.T) {
			if hasNeighbourEntry(t, v, addr) {
				t.Fatalf("neighbour entry for %s exists before Resolve: the test would not trigger resolution", addr)
			}
			target, err := resolveIn(v.lb, addr, 5*time.Second)
			if err != nil {
				t.Fatalf("Resolve(%s): %v", addr, err)
			}
			want := neigh.Target{Ifindex: v.lbIfindex, IfName: "ngh0", SourceMAC: v.lbMAC, MAC: v.backendMAC}
			assertTarget(t, target, want)
		})
	}
}

func TestResolveTimesOutWithoutHost(t *testing.T) {
	v := newVeth(t, "nohost")
	absent := netip.MustParseAddr("198.18.4.99")
	start := time.Now()
	_, err := resolveIn(v.lb, absent, time.Second)
	elapsed := time.Since(start)
	if err == nil {
		t.Fatalf("Resolve(%s) succeeded, want an error: no host has that address", absent)
	}
	t.Logf("error: %v", err)
	for _, part := range []string{"no neighbour entry for 198.18.4.99 on ngh0 after ", "is the backend up"} {
		if !strings.Contains(err.Error(), part) {
			t.Errorf("error %q does not contain %q", err, part)
		}
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("error %q does not wrap context.DeadlineExceeded", err)
	}
	if elapsed > 1500*time.Millisecond {
		t.Errorf("Resolve returned after %s, want about the 1s timeout", elapsed)
	}
}

func TestResolveRefusesGateway(t *testing.T) {
	v := newVeth(t, "gw")
	v.lb.MustExec(t,
		"ip route add 198.18.9.0/24 via 198.18.4.2",
		"ip -6 route add 2001:db8:9::/64 via 2001:db8:4::2",
	)
	cases := []struct{ addr, gateway string }{
		{"198.18.9.5", "198.18.4.2"},
		{"2001:db8:9::5", "2001:db8:4::2"},
	}
	for _, c := range cases {
		t.Run(c.addr, func(t *testing.T) {
			addr := netip.MustParseAddr(c.addr)
			_, resolveErr := resolveIn(v.lb, addr, time.Second)
			var withMACErr error
			if err := v.lb.Do(func() error {
				_, withMACErr = neigh.ResolveWithMAC(addr, net.HardwareAddr{2, 0, 0, 0, 9, 5})
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			for name, err := range map[string]error{"Resolve": resolveErr, "ResolveWithMAC": withMACErr} {
				if err == nil {
					t.Errorf("%s(%s) succeeded, want an error: the route goes through a gateway", name, addr)
					continue
				}
				for _, part := range []string{"gateway " + c.gateway, c.addr, "directly connected"} {
					if !strings.Contains(err.Error(), part) {
						t.Errorf("%s error %q does not contain %q", name, err, part)
					}
				}
			}
		})
	}
}

func TestResolveWithoutRoute(t *testing.T) {
	v := newVeth(t, "noroute")
	for _, addr := range []netip.Addr{netip.MustParseAddr("2001:db8:ffff::1"), netip.MustParseAddr("198.19.255.1")} {
		t.Run(addr.String(), func(t *testing.T) {
			_, err := resolveIn(v.lb, addr, time.Second)
			if err == nil {
				t.Fatalf("Resolve(%s) succeeded, want an error: there is no route", addr)
			}
			t.Logf("error: %v", err)
			if want := "looking up the route to backend " + addr.String(); !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not contain %q", err, want)
			}
		})
	}
}

func TestResolveRefusesLocalAddress(t *testing.T) {
	v := newVeth(t, "local")
	_, err := resolveIn(v.lb, netip.MustParseAddr("198.18.4.1"), time.Second)
	if err == nil || !strings.Contains(err.Error(), "198.18.4.1 is an address of this host") {
		t.Fatalf("Resolve(own address) error = %v, want one saying 198.18.4.1 is an address of this host", err)
	}
}

func TestResolveWithMAC(t *testing.T) {
	v := newVeth(t, "mac")
	given := net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x04, 0x02}
	for _, addr := range []netip.Addr{backend4, backend6} {
		t.Run(addr.String(), func(t *testing.T) {
			var target neigh.Target
			err := v.lb.Do(func() error {
				var err error
				target, err = neigh.ResolveWithMAC(addr, given)
				return err
			})
			if err != nil {
				t.Fatalf("ResolveWithMAC(%s): %v", addr, err)
			}
			assertTarget(t, target, neigh.Target{Ifindex: v.lbIfindex, IfName: "ngh0", SourceMAC: v.lbMAC, MAC: given})
			if hasNeighbourEntry(t, v, addr) {
				t.Errorf("ResolveWithMAC(%s) created a neighbour entry; it must only look up the route", addr)
			}
		})
	}
	for _, bad := range []net.HardwareAddr{{0, 0, 0, 0, 0, 0}, {2, 0, 0, 0, 0, 1, 0, 0}, nil} {
		err := v.lb.Do(func() error {
			_, err := neigh.ResolveWithMAC(backend4, bad)
			return err
		})
		if err == nil || !strings.Contains(err.Error(), "is not a non-zero Ethernet address") {
			t.Errorf("ResolveWithMAC(%s, %q) error = %v, want one refusing the MAC", backend4, bad, err)
		}
	}
}

func TestWatchReportsNewMAC(t *testing.T) {
	v := newVeth(t, "watch")
	ctx, cancel := context.WithCancel(context.Background())
	changes := make(chan neigh.Change, 64)
	watchStopped := make(chan struct{})
	var watchErr error
	go func() {
		defer close(watchStopped)
		watchErr = v.lb.Do(func() error {
			return neigh.Watch(ctx, func(change neigh.Change) {
				select {
				case changes <- change:
				case <-ctx.Done():
				}
			})
		})
	}()
	t.Cleanup(func() {
		cancel()
		<-watchStopped
	})
	waitUntilWatching(t, v, changes)

	if _, err := resolveIn(v.lb, backend4, 5*time.Second); err != nil {
		t.Fatalf("resolving %s before the MAC change: %v", backend4, err)
	}
	newMAC := net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x04, 0x02}
	v.backend.MustExec(t, "ip link set ngh1 address "+newMAC.String())
	v.lb.MustExec(t, "ip neigh del 198.18.4.2 dev ngh0")
	target, err := resolveIn(v.lb, backend4, 5*time.Second)
	if err != nil {
		t.Fatalf("resolving %s after the MAC change: %v", backend4, err)
	}
	if target.MAC.String() != newMAC.String() {
		t.Fatalf("Resolve after the MAC change: MAC = %s, want %s", target.MAC, newMAC)
	}

	deadline := time.After(2 * time.Second)
	for reported := false; !reported; {
		select {
		case change := <-changes:
			reported = change.Addr == backend4 && !change.Deleted && change.MAC.String() == newMAC.String()
			if reported && change.Ifindex != v.lbIfindex {
				t.Errorf("change for %s: Ifindex = %d, want ngh0's %d", backend4, change.Ifindex, v.lbIfindex)
			}
		case <-deadline:
			t.Fatalf("no change with MAC %s for %s within 2s", newMAC, backend4)
		}
	}

	cancel()
	select {
	case <-watchStopped:
		if watchErr != nil {
			t.Fatalf("Watch returned %v after cancel, want nil", watchErr)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Watch did not return within 2s of cancel")
	}
}

// waitUntilWatching adds and deletes a neighbour entry for a probe address
// until Watch reports it, so that the test's real changes happen only once
// the subscription is live.
func waitUntilWatching(t *testing.T, v *veth, changes <-chan neigh.Change) {
	t.Helper()
	probe := netip.MustParseAddr("198.18.4.50")
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		v.lb.MustExec(t,
			"ip neigh replace "+probe.String()+" lladdr 02:00:00:00:04:50 dev ngh0 nud permanent",
			"ip neigh del "+probe.String()+" dev ngh0",
		)
		timeout := time.After(100 * time.Millisecond)
		for waiting := true; waiting; {
			select {
			case change := <-changes:
				if change.Addr == probe {
					return
				}
			case <-timeout:
				waiting = false
			}
		}
	}
	t.Fatal("Watch reported no change for the probe entry within 5s")
}

func assertTarget(t *testing.T, got, want neigh.Target) {
	t.Helper()
	if got.Ifindex != want.Ifindex || got.IfName != want.IfName ||
		got.SourceMAC.String() != want.SourceMAC.String() || got.MAC.String() != want.MAC.String() {
		t.Errorf("target = {%d %s source %s mac %s}, want {%d %s source %s mac %s}",
			got.Ifindex, got.IfName, got.SourceMAC, got.MAC, want.Ifindex, want.IfName, want.SourceMAC, want.MAC)
	}
}
