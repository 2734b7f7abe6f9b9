package netns

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/tether-lb/tether/test/packets"
	"github.com/tether-lb/tether/test/tetherd"
	"github.com/tether-lb/tether/test/topology"
	"github.com/tether-lb/tether/userspace/control"
)

const metricsAddr = "127.0.0.1:9181"

// scrape reads /metrics of the daemon at metricsAddr.
func scrape(t *testing.T, lb *topology.Node) map[string]*dto.MetricFamily {
	t.Helper()
	families, err := tetherd.Scrape(lb, metricsAddr)
	if err != nil {
		t.Fatalf("scraping /metrics: %v", err)
	}
	return families
}

// TestMetricsCountEveryPacket sends known numbers of packets of each kind
// through the attached program and checks /metrics reports exactly them.
func TestMetricsCountEveryPacket(t *testing.T) {
	n, d := newDaemonNetwork(t, "dmet", 1)
	d.Start("--metrics-addr", metricsAddr)
	// Port 8081: nothing listens there on b1, which answers the SYNs with
	// RSTs straight to the client; the client sends nothing back.
	vip := topology.VIP4.String() + ":8081"
	empty := "198.18.1.2:8081"
	d.Must("vip", "add", vip)
	d.Must("vip", "add", empty)
	d.Must("backend", "add", "--vip", vip, "b1", n.Backends[0].Addr4.String())
	base := packets.Spec{DstMAC: [6]byte(n.LB.MAC), SrcMAC: [6]byte(n.Client.MAC), Src: n.Client.Addr4,
		Dst: topology.VIP4, Proto: packets.ProtoTCP, SrcPort: 40000, DstPort: 8081}
	kinds := []struct {
		outcome string
		count   int
		edit    func(*packets.Spec)
		damage  func([]byte) []byte
	}{
		{"forwarded_tx", 37, nil, nil},
		{"passed_not_vip", 11, func(s *packets.Spec) { s.DstPort = 9999 }, nil},
		{"dropped_no_backend", 7, func(s *packets.Spec) { s.Dst = netip.MustParseAddr("198.18.1.2") }, nil},
		{"passed_fragment", 5, func(s *packets.Spec) { s.Dst = netip.MustParseAddr("198.18.1.3"); s.FragmentOffset = 100 }, nil},
		{"dropped_malformed_ipv4", 3, nil, func(f []byte) []byte { f[14] = 0x44; return f }},
		{"dropped_malformed_l4", 2, nil, func(f []byte) []byte { f[14+20+12] = 0x40; return f }},
		{"dropped_malformed_ipv6", 4, nil, func(f []byte) []byte {
			f[12], f[13] = 0x86, 0xdd // an IPv4 header announced as IPv6
			return f
		}},
	}
	var frames [][]byte
	bytes := map[string]int{}
	for _, k := range kinds {
		for i := range k.count {
			s := base
			s.SrcPort = uint16(41000 + i)
			if k.edit != nil {
				k.edit(&s)
			}
			f := packets.Build(s)
			if k.damage != nil {
				f = k.damage(f)
			}
			frames = append(frames, f)
			bytes[k.outcome] += len(f)
		}
	}
	if err := n.Client.SendFrames(frames); err != nil {
		t.Fatal(err)
	}

	var families map[string]*dto.MetricFamily
	deadline := time.Now().Add(10 * time.Second)
	for {
		families = scrape(t, n.LB)
		if tetherd.Value(families, "tether_packets_total", map[string]string{"outcome": "forwarded_tx"}) >= 37 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, k := range kinds {
		labels := map[string]string{"outcome": k.outcome}
		if got := tetherd.Value(families, "tether_packets_total", labels); got != float64(k.count) {
			t.Errorf("tether_packets_total{outcome=%q} = %v, sent %d", k.outcome, got, k.count)
		}
		if got := tetherd.Value(families, "tether_bytes_total", labels); got != float64(bytes[k.outcome]) {
			t.Errorf("tether_bytes_total{outcome=%q} = %v, sent %d bytes", k.outcome, got, bytes[k.outcome])
		}
	}
	vipLabels := map[string]string{"vip": vip + "/tcp", "outcome": "forwarded_tx"}
	if got := tetherd.Value(families, "tether_vip_packets_total", vipLabels); got != 37 {
		t.Errorf("tether_vip_packets_total%v = %v, want 37", vipLabels, got)
	}
	backendLabels := map[string]string{"vip": vip + "/tcp", "backend": "b1", "outcome": "forwarded_tx"}
	if got := tetherd.Value(families, "tether_backend_packets_total", backendLabels); got != 37 {
		t.Errorf("tether_backend_packets_total%v = %v, want 37", backendLabels, got)
	}
	if got := tetherd.Value(families, "tether_vip_packets_total", map[string]string{"vip": empty + "/tcp", "outcome": "dropped_no_backend"}); got != 7 {
		t.Errorf("dropped_no_backend of the empty VIP = %v, want 7", got)
	}
	for event, want := range map[string]float64{"miss": 8, "insert": 1, "hit": 36} {
		// The empty VIP's 7 packets miss too and insert nothing.
		if got := tetherd.Value(families, "tether_affinity_events_total", map[string]string{"event": event}); got != want {
			t.Errorf("tether_affinity_events_total{event=%q} = %v, want %v", event, got, want)
		}
	}
	if got := tetherd.Value(families, "tether_affinity_entries", map[string]string{}); got != 1 {
		t.Errorf("tether_affinity_entries = %v, want 1", got)
	}
	if got := tetherd.Value(families, "tether_backend_state", map[string]string{"vip": vip + "/tcp", "backend": "b1", "state": "up"}); got != 1 {
		t.Errorf("tether_backend_state up = %v, want 1", got)
	}
	if got := tetherd.Value(families, "tether_attach_info", map[string]string{"interface": "eth0", "mode": "native", "program_id": fmt.Sprint(mustStatus(t, d).ProgramID)}); got != 1 {
		t.Errorf("tether_attach_info = %v, want 1", got)
	}
}

func mustStatus(t *testing.T, d interface {
	Status() (control.Status, error)
}) control.Status {
	t.Helper()
	st, err := d.Status()
	if err != nil {
		t.Fatal(err)
	}
	return st
}
