package e2e

import (
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/tether-lb/tether/test/packets"
	"github.com/tether-lb/tether/test/tetherd"
)

const floodMetricsAddr = "127.0.0.1:9182"

// floodCapacity is the small affinity table the flood test runs with.
const floodCapacity = 1024

// forgedFrames are count TCP segments with flags to the VIP, each from
// another forged source in 198.19.0.0/16 starting at block*16384.
func (c *cluster) forgedFrames(block, count int, flags uint8) [][]byte {
	frames := make([][]byte, 0, count)
	for i := range count {
		n := block*16384 + i
		src := netip.AddrFrom4([4]byte{198, 19, byte(n >> 8), byte(n)})
		frames = append(frames, packets.Build(packets.Spec{
			DstMAC: [6]byte(c.net.LB.MAC), SrcMAC: [6]byte(c.net.Client.MAC), Src: src, Dst: c.vipAddr(),
			Proto: packets.ProtoTCP, SrcPort: uint16(1024 + rand.N(60000)), DstPort: nodePort, TCPFlags: flags,
		}))
	}
	return frames
}

// TestFloodKeepsSessions runs 200 long-polling clients against a table
// sized for 1024 clients, adds a node (so Maglev's choice changes for
// about a quarter of them), then floods the VIP with SYNs, and then bare
// ACKs, each from ten times the table's capacity in forged sources: no
// session breaks, and the flood shows in the metrics.
func TestFloodKeepsSessions(t *testing.T) {
	c := newClusterWith(t, clusterOptions{prefix: "e2fld", backends: 4, inTether: 3},
		"--affinity-capacity", "1024", "--metrics-addr", floodMetricsAddr)
	run := c.steadyClients()
	c.addBackend(3)
	time.Sleep(settle)

	for block, flood := range []struct {
		name  string
		flags uint8
	}{{"SYNs", packets.TCPSyn}, {"bare ACKs", packets.TCPAck}} {
		before := c.affinityMetrics()
		if err := c.net.Client.SendFrames(c.forgedFrames(block, 10*floodCapacity, flood.flags)); err != nil {
			t.Fatalf("flooding %s: %v", flood.name, err)
		}
		time.Sleep(settle)
		after := c.affinityMetrics()
		t.Logf("flood of %d %s: misses %+.0f, admitted %+.0f, evicted on probation %+.0f, no room %+.0f, promoted %+.0f; %.0f entries, %.0f on probation",
			10*floodCapacity, flood.name, after["miss"]-before["miss"], after["insert"]-before["insert"],
			after["evicted_probation"]-before["evicted_probation"], after["full"]-before["full"],
			after["promoted"]-before["promoted"], after["entries"], after["probationary"])
		if after["miss"]-before["miss"] < 10*floodCapacity {
			t.Fatalf("the flood of %s is not in the metrics: %+.0f misses", flood.name, after["miss"]-before["miss"])
		}
		if flood.flags == packets.TCPSyn && after["probationary"] == 0 {
			t.Fatalf("after a flood of SYNs no entry is on probation")
		}
		if flood.flags == packets.TCPAck && after["insert"]-before["insert"] > 2*clientCount {
			t.Fatalf("bare ACKs from forged sources admitted %.0f entries", after["insert"]-before["insert"])
		}
	}
	c.requireNothingBroken(run, "flood of forged SYNs and ACKs after an add")
}

// affinityMetrics reads the affinity events, entries and entries on
// probation from /metrics.
func (c *cluster) affinityMetrics() map[string]float64 {
	families, err := tetherd.Scrape(c.net.LB, floodMetricsAddr)
	if err != nil {
		c.t.Fatalf("scraping /metrics: %v", err)
	}
	out := map[string]float64{
		"entries":      tetherd.Value(families, "tether_affinity_entries", map[string]string{}),
		"probationary": tetherd.Value(families, "tether_affinity_probationary_entries", map[string]string{}),
	}
	for _, event := range []string{"miss", "insert", "evicted_probation", "full", "promoted"} {
		out[event] = tetherd.Value(families, "tether_affinity_events_total", map[string]string{"event": event})
	}
	return out
}
