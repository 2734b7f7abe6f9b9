package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"runtime"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/tether-lb/tether/userspace/control"
)

// freeze stops node processes as a long GC pause or a CPU-starved VM
// would: their kernels still complete TCP handshakes, nothing answers.
func (c *cluster) freeze(names ...string) {
	for _, name := range names {
		if err := c.nodes[name].Process.Signal(syscall.SIGSTOP); err != nil {
			c.t.Fatalf("freezing %s: %v", name, err)
		}
	}
}

// thaw lets frozen node processes run again.
func (c *cluster) thaw(names ...string) {
	for _, name := range names {
		if cmd := c.nodes[name]; cmd != nil {
			if err := cmd.Process.Signal(syscall.SIGCONT); err != nil {
				c.t.Fatalf("thawing %s: %v", name, err)
			}
		}
	}
}

// requireSessionsKept fails for any client that lost its session: it
// changed node, disconnected or failed to connect, or never got an answer.
// Late answers (ack timeouts) are allowed for the clients late selects.
func requireSessionsKept(t *testing.T, what string, final totals, late func(clientDetail) bool) {
	t.Helper()
	for _, d := range final.Detail {
		lateOK := late(d) || d.AckTimeouts == 0
		if len(d.Nodes) != 1 || d.Disconnects != 0 || d.ConnectErrors != 0 || d.Acks == 0 || !lateOK {
			t.Fatalf("%s: client from %s lost its session: nodes %v, %d acks, %d errors %v", what, d.Addr, d.Nodes, d.Acks, d.errors(), d.Reasons)
		}
	}
}

// steadyClients starts the usual 200 clients on the first addresses and
// lets them settle.
func (c *cluster) steadyClients() *clients {
	run := c.startClients(c.clientAddrs()[:steadyAddrs], clientCount)
	run.waitConnected(60 * time.Second)
	time.Sleep(settle)
	return run
}

// requireNothingBroken stops the clients and fails unless every session
// was kept (late answers allowed) and no request got Session ID unknown.
func (c *cluster) requireNothingBroken(run *clients, scenario string) {
	c.t.Helper()
	final := run.stop()
	unknown := c.sessionUnknown()
	requireSessionsKept(c.t, scenario, final, all)
	if unknown != 0 {
		c.t.Fatalf("%s: %d requests got HTTP 400 Session ID unknown", scenario, unknown)
	}
	summary(c.t, scenario, final, unknown)
}

func on(node string) func(clientDetail) bool {
	return func(d clientDetail) bool { return len(d.Nodes) > 0 && d.Nodes[0] == node }
}

func none(clientDetail) bool { return false }

// backendState is a backend's datapath state and health as status shows.
func (c *cluster) backendState(name string) (state, health string) {
	st, err := c.tether.Status()
	if err != nil {
		c.t.Fatalf("reading status: %v", err)
	}
	b, ok := backendIn(st, name)
	if !ok {
		c.t.Fatalf("no backend %s in status", name)
	}
	return b.State, b.Health
}

// backendIn finds the backend name in a status.
func backendIn(st control.Status, name string) (control.BackendStatus, bool) {
	for _, v := range st.VIPs {
		for _, b := range v.Backends {
			if b.Name == name {
				return b, true
			}
		}
	}
	return control.BackendStatus{}, false
}

// routedNode asks the VIP for GET /stats from source address addr and
// returns the node that answers, or "" when none answers within a
// second (the address is routed to a frozen node).
func (c *cluster) routedNode(addr netip.Addr) string {
	var node string
	err := c.net.Client.Do(func() error {
		dialer := net.Dialer{Timeout: time.Second, LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(addr, 0))}
		conn, err := dialer.Dial("tcp", c.vip())
		if err != nil {
			return err
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(time.Second))
		if _, err := fmt.Fprint(conn, "GET /stats HTTP/1.0\r\n\r\n"); err != nil {
			return err
		}
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			return nil // no answer in time: a frozen node
		}
		defer resp.Body.Close()
		var stats nodeStats
		if err := json.NewDecoder(resp.Body).Decode(&stats); err != nil {
			return err
		}
		node = stats.Node
		return nil
	})
	if err != nil {
		c.t.Fatalf("asking the VIP from %s which node serves it: %v", addr, err)
	}
	return node
}

// TestFrozenNodeKeepsSessions freezes one node for 8 s with a 1 s check
// interval: it turns unhealthy, gets no new client while frozen, keeps
// every session it holds, and takes new clients again once it recovers.
func TestFrozenNodeKeepsSessions(t *testing.T) {
	c := newCluster(t, clusterOptions{prefix: "e2frz", backends: 3, inTether: 3})
	addrs := c.clientAddrs()
	steady := c.steadyClients()

	frozen := nodeName(1)
	c.freeze(frozen)
	frozenAt := time.Now()
	t.Cleanup(func() { c.thaw(frozen) })
	waitForHealth(t, c, frozen, "unhealthy", 6*time.Second)
	if state, _ := c.backendState(frozen); state != "draining" {
		t.Fatalf("a frozen node is %s, want draining: no new clients, pinned ones kept", state)
	}
	during := addrs[steadyAddrs : steadyAddrs+freshAddrs/2]
	for _, a := range during {
		if node := c.routedNode(a); node == "" || node == frozen {
			t.Fatalf("a new client from %s was sent to the frozen %s", a, frozen)
		}
	}
	time.Sleep(time.Until(frozenAt.Add(8 * time.Second)))
	c.thaw(frozen)
	waitForHealth(t, c, frozen, "up", 6*time.Second)

	after := c.startClients(addrs[steadyAddrs+freshAddrs/2:], 32)
	after.waitConnected(60 * time.Second)
	time.Sleep(settle)
	final, afterFinal := steady.stop(), after.stop()
	unknown := c.sessionUnknown()
	requireSessionsKept(t, "one node frozen 8 s", final, on(frozen))
	requireSessionsKept(t, "clients after the thaw", afterFinal, none)
	if unknown != 0 {
		t.Fatalf("%d requests got HTTP 400 Session ID unknown", unknown)
	}
	if firstNodes(final)[frozen] == 0 {
		t.Fatalf("%s had no client: the scenario proves nothing", frozen)
	}
	if afterFinal.PerNode[frozen] == 0 {
		t.Fatalf("no new client reached %s after it recovered: %v", frozen, afterFinal.PerNode)
	}
	summary(t, "one node frozen 8 s", final, unknown)
}

// TestAllNodesFrozen freezes every node for 3 s: nothing is moved.
func TestAllNodesFrozen(t *testing.T) {
	c := newCluster(t, clusterOptions{prefix: "e2fza", backends: 3, inTether: 3})
	run := c.steadyClients()
	names := []string{nodeName(0), nodeName(1), nodeName(2)}
	c.freeze(names...)
	t.Cleanup(func() { c.thaw(names...) })
	time.Sleep(3 * time.Second)
	c.thaw(names...)
	time.Sleep(2 * settle)
	c.requireNothingBroken(run, "all nodes frozen 3 s")
}

// TestStarvedLoadBalancer runs a busy loop on every core in the LB's
// namespace for 10 s while the clients run (the nodes share the cores
// here, so they starve too): nothing is moved.
func TestStarvedLoadBalancer(t *testing.T) {
	c := newCluster(t, clusterOptions{prefix: "e2cpu", backends: 3, inTether: 3})
	run := c.steadyClients()
	var loops []*exec.Cmd
	for range runtime.NumCPU() {
		loop := exec.Command("nsenter", "--net=/run/netns/"+c.net.LB.Name, "timeout", "10", "sh", "-c", "while :; do :; done")
		if err := loop.Start(); err != nil {
			t.Fatalf("starting a busy loop: %v", err)
		}
		loops = append(loops, loop)
		// SIGTERM, which timeout passes on to its shell.
		t.Cleanup(func() { _ = loop.Process.Signal(syscall.SIGTERM); _ = loop.Wait() })
	}
	for _, loop := range loops {
		_ = loop.Wait()
	}
	time.Sleep(2 * settle)
	c.requireNothingBroken(run, "LB starved of CPU 10 s")
}

// TestThousandClientsAtOnce starts 1000 clients at the same moment: the
// nodes slow down under the handshakes, and no session breaks.
func TestThousandClientsAtOnce(t *testing.T) {
	c := newCluster(t, clusterOptions{prefix: "e2thd", backends: 3, inTether: 3})
	run := c.startClients(c.clientAddrs(), 1000)
	run.waitConnected(90 * time.Second)
	time.Sleep(2 * settle)
	c.requireNothingBroken(run, "1000 clients at once")
}

// TestFrozenPastTheGrace freezes a node longer than a 5 s session grace:
// its clients stay pinned to it until the grace ends, then move; the
// other nodes' clients see nothing.
func TestFrozenPastTheGrace(t *testing.T) {
	const grace = 5 * time.Second
	c := newCluster(t, clusterOptions{prefix: "e2grc", backends: 3, inTether: 3, vipFlags: []string{"--session-grace", grace.String()}})
	addrs := c.clientAddrs()[:steadyAddrs]
	run := c.steadyClients()
	frozen := nodeName(2)
	i := slices.IndexFunc(addrs, func(a netip.Addr) bool { return c.routedNode(a) == frozen })
	if i < 0 {
		t.Fatalf("no client address is routed to %s", frozen)
	}
	pinned := addrs[i]

	c.freeze(frozen)
	t.Cleanup(func() { c.thaw(frozen) })
	waitForHealth(t, c, frozen, "unhealthy", 6*time.Second)
	unhealthy := time.Now()
	if node := c.routedNode(pinned); node != "" {
		t.Fatalf("within the grace, %s was sent to %s instead of its frozen node", pinned, node)
	}
	var moved time.Duration
	for deadline := unhealthy.Add(grace + 5*time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if state, _ := c.backendState(frozen); state == "down" {
			moved = time.Since(unhealthy)
			break
		}
	}
	if moved == 0 {
		t.Fatalf("%s still keeps its clients %s after the grace", frozen, grace+5*time.Second)
	}
	if moved < grace-time.Second {
		t.Fatalf("%s lost its clients %s after turning unhealthy, before the %s grace", frozen, moved, grace)
	}
	if node := c.routedNode(pinned); node == "" || node == frozen {
		t.Fatalf("after the grace, %s is still sent to the frozen node", pinned)
	}
	c.thaw(frozen)
	time.Sleep(settle)
	final := run.stop()
	requireUndisturbed(t, "clients of the other nodes", final, func(d clientDetail) bool { return !on(frozen)(d) && d.Addr != pinned.String() })
	t.Logf("%s unhealthy, its clients moved %s later (grace %s)", frozen, moved.Round(100*time.Millisecond), grace)
	summary(t, "node frozen past the session grace", final, c.sessionUnknown())
}
