package e2e

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// TestEngineIOProbesLeaveNoSession lets the daemon's Engine.IO health check
// probe a real Socket.IO node more than 100 times: each probe opens a
// session and closes it, so the node holds none afterwards.
func TestEngineIOProbesLeaveNoSession(t *testing.T) {
	c := newCluster(t, clusterOptions{prefix: "e2prb", backends: 1, inTether: 0})
	c.tether.Must("vip", "add", "198.18.1.1:3001", "--check", "engineio", "--check-port", "3000",
		"--check-interval", "100ms", "--check-timeout", "80ms")
	c.tether.Must("backend", "add", "--vip", "198.18.1.1:3001", nodeName(0), c.backendAddr(0).String())
	deadline := time.Now().Add(40 * time.Second)
	var stats nodeStats
	for {
		var err error
		if stats, err = c.nodeStats(0); err != nil {
			t.Fatal(err)
		}
		if stats.Handshakes >= 100 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d Engine.IO probes reached the node in 40s", stats.Handshakes)
		}
		time.Sleep(200 * time.Millisecond)
	}
	c.tether.Must("vip", "remove", "198.18.1.1:3001")
	time.Sleep(300 * time.Millisecond) // the last probe in flight finishes
	final, err := c.nodeStats(0)
	if err != nil {
		t.Fatal(err)
	}
	if final.EngineSessions != 0 {
		t.Fatalf("after %d probes the node holds %d Engine.IO sessions, want 0", final.Handshakes, final.EngineSessions)
	}
	t.Logf("%d Engine.IO probes, %d sessions left on the node", final.Handshakes, final.EngineSessions)
}

// TestFlappingMovesNoOtherClient kills and restarts node3 three times while
// clients run; the health checks take it out and back in each time. Clients
// of the other nodes see nothing. A killed node's port refuses connections,
// hard evidence: at a 1 s interval it is down within 1.5 s (median).
func TestFlappingMovesNoOtherClient(t *testing.T) {
	c := newCluster(t, clusterOptions{prefix: "e2flp", backends: 3, inTether: 3})
	run := c.startClients(c.clientAddrs()[:steadyAddrs], clientCount)
	run.waitConnected(60 * time.Second)
	time.Sleep(2 * time.Second)
	var detections []time.Duration
	for round := range 3 {
		// A kill falls anywhere between two probes, not just after one.
		time.Sleep(rand.N(time.Second))
		killed := time.Now()
		c.stopNode(nodeName(2))
		waitForHealth(t, c, nodeName(2), "down", 6*time.Second)
		detections = append(detections, time.Since(killed))
		c.startNode(2)
		waitForHealth(t, c, nodeName(2), "up", 6*time.Second)
		t.Logf("flap %d: node3 went down and came back", round+1)
		time.Sleep(time.Second)
	}
	slices.Sort(detections)
	t.Logf("killed node down after %v", detections)
	if median := detections[1]; median > 1500*time.Millisecond {
		t.Errorf("a killed node was marked down after %s (median of %v), want at most 1.5s at a 1s interval", median, detections)
	}
	run.waitConnected(60 * time.Second)
	time.Sleep(settle)
	final := run.stop()
	others := requireUndisturbed(t, "flapping", final, func(d clientDetail) bool { return len(d.Nodes) > 0 && d.Nodes[0] != nodeName(2) })
	summary(t, "flapping node3 x3", final, c.sessionUnknown())
	t.Logf("%d clients of other nodes undisturbed through 3 flaps", others)
}
