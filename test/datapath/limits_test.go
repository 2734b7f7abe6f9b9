package datapath

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tether-lb/tether/loader"
	"github.com/tether-lb/tether/maps"
	"github.com/tether-lb/tether/test/packets"
	"github.com/tether-lb/tether/userspace/control"
	"github.com/tether-lb/tether/userspace/maglev"
)

// teeMaps writes to the kernel's maps and the model's and reads the
// kernel's: a daemon over it keeps the model in step with the datapath, so
// harness.compare can judge packets after the daemon wrote the state.
type teeMaps struct {
	*maps.Kernel
	model *maps.Fake
}

func (m teeMaps) PutVIP(key maps.VIPKey, v maps.VIP) error {
	return errors.Join(m.Kernel.PutVIP(key, v), m.model.PutVIP(key, v))
}

func (m teeMaps) DeleteVIP(key maps.VIPKey) error {
	return errors.Join(m.Kernel.DeleteVIP(key), m.model.DeleteVIP(key))
}

func (m teeMaps) PutBackend(id maps.BackendID, b maps.Backend) error {
	return errors.Join(m.Kernel.PutBackend(id, b), m.model.PutBackend(id, b))
}

func (m teeMaps) PutTable(vipID uint32, slot uint8, table []maps.BackendID) error {
	return errors.Join(m.Kernel.PutTable(vipID, slot, table), m.model.PutTable(vipID, slot, table))
}

func (m teeMaps) PutAffinity(key maps.AffinityKey, a maps.Affinity) error {
	return errors.Join(m.Kernel.PutAffinity(key, a), m.model.PutAffinity(key, a))
}

func (m teeMaps) DeleteAffinity(key maps.AffinityKey) error {
	return errors.Join(m.Kernel.DeleteAffinity(key), m.model.DeleteAffinity(key))
}

func (m teeMaps) PutSettings(s maps.Settings) error {
	return errors.Join(m.Kernel.PutSettings(s), m.model.PutSettings(s))
}

func (m teeMaps) PutTxPort(ifindex uint32) error {
	return errors.Join(m.Kernel.PutTxPort(ifindex), m.model.PutTxPort(ifindex))
}

func (m teeMaps) DeleteTxPort(ifindex uint32) error {
	return errors.Join(m.Kernel.DeleteTxPort(ifindex), m.model.DeleteTxPort(ifindex))
}

// derivedMACResolver puts every backend on the ingress interface with a
// MAC made of the last four bytes of its address.
type derivedMACResolver struct{}

func (derivedMACResolver) Resolve(_ context.Context, addr netip.Addr, override net.HardwareAddr) (control.NextHop, error) {
	b := addr.As16()
	return control.NextHop{Ifindex: loIfindex, SourceMAC: sourceMAC, MAC: net.HardwareAddr{0x02, 0xbe, b[12], b[13], b[14], b[15]}}, nil
}

// startDaemon runs a daemon with state over the harness's kernel maps and,
// through teeMaps, the model's.
func startDaemon(t *testing.T, h *harness, state control.State) *control.Daemon {
	t.Helper()
	d, err := control.New(control.Options{Maps: teeMaps{Kernel: h.kernel, model: h.fake}, Resolver: derivedMACResolver{}, IngressIfindex: loIfindex}, state)
	if err != nil {
		t.Fatalf("building daemon: %v", err)
	}
	if err := d.Start(t.Context()); err != nil {
		t.Fatalf("starting daemon: %v", err)
	}
	return d
}

var daemonVIP = control.VIPRef{Addr: netip.AddrPortFrom(vip4.Addr, vip4.Port), Proto: "tcp"}

func backendAddr(n int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, byte(n >> 16), byte(n >> 8), byte(n)})
}

// TestAffinityMapFull sends eight times as many new clients (one SYN each)
// as the affinity table is sized for. They are all on probation, so full
// buckets evict their least recently seen entry: the table never holds
// more than its ways, no insert fails, every evicted fresh entry is
// counted, every packet is still forwarded, and an evicted client that
// comes back gets the backend it had, chosen again by Maglev.
func TestAffinityMapFull(t *testing.T) {
	const capacity = 1024
	h := fixtureWithCapacity(t, capacity)
	clients := 8 * capacity
	firstBackend := make([]maps.BackendID, clients)
	for i := range clients {
		res := h.expect(frame(backendAddr(i+1), vip4), maps.OutcomeForwardTX)
		firstBackend[i] = res.Backend
	}
	counts, err := h.kernel.AffinityCount()
	if err != nil {
		t.Fatal(err)
	}
	entries := counts.Entries
	global, err := h.kernel.Counters(maps.GlobalSlot)
	if err != nil {
		t.Fatal(err)
	}
	inserts := global.Affinity[loader.TetherAffinityEventAFFINITY_INSERT]
	failed := global.Affinity[loader.TetherAffinityEventAFFINITY_INSERT_FAILED]
	evicted := global.Affinity[maps.AffinityEvictProbation]
	ways := int(loader.AffinityBuckets(capacity)) * maps.AffinityWays
	t.Logf("%d clients, capacity %d (%d ways): %d entries left, %d inserts, %d failed inserts, %d evicted", clients, capacity, ways, entries, inserts, failed, evicted)
	if entries > ways || entries < capacity {
		t.Errorf("affinity table holds %d entries, want between its capacity %d and its %d ways", entries, capacity, ways)
	}
	if inserts != uint64(clients) || failed != 0 {
		t.Errorf("%d inserts and %d failed inserts counted, want %d and 0: a full bucket evicts instead of failing", inserts, failed, clients)
	}
	if evicted != inserts-uint64(entries) {
		t.Errorf("%d evictions counted, want inserts - entries = %d", evicted, inserts-uint64(entries))
	}
	if global.Packets[maps.OutcomeForwardTX] != uint64(clients) {
		t.Errorf("%d of %d packets forwarded", global.Packets[maps.OutcomeForwardTX], clients)
	}
	for i := range 200 {
		if res := h.expect(frame(backendAddr(i+1), vip4, func(s *packets.Spec) { s.SrcPort++ }), maps.OutcomeForwardTX); res.Backend != firstBackend[i] {
			t.Fatalf("client %d came back to backend %d, had %d", i, res.Backend, firstBackend[i])
		}
	}
}

// datapathSnapshot is what a failed change must leave as it was, in the
// kernel's maps and the model's.
type datapathSnapshot struct {
	vips, modelVIPs map[maps.VIPKey]maps.VIP
	backends        map[maps.BackendID]maps.Backend
	tables          map[uint32][]maps.BackendID
	settings        maps.Settings
	status          control.Status
}

func snapshotDatapath(t *testing.T, h *harness, d *control.Daemon) datapathSnapshot {
	t.Helper()
	s := datapathSnapshot{backends: map[maps.BackendID]maps.Backend{}, tables: map[uint32][]maps.BackendID{}}
	var err error
	if s.vips, err = h.kernel.VIPs(); err != nil {
		t.Fatal(err)
	}
	if s.modelVIPs, err = h.fake.VIPs(); err != nil {
		t.Fatal(err)
	}
	limits := h.kernel.Limits()
	for id := maps.BackendID(1); uint32(id) < limits.MaxBackends; id++ {
		if s.backends[id], err = h.kernel.Backend(id); err != nil {
			t.Fatal(err)
		}
	}
	for _, info := range s.vips {
		if s.tables[info.ID], err = h.kernel.Table(info.ID, info.TableSlot, info.TableSize); err != nil {
			t.Fatal(err)
		}
	}
	if s.settings, err = h.kernel.Settings(); err != nil {
		t.Fatal(err)
	}
	if s.status, err = d.Status(); err != nil {
		t.Fatal(err)
	}
	return s
}

// TestBackendsMapFull fills the backends map of a real datapath through
// the daemon: one backend too many is refused with a one-line error naming
// the limit, and the maps and the daemon's status stay as they were.
func TestBackendsMapFull(t *testing.T) {
	opts := testOptions
	opts.MaxBackends = 4 // ids 1..3
	h := newHarnessWith(t, opts)
	d := startDaemon(t, h, control.State{})
	if err := d.AddVIP(t.Context(), control.NewVIP(daemonVIP)); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := d.AddBackend(t.Context(), daemonVIP, control.Backend{Name: fmt.Sprintf("web-%d", i+1), Addr: backendAddr(i + 1), Weight: 1}); err != nil {
			t.Fatalf("adding backend %d of 3: %v", i+1, err)
		}
	}
	before := snapshotDatapath(t, h, d)
	err := d.AddBackend(t.Context(), daemonVIP, control.Backend{Name: "web-4", Addr: backendAddr(4), Weight: 1})
	switch {
	case err == nil:
		t.Fatal("a fourth backend was accepted by a datapath with room for 3")
	case !errors.Is(err, control.ErrInvalid):
		t.Errorf("error %v is not marked invalid input", err)
	case !strings.Contains(err.Error(), "all 3 backend slots are used") || strings.Contains(err.Error(), "\n"):
		t.Errorf("error %q is not one line naming the limit of 3 backends", err)
	}
	if after := snapshotDatapath(t, h, d); !reflect.DeepEqual(before, after) {
		t.Errorf("a refused backend changed the datapath:\nbefore %+v\nafter  %+v", before, after)
	}
	if err := h.kernel.PutBackend(4, maps.Backend{}); err == nil || !strings.Contains(err.Error(), "out of range 1..3") {
		t.Errorf("writing backend id 4 of a map of 4: %v, want an error naming the range 1..3", err)
	}
	if res := h.expect(frame(client4, vip4), maps.OutcomeForwardTX); res.Backend < 1 || res.Backend > 3 {
		t.Errorf("forwarded to backend %d, want one of 1..3", res.Backend)
	}
}

// TestTenThousandBackends serves one VIP with 10,000 backends in a table of
// 65537: the daemon builds and installs it, every backend holds its share
// of the table within one slot, one more backend is added, and clients are
// forwarded as the model says.
func TestTenThousandBackends(t *testing.T) {
	const backends = 10_000
	opts := loader.Options{MaxVIPs: 1, TableStride: maglev.DefaultTableSize, MaxBackends: backends + 2, AffinityCapacity: 1 << 16, MaxTxPorts: 1}
	h := newHarnessWith(t, opts)
	vip := control.NewVIP(daemonVIP)
	for i := range backends {
		vip.Backends = append(vip.Backends, control.Backend{Name: fmt.Sprintf("b-%05d", i), Addr: backendAddr(i + 1), Weight: 1})
	}
	started := time.Now()
	d := startDaemon(t, h, control.State{VIPs: []control.VIP{vip}})
	startTook := time.Since(started)

	info, err := h.kernel.VIP(vip4)
	if err != nil {
		t.Fatal(err)
	}
	table, err := h.kernel.Table(info.ID, info.TableSlot, info.TableSize)
	if err != nil {
		t.Fatal(err)
	}
	if len(table) != maglev.DefaultTableSize {
		t.Fatalf("table has %d slots, want %d", len(table), maglev.DefaultTableSize)
	}
	share := map[maps.BackendID]int{}
	for _, id := range table {
		share[id]++
	}
	fair := float64(len(table)) / backends
	fewest, most := len(table), 0
	for id := maps.BackendID(1); id <= backends; id++ {
		fewest, most = min(fewest, share[id]), max(most, share[id])
	}
	if len(share) != backends || float64(fewest) < math.Floor(fair)-1 || float64(most) > math.Ceil(fair)+1 {
		t.Errorf("%d backends in the table, holding %d to %d slots each; want all %d within one slot of %.2f", len(share), fewest, most, backends, fair)
	}

	started = time.Now()
	if err := d.AddBackend(t.Context(), daemonVIP, control.Backend{Name: "one-more", Addr: backendAddr(backends + 1), Weight: 1}); err != nil {
		t.Fatal(err)
	}
	addTook := time.Since(started)
	t.Logf("10,000 backends, table of %d: start (resolve, write, build, install) %v, adding one more %v; %d to %d slots per backend",
		len(table), startTook.Round(time.Millisecond), addTook.Round(time.Millisecond), fewest, most)

	reached := map[maps.BackendID]bool{}
	for i := range 2000 {
		res, err := h.compare(frame(netip.AddrFrom4([4]byte{198, 51, byte(i >> 8), byte(i)}), vip4))
		if err != nil {
			t.Fatalf("client %d: kernel and model differ: %v", i, err)
		}
		if res.Outcome != maps.OutcomeForwardTX {
			t.Fatalf("client %d: outcome %d, want forwarded", i, res.Outcome)
		}
		reached[res.Backend] = true
	}
	if len(reached) < 1500 {
		t.Errorf("2000 clients reached %d backends, want them spread over most of 10,000", len(reached))
	}
}

// TestThousandVIPs serves 1,000 VIPs, each with two backends and a table
// of 251 slots: the daemon installs them, every VIP forwards to one of its
// own backends as the model says, and a VIP more is refused naming the
// limit.
func TestThousandVIPs(t *testing.T) {
	const vips, tableSize = 1000, 251
	opts := loader.Options{MaxVIPs: vips, TableStride: tableSize, MaxBackends: 2*vips + 1, AffinityCapacity: 1 << 16, MaxTxPorts: 1}
	h := newHarnessWith(t, opts)
	var state control.State
	for i := range vips {
		ref := control.VIPRef{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(i / 250), byte(1 + i%250)}), 80), Proto: "tcp"}
		v := control.NewVIP(ref)
		v.TableSize = tableSize
		v.Backends = []control.Backend{
			{Name: "a", Addr: backendAddr(2*i + 1), Weight: 1},
			{Name: "b", Addr: backendAddr(2*i + 2), Weight: 1},
		}
		state.VIPs = append(state.VIPs, v)
	}
	started := time.Now()
	d := startDaemon(t, h, state)
	startTook := time.Since(started)

	status, err := d.Status()
	if err != nil {
		t.Fatal(err)
	}
	if len(status.VIPs) != vips {
		t.Fatalf("status lists %d VIPs, want %d", len(status.VIPs), vips)
	}
	for _, v := range status.VIPs {
		key := maps.VIPKey{Addr: v.Addr.Addr(), Port: v.Addr.Port(), Proto: maps.TCP}
		own := map[maps.BackendID]bool{v.Backends[0].ID: true, v.Backends[1].ID: true}
		for _, f := range [][]byte{frame(client4, key), frame(client4, key, func(s *packets.Spec) { s.FragmentOffset = 100 })} {
			res, err := h.compare(f)
			if err != nil {
				t.Fatalf("VIP %s: kernel and model differ: %v", v.VIPRef, err)
			}
			if res.Outcome != maps.OutcomeForwardTX || !own[res.Backend] {
				t.Fatalf("VIP %s: outcome %d to backend %d, want forwarded to one of its own %v", v.VIPRef, res.Outcome, res.Backend, own)
			}
		}
	}
	if err := h.compareState(); err != nil {
		t.Fatal(err)
	}

	before := snapshotDatapath(t, h, d)
	extra := control.VIPRef{Addr: netip.MustParseAddrPort("198.18.100.1:80"), Proto: "tcp"}
	if err := d.AddVIP(t.Context(), control.NewVIP(extra)); err == nil || !strings.Contains(err.Error(), "all 1000 VIP slots are used") {
		t.Errorf("VIP 1001: %v, want an error naming the 1000 VIP slots", err)
	}
	if after := snapshotDatapath(t, h, d); !reflect.DeepEqual(before, after) {
		t.Error("a refused VIP changed the datapath")
	}
	started = time.Now()
	if err := d.SetWeight(t.Context(), state.VIPs[0].VIPRef, "a", 3); err != nil {
		t.Fatal(err)
	}
	t.Logf("1,000 VIPs: start %v, one weight change %v", startTook.Round(time.Millisecond), time.Since(started).Round(time.Millisecond))
}

// TestMTUSizedAndVLANFrames sends full 1500-byte-MTU frames, untagged and
// 802.1Q-tagged, IPv4 and IPv6, TCP and UDP: all forwarded, as the model
// says, with nothing but the MAC addresses changed.
func TestMTUSizedAndVLANFrames(t *testing.T) {
	h := newHarness(t)
	h.setupFixture()
	const mtu = 1500
	for _, tc := range []struct {
		name   string
		src    netip.Addr
		vip    maps.VIPKey
		tagged bool
		l4     int
	}{
		{"ipv4 tcp", client4, vip4, false, 20},
		{"ipv4 udp", client4, vip4UDP, false, 8},
		{"ipv6 tcp", client6, vip6, false, 20},
		{"vlan ipv4 tcp", client4, vip4, true, 20},
		{"vlan ipv6 tcp", client6, vip6, true, 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h.t = t
			ipHeader := 20
			if tc.vip.Addr.Is6() {
				ipHeader = 40
			}
			f := frame(tc.src, tc.vip, func(s *packets.Spec) {
				s.Tagged, s.VLANID = tc.tagged, 100
				s.Payload = make([]byte, mtu-ipHeader-tc.l4)
			})
			want := 14 + mtu
			if tc.tagged {
				want += 4
			}
			if len(f) != want {
				t.Fatalf("frame is %d bytes, want %d", len(f), want)
			}
			res := h.expect(f, maps.OutcomeForwardTX)
			if string(res.Frame[12:]) != string(f[12:]) {
				t.Fatal("forwarding changed bytes after the MAC addresses")
			}
		})
	}
}

// TestJumboFrames sends 9014-byte frames. BPF_PROG_TEST_RUN puts a frame
// that long in several buffers, and the program, loaded without xdp.frags
// support, sees only the first: the IPv4 total length or IPv6 payload
// length runs past its end, so it drops the frame as malformed and counts
// it, as the model does given the same first buffer. On a live interface
// it never gets such a frame: generic mode linearizes jumbo frames for a
// program without frags support (and forwards them), and drivers refuse
// native mode for it on an MTU that needs several buffers.
func TestJumboFrames(t *testing.T) {
	h := newHarness(t)
	h.setupFixture()
	for _, tc := range []struct {
		name   string
		frame  []byte
		wanted maps.Outcome
	}{
		{"ipv4", frame(client4, vip4, func(s *packets.Spec) { s.Payload = make([]byte, 9000-40) }), maps.OutcomeDropMalformedIPv4},
		{"ipv6", frame(client6, vip6, func(s *packets.Spec) { s.Payload = make([]byte, 9000-60) }), maps.OutcomeDropMalformedIPv6},
		{"vlan ipv4", frame(client4, vip4, func(s *packets.Spec) { s.Tagged, s.Payload = true, make([]byte, 9000-40) }), maps.OutcomeDropMalformedIPv4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before, err := h.kernel.Counters(maps.GlobalSlot)
			if err != nil {
				t.Fatal(err)
			}
			verdict, out, err := h.runKernel(tc.frame)
			if err != nil {
				t.Fatal(err)
			}
			after, err := h.kernel.Counters(maps.GlobalSlot)
			if err != nil {
				t.Fatal(err)
			}
			// The program counts the bytes it sees: the first buffer.
			seen := int(after.Bytes[tc.wanted] - before.Bytes[tc.wanted])
			if after.Packets[tc.wanted]-before.Packets[tc.wanted] != 1 || seen < 1514 || seen >= len(tc.frame) {
				t.Fatalf("%d-byte frame: %d packets counted at outcome %d, %d bytes seen; want 1, and part of the frame",
					len(tc.frame), after.Packets[tc.wanted]-before.Packets[tc.wanted], tc.wanted, seen)
			}
			want := h.model.Run(tc.frame[:seen], monotonicCoarse())
			if verdict != want.Verdict || want.Outcome != tc.wanted || verdict != maps.XDPDrop {
				t.Fatalf("verdict %d, model says %d (outcome %d); want a drop at outcome %d", verdict, want.Verdict, want.Outcome, tc.wanted)
			}
			if string(out) != string(tc.frame) {
				t.Fatal("a dropped frame was changed")
			}
			t.Logf("%d-byte frame: the program saw %d bytes and dropped it as malformed", len(tc.frame), seen)
		})
	}
	h.t = t
	if err := h.compareState(); err != nil {
		t.Fatal(err)
	}
}
