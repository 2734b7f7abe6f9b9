package datapath

import (
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/tether-lb/tether/loader"
	"github.com/tether-lb/tether/maps"
	"github.com/tether-lb/tether/test/packets"
)

// Timestamps in a random state keep this far from every freshness threshold,
// so kernel and model decide alike although their clocks differ by the
// time a run takes. An epoch longer than this is repeated, not judged.
const epochBudget = 600 * time.Millisecond

const packetsPerEpoch = 1000

// TestDifferential runs random packets over random map states through the
// program and the model and fails on any difference in verdict, output
// frame, affinity entries or counters. TETHER_DIFF_PACKETS and
// TETHER_DIFF_SEED change the count (default 100000) and the seed.
func TestDifferential(t *testing.T) {
	h := newHarness(t)
	total := envInt(t, "TETHER_DIFF_PACKETS", 100_000)
	seed := uint64(envInt(t, "TETHER_DIFF_SEED", 20261125))
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))

	vethIndex := h.addRedirectPort(t)
	gen := &generator{rng: rng, vethIndex: vethIndex}

	var outcomes [loader.TetherOutcomeOUTCOME_MAX]int
	done, repeated := 0, 0
	for done < total {
		start := monotonicCoarse()
		gen.newState(start, done/packetsPerEpoch)
		h.apply(gen.install)
		n := min(packetsPerEpoch, total-done)
		var results []maps.Outcome
		var failure error
		var failed []byte
		for range n {
			frame := gen.frame()
			res, err := h.compare(frame)
			if err != nil {
				failure, failed = err, frame
				break
			}
			results = append(results, res.Outcome)
		}
		if failure == nil {
			failure = h.compareState()
		}
		if time.Duration(monotonicCoarse()-start) > epochBudget {
			// Too slow to trust the clock margins: resynchronise and redo.
			repeated++
			if repeated > 10 {
				t.Fatalf("10 epochs ran longer than %v: machine too slow for this test", epochBudget)
			}
			resyncCounters(t, h)
			continue
		}
		if failure != nil {
			t.Fatalf("seed %d, after %d packets: %v\nframe % x", seed, done+len(results), failure, failed)
		}
		for _, o := range results {
			outcomes[o]++
		}
		done += n
	}
	t.Logf("%d random packets over %d random map states: kernel and model agree (seed %d, %d epochs repeated for time)",
		done, (done+packetsPerEpoch-1)/packetsPerEpoch, seed, repeated)
	for o, count := range outcomes {
		t.Logf("  outcome %2d: %d", o, count)
		if count == 0 && maps.Outcome(o) != maps.OutcomeDropMalformedEth && total >= 100_000 {
			t.Errorf("outcome %d never occurred: the generator does not cover it", o)
		}
	}
}

// resyncCounters copies the kernel's counters into the model after an
// epoch that was too slow to judge; the next epoch replaces the rest.
func resyncCounters(t *testing.T, h *harness) {
	limits := h.fake.Limits()
	for slot := range 1 + limits.MaxVIPs + limits.MaxBackends {
		c, err := h.kernel.Counters(slot)
		if err != nil {
			t.Fatal(err)
		}
		h.fake.UpdateCounters(slot, func(dst *maps.Counters) { *dst = c })
	}
}

func envInt(t *testing.T, name string, def int) int {
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	v, err := strconv.Atoi(s)
	if err != nil || v <= 0 {
		t.Fatalf("%s=%q: expected a positive integer", name, s)
	}
	return v
}

// generator makes random map states and frames aimed at them.
type generator struct {
	rng       *rand.Rand
	vethIndex uint32
	vips      map[maps.VIPKey]maps.VIP
	backends  map[maps.BackendID]maps.Backend
	tables    map[[2]uint32][]maps.BackendID
	pins      map[maps.AffinityKey]maps.Affinity
	settings  maps.Settings
	clients   []netip.Addr
}

var (
	vipAddrs = []netip.Addr{
		netip.MustParseAddr("198.18.1.1"), netip.MustParseAddr("198.18.1.2"),
		netip.MustParseAddr("2001:db8:1::1"), netip.MustParseAddr("2001:db8:1::2"),
	}
	vipPorts = []uint16{80, 443, 53}
)

func (g *generator) pick(n int) int { return g.rng.IntN(n) }

func (g *generator) chance(p float64) bool { return g.rng.Float64() < p }

func (g *generator) duration(lo, hi time.Duration) time.Duration {
	return lo + time.Duration(g.rng.Int64N(int64(hi-lo)+1))
}

// stamp returns a last-seen time relative to now: fresh, due for refresh,
// expired, or slightly ahead (written by another CPU), each well away from
// the thresholds.
func (g *generator) stamp(now uint64, timeout time.Duration) uint64 {
	switch g.pick(4) {
	case 0:
		return now - uint64(g.duration(0, 300*time.Millisecond))
	case 1:
		return now - uint64(g.duration(1500*time.Millisecond, max(timeout-2*time.Second, 1500*time.Millisecond)))
	case 2:
		return now - uint64(timeout+g.duration(2*time.Second, 100*time.Second))
	default:
		return now + uint64(g.duration(0, 100*time.Millisecond))
	}
}

// newState makes a random state; every 20th epoch switches the datapath
// off, so that outcome is covered whatever the seed.
func (g *generator) newState(now uint64, epoch int) {
	g.vips = make(map[maps.VIPKey]maps.VIP)
	for range 1 + g.pick(6) {
		key := maps.VIPKey{Addr: vipAddrs[g.pick(len(vipAddrs))], Port: vipPorts[g.pick(len(vipPorts))], Proto: []maps.Proto{maps.TCP, maps.UDP}[g.pick(2)]}
		vip := maps.VIP{
			ID:              uint32(g.pick(int(testOptions.MaxVIPs))),
			NoBackendPass:   g.chance(0.3),
			AffinityTimeout: g.duration(5*time.Second, 300*time.Second),
			TableSize:       []uint32{251, 251, 251, 257, 1, 2, 0, 258, uint32(g.pick(300))}[g.pick(9)],
			Prefix4:         uint8([]int{32, 24, g.pick(33), g.pick(33), g.pick(256)}[g.pick(5)]),
			Prefix6:         uint8([]int{64, 128, g.pick(129), g.pick(129), g.pick(256)}[g.pick(5)]),
			TableSlot:       uint8(g.pick(256)),
		}
		if g.chance(0.05) {
			vip.ID = testOptions.MaxVIPs + uint32(g.pick(300))
		}
		g.vips[key] = vip
		if g.chance(0.5) {
			g.vips[maps.FragmentAlias(key)] = vip
		}
	}
	g.backends = make(map[maps.BackendID]maps.Backend)
	for id := maps.BackendID(1); id < maps.BackendID(testOptions.MaxBackends); id++ {
		if id > 8 && g.chance(0.8) {
			continue
		}
		g.backends[id] = maps.Backend{
			MAC:        g.mac(),
			SourceMAC:  g.mac(),
			Ifindex:    []uint32{0, 0, 0, loIfindex, g.vethIndex, 999}[g.pick(6)],
			Generation: uint32(g.pick(3)),
			State:      maps.BackendState([]int{1, 1, 1, 2, 0, 3}[g.pick(6)]),
		}
	}
	g.tables = make(map[[2]uint32][]maps.BackendID)
	for id := range testOptions.MaxVIPs {
		for slot := range uint32(2) {
			table := make([]maps.BackendID, testOptions.TableStride)
			for i := range table {
				table[i] = g.backendID()
			}
			g.tables[[2]uint32{id, slot}] = table
		}
	}
	g.clients = g.clients[:0]
	for range 20 {
		g.clients = append(g.clients, netip.AddrFrom4([4]byte{198, 18, byte(g.pick(2)), byte(g.pick(256))}))
		var a [16]byte
		copy(a[:], netip.MustParseAddr("2001:db8::").AsSlice())
		a[7] = byte(g.pick(3))
		a[15] = byte(g.pick(256))
		a[12] = byte(g.pick(2))
		g.clients = append(g.clients, netip.AddrFrom16(a))
	}
	g.pins = make(map[maps.AffinityKey]maps.Affinity)
	for range g.pick(60) {
		vip := g.anyVIP()
		client := g.clients[g.pick(len(g.clients))]
		bits := int(vip.Prefix4)
		if client.Is6() {
			bits = int(vip.Prefix6)
		}
		key := maps.AffinityKey{VIPID: vip.ID, Client: maps.ClientKey(client, bits)}
		g.pins[key] = maps.Affinity{Backend: g.backendID(), Generation: uint32(g.pick(3)), LastSeen: g.stamp(now, vip.AffinityTimeout),
			Probationary: g.chance(0.4)}
	}
	g.settings = maps.Settings{Seed: g.rng.Uint32(), Active: epoch%20 != 7}
	switch g.pick(10) {
	case 0:
		g.settings.WatchdogTimeout = g.duration(2*time.Second, 10*time.Second)
		g.settings.Watchdog = now - uint64(g.duration(0, 300*time.Millisecond))
	case 1:
		g.settings.WatchdogTimeout = g.duration(2*time.Second, 10*time.Second)
		g.settings.Watchdog = now - uint64(g.settings.WatchdogTimeout+g.duration(time.Second, 5*time.Second))
	}
}

func (g *generator) backendID() maps.BackendID {
	if g.chance(0.05) {
		return maps.BackendID(g.pick(80))
	}
	return maps.BackendID(g.pick(6))
}

func (g *generator) mac() net.HardwareAddr {
	mac := make(net.HardwareAddr, 6)
	for i := range mac {
		mac[i] = byte(g.rng.Uint32())
	}
	return mac
}

func (g *generator) anyVIP() maps.VIP {
	for _, v := range g.vips {
		return v
	}
	return maps.VIP{}
}

// install writes the generator's state into m, replacing all of it but the
// counters and tx ports.
func (g *generator) install(m maps.Maps) error {
	old, err := m.VIPs()
	if err != nil {
		return err
	}
	for key := range old {
		if err := m.DeleteVIP(key); err != nil {
			return err
		}
	}
	for key, vip := range g.vips {
		if err := m.PutVIP(key, vip); err != nil {
			return err
		}
	}
	for id := maps.BackendID(1); id < maps.BackendID(testOptions.MaxBackends); id++ {
		if err := m.PutBackend(id, g.backends[id]); err != nil {
			return err
		}
	}
	for idSlot, table := range g.tables {
		if err := m.PutTable(idSlot[0], uint8(idSlot[1]), table); err != nil {
			return err
		}
	}
	pins, err := m.Affinities()
	if err != nil {
		return err
	}
	for key := range pins {
		if err := m.DeleteAffinity(key); err != nil {
			return err
		}
	}
	if err := putPins(m, g.pins); err != nil {
		return err
	}
	return m.PutSettings(g.settings)
}

// frame returns a random frame: mostly well-formed and aimed at the state's
// VIPs and clients, the rest damaged or random.
func (g *generator) frame() []byte {
	switch r := g.rng.Float64(); {
	case r < 0.6:
		return g.wellFormed()
	case r < 0.85:
		return g.damage(g.wellFormed())
	case r < 0.95:
		b := make([]byte, 14+g.pick(200))
		for i := range b {
			b[i] = byte(g.rng.Uint32())
		}
		if g.chance(0.7) {
			ethertype := []uint16{packets.EtherTypeIPv4, packets.EtherTypeIPv6, packets.EtherTypeVLAN}[g.pick(3)]
			b[12], b[13] = byte(ethertype>>8), byte(ethertype)
		}
		return b
	default:
		return append(packets.Ethernet(lbMAC, clientMAC, false, 0, uint16(g.rng.Uint32())), make([]byte, g.pick(60))...)
	}
}

func (g *generator) wellFormed() []byte {
	var dst maps.VIPKey
	for key := range g.vips {
		dst = key
		if g.chance(0.5) {
			break
		}
	}
	if dst.Port == 0 || g.chance(0.1) {
		dst = maps.VIPKey{Addr: vipAddrs[g.pick(len(vipAddrs))], Port: vipPorts[g.pick(len(vipPorts))], Proto: maps.TCP}
	}
	var src netip.Addr
	for range 10 {
		if src = g.clients[g.pick(len(g.clients))]; src.Is4() == dst.Addr.Is4() {
			break
		}
	}
	if src.Is4() != dst.Addr.Is4() {
		src = client6
		if dst.Addr.Is4() {
			src = client4
		}
	}
	s := packets.Spec{
		DstMAC: lbMAC, SrcMAC: clientMAC, Src: src, Dst: dst.Addr,
		Proto: uint8(dst.Proto), SrcPort: uint16(g.rng.Uint32()), DstPort: dst.Port,
		TCPFlags: tcpFlagSets[g.pick(len(tcpFlagSets))],
		Tagged:   g.chance(0.1), VLANID: uint16(g.pick(4096)),
		Payload: make([]byte, g.pick(64)),
	}
	if g.chance(0.05) {
		s.Proto = []uint8{packets.ProtoICMP, 132, 255}[g.pick(3)]
	}
	if dst.Addr.Is4() && g.chance(0.15) {
		s.IPv4Options = make([]byte, 4*(1+g.pick(10)))
	}
	if dst.Addr.Is6() && g.chance(0.3) {
		for range 1 + g.pick(6) {
			s.IPv6Ext = append(s.IPv6Ext, []uint8{packets.ProtoHopOpts, packets.ProtoRouting, packets.ProtoDstOpts, packets.ProtoFragment}[g.pick(4)])
		}
	}
	if g.chance(0.15) {
		s.MoreFragments = g.chance(0.5)
		if g.chance(0.6) {
			s.FragmentOffset = uint16(1 + g.pick(1000))
		}
		if dst.Addr.Is6() && len(s.IPv6Ext) == 0 {
			s.IPv6Ext = []uint8{packets.ProtoFragment}
		}
	}
	return packets.Build(s)
}

func (g *generator) damage(b []byte) []byte {
	switch g.pick(3) {
	case 0:
		for range 1 + g.pick(4) {
			b[14+g.pick(len(b)-14)] = byte(g.rng.Uint32())
		}
		return b
	case 1:
		return b[:14+g.pick(len(b)-14)]
	default:
		junk := make([]byte, 1+g.pick(40))
		for i := range junk {
			junk[i] = byte(g.rng.Uint32())
		}
		return append(b, junk...)
	}
}

// tcpFlagSets are the TCP flags random frames carry: a handshake's, data,
// the end of a connection, and odd mixes.
var tcpFlagSets = []uint8{packets.TCPSyn, packets.TCPSyn, packets.TCPAck, packets.TCPAck | packets.TCPPsh,
	packets.TCPSyn | packets.TCPAck, packets.TCPRst, packets.TCPRst | packets.TCPAck, packets.TCPFin | packets.TCPAck,
	packets.TCPSyn | packets.TCPRst, 0xff}
