package datapath

import (
	"net/netip"
	"testing"
	"time"

	"github.com/tether-lb/tether/loader"
	"github.com/tether-lb/tether/maps"
	"github.com/tether-lb/tether/test/model"
	"github.com/tether-lb/tether/test/packets"
)

func spec(src netip.Addr, vip maps.VIPKey) packets.Spec {
	return packets.Spec{DstMAC: lbMAC, SrcMAC: clientMAC, Src: src, Dst: vip.Addr, Proto: uint8(vip.Proto), SrcPort: 40000, DstPort: vip.Port}
}

func frame(src netip.Addr, vip maps.VIPKey, edit ...func(*packets.Spec)) []byte {
	s := spec(src, vip)
	for _, e := range edit {
		e(&s)
	}
	return packets.Build(s)
}

// expect runs frame through kernel and model, fails on any difference, and
// checks the kernel's global counter moved by one packet at want.
func (h *harness) expect(frame []byte, want maps.Outcome) model.Result {
	h.t.Helper()
	before, err := h.kernel.Counters(maps.GlobalSlot)
	if err != nil {
		h.t.Fatal(err)
	}
	res, err := h.compare(frame)
	if err != nil {
		h.t.Fatalf("kernel and model differ: %v", err)
	}
	if res.Outcome != want {
		h.t.Fatalf("outcome %d, want %d", res.Outcome, want)
	}
	after, err := h.kernel.Counters(maps.GlobalSlot)
	if err != nil {
		h.t.Fatal(err)
	}
	if len(frame) >= 14 && after.Packets[want]-before.Packets[want] != 1 {
		h.t.Fatalf("kernel counted %d packets at outcome %d, want 1", after.Packets[want]-before.Packets[want], want)
	}
	return res
}

func setTableTo(h *harness, key maps.VIPKey, id maps.BackendID) {
	table := make([]maps.BackendID, fixtureTableSize)
	for i := range table {
		table[i] = id
	}
	h.apply(func(m maps.Maps) error {
		vip, err := m.VIP(key)
		if err != nil {
			return err
		}
		_, err = maps.InstallTable(m, key, vip, table)
		return err
	})
}

func TestForwarding(t *testing.T) {
	for _, tc := range []struct {
		name  string
		frame []byte
		want  maps.Outcome
	}{
		{"ipv4 tcp", frame(client4, vip4), maps.OutcomeForwardTX},
		{"ipv4 udp", frame(client4, vip4UDP), maps.OutcomeForwardTX},
		{"ipv6 tcp", frame(client6, vip6), maps.OutcomeForwardTX},
		{"vlan tagged", frame(client4, vip4, func(s *packets.Spec) { s.Tagged, s.VLANID = true, 42 }), maps.OutcomeForwardTX},
		{"vlan tagged ipv6", frame(client6, vip6, func(s *packets.Spec) { s.Tagged, s.VLANID = true, 7 }), maps.OutcomeForwardTX},
		{"ipv4 options 4 bytes", frame(client4, vip4, func(s *packets.Spec) { s.IPv4Options = []byte{1, 1, 1, 1} }), maps.OutcomeForwardTX},
		{"ipv4 options 40 bytes", frame(client4, vip4, func(s *packets.Spec) { s.IPv4Options = make([]byte, 40) }), maps.OutcomeForwardTX},
		{"ipv4 first fragment", frame(client4, vip4, func(s *packets.Spec) { s.MoreFragments = true }), maps.OutcomeForwardTX},
		{"ipv4 with payload and padding", append(frame(client4, vip4, func(s *packets.Spec) { s.Payload = []byte("hello") }), 0, 0, 0), maps.OutcomeForwardTX},
		{"ipv6 hop-by-hop", frame(client6, vip6, func(s *packets.Spec) { s.IPv6Ext = []uint8{packets.ProtoHopOpts} }), maps.OutcomeForwardTX},
		{"ipv6 routing + dstopts", frame(client6, vip6, func(s *packets.Spec) {
			s.IPv6Ext = []uint8{packets.ProtoRouting, packets.ProtoDstOpts}
		}), maps.OutcomeForwardTX},
		{"ipv6 four extension headers", frame(client6, vip6, func(s *packets.Spec) {
			s.IPv6Ext = []uint8{packets.ProtoHopOpts, packets.ProtoDstOpts, packets.ProtoRouting, packets.ProtoDstOpts}
		}), maps.OutcomeForwardTX},
		{"ipv6 first fragment", frame(client6, vip6, func(s *packets.Spec) {
			s.IPv6Ext, s.MoreFragments = []uint8{packets.ProtoFragment}, true
		}), maps.OutcomeForwardTX},
		{"ipv6 five extension headers", frame(client6, vip6, func(s *packets.Spec) {
			s.IPv6Ext = []uint8{packets.ProtoHopOpts, packets.ProtoDstOpts, packets.ProtoRouting, packets.ProtoDstOpts, packets.ProtoDstOpts}
		}), maps.OutcomePassIPv6ExtLimit},
		{"arp", append(packets.Ethernet(lbMAC, clientMAC, false, 0, packets.EtherTypeARP), make([]byte, 28)...), maps.OutcomePassNotIP},
		{"double vlan tag", append(packets.Ethernet(lbMAC, clientMAC, true, 1, packets.EtherTypeVLAN), frame(client4, vip4)[12:]...), maps.OutcomePassNotIP},
		{"icmp to vip address", frame(client4, vip4, func(s *packets.Spec) { s.Proto = packets.ProtoICMP }), maps.OutcomePassNotTCPUDP},
		{"other port", frame(client4, vip4, func(s *packets.Spec) { s.DstPort = 81 }), maps.OutcomePassNotVIP},
		{"udp to tcp vip port", frame(client4, vip4, func(s *packets.Spec) { s.Proto = packets.ProtoUDP }), maps.OutcomePassNotVIP},
		{"other address", frame(client4, vip4, func(s *packets.Spec) { s.Dst = netip.MustParseAddr("198.18.1.2") }), maps.OutcomePassNotVIP},
		{"ipv4-mapped ipv6 to vip", frame(client6, vip6, func(s *packets.Spec) { s.Dst = netip.MustParseAddr("::ffff:198.18.1.1") }), maps.OutcomePassNotVIP},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.setupFixture()
			res := h.expect(tc.frame, tc.want)
			if tc.want == maps.OutcomeForwardTX {
				if res.Backend != 1 && res.Backend != 2 {
					t.Fatalf("forwarded to backend %d, want 1 or 2", res.Backend)
				}
				if got := res.Frame[:6]; string(got) != string(backendMAC(res.Backend)) {
					t.Fatalf("destination MAC % x, want backend %d's", got, res.Backend)
				}
				if string(res.Frame[12:]) != string(tc.frame[12:]) {
					t.Fatal("forwarding changed bytes after the MAC addresses")
				}
			} else if string(res.Frame) != string(tc.frame) {
				t.Fatal("a frame that was not forwarded was changed")
			}
		})
	}
}

func TestMalformed(t *testing.T) {
	for _, tc := range []struct {
		name  string
		frame []byte
		want  maps.Outcome
	}{
		{"ipv4 version 5", edit(frame(client4, vip4), 14, 0x55), maps.OutcomeDropMalformedIPv4},
		{"ipv4 ihl 4", edit(frame(client4, vip4), 14, 0x44), maps.OutcomeDropMalformedIPv4},
		{"ipv4 ihl 15 without options", edit(frame(client4, vip4), 14, 0x4f), maps.OutcomeDropMalformedIPv4},
		{"ipv4 total length beyond frame", edit(frame(client4, vip4), 16, 0x01), maps.OutcomeDropMalformedIPv4},
		{"ipv4 total length below header", edit(edit(frame(client4, vip4), 16, 0), 17, 10), maps.OutcomeDropMalformedIPv4},
		{"tcp data offset 4", edit(frame(client4, vip4), 14+20+12, 0x40), maps.OutcomeDropMalformedL4},
		{"tcp header only in padding after the ipv4 packet", edit(edit(frame(client4, vip4), 16, 0), 17, 20), maps.OutcomeDropMalformedL4},
		{"udp header only in padding after the ipv6 packet", edit(edit(frame(client6, vip6, func(s *packets.Spec) { s.Proto = packets.ProtoUDP }), 14+4, 0), 14+5, 0), maps.OutcomeDropMalformedL4},
		{"tcp data offset beyond frame", edit(frame(client4, vip4), 14+20+12, 0xf0), maps.OutcomeDropMalformedL4},
		{"ipv6 version 4", edit(frame(client6, vip6), 14, 0x40), maps.OutcomeDropMalformedIPv6},
		{"ipv6 payload length beyond frame", edit(frame(client6, vip6), 14+4, 0x10), maps.OutcomeDropMalformedIPv6},
		{"ipv6 extension header length beyond frame", edit(frame(client6, vip6, func(s *packets.Spec) {
			s.IPv6Ext = []uint8{packets.ProtoHopOpts}
		}), 14+40+1, 9), maps.OutcomeDropMalformedIPv6Ext},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.setupFixture()
			h.expect(tc.frame, tc.want)
		})
	}
}

func edit(frame []byte, offset int, value byte) []byte {
	out := append([]byte(nil), frame...)
	out[offset] = value
	return out
}

// TestTruncated cuts frames at every length: each must end in its layer's
// malformed outcome in the kernel exactly as in the model.
func TestTruncated(t *testing.T) {
	h := newHarness(t)
	h.setupFixture()
	bases := map[string][]byte{
		"ipv4 tcp":       frame(client4, vip4),
		"ipv4 udp":       frame(client4, vip4UDP),
		"vlan ipv4 tcp":  frame(client4, vip4, func(s *packets.Spec) { s.Tagged = true }),
		"ipv4 options":   frame(client4, vip4, func(s *packets.Spec) { s.IPv4Options = make([]byte, 12) }),
		"ipv6 tcp":       frame(client6, vip6),
		"ipv6 ext udp":   frame(client6, vip6, func(s *packets.Spec) { s.Proto, s.IPv6Ext = packets.ProtoUDP, []uint8{0, 44, 60} }),
		"ipv6 fragment":  frame(client6, vip6, func(s *packets.Spec) { s.IPv6Ext, s.FragmentOffset = []uint8{44}, 3 }),
		"ipv4 fragment":  frame(client4, vip4, func(s *packets.Spec) { s.FragmentOffset = 3 }),
		"ipv6 tcp vlan":  frame(client6, vip6, func(s *packets.Spec) { s.Tagged = true }),
		"ipv4 tcp data":  frame(client4, vip4, func(s *packets.Spec) { s.Payload = make([]byte, 30) }),
		"ipv6 udp data":  frame(client6, vip6, func(s *packets.Spec) { s.Proto, s.Payload = packets.ProtoUDP, make([]byte, 30) }),
		"ipv6 hop route": frame(client6, vip6, func(s *packets.Spec) { s.IPv6Ext = []uint8{0, 43} }),
	}
	runs := 0
	for name, full := range bases {
		for n := range len(full) {
			res, err := h.compare(full[:n])
			if err != nil {
				t.Fatalf("%s cut to %d bytes: %v", name, n, err)
			}
			if res.Verdict != maps.XDPDrop {
				t.Fatalf("%s cut to %d bytes: verdict %d (outcome %d), want a drop", name, n, res.Verdict, res.Outcome)
			}
			runs++
		}
	}
	if err := h.compareState(); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d truncated frames, kernel and model agree", runs)
}

func TestFragments(t *testing.T) {
	nonFirst4 := frame(client4, vip4, func(s *packets.Spec) { s.FragmentOffset = 185 })
	nonFirst6 := frame(client6, vip6, func(s *packets.Spec) { s.IPv6Ext, s.FragmentOffset = []uint8{packets.ProtoFragment}, 185 })

	t.Run("no alias passes", func(t *testing.T) {
		h := newHarness(t)
		h.setupFixture()
		h.expect(nonFirst4, maps.OutcomePassFragment)
		h.expect(nonFirst6, maps.OutcomePassFragment)
	})
	t.Run("alias follows the client's backend", func(t *testing.T) {
		h := newHarness(t)
		h.setupFixture()
		h.apply(func(m maps.Maps) error {
			for _, key := range []maps.VIPKey{vip4, vip6} {
				v, err := m.VIP(key)
				if err != nil {
					return err
				}
				if err := m.PutVIP(maps.FragmentAlias(key), v); err != nil {
					return err
				}
			}
			return nil
		})
		for _, pair := range [][2][]byte{{frame(client4, vip4), nonFirst4}, {frame(client6, vip6), nonFirst6}} {
			first := h.expect(pair[0], maps.OutcomeForwardTX)
			rest := h.expect(pair[1], maps.OutcomeForwardTX)
			if first.Backend != rest.Backend {
				t.Fatalf("first fragment to backend %d, later fragment to %d", first.Backend, rest.Backend)
			}
		}
	})
}

func TestNoBackend(t *testing.T) {
	for _, pass := range []bool{false, true} {
		h := newHarness(t)
		h.setupFixture()
		setTableTo(h, vip4, 0)
		h.apply(func(m maps.Maps) error {
			v, err := m.VIP(vip4)
			v.NoBackendPass = pass
			return errorsJoin(err, m.PutVIP(vip4, v))
		})
		want := maps.OutcomeDropNoBackend
		if pass {
			want = maps.OutcomePassNoBackend
		}
		h.expect(frame(client4, vip4), want)
		// A table pointing at a down backend or an id past the array is
		// no backend either.
		setTableTo(h, vip4, 4)
		h.expect(frame(client4, vip4), want)
		setTableTo(h, vip4, 63)
		h.expect(frame(client4, vip4), want)
	}
}

func errorsJoin(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func TestAffinity(t *testing.T) {
	pin := func(h *harness, client netip.Addr, id maps.BackendID, generation uint32, age time.Duration) {
		now := monotonicCoarse()
		h.apply(func(m maps.Maps) error {
			return m.PutAffinity(maps.AffinityKey{VIPID: 0, Client: maps.ClientKey(client, 32)},
				maps.Affinity{Backend: id, Generation: generation, LastSeen: now - uint64(age)})
		})
	}
	events := func(res model.Result) uint32 { return res.AffinityEvents }
	bit := func(e loader.TetherAffinityEvent) uint32 { return 1 << e }

	t.Run("new client is inserted then hits", func(t *testing.T) {
		h := newHarness(t)
		h.setupFixture()
		first := h.expect(frame(client4, vip4), maps.OutcomeForwardTX)
		if events(first) != bit(loader.TetherAffinityEventAFFINITY_MISS)|bit(loader.TetherAffinityEventAFFINITY_INSERT) {
			t.Fatalf("events %b, want miss and insert", events(first))
		}
		for range 10 {
			again := h.expect(frame(client4, vip4, func(s *packets.Spec) { s.SrcPort++ }), maps.OutcomeForwardTX)
			if again.Backend != first.Backend || events(again) != bit(loader.TetherAffinityEventAFFINITY_HIT) {
				t.Fatalf("backend %d events %b, want backend %d by a hit", again.Backend, events(again), first.Backend)
			}
		}
	})
	t.Run("draining backend keeps its clients", func(t *testing.T) {
		h := newHarness(t)
		h.setupFixture()
		pin(h, client4, 3, 1, time.Second/2)
		if res := h.expect(frame(client4, vip4), maps.OutcomeForwardTX); res.Backend != 3 {
			t.Fatalf("forwarded to %d, want draining backend 3", res.Backend)
		}
	})
	t.Run("table change does not move a pinned client", func(t *testing.T) {
		h := newHarness(t)
		h.setupFixture()
		pin(h, client4, 2, 1, time.Second/2)
		setTableTo(h, vip4, 1)
		if res := h.expect(frame(client4, vip4), maps.OutcomeForwardTX); res.Backend != 2 {
			t.Fatalf("forwarded to %d, want pinned backend 2", res.Backend)
		}
	})
	for _, tc := range []struct {
		name       string
		id         maps.BackendID
		generation uint32
		age        time.Duration
		event      loader.TetherAffinityEvent
	}{
		{"expired entry", 2, 1, 121 * time.Second, loader.TetherAffinityEventAFFINITY_EXPIRED},
		{"entry stamped too far in the future", 2, 1, -10 * time.Second, loader.TetherAffinityEventAFFINITY_EXPIRED},
		{"generation mismatch", 2, 7, time.Second, loader.TetherAffinityEventAFFINITY_STALE},
		{"down backend", 4, 1, time.Second, loader.TetherAffinityEventAFFINITY_STALE},
		{"backend id past the array", 63, 0, time.Second, loader.TetherAffinityEventAFFINITY_STALE},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.setupFixture()
			setTableTo(h, vip4, 1)
			pin(h, client4, tc.id, tc.generation, tc.age)
			res := h.expect(frame(client4, vip4), maps.OutcomeForwardTX)
			if res.Backend != 1 || events(res) != bit(tc.event)|bit(loader.TetherAffinityEventAFFINITY_INSERT) {
				t.Fatalf("backend %d events %b, want Maglev's backend 1 after event %d", res.Backend, events(res), tc.event)
			}
			if err := h.compareState(); err != nil {
				t.Fatal(err)
			}
		})
	}
	t.Run("refresh at most once a second", func(t *testing.T) {
		h := newHarness(t)
		h.setupFixture()
		pin(h, client4, 2, 1, 3*time.Second)
		if res := h.expect(frame(client4, vip4), maps.OutcomeForwardTX); !res.AffinityWritten {
			t.Fatal("an entry 3 s old was not refreshed")
		}
		if res := h.expect(frame(client4, vip4), maps.OutcomeForwardTX); res.AffinityWritten {
			t.Fatal("an entry refreshed just now was refreshed again")
		}
	})
	t.Run("prefix groups clients", func(t *testing.T) {
		h := newHarness(t)
		h.setupFixture()
		h.apply(func(m maps.Maps) error {
			v, err := m.VIP(vip4)
			v.Prefix4 = 24
			return errorsJoin(err, m.PutVIP(vip4, v))
		})
		first := h.expect(frame(client4, vip4), maps.OutcomeForwardTX)
		for i := range 20 {
			other := netip.AddrFrom4([4]byte{198, 18, 0, byte(100 + i)})
			if res := h.expect(frame(other, vip4), maps.OutcomeForwardTX); res.Backend != first.Backend {
				t.Fatalf("%s went to %d, %s to %d: same /24 must share a backend", other, res.Backend, client4, first.Backend)
			}
		}
		first6 := h.expect(frame(client6, vip6), maps.OutcomeForwardTX)
		other6 := netip.MustParseAddr("2001:db8::ffff:1234")
		if res := h.expect(frame(other6, vip6), maps.OutcomeForwardTX); res.Backend != first6.Backend {
			t.Fatalf("same /64 went to %d and %d", first6.Backend, res.Backend)
		}
	})
}

func TestSwitches(t *testing.T) {
	t.Run("inactive", func(t *testing.T) {
		h := newHarness(t)
		h.setupFixture()
		h.apply(func(m maps.Maps) error { return m.PutSettings(maps.Settings{Seed: 42}) })
		h.expect(frame(client4, vip4), maps.OutcomePassInactive)
		h.expect([]byte("garbage that is not a frame"), maps.OutcomePassInactive)
	})
	t.Run("watchdog", func(t *testing.T) {
		h := newHarness(t)
		h.setupFixture()
		now := monotonicCoarse()
		h.apply(func(m maps.Maps) error {
			return m.PutSettings(maps.Settings{Seed: 42, Active: true, Watchdog: now, WatchdogTimeout: 10 * time.Second})
		})
		h.expect(frame(client4, vip4), maps.OutcomeForwardTX)
		h.apply(func(m maps.Maps) error {
			return m.PutSettings(maps.Settings{Seed: 42, Active: true, Watchdog: now - uint64(11*time.Second), WatchdogTimeout: 10 * time.Second})
		})
		h.expect(frame(client4, vip4), maps.OutcomePassWatchdog)
	})
}

func TestRedirect(t *testing.T) {
	h := newHarness(t)
	h.setupFixture()
	vethIndex := h.addRedirectPort(t)
	h.apply(func(m maps.Maps) error {
		b, err := m.Backend(1)
		b.Ifindex = vethIndex
		return errorsJoin(err, m.PutBackend(1, b))
	})
	setTableTo(h, vip4, 1)
	h.expect(frame(client4, vip4), maps.OutcomeForwardRedirect)

	h.apply(func(m maps.Maps) error { return m.DeleteTxPort(vethIndex) })
	h.expect(frame(client4, vip4, func(s *packets.Spec) { s.SrcPort = 1 }), maps.OutcomeDropTxPortMissing)

	h.apply(func(m maps.Maps) error {
		b, err := m.Backend(1)
		b.Ifindex = loIfindex
		return errorsJoin(err, m.PutBackend(1, b))
	})
	h.expect(frame(client4, vip4), maps.OutcomeForwardTX)
}

func TestCounters(t *testing.T) {
	h := newHarness(t)
	h.setupFixture()
	for range 3 {
		h.expect(frame(client4, vip4), maps.OutcomeForwardTX)
	}
	h.expect(frame(client4, vip4, func(s *packets.Spec) { s.DstPort = 81 }), maps.OutcomePassNotVIP)
	h.expect(edit(frame(client6, vip6), 14, 0x40), maps.OutcomeDropMalformedIPv6)
	if err := h.compareState(); err != nil {
		t.Fatal(err)
	}
	limits := h.kernel.Limits()
	res := h.expect(frame(client4, vip4), maps.OutcomeForwardTX)
	vipCounters, err := h.kernel.Counters(limits.VIPSlot(0))
	if err != nil {
		t.Fatal(err)
	}
	backendCounters, err := h.kernel.Counters(limits.BackendSlot(res.Backend))
	if err != nil {
		t.Fatal(err)
	}
	size := uint64(len(frame(client4, vip4)))
	if vipCounters.Packets[maps.OutcomeForwardTX] != 4 || vipCounters.Bytes[maps.OutcomeForwardTX] != 4*size || backendCounters.Packets[maps.OutcomeForwardTX] != 4 {
		t.Fatalf("VIP counters %+v, backend counters %+v: want 4 packets of %d bytes forwarded", vipCounters, backendCounters, size)
	}
	if got := vipCounters.Affinity[loader.TetherAffinityEventAFFINITY_HIT]; got != 3 {
		t.Fatalf("VIP affinity hits %d, want 3", got)
	}
}

func TestTableSwap(t *testing.T) {
	h := newHarness(t)
	h.setupFixture()
	setTableTo(h, vip4, 1)
	before, _ := h.kernel.VIP(vip4)
	setTableTo(h, vip4, 2)
	after, _ := h.kernel.VIP(vip4)
	if before.TableSlot == after.TableSlot {
		t.Fatalf("table slot stayed %d after a replacement", after.TableSlot)
	}
	if res := h.expect(frame(client4, vip4), maps.OutcomeForwardTX); res.Backend != 2 {
		t.Fatalf("new client went to %d, want the new table's backend 2", res.Backend)
	}
	old, err := h.kernel.Table(before.ID, before.TableSlot, fixtureTableSize)
	if err != nil {
		t.Fatal(err)
	}
	if old[0] != 1 {
		t.Fatalf("the inactive slot was changed: %d", old[0])
	}
}
