package e2e

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"
)

// settle is how long clients keep polling after a change before the test
// looks: many long-polling requests, each on a new TCP connection.
const settle = 4 * time.Second

// steadyThenAdd is the steady scenario followed by adding a fourth node
// while the clients run.
func steadyThenAdd(t *testing.T, opts clusterOptions, label string) {
	opts.backends, opts.inTether = 4, 3
	c := newCluster(t, opts)
	addrs := c.clientAddrs()
	steady := c.startClients(addrs[:steadyAddrs], clientCount)
	steady.waitConnected(60 * time.Second)
	time.Sleep(settle)

	c.addBackend(3)
	time.Sleep(settle)
	fresh := c.startClients(addrs[steadyAddrs:], 64)
	fresh.waitConnected(60 * time.Second)
	time.Sleep(settle)
	final := steady.stop()
	freshFinal := fresh.stop()
	unknown := c.sessionUnknown()

	// steady: one node per client, every node of the three used, no error.
	if n := requireUndisturbed(t, label+" steady+add", final, all); n != clientCount {
		t.Fatalf("%d clients reported, want %d", n, clientCount)
	}
	used := firstNodes(final)
	for i := range 3 {
		if used[nodeName(i)] == 0 {
			t.Fatalf("%s got no client: %v", nodeName(i), used)
		}
	}
	if used[nodeName(3)] != 0 {
		t.Fatalf("a steady client reached %s, which was added later: %v", nodeName(3), used)
	}
	if unknown != 0 {
		t.Fatalf("%d requests got HTTP 400 Session ID unknown", unknown)
	}
	summary(t, label+" steady+add", final, unknown)

	// add: fresh client addresses reach the new node, without error.
	requireUndisturbed(t, label+" fresh clients", freshFinal, all)
	if freshFinal.PerNode[nodeName(3)] == 0 {
		t.Fatalf("no fresh client reached the added %s: %v", nodeName(3), freshFinal.PerNode)
	}
	summary(t, label+" fresh after add", freshFinal, unknown)
}

func TestSteadyAndAdd(t *testing.T) {
	steadyThenAdd(t, clusterOptions{prefix: "e2add"}, "ipv4 polling")
}

func TestSteadyAndAddIPv6(t *testing.T) {
	// The test's client addresses share one /64, so the key is the whole
	// address here; real IPv6 clients each have their own /64.
	steadyThenAdd(t, clusterOptions{prefix: "e2ad6", ipv6: true, vipFlags: []string{"--prefix6", "128"}}, "ipv6 polling")
}

func TestSteadyAndAddWebSocket(t *testing.T) {
	steadyThenAdd(t, clusterOptions{prefix: "e2adw", transports: "polling,websocket"}, "ipv4 polling+websocket")
}

// loseNode kills node3's process; tell decides whether tether is told.
func loseNode(t *testing.T, prefix string, tell bool) {
	c := newCluster(t, clusterOptions{prefix: prefix, backends: 3, inTether: 3})
	run := c.startClients(c.clientAddrs()[:steadyAddrs], clientCount)
	run.waitConnected(60 * time.Second)
	time.Sleep(settle)

	killed := time.Now()
	c.stopNode(nodeName(2))
	if tell {
		c.tether.Must("backend", "remove", "--vip", c.vip(), nodeName(2))
	} else {
		// fall (2) x interval (1s) + timeout (500ms), with slack for a
		// loaded machine.
		waitForHealth(t, c, nodeName(2), "down", 6*time.Second)
		t.Logf("node3 marked down %s after its process died", time.Since(killed).Round(100*time.Millisecond))
	}
	run.waitConnected(60 * time.Second)
	time.Sleep(settle)
	final := run.stop()

	orphans := 0
	for _, d := range final.Detail {
		if len(d.Nodes) > 0 && d.Nodes[0] == nodeName(2) {
			orphans++
			if last := d.Nodes[len(d.Nodes)-1]; last == nodeName(2) {
				t.Fatalf("client from %s stayed on the dead node: %v", d.Addr, d.Nodes)
			}
		}
	}
	if orphans == 0 {
		t.Fatal("node3 had no clients: the scenario proves nothing")
	}
	others := requireUndisturbed(t, prefix, final, func(d clientDetail) bool { return len(d.Nodes) > 0 && d.Nodes[0] != nodeName(2) })
	scenario := "lose a node (health checks notice)"
	if tell {
		scenario = "remove a node"
	}
	summary(t, scenario, final, c.sessionUnknown())
	t.Logf("%d clients of node3 reconnected elsewhere; %d others undisturbed", orphans, others)
}

func TestRemoveBackend(t *testing.T) { loseNode(t, "e2rm", true) }

func TestLoseBackend(t *testing.T) { loseNode(t, "e2lose", false) }

func waitForHealth(t *testing.T, c *cluster, name, health string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		st, err := c.tether.Status()
		if b, ok := backendIn(st, name); err == nil && ok && b.Health == health {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not %s within %s: %+v", name, health, timeout, st)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestDrain(t *testing.T) {
	c := newCluster(t, clusterOptions{prefix: "e2drn", backends: 3, inTether: 3, vipFlags: []string{"--affinity-timeout", "5s"}})
	addrs := c.clientAddrs()
	old := c.startClients(addrs[:steadyAddrs], clientCount)
	old.waitConnected(60 * time.Second)
	time.Sleep(settle)

	c.tether.Must("backend", "drain", "--vip", c.vip(), nodeName(2))
	fresh := c.startClients(addrs[steadyAddrs:], 64)
	fresh.waitConnected(60 * time.Second)
	time.Sleep(settle)
	oldFinal := old.stop()
	stopped := time.Now()
	out, err := c.tether.Output("backend", "drain", "--vip", c.vip(), nodeName(2), "--wait", "--timeout", "30s")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("drain --wait returned %s after the old clients stopped: %s", time.Since(stopped).Round(100*time.Millisecond), strings.TrimSpace(out))
	freshFinal := fresh.stop()
	unknown := c.sessionUnknown()

	requireUndisturbed(t, "drain: old clients", oldFinal, all)
	if firstNodes(oldFinal)[nodeName(2)] == 0 {
		t.Fatal("node3 had no clients before the drain: the scenario proves nothing")
	}
	requireUndisturbed(t, "drain: fresh clients", freshFinal, all)
	if n := freshFinal.PerNode[nodeName(2)]; n != 0 {
		t.Fatalf("%d new clients reached the draining node3", n)
	}
	if unknown != 0 {
		t.Fatalf("%d requests got HTTP 400 Session ID unknown", unknown)
	}
	summary(t, "drain (old clients)", oldFinal, unknown)
	summary(t, "drain (new clients)", freshFinal, unknown)
}

func TestDaemonRestartAndUpgrade(t *testing.T) {
	c := newCluster(t, clusterOptions{prefix: "e2rst", backends: 3, inTether: 3})
	run := c.startClients(c.clientAddrs()[:steadyAddrs], clientCount)
	run.waitConnected(60 * time.Second)
	time.Sleep(settle)
	before, err := c.tether.Status()
	if err != nil {
		t.Fatal(err)
	}

	c.tether.Kill()
	time.Sleep(2 * time.Second)
	c.tether.Start()
	time.Sleep(settle)
	c.tether.Signal(syscall.SIGTERM)
	c.tether.Start()
	after, err := c.tether.Status()
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(settle)
	final := run.stop()
	unknown := c.sessionUnknown()

	requireUndisturbed(t, "daemon restart and upgrade", final, all)
	if unknown != 0 {
		t.Fatalf("%d requests got HTTP 400 Session ID unknown", unknown)
	}
	if before.ProgramID == after.ProgramID {
		t.Fatalf("program id %d unchanged: the upgrade did not replace the program", after.ProgramID)
	}
	summary(t, fmt.Sprintf("daemon SIGKILL+restart, upgrade (program %d -> %d)", before.ProgramID, after.ProgramID), final, unknown)
}
