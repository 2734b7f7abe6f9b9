// Package topology builds the test network: a client, a load balancer and
// backends, each in its own network namespace, joined by a bridge in a
// switch namespace. Backends carry the VIPs on loopback with the ARP
// settings direct server return needs. Everything is named with a per-test
// prefix and torn down when the test ends, even on failure.
//
//	client (198.18.0.10+, 2001:db8::10+) ─┐
//	lb     (198.18.0.2,   2001:db8::2)   ─┼─ br0 in <prefix>-sw
//	bN     (198.18.0.2+N, 2001:db8::2+N) ─┘   VIPs on lo
package topology

import (
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/tether-lb/tether/test/testenv"
)

// The test network's addresses: inside 198.18.0.0/15 and 2001:db8::/32.
var (
	VIP4 = netip.MustParseAddr("198.18.1.1")
	VIP6 = netip.MustParseAddr("2001:db8:1::1")
)

// Node is one host of the test network.
type Node struct {
	*testenv.Netns
	Addr4, Addr6 netip.Addr
	MAC          net.HardwareAddr // of eth0
}

// Network is the whole test network.
type Network struct {
	Switch   *testenv.Netns
	Client   *Node
	LB       *Node
	Backends []*Node
	// ClientAddrs are the client's source addresses, one per simulated
	// client host: ClientCount of each family.
	ClientAddrs4, ClientAddrs6 []netip.Addr
}

// Options shape the network.
type Options struct {
	Prefix      string // per-test prefix of namespace and link names, <= 6 chars
	Backends    int
	ClientCount int // source addresses per family on the client
}

// New builds the network.
func New(t testing.TB, opts Options) *Network {
	t.Helper()
	n := &Network{Switch: testenv.NewNetns(t, "tether-"+opts.Prefix+"-sw")}
	n.Switch.MustExec(t, "ip link add br0 type bridge", "ip link set br0 up", "ip link set lo up")
	// With br_netfilter loaded the bridge would validate and drop malformed
	// IP headers, which tests send on purpose to the LB.
	for _, family := range []string{"iptables", "ip6tables", "arptables"} {
		_ = n.Switch.Exec("sysctl", "-qw", "net.bridge.bridge-nf-call-"+family+"=0")
	}
	n.Client = n.node(t, opts.Prefix, "cl", 10)
	n.LB = n.node(t, opts.Prefix, "lb", 2)
	for i := range opts.Backends {
		n.Backends = append(n.Backends, n.node(t, opts.Prefix, fmt.Sprintf("b%d", i+1), 3+i))
	}

	// Client: extra source addresses, routes to the VIPs through the LB, and
	// no TX checksum offload: frames bounced by XDP_TX would otherwise reach
	// the backends with unfinished checksums.
	for i := range opts.ClientCount {
		a4 := netip.AddrFrom4([4]byte{198, 18, 0, byte(10 + i)})
		a6 := netip.MustParseAddr(fmt.Sprintf("2001:db8::%d", 10+i))
		n.ClientAddrs4 = append(n.ClientAddrs4, a4)
		n.ClientAddrs6 = append(n.ClientAddrs6, a6)
		if i == 0 {
			continue
		}
		n.Client.MustExec(t, "ip addr add "+a4.String()+"/24 dev eth0", "ip -6 addr add "+a6.String()+"/64 dev eth0 nodad")
	}
	n.Client.MustExec(t,
		"ip route add "+VIP4.String()+"/32 via "+n.LB.Addr4.String(),
		"ip -6 route add "+VIP6.String()+"/128 via "+n.LB.Addr6.String(),
		"ethtool -K eth0 tx off")
	for _, b := range n.Backends {
		b.MustExec(t,
			"ip addr add "+VIP4.String()+"/32 dev lo",
			"ip -6 addr add "+VIP6.String()+"/128 dev lo",
			"sysctl -qw net.ipv4.conf.all.arp_ignore=1",
			"sysctl -qw net.ipv4.conf.all.arp_announce=2")
	}
	// Frames the LB sends with XDP_TX are only delivered by the peer veth if
	// it runs an XDP program too.
	n.attachPass(t, opts.Prefix+"-lb")
	return n
}

func (n *Network) node(t testing.TB, prefix, name string, host int) *Node {
	t.Helper()
	node := &Node{
		Netns: testenv.NewNetns(t, "tether-"+prefix+"-"+name),
		Addr4: netip.AddrFrom4([4]byte{198, 18, 0, byte(host)}),
		Addr6: netip.MustParseAddr(fmt.Sprintf("2001:db8::%d", host)),
	}
	node.MustExec(t, "ip link set lo up")
	n.connect(t, node, prefix+"-"+name)
	if err := node.Do(func() error {
		iface, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		node.MAC = iface.HardwareAddr
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return node
}

// connect links the node's eth0 to the switch through port.
func (n *Network) connect(t testing.TB, node *Node, port string) {
	t.Helper()
	tmp := port + "x"
	if err := testenv.Run("ip", "link", "add", port, "netns", n.Switch.Name, "type", "veth",
		"peer", "name", tmp, "netns", node.Name); err != nil {
		t.Fatal(err)
	}
	n.Switch.MustExec(t, "ip link set "+port+" master br0", "ip link set "+port+" up")
	node.MustExec(t,
		"ip link set "+tmp+" name eth0",
		"ip addr add "+node.Addr4.String()+"/24 dev eth0",
		"ip -6 addr add "+node.Addr6.String()+"/64 dev eth0 nodad",
		"ip link set eth0 up")
}

// RecreateLBLink deletes the load balancer's eth0, as an operator or a
// driver reload would, and creates it again with a new index.
func (n *Network) RecreateLBLink(t testing.TB, prefix string) {
	t.Helper()
	n.LB.MustExec(t, "ip link del eth0")
	n.connect(t, n.LB, prefix+"-lb")
	if err := n.LB.Do(func() error {
		iface, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		n.LB.MAC = iface.HardwareAddr
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	n.attachPass(t, prefix+"-lb")
}

// Ifindex returns the index of the node's eth0 inside its namespace.
func (node *Node) Ifindex(t testing.TB) int {
	t.Helper()
	var index int
	if err := node.Do(func() error {
		iface, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		index = iface.Index
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return index
}

func (n *Network) attachPass(t testing.TB, port string) {
	t.Helper()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.XDP,
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2 /* XDP_PASS */), asm.Return()},
		License:      "MIT",
	})
	if err != nil {
		t.Fatalf("loading XDP_PASS program: %v", err)
	}
	t.Cleanup(func() { prog.Close() })
	if err := n.Switch.Do(func() error {
		iface, err := net.InterfaceByName(port)
		if err != nil {
			return err
		}
		l, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: iface.Index})
		if err != nil {
			return fmt.Errorf("attaching XDP_PASS to %s: %w", port, err)
		}
		t.Cleanup(func() { l.Close() })
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// SendFrames writes raw frames out of the node's eth0, as they are.
func (n *Node) SendFrames(frames [][]byte) error {
	return n.Do(func() error {
		iface, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
		if err != nil {
			return fmt.Errorf("opening packet socket: %w", err)
		}
		defer unix.Close(fd)
		to := &unix.SockaddrLinklayer{Ifindex: iface.Index, Halen: 6}
		for _, f := range frames {
			copy(to.Addr[:], f[:6])
			if err := unix.Sendto(fd, f, 0, to); err != nil {
				return fmt.Errorf("sending frame: %w", err)
			}
		}
		return nil
	})
}
