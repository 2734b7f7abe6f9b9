// Package netns tests the attached XDP program with real TCP connections
// between network namespaces.
package netns

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/tether-lb/tether/loader"
	"github.com/tether-lb/tether/maps"
	"github.com/tether-lb/tether/test/testenv"
	"github.com/tether-lb/tether/test/topology"
	"github.com/tether-lb/tether/userspace/maglev"
)

const servicePort = 8080

// serveName listens on the node's [::]:8080 and answers every connection
// with the node's name.
func serveName(t *testing.T, node *topology.Node, name string) {
	t.Helper()
	var ln net.Listener
	if err := node.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", fmt.Sprintf("[::]:%d", servicePort))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintln(conn, name)
			conn.Close()
		}
	}()
}

// ask opens a new connection from src to the VIP and returns the name the
// backend answered with.
func ask(client *topology.Node, src, vip netip.Addr) (string, error) {
	var name string
	err := client.Do(func() error {
		d := net.Dialer{Timeout: 3 * time.Second, LocalAddr: &net.TCPAddr{IP: src.AsSlice()}}
		conn, err := d.Dial("tcp", netip.AddrPortFrom(vip, servicePort).String())
		if err != nil {
			return err
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(3 * time.Second))
		name, err = bufio.NewReader(conn).ReadString('\n')
		return err
	})
	return strings.TrimSpace(name), err
}

// tcpSegments reads the TCP segment counters of a namespace's stack.
func tcpSegments(t *testing.T, node *topology.Node) (in, out int) {
	t.Helper()
	if err := node.Do(func() error {
		data, err := os.ReadFile("/proc/thread-self/net/snmp")
		if err != nil {
			return err
		}
		lines := strings.Split(string(data), "\n")
		for i := 0; i+1 < len(lines); i++ {
			if !strings.HasPrefix(lines[i], "Tcp:") || !strings.HasPrefix(lines[i+1], "Tcp:") {
				continue
			}
			names, values := strings.Fields(lines[i]), strings.Fields(lines[i+1])
			for j := range names {
				switch names[j] {
				case "InSegs":
					fmt.Sscan(values[j], &in)
				case "OutSegs":
					fmt.Sscan(values[j], &out)
				}
			}
			return nil
		}
		return fmt.Errorf("no Tcp lines in /proc/thread-self/net/snmp")
	}); err != nil {
		t.Fatal(err)
	}
	return in, out
}

// TestStickyForwarding attaches the program in native mode to the LB's eth0
// and opens real TCP connections through it to two backends, which answer
// the clients directly.
func TestStickyForwarding(t *testing.T) {
	testenv.RequireBPF(t)
	net := topology.New(t, topology.Options{Prefix: "nsfw", Backends: 2, ClientCount: 16})
	names := []string{"b1", "b2"}
	for i, b := range net.Backends {
		serveName(t, b, names[i])
	}

	opts := loader.Options{MaxVIPs: 4, TableStride: 257, MaxBackends: 16, AffinityCapacity: 4096, MaxTxPorts: 4}
	dp, err := loader.Load(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	var mode loader.Mode
	if err := net.LB.Do(func() error {
		l, m, err := loader.Attach(dp.Program, net.LB.Ifindex(t), loader.ModeNative)
		if err != nil {
			return err
		}
		mode = m
		t.Cleanup(func() { l.Close() })
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if mode != loader.ModeNative {
		t.Fatalf("attached in %s mode, want native", mode)
	}

	m, err := maps.NewKernel(&dp.Maps, maps.LimitsOf(opts))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	var set []maglev.Backend
	for i, b := range net.Backends {
		id := maps.BackendID(i + 1)
		if err := m.PutBackend(id, maps.Backend{MAC: b.MAC, SourceMAC: net.LB.MAC, Generation: 1, State: maps.BackendUp, Addr: b.Addr4}); err != nil {
			t.Fatal(err)
		}
		set = append(set, maglev.Backend{Name: names[i], ID: uint32(id), Weight: 1})
	}
	table, err := maglev.Build(set, 251, 7)
	if err != nil {
		t.Fatal(err)
	}
	ids := make([]maps.BackendID, len(table))
	for i, id := range table {
		ids[i] = maps.BackendID(id)
	}
	for i, vip := range []netip.Addr{topology.VIP4, topology.VIP6} {
		key := maps.VIPKey{Addr: vip, Port: servicePort, Proto: maps.TCP}
		if _, err := maps.InstallTable(m, key, maps.VIP{ID: uint32(i), AffinityTimeout: 120 * time.Second, Prefix4: 32, Prefix6: 128}, ids); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.PutSettings(maps.Settings{Seed: 7, Active: true}); err != nil {
		t.Fatal(err)
	}

	for _, family := range []struct {
		name    string
		vip     netip.Addr
		clients []netip.Addr
	}{
		{"ipv4", topology.VIP4, net.ClientAddrs4},
		{"ipv6", topology.VIP6, net.ClientAddrs6},
	} {
		t.Run(family.name, func(t *testing.T) {
			reached := map[string]int{}
			for i, src := range family.clients {
				connections := 5
				if i == 0 {
					connections = 50
				}
				first := ""
				for c := range connections {
					name, err := ask(net.Client, src, family.vip)
					if err != nil {
						t.Fatalf("connection %d from %s to %s: %v", c, src, family.vip, err)
					}
					if first == "" {
						first = name
					} else if name != first {
						t.Fatalf("connection %d from %s reached %s, earlier ones %s", c, src, name, first)
					}
				}
				reached[first]++
			}
			if len(reached) != 2 {
				t.Fatalf("%d client addresses reached only %v, want both backends", len(family.clients), reached)
			}
			t.Logf("%d addresses, each always on one backend: %v", len(family.clients), reached)
		})
	}

	// Direct server return: the LB's own stack never saw a TCP segment; the
	// replies went from the backends straight to the client.
	if in, out := tcpSegments(t, net.LB); in != 0 || out != 0 {
		t.Fatalf("LB stack handled TCP (in %d, out %d segments): replies did not bypass it", in, out)
	}
	c, err := m.Counters(maps.GlobalSlot)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("datapath forwarded %d packets with XDP_TX", c.Packets[loader.TetherOutcomeOUTCOME_FORWARD_TX])
}
